//! Where the counts live and whether they are exact, per network namespace.
//! Two sources make one answer:
//!
//! * full TCP sockets: event-driven, counted by the eBPF program per
//!   (netns, family, state), including the sockets its seeding iterator
//!   entered ([`Generation::seed`]);
//! * what the tracepoint never shows (timewait socks, request socks, UDP):
//!   refreshed from a state-filtered sock_diag dump (see `refresh`), and
//!   every answer says how old that part is.
//!
//! This module stores and combines; the loops that keep it current live in
//! `refresh` (maintenance: namespaces found, seeded, refreshed, forgotten)
//! and `hub` (the transition stream).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use netconn_common::{
    Counts, ENTRY_SEEDED, FAMILY_INET, FAMILY_INET6, Family, STAT_EVENTS_DROPPED, STATE_SLOTS,
    SockEntry, State, slot,
};

pub use super::generation::{Config, TrackerError};
use super::generation::{Generation, SeedTarget, StreamSwitch, millis};
use crate::kernel::{pin, probe::ProbeError};
use crate::{
    kernel::{
        self, netns,
        sockstat::{self, SockStat},
    },
    proto::{
        Container, Meta, NamespaceCounts, NamespacesReply, NetnsSelector, PinMeta, StatsReply,
    },
};

/// The refreshed part must never be older than this when a query arrives.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// The refreshed part of one namespace's answer.
#[derive(Clone, Debug)]
pub(super) struct Untracked {
    pub counts: Counts,
    /// When it was last confirmed: by a dump that started then, or by the
    /// kernel's counters showing nothing it depends on changed since.
    pub verified_at: Instant,
    /// How long the last dump took.
    pub took: Duration,
}

/// What other parts of the agent need to know of a namespace.
pub struct NamespaceInfo {
    pub inode: u32,
    pub name: String,
    pub container: Option<Container>,
    /// The way in; None for the agent's own namespace.
    pub path: Option<PathBuf>,
}

/// One network namespace the agent tracks.
pub(super) struct Namespace {
    pub inode: u32,
    pub name: String,
    pub container: Option<Container>,
    /// A process inside, if any.
    pub pid: Option<u32>,
    /// The way in; None for the agent's own namespace.
    pub path: Option<PathBuf>,
    /// Its cookie (never reused), which the kernel's change hooks key by.
    pub cookie: Option<u64>,
    pub untracked: Option<Untracked>,
    /// Why this namespace's counts are not trusted (drift), if so.
    pub drift: Option<String>,
    /// Re-seeds that concerned it: its own drift, or trouble on the kernel
    /// side (which concerns every namespace).
    pub reseeds: u64,
    /// The IPV6_ADDRFORM check (see [`family_moved`]) as the maintenance
    /// pass last made it, against the sockstat it read anyway: what a
    /// metrics scrape uses instead of reading /proc once per namespace.
    pub moved: Option<String>,
    /// Full sockets in the states the refresh dump lists (FIN_WAIT1,
    /// FIN_WAIT2, CLOSING, LAST_ACK) that disagree with ours at a quiet
    /// moment: a transition the kernel side missed. Set by the refresh.
    pub wrong_states: Option<String>,
}

impl Namespace {
    /// The kernel's O(1) counters for this namespace.
    pub fn sockstat(&self) -> Option<SockStat> {
        sockstat_of(self.inode, self.pid, self.path.as_deref())
    }

    pub fn seed_target(&self) -> SeedTarget<'_> {
        SeedTarget {
            inode: self.inode,
            path: self.path.as_deref(),
        }
    }
}

/// The generation answering now and whether someone watches, under one
/// lock: a re-seed's swap and a watcher's switch cannot interleave, so a new
/// generation always starts with the switch as it stands when it goes live
/// (not as it stood when its ~1 s build began).
pub(super) struct Current<G> {
    inner: RwLock<(Arc<G>, bool)>,
}

impl<G: StreamSwitch> Current<G> {
    pub fn new(generation: G) -> Current<G> {
        Current {
            inner: RwLock::new((Arc::new(generation), false)),
        }
    }

    pub fn get(&self) -> Arc<G> {
        Arc::clone(&read_lock(&self.inner).0)
    }

    pub fn set_streaming(&self, on: bool) {
        let mut inner = write_lock(&self.inner);
        inner.1 = on;
        if let Err(e) = inner.0.switch_stream(on) {
            log::error!("switching the transition stream: {e}");
        }
    }

    /// Make `fresh` the answering generation, streaming if anyone watches.
    pub fn install(&self, fresh: G) {
        let mut inner = write_lock(&self.inner);
        if let Err(e) = fresh.switch_stream(inner.1) {
            log::error!("switching the transition stream: {e}");
        }
        inner.0 = Arc::new(fresh);
    }
}

pub struct Tracker {
    pub(super) config: Config,
    /// The agent's own namespace: the default for `stats` and `check`.
    own: u32,
    /// The initial namespace (`host`), when visible.
    pub(super) host: Option<u32>,
    pub(super) current: Current<Generation>,
    pub(super) namespaces: RwLock<BTreeMap<u32, Namespace>>,
    /// Bumped when a namespace is added or removed (the stream caches names).
    pub(super) names_version: AtomicU64,
    /// Why other namespaces are not tracked, if they are not.
    pub(super) limited: RwLock<Option<String>>,
    pub(super) reseeds: AtomicU64,
    /// Events lost by generations already replaced: a re-seed starts its
    /// generation's loss count afresh, the metrics' counter must not.
    pub(super) missed_retired: AtomicU64,
    /// What the start-up refresh found, for the maintenance loop's first
    /// pass (so it does not dump every namespace again).
    pub(super) first_watches: std::sync::Mutex<Option<HashMap<u32, super::refresh::Watch>>>,
    /// TCP transitions counted by generations re-seeding replaced, so that
    /// the total never goes back.
    pub(super) transitions_retired: RwLock<HashMap<(u8, u8, u8), u64>>,
    /// What generations re-seeding replaced knew of each socket's time in
    /// its state (see [`inherit_since`]).
    pub(super) inherited_since: RwLock<InheritedSince>,
    /// The highest [`Tracker::events_missed`] answered, so the counter never
    /// goes back while a re-seed swaps generations.
    missed_answered: AtomicU64,
    stop: AtomicBool,
    /// Where the kernel side is pinned (`--pin`), and what happened there.
    pub(super) pin: RwLock<Option<PinMeta>>,
}

/// How an answer checks that no TCP socket changed family unseen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyCheck {
    /// Read the namespace's sockstat now (a /proc read, or entering the
    /// namespace on a thread when no process is inside): `stats`.
    Now,
    /// Use the verdict of the last maintenance pass (at most one refresh
    /// interval old, and a stale pass makes the answer inexact anyway):
    /// metrics scrapes over hundreds of namespaces.
    LastPass,
}

/// Which generation a transition ring came from, for the stream reader.
pub struct RingSource {
    generation: Arc<Generation>,
}

impl RingSource {
    /// Transitions the kernel could not put in the ring, so far.
    pub fn dropped_total(&self) -> u64 {
        self.generation.probe.stats()[STAT_EVENTS_DROPPED as usize]
    }
}

impl Tracker {
    /// Attach, find and seed every namespace, take the first refresh. On
    /// return the tracker answers.
    pub fn start(config: Config) -> Result<Tracker, TrackerError> {
        let started = std::time::Instant::now();
        let own = kernel::own_netns().map_err(TrackerError::Netns)?;
        let host = netns::initial();
        let (generation, pin) = match &config.pin_root {
            None => {
                warn_if_pinned(Path::new(pin::DEFAULT_ROOT));
                (Generation::attach(&config, None)?, None)
            }
            Some(root) => {
                let (generation, pin) = adopt_or_attach(&config, root)?;
                (generation, Some(pin))
            }
        };
        let tracker = Tracker {
            config,
            own,
            host,
            current: Current::new(generation),
            namespaces: RwLock::new(BTreeMap::new()),
            names_version: AtomicU64::new(0),
            limited: RwLock::new(None),
            reseeds: AtomicU64::new(0),
            missed_retired: AtomicU64::new(0),
            first_watches: std::sync::Mutex::new(None),
            transitions_retired: RwLock::new(HashMap::new()),
            inherited_since: RwLock::new(HashMap::new()),
            missed_answered: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            pin: RwLock::new(pin),
        };
        let attached = started.elapsed();
        tracker.discover_and_seed(&tracker.current.get())?;
        let seeded = started.elapsed();
        tracker.refresh_all();
        let refreshed = started.elapsed();
        tracker.pin_current()?;
        kernel::release_freed_memory();
        log::info!(
            "ready in {:.0} ms: programs loaded and attached {:.0} ms, namespaces seeded {:.0} ms, first refresh {:.0} ms",
            started.elapsed().as_secs_f64() * 1e3,
            attached.as_secs_f64() * 1e3,
            (seeded - attached).as_secs_f64() * 1e3,
            (refreshed - seeded).as_secs_f64() * 1e3,
        );
        Ok(tracker)
    }

    pub fn netns(&self) -> u32 {
        self.own
    }

    /// Full TCP sockets of one namespace as the kernel side counts them
    /// (seed + deltas). Negative cells mean a counting bug: reported.
    pub(super) fn tracked(
        &self,
        generation: &Generation,
        inode: u32,
        inexact: &mut Vec<String>,
    ) -> Counts {
        let mut counts = Counts::default();
        match generation.probe.tcp_deltas(inode) {
            Ok(deltas) => {
                for family_index in [FAMILY_INET, FAMILY_INET6] {
                    let family = Family::tcp_of(family_index);
                    for state in 1..STATE_SLOTS as u8 {
                        let i = slot(family_index, state);
                        let n = deltas[i];
                        if n < 0 {
                            inexact.push(format!("negative {} count", family.name()));
                        }
                        counts.add(family, State::from_kernel(state), n.max(0) as u64);
                    }
                }
            }
            Err(e) => inexact.push(format!("cannot read kernel counters: {e}")),
        }
        counts
    }

    /// The inode a client's selector names, among the tracked namespaces.
    /// A number that names no namespace by inode or pid may still be a name
    /// or a container id (hex ids can be all digits).
    pub fn resolve(&self, text: &str) -> Result<u32, String> {
        let selector = NetnsSelector::parse(text);
        let namespaces = read_lock(&self.namespaces);
        let by_name = |name: &str| {
            namespaces
                .values()
                .find(|n| n.name == name)
                .or_else(|| {
                    // A container id, whole or its first 12 digits or more.
                    namespaces.values().find(|n| {
                        n.container.as_ref().is_some_and(|c| {
                            c.id == name
                                || (name.len() >= 12 && c.id.starts_with(name))
                                || c.pod.as_deref() == Some(name)
                        })
                    })
                })
                .map(|n| n.inode)
        };
        let found = match &selector {
            NetnsSelector::Inode(inode) => namespaces
                .get(inode)
                .map(|n| n.inode)
                .or_else(|| by_name(text)),
            NetnsSelector::Pid(pid) => netns::inode_of_pid(*pid)
                .filter(|inode| namespaces.contains_key(inode))
                .or_else(|| {
                    // A pid the agent cannot see may still be a known member.
                    namespaces
                        .values()
                        .find(|n| n.pid == Some(*pid))
                        .map(|n| n.inode)
                })
                .or_else(|| by_name(text)),
            NetnsSelector::Name(name) => by_name(name),
        };
        found.ok_or_else(|| match selector {
            NetnsSelector::Inode(i) => format!("no tracked network namespace with inode {i}"),
            NetnsSelector::Pid(p) => format!("no tracked network namespace holds pid {p}"),
            NetnsSelector::Name(n) => format!("no tracked network namespace named {n:?}"),
        })
    }

    /// The answer for one namespace (the agent's own by default): O(1) in
    /// the number of sockets (one per-CPU map lookup, two small reads).
    pub fn snapshot(&self, selector: Option<&str>) -> Result<StatsReply, String> {
        let inode = match selector {
            Some(s) => self.resolve(s)?,
            None => self.own,
        };
        let generation = self.current.get();
        let health = generation.health();
        let namespaces = read_lock(&self.namespaces);
        let Some(ns) = namespaces.get(&inode) else {
            return Err(format!("network namespace {inode} is not tracked"));
        };
        let (counts, mut inexact) = self.namespace_counts(&generation, ns, FamilyCheck::Now, None);
        let mut reasons = health.reasons.clone();
        reasons.append(&mut inexact);
        let (refreshed_age, refresh_took) = ns
            .untracked
            .as_ref()
            .map_or((Duration::ZERO, Duration::ZERO), |u| {
                (u.verified_at.elapsed(), u.took)
            });
        Ok(StatsReply {
            counts,
            meta: Meta {
                netns: inode,
                netns_name: ns.name.clone(),
                refreshed_age_ms: millis(refreshed_age),
                refresh_ms: millis(refresh_took),
                reseeds: ns.reseeds,
                ..self.meta(&generation, &health, namespaces.len(), reasons)
            },
        })
    }

    /// Every tracked namespace, own first, then by name.
    pub fn snapshot_all(&self) -> NamespacesReply {
        self.snapshot_all_with(FamilyCheck::Now)
    }

    /// [`Tracker::snapshot_all`] without a /proc read per namespace: the
    /// family check is the last maintenance pass's. For metrics scrapes,
    /// which must stay within a few ms with hundreds of namespaces (reading
    /// each sockstat, or entering each unnamed-by-process namespace on a
    /// thread, costs far more).
    pub fn snapshot_all_cached(&self) -> NamespacesReply {
        self.snapshot_all_with(FamilyCheck::LastPass)
    }

    fn snapshot_all_with(&self, check: FamilyCheck) -> NamespacesReply {
        let generation = self.current.get();
        let health = generation.health();
        let namespaces = read_lock(&self.namespaces);
        let mut before = match check {
            FamilyCheck::Now => sockstats(namespaces.values()),
            FamilyCheck::LastPass => HashMap::new(),
        };
        let mut out: Vec<NamespaceCounts> = namespaces
            .values()
            .map(|ns| {
                let pre = before.remove(&ns.inode);
                let (counts, mut inexact) = self.namespace_counts(&generation, ns, check, pre);
                let mut reasons = health.reasons.clone();
                reasons.append(&mut inexact);
                NamespaceCounts {
                    netns: ns.inode,
                    name: ns.name.clone(),
                    container: ns.container.clone(),
                    pid: ns.pid,
                    counts,
                    exact: reasons.is_empty(),
                    inexact: reasons,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (a.netns != self.own)
                .cmp(&(b.netns != self.own))
                .then_with(|| a.name.cmp(&b.name))
        });
        let mut reasons = health.reasons.clone();
        if let Some(limited) = read_lock(&self.limited).clone() {
            reasons.push(limited);
        }
        let own_name = namespaces
            .get(&self.own)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        NamespacesReply {
            namespaces: out,
            meta: Meta {
                netns: self.own,
                netns_name: own_name,
                ..self.meta(&generation, &health, namespaces.len(), reasons)
            },
        }
    }

    /// Tracked plus refreshed counts of one namespace, and why they are not
    /// exact (empty: they are).
    fn namespace_counts(
        &self,
        generation: &Generation,
        ns: &Namespace,
        check: FamilyCheck,
        // The kernel's counters of this namespace read just now, if the
        // caller read them for many namespaces at once.
        pre: Option<SockStat>,
    ) -> (Counts, Vec<String>) {
        let mut inexact = Vec::new();
        // Our full-socket counts between two readings of the kernel's own
        // `inuse` counters: disagreeing while those stand still is a count
        // gone wrong (IPV6_ADDRFORM moving a socket with no event, or any
        // counting bug), reported at once; see `disagreement`.
        let before = match check {
            FamilyCheck::Now => pre.or_else(|| ns.sockstat()),
            FamilyCheck::LastPass => None,
        };
        let mut counts = self.tracked(generation, ns.inode, &mut inexact);
        let verdict = match (check, before) {
            (FamilyCheck::Now, Some(before)) => disagreement(&before, &counts, || ns.sockstat()),
            (FamilyCheck::Now, None) => None,
            (FamilyCheck::LastPass, _) => ns.moved.clone(),
        };
        if let Some(reason) = verdict {
            inexact.push(reason);
        }
        if let Some(reason) = &ns.wrong_states {
            inexact.push(reason.clone());
        }
        match &ns.untracked {
            Some(u) => {
                counts = counts.merged(&u.counts);
                let age = u.verified_at.elapsed();
                if age > MAX_AGE {
                    inexact.push(format!("refreshed part is {} ms old", age.as_millis()));
                }
            }
            None => inexact.push("no refresh yet".into()),
        }
        if let Some(reason) = &ns.drift {
            inexact.push(reason.clone());
        }
        (counts, inexact)
    }

    fn meta(
        &self,
        generation: &Generation,
        health: &super::generation::Health,
        namespaces: usize,
        inexact: Vec<String>,
    ) -> Meta {
        Meta {
            version: env!("CARGO_PKG_VERSION").to_string(),
            netns: self.own,
            netns_name: String::new(),
            namespaces,
            seeded_at: humantime::format_rfc3339_millis(generation.seeded_at).to_string(),
            refreshed_age_ms: 0.0,
            refresh_ms: 0.0,
            exact: inexact.is_empty(),
            inexact,
            seed: generation.report(),
            reseeds: self.reseeds.load(Ordering::Relaxed),
            reseeds_total: self.reseeds.load(Ordering::Relaxed),
            nested_events: health.nested_events,
            nested_handled: health.nested_handled,
            pinned: read_lock(&self.pin).clone(),
        }
    }

    /// `--pin`: pin the current generation (unless it is the one adopted,
    /// which is pinned already), then remove everything else under the pin
    /// root: other layouts' generations (an upgrade: they counted beside
    /// this one, into their own maps, until now) and leftovers of a crash.
    pub(super) fn pin_current(&self) -> Result<(), TrackerError> {
        let Some(root) = self.config.pin_root.as_deref() else {
            return Ok(());
        };
        let dir = pin::layout_dir(root, self.config.layout_version);
        let generation = self.current.get();
        if generation.adopted.is_none() {
            // A generation of this layout we did not adopt is stale.
            pin::remove(&dir).map_err(ProbeError::from)?;
            generation.probe.pin(&dir)?;
            log::info!("pinned at {}", dir.display());
        }
        let mut replaced = Vec::new();
        for other in pin::others(root, &dir) {
            pin::remove(&other).map_err(ProbeError::from)?;
            log::info!("removed {}", other.display());
            replaced.extend(pin::version_of(&other));
        }
        if let Some(meta) = write_lock(&self.pin).as_mut() {
            meta.replaced.extend(replaced);
        }
        Ok(())
    }

    /// The agent is exiting. Pinned, the kernel side keeps counting: stop
    /// its stream, which nobody reads until the next agent.
    pub fn leave(&self) {
        if self.config.pin_root.is_some()
            && let Err(e) = self.current.get().probe.set_streaming(false)
        {
            log::warn!("{e}");
        }
    }

    /// Every tracked namespace: inode, name, container and the way in.
    pub fn namespace_list(&self) -> Vec<NamespaceInfo> {
        read_lock(&self.namespaces)
            .values()
            .map(|n| NamespaceInfo {
                inode: n.inode,
                name: n.name.clone(),
                container: n.container.clone(),
                path: n.path.clone(),
            })
            .collect()
    }

    /// Inode -> name of every tracked namespace, and the version it is at.
    pub fn names(&self) -> (u64, HashMap<u32, String>) {
        let namespaces = read_lock(&self.namespaces);
        let names = namespaces
            .values()
            .map(|n| (n.inode, n.name.clone()))
            .collect();
        (self.names_version.load(Ordering::Relaxed), names)
    }

    pub fn names_version(&self) -> u64 {
        self.names_version.load(Ordering::Relaxed)
    }

    /// Switch the kernel's transition stream on or off (the server calls
    /// this as the first watcher arrives and the last one leaves).
    pub fn set_streaming(&self, on: bool) {
        self.current.set_streaming(on);
    }

    /// The current generation's transition ring, once (None if taken).
    pub fn take_ring(&self) -> Option<(RingBuf<MapData>, RingSource)> {
        let generation = self.current.get();
        let ring = generation.probe.take_events()?;
        Some((ring, RingSource { generation }))
    }

    /// Whether a ring still belongs to the answering generation (a re-seed
    /// replaces it).
    pub fn is_current(&self, source: &RingSource) -> bool {
        Arc::ptr_eq(&source.generation, &self.current.get())
    }

    /// How long the full TCP socket with this cookie has been in its state,
    /// from its kernel-side entry. For a seeded socket this is a lower bound
    /// (time since the agent saw it).
    /// Forget inherited times that no longer apply: the socket closed or
    /// had an event since (its entry then carries its own time).
    pub(super) fn prune_inherited(&self) {
        if read_lock(&self.inherited_since).is_empty() {
            return;
        }
        let generation = self.current.get();
        write_lock(&self.inherited_since).retain(|cookie, (state, _)| {
            generation
                .probe
                .socket(*cookie)
                .is_some_and(|e| e.flags == ENTRY_SEEDED && e.state == *state)
        });
    }

    pub fn time_in_state(&self, cookie: u64) -> Option<Duration> {
        let entry = self.current.get().probe.socket(cookie)?;
        let since = since_with_inherited(&entry, read_lock(&self.inherited_since).get(&cookie));
        Some(Duration::from_nanos(
            kernel::boot_ns().saturating_sub(since),
        ))
    }

    /// Kernel events lost for counting over the agent's life (every
    /// generation): what answers report as lost events, as a number that
    /// never goes back.
    pub fn events_missed(&self) -> u64 {
        let now = self.missed_retired.load(Ordering::Relaxed) + self.current.get().health().lost;
        self.missed_answered
            .fetch_max(now, Ordering::Relaxed)
            .max(now)
    }

    /// TCP transitions the kernel counted over the agent's life, as (family
    /// index, old state, new state, count), non-zero cells only.
    pub fn transitions(&self) -> Vec<(u8, u8, u8, u64)> {
        let mut all = read_lock(&self.transitions_retired).clone();
        for (family, old, new, n) in self.current.get().probe.transitions() {
            *all.entry((family, old, new)).or_default() += n;
        }
        let mut out: Vec<_> = all
            .into_iter()
            .map(|((family, old, new), n)| (family, old, new, n))
            .collect();
        out.sort_unstable();
        out
    }

    /// Age of the oldest refreshed part among the namespaces that have one
    /// (one without is answered inexact: "no refresh yet").
    pub fn oldest_refresh(&self) -> Duration {
        read_lock(&self.namespaces)
            .values()
            .filter_map(|ns| ns.untracked.as_ref())
            .map(|u| u.verified_at.elapsed())
            .max()
            .unwrap_or_default()
    }

    /// The initial namespace's inode, when the agent can see it.
    pub fn host(&self) -> Option<u32> {
        self.host
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The kernel's O(1) counters of many namespaces: through a process inside
/// where there is one, and the rest on one thread that enters each in turn.
fn sockstats<'a>(namespaces: impl Iterator<Item = &'a Namespace>) -> HashMap<u32, SockStat> {
    sockstats_of(namespaces.map(|ns| (ns.inode, ns.path.as_deref(), ns.pid)))
}

/// Each namespace's sockstat files, opened once (see [`sockstat::Files`]),
/// by inode; dropped by [`forget_sockstat`] when the namespace is gone. One
/// table for the process: an inode names one live namespace at a time, and
/// an open file keeps its namespace, and so its inode, alive.
static SOCKSTAT_FILES: std::sync::LazyLock<std::sync::Mutex<HashMap<u32, Arc<sockstat::Files>>>> =
    std::sync::LazyLock::new(Default::default);

/// Close a gone namespace's sockstat files (which keep it alive).
pub(super) fn forget_sockstat(inode: u32) {
    lock_files().remove(&inode);
}

fn lock_files() -> std::sync::MutexGuard<'static, HashMap<u32, Arc<sockstat::Files>>> {
    SOCKSTAT_FILES.lock().unwrap_or_else(|p| p.into_inner())
}

/// A namespace's sockstat files, opened on first use: ours directly,
/// another through a process inside it (checked to be inside before and
/// after the open), else by entering it.
fn sockstat_files(
    inode: u32,
    pid: Option<u32>,
    path: Option<&Path>,
) -> Option<Arc<sockstat::Files>> {
    if let Some(files) = lock_files().get(&inode) {
        return Some(Arc::clone(files));
    }
    let files = match path {
        None => sockstat::Files::open_here().ok()?,
        Some(path) => {
            let inside = |pid: u32| netns::inode_of_pid(pid) == Some(inode);
            let by_pid = pid
                .filter(|pid| inside(*pid))
                .and_then(|pid| sockstat::Files::open_pid(pid).ok().filter(|_| inside(pid)));
            match by_pid {
                Some(files) => files,
                None => netns::run_in(path, sockstat::Files::open_here).ok()?.ok()?,
            }
        }
    };
    let files = Arc::new(files);
    lock_files().insert(inode, Arc::clone(&files));
    Some(files)
}

/// [`sockstats`] by (inode, the way in, a pid inside).
pub(super) fn sockstats_of<'a>(
    namespaces: impl Iterator<Item = (u32, Option<&'a Path>, Option<u32>)>,
) -> HashMap<u32, SockStat> {
    namespaces
        .filter_map(|(inode, path, pid)| Some((inode, sockstat_of(inode, pid, path)?)))
        .collect()
}

/// The kernel's O(1) counters of a namespace, from its open sockstat files.
pub(super) fn sockstat_of(inode: u32, pid: Option<u32>, path: Option<&Path>) -> Option<SockStat> {
    let files = sockstat_files(inode, pid, path)?;
    match files.read() {
        Ok(stat) => Some(stat),
        Err(e) => {
            // Opened again next time.
            log::debug!("namespace {inode}: {e}");
            lock_files().remove(&inode);
            None
        }
    }
}

/// `--pin`: adopt this layout's pinned generation if there is a sound one,
/// else attach a fresh one (pinned once seeded, see [`Tracker::pin_current`]).
fn adopt_or_attach(config: &Config, root: &Path) -> Result<(Generation, PinMeta), TrackerError> {
    pin::ensure_root(root).map_err(ProbeError::from)?;
    let dir = pin::layout_dir(root, config.layout_version);
    let mut meta = PinMeta {
        dir: dir.display().to_string(),
        layout: config.layout_version,
        adopted: false,
        replaced: Vec::new(),
    };
    if dir.exists() {
        match Generation::adopt(&dir, config.layout_version) {
            Ok(generation) => {
                log::info!(
                    "adopted the generation pinned at {} (layout {}): no re-seed",
                    dir.display(),
                    config.layout_version
                );
                meta.adopted = true;
                return Ok((generation, meta));
            }
            Err(e) => log::warn!("not adopting: {e}; attaching and seeding afresh"),
        }
    }
    Ok((Generation::attach(config, None)?, meta))
}

/// Without `--pin`, pins left by an earlier `--pin` agent keep counting
/// beside this one: say so once.
fn warn_if_pinned(root: &Path) {
    if !pin::others(root, Path::new("")).is_empty() {
        log::warn!(
            "a kernel side is still pinned under {} (an earlier `agent --pin`); `netconn unload` removes it",
            root.display()
        );
    }
}

/// IPV6_ADDRFORM turns a connected AF_INET6 TCP socket into AF_INET with no
/// state change, so no event: the kernel's `inuse` counters move it from
/// TCP6 to TCP while our per-family counts do not. The signature: the same
/// TCP total, split differently.
/// Whether our full-socket TCP counts of a namespace disagree with the
/// kernel's `inuse` counters at a quiet moment: `before` was read just
/// before `tracked`, and `after` (read only when they differ, which is
/// rare) must equal it. Under churn the two differ from moment to moment by
/// the microseconds between a state change and the hashing it goes with;
/// then the counters move between the readings and nothing is concluded.
pub(super) fn disagreement(
    before: &SockStat,
    tracked: &Counts,
    after: impl FnOnce() -> Option<SockStat>,
) -> Option<String> {
    let ours = (
        tracked.family_total(Family::Tcp4),
        tracked.family_total(Family::Tcp6),
    );
    let theirs = (before.tcp4_inuse, before.tcp6_inuse);
    if ours == theirs {
        return None;
    }
    let after = after()?;
    if (after.tcp4_inuse, after.tcp6_inuse) != theirs {
        return None;
    }
    Some(family_moved(tracked, before).unwrap_or_else(|| {
        format!(
            "TCP counts differ from the kernel's inuse counters at a quiet moment (tcp4 {} vs {}, tcp6 {} vs {})",
            ours.0, theirs.0, ours.1, theirs.1
        )
    }))
}

pub(super) fn family_moved(tracked: &Counts, stat: &SockStat) -> Option<String> {
    let (v4, v6) = (
        tracked.family_total(Family::Tcp4),
        tracked.family_total(Family::Tcp6),
    );
    (v4 + v6 == stat.tcp4_inuse + stat.tcp6_inuse && v4 != stat.tcp4_inuse).then(|| {
        format!(
            "a TCP socket changed family without a state change (IPV6_ADDRFORM?): tracked tcp4/tcp6 {v4}/{v6}, kernel {}/{}",
            stat.tcp4_inuse, stat.tcp6_inuse
        )
    })
}

pub(super) fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// Cookie -> (state, since_ns) of sockets as generations that re-seeding
/// replaced last knew them.
pub(super) type InheritedSince = HashMap<u64, (u8, u64)>;

/// A re-seed starts a fresh generation whose seeded entries know only when
/// they were seeded: without help, every leak age would restart at zero and
/// every age alert clear. The retired generation knew better for each
/// socket it tracked in the same state (cookies are never reused, and TCP
/// never returns to a state it left), so keep its times, merged with what
/// earlier re-seeds passed on. Called with the retired generation's
/// entries, taken after the fresh one was seeded.
pub(super) fn inherit_since(
    earlier: &InheritedSince,
    retired: Vec<(u64, SockEntry)>,
) -> InheritedSince {
    retired
        .into_iter()
        .map(|(cookie, entry)| {
            let since = since_with_inherited(&entry, earlier.get(&cookie));
            (cookie, (entry.state, since))
        })
        .collect()
}

/// When the socket of `entry` entered its state: its own time, or an
/// inherited earlier one while the entry is still as seeding made it (no
/// event since) and in the same state.
pub(super) fn since_with_inherited(entry: &SockEntry, inherited: Option<&(u8, u64)>) -> u64 {
    match inherited {
        Some(&(state, since)) if entry.flags == ENTRY_SEEDED && entry.state == state => {
            since.min(entry.since_ns)
        }
        _ => entry.since_ns,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use netconn_common::{ENTRY_LIVE, model::TCP_CLOSE_WAIT, model::TCP_ESTABLISHED};

    use super::*;

    fn entry(state: u8, since_ns: u64, flags: u8) -> SockEntry {
        SockEntry {
            since_ns,
            netns: 1,
            state,
            family: FAMILY_INET,
            flags,
            _pad: 0,
        }
    }

    #[test]
    fn a_reseed_keeps_what_the_retired_generation_knew_of_ages() {
        let cw = TCP_CLOSE_WAIT;
        // Seeded by the fresh generation at 900, in the state the retired
        // one had known since 100: 100.
        let inherited = Some(&(cw, 100));
        assert_eq!(
            since_with_inherited(&entry(cw, 900, ENTRY_SEEDED), inherited),
            100
        );
        // An event since (a live entry), or another state: its own time.
        assert_eq!(
            since_with_inherited(&entry(cw, 900, ENTRY_LIVE), inherited),
            900
        );
        assert_eq!(
            since_with_inherited(&entry(TCP_ESTABLISHED, 900, ENTRY_SEEDED), inherited),
            900
        );
        assert_eq!(
            since_with_inherited(&entry(cw, 900, ENTRY_SEEDED), None),
            900
        );

        // A second re-seed passes on what the first one did, for entries
        // still as seeding made them; a socket's own later time otherwise.
        let earlier: InheritedSince = [(7, (cw, 100)), (8, (cw, 200))].into_iter().collect();
        let retired = vec![
            (7, entry(cw, 900, ENTRY_SEEDED)),
            (8, entry(cw, 950, ENTRY_LIVE)),
            (9, entry(TCP_ESTABLISHED, 300, ENTRY_LIVE)),
        ];
        let passed_on = inherit_since(&earlier, retired);
        assert_eq!(passed_on.get(&7), Some(&(cw, 100)));
        assert_eq!(passed_on.get(&8), Some(&(cw, 950)));
        assert_eq!(passed_on.get(&9), Some(&(TCP_ESTABLISHED, 300)));
        assert_eq!(passed_on.len(), 3);
    }

    #[test]
    fn disagreement_counts_only_at_a_quiet_moment() {
        let mut tracked = Counts::default();
        tracked.set(Family::Tcp4, State::FinWait1, 1);
        tracked.set(Family::Tcp4, State::Established, 4);
        let stat = |tcp4_inuse| SockStat {
            tcp4_inuse,
            tcp6_inuse: 0,
            tw: 0,
            udp4_inuse: 0,
            udp6_inuse: 0,
        };
        assert!(disagreement(&stat(5), &tracked, || panic!("no second read needed")).is_none());
        assert!(disagreement(&stat(4), &tracked, || Some(stat(4))).is_some());
        // The kernel's counter moved between the readings: churn.
        assert!(disagreement(&stat(4), &tracked, || Some(stat(3))).is_none());
        assert!(disagreement(&stat(4), &tracked, || None).is_none());
    }

    #[test]
    fn a_socket_moved_between_families_is_recognised() {
        let mut tracked = Counts::default();
        tracked.set(Family::Tcp4, State::Established, 3);
        tracked.set(Family::Tcp6, State::Established, 2);
        let stat = |tcp4_inuse, tcp6_inuse| SockStat {
            tcp4_inuse,
            tcp6_inuse,
            tw: 0,
            udp4_inuse: 0,
            udp6_inuse: 0,
        };
        assert!(family_moved(&tracked, &stat(3, 2)).is_none());
        assert!(family_moved(&tracked, &stat(4, 1)).is_some());
        // Totals that differ are churn (or drift, watched elsewhere).
        assert!(family_moved(&tracked, &stat(4, 2)).is_none());
    }

    #[derive(Default)]
    struct FakeGeneration {
        streaming: AtomicBool,
    }

    impl StreamSwitch for FakeGeneration {
        fn switch_stream(&self, on: bool) -> Result<(), ProbeError> {
            self.streaming.store(on, Ordering::Relaxed);
            Ok(())
        }
    }

    /// A watcher that connects while a re-seed builds its generation must
    /// get the new generation's stream too (it used to read the switch
    /// before the build and install the generation with streaming off).
    #[test]
    fn generation_installed_after_a_watcher_arrived_streams() {
        let current = Current::new(FakeGeneration::default());
        // The re-seed starts building here...
        let fresh = FakeGeneration::default();
        // ...a watcher connects meanwhile...
        current.set_streaming(true);
        assert!(current.get().streaming.load(Ordering::Relaxed));
        // ...and the build finishes.
        current.install(fresh);
        assert!(current.get().streaming.load(Ordering::Relaxed));
        // The last watcher leaves: off again, and a later re-seed stays off.
        current.set_streaming(false);
        current.install(FakeGeneration::default());
        assert!(!current.get().streaming.load(Ordering::Relaxed));
    }
}
