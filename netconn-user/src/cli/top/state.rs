//! What `top` knows and what the operator chose, apart from how it is
//! fetched (`connection`) and drawn (`view`): count history for the
//! sparklines and growth, the namespace rows, the selections, the filter,
//! the transitions pane and its pause. Pure data and keys: unit-tested
//! without a terminal or an agent.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use netconn_common::{Counts, Family, State};

use super::connection::{Link, Update, Wanted};
use crate::proto::{Alert, Meta, NamespacesReply, StatsReply, TopReply, Transition};

/// Samples kept per namespace: ten minutes at one a second.
const HISTORY: usize = 600;
/// Transitions kept for the pane (it shows the newest that fit).
const TRANSITIONS: usize = 1000;
/// Growth is measured over this much history (less while it is younger).
const GROWTH_OVER: Duration = Duration::from_secs(60);
/// How long "reconnected" stays on screen.
const NOTICE_FOR: Duration = Duration::from_secs(10);
/// One sparkline cell covers this much time.
pub const SPARK_BUCKET: Duration = Duration::from_secs(5);

/// The family views `f` cycles through: a group name and its families.
pub const FAMILIES: [(&str, &[Family]); 7] = [
    ("all", &Family::ALL),
    ("tcp", &[Family::Tcp4, Family::Tcp6]),
    ("udp", &[Family::Udp4, Family::Udp6]),
    ("tcp4", &[Family::Tcp4]),
    ("tcp6", &[Family::Tcp6]),
    ("udp4", &[Family::Udp4]),
    ("udp6", &[Family::Udp6]),
];

/// How the namespace rows are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    /// Fastest growing first: where a leak shows.
    Growth,
    /// Most sockets first.
    Sockets,
    /// By namespace inode, stable.
    Netns,
}

impl Sort {
    pub fn name(self) -> &'static str {
        match self {
            Sort::Growth => "growth",
            Sort::Sockets => "sockets",
            Sort::Netns => "netns",
        }
    }

    fn next(self) -> Sort {
        match self {
            Sort::Growth => Sort::Sockets,
            Sort::Sockets => Sort::Netns,
            Sort::Netns => Sort::Growth,
        }
    }
}

/// Keys, as the view's terminal reports them (mapped in `mod.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Up,
    Down,
    Tab,
    BackTab,
    Enter,
    Esc,
    Backspace,
    CtrlC,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Quit,
}

/// One namespace (container) row and its history.
#[derive(Debug)]
pub struct Namespace {
    pub netns: u32,
    /// What the row is: today always the agent's own namespace.
    pub label: String,
    pub exact: bool,
    history: VecDeque<(Instant, Counts)>,
}

impl Namespace {
    pub fn latest(&self) -> Counts {
        self.history.back().map(|&(_, c)| c).unwrap_or_default()
    }

    /// Sockets of `families` (in `state`, or in every state) now.
    pub fn count(&self, families: &[Family], state: Option<State>) -> u64 {
        count(&self.latest(), families, state)
    }

    /// Change per minute over the last [`GROWTH_OVER`] (from the oldest
    /// sample while the history is younger); 0 before 5 s of history.
    pub fn growth(&self, families: &[Family], state: Option<State>) -> f64 {
        let Some(&(now, latest)) = self.history.back() else {
            return 0.0;
        };
        let from = now.checked_sub(GROWTH_OVER);
        let Some(&(then, old)) = self
            .history
            .iter()
            .find(|(t, _)| from.is_none_or(|from| *t >= from))
        else {
            return 0.0;
        };
        let span = now.saturating_duration_since(then);
        if span < Duration::from_secs(5) {
            return 0.0;
        }
        let delta = count(&latest, families, state) as f64 - count(&old, families, state) as f64;
        delta * 60.0 / span.as_secs_f64()
    }

    /// `width` cells, oldest first, each the highest count in one
    /// [`SPARK_BUCKET`] ending at the latest sample; None where there is
    /// no sample yet.
    pub fn buckets(&self, families: &[Family], state: State, width: usize) -> Vec<Option<u64>> {
        let mut cells = vec![None; width];
        let Some(&(now, _)) = self.history.back() else {
            return cells;
        };
        for (t, counts) in self.history.iter().rev() {
            let age = now.saturating_duration_since(*t);
            let back = (age.as_secs_f64() / SPARK_BUCKET.as_secs_f64()) as usize;
            if back >= width {
                break;
            }
            let cell = &mut cells[width - 1 - back];
            let n = counts.sum(families, state);
            *cell = Some(cell.map_or(n, |c: u64| c.max(n)));
        }
        cells
    }
}

fn count(counts: &Counts, families: &[Family], state: Option<State>) -> u64 {
    match state {
        Some(s) => counts.sum(families, s),
        None => families.iter().map(|&f| counts.family_total(f)).sum(),
    }
}

/// A sparkline: the lowest cell of the window is `▁`, the highest `█`, so
/// a climb shows whatever its size (the growth column gives the size).
pub fn sparkline(cells: &[Option<u64>]) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let present = cells.iter().flatten();
    let (Some(lo), Some(hi)) = (present.clone().min(), present.max()) else {
        return " ".repeat(cells.len());
    };
    cells
        .iter()
        .map(|cell| match cell {
            None => ' ',
            Some(_) if hi == lo => LEVELS[0],
            Some(n) => LEVELS[((n - lo) * 7 / (hi - lo)) as usize],
        })
        .collect()
}

/// The rows a poll gives: one per namespace the agent tracks, named as it
/// names them (with the container when there is one); the agent's own only
/// from an agent that cannot list them all.
pub fn namespace_rows(
    stats: &StatsReply,
    all: Option<&NamespacesReply>,
) -> Vec<(u32, String, Counts)> {
    match all {
        Some(all) => all
            .namespaces
            .iter()
            .map(|n| {
                let label = match &n.container {
                    Some(c) if !n.name.starts_with(&c.runtime) => {
                        format!("{} ({})", n.name, c.runtime)
                    }
                    _ => n.name.clone(),
                };
                (n.netns, label, n.counts)
            })
            .collect(),
        None => vec![(
            stats.meta.netns,
            "agent's namespace".to_string(),
            stats.counts,
        )],
    }
}

#[derive(Debug)]
pub struct App {
    /// The agent's socket, for messages.
    pub socket: String,
    pub link: Link,
    /// Was the agent ever reached: a later loss then reads as a restart.
    ever_up: bool,
    /// A lost link's first moment, for "since" and "reconnected".
    lost_at: Option<Instant>,
    /// A short message and when it was set ("reconnected ...").
    pub notice: Option<(String, Instant)>,
    pub meta: Option<Meta>,
    pub namespaces: Vec<Namespace>,
    pub selected_ns: Option<u32>,
    /// Index into [`FAMILIES`].
    pub family: usize,
    pub state: State,
    pub sort: Sort,
    pub port: Option<u16>,
    /// Typing a port filter: what is typed so far.
    pub input: Option<String>,
    pub help: bool,
    pub alerts: Vec<Alert>,
    pub top: Option<TopReply>,
    pub top_error: Option<String>,
    pub watch_error: Option<String>,
    transitions: VecDeque<Transition>,
    /// The pane's content while paused; new transitions still arrive.
    frozen: Option<Vec<Transition>>,
    /// Transitions (matching the filter) that arrived while paused.
    pub new_while_paused: u64,
    pub dropped: u64,
}

impl App {
    pub fn new(socket: String) -> App {
        App {
            socket,
            link: Link::Connecting,
            ever_up: false,
            lost_at: None,
            notice: None,
            meta: None,
            namespaces: Vec::new(),
            selected_ns: None,
            family: 0,
            state: State::Established,
            sort: Sort::Growth,
            port: None,
            input: None,
            help: false,
            alerts: Vec::new(),
            top: None,
            top_error: None,
            watch_error: None,
            transitions: VecDeque::new(),
            frozen: None,
            new_while_paused: 0,
            dropped: 0,
        }
    }

    pub fn families(&self) -> &'static [Family] {
        FAMILIES[self.family].1
    }

    pub fn family_name(&self) -> &'static str {
        FAMILIES[self.family].0
    }

    pub fn paused(&self) -> bool {
        self.frozen.is_some()
    }

    /// What the connection should fetch for this view.
    pub fn wanted(&self) -> Wanted {
        Wanted {
            state: self.state,
            family: self.family_name(),
            netns: self.selected_ns,
        }
    }

    /// The selected namespace's row.
    pub fn selected(&self) -> Option<&Namespace> {
        self.namespaces
            .iter()
            .find(|n| Some(n.netns) == self.selected_ns)
    }

    /// Namespace rows in the chosen order.
    pub fn sorted_namespaces(&self) -> Vec<&Namespace> {
        let families = self.families();
        let mut rows: Vec<&Namespace> = self.namespaces.iter().collect();
        match self.sort {
            Sort::Growth => rows.sort_by(|a, b| {
                b.growth(families, None)
                    .total_cmp(&a.growth(families, None))
                    .then(a.netns.cmp(&b.netns))
            }),
            Sort::Sockets => rows.sort_by(|a, b| {
                b.count(families, None)
                    .cmp(&a.count(families, None))
                    .then(a.netns.cmp(&b.netns))
            }),
            Sort::Netns => rows.sort_by_key(|n| n.netns),
        }
        rows
    }

    /// States listed for the selected namespace: those with a socket now or
    /// within the history, and the selected one.
    pub fn visible_states(&self) -> Vec<State> {
        let Some(ns) = self.selected() else {
            return Vec::new();
        };
        State::ALL
            .into_iter()
            .filter(|&s| {
                s == self.state
                    || ns
                        .history
                        .iter()
                        .any(|(_, c)| Family::ALL.iter().any(|&f| c.get(f, s) > 0))
            })
            .collect()
    }

    /// The transitions pane's lines, newest first, filtered by port.
    pub fn shown_transitions(&self) -> Vec<&Transition> {
        let port = self.port;
        let matches = |t: &&Transition| port.is_none_or(|p| t.lport == p || t.rport == p);
        match &self.frozen {
            Some(frozen) => frozen.iter().rev().filter(matches).collect(),
            None => self.transitions.iter().rev().filter(matches).collect(),
        }
    }

    /// Take one update from the connection.
    pub fn apply(&mut self, update: Update, now: Instant) {
        match update {
            Update::Poll { stats, all, alerts } => {
                self.alerts = alerts;
                let rows = namespace_rows(&stats, all.as_deref());
                self.namespaces
                    .retain(|n| rows.iter().any(|r| r.0 == n.netns));
                for (netns, label, counts) in rows {
                    let row = match self.namespaces.iter_mut().position(|n| n.netns == netns) {
                        Some(i) => &mut self.namespaces[i],
                        None => {
                            self.namespaces.push(Namespace {
                                netns,
                                label,
                                exact: true,
                                history: VecDeque::new(),
                            });
                            let last = self.namespaces.len() - 1;
                            &mut self.namespaces[last]
                        }
                    };
                    row.exact = stats.meta.exact;
                    if row.history.len() == HISTORY {
                        row.history.pop_front();
                    }
                    row.history.push_back((now, counts));
                }
                // Start on the agent's own namespace, as `stats` does.
                if self.selected().is_none() {
                    let own = stats.meta.netns;
                    self.selected_ns = if self.namespaces.iter().any(|n| n.netns == own) {
                        Some(own)
                    } else {
                        self.sorted_namespaces().first().map(|n| n.netns)
                    };
                }
                self.meta = Some(stats.meta);
            }
            Update::Top(reply) => {
                self.top = Some(*reply);
                self.top_error = None;
            }
            Update::TopFailed(message) => self.top_error = Some(message),
            Update::Transition(t) => {
                if self.frozen.is_some() && self.port.is_none_or(|p| t.lport == p || t.rport == p) {
                    self.new_while_paused += 1;
                }
                if self.transitions.len() == TRANSITIONS {
                    self.transitions.pop_front();
                }
                self.transitions.push_back(*t);
            }
            Update::Dropped(n) => self.dropped += n,
            Update::WatchFailed(message) => self.watch_error = Some(message),
            Update::Link(link) => self.set_link(link, now),
        }
    }

    fn set_link(&mut self, link: Link, now: Instant) {
        match (&self.link, &link) {
            (_, Link::Up) => {
                if self.ever_up
                    && let Some(lost) = self.lost_at
                {
                    let away = now.saturating_duration_since(lost).as_secs();
                    self.notice = Some((
                        format!("reconnected to the agent (it was away {away} s; history kept)"),
                        now,
                    ));
                }
                self.ever_up = true;
                self.lost_at = None;
                self.watch_error = None;
            }
            (Link::Up | Link::Connecting, _) => {
                self.lost_at = Some(now);
                self.notice = None;
            }
            _ => {}
        }
        self.link = link;
    }

    /// The notice, while it is fresh.
    pub fn notice(&self, now: Instant) -> Option<&str> {
        self.notice
            .as_ref()
            .filter(|(_, at)| now.saturating_duration_since(*at) < NOTICE_FOR)
            .map(|(m, _)| m.as_str())
    }

    pub fn key(&mut self, key: Key) -> Action {
        if key == Key::CtrlC {
            return Action::Quit;
        }
        if let Some(typed) = &mut self.input {
            match key {
                Key::Char(c) if c.is_ascii_digit() && typed.len() < 5 => typed.push(c),
                Key::Backspace => {
                    typed.pop();
                }
                Key::Enter => {
                    // Empty clears the filter; a number out of range keeps
                    // typing mode so the mistake is visible.
                    if typed.is_empty() {
                        self.port = None;
                        self.input = None;
                    } else if let Ok(port) = typed.parse::<u16>() {
                        self.port = Some(port);
                        self.input = None;
                    }
                }
                Key::Esc => self.input = None,
                _ => {}
            }
            return Action::Continue;
        }
        if self.help {
            // Any key closes the help; `q` still quits.
            self.help = false;
            return if key == Key::Char('q') {
                Action::Quit
            } else {
                Action::Continue
            };
        }
        match key {
            Key::Char('q') => return Action::Quit,
            Key::Char('?') | Key::Char('h') => self.help = true,
            Key::Char('f') => self.family = (self.family + 1) % FAMILIES.len(),
            Key::Char('F') => self.family = (self.family + FAMILIES.len() - 1) % FAMILIES.len(),
            Key::Up | Key::Char('k') => self.move_state(-1),
            Key::Down | Key::Char('j') => self.move_state(1),
            Key::Tab | Key::Char('n') => self.move_namespace(1),
            Key::BackTab | Key::Char('N') => self.move_namespace(-1),
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('/') => self.input = Some(String::new()),
            Key::Char('p') | Key::Char(' ') => self.toggle_pause(),
            Key::Esc => self.port = None,
            _ => {}
        }
        Action::Continue
    }

    fn toggle_pause(&mut self) {
        if self.frozen.take().is_none() {
            self.frozen = Some(self.transitions.iter().cloned().collect());
            self.new_while_paused = 0;
        }
    }

    fn move_state(&mut self, step: isize) {
        let states = self.visible_states();
        let Some(at) = states.iter().position(|&s| s == self.state) else {
            return;
        };
        let to = at as isize + step;
        if let Some(&s) = usize::try_from(to).ok().and_then(|i| states.get(i)) {
            self.state = s;
        }
    }

    fn move_namespace(&mut self, step: isize) {
        let rows: Vec<u32> = self.sorted_namespaces().iter().map(|n| n.netns).collect();
        if rows.is_empty() {
            return;
        }
        let at = rows
            .iter()
            .position(|&n| Some(n) == self.selected_ns)
            .unwrap_or(0) as isize;
        let len = rows.len() as isize;
        self.selected_ns = Some(rows[(at + step).rem_euclid(len) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Meta;

    fn stats(netns: u32, established: u64, listen: u64) -> Update {
        let mut counts = Counts::default();
        counts.set(Family::Tcp4, State::Established, established);
        counts.set(Family::Tcp6, State::Listen, listen);
        Update::Poll {
            stats: Box::new(StatsReply {
                counts,
                meta: Meta {
                    netns,
                    exact: true,
                    ..Meta::default()
                },
            }),
            all: None,
            alerts: Vec::new(),
        }
    }

    fn transition(lport: u16) -> Update {
        Update::Transition(Box::new(Transition {
            time: "t".into(),
            netns: 7,
            sk: "1".into(),
            netns_name: None,
            family: "tcp4".into(),
            laddr: "127.0.0.1".into(),
            lport,
            raddr: "127.0.0.1".into(),
            rport: 40000,
            old: "SYN_SENT".into(),
            new: "ESTABLISHED".into(),
            ms: 0.1,
            pid: None,
            comm: None,
            note: None,
        }))
    }

    #[test]
    fn growth_and_buckets_follow_the_history() {
        let mut app = App::new("s".into());
        let t0 = Instant::now();
        for i in 0..=60u64 {
            app.apply(stats(7, 100 + i, 2), t0 + Duration::from_secs(i));
        }
        let ns = app.selected().unwrap();
        assert_eq!(ns.count(&Family::ALL, Some(State::Established)), 160);
        let g = ns.growth(&Family::ALL, Some(State::Established));
        assert!((g - 60.0).abs() < 1e-9, "{g}");
        assert_eq!(ns.growth(&Family::ALL, Some(State::Listen)), 0.0);
        // 61 s of history in 5 s cells: 13 cells hold samples.
        let cells = ns.buckets(&Family::ALL, State::Established, 20);
        assert_eq!(cells.iter().flatten().count(), 13);
        assert_eq!(cells[19], Some(160));
        let line = sparkline(&cells);
        assert_eq!(line.chars().count(), 20);
        assert!(line.starts_with("       "), "{line:?}");
        assert!(line.ends_with('█'));
        assert_eq!(sparkline(&[Some(3), Some(3)]), "▁▁");
        assert_eq!(sparkline(&[None, None]), "  ");
    }

    #[test]
    fn keys_switch_family_state_sort_pause_and_filter() {
        let mut app = App::new("s".into());
        let t0 = Instant::now();
        app.apply(stats(7, 5, 2), t0);
        assert_eq!(app.selected_ns, Some(7));
        assert_eq!(app.visible_states(), [State::Established, State::Listen]);
        assert_eq!(app.key(Key::Down), Action::Continue);
        assert_eq!(app.state, State::Listen);
        app.key(Key::Down);
        assert_eq!(app.state, State::Listen, "stays on the last row");
        app.key(Key::Char('f'));
        assert_eq!(app.wanted().family, "tcp");
        app.key(Key::Char('F'));
        assert_eq!(app.family_name(), "all");
        app.key(Key::Char('s'));
        assert_eq!(app.sort, Sort::Sockets);

        app.apply(transition(80), t0);
        app.apply(transition(81), t0);
        app.key(Key::Char('p'));
        assert!(app.paused());
        app.apply(transition(80), t0);
        assert_eq!(app.shown_transitions().len(), 2, "frozen while paused");
        assert_eq!(app.new_while_paused, 1);
        app.key(Key::Char('p'));
        assert_eq!(app.shown_transitions().len(), 3);

        for k in [Key::Char('/'), Key::Char('8'), Key::Char('0'), Key::Enter] {
            app.key(k);
        }
        assert_eq!(app.port, Some(80));
        assert_eq!(app.shown_transitions().len(), 2);
        // While typing, letters do nothing and `q` does not quit.
        app.key(Key::Char('/'));
        assert_eq!(app.key(Key::Char('q')), Action::Continue);
        for k in [
            Key::Char('9'),
            Key::Char('9'),
            Key::Char('9'),
            Key::Char('9'),
        ] {
            app.key(k);
        }
        app.key(Key::Char('9'));
        app.key(Key::Enter);
        assert_eq!(
            app.input.as_deref(),
            Some("99999"),
            "out of range: still typing"
        );
        app.key(Key::Esc);
        assert_eq!(app.port, Some(80));
        app.key(Key::Char('/'));
        app.key(Key::Enter);
        assert_eq!(app.port, None, "empty clears");

        app.key(Key::Char('?'));
        assert!(app.help);
        assert_eq!(app.key(Key::Char('x')), Action::Continue);
        assert!(!app.help);
        assert_eq!(app.key(Key::Char('q')), Action::Quit);
        assert_eq!(app.key(Key::CtrlC), Action::Quit);
    }

    #[test]
    fn a_lost_agent_that_comes_back_reads_as_reconnected() {
        let mut app = App::new("s".into());
        let t0 = Instant::now();
        app.apply(Update::Link(Link::NoAgent("no netconn agent".into())), t0);
        app.apply(Update::Link(Link::Up), t0);
        assert_eq!(app.notice(t0), None, "first contact is no reconnect");
        app.apply(Update::Link(Link::NoAgent("lost".into())), t0);
        let back = t0 + Duration::from_secs(3);
        app.apply(Update::Link(Link::Up), back);
        assert!(app.notice(back).unwrap().contains("reconnected"));
        assert_eq!(app.notice(back + NOTICE_FOR), None);
    }
}
