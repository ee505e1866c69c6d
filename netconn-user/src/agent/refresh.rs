//! Keeping the answer current: find namespaces and seed them, forget the
//! ones that are gone, re-read what the tracepoint never shows, watch for
//! drift against the kernel's own counters, and re-seed a fresh generation
//! when the counts cannot be trusted.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use netconn_common::{
    Counts, Family, State,
    model::{
        TCP_CLOSING, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_LAST_ACK, TCP_SYN_RECV,
        TCP_TIME_WAIT,
    },
};

use super::{
    generation::{Generation, millis},
    naming,
    tracker::{
        Namespace, Tracker, TrackerError, Untracked, disagreement, family_moved, forget_sockstat,
        inherit_since, read_lock, sockstat_of, sockstats_of, write_lock,
    },
};
use crate::kernel::{
    self,
    diag::{self, ALL_STATES, Kind, Proto},
    netns::{self, NetnsError},
    sockstat::{self, SockStat},
};

/// The dump that finds what the tracepoint never reports: timewait socks
/// (TIME_WAIT, and FIN_WAIT2 of an orphan) and request socks (SYN_RECV).
/// It also lists the full sockets in the few transitional states of
/// CHECKED_STATES, whose count must equal ours (see `Dumped::wrong`).
const UNTRACKED_STATES: u32 = (1 << TCP_SYN_RECV)
    | (1 << TCP_FIN_WAIT2)
    | (1 << TCP_TIME_WAIT)
    | (1 << TCP_FIN_WAIT1)
    | (1 << TCP_CLOSING)
    | (1 << TCP_LAST_ACK);
/// States where full sockets are few (a connection passes through them) and
/// a missed transition leaves a socket counted in the wrong one with the
/// totals still right, which no `inuse` comparison can see.
const CHECKED_STATES: [State; 4] = [
    State::FinWait1,
    State::FinWait2,
    State::Closing,
    State::LastAck,
];
/// Passes in a row with wrong states before a re-seed.
const WRONG_STATE_ROUNDS: u32 = 2;
/// Identical disagreement with the kernel's `inuse` counters for this many
/// refreshes in a row (nothing changing meanwhile) means our counts drifted.
const DRIFT_ROUNDS: u32 = 4;
/// The same, when the disagreement is a socket that changed family (see
/// `tracker::family_moved`): answers already say inexact, so recover fast.
const MOVED_ROUNDS: u32 = 2;
/// Re-seeding is not retried more often than this.
const RESEED_BACKOFF: Duration = Duration::from_secs(10);
/// How often /proc and /run/netns are scanned for namespaces that no kernel
/// event announced (UDP-only ones) and for namespaces that are gone.
const SCAN_EVERY: Duration = Duration::from_secs(1);

/// How often the leak ages inherited across a re-seed are pruned (a walk
/// of what the last re-seed passed on).
const PRUNE_INHERITED_EVERY: Duration = Duration::from_secs(60);

/// A namespace to refresh: inode, the way in, a pid inside, its cookie.
type Target = (u32, Option<std::path::PathBuf>, Option<u32>, Option<u64>);

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the maintenance loop remembers about one namespace between passes.
#[derive(Default)]
pub(super) struct Watch {
    /// The kernel's counters when the refreshed part was last dumped.
    dumped_at: Option<SockStat>,
    /// The last dump found request socks or orphan FIN_WAIT2 timewait
    /// socks, which change without moving any counter: dump again.
    transient: bool,
    /// The kernel hooks' change count when the part was last dumped.
    changes: Option<u64>,
    drift: DriftWatch,
    /// Passes in a row whose dump found wrong states.
    wrong_rounds: u32,
}

/// One refresh of a namespace's untracked part.
struct Dumped {
    counts: Counts,
    transient: bool,
    /// Our counts in CHECKED_STATES disagree with the full sockets the dump
    /// listed, read while the namespace stood still (None: they agree, or
    /// the namespace moved during the dump and nothing can be concluded).
    wrong: Option<String>,
    /// The namespace moved during the dump.
    moved: bool,
}

impl Tracker {
    /// Scan for namespaces; add and seed new ones, forget vanished ones.
    /// Returns the inodes added.
    pub(super) fn discover_and_seed(
        &self,
        generation: &Generation,
    ) -> Result<Vec<u32>, TrackerError> {
        let found = netns::scan();
        let own = self.netns();
        let known: HashSet<u32> = read_lock(&self.namespaces).keys().copied().collect();
        let present: HashSet<u32> = found.iter().map(|f| f.inode).collect();
        let limited = read_lock(&self.limited).is_some();
        let mut fresh = Vec::new();
        for f in &found {
            if known.contains(&f.inode) || (limited && f.inode != own) {
                continue;
            }
            let (name, container) = naming::describe(f, self.host);
            let path = (f.inode != own).then(|| f.path.clone());
            fresh.push(Namespace {
                inode: f.inode,
                name,
                container,
                pid: f.pid,
                cookie: cookie_of(path.as_deref()),
                path,
                untracked: None,
                drift: None,
                reseeds: 0,
                moved: None,
                wrong_states: None,
            });
        }
        if !known.contains(&own) && !fresh.iter().any(|n| n.inode == own) {
            // Not found by the scan (no readable /proc?): still ours.
            let (name, container) = naming::describe(
                &netns::Found {
                    inode: own,
                    pid: Some(std::process::id()),
                    ip_name: None,
                    path: "/proc/self/ns/net".into(),
                },
                self.host,
            );
            fresh.push(Namespace {
                inode: own,
                name,
                container,
                pid: Some(std::process::id()),
                path: None,
                cookie: cookie_of(None),
                untracked: None,
                drift: None,
                reseeds: 0,
                moved: None,
                wrong_states: None,
            });
        }
        let gone: Vec<u32> = known
            .iter()
            .copied()
            .filter(|i| *i != own && !present.contains(i))
            .collect();
        if !gone.is_empty() {
            let mut namespaces = write_lock(&self.namespaces);
            for inode in &gone {
                if let Some(ns) = namespaces.remove(inode) {
                    log::info!("network namespace {} ({inode}) is gone", ns.name);
                }
                forget_sockstat(*inode);
            }
            self.names_version.fetch_add(1, Ordering::Relaxed);
        }
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let added = self.seed_namespaces(generation, fresh)?;
        self.names_version.fetch_add(1, Ordering::Relaxed);
        Ok(added)
    }

    /// Seed `fresh` namespaces into `generation` and start tracking them.
    fn seed_namespaces(
        &self,
        generation: &Generation,
        fresh: Vec<Namespace>,
    ) -> Result<Vec<u32>, TrackerError> {
        let mut added = Vec::new();
        // Seeded into this generation before (by the agent that pinned it,
        // or under an inode a dead namespace had): the kernel side has
        // counted every socket since. Seeding again would change nothing.
        let (known, fresh): (Vec<Namespace>, Vec<Namespace>) = fresh
            .into_iter()
            .partition(|ns| generation.is_seeded(ns.inode));
        for ns in known {
            log::info!(
                "namespace {} ({}): counted since it was seeded",
                ns.name,
                ns.inode
            );
            added.push(ns.inode);
            write_lock(&self.namespaces).insert(ns.inode, ns);
        }
        if fresh.is_empty() {
            return Ok(added);
        }
        let mut denied = None;
        // Namespaces are seeded on two threads at once: each iterator walks
        // the kernel's whole socket table, so hundreds of namespaces take
        // seconds on one thread.
        let seeded: Vec<(Namespace, Result<crate::proto::SeedReport, TrackerError>)> =
            std::thread::scope(|scope| {
                let mut halves = vec![Vec::new(), Vec::new()];
                for (i, ns) in fresh.into_iter().enumerate() {
                    halves[i % 2].push(ns);
                }
                let workers: Vec<_> = halves
                    .into_iter()
                    .map(|half| {
                        scope.spawn(move || {
                            half.into_iter()
                                .map(|ns| {
                                    let report = generation.seed(&ns.seed_target());
                                    (ns, report)
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().unwrap_or_default())
                    .collect()
            });
        for (ns, report) in seeded {
            match report {
                Ok(report) => {
                    log::info!(
                        "namespace {} ({}): seeded {} full TCP sockets ({} inserted) in {:.1} ms",
                        ns.name,
                        ns.inode,
                        report.dumped,
                        report.inserted,
                        report.millis
                    );
                    added.push(ns.inode);
                    write_lock(&self.namespaces).insert(ns.inode, ns);
                }
                Err(TrackerError::Namespace(NetnsError::Enter(path, e)))
                    if e.raw_os_error() == Some(libc::EPERM) =>
                {
                    denied = Some(format!(
                        "cannot enter other network namespaces ({}: {e}): tracking only the agent's own; run with CAP_SYS_ADMIN to count every namespace",
                        path.display()
                    ));
                }
                // Gone between the scan and the seed: the next scan decides.
                Err(TrackerError::Namespace(e)) => log::debug!("{e}"),
                Err(e) => return Err(e),
            }
        }
        if let Some(reason) = denied {
            log::warn!("{reason}");
            *write_lock(&self.limited) = Some(reason);
        }
        Ok(added)
    }

    /// Refresh every namespace once (start-up).
    pub(super) fn refresh_all(&self) {
        let targets = self.targets();
        let (a, b) = targets.split_at(targets.len() / 2);
        // Two threads, as for seeding; the maintenance loop starts from
        // what they found rather than dumping every namespace again.
        let found: Vec<HashMap<u32, Watch>> = std::thread::scope(|scope| {
            let workers: Vec<_> = [a, b]
                .into_iter()
                .map(|half| {
                    scope.spawn(move || {
                        let mut watches = HashMap::new();
                        self.refresh_targets(half, &mut watches);
                        watches
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        *lock(&self.first_watches) = Some(found.into_iter().flatten().collect());
    }

    fn targets(&self) -> Vec<Target> {
        read_lock(&self.namespaces)
            .values()
            .map(|n| (n.inode, n.path.clone(), n.pid, n.cookie))
            .collect()
    }

    /// One pass: for each namespace, read the kernel's O(1) counters and
    /// re-dump its untracked part only if something it depends on may have
    /// changed; otherwise the part stands confirmed as of now.
    /// Returns the first namespace found drifting, and why.
    fn refresh_pass(&self, watches: &mut HashMap<u32, Watch>) -> Option<(u32, String)> {
        let targets = self.targets();
        watches.retain(|inode, _| targets.iter().any(|t| t.0 == *inode));
        self.refresh_targets(&targets, watches)
    }

    fn refresh_targets(
        &self,
        targets: &[Target],
        watches: &mut HashMap<u32, Watch>,
    ) -> Option<(u32, String)> {
        let generation = self.current.get();
        let mut drifted = None;
        let pass_started = Instant::now();
        // Every namespace's kernel counters first, in one go (one thread
        // enters the namespaces without a process, in turn).
        let mut pre = sockstats_of(
            targets
                .iter()
                .map(|(inode, path, pid, _)| (*inode, path.as_deref(), *pid)),
        );
        let mut dumps = 0;
        for (inode, path, pid, cookie) in targets.iter().cloned() {
            let started = Instant::now();
            // The change count first: a change during the dump below shows
            // as a new count next pass.
            let changes = cookie.and_then(|c| generation.probe.ns_changes(c));
            let stat = pre.remove(&inode);
            // Our full-socket counts read right after the kernel's, for the
            // comparisons below (drift, and the IPV6_ADDRFORM verdict that
            // metrics scrapes use), as `stats` compares them: read after the
            // dump instead, a close in one family and an open in the other
            // during the dump looked like a socket that changed family, and
            // twice in a row under steady churn it forced a re-seed.
            let tracked = self.tracked(&generation, inode, &mut Vec::new());
            let moved = stat.and_then(|stat| {
                disagreement(&stat, &tracked, || sockstat_of(inode, pid, path.as_deref()))
            });
            let watch = watches.entry(inode).or_default();
            let has_part = read_lock(&self.namespaces)
                .get(&inode)
                .is_some_and(|n| n.untracked.is_some());
            // Unchanged when nothing it depends on moved: the kernel's
            // counters (timewait socks, UDP binds and closes) and, for what
            // moves no counter, the change hooks' count; or, without the
            // hooks, when there is nothing that could change silently.
            let silent_ok = match changes {
                Some(n) => watch.changes == Some(n),
                None => is_quiet(stat.as_ref()),
            };
            let unchanged = has_part
                && !watch.transient
                && stat.is_some()
                && stat == watch.dumped_at
                && silent_ok;
            // Some(verdict) when this pass dumped.
            let mut wrong: Option<Option<String>> = None;
            let untracked = if unchanged {
                None
            } else {
                let ours = || self.tracked(&generation, inode, &mut Vec::new());
                let dumped = match &path {
                    None => dump_untracked(ours).map_err(|e| e.to_string()),
                    Some(p) => netns::run_in(p, || dump_untracked(ours))
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string())),
                };
                dumps += 1;
                match dumped {
                    Ok(d) => {
                        // Dump again next pass while the states could not
                        // be checked or were wrong: a transition that moves
                        // no counter would not bring another dump.
                        watch.transient = d.transient || d.moved || d.wrong.is_some();
                        watch.dumped_at = stat;
                        watch.changes = changes;
                        watch.wrong_rounds = match &d.wrong {
                            Some(_) => watch.wrong_rounds + 1,
                            None => 0,
                        };
                        wrong = Some(d.wrong);
                        Some(d.counts)
                    }
                    Err(e) => {
                        log::debug!("refresh of namespace {inode}: {e}");
                        continue;
                    }
                }
            };
            let drift = stat.and_then(|stat| {
                watch.drift.check(&tracked, &stat)?;
                watch.drift.reason()
            });
            if let Some(reason) = &drift
                && drifted.is_none()
            {
                drifted = Some((inode, reason.clone()));
            }
            if let Some(Some(reason)) = &wrong
                && watch.wrong_rounds >= WRONG_STATE_ROUNDS
                && drifted.is_none()
            {
                drifted = Some((inode, reason.clone()));
            }
            let mut namespaces = write_lock(&self.namespaces);
            let Some(ns) = namespaces.get_mut(&inode) else {
                continue;
            };
            ns.drift = drift;
            ns.moved = moved;
            if let Some(verdict) = wrong {
                ns.wrong_states = verdict;
            }
            match (untracked, ns.untracked.as_mut()) {
                (Some(counts), _) => {
                    ns.untracked = Some(Untracked {
                        counts,
                        verified_at: started,
                        took: started.elapsed(),
                    });
                }
                (None, Some(part)) => part.verified_at = started,
                (None, None) => {}
            }
        }
        log::debug!(
            "refresh pass: {} namespaces, {dumps} dumped, {:.1} ms",
            watches.len(),
            millis(pass_started.elapsed())
        );
        drifted
    }

    /// The agent's maintenance loop: find namespaces, refresh, check
    /// health, re-seed when needed. Runs until [`Tracker::stop`].
    pub fn run_maintenance(&self) {
        let mut watches: HashMap<u32, Watch> = lock(&self.first_watches).take().unwrap_or_default();
        let mut last_reseed: Option<Instant> = None;
        let mut last_scan = Instant::now();
        let mut last_prune = Instant::now();
        let mut known_kernel: BTreeMap<u32, ()> = BTreeMap::new();
        while !self.stopped() {
            let started = Instant::now();
            let generation = self.current.get();
            // A kernel event from a namespace we do not track yet, or time
            // for the periodic scan: look for new and vanished namespaces.
            let kernel_seen = generation.probe.namespaces();
            let tracked = read_lock(&self.namespaces);
            let unknown = kernel_seen
                .iter()
                .any(|i| !tracked.contains_key(i) && !known_kernel.contains_key(i));
            drop(tracked);
            if unknown || last_scan.elapsed() >= SCAN_EVERY {
                last_scan = Instant::now();
                if let Err(e) = self.discover_and_seed(&generation) {
                    log::error!("seeding new namespaces failed: {e}");
                }
                // Namespaces the kernel saw that the scan cannot find (no
                // process, no bind mount left) are not looked for again.
                known_kernel = kernel_seen.into_iter().map(|i| (i, ())).collect();
            }
            let drifted = self.refresh_pass(&mut watches);
            if last_prune.elapsed() >= PRUNE_INHERITED_EVERY {
                last_prune = Instant::now();
                self.prune_inherited();
            }
            // Kernel-side trouble concerns every namespace; drift, the one
            // that drifted.
            let trouble = match generation.health().reasons.into_iter().next() {
                Some(reason) => Some((None, reason)),
                None => drifted.map(|(inode, reason)| (Some(inode), reason)),
            };
            if let Some((cause, reason)) = trouble {
                let room = generation.probe.tracked_total()
                    < i64::from(generation.probe.max_sockets()) * 9 / 10;
                let backoff_over = last_reseed.is_none_or(|t| t.elapsed() > RESEED_BACKOFF);
                if room && backoff_over {
                    log::warn!("counts inexact ({reason}); re-seeding");
                    if let Some(inode) = cause {
                        self.log_audit(&generation, inode);
                    }
                    last_reseed = Some(Instant::now());
                    match self.reseed(cause) {
                        Ok(()) => {
                            watches.clear();
                            kernel::release_freed_memory();
                        }
                        Err(e) => log::error!("re-seed failed: {e}"),
                    }
                }
            }
            let spent = started.elapsed();
            std::thread::sleep(self.config.refresh.saturating_sub(spent));
        }
    }

    /// Log what the current generation has wrong about one namespace, so
    /// that a drift can be traced to its cause (see Generation::audit).
    fn log_audit(&self, generation: &Generation, inode: u32) {
        let path = match read_lock(&self.namespaces).get(&inode) {
            Some(ns) => ns.path.clone(),
            None => return,
        };
        let target = super::generation::SeedTarget {
            inode,
            path: path.as_deref(),
        };
        match generation.audit(&target, 20) {
            Ok(lines) if lines.is_empty() => {
                log::warn!(
                    "audit of namespace {inode}: entries and counters agree with a fresh dump"
                )
            }
            Ok(lines) => {
                for line in lines {
                    log::warn!("audit of namespace {inode}: {line}");
                }
            }
            Err(e) => log::warn!("audit of namespace {inode} failed: {e}"),
        }
    }

    /// Attach a fresh generation beside the current one, seed every tracked
    /// namespace into it, and swap it in. `cause`: the namespace whose
    /// counts were wrong (None: all of them).
    fn reseed(&self, cause: Option<u32>) -> Result<(), TrackerError> {
        // The change hooks stay as they are (see probe::ChangeHooks).
        let fresh = Generation::attach(&self.config, self.current.get().probe.hooks())?;
        let targets: Vec<(u32, Option<std::path::PathBuf>)> = read_lock(&self.namespaces)
            .values()
            .map(|n| (n.inode, n.path.clone()))
            .collect();
        for (inode, path) in targets {
            let target = super::generation::SeedTarget {
                inode,
                path: path.as_deref(),
            };
            match fresh.seed(&target) {
                Ok(_) | Err(TrackerError::Namespace(_)) => {}
                Err(e) => return Err(e),
            }
        }
        log::info!("re-seeded: {:?}", fresh.report());
        let retired = self.current.get();
        // Before the swap, so that no leak age restarts in between.
        let inherited = inherit_since(&read_lock(&self.inherited_since), retired.probe.entries());
        *write_lock(&self.inherited_since) = inherited;
        self.current.install(fresh);
        // After the swap: a reader in between sees fewer losses, never the
        // old generation's twice (and `events_missed` never goes back).
        self.missed_retired
            .fetch_add(retired.health().lost, Ordering::Relaxed);
        {
            let mut retired_transitions = write_lock(&self.transitions_retired);
            for (family, old, new, n) in retired.probe.transitions() {
                *retired_transitions.entry((family, old, new)).or_default() += n;
            }
        }
        self.reseeds.fetch_add(1, Ordering::Relaxed);
        // Pinned: the fresh generation replaces the retired one's pins.
        self.pin_current()?;
        for ns in write_lock(&self.namespaces).values_mut() {
            ns.drift = None;
            ns.wrong_states = None;
            if cause.is_none_or(|c| c == ns.inode) {
                ns.reseeds += 1;
            }
            ns.moved = None;
        }
        Ok(())
    }
}

/// The cookie of the namespace at `path` (None: ours).
fn cookie_of(path: Option<&std::path::Path>) -> Option<u64> {
    match path {
        None => netns::own_cookie().ok(),
        Some(p) => netns::run_in(p, netns::own_cookie).ok()?.ok(),
    }
}

/// Without the change hooks: whether a namespace's untracked part can be
/// trusted without a dump while the counters stay as they were, i.e. it
/// has nothing that can change silently. Listeners (request socks appear
/// without moving a counter) and UDP sockets (connect changes state without
/// one) need a dump each pass.
fn is_quiet(stat: Option<&SockStat>) -> bool {
    stat.is_some_and(|s| s.tcp4_inuse + s.tcp6_inuse + s.udp4_inuse + s.udp6_inuse == 0)
}

/// Dump the calling thread's namespace's untracked part. Cost: one
/// sock_diag dump of the TIME_WAIT/FIN_WAIT2/SYN_RECV TCP sockets and one of
/// all UDP sockets per address family, linear in those sockets.
fn dump_untracked(ours: impl FnOnce() -> Counts) -> Result<Dumped, diag::DiagError> {
    let mut counts = Counts::default();
    let mut full = Counts::default();
    let mut transient = false;
    let before = sockstat::tcp_activity();
    for af in [diag::AF_INET, diag::AF_INET6] {
        diag::dump(Proto::Tcp, af, UNTRACKED_STATES, |row| {
            let state = State::from_kernel(row.state);
            if row.kind != Kind::Full {
                transient |= row.kind == Kind::Request || state == State::FinWait2;
                counts.add(row.family, state, 1);
            } else if CHECKED_STATES.contains(&state) {
                full.add(row.family, state, 1);
            }
        })?;
    }
    // Ours between the dump and the second reading: with nothing hashed,
    // unhashed or sent meanwhile, both describe the same moment.
    let ours = ours();
    let after = sockstat::tcp_activity();
    count_udp(after.as_ref().map(|(stat, _)| stat), &mut counts)?;
    let moved = before.is_none() || before != after;
    let wrong = if moved {
        None
    } else {
        let diffs: Vec<String> = [Family::Tcp4, Family::Tcp6]
            .into_iter()
            .flat_map(|f| CHECKED_STATES.map(|s| (f, s)))
            .filter(|&(f, s)| full.get(f, s) != ours.get(f, s))
            .map(|(f, s)| {
                format!(
                    "{} {}: tracked {}, kernel {}",
                    f.name(),
                    s.name(),
                    ours.get(f, s),
                    full.get(f, s)
                )
            })
            .collect();
        (!diffs.is_empty()).then(|| {
            format!(
                "a transition was missed: {} (listed by sock_diag at a quiet moment)",
                diffs.join(", ")
            )
        })
    };
    Ok(Dumped {
        counts,
        transient,
        wrong,
        moved,
    })
}

/// UDP sockets by family and state into `counts`. A UDP socket is either
/// connected (ESTABLISHED) or not (UNCONN), and the kernel's `inuse`
/// counter holds every hashed one, which is every one sock_diag lists. So
/// UNCONN is `inuse` minus a dump of the connected ones only: the kernel
/// still walks every UDP socket, but filters them itself, and the many
/// bound servers' sockets never become netlink messages (41,000 of them
/// in the netns bench's big namespace). Without `stat`, a full dump.
fn count_udp(stat: Option<&SockStat>, counts: &mut Counts) -> Result<(), diag::DiagError> {
    let Some(stat) = stat else {
        for af in [diag::AF_INET, diag::AF_INET6] {
            diag::dump(Proto::Udp, af, ALL_STATES, |row| {
                counts.add(row.family, State::from_kernel(row.state), 1);
            })?;
        }
        return Ok(());
    };
    for (af, family, inuse) in [
        (diag::AF_INET, Family::Udp4, stat.udp4_inuse),
        (diag::AF_INET6, Family::Udp6, stat.udp6_inuse),
    ] {
        let mut connected = 0;
        diag::dump(Proto::Udp, af, 1 << TCP_ESTABLISHED, |_| connected += 1)?;
        counts.add(family, State::Established, connected);
        // Under churn the two readings may be a socket apart; the next
        // pass sees `inuse` moved and reads again.
        counts.add(family, State::Close, inuse.saturating_sub(connected));
    }
    Ok(())
}

/// Compares a namespace's full-socket TCP totals with the kernel's `inuse`
/// counters. Under churn they differ from moment to moment, so only the same
/// disagreement over several quiet refreshes counts as drift.
#[derive(Default)]
struct DriftWatch {
    last: Option<(u64, u64, u64, u64)>,
    rounds: u32,
    /// Rounds that make this disagreement drift.
    needed: u32,
    /// The disagreement is a socket that changed family: why, for the log.
    moved: Option<String>,
    /// The tracked states at the last disagreement, for the log.
    detail: String,
}

impl DriftWatch {
    /// Some(()) once the same disagreement has lasted long enough.
    fn check(&mut self, tracked: &Counts, stat: &SockStat) -> Option<()> {
        let ours = (
            tracked.family_total(Family::Tcp4),
            tracked.family_total(Family::Tcp6),
        );
        let sample = (ours.0, ours.1, stat.tcp4_inuse, stat.tcp6_inuse);
        if ours == (stat.tcp4_inuse, stat.tcp6_inuse) {
            self.rounds = 0;
            self.last = None;
            return None;
        }
        if self.last == Some(sample) {
            self.rounds += 1;
        } else {
            self.rounds = 1;
            self.last = Some(sample);
        }
        self.moved = family_moved(tracked, stat);
        self.needed = if self.moved.is_some() {
            MOVED_ROUNDS
        } else {
            DRIFT_ROUNDS
        };
        self.detail = tracked
            .cells()
            .filter(|&(f, _, n)| f.is_tcp() && n > 0)
            .map(|(f, s, n)| format!("{} {} {n}", f.name(), s.name()))
            .collect::<Vec<_>>()
            .join(", ");
        (self.rounds >= self.needed).then_some(())
    }

    fn reason(&self) -> Option<String> {
        let (a, b, c, d) = self.last?;
        if self.rounds < self.needed {
            return None;
        }
        if let Some(moved) = &self.moved {
            return Some(moved.clone());
        }
        Some(format!(
            "TCP counts differ from the kernel's inuse counters (tcp4 {a} vs {c}, tcp6 {b} vs {d}; tracked: {})",
            self.detail
        ))
    }
}
