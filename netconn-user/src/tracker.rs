//! Where the counts live. Two sources make one answer:
//!
//! * full TCP sockets: event-driven, counted by the eBPF program per
//!   (netns, family, state), plus the sockets the agent seeded at start-up
//!   (`Generation::seed_base`);
//! * what the tracepoint never shows (timewait socks, request socks, UDP):
//!   refreshed from a state-filtered sock_diag dump every `refresh` interval
//!   (`Untracked`), and every answer says how old that part is.
//!
//! A generation is one loaded program with its maps and seed. When counts
//! may have gone wrong (map full, missed events, drift against the kernel's
//! own `inuse` counters), a new generation is attached and seeded beside the
//! old one, then swapped in; the old one is detached when dropped.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use netconn_common::{
    FAMILY_INET, FAMILY_INET6, STAT_BACKUP_HANDLED, STAT_COUNTS_FULL, STAT_EVENTS_DROPPED,
    STAT_READ_FAILED, STAT_SOCKS_FULL, STATE_SLOTS, SockEntry, slot,
};

use crate::{
    alerts::ActiveAlerts,
    counts::{Counts, Family, State},
    diag::{self, ALL_STATES, Kind, Proto},
    probe::{Insert, Probe, ProbeError},
    sockstat,
    stream::{self, Hub},
};

/// The dump that finds what the tracepoint never reports: timewait socks
/// (TIME_WAIT, and FIN_WAIT2 of an orphan) and request socks (SYN_RECV).
const UNTRACKED_STATES: u32 = (1 << 3) | (1 << 5) | (1 << 6);
/// The refreshed part must never be older than this when a query arrives.
pub const MAX_AGE: Duration = Duration::from_secs(1);
/// Identical disagreement with the kernel's `inuse` counters for this many
/// refreshes in a row (nothing changing meanwhile) means our counts drifted.
const DRIFT_ROUNDS: u32 = 4;
/// Re-seeding is not retried more often than this.
const RESEED_BACKOFF: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("sock_diag dump failed: {0}")]
    Diag(#[from] diag::DiagError),
    #[error("cannot read own network namespace: {0}")]
    Netns(std::io::Error),
}

/// One loaded program, its maps and what the agent seeded into them.
struct Generation {
    probe: Probe,
    /// Sockets inserted by the agent's seed, per NsCounts slot, for the
    /// agent's namespace; the kernel's deltas are added on top.
    seed_base: [i64; 2 * STATE_SLOTS],
    seeded_at: SystemTime,
    report: SeedReport,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SeedReport {
    /// Full TCP sockets the dump listed.
    pub dumped: u64,
    /// Of those, inserted by the agent.
    pub inserted: u64,
    /// Already known to the kernel side (an event came first) or closed.
    pub already_known: u64,
    /// Could not be inserted: per-socket map full.
    pub map_full: u64,
    pub tombstones_removed: u64,
    pub millis: f64,
}

/// The refreshed part of the answer.
#[derive(Clone, Debug)]
struct Untracked {
    counts: Counts,
    /// When the dump started: the data is at least this old.
    taken_at: Instant,
    took: Duration,
}

/// What a query returns.
#[derive(Debug)]
pub struct Snapshot {
    pub counts: Counts,
    pub meta: Meta,
}

#[derive(Debug, serde::Serialize)]
pub struct Meta {
    pub version: &'static str,
    pub netns: u32,
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
    pub reseeds: u64,
    /// Events the kernel skipped for the primary program (it was running on
    /// that CPU when a softirq fired the tracepoint again) and how many of
    /// them the backup program handled: equal when nothing was lost.
    pub nested_events: u64,
    pub nested_handled: u64,
}

pub struct Config {
    pub max_sockets: u32,
    pub refresh: Duration,
    /// Size of the kernel's transition ring buffer (a power of two).
    pub ring_bytes: u32,
}

pub struct Tracker {
    config: Config,
    netns: u32,
    generation: RwLock<Arc<Generation>>,
    untracked: RwLock<Option<Untracked>>,
    /// A persistent disagreement with the kernel's counters, as a reason.
    drift: RwLock<Option<String>>,
    reseeds: std::sync::atomic::AtomicU64,
    stop: AtomicBool,
    /// Watchers of the transition stream.
    pub hub: Arc<Hub>,
    /// Leak alerts active now (kept by the alerts loop).
    pub alerts: Arc<ActiveAlerts>,
    /// Whether the kernel should stream transitions (someone watches).
    streaming: AtomicBool,
}

impl Tracker {
    /// Attach, seed, take the first refresh. On return the tracker answers.
    pub fn start(config: Config) -> Result<Tracker, TrackerError> {
        let netns = own_netns().map_err(TrackerError::Netns)?;
        let generation = Generation::build(&config, netns, false)?;
        let tracker = Tracker {
            config,
            netns,
            generation: RwLock::new(Arc::new(generation)),
            untracked: RwLock::new(None),
            drift: RwLock::new(None),
            reseeds: Default::default(),
            stop: AtomicBool::new(false),
            hub: Arc::default(),
            alerts: Arc::default(),
            streaming: AtomicBool::new(false),
        };
        tracker.refresh()?;
        release_freed_memory();
        Ok(tracker)
    }

    fn current(&self) -> Arc<Generation> {
        match self.generation.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Full TCP sockets as the kernel side counts them (seed + deltas), for
    /// the agent's namespace. Negative cells mean a counting bug: reported.
    fn tracked(&self, generation: &Generation, inexact: &mut Vec<String>) -> Counts {
        let mut counts = Counts::default();
        match generation.probe.tcp_deltas(self.netns) {
            Ok(deltas) => {
                for (family_index, family) in
                    [(FAMILY_INET, Family::Tcp4), (FAMILY_INET6, Family::Tcp6)]
                {
                    for state in 1..STATE_SLOTS as u8 {
                        let i = slot(family_index, state);
                        let n = generation.seed_base[i] + deltas[i];
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

    /// The answer to a query: O(1) in the number of sockets (one per-CPU map
    /// lookup plus two small reads).
    pub fn snapshot(&self) -> Snapshot {
        let generation = self.current();
        let mut inexact = Vec::new();
        let mut counts = self.tracked(&generation, &mut inexact);
        let health = generation.health();
        inexact.extend(health.reasons);

        let (refreshed_age, refresh_took) = match read_lock(&self.untracked).as_ref() {
            Some(u) => {
                counts = counts.merged(&u.counts);
                (u.taken_at.elapsed(), u.took)
            }
            None => {
                inexact.push("no refresh yet".into());
                (Duration::ZERO, Duration::ZERO)
            }
        };
        if refreshed_age > MAX_AGE {
            inexact.push(format!(
                "refreshed part is {} ms old",
                refreshed_age.as_millis()
            ));
        }
        if let Some(reason) = read_lock(&self.drift).clone() {
            inexact.push(reason);
        }

        Snapshot {
            counts,
            meta: Meta {
                version: env!("CARGO_PKG_VERSION"),
                netns: self.netns,
                seeded_at: humantime::format_rfc3339_millis(generation.seeded_at).to_string(),
                refreshed_age_ms: millis(refreshed_age),
                refresh_ms: millis(refresh_took),
                exact: inexact.is_empty(),
                inexact,
                seed: generation.report.clone(),
                reseeds: self.reseeds.load(Ordering::Relaxed),
                nested_events: health.nested_events,
                nested_handled: health.nested_handled,
            },
        }
    }

    /// Re-read what the tracepoint cannot see. Cost: one sock_diag dump of
    /// the TIME_WAIT/FIN_WAIT2/SYN_RECV TCP sockets and one of all UDP
    /// sockets, linear in their number (measured in the README).
    fn refresh(&self) -> Result<(), TrackerError> {
        let taken_at = Instant::now();
        let mut counts = Counts::default();
        for af in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            diag::dump(Proto::Tcp, af, UNTRACKED_STATES, |row| {
                if row.kind != Kind::Full {
                    counts.add(row.family, State::from_kernel(row.state), 1);
                }
            })?;
            diag::dump(Proto::Udp, af, ALL_STATES, |row| {
                counts.add(row.family, State::from_kernel(row.state), 1);
            })?;
        }
        let untracked = Untracked {
            counts,
            taken_at,
            took: taken_at.elapsed(),
        };
        *write_lock(&self.untracked) = Some(untracked);
        Ok(())
    }

    /// The agent's maintenance loop: refresh, check health, re-seed when
    /// needed. Runs until [`Tracker::stop`].
    pub fn run_maintenance(&self) {
        let mut drift = DriftWatch::default();
        let mut last_reseed: Option<Instant> = None;
        while !self.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            if let Err(e) = self.refresh() {
                log::error!("refresh failed: {e}");
            }
            let reason = self
                .current()
                .health()
                .reasons
                .into_iter()
                .next()
                .or_else(|| drift.check(self).and_then(|()| drift.reason()));
            *write_lock(&self.drift) = drift.reason();
            if let Some(reason) = reason {
                let generation = self.current();
                let room = generation.probe.tracked_total()
                    < i64::from(generation.probe.max_sockets()) * 9 / 10;
                let backoff_over = last_reseed.is_none_or(|t| t.elapsed() > RESEED_BACKOFF);
                if room && backoff_over {
                    log::warn!("counts inexact ({reason}); re-seeding");
                    last_reseed = Some(Instant::now());
                    let streaming = self.streaming.load(Ordering::Relaxed);
                    match Generation::build(&self.config, self.netns, streaming) {
                        Ok(fresh) => {
                            log::info!("re-seeded: {:?}", fresh.report);
                            *write_lock(&self.generation) = Arc::new(fresh);
                            self.reseeds.fetch_add(1, Ordering::Relaxed);
                            drift = DriftWatch::default();
                            *write_lock(&self.drift) = None;
                            release_freed_memory();
                        }
                        Err(e) => log::error!("re-seed failed: {e}"),
                    }
                }
            }
            let spent = started.elapsed();
            std::thread::sleep(self.config.refresh.saturating_sub(spent));
        }
    }

    /// Switch the kernel's transition stream on or off (the server calls
    /// this as the first watcher arrives and the last one leaves).
    pub fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::Relaxed);
        if let Err(e) = self.current().probe.set_streaming(on) {
            log::error!("switching the transition stream: {e}");
        }
    }

    /// Deliver the kernel's transitions to the watchers until
    /// [`Tracker::stop`]; follows re-seeds to the new generation's ring.
    pub fn run_stream(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let generation = self.current();
            let Some(ring) = generation.probe.take_events() else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            stream::pump(
                ring,
                &self.hub,
                || generation.probe.stats()[STAT_EVENTS_DROPPED as usize],
                || !self.stop.load(Ordering::Relaxed) && Arc::ptr_eq(&generation, &self.current()),
            );
        }
    }

    /// How long the full TCP socket with this cookie has been in its state,
    /// from its kernel-side entry. For a seeded socket this is a lower bound
    /// (time since the agent saw it).
    pub fn time_in_state(&self, cookie: u64) -> Option<Duration> {
        let entry = self.current().probe.socket(cookie)?;
        Some(Duration::from_nanos(
            boot_ns().saturating_sub(entry.since_ns),
        ))
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Generation {
    /// Attach a fresh program, then seed every full TCP socket of `netns`
    /// from a dump (the scheme in KERNEL-NOTES: attach first; insert with
    /// NOEXIST so the kernel's view wins; tombstones stop stale rows).
    fn build(config: &Config, netns: u32, streaming: bool) -> Result<Generation, TrackerError> {
        let (max_sockets, ring_bytes) = (config.max_sockets, config.ring_bytes);
        let started = Instant::now();
        // A nested event in the microseconds between the two attaches is
        // lost; attaching again is cheaper than seeding an inexact generation.
        let mut probe = Probe::attach(max_sockets, ring_bytes)?;
        for _ in 0..3 {
            if probe.unbacked_misses() == 0 {
                break;
            }
            log::warn!(
                "{} events missed while attaching; attaching again",
                probe.unbacked_misses()
            );
            drop(probe);
            probe = Probe::attach(max_sockets, ring_bytes)?;
        }
        let now = boot_ns();
        let mut report = SeedReport::default();
        let mut seed_base = [0i64; 2 * STATE_SLOTS];
        let mut failure = None;
        for (af, family) in [
            (libc::AF_INET as u8, FAMILY_INET),
            (libc::AF_INET6 as u8, FAMILY_INET6),
        ] {
            diag::dump(Proto::Tcp, af, ALL_STATES, |row| {
                if row.kind != Kind::Full || failure.is_some() {
                    return;
                }
                report.dumped += 1;
                let entry = SockEntry {
                    since_ns: now,
                    netns,
                    state: row.state,
                    family,
                    flags: netconn_common::ENTRY_SEEDED,
                    _pad: 0,
                };
                match probe.seed(row.cookie, &entry) {
                    Ok(Insert::Inserted) => {
                        report.inserted += 1;
                        seed_base[slot(family, row.state)] += 1;
                    }
                    Ok(Insert::Exists) => report.already_known += 1,
                    Ok(Insert::Full) => report.map_full += 1,
                    Err(e) => failure = Some(e),
                }
            })?;
        }
        if let Some(e) = failure {
            return Err(e.into());
        }
        probe.set_seeding(false)?;
        probe.set_streaming(streaming)?;
        report.tombstones_removed = probe.remove_tombstones()? as u64;
        report.millis = millis(started.elapsed());
        log::info!(
            "seeded: {} full TCP sockets dumped, {} inserted, {} already seen by the kernel, {} map full, {} tombstones, {:.1} ms",
            report.dumped,
            report.inserted,
            report.already_known,
            report.map_full,
            report.tombstones_removed,
            report.millis
        );
        Ok(Generation {
            probe,
            seed_base,
            seeded_at: SystemTime::now(),
            report,
        })
    }

    /// Reasons the kernel-side counts cannot be trusted right now.
    fn health(&self) -> Health {
        let mut reasons = Vec::new();
        let stats = self.probe.stats();
        if stats[STAT_SOCKS_FULL as usize] > 0 || self.report.map_full > 0 {
            reasons.push(format!(
                "per-socket map full ({} sockets max, --max-sockets)",
                self.probe.max_sockets()
            ));
        }
        if stats[STAT_COUNTS_FULL as usize] > 0 {
            reasons.push("namespace counter map full".into());
        }
        if stats[STAT_READ_FAILED as usize] > 0 {
            reasons.push(format!(
                "{} socket reads failed in the kernel",
                stats[STAT_READ_FAILED as usize]
            ));
        }
        // Each primary miss must have been handled by the backup program.
        // More handled than missed means an event was handled twice, which
        // leaves counts unchanged (moving a socket to the state it is in, or
        // closing one that is gone, changes nothing): visible in the
        // metadata, not a reason. Fewer means events were lost.
        let misses = self.probe.primary_misses();
        let unbacked = self.probe.unbacked_misses();
        let handled = stats[STAT_BACKUP_HANDLED as usize] + unbacked;
        if unbacked > 0 {
            reasons.push(format!("{unbacked} kernel events lost while attaching"));
        } else if misses > handled {
            reasons.push(format!(
                "{} kernel events lost (primary skipped {misses}, backup handled {handled}, backup skipped {})",
                misses - handled,
                self.probe.backup_misses()
            ));
        }
        Health {
            reasons,
            nested_events: misses,
            nested_handled: stats[STAT_BACKUP_HANDLED as usize],
        }
    }
}

/// What [`Generation::health`] found, read once per query.
struct Health {
    /// Why the kernel-side counts cannot be trusted now (empty: they can).
    reasons: Vec<String>,
    nested_events: u64,
    nested_handled: u64,
}

/// Compares our full-socket TCP totals with the kernel's per-namespace
/// `inuse` counters. Under churn they differ from moment to moment, so only
/// the same disagreement over several quiet refreshes counts as drift.
#[derive(Default)]
struct DriftWatch {
    last: Option<(u64, u64, u64, u64)>,
    rounds: u32,
    /// The tracked states at the last disagreement, for the log.
    detail: String,
}

impl DriftWatch {
    /// Some(()) once the same disagreement has lasted DRIFT_ROUNDS.
    fn check(&mut self, tracker: &Tracker) -> Option<()> {
        let stat = sockstat::read().ok()?;
        let tracked = tracker.tracked(&tracker.current(), &mut Vec::new());
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
        self.detail = [Family::Tcp4, Family::Tcp6]
            .iter()
            .flat_map(|&f| State::ALL.iter().map(move |&s| (f, s)))
            .filter(|&(f, s)| tracked.get(f, s) > 0)
            .map(|(f, s)| format!("{} {} {}", f.name(), s.name(), tracked.get(f, s)))
            .collect::<Vec<_>>()
            .join(", ");
        (self.rounds >= DRIFT_ROUNDS).then_some(())
    }

    fn reason(&self) -> Option<String> {
        let (a, b, c, d) = self.last?;
        (self.rounds >= DRIFT_ROUNDS).then(|| {
            format!(
                "TCP counts differ from the kernel's inuse counters (tcp4 {a} vs {c}, tcp6 {b} vs {d}; tracked: {})",
                self.detail
            )
        })
    }
}

/// Loading a generation parses the kernel's BTF (megabytes, freed again);
/// hand that memory back so the agent's resident size stays small.
fn release_freed_memory() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

/// Inode of this process's network namespace (what the kernel side keys by).
pub fn own_netns() -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata("/proc/self/ns/net")?.ino() as u32)
}

/// CLOCK_BOOTTIME in ns, the clock of bpf_ktime_get_boot_ns().
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
