//! The agent's leak loop: once a second, gather what the leak rules need
//! (counts, and the sockets of the watched states with the time each entered
//! its state, from the kernel's per-socket entries), run the detector, and
//! route what it reports: to the log as structured lines, to `watch
//! --alerts` subscribers, and to the active list that `check --leaks` reads.

use std::{
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    counts::{Family, State},
    diag::{self, Kind, Proto},
    leaks::{Alert, AlertEvent, Detector, Rule, SocketInfo, Tick},
    tracker::Tracker,
};

const TICK: Duration = Duration::from_secs(1);

/// Alerts active now, shared with the server.
#[derive(Default)]
pub struct ActiveAlerts(Mutex<Vec<Alert>>);

impl ActiveAlerts {
    pub fn get(&self) -> Vec<Alert> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, alerts: Vec<Alert>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = alerts;
    }
}

/// Run until the tracker stops.
pub fn run(tracker: &Tracker, rules: Vec<Rule>) {
    let mut detector = Detector::new(rules);
    while !tracker.stopped() {
        let started = Instant::now();
        let counts = tracker.snapshot().counts;
        let wanted = detector.states_needing_sockets(&counts);
        let sockets = match sockets_in(tracker, &wanted) {
            Ok(s) => s,
            Err(e) => {
                log::error!("leak check: {e}");
                std::thread::sleep(TICK);
                continue;
            }
        };
        let tick = Tick {
            now: Instant::now(),
            wall: SystemTime::now(),
            counts: &counts,
            sockets: &sockets,
        };
        for event in detector.tick(&tick) {
            report(tracker, &event);
        }
        tracker.alerts.set(detector.active());
        std::thread::sleep(TICK.saturating_sub(started.elapsed()));
    }
}

/// The sockets of the wanted (family, state) pairs in the agent's namespace,
/// with their time in state from the kernel's entries (full TCP sockets).
fn sockets_in(
    tracker: &Tracker,
    wanted: &[(Family, State)],
) -> Result<Vec<SocketInfo>, diag::DiagError> {
    let mut out = Vec::new();
    for (proto, families) in [
        (Proto::Tcp, [Family::Tcp4, Family::Tcp6]),
        (Proto::Udp, [Family::Udp4, Family::Udp6]),
    ] {
        for (af, family) in [libc::AF_INET as u8, libc::AF_INET6 as u8]
            .into_iter()
            .zip(families)
        {
            let states: u32 = wanted
                .iter()
                .filter(|(f, _)| *f == family)
                .map(|&(_, s)| state_bits(s))
                .fold(0, |a, b| a | b);
            if states == 0 {
                continue;
            }
            diag::dump(proto, af, states, |row| {
                let state = State::from_kernel(row.state);
                if !wanted.contains(&(row.family, state)) {
                    return; // e.g. a full FIN_WAIT2 asked for only via TIME_WAIT bits
                }
                let age = match row.kind {
                    Kind::Full => tracker.time_in_state(row.cookie),
                    Kind::TimeWait | Kind::Request => None,
                };
                out.push(SocketInfo {
                    family: row.family,
                    state,
                    local: row.src,
                    remote: row.dst,
                    inode: row.inode,
                    age,
                });
            })?;
        }
    }
    Ok(out)
}

/// sock_diag state bits for one state (UDP's CLOSE/ESTABLISHED included).
fn state_bits(state: State) -> u32 {
    match state {
        State::Unknown => 0,
        s => 1 << (s as u32),
    }
}

/// Log one structured line and tell the `--alerts` watchers.
fn report(tracker: &Tracker, event: &AlertEvent) {
    match event {
        AlertEvent::Fired(a) | AlertEvent::Updated(a) => {
            let what = if matches!(event, AlertEvent::Fired(_)) {
                "fired"
            } else {
                "updated"
            };
            log::warn!(
                "alert={what} rule={} kind={} severity={:?} family={} state={} value={} threshold={} message={:?}",
                a.rule,
                a.kind.name(),
                a.severity,
                a.family,
                a.state,
                a.value,
                a.threshold,
                a.message
            );
        }
        AlertEvent::Cleared { rule, message, .. } => {
            log::info!("alert=cleared rule={rule} message={message:?}");
        }
    }
    if let Ok(line) = serde_json::to_string(&serde_json::json!({ "alert": event })) {
        tracker.hub.publish_alert(&line);
    }
}
