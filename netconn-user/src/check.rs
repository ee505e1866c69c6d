//! `netconn check`: a Nagios/Icinga plugin, drop-in for the Python
//! `network-connections` plugin. This module is the pure part: arguments,
//! filters, threshold ranges and the one-line report; fetching the
//! [`Counts`] from the agent and exiting is the caller's job.
//!
//! Choices where the original behaviour is not pinned down:
//! - Only non-zero (type, status) items are shown and checked against the
//!   thresholds, so "nothing matched" is always OK (as in the original).
//! - TCP sockets in [`State::Unknown`] are shown as `tcp UNKNOWN: n` only when
//!   the status filter is absent or `all`: no `--conn-status` value names
//!   them, and hiding them from an unfiltered check would make totals lie.
//! - `--always-ok` puts ` (always ok)` before the `|` so perfdata stays
//!   parseable, and applies to the "no connections" line too. It does not
//!   mask argument errors: those stay UNKNOWN.
//! - Values are case-sensitive, like the original's argparse choices.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::str::FromStr;

use crate::counts::{Counts, Family, State};
use crate::proto::DEFAULT_SOCKET;

/// Arguments of `netconn check`; main.rs flattens this into its subcommand.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct CheckArgs {
    /// Connection type to count (all, tcp, tcp6, udp, udp6); repeatable, OR'd.
    #[arg(long = "conn-type", value_name = "TYPE")]
    pub conn_type: Vec<String>,

    /// Connection status to count (all, close, close_wait, closing,
    /// established, fin_wait1, fin_wait2, last_ack, listen, none, syn_recv,
    /// syn_sent, time_wait); repeatable, OR'd. UDP sockets have status none.
    #[arg(long = "conn-status", value_name = "STATUS")]
    pub conn_status: Vec<String>,

    /// WARNING threshold per item, as a Nagios range (e.g. 200, 10:, @5:10).
    // Hyphen values allowed so negative ranges such as `-10:-5` reach our
    // parser instead of being taken for flags.
    #[arg(short = 'w', long, value_name = "RANGE", allow_hyphen_values = true)]
    pub warning: Option<String>,

    /// CRITICAL threshold per item, as a Nagios range.
    #[arg(short = 'c', long, value_name = "RANGE", allow_hyphen_values = true)]
    pub critical: Option<String>,

    /// Report normally but always exit 0.
    #[arg(long)]
    pub always_ok: bool,

    /// Leave out the performance data after `|`.
    #[arg(long)]
    pub no_perfdata: bool,

    /// Print the version and exit. A plain flag because clap's automatic
    /// version flag lives on commands, not on flattened args; the caller
    /// checks it (see [`version_line`]) before contacting the agent.
    #[arg(short = 'V', long)]
    pub version: bool,

    /// Agent socket.
    #[arg(long, value_name = "PATH", env = "NETCONN_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Fail (UNKNOWN) instead of falling back when the agent is unreachable.
    #[arg(long)]
    pub require_agent: bool,

    /// Reserved for leak detection; accepted and currently ignored.
    #[arg(long)]
    pub leaks: bool,
}

/// Plugin state; the discriminant is the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Status {
    /// Process exit code.
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
            Status::Unknown => "UNKNOWN",
        }
    }
}

/// Why a threshold range did not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RangeError {
    #[error("range is empty")]
    Empty,
    #[error("range has no bounds")]
    NoBounds,
    #[error("'{0}' is not a number")]
    NotANumber(String),
    #[error("start {start} is greater than end {end}")]
    StartAfterEnd { start: String, end: String },
}

/// Everything that makes the check UNKNOWN. Each message is a single line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckError {
    #[error("invalid --{flag} range '{value}': {source}")]
    InvalidRange {
        flag: &'static str,
        value: String,
        source: RangeError,
    },
    #[error("invalid --conn-type value '{0}' (expected one of: all, tcp, tcp6, udp, udp6)")]
    UnknownConnType(String),
    #[error(
        "invalid --conn-status value '{0}' (expected one of: all, close, close_wait, closing, \
         established, fin_wait1, fin_wait2, last_ack, listen, none, syn_recv, syn_sent, time_wait)"
    )]
    UnknownConnStatus(String),
}

impl CheckError {
    /// Argument and internal errors are always UNKNOWN (never masked by
    /// `--always-ok`).
    pub fn status(&self) -> Status {
        Status::Unknown
    }
}

/// A Nagios threshold range (guidelines "THRESHOLDFORMAT"), bounds inclusive.
///
/// `N` = 0..N, `N:` = N..inf, `~:N` = -inf..N, `A:B`; the value alerts when
/// outside, or when inside with a leading `@`. `:N` is read as `0:N` like the
/// C monitoring-plugins do. Decimals are accepted; `inf`/`nan`/exponents are
/// not, nor are `@`, `:` or an empty string.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    start: f64,
    end: f64,
    inside: bool,
}

impl Range {
    /// Whether `value` breaches this threshold.
    pub fn alerts(&self, value: f64) -> bool {
        let within = self.start <= value && value <= self.end;
        within == self.inside
    }
}

/// A plain decimal number. Rust's f64 parser would also take `inf`, `NaN`
/// and `1e3`, which no Nagios plugin accepts.
fn parse_number(s: &str) -> Result<f64, RangeError> {
    let bad = || RangeError::NotANumber(s.to_string());
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
        return Err(bad());
    }
    s.parse().map_err(|_| bad())
}

impl FromStr for Range {
    type Err = RangeError;

    fn from_str(s: &str) -> Result<Range, RangeError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RangeError::Empty);
        }
        let (inside, rest) = match s.strip_prefix('@') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        if rest.is_empty() || rest == ":" {
            return Err(RangeError::NoBounds);
        }
        // Without a colon the number is the end and the start is 0.
        let (start_text, end_text) = rest.split_once(':').unwrap_or(("0", rest));
        let start = match start_text {
            "~" => f64::NEG_INFINITY,
            "" => 0.0,
            t => parse_number(t)?,
        };
        let end = match end_text {
            "" => f64::INFINITY,
            t => parse_number(t)?,
        };
        if start > end {
            return Err(RangeError::StartAfterEnd {
                start: start_text.to_string(),
                end: end_text.to_string(),
            });
        }
        Ok(Range { start, end, inside })
    }
}

/// The status of one reported item: a TCP state, or `none` for UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ItemStatus {
    Tcp(State),
    None,
}

impl ItemStatus {
    /// Upper-case name with underscores, as used in perfdata labels.
    fn name(self) -> &'static str {
        match self {
            ItemStatus::Tcp(state) => state.name(),
            ItemStatus::None => "NONE",
        }
    }
}

/// The `--conn-type` word for a family (not `Family::name`: `tcp` is IPv4).
fn type_word(family: Family) -> &'static str {
    match family {
        Family::Tcp4 => "tcp",
        Family::Tcp6 => "tcp6",
        Family::Udp4 => "udp",
        Family::Udp6 => "udp6",
    }
}

fn is_udp(family: Family) -> bool {
    matches!(family, Family::Udp4 | Family::Udp6)
}

/// Which (type, status) items the check looks at. `None` in a field means
/// "no filter" (not given, or `all` among the values).
#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    types: Option<Vec<Family>>,
    statuses: Option<Vec<ItemStatus>>,
    /// The values as given, for the "no connections" message.
    type_label: String,
    status_label: String,
}

/// Parse one flag's values; `None` when unfiltered. Every value is validated
/// even after an `all`, so typos never pass silently.
fn parse_values<T>(
    values: &[String],
    parse: impl Fn(&str) -> Option<T>,
    err: impl Fn(String) -> CheckError,
) -> Result<(Option<Vec<T>>, String), CheckError> {
    let mut parsed = Vec::new();
    let mut all = values.is_empty();
    for value in values {
        if value == "all" {
            all = true;
        } else {
            parsed.push(parse(value).ok_or_else(|| err(value.clone()))?);
        }
    }
    if all {
        Ok((None, "all".to_string()))
    } else {
        Ok((Some(parsed), values.join(",")))
    }
}

impl Filter {
    pub fn from_args(args: &CheckArgs) -> Result<Filter, CheckError> {
        let (types, type_label) = parse_values(
            &args.conn_type,
            |v| match v {
                "tcp" => Some(Family::Tcp4),
                "tcp6" => Some(Family::Tcp6),
                "udp" => Some(Family::Udp4),
                "udp6" => Some(Family::Udp6),
                _ => None,
            },
            CheckError::UnknownConnType,
        )?;
        let (statuses, status_label) = parse_values(
            &args.conn_status,
            |v| {
                let state = match v {
                    "none" => return Some(ItemStatus::None),
                    "close" => State::Close,
                    "close_wait" => State::CloseWait,
                    "closing" => State::Closing,
                    "established" => State::Established,
                    "fin_wait1" => State::FinWait1,
                    "fin_wait2" => State::FinWait2,
                    "last_ack" => State::LastAck,
                    "listen" => State::Listen,
                    "syn_recv" => State::SynRecv,
                    "syn_sent" => State::SynSent,
                    "time_wait" => State::TimeWait,
                    _ => return None,
                };
                Some(ItemStatus::Tcp(state))
            },
            CheckError::UnknownConnStatus,
        )?;
        Ok(Filter {
            types,
            statuses,
            type_label,
            status_label,
        })
    }

    fn matches(&self, family: Family, status: ItemStatus) -> bool {
        let type_ok = self.types.as_ref().is_none_or(|t| t.contains(&family));
        let status_ok = match (&self.statuses, status) {
            (None, _) => true,
            // No --conn-status value names UNKNOWN: only an unfiltered check
            // reports it.
            (Some(_), ItemStatus::Tcp(State::Unknown)) => false,
            (Some(s), status) => s.contains(&status),
        };
        type_ok && status_ok
    }

    /// `No connections of type "..." in status "..." found.`
    pub fn empty_message(&self) -> String {
        format!(
            "No connections of type \"{}\" in status \"{}\" found.",
            self.type_label, self.status_label
        )
    }
}

/// One reported line item.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Item {
    family: Family,
    status: ItemStatus,
    count: u64,
}

/// The non-zero items that pass `filter`, sorted by count descending.
///
/// Tie order: by type `tcp`, `tcp6`, `udp`, `udp6` (i.e. [`Family::ALL`]),
/// then by state in [`State::ALL`] order (ESTABLISHED, SYN_SENT, SYN_RECV,
/// FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSE, CLOSE_WAIT, LAST_ACK, LISTEN,
/// CLOSING, UNKNOWN). UDP families have the single item NONE, the sum of all
/// their states. Built in that order and sorted stably, so ties keep it.
fn items(counts: &Counts, filter: &Filter) -> Vec<Item> {
    let mut items = Vec::new();
    for family in Family::ALL {
        if is_udp(family) {
            let count = counts.family_total(family);
            items.push(Item {
                family,
                status: ItemStatus::None,
                count,
            });
        } else {
            for state in State::ALL {
                items.push(Item {
                    family,
                    status: ItemStatus::Tcp(state),
                    count: counts.get(family, state),
                });
            }
        }
    }
    items.retain(|i| i.count > 0 && filter.matches(i.family, i.status));
    items.sort_by_key(|i| std::cmp::Reverse(i.count));
    items
}

/// Parse an optional threshold flag.
fn parse_threshold(flag: &'static str, value: Option<&str>) -> Result<Option<Range>, CheckError> {
    value
        .map(|v| {
            v.parse().map_err(|source| CheckError::InvalidRange {
                flag,
                value: v.to_string(),
                source,
            })
        })
        .transpose()
}

/// Run the check on `counts`: the output line (no trailing newline) and the
/// state whose [`Status::code`] is the exit code.
///
/// Does not look at `args.version`; the caller handles that first.
pub fn evaluate(counts: &Counts, args: &CheckArgs) -> Result<(String, Status), CheckError> {
    // Validate everything before looking at the data, so a bad argument is
    // reported even when nothing matches.
    let filter = Filter::from_args(args)?;
    let warning = parse_threshold("warning", args.warning.as_deref())?;
    let critical = parse_threshold("critical", args.critical.as_deref())?;

    let items = items(counts, &filter);
    let mut status = Status::Ok;
    let mut text = String::new();
    let mut perfdata = String::new();
    if items.is_empty() {
        text = filter.empty_message();
    }
    for (n, item) in items.iter().enumerate() {
        let value = item.count as f64;
        // CRIT is tested first so an item breaching both is CRITICAL.
        let item_status = if critical.is_some_and(|r| r.alerts(value)) {
            Status::Critical
        } else if warning.is_some_and(|r| r.alerts(value)) {
            Status::Warning
        } else {
            Status::Ok
        };
        status = status.max(item_status);

        let word = type_word(item.family);
        let name = item.status.name();
        if n > 0 {
            text.push_str(", ");
            perfdata.push(' ');
        }
        let _ = write!(text, "{word} {}: {}", name.replace('_', " "), item.count);
        if item_status != Status::Ok {
            let _ = write!(text, " [{}]", item_status.name());
        }
        let _ = write!(perfdata, "'{word}_{name}'={}", item.count);
    }

    if args.always_ok {
        text.push_str(" (always ok)");
        status = Status::Ok;
    }
    if !args.no_perfdata && !perfdata.is_empty() {
        text.push('|');
        text.push_str(&perfdata);
    }
    Ok((text, status))
}

/// The `-V/--version` output.
pub fn version_line() -> String {
    format!("netconn check {}", env!("CARGO_PKG_VERSION"))
}

/// What to print and how to exit for a clap parse failure: help and version
/// requests keep clap's full text and exit 0; anything else becomes one line
/// and UNKNOWN (clap would otherwise exit 2, which Nagios reads as CRITICAL).
pub fn clap_error_report(err: &clap::Error) -> (String, Status) {
    use clap::error::ErrorKind;
    // Plain text: the StyledStr Display drops ANSI styling.
    let rendered = err.render().to_string();
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            (rendered.trim_end().to_string(), Status::Ok)
        }
        _ => {
            let first = rendered
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("invalid arguments");
            let line = first.strip_prefix("error: ").unwrap_or(first);
            (line.to_string(), Status::Unknown)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
}
