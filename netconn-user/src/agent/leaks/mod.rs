//! Leak detection: rules over the live counts (and, for age rules and for
//! naming offenders, the sockets themselves) that fire and clear alerts.
//!
//! The agent calls [`Detector::tick`] about once a second and routes the
//! returned [`AlertEvent`]s; [`Detector::active`] serves `check --leaks`.
//! Rule semantics (see [`rules`] for the file format and the defaults):
//! - `count` fires when the count is above `above` on every tick for at
//!   least `for`, and clears on the first tick at or below it (the `for`
//!   delay already keeps a count hovering at the limit from flapping);
//! - `growth` is the least-squares slope of the count over `window`, in
//!   sockets per minute, once a full window of history exists. For a steady
//!   rise that is (now - start) / window; unlike that difference it does not
//!   read a count swinging up and down as growth. Fires above `per_minute`,
//!   clears below 80% of it so a rate near the limit does not flap;
//! - `age` fires while at least `min_sockets` sockets have been in the state
//!   for `older_than` or longer (sockets of unknown age do not count).
//!
//! Offenders (top local ports, remote endpoints, owning processes) come from
//! the sockets involved when an alert fires, and are refreshed every minute
//! while it stays active; only then is /proc scanned (see [`owners`]).

pub mod owners;
pub mod rules;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    hash::Hash,
    net::SocketAddr,
    time::{Duration, Instant, SystemTime},
};

pub use owners::Owners;
pub use rules::{Condition, Rule, Scope, default_rules, load_rules};

use netconn_common::{Counts, Family, State};

use crate::proto::{
    Alert, AlertEvent, AlertNamespace, Offenders, PortCount, RemoteCount, RuleKind,
};

/// Entries kept in each offenders list.
const TOP: usize = 5;
/// How often an active alert's offenders are looked up again.
const REFRESH: Duration = Duration::from_secs(60);
/// Growth history samples per window: bounds memory whatever the tick rate.
const GROWTH_SAMPLES: u32 = 240;
/// A growth alert clears below this fraction of its threshold.
const GROWTH_CLEAR: f64 = 0.8;

/// One socket in a watched state, as the agent dumped it.
#[derive(Clone, Debug, PartialEq)]
pub struct SocketInfo {
    pub family: Family,
    pub state: State,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Socket inode; 0 for orphans (no owning process).
    pub inode: u32,
    /// Time in the current state; None if unknown.
    pub age: Option<Duration>,
}

/// What the agent knows at one tick.
#[derive(Clone, Copy, Debug)]
pub struct Tick<'a> {
    pub now: Instant,
    pub wall: SystemTime,
    pub counts: &'a Counts,
    /// All sockets currently in the states of [`Detector::states_needing_sockets`]
    /// (age alerts clear when their sockets are missing).
    pub sockets: &'a [SocketInfo],
}

pub struct Detector {
    rules: Vec<Tracked>,
}

/// A rule and what it remembers between ticks.
struct Tracked {
    rule: Rule,
    /// Count rules: first tick of the current run above the limit.
    above_since: Option<Instant>,
    /// Growth rules: (time, count) samples covering the window.
    history: VecDeque<(Instant, u64)>,
    active: Option<Active>,
}

struct Active {
    alert: Alert,
    fired: Instant,
    refreshed: Instant,
}

/// One rule's reading at one tick.
struct Reading {
    value: f64,
    /// The firing condition holds.
    fire: bool,
    /// An active alert stays active (fire, or within the hysteresis).
    hold: bool,
}

impl Detector {
    pub fn new(rules: Vec<Rule>) -> Detector {
        let rules = rules
            .into_iter()
            .map(|rule| Tracked {
                rule,
                above_since: None,
                history: VecDeque::new(),
                active: None,
            })
            .collect();
        Detector { rules }
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|t| &t.rule)
    }

    /// The (family, state) pairs whose sockets the next tick needs: for age
    /// and growth rules whenever their state holds any socket (ages and
    /// offenders come from the sockets), and for a count rule only while
    /// its count is above the threshold, when the alert needs offenders. A
    /// state with no sockets costs no dump: a dump walks every socket of the
    /// namespace, which at rest in a big one was most of the agent's CPU.
    pub fn states_needing_sockets(&self, counts: &Counts) -> Vec<(Family, State)> {
        let mut out: Vec<(Family, State)> = self
            .rules()
            .filter(|r| {
                let n: u64 = r
                    .family
                    .families
                    .iter()
                    .map(|&f| counts.get(f, r.state))
                    .sum();
                match r.condition {
                    Condition::Count { above, .. } => n > above,
                    Condition::Growth { .. } | Condition::Age { .. } => n > 0,
                }
            })
            .flat_map(|r| r.family.families.iter().map(move |&f| (f, r.state)))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Alerts active now, with current values.
    pub fn active(&self) -> Vec<Alert> {
        self.rules
            .iter()
            .filter_map(|t| t.active.as_ref().map(|a| a.alert.clone()))
            .collect()
    }

    pub fn tick(&mut self, tick: &Tick) -> Vec<AlertEvent> {
        let mut events = Vec::new();
        // Rules that need offenders (index, firing anew, value): looked up
        // together so that one /proc scan serves them all.
        let mut wanted: Vec<(usize, bool, f64)> = Vec::new();
        for (i, t) in self.rules.iter_mut().enumerate() {
            let reading = t.read(tick);
            match &mut t.active {
                None if reading.fire => wanted.push((i, true, reading.value)),
                None => {}
                Some(active) if !reading.hold => {
                    let lasted = tick.now.saturating_duration_since(active.fired);
                    let message = format!(
                        "{} cleared: {} (rule {}), active for {}",
                        headline(&t.rule),
                        amount(&t.rule, reading.value),
                        t.rule.name,
                        humantime::format_duration(Duration::from_secs(lasted.as_secs()))
                    );
                    events.push(AlertEvent::Cleared {
                        rule: t.rule.name.clone(),
                        since: active.alert.since,
                        cleared_at: tick.wall,
                        message,
                        namespace: AlertNamespace::default(),
                    });
                    t.active = None;
                }
                Some(active) => {
                    active.alert.value = reading.value;
                    active.alert.message = message(&t.rule, reading.value, &active.alert.offenders);
                    if tick.now.saturating_duration_since(active.refreshed) >= REFRESH {
                        wanted.push((i, false, reading.value));
                    }
                }
            }
        }
        if wanted.is_empty() {
            return events;
        }

        let involved: Vec<Vec<&SocketInfo>> = wanted
            .iter()
            .map(|&(i, _, _)| self.rules[i].involved(tick.sockets))
            .collect();
        let inodes: HashSet<u32> = involved
            .iter()
            .flatten()
            .map(|s| s.inode)
            .filter(|&inode| inode != 0)
            .collect();
        let owners = Owners::lookup(&inodes);

        for (&(i, new, value), sockets) in wanted.iter().zip(&involved) {
            let t = &mut self.rules[i];
            let offenders = offenders(sockets, &owners);
            match &mut t.active {
                Some(active) if !new => {
                    active.refreshed = tick.now;
                    let changed = !same_names(&active.alert.offenders, &offenders);
                    active.alert.message = message(&t.rule, value, &offenders);
                    active.alert.offenders = offenders;
                    if changed {
                        events.push(AlertEvent::Updated(active.alert.clone()));
                    }
                }
                _ => {
                    let alert = Alert {
                        rule: t.rule.name.clone(),
                        kind: t.rule.condition.kind(),
                        severity: t.rule.severity,
                        family: t.rule.family.name.to_string(),
                        state: t.rule.state.name().to_string(),
                        message: message(&t.rule, value, &offenders),
                        value,
                        threshold: threshold(&t.rule),
                        since: tick.wall,
                        offenders,
                        namespace: AlertNamespace::default(),
                    };
                    events.push(AlertEvent::Fired(alert.clone()));
                    t.active = Some(Active {
                        alert,
                        fired: tick.now,
                        refreshed: tick.now,
                    });
                }
            }
        }
        events
    }
}

impl Tracked {
    fn count(&self, counts: &Counts) -> u64 {
        let state = self.rule.state;
        self.rule
            .family
            .families
            .iter()
            .map(|&f| counts.get(f, state))
            .sum()
    }

    /// Sockets the alert is about: all in the state, or for age rules the
    /// old ones only.
    fn involved<'s>(&self, sockets: &'s [SocketInfo]) -> Vec<&'s SocketInfo> {
        let min_age = match self.rule.condition {
            Condition::Age { older_than, .. } => Some(older_than),
            _ => None,
        };
        sockets
            .iter()
            .filter(|s| s.state == self.rule.state && self.rule.family.contains(s.family))
            .filter(|s| min_age.is_none_or(|min| s.age.is_some_and(|age| age >= min)))
            .collect()
    }

    fn read(&mut self, tick: &Tick) -> Reading {
        match self.rule.condition {
            Condition::Count { above, duration } => {
                let count = self.count(tick.counts);
                if count > above {
                    self.above_since.get_or_insert(tick.now);
                } else {
                    self.above_since = None;
                }
                let fire = self
                    .above_since
                    .is_some_and(|t| tick.now.saturating_duration_since(t) >= duration);
                Reading {
                    value: count as f64,
                    fire,
                    hold: self.above_since.is_some(),
                }
            }
            Condition::Growth { per_minute, window } => {
                let count = self.count(tick.counts);
                record(&mut self.history, window, tick.now, count);
                let rate = growth(&self.history, window, tick.now);
                Reading {
                    value: rate.unwrap_or(0.0),
                    fire: rate.is_some_and(|r| r > per_minute),
                    hold: rate.is_some_and(|r| r > per_minute * GROWTH_CLEAR),
                }
            }
            Condition::Age { min_sockets, .. } => {
                let old = self.involved(tick.sockets).len() as u64;
                Reading {
                    value: old as f64,
                    fire: old >= min_sockets,
                    hold: old >= min_sockets,
                }
            }
        }
    }
}

/// Add a sample, keeping one sample at or before the window start (the
/// baseline) and samples at least window/GROWTH_SAMPLES apart.
fn record(history: &mut VecDeque<(Instant, u64)>, window: Duration, now: Instant, count: u64) {
    let spacing = window / GROWTH_SAMPLES;
    if history
        .back()
        .is_none_or(|&(t, _)| now.saturating_duration_since(t) >= spacing)
    {
        history.push_back((now, count));
    }
    if let Some(start) = now.checked_sub(window) {
        while history.get(1).is_some_and(|&(t, _)| t <= start) {
            history.pop_front();
        }
    }
}

/// Least-squares slope in sockets per minute, once the history covers the
/// whole window.
fn growth(history: &VecDeque<(Instant, u64)>, window: Duration, now: Instant) -> Option<f64> {
    let &(first, _) = history.front()?;
    if now.saturating_duration_since(first) < window {
        return None;
    }
    let n = history.len() as f64;
    let points = || {
        history.iter().map(move |&(t, c)| {
            (
                t.saturating_duration_since(first).as_secs_f64() / 60.0,
                c as f64,
            )
        })
    };
    let (mean_t, mean_c) = points().fold((0.0, 0.0), |(st, sc), (t, c)| (st + t / n, sc + c / n));
    let (cov, var) = points().fold((0.0, 0.0), |(cov, var), (t, c)| {
        (
            cov + (t - mean_t) * (c - mean_c),
            var + (t - mean_t) * (t - mean_t),
        )
    });
    Some(if var > 0.0 { cov / var } else { 0.0 })
}

fn offenders(sockets: &[&SocketInfo], owners: &Owners) -> Offenders {
    offenders_top(sockets, owners, TOP)
}

/// The `n` top local ports, remote endpoints and owning processes of
/// `sockets` (also what the agent answers `top` requests with).
pub fn offenders_top(sockets: &[&SocketInfo], owners: &Owners, n: usize) -> Offenders {
    let ports = top(sockets.iter().map(|s| s.local.port()), n);
    // Listening and unconnected sockets have no remote end.
    let remotes = top(
        sockets
            .iter()
            .map(|s| s.remote)
            .filter(|r| !r.ip().is_unspecified()),
        n,
    );
    let mut processes = owners.processes(sockets.iter().map(|s| s.inode).filter(|&i| i != 0));
    processes.truncate(n);
    Offenders {
        ports: ports
            .into_iter()
            .map(|(port, sockets)| PortCount { port, sockets })
            .collect(),
        remotes: remotes
            .into_iter()
            .map(|(addr, sockets)| RemoteCount { addr, sockets })
            .collect(),
        processes,
    }
}

/// The `n` most frequent keys, most first, ties by key for stable output.
fn top<K: Hash + Eq + Ord>(keys: impl Iterator<Item = K>, n: usize) -> Vec<(K, u64)> {
    let mut counts: HashMap<K, u64> = HashMap::new();
    for k in keys {
        *counts.entry(k).or_default() += 1;
    }
    let mut out: Vec<(K, u64)> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out.truncate(n);
    out
}

/// Whether two offender lists name the same ports, remotes and processes
/// (counts aside): only then is a refresh not worth an `Updated` event.
fn same_names(a: &Offenders, b: &Offenders) -> bool {
    let ports = |o: &Offenders| o.ports.iter().map(|p| p.port).collect::<HashSet<_>>();
    let remotes = |o: &Offenders| o.remotes.iter().map(|r| r.addr).collect::<HashSet<_>>();
    let pids = |o: &Offenders| o.processes.iter().map(|p| p.pid).collect::<HashSet<_>>();
    ports(a) == ports(b) && remotes(a) == remotes(b) && pids(a) == pids(b)
}

fn threshold(rule: &Rule) -> f64 {
    match rule.condition {
        Condition::Count { above, .. } => above as f64,
        Condition::Growth { per_minute, .. } => per_minute,
        Condition::Age { min_sockets, .. } => min_sockets as f64,
    }
}

fn headline(rule: &Rule) -> String {
    let what = match rule.condition.kind() {
        RuleKind::Count => "count",
        RuleKind::Growth => "growth",
        RuleKind::Age => "leak",
    };
    format!("{} {what}", rule.state.name())
}

/// "37 tcp sockets in CLOSE_WAIT older than 5m", and the like.
fn amount(rule: &Rule, value: f64) -> String {
    let family = match rule.family.name {
        "all" => String::new(),
        name => format!("{name} "),
    };
    let state = rule.state.name();
    let fmt = humantime::format_duration;
    match rule.condition {
        Condition::Count { .. } => format!("{value:.0} {family}sockets in {state}"),
        Condition::Growth { window, .. } => {
            format!(
                "{value:+.0}/min {family}sockets in {state} over {}",
                fmt(window)
            )
        }
        Condition::Age { older_than, .. } => {
            format!(
                "{value:.0} {family}sockets in {state} older than {}",
                fmt(older_than)
            )
        }
    }
}

/// The one-line alert text: what, how much against which limit, which rule,
/// and the top port, remote and process.
fn message(rule: &Rule, value: f64, offenders: &Offenders) -> String {
    let limit = match rule.condition {
        Condition::Count { above, duration } => {
            format!(
                ", above {above} for {}",
                humantime::format_duration(duration)
            )
        }
        Condition::Growth { per_minute, .. } => format!(", above {per_minute}/min"),
        Condition::Age { min_sockets: 1, .. } => String::new(),
        Condition::Age { min_sockets, .. } => format!(", at least {min_sockets}"),
    };
    let mut out = format!(
        "{}: {}{limit} (rule {})",
        headline(rule),
        amount(rule, value),
        rule.name
    );
    let mut top = Vec::new();
    if let Some(p) = offenders.ports.first() {
        top.push(format!("port {} ({})", p.port, p.sockets));
    }
    if let Some(r) = offenders.remotes.first() {
        top.push(format!("remote {} ({})", r.addr, r.sockets));
    }
    if !top.is_empty() {
        out += &format!("; top: {}", top.join(", "));
    }
    if let Some(p) = offenders.processes.first() {
        out += &format!("; process {} {} ({})", p.pid, p.comm, p.sockets);
    }
    out
}

#[cfg(test)]
mod tests;
