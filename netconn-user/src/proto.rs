//! The agent's wire protocol, one typed definition for both ends of its
//! Unix socket: one JSON object per line each way.
//!
//! Requests ([`Request`]): `{"cmd":"stats"}`, `{"cmd":"ping"}`,
//! `{"cmd":"leaks"}`, `{"cmd":"top","state":"CLOSE_WAIT","family":"tcp"}`,
//! `{"cmd":"watch","filter":{...},"alerts":false}`.
//! Replies: [`StatsReply`] (seven count keys plus `meta`), [`Pong`],
//! [`LeaksReply`], [`TopReply`], or [`ErrorReply`] for anything the agent
//! cannot serve.
//! A `watch` turns the connection into a stream of [`WatchLine`]s.

use std::{net::SocketAddr, time::SystemTime};

use netconn_common::{Counts, Family, State, model::GROUPS};
use serde::{Deserialize, Serialize};

/// The agent's socket when neither `--socket` nor `NETCONN_SOCKET` is given.
/// In a directory of its own so the systemd unit can serve it from a
/// `RuntimeDirectory=` under a read-only /run, and clients find the packaged
/// agent with no flag.
pub const DEFAULT_SOCKET: &str = "/run/netconn/netconn.sock";

/// Longest request line accepted; longer ones get an error and the
/// connection is closed (there is no way to find the next request in it).
pub const MAX_REQUEST: usize = 4096;

/// A request line. A struct rather than an internally tagged enum: serde
/// ignores `deny_unknown_fields` on unit variants, and unknown fields must
/// be refused, not silently dropped.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub cmd: Command,
    /// `watch` only: which transitions to send.
    #[serde(default, skip_serializing_if = "Filter::is_empty")]
    pub filter: Filter,
    /// `watch` only: send leak alerts instead of transitions.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub alerts: bool,
    /// `stats`: the namespace to count, by name, inode or pid (the agent's
    /// own when absent). See [`NetnsSelector`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// `stats`: every namespace ([`NamespacesReply`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_netns: bool,
    /// `top` only: the state to break down, as named in the stats JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `top` only: tcp4, tcp6, udp4, udp6, tcp, udp or all (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
}

impl Request {
    pub fn new(cmd: Command) -> Request {
        Request {
            cmd,
            filter: Filter::default(),
            alerts: false,
            netns: None,
            all_netns: false,
            state: None,
            family: None,
        }
    }

    pub fn watch(filter: Filter, alerts: bool) -> Request {
        Request {
            filter,
            alerts,
            ..Request::new(Command::Watch)
        }
    }

    pub fn stats(netns: Option<String>) -> Request {
        Request {
            netns,
            ..Request::new(Command::Stats)
        }
    }

    pub fn stats_all() -> Request {
        Request {
            all_netns: true,
            ..Request::new(Command::Stats)
        }
    }

    /// Who holds the sockets of `state` in the families of `family`.
    pub fn top(state: State, family: &str) -> Request {
        Request {
            state: Some(state.name().to_string()),
            family: Some(family.to_string()),
            ..Request::new(Command::Top)
        }
    }

    /// The state and family group of a `top` request, checked (both ends
    /// call it): the state is required, the family defaults to `all`.
    pub fn top_query(&self) -> Result<(State, &'static str, &'static [Family]), String> {
        let Some(name) = &self.state else {
            return Err(
                "top needs a state, e.g. {\"cmd\":\"top\",\"state\":\"CLOSE_WAIT\"}".into(),
            );
        };
        let state = State::from_name(name)
            .ok_or_else(|| format!("unknown state {name:?} (use e.g. ESTABLISHED, TIME_WAIT)"))?;
        let family = self.family.as_deref().unwrap_or("all");
        let (group, families) =
            GROUPS
                .into_iter()
                .find(|(g, _)| *g == family)
                .ok_or_else(|| {
                    format!("unknown family {family:?} (tcp4, tcp6, udp4, udp6, tcp, udp or all)")
                })?;
        Ok((state, group, families))
    }
}

/// How a client names a namespace: a name the agent gave it (`host`, an
/// `ip netns` name, `docker:0123456789ab`, ...), a container id (or its
/// first 12 digits), an inode number, or a pid of a process inside. Numbers
/// above the kernel's largest pid (2^22) are inodes: namespace inodes start
/// near 2^32. Paths are turned into inodes by the client, which sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsSelector {
    Inode(u32),
    Pid(u32),
    Name(String),
}

/// PID_MAX_LIMIT (include/linux/threads.h) on 64-bit.
const PID_MAX_LIMIT: u64 = 1 << 22;

impl NetnsSelector {
    pub fn parse(text: &str) -> NetnsSelector {
        match text.parse::<u64>() {
            Ok(n) if n > PID_MAX_LIMIT => match u32::try_from(n) {
                Ok(inode) => NetnsSelector::Inode(inode),
                Err(_) => NetnsSelector::Name(text.to_string()),
            },
            Ok(n) => NetnsSelector::Pid(n as u32),
            Err(_) => NetnsSelector::Name(text.to_string()),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, PartialEq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    Stats,
    Ping,
    Watch,
    /// The leak alerts active now.
    Leaks,
    /// Top local ports, remote endpoints and processes of one state.
    Top,
}

/// What a watcher asked for; every list is OR'd, lists are AND'd, empty = any.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Either side's port.
    #[serde(default)]
    pub port: Vec<u16>,
    #[serde(default)]
    pub local_port: Vec<u16>,
    #[serde(default)]
    pub remote_port: Vec<u16>,
    /// 4 or 6.
    #[serde(default)]
    pub family: Vec<u8>,
    /// State names as in the stats JSON; matches old or new.
    #[serde(default)]
    pub state: Vec<String>,
    /// Namespaces by inode.
    #[serde(default)]
    pub netns: Vec<u32>,
    /// Namespaces by name, container id or pid (see [`NetnsSelector`]);
    /// the agent turns them into inodes when the watcher connects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub netns_name: Vec<String>,
}

impl Filter {
    /// Whether it lets every event through.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Check the values once, when the watcher connects (both ends do).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(f) = self.family.iter().find(|f| **f != 4 && **f != 6) {
            return Err(format!("family must be 4 or 6, not {f}"));
        }
        if let Some(s) = self.state.iter().find(|s| State::from_name(s).is_none()) {
            return Err(format!(
                "unknown state {s:?} (use e.g. ESTABLISHED, TIME_WAIT)"
            ));
        }
        Ok(())
    }
}

/// Reply to `stats`: the seven count keys (`tcp4` ... `all`) and `meta`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatsReply {
    #[serde(flatten)]
    pub counts: Counts,
    pub meta: Meta,
}

/// Reply to `stats` with `all_netns`: one entry per namespace the agent
/// tracks, then the agent-wide `meta` (its `netns` is the agent's own).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NamespacesReply {
    pub namespaces: Vec<NamespaceCounts>,
    pub meta: Meta,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NamespaceCounts {
    /// Inode number.
    pub netns: u32,
    pub name: String,
    pub container: Option<Container>,
    /// A process inside, when there is one.
    pub pid: Option<u32>,
    #[serde(flatten)]
    pub counts: Counts,
    pub exact: bool,
    /// Why not exact (left out when exact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inexact: Vec<String>,
}

/// The container a namespace belongs to, from a member's cgroup path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// docker, containerd, cri-o, podman, systemd-nspawn or kubernetes.
    pub runtime: String,
    /// Container id (64 hex digits), machine name, or pod UID.
    pub id: String,
    /// Kubernetes pod UID, when the container is in a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// How an answer came about, and whether it is exact.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Meta {
    pub version: String,
    /// Inode of the namespace counted.
    pub netns: u32,
    /// Its name (`host`, an `ip netns` name, a container, `pid N (comm)`).
    #[serde(default)]
    pub netns_name: String,
    /// Namespaces the agent tracks.
    #[serde(default)]
    pub namespaces: usize,
    /// When the current kernel-side generation was seeded (RFC 3339).
    pub seeded_at: String,
    /// Age of the refreshed part (TIME_WAIT, orphan FIN_WAIT2, request
    /// SYN_RECV, UDP), in milliseconds.
    pub refreshed_age_ms: f64,
    /// Time the last refresh dump took, in milliseconds.
    pub refresh_ms: f64,
    pub exact: bool,
    /// Why not exact (empty when exact).
    pub inexact: Vec<String>,
    pub seed: SeedReport,
    /// Re-seeds that concerned this namespace (its own drift, or kernel-side
    /// trouble, which concerns all).
    pub reseeds: u64,
    /// Re-seeds of the whole agent, whatever namespace caused them.
    #[serde(default)]
    pub reseeds_total: u64,
    /// Events the kernel skipped for the primary program (it was running on
    /// that CPU when a softirq fired the tracepoint again) and how many of
    /// them the backup program handled: equal when nothing was lost.
    pub nested_events: u64,
    pub nested_handled: u64,
    /// Where the kernel side is pinned (`agent --pin`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<PinMeta>,
}

/// `agent --pin`: where the kernel side lives and how this agent got it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinMeta {
    /// The pin directory (`<root>/layout-<version>`).
    pub dir: String,
    /// Its layout version.
    pub layout: u32,
    /// This agent took over a generation an earlier one pinned there (no
    /// re-seed: the kernel side counted on while no agent ran).
    pub adopted: bool,
    /// Layout versions of other generations this agent replaced (an
    /// upgrade): it attached and seeded its own, then removed them.
    #[serde(default)]
    pub replaced: Vec<u32>,
}

/// What seeding a generation did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SeedReport {
    /// Full TCP sockets the seeding iterator visited.
    pub dumped: u64,
    /// Of those, entered and counted by it.
    pub inserted: u64,
    /// Already known to the kernel side (an event came first) or closed.
    pub already_known: u64,
    /// Could not be entered: per-socket map full.
    pub map_full: u64,
    pub millis: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pong {
    pub pong: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaksReply {
    pub alerts: Vec<Alert>,
}

/// Reply to `top`: who holds the sockets of one state in the agent's
/// namespace, most sockets first (top 10 of each).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopReply {
    pub state: String,
    /// The family group asked for.
    pub family: String,
    /// Inode of the namespace whose sockets these are.
    pub netns: u32,
    /// Sockets in the state when the breakdown was made.
    pub sockets: u64,
    /// Age of the breakdown: the agent reuses one for a few seconds so that
    /// clients asking every second cost it little.
    pub age_ms: f64,
    #[serde(flatten)]
    pub offenders: Offenders,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

pub fn error_reply(message: &str) -> String {
    serde_json::to_string(&ErrorReply {
        error: message.to_string(),
    })
    .unwrap_or_else(|_| r#"{"error":"internal error"}"#.to_string())
}

/// One line of a `watch` stream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum WatchLine {
    Dropped(Dropped),
    Alert { alert: AlertEvent },
    Transition(Transition),
}

/// Events a watcher lost since its last line (see README, `watch`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dropped {
    pub dropped: u64,
    pub slow_reader: u64,
    pub kernel_ring: u64,
}

/// One TCP state change (fields as documented in the README). The agent
/// writes these lines by hand for speed (agent/hub.rs); its tests check
/// they parse as this type.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    pub time: String,
    pub netns: u32,
    /// The socket's cookie in hex, as `ss -e` prints it (`sk:...`).
    #[serde(default)]
    pub sk: String,
    /// The namespace's name, when the agent knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_name: Option<String>,
    pub family: String,
    pub laddr: String,
    pub lport: u16,
    pub raddr: String,
    pub rport: u16,
    pub old: String,
    pub new: String,
    pub ms: f64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

// Leak alerts: fired by the agent's detector, read by `watch --alerts`
// and `check --leaks`.

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCount {
    pub port: u16,
    pub sockets: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCount {
    pub addr: SocketAddr,
    pub sockets: u64,
}

/// Who is responsible: top 5 of each, most sockets first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offenders {
    pub ports: Vec<PortCount>,
    pub remotes: Vec<RemoteCount>,
    pub processes: Vec<ProcessInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub rule: String,
    pub kind: RuleKind,
    pub severity: Severity,
    /// Family group of the rule: tcp4, tcp6, udp4, udp6, tcp, udp or all.
    pub family: String,
    pub state: String,
    pub message: String,
    /// Count (count), sockets per minute (growth) or old sockets (age).
    pub value: f64,
    /// `above`, `per_minute` or `min_sockets`.
    pub threshold: f64,
    /// When the alert fired (RFC 3339 in JSON).
    #[serde(with = "rfc3339")]
    pub since: SystemTime,
    pub offenders: Offenders,
    /// The namespace it concerns (inode, name, container).
    #[serde(flatten)]
    pub namespace: AlertNamespace,
}

/// Which network namespace an alert concerns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertNamespace {
    #[serde(default)]
    pub netns: u32,
    #[serde(default)]
    pub netns_name: String,
    #[serde(default)]
    pub container: Option<Container>,
}

/// JSON: `{"event": "fired", ...alert}`, `{"event": "cleared", "rule": ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AlertEvent {
    Fired(Alert),
    /// Still active, but the set of top ports, remotes or processes changed.
    Updated(Alert),
    Cleared {
        rule: String,
        #[serde(with = "rfc3339")]
        since: SystemTime,
        #[serde(with = "rfc3339")]
        cleared_at: SystemTime,
        message: String,
        #[serde(flatten)]
        namespace: AlertNamespace,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// Nagios plugin exit code: 1 WARNING, 2 CRITICAL.
    pub fn exit_code(self) -> u8 {
        match self {
            Severity::Warning => 1,
            Severity::Critical => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    Count,
    Growth,
    Age,
}

impl RuleKind {
    pub fn name(self) -> &'static str {
        match self {
            RuleKind::Count => "count",
            RuleKind::Growth => "growth",
            RuleKind::Age => "age",
        }
    }
}

/// A process holding some of an alert's sockets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    /// How many of the alert's sockets it holds.
    pub sockets: u64,
}

/// SystemTime as an RFC 3339 string, like the agent's other timestamps.
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_requests_and_rejects_others() {
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"stats"}"#).ok(),
            Some(Request::new(Command::Stats))
        );
        let watch: Request =
            serde_json::from_str(r#"{"cmd":"watch","filter":{"port":[80]},"alerts":true}"#)
                .unwrap();
        assert_eq!(watch.filter.port, vec![80]);
        assert!(watch.alerts);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"drop_tables"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"stats","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>("stats").is_err());
    }

    #[test]
    fn requests_round_trip_in_the_documented_shape() {
        let stats = serde_json::to_string(&Request::new(Command::Stats)).unwrap();
        assert_eq!(stats, r#"{"cmd":"stats"}"#);
        let filter = Filter {
            port: vec![80],
            ..Filter::default()
        };
        let watch = Request::watch(filter, false);
        let line = serde_json::to_string(&watch).unwrap();
        assert_eq!(
            line,
            r#"{"cmd":"watch","filter":{"port":[80],"local_port":[],"remote_port":[],"family":[],"state":[],"netns":[]}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), watch);
    }

    #[test]
    fn top_requests_are_checked_on_both_ends() {
        let line = serde_json::to_string(&Request::top(State::CloseWait, "tcp")).unwrap();
        assert_eq!(line, r#"{"cmd":"top","state":"CLOSE_WAIT","family":"tcp"}"#);
        let back: Request = serde_json::from_str(&line).unwrap();
        let (state, group, families) = back.top_query().unwrap();
        assert_eq!((state, group), (State::CloseWait, "tcp"));
        assert_eq!(
            families,
            [netconn_common::Family::Tcp4, netconn_common::Family::Tcp6]
        );
        let bare: Request = serde_json::from_str(r#"{"cmd":"top","state":"LISTEN"}"#).unwrap();
        assert_eq!(bare.top_query().unwrap().1, "all");
        let bad = |line: &str| {
            serde_json::from_str::<Request>(line)
                .unwrap()
                .top_query()
                .unwrap_err()
        };
        assert!(bad(r#"{"cmd":"top"}"#).contains("needs a state"));
        assert!(bad(r#"{"cmd":"top","state":"NAPPING"}"#).contains("unknown state"));
        assert!(
            bad(r#"{"cmd":"top","state":"LISTEN","family":"sctp"}"#).contains("unknown family")
        );
        let reply: TopReply = serde_json::from_str(
            r#"{"state":"LISTEN","family":"all","netns":1,"sockets":2,"age_ms":0.5,
                "ports":[{"port":80,"sockets":2}],"remotes":[],"processes":[{"pid":7,"comm":"x","sockets":2}]}"#,
        )
        .unwrap();
        assert_eq!(reply.offenders.ports[0].port, 80);
        assert_eq!(reply.offenders.processes[0].comm, "x");
    }

    #[test]
    fn stats_reply_is_seven_keys_and_meta_and_reads_back() {
        let mut counts = Counts::default();
        counts.set(netconn_common::Family::Tcp6, State::Listen, 2);
        counts.set(netconn_common::Family::Udp4, State::Close, 5);
        let reply = StatsReply {
            counts,
            meta: Meta::default(),
        };
        let v = serde_json::to_value(&reply).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["tcp4", "tcp6", "udp4", "udp6", "tcp", "udp", "all", "meta"]
        );
        assert_eq!(v["tcp"]["LISTEN"], 2);
        assert_eq!(v["all"]["CLOSE"], 5);
        assert_eq!(v["all"].as_object().unwrap().len(), 12);
        let back: StatsReply = serde_json::from_value(v).unwrap();
        assert_eq!(back.counts, counts);
    }

    #[test]
    fn netns_selectors_tell_inodes_from_pids() {
        assert_eq!(
            NetnsSelector::parse("4026531840"),
            NetnsSelector::Inode(4026531840)
        );
        assert_eq!(NetnsSelector::parse("1234"), NetnsSelector::Pid(1234));
        assert_eq!(
            NetnsSelector::parse("blue"),
            NetnsSelector::Name("blue".into())
        );
        assert_eq!(
            NetnsSelector::parse("99999999999"),
            NetnsSelector::Name("99999999999".into())
        );
    }

    #[test]
    fn watch_lines_parse_to_their_kind() {
        let d: WatchLine =
            serde_json::from_str(r#"{"dropped":3,"slow_reader":2,"kernel_ring":1}"#).unwrap();
        assert!(matches!(d, WatchLine::Dropped(Dropped { dropped: 3, .. })));
        let t: WatchLine = serde_json::from_str(
            r#"{"time":"t","netns":1,"family":"tcp4","laddr":"127.0.0.1","lport":1,"raddr":"127.0.0.1","rport":2,"old":"CLOSE","new":"SYN_SENT","ms":0.0,"pid":null,"comm":null,"note":"first_seen"}"#,
        )
        .unwrap();
        assert!(matches!(
            t,
            WatchLine::Transition(Transition { lport: 1, .. })
        ));
    }
}
