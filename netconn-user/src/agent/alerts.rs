//! The agent's leak loop: once a second, gather what the leak rules need
//! (counts, and the sockets of the watched states with the time each entered
//! its state, from the kernel's per-socket entries), run the detector, and
//! route what it reports: to the log as structured lines, to `watch
//! --alerts` subscribers, and to the active list that `check --leaks` reads.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use netconn_common::{Family, State};

use super::{
    hub::Hub,
    leaks::{Detector, Rule, SocketInfo, Tick},
    tracker::Tracker,
};
use crate::{
    kernel::{
        diag::{self, Kind, Proto},
        netns,
    },
    proto::{Alert, AlertEvent, AlertNamespace, WatchLine},
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

/// One detector per namespace that some rule watches (see `leaks::Scope`),
/// each with the rules that watch it.
struct Watched {
    detector: Detector,
    namespace: AlertNamespace,
    own: bool,
    path: Option<PathBuf>,
}

/// Run until the tracker stops.
pub fn run(tracker: &Tracker, hub: &Hub, active: &ActiveAlerts, rules: Vec<Rule>) {
    let mut watched: BTreeMap<u32, Watched> = BTreeMap::new();
    while !tracker.stopped() {
        let started = Instant::now();
        let mut events = Vec::new();
        // Namespaces come and go: start and retire detectors to match.
        let present = tracker.namespace_list();
        for ns in &present {
            let own = ns.inode == tracker.netns();
            let mine: Vec<Rule> = rules
                .iter()
                .filter(|r| r.scope.matches(own, &ns.name, ns.container.as_ref()))
                .cloned()
                .collect();
            if mine.is_empty() || watched.contains_key(&ns.inode) {
                continue;
            }
            watched.insert(
                ns.inode,
                Watched {
                    detector: Detector::new(mine),
                    namespace: AlertNamespace {
                        netns: ns.inode,
                        netns_name: ns.name.clone(),
                        container: ns.container.clone(),
                    },
                    own,
                    path: ns.path.clone(),
                },
            );
        }
        let gone: Vec<u32> = watched
            .keys()
            .copied()
            .filter(|i| !present.iter().any(|n| n.inode == *i))
            .collect();
        for inode in gone {
            if let Some(w) = watched.remove(&inode) {
                for alert in w.detector.active() {
                    events.push(tag(
                        &w,
                        AlertEvent::Cleared {
                            rule: alert.rule.clone(),
                            since: alert.since,
                            cleared_at: SystemTime::now(),
                            message: format!("{} cleared: the namespace is gone", alert.rule),
                            namespace: AlertNamespace::default(),
                        },
                    ));
                }
            }
        }
        for (inode, w) in watched.iter_mut() {
            match tick_one(tracker, *inode, w) {
                Ok(fresh) => events.extend(fresh.into_iter().map(|e| tag(w, e))),
                Err(e) => log::error!("leak check in {}: {e}", w.namespace.netns_name),
            }
        }
        let now_active: Vec<Alert> = watched
            .values()
            .flat_map(|w| w.detector.active().into_iter().map(|a| tag_alert(w, a)))
            .collect();
        publish(&events, now_active, active, |event| report(hub, event));
        std::thread::sleep(TICK.saturating_sub(started.elapsed()));
    }
}

/// One tick of one namespace's detector.
fn tick_one(tracker: &Tracker, inode: u32, w: &mut Watched) -> Result<Vec<AlertEvent>, String> {
    let counts = tracker.snapshot(Some(&inode.to_string()))?.counts;
    let wanted = w.detector.states_needing_sockets(&counts);
    let sockets = if wanted.is_empty() {
        Vec::new()
    } else {
        match &w.path {
            None => sockets_in(Some(tracker), &wanted).map_err(|e| e.to_string())?,
            Some(path) => netns::run_in(path, || sockets_in(Some(tracker), &wanted))
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?,
        }
    };
    let tick = Tick {
        now: Instant::now(),
        wall: SystemTime::now(),
        counts: &counts,
        sockets: &sockets,
    };
    Ok(w.detector.tick(&tick))
}

/// An alert of another namespace than the agent's own names it in its
/// message, so that `check --leaks` and logs say where.
fn tag_alert(w: &Watched, mut alert: Alert) -> Alert {
    if !w.own {
        alert.message = format!("{}: {}", label(&w.namespace), alert.message);
    }
    alert.namespace = w.namespace.clone();
    alert
}

fn tag(w: &Watched, event: AlertEvent) -> AlertEvent {
    match event {
        AlertEvent::Fired(a) => AlertEvent::Fired(tag_alert(w, a)),
        AlertEvent::Updated(a) => AlertEvent::Updated(tag_alert(w, a)),
        AlertEvent::Cleared {
            rule,
            since,
            cleared_at,
            message,
            ..
        } => AlertEvent::Cleared {
            rule,
            since,
            cleared_at,
            message: if w.own {
                message
            } else {
                format!("{}: {message}", label(&w.namespace))
            },
            namespace: w.namespace.clone(),
        },
    }
}

/// `netns blue` or `netns docker:0123456789ab`.
fn label(ns: &AlertNamespace) -> String {
    format!("netns {}", ns.netns_name)
}

/// The sockets of the wanted (family, state) pairs in the agent's namespace,
/// with their time in state from the kernel's entries (full TCP sockets)
/// when `ages` is given; without, no per-socket map lookup is made.
pub(super) fn sockets_in(
    ages: Option<&Tracker>,
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
                let age = match (row.kind, ages) {
                    (Kind::Full, Some(tracker)) => tracker.time_in_state(row.cookie),
                    _ => None,
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

/// Update the active set first, then tell the world: whoever hears of an
/// alert (a `cleared` on `watch --alerts`, say) and asks `check --leaks`
/// right away must find the set already saying so.
fn publish(
    events: &[AlertEvent],
    now_active: Vec<Alert>,
    active: &ActiveAlerts,
    mut report: impl FnMut(&AlertEvent),
) {
    active.set(now_active);
    for event in events {
        report(event);
    }
}

/// Log one structured line and tell the `--alerts` watchers.
fn report(hub: &Hub, event: &AlertEvent) {
    match event {
        AlertEvent::Fired(a) | AlertEvent::Updated(a) => {
            let what = if matches!(event, AlertEvent::Fired(_)) {
                "fired"
            } else {
                "updated"
            };
            log::warn!(
                "alert={what} rule={} netns={} kind={} severity={:?} family={} state={} value={} threshold={} message={:?}",
                a.rule,
                a.namespace.netns_name,
                a.kind.name(),
                a.severity,
                a.family,
                a.state,
                a.value,
                a.threshold,
                a.message
            );
        }
        AlertEvent::Cleared {
            rule,
            message,
            namespace,
            ..
        } => {
            log::info!(
                "alert=cleared rule={rule} netns={} message={message:?}",
                namespace.netns_name
            );
        }
    }
    let line = WatchLine::Alert {
        alert: event.clone(),
    };
    if let Ok(line) = serde_json::to_string(&line) {
        hub.publish_alert(&line);
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    /// A `cleared` event must reach watchers only once the active set no
    /// longer holds the alert (it used to be published first).
    #[test]
    fn cleared_is_published_after_the_active_set_is_updated() {
        let active = ActiveAlerts::default();
        let alert: Alert = serde_json::from_value(serde_json::json!({
            "rule": "close-wait-count", "kind": "count", "severity": "warning",
            "family": "all", "state": "CLOSE_WAIT", "message": "m", "value": 3.0,
            "threshold": 1.0, "since": "2026-12-01T00:00:00Z",
            "offenders": {"ports": [], "remotes": [], "processes": []}
        }))
        .unwrap();
        active.set(vec![alert.clone()]);
        let cleared = AlertEvent::Cleared {
            rule: alert.rule.clone(),
            since: alert.since,
            cleared_at: SystemTime::now(),
            message: "gone".into(),
            namespace: Default::default(),
        };
        let mut seen = 0;
        publish(&[cleared], Vec::new(), &active, |event| {
            assert!(matches!(event, AlertEvent::Cleared { .. }));
            assert!(
                active.get().is_empty(),
                "cleared published while still active"
            );
            seen += 1;
        });
        assert_eq!(seen, 1);
        let fired = AlertEvent::Fired(alert.clone());
        publish(&[fired], vec![alert], &active, |_| {
            assert_eq!(active.get().len(), 1, "fired published before it is active");
        });
    }
}
