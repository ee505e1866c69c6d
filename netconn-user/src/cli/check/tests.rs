use super::evaluate::*;
use super::*;
use clap::Parser;
use netconn_common::{Family, State};

#[derive(clap::Parser, Debug)]
struct TestCli {
    #[command(flatten)]
    args: CheckArgs,
}

fn args(argv: &[&str]) -> CheckArgs {
    let full = std::iter::once("check").chain(argv.iter().copied());
    TestCli::try_parse_from(full).unwrap().args
}

fn run(counts: &Counts, argv: &[&str]) -> (String, Status) {
    evaluate(counts, &args(argv)).unwrap()
}

fn run_err(counts: &Counts, argv: &[&str]) -> CheckError {
    evaluate(counts, &args(argv)).unwrap_err()
}

fn range(s: &str) -> Range {
    s.parse().unwrap()
}

/// The spec's example: tcp4 TIME_WAIT 10, ESTABLISHED 1, LISTEN 1.
fn example() -> Counts {
    let mut c = Counts::default();
    c.set(Family::Tcp4, State::TimeWait, 10);
    c.set(Family::Tcp4, State::Established, 1);
    c.set(Family::Tcp4, State::Listen, 1);
    c
}

/// A mixed table over all four families.
fn mixed() -> Counts {
    let mut c = example();
    c.set(Family::Tcp6, State::Established, 4);
    c.set(Family::Tcp6, State::CloseWait, 3);
    c.set(Family::Tcp6, State::Listen, 2);
    c.set(Family::Udp4, State::Close, 12);
    c.set(Family::Udp4, State::Established, 4);
    c.set(Family::Udp6, State::Close, 2);
    c
}

// ---- ranges ----

#[test]
fn plain_number_is_zero_to_n() {
    let r = range("10");
    assert_eq!((r.start, r.end, r.inside), (0.0, 10.0, false));
    assert!(!r.alerts(0.0));
    assert!(!r.alerts(10.0));
    assert!(r.alerts(11.0));
    assert!(r.alerts(-1.0));
}

#[test]
fn open_end_range() {
    let r = range("10:");
    assert_eq!((r.start, r.end), (10.0, f64::INFINITY));
    assert!(r.alerts(9.0));
    assert!(!r.alerts(10.0));
    assert!(!r.alerts(1e12));
}

#[test]
fn negative_infinity_start() {
    let r = range("~:10");
    assert_eq!((r.start, r.end), (f64::NEG_INFINITY, 10.0));
    assert!(!r.alerts(-1000.0));
    assert!(!r.alerts(10.0));
    assert!(r.alerts(11.0));
}

#[test]
fn closed_range_is_inclusive() {
    let r = range("10:20");
    assert!(r.alerts(9.0));
    assert!(!r.alerts(10.0));
    assert!(!r.alerts(15.0));
    assert!(!r.alerts(20.0));
    assert!(r.alerts(21.0));
    // A single-point range is allowed.
    assert!(range("5:5").alerts(4.0));
    assert!(!range("5:5").alerts(5.0));
}

#[test]
fn at_sign_alerts_inside() {
    let r = range("@10:20");
    assert!(r.inside);
    assert!(!r.alerts(9.0));
    assert!(r.alerts(10.0));
    assert!(r.alerts(20.0));
    assert!(!r.alerts(21.0));
    let r = range("@5");
    assert!(r.alerts(0.0));
    assert!(r.alerts(5.0));
    assert!(!r.alerts(6.0));
    let r = range("@~:3");
    assert!(r.alerts(-50.0));
    assert!(!r.alerts(4.0));
    let r = range("@7:");
    assert!(!r.alerts(6.0));
    assert!(r.alerts(7.0));
}

#[test]
fn decimals_negatives_and_empty_start() {
    let r = range("0.5:2.5");
    assert_eq!((r.start, r.end), (0.5, 2.5));
    assert!(r.alerts(3.0));
    let r = range("-10:-5");
    assert!(r.alerts(-4.0));
    assert!(!r.alerts(-7.0));
    assert_eq!(range(":10"), range("0:10"));
    assert_eq!(range(" 200 "), range("200"));
    assert_eq!(range("+3"), range("3"));
}

#[test]
fn bad_ranges_are_rejected() {
    assert_eq!(
        "10:5".parse::<Range>(),
        Err(RangeError::StartAfterEnd {
            start: "10".into(),
            end: "5".into()
        })
    );
    assert_eq!(
        "abc".parse::<Range>(),
        Err(RangeError::NotANumber("abc".into()))
    );
    assert_eq!("@".parse::<Range>(), Err(RangeError::NoBounds));
    assert_eq!(":".parse::<Range>(), Err(RangeError::NoBounds));
    assert_eq!("@:".parse::<Range>(), Err(RangeError::NoBounds));
    assert_eq!("".parse::<Range>(), Err(RangeError::Empty));
    assert_eq!("  ".parse::<Range>(), Err(RangeError::Empty));
    for bad in [
        "-5", "inf", "nan", "1e3", "1:2:3", "~", "5:~", "1.2.3", ".", "@@5", "10x",
    ] {
        assert!(bad.parse::<Range>().is_err(), "{bad} should be rejected");
    }
}

#[test]
fn bad_range_is_an_unknown_one_liner() {
    let err = run_err(&example(), &["-c", "10:5"]);
    assert_eq!(err.status(), Status::Unknown);
    assert_eq!(
        err.to_string(),
        "invalid --critical range '10:5': start 10 is greater than end 5"
    );
    let err = run_err(&example(), &["--warning=abc"]);
    assert_eq!(
        err.to_string(),
        "invalid --warning range 'abc': 'abc' is not a number"
    );
    assert!(matches!(
        run_err(&example(), &["-w", ""]),
        CheckError::InvalidRange {
            flag: "warning",
            source: RangeError::Empty,
            ..
        }
    ));
}

#[test]
fn bad_range_reported_even_when_nothing_matches() {
    let err = run_err(&Counts::default(), &["-w", "@"]);
    assert!(matches!(
        err,
        CheckError::InvalidRange {
            source: RangeError::NoBounds,
            ..
        }
    ));
}

// ---- argument parsing ----

#[test]
fn both_flag_spellings_parse_the_same() {
    let a = args(&[
        "--conn-type=tcp",
        "--conn-status=listen",
        "--warning=5",
        "--critical=9",
    ]);
    let b = args(&[
        "--conn-type",
        "tcp",
        "--conn-status",
        "listen",
        "--warning",
        "5",
        "--critical",
        "9",
    ]);
    let c = args(&[
        "--conn-type",
        "tcp",
        "--conn-status",
        "listen",
        "-w",
        "5",
        "-c9",
    ]);
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.conn_type, ["tcp"]);
    assert_eq!(a.warning.as_deref(), Some("5"));
    assert_eq!(a.critical.as_deref(), Some("9"));
}

#[test]
fn other_flags_parse() {
    let a = args(&[
        "--always-ok",
        "--no-perfdata",
        "-V",
        "--socket=/tmp/x.sock",
        "--require-agent",
        "--leaks",
    ]);
    assert!(a.always_ok && a.no_perfdata && a.version && a.require_agent && a.leaks);
    assert_eq!(a.socket, PathBuf::from("/tmp/x.sock"));
    assert!(args(&["--version"]).version);
    let d = args(&[]);
    assert!(!d.always_ok && !d.no_perfdata && !d.version && !d.require_agent && !d.leaks);
    assert!(d.conn_type.is_empty() && d.conn_status.is_empty());
    assert_eq!(d.warning, None);
    if std::env::var_os("NETCONN_SOCKET").is_none() {
        assert_eq!(d.socket, PathBuf::from(DEFAULT_SOCKET));
    }
}

#[test]
fn negative_range_value_is_not_taken_for_a_flag() {
    assert_eq!(args(&["-w", "-10:-5"]).warning.as_deref(), Some("-10:-5"));
}

#[test]
fn users_icinga_line_parses_and_evaluates() {
    let argv = [
        "--conn-type=tcp",
        "--conn-status=established",
        "--warning=200",
    ];
    let mut c = mixed();
    assert_eq!(
        run(&c, &argv),
        ("tcp ESTABLISHED: 1|'tcp_ESTABLISHED'=1".into(), Status::Ok)
    );
    c.set(Family::Tcp4, State::Established, 201);
    assert_eq!(
        run(&c, &argv),
        (
            "tcp ESTABLISHED: 201 [WARNING]|'tcp_ESTABLISHED'=201".into(),
            Status::Warning
        )
    );
    c.set(Family::Tcp4, State::Established, 200);
    assert_eq!(run(&c, &argv).1, Status::Ok);
}

#[test]
fn unknown_values_are_errors() {
    let err = run_err(&example(), &["--conn-type=tcp4"]);
    assert_eq!(err, CheckError::UnknownConnType("tcp4".into()));
    assert_eq!(
        err.to_string(),
        "invalid --conn-type value 'tcp4' (expected one of: all, tcp, tcp6, udp, udp6)"
    );
    assert_eq!(
        run_err(&example(), &["--conn-status", "TIME_WAIT"]),
        CheckError::UnknownConnStatus("TIME_WAIT".into())
    );
    // Also after `all`: a typo never passes silently.
    assert_eq!(
        run_err(
            &example(),
            &["--conn-status", "all", "--conn-status", "bogus"]
        ),
        CheckError::UnknownConnStatus("bogus".into())
    );
    assert!(!err.to_string().contains('\n'));
    assert!(
        !run_err(&example(), &["--conn-status=x"])
            .to_string()
            .contains('\n')
    );
}

#[test]
fn clap_errors_map_to_unknown_one_line() {
    let err = TestCli::try_parse_from(["check", "--bogus"]).unwrap_err();
    let (line, status) = clap_error_report(&err);
    assert_eq!(status, Status::Unknown);
    assert!(!line.contains('\n'), "{line}");
    assert!(line.contains("--bogus"), "{line}");
    assert!(!line.starts_with("error:"), "{line}");

    let err = TestCli::try_parse_from(["check", "--warning"]).unwrap_err();
    let (line, status) = clap_error_report(&err);
    assert_eq!(status, Status::Unknown);
    assert!(!line.contains('\n') && line.contains("--warning"), "{line}");

    let err = TestCli::try_parse_from(["check", "--help"]).unwrap_err();
    let (text, status) = clap_error_report(&err);
    assert_eq!(status, Status::Ok);
    assert!(
        text.contains("--conn-type") && text.contains("--always-ok"),
        "{text}"
    );
}

// ---- filtering ----

#[test]
fn repeated_values_are_ored_and_flags_anded() {
    let (line, _) = run(
        &mixed(),
        &[
            "--conn-type=tcp",
            "--conn-type=tcp6",
            "--conn-status=listen",
        ],
    );
    assert_eq!(
        line,
        "tcp6 LISTEN: 2, tcp LISTEN: 1|'tcp6_LISTEN'=2 'tcp_LISTEN'=1"
    );
    let (line, _) = run(
        &mixed(),
        &[
            "--conn-type",
            "tcp6",
            "--conn-status",
            "established",
            "--conn-status",
            "close_wait",
        ],
    );
    assert_eq!(
        line,
        "tcp6 ESTABLISHED: 4, tcp6 CLOSE WAIT: 3|'tcp6_ESTABLISHED'=4 'tcp6_CLOSE_WAIT'=3"
    );
}

#[test]
fn tcp_means_ipv4_only() {
    let (line, _) = run(&mixed(), &["--conn-type=tcp", "--no-perfdata"]);
    assert_eq!(line, "tcp TIME WAIT: 10, tcp ESTABLISHED: 1, tcp LISTEN: 1");
    let (line, _) = run(&mixed(), &["--conn-type=udp", "--no-perfdata"]);
    assert_eq!(line, "udp NONE: 16");
    let (line, _) = run(&mixed(), &["--conn-type=udp6", "--no-perfdata"]);
    assert_eq!(line, "udp6 NONE: 2");
}

#[test]
fn all_disables_a_filter() {
    let unfiltered = run(&mixed(), &[]);
    assert_eq!(run(&mixed(), &["--conn-type=all"]), unfiltered);
    assert_eq!(run(&mixed(), &["--conn-status=all"]), unfiltered);
    assert_eq!(
        run(
            &mixed(),
            &["--conn-type=tcp", "--conn-type=all", "--conn-status=all"]
        ),
        unfiltered
    );
    // `all` in one flag leaves the other flag in force.
    let (line, _) = run(
        &mixed(),
        &["--conn-type=all", "--conn-status=listen", "--no-perfdata"],
    );
    assert_eq!(line, "tcp6 LISTEN: 2, tcp LISTEN: 1");
}

#[test]
fn udp_sockets_have_status_none_only() {
    let c = mixed();
    let (line, _) = run(&c, &["--conn-status=none"]);
    assert_eq!(
        line,
        "udp NONE: 16, udp6 NONE: 2|'udp_NONE'=16 'udp6_NONE'=2"
    );
    // UDP is never CLOSE/ESTABLISHED for the check, TCP never NONE.
    let (line, _) = run(
        &c,
        &[
            "--conn-type=udp",
            "--conn-status=close",
            "--conn-status=established",
        ],
    );
    assert_eq!(
        line,
        "No connections of type \"udp\" in status \"close,established\" found."
    );
    let (line, _) = run(&c, &["--conn-type=tcp", "--conn-status=none"]);
    assert_eq!(
        line,
        "No connections of type \"tcp\" in status \"none\" found."
    );
    // Even an UNKNOWN-state UDP socket is status none.
    let mut c = Counts::default();
    c.set(Family::Udp6, State::Unknown, 1);
    c.set(Family::Udp6, State::Close, 1);
    assert_eq!(
        run(&c, &["--conn-status=none", "--no-perfdata"]).0,
        "udp6 NONE: 2"
    );
}

#[test]
fn tcp_unknown_only_when_status_unfiltered() {
    let mut c = Counts::default();
    c.set(Family::Tcp4, State::Unknown, 2);
    c.set(Family::Tcp4, State::Listen, 1);
    assert_eq!(
        run(&c, &[]).0,
        "tcp UNKNOWN: 2, tcp LISTEN: 1|'tcp_UNKNOWN'=2 'tcp_LISTEN'=1"
    );
    assert_eq!(
        run(&c, &["--conn-status=all", "--no-perfdata"]).0,
        "tcp UNKNOWN: 2, tcp LISTEN: 1"
    );
    assert_eq!(
        run(&c, &["--conn-status=listen", "--no-perfdata"]).0,
        "tcp LISTEN: 1"
    );
    // Thresholds apply to it like any other item.
    assert_eq!(run(&c, &["-w", "1"]).1, Status::Warning);
}

// ---- empty message ----

#[test]
fn empty_message_without_filters() {
    let (line, status) = run(&Counts::default(), &[]);
    assert_eq!(
        line,
        "No connections of type \"all\" in status \"all\" found."
    );
    assert_eq!(status, Status::Ok);
    // No perfdata to append, and thresholds cannot fire.
    assert_eq!(run(&Counts::default(), &["-c", "1:"]), (line, Status::Ok));
}

#[test]
fn empty_message_with_filters_keeps_given_order() {
    let (line, status) = run(
        &example(),
        &[
            "--conn-type=tcp6",
            "--conn-status=established",
            "--conn-status",
            "closing",
        ],
    );
    assert_eq!(
        line,
        "No connections of type \"tcp6\" in status \"established,closing\" found."
    );
    assert_eq!(status, Status::Ok);
    let (line, _) = run(
        &example(),
        &["--conn-type=udp6", "--conn-type=tcp6", "--conn-status=all"],
    );
    assert_eq!(
        line,
        "No connections of type \"udp6,tcp6\" in status \"all\" found."
    );
    let (line, _) = run(
        &example(),
        &[
            "--conn-type=all",
            "--conn-type=tcp6",
            "--conn-status=syn_sent",
        ],
    );
    assert_eq!(
        line,
        "No connections of type \"all\" in status \"syn_sent\" found."
    );
}

// ---- output ----

#[test]
fn spec_example_line() {
    let (line, status) = run(&example(), &["-c", "5"]);
    assert_eq!(
        line,
        "tcp TIME WAIT: 10 [CRITICAL], tcp ESTABLISHED: 1, tcp LISTEN: 1\
         |'tcp_TIME_WAIT'=10 'tcp_ESTABLISHED'=1 'tcp_LISTEN'=1"
    );
    assert_eq!(status, Status::Critical);
    assert_eq!(status.code(), 2);
}

#[test]
fn sorted_by_count_then_type_then_state() {
    let (line, _) = run(&mixed(), &["--no-perfdata"]);
    assert_eq!(
        line,
        "udp NONE: 16, tcp TIME WAIT: 10, tcp6 ESTABLISHED: 4, tcp6 CLOSE WAIT: 3, \
         tcp6 LISTEN: 2, udp6 NONE: 2, tcp ESTABLISHED: 1, tcp LISTEN: 1"
    );
}

#[test]
fn ties_follow_type_order_then_state_all_order() {
    let mut c = Counts::default();
    // Set in scrambled order; output must not depend on it.
    c.set(Family::Udp6, State::Close, 3);
    c.set(Family::Tcp6, State::SynSent, 3);
    c.set(Family::Tcp4, State::Closing, 3);
    c.set(Family::Udp4, State::Established, 3);
    c.set(Family::Tcp4, State::FinWait1, 3);
    c.set(Family::Tcp4, State::LastAck, 3);
    c.set(Family::Tcp6, State::Established, 3);
    let (line, _) = run(&c, &["--no-perfdata"]);
    assert_eq!(
        line,
        "tcp FIN WAIT1: 3, tcp LAST ACK: 3, tcp CLOSING: 3, tcp6 ESTABLISHED: 3, \
         tcp6 SYN SENT: 3, udp NONE: 3, udp6 NONE: 3"
    );
}

#[test]
fn every_state_renders_with_spaces_and_perf_label_with_underscores() {
    let mut c = Counts::default();
    for (i, state) in State::ALL.iter().enumerate() {
        c.set(Family::Tcp6, *state, 100 - i as u64);
    }
    let (line, _) = run(&c, &[]);
    let (text, perf) = line.split_once('|').unwrap();
    assert_eq!(
        text,
        "tcp6 ESTABLISHED: 100, tcp6 SYN SENT: 99, tcp6 SYN RECV: 98, tcp6 FIN WAIT1: 97, \
         tcp6 FIN WAIT2: 96, tcp6 TIME WAIT: 95, tcp6 CLOSE: 94, tcp6 CLOSE WAIT: 93, \
         tcp6 LAST ACK: 92, tcp6 LISTEN: 91, tcp6 CLOSING: 90, tcp6 UNKNOWN: 89"
    );
    assert_eq!(
        perf,
        "'tcp6_ESTABLISHED'=100 'tcp6_SYN_SENT'=99 'tcp6_SYN_RECV'=98 'tcp6_FIN_WAIT1'=97 \
         'tcp6_FIN_WAIT2'=96 'tcp6_TIME_WAIT'=95 'tcp6_CLOSE'=94 'tcp6_CLOSE_WAIT'=93 \
         'tcp6_LAST_ACK'=92 'tcp6_LISTEN'=91 'tcp6_CLOSING'=90 'tcp6_UNKNOWN'=89"
    );
}

#[test]
fn perfdata_lists_every_item_and_no_perfdata_drops_it() {
    let (line, _) = run(&mixed(), &[]);
    let (_, perf) = line.split_once('|').unwrap();
    assert_eq!(
        perf,
        "'udp_NONE'=16 'tcp_TIME_WAIT'=10 'tcp6_ESTABLISHED'=4 'tcp6_CLOSE_WAIT'=3 \
         'tcp6_LISTEN'=2 'udp6_NONE'=2 'tcp_ESTABLISHED'=1 'tcp_LISTEN'=1"
    );
    let (line, status) = run(&example(), &["-c", "5", "--no-perfdata"]);
    assert_eq!(
        line,
        "tcp TIME WAIT: 10 [CRITICAL], tcp ESTABLISHED: 1, tcp LISTEN: 1"
    );
    assert_eq!(status, Status::Critical);
    assert!(!line.contains('|'));
}

// ---- thresholds and states ----

#[test]
fn no_thresholds_is_ok() {
    assert_eq!(run(&mixed(), &[]).1, Status::Ok);
}

#[test]
fn critical_is_tested_before_warning() {
    // 10 breaches both: it is CRITICAL, not WARNING.
    let (line, status) = run(&example(), &["-w", "3", "-c", "5", "--no-perfdata"]);
    assert_eq!(
        line,
        "tcp TIME WAIT: 10 [CRITICAL], tcp ESTABLISHED: 1, tcp LISTEN: 1"
    );
    assert_eq!(status, Status::Critical);
    // Even with a looser critical than warning.
    let (line, status) = run(&example(), &["-w", "1", "-c", "5", "--no-perfdata"]);
    assert_eq!(
        line,
        "tcp TIME WAIT: 10 [CRITICAL], tcp ESTABLISHED: 1, tcp LISTEN: 1"
    );
    assert_eq!(status, Status::Critical);
}

#[test]
fn worst_item_wins() {
    let (line, status) = run(
        &mixed(),
        &[
            "-w",
            "3",
            "-c",
            "12",
            "--conn-type=tcp6",
            "--conn-type=udp",
            "--no-perfdata",
        ],
    );
    assert_eq!(
        line,
        "udp NONE: 16 [CRITICAL], tcp6 ESTABLISHED: 4 [WARNING], tcp6 CLOSE WAIT: 3, tcp6 LISTEN: 2"
    );
    assert_eq!(status, Status::Critical);
    let (line, status) = run(
        &mixed(),
        &["-w", "3", "-c", "20", "--conn-type=tcp6", "--no-perfdata"],
    );
    assert_eq!(
        line,
        "tcp6 ESTABLISHED: 4 [WARNING], tcp6 CLOSE WAIT: 3, tcp6 LISTEN: 2"
    );
    assert_eq!(status, Status::Warning);
    assert_eq!(status.code(), 1);
}

#[test]
fn inside_and_lower_bound_thresholds() {
    let (line, status) = run(&example(), &["-w", "@1:1", "--no-perfdata"]);
    assert_eq!(
        line,
        "tcp TIME WAIT: 10, tcp ESTABLISHED: 1 [WARNING], tcp LISTEN: 1 [WARNING]"
    );
    assert_eq!(status, Status::Warning);
    let (line, status) = run(&example(), &["-c", "2:", "--no-perfdata"]);
    assert_eq!(
        line,
        "tcp TIME WAIT: 10, tcp ESTABLISHED: 1 [CRITICAL], tcp LISTEN: 1 [CRITICAL]"
    );
    assert_eq!(status, Status::Critical);
    assert_eq!(run(&example(), &["-c", "~:9.5"]).1, Status::Critical);
    assert_eq!(run(&example(), &["-c", "~:10"]).1, Status::Ok);
}

#[test]
fn always_ok_exits_zero_with_suffix_even_when_critical() {
    let (line, status) = run(&example(), &["-c", "5", "--always-ok"]);
    assert_eq!(
        line,
        "tcp TIME WAIT: 10 [CRITICAL], tcp ESTABLISHED: 1, tcp LISTEN: 1 (always ok)\
         |'tcp_TIME_WAIT'=10 'tcp_ESTABLISHED'=1 'tcp_LISTEN'=1"
    );
    assert_eq!(status, Status::Ok);
    assert_eq!(status.code(), 0);
    let (line, status) = run(&example(), &["-w", "5", "--always-ok", "--no-perfdata"]);
    assert_eq!(
        line,
        "tcp TIME WAIT: 10 [WARNING], tcp ESTABLISHED: 1, tcp LISTEN: 1 (always ok)"
    );
    assert_eq!(status, Status::Ok);
    let (line, status) = run(&Counts::default(), &["--always-ok"]);
    assert_eq!(
        line,
        "No connections of type \"all\" in status \"all\" found. (always ok)"
    );
    assert_eq!(status, Status::Ok);
}

#[test]
fn always_ok_does_not_mask_argument_errors() {
    assert_eq!(
        run_err(&example(), &["--always-ok", "-c", "5:1"]).status(),
        Status::Unknown
    );
}

#[test]
fn status_codes() {
    assert_eq!(
        [
            Status::Ok,
            Status::Warning,
            Status::Critical,
            Status::Unknown
        ]
        .map(Status::code),
        [0, 1, 2, 3]
    );
    assert!(Status::Critical > Status::Warning && Status::Warning > Status::Ok);
}

#[test]
fn version_line_names_the_plugin() {
    assert!(version_line().starts_with("netconn check "));
}
