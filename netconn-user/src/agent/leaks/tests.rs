use std::{net::TcpListener, os::fd::AsRawFd as _};

use super::{rules::parse_rules, *};
use crate::proto::{ProcessInfo, Severity};

const EPOCH: u64 = 1_700_000_000;

fn rules(toml: &str) -> Detector {
    Detector::new(parse_rules(toml).unwrap())
}

/// Runs ticks one second apart from a fixed start.
struct Clock {
    start: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    fn tick(
        &self,
        d: &mut Detector,
        secs: f64,
        counts: &Counts,
        sockets: &[SocketInfo],
    ) -> Vec<AlertEvent> {
        let offset = Duration::from_secs_f64(secs);
        d.tick(&Tick {
            now: self.start + offset,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH) + offset,
            counts,
            sockets,
        })
    }
}

fn counts(family: Family, state: State, n: u64) -> Counts {
    let mut c = Counts::default();
    c.set(family, state, n);
    c
}

fn sock(local: &str, remote: &str, inode: u32, age_secs: u64) -> SocketInfo {
    SocketInfo {
        family: Family::Tcp4,
        state: State::CloseWait,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
        inode,
        age: Some(Duration::from_secs(age_secs)),
    }
}

fn fired(events: &[AlertEvent]) -> &Alert {
    match events {
        [AlertEvent::Fired(alert)] => alert,
        other => panic!("expected one Fired, got {other:?}"),
    }
}

fn inode_of(listener: &TcpListener) -> u32 {
    // SAFETY: fstat writes only into our zeroed buffer; the fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(listener.as_raw_fd(), &mut st) }, 0);
    u32::try_from(st.st_ino).unwrap()
}

const COUNT_RULE: &str =
    "[[rule]]\nkind='count'\nfamily='tcp'\nstate='TIME_WAIT'\nabove=100\nfor='1m'\n";

#[test]
fn count_rule_fires_only_after_the_duration_and_clears() {
    let mut d = rules(COUNT_RULE);
    let clock = Clock::new();
    let high = counts(Family::Tcp6, State::TimeWait, 150);
    let low = counts(Family::Tcp6, State::TimeWait, 100);

    // Above for 30 s, then at the limit once: the clock restarts.
    for s in 0..30 {
        assert!(clock.tick(&mut d, s as f64, &high, &[]).is_empty());
    }
    assert!(clock.tick(&mut d, 30.0, &low, &[]).is_empty());
    for s in 31..91 {
        assert!(
            clock.tick(&mut d, s as f64, &high, &[]).is_empty(),
            "at {s}"
        );
    }
    let events = clock.tick(&mut d, 91.0, &high, &[]);
    let alert = fired(&events);
    assert_eq!(alert.rule, "time-wait-count");
    assert_eq!(alert.kind, RuleKind::Count);
    assert_eq!((alert.value, alert.threshold), (150.0, 100.0));
    assert_eq!(alert.family, "tcp");
    assert_eq!(alert.state, "TIME_WAIT");
    assert_eq!(
        alert.since,
        SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH + 91)
    );
    assert_eq!(
        alert.message,
        "TIME_WAIT count: 150 tcp sockets in TIME_WAIT, above 100 for 1m (rule time-wait-count)"
    );

    // Stays active without repeating itself; active() tracks the value.
    let higher = counts(Family::Tcp4, State::TimeWait, 170);
    assert!(clock.tick(&mut d, 92.0, &higher, &[]).is_empty());
    assert_eq!(d.active()[0].value, 170.0);

    let events = clock.tick(&mut d, 100.0, &low, &[]);
    match events.as_slice() {
        [
            AlertEvent::Cleared {
                rule,
                since,
                cleared_at,
                message,
                ..
            },
        ] => {
            assert_eq!(rule, "time-wait-count");
            assert_eq!(*since, alert.since);
            assert_eq!(
                *cleared_at,
                SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH + 100)
            );
            assert_eq!(
                message,
                "TIME_WAIT count cleared: 100 tcp sockets in TIME_WAIT (rule time-wait-count), active for 9s"
            );
        }
        other => panic!("expected Cleared, got {other:?}"),
    }
    assert!(d.active().is_empty());
    assert!(clock.tick(&mut d, 101.0, &low, &[]).is_empty());
}

#[test]
fn count_rule_ignores_families_outside_its_group() {
    let mut d = rules(COUNT_RULE);
    let clock = Clock::new();
    let udp = counts(Family::Udp4, State::TimeWait, 1_000);
    for s in 0..200 {
        assert!(clock.tick(&mut d, s as f64, &udp, &[]).is_empty());
    }
}

const GROWTH_RULE: &str =
    "[[rule]]\nkind='growth'\nstate='CLOSE_WAIT'\nper_minute=100\nwindow='1m'\n";

/// Ticks once a second with `count(second)`, returning (second, event).
fn run_growth(seconds: u32, count: impl Fn(u32) -> u64) -> Vec<(u32, AlertEvent)> {
    let mut d = rules(GROWTH_RULE);
    let clock = Clock::new();
    let mut out = Vec::new();
    for s in 0..seconds {
        let c = counts(Family::Tcp4, State::CloseWait, count(s));
        for e in clock.tick(&mut d, s.into(), &c, &[]) {
            out.push((s, e));
        }
    }
    out
}

#[test]
fn growth_fires_on_a_steady_rise_once_a_window_is_full_and_clears_when_flat() {
    // +3 per second = 180/min for 3 minutes, then flat.
    let events = run_growth(400, |s| 1_000 + 3 * u64::from(s.min(180)));
    assert_eq!(events.len(), 2, "{events:?}");
    let (at, AlertEvent::Fired(alert)) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(*at, 60, "fires as soon as the window is full");
    assert!((alert.value - 180.0).abs() < 0.5, "{}", alert.value);
    assert_eq!(alert.threshold, 100.0);
    assert_eq!(
        alert.message,
        "CLOSE_WAIT growth: +180/min sockets in CLOSE_WAIT over 1m, above 100/min (rule close-wait-growth)"
    );
    let (at, AlertEvent::Cleared { message, .. }) = &events[1] else {
        panic!("{events:?}")
    };
    // The rise stops at 180 s; the slope falls below 80/min while the
    // window still holds part of the rise.
    assert!((190..240).contains(at), "cleared at {at}");
    assert!(
        message.starts_with("CLOSE_WAIT growth cleared: +"),
        "{message}"
    );
}

#[test]
fn growth_does_not_fire_on_a_flat_or_oscillating_count() {
    assert!(run_growth(600, |_| 5_000).is_empty());
    // Swinging by 1000 from one second to the next.
    assert!(run_growth(600, |s| if s % 2 == 0 { 5_000 } else { 6_000 }).is_empty());
    // Square waves of 300 with periods of 7 and 13 s: (now - start) / window
    // reads +300/min on some ticks, the slope stays under 50/min.
    for period in [7, 13] {
        let wave = |s: u32| {
            if s % period < period / 2 {
                5_000
            } else {
                5_300
            }
        };
        assert!(run_growth(600, wave).is_empty(), "period {period}");
    }
    // Pseudo-random noise of 0..200 (endpoint difference up to 108/min).
    let noise = |s: u32| 5_000 + (u64::from(s) * 2_654_435_761 % (1 << 32)) % 200;
    assert!(run_growth(600, noise).is_empty());
    // Falling steadily is not growth either.
    assert!(run_growth(600, |s| 100_000 - 5 * u64::from(s)).is_empty());
}

#[test]
fn growth_history_stays_bounded_at_a_fast_tick_rate() {
    let mut d = rules(GROWTH_RULE);
    let clock = Clock::new();
    let c = counts(Family::Tcp4, State::CloseWait, 1);
    // 100 ticks per second for 3 minutes.
    for i in 0..18_000 {
        clock.tick(&mut d, f64::from(i) / 100.0, &c, &[]);
    }
    let len = d.rules[0].history.len();
    assert!(len <= GROWTH_SAMPLES as usize + 2, "history of {len}");
}

const AGE_RULE: &str = "[[rule]]\nname='cw'\nkind='age'\nfamily='tcp'\nstate='CLOSE_WAIT'\nolder_than='5m'\nmin_sockets=2\nseverity='critical'\n";

#[test]
fn age_rule_fires_with_offenders_including_the_owning_process_and_clears() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let inode = inode_of(&listener);
    let mut d = rules(AGE_RULE);
    let clock = Clock::new();
    let c = Counts::default(); // age rules read the sockets, not the counts

    let young = [
        sock("10.0.0.1:8080", "10.0.0.9:40000", inode, 299),
        sock("10.0.0.1:8080", "10.0.0.9:40001", 0, 600),
    ];
    assert!(
        clock.tick(&mut d, 0.0, &c, &young).is_empty(),
        "one old socket < min_sockets"
    );

    let mut sockets = vec![
        sock("10.0.0.1:8080", "10.0.0.9:40000", inode, 300),
        sock("10.0.0.1:8080", "10.0.0.9:40001", 0, 600),
        sock("10.0.0.1:9090", "10.0.0.9:40001", 0, 301),
        // Not counted: too young, unknown age, another state, another family.
        sock("10.0.0.1:7070", "10.0.0.7:1", 0, 10),
        SocketInfo {
            age: None,
            ..sock("10.0.0.1:7070", "10.0.0.7:1", 0, 0)
        },
        SocketInfo {
            state: State::TimeWait,
            ..sock("10.0.0.1:7070", "10.0.0.7:1", 0, 999)
        },
        SocketInfo {
            family: Family::Udp4,
            ..sock("10.0.0.1:7070", "10.0.0.7:1", 0, 999)
        },
    ];
    let events = clock.tick(&mut d, 1.0, &c, &sockets);
    let alert = fired(&events);
    assert_eq!(alert.severity, Severity::Critical);
    assert_eq!((alert.value, alert.threshold), (3.0, 2.0));
    let o = &alert.offenders;
    assert_eq!(
        o.ports,
        [
            PortCount {
                port: 8080,
                sockets: 2
            },
            PortCount {
                port: 9090,
                sockets: 1
            }
        ]
    );
    assert_eq!(
        o.remotes,
        [
            RemoteCount {
                addr: "10.0.0.9:40001".parse().unwrap(),
                sockets: 2
            },
            RemoteCount {
                addr: "10.0.0.9:40000".parse().unwrap(),
                sockets: 1
            }
        ]
    );
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    let comm = comm.trim_end();
    assert_eq!(
        o.processes,
        [ProcessInfo {
            pid: std::process::id(),
            comm: comm.to_string(),
            sockets: 1
        }]
    );
    assert_eq!(
        alert.message,
        format!(
            "CLOSE_WAIT leak: 3 tcp sockets in CLOSE_WAIT older than 5m, at least 2 (rule cw); \
             top: port 8080 (2), remote 10.0.0.9:40001 (2); process {} {comm} (1)",
            std::process::id()
        )
    );

    // The application closes two of them: below min_sockets, cleared.
    sockets.drain(0..2);
    let events = clock.tick(&mut d, 2.0, &c, &sockets);
    assert!(
        matches!(events.as_slice(), [AlertEvent::Cleared { rule, .. }] if rule == "cw"),
        "{events:?}"
    );
}

#[test]
fn message_matches_the_documented_example() {
    let rule = &default_rules()[0];
    let offenders = Offenders {
        ports: vec![PortCount {
            port: 8080,
            sockets: 37,
        }],
        remotes: vec![RemoteCount {
            addr: "127.0.0.1:41234".parse().unwrap(),
            sockets: 1,
        }],
        processes: vec![ProcessInfo {
            pid: 1234,
            comm: "leaky-app".into(),
            sockets: 37,
        }],
    };
    assert_eq!(
        message(rule, 37.0, &offenders),
        "CLOSE_WAIT leak: 37 tcp sockets in CLOSE_WAIT older than 5m (rule close-wait-age); \
         top: port 8080 (37), remote 127.0.0.1:41234 (1); process 1234 leaky-app (37)"
    );
    assert_eq!(
        message(rule, 2.0, &Offenders::default()),
        "CLOSE_WAIT leak: 2 tcp sockets in CLOSE_WAIT older than 5m (rule close-wait-age)"
    );
}

#[test]
fn severity_orders_and_maps_to_nagios_exit_codes() {
    let mut d = rules(&format!("{COUNT_RULE}severity='warning'\n{AGE_RULE}"));
    let clock = Clock::new();
    let c = counts(Family::Tcp4, State::TimeWait, 101);
    let old = [
        sock("10.0.0.1:1", "10.0.0.2:1", 0, 400),
        sock("10.0.0.1:1", "10.0.0.2:2", 0, 400),
    ];
    clock.tick(&mut d, 0.0, &c, &old);
    let active = d.active();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].severity.exit_code(), 2);
    clock.tick(&mut d, 60.0, &c, &old);
    let worst = d.active().iter().map(|a| a.severity).max();
    assert_eq!(worst, Some(Severity::Critical));
    assert_eq!(Severity::Warning.exit_code(), 1);
    assert!(Severity::Warning < Severity::Critical);
}

#[test]
fn refresh_reports_only_changed_offenders() {
    let mut d = rules("[[rule]]\nkind='age'\nstate='CLOSE_WAIT'\nolder_than='1m'\n");
    let clock = Clock::new();
    let c = Counts::default();
    let a = [sock("10.0.0.1:80", "10.0.0.2:1", 0, 100)];
    let mut b = a.to_vec();
    b.push(sock("10.0.0.1:443", "10.0.0.2:1", 0, 100));

    assert!(matches!(
        clock.tick(&mut d, 0.0, &c, &a)[..],
        [AlertEvent::Fired(_)]
    ));
    // Before the refresh interval: nothing, even though offenders changed.
    assert!(clock.tick(&mut d, 30.0, &c, &b).is_empty());
    // Refresh with new names: Updated, with the new value and ports.
    let events = clock.tick(&mut d, 60.0, &c, &b);
    let [AlertEvent::Updated(alert)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(alert.value, 2.0);
    assert_eq!(alert.offenders.ports.len(), 2);
    // Refresh with the same names: silent.
    assert!(clock.tick(&mut d, 120.0, &c, &b).is_empty());
}

#[test]
fn sockets_are_dumped_for_age_and_growth_when_any_and_count_only_above_threshold() {
    let d = Detector::new(default_rules());
    let mut counts = Counts::default();
    // Nothing in CLOSE_WAIT: nothing to age or name, no dump.
    assert!(d.states_needing_sockets(&counts).is_empty());
    counts.set(Family::Tcp6, State::CloseWait, 1);
    assert_eq!(
        d.states_needing_sockets(&counts),
        [
            (Family::Tcp4, State::CloseWait),
            (Family::Tcp6, State::CloseWait)
        ]
    );
    counts.set(Family::Tcp4, State::TimeWait, 60_000);
    counts.set(Family::Tcp6, State::TimeWait, 60_000);
    assert_eq!(
        d.states_needing_sockets(&counts),
        [
            (Family::Tcp4, State::TimeWait),
            (Family::Tcp4, State::CloseWait),
            (Family::Tcp6, State::TimeWait),
            (Family::Tcp6, State::CloseWait),
        ]
    );
    assert!(
        Detector::new(Vec::new())
            .states_needing_sockets(&counts)
            .is_empty()
    );
}

#[test]
fn events_serialize_as_tagged_snake_case_json_and_back() {
    let mut d = rules(COUNT_RULE.replace("'1m'", "'0s'").as_str());
    let clock = Clock::new();
    let high = counts(Family::Tcp4, State::TimeWait, 101);
    let events = clock.tick(
        &mut d,
        0.5,
        &high,
        &[sock("10.0.0.1:80", "10.0.0.2:1", 0, 1)],
    );
    let json = serde_json::to_value(&events[0]).unwrap();
    assert_eq!(json["event"], "fired");
    assert_eq!(json["rule"], "time-wait-count");
    assert_eq!(json["kind"], "count");
    assert_eq!(json["severity"], "warning");
    assert_eq!(json["since"], "2023-11-14T22:13:20.500Z");
    assert_eq!(json["value"], 101.0);
    assert_eq!(json["offenders"]["processes"], serde_json::json!([]));
    // The TIME_WAIT rule names no CLOSE_WAIT socket.
    assert_eq!(json["offenders"]["ports"], serde_json::json!([]));
    let back: AlertEvent = serde_json::from_value(json).unwrap();
    assert_eq!(back, events[0]);

    let events = clock.tick(&mut d, 2.0, &Counts::default(), &[]);
    let json = serde_json::to_value(&events[0]).unwrap();
    assert_eq!(json["event"], "cleared");
    assert_eq!(json["cleared_at"], "2023-11-14T22:13:22.000Z");
    let back: AlertEvent = serde_json::from_value(json).unwrap();
    assert_eq!(back, events[0]);

    let offenders = Offenders {
        ports: vec![PortCount {
            port: 80,
            sockets: 2,
        }],
        remotes: vec![RemoteCount {
            addr: "[::1]:5432".parse().unwrap(),
            sockets: 1,
        }],
        processes: vec![],
    };
    assert_eq!(
        serde_json::to_string(&offenders).unwrap(),
        r#"{"ports":[{"port":80,"sockets":2}],"remotes":[{"addr":"[::1]:5432","sockets":1}],"processes":[]}"#
    );
}

/// The packaged example (deploy/leak-rules.example.toml) must load and say
/// exactly what the agent does without --rules, or it teaches the wrong thing.
#[test]
fn packaged_example_rules_are_the_defaults() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/leak-rules.example.toml");
    let loaded = load_rules(&path).unwrap();
    assert_eq!(loaded, default_rules());
}
