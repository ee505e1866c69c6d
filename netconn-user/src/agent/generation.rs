//! One generation: a loaded and attached program, its maps, and the sockets
//! the agent seeded into them, namespace by namespace. Seeding follows the
//! scheme in KERNEL-NOTES: attach first, then insert every dumped full TCP
//! socket with NOEXIST so the kernel's own view wins; tombstones stop stale
//! dump rows. A namespace is dumped from a thread inside it.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use netconn_common::{
    ENTRY_SEEDED, FAMILY_INET, FAMILY_INET6, NsCounts, STAT_BACKUP_HANDLED, STAT_COUNTS_FULL,
    STAT_READ_FAILED, STAT_SOCKS_FULL, STATE_SLOTS, SockEntry, slot,
};

use crate::{
    kernel::{
        self,
        diag::{self, ALL_STATES, Kind, Proto},
        netns,
        probe::{ChangeHooks, Insert, Probe, ProbeError},
        sockstat,
    },
    proto::SeedReport,
};

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("sock_diag dump failed: {0}")]
    Diag(#[from] diag::DiagError),
    #[error("cannot read own network namespace: {0}")]
    Netns(std::io::Error),
    #[error(transparent)]
    Namespace(#[from] netns::NetnsError),
}

/// What a generation is built with.
pub struct Config {
    /// Keep the generation pinned under this bpffs directory (`--pin`).
    pub pin_root: Option<std::path::PathBuf>,
    /// The layout version pins are written and adopted as.
    pub layout_version: u32,
    pub max_sockets: u32,
    pub refresh: std::time::Duration,
    /// Size of the kernel's transition ring buffer (a power of two).
    pub ring_bytes: u32,
}

/// Something whose kernel stream can be switched: a generation (a fake one
/// in tests).
pub(super) trait StreamSwitch {
    fn switch_stream(&self, on: bool) -> Result<(), ProbeError>;
}

/// Seeding end times an audit shows (see Generation::seed_ends).
const SEED_ENDS_KEPT: usize = 8;

/// Dumps of one namespace while seeding, at most (see Generation::seed).
const MAX_SEED_PASSES: u32 = 3;

pub(super) fn millis(d: std::time::Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

pub(super) struct Generation {
    pub probe: Probe,
    /// Sockets the agent seeded, per namespace inode and NsCounts slot; the
    /// kernel's deltas are added on top. Entries outlive their namespace on
    /// purpose: a dead namespace's kernel deltas net to zero against its
    /// base (its sockets all closed, each with an event), so a new namespace
    /// that reuses the inode inherits nothing. A copy of the kernel's
    /// SEED_BASE map, which carries it to the next agent when pinned.
    seed_base: Mutex<HashMap<u32, [i64; 2 * STATE_SLOTS]>>,
    /// The layout version of the pinned generation this one adopted.
    pub adopted: Option<u32>,
    pub seeded_at: SystemTime,
    /// What seeding did, over all namespaces.
    report: Mutex<SeedReport>,
    /// Boot time of the attach, and of the end of the last SEED_ENDS_KEPT
    /// seedings (one per batch of new namespaces, for months), so that an
    /// audit can place an entry's `since_ns`.
    attached_ns: u64,
    seed_ends: Mutex<Vec<u64>>,
}

/// Where a namespace is, for seeding it.
pub(super) struct SeedTarget<'a> {
    pub inode: u32,
    /// None: the agent's own namespace (dumped from the calling thread).
    pub path: Option<&'a Path>,
}

/// What [`Generation::health`] found, read once per query.
pub(super) struct Health {
    /// Why the kernel-side counts cannot be trusted now (empty: they can).
    pub reasons: Vec<String>,
    /// Events neither program handled (what the reasons report as lost),
    /// for the metrics' `netconn_events_missed_total`.
    pub lost: u64,
    pub nested_events: u64,
    pub nested_handled: u64,
}

impl Generation {
    /// Attach a fresh program. It counts every namespace at once; seeding
    /// (on until [`Generation::end_seeding`]) adds what existed before.
    /// The stream switch starts off; the tracker sets it when it installs
    /// the generation (see `tracker::Current::install`).
    pub fn attach(
        config: &Config,
        hooks: Option<Arc<ChangeHooks>>,
    ) -> Result<Generation, TrackerError> {
        let (max_sockets, ring_bytes) = (config.max_sockets, config.ring_bytes);
        // A nested event in the microseconds between the two attaches is
        // lost; attaching again is cheaper than seeding an inexact generation.
        let mut probe = Probe::attach(max_sockets, ring_bytes, hooks)?;
        for _ in 0..3 {
            if probe.unbacked_misses() == 0 {
                break;
            }
            log::warn!(
                "{} events missed while attaching; attaching again",
                probe.unbacked_misses()
            );
            // The hooks stay: attaching them again could cost events.
            let hooks = probe.hooks();
            drop(probe);
            probe = Probe::attach(max_sockets, ring_bytes, hooks)?;
        }
        Ok(Generation {
            probe,
            seed_base: Mutex::new(HashMap::new()),
            adopted: None,
            seeded_at: SystemTime::now(),
            report: Mutex::new(SeedReport::default()),
            attached_ns: kernel::boot_ns(),
            seed_ends: Mutex::new(Vec::new()),
        })
    }

    /// Take over the generation an earlier agent pinned at `dir`. Refused
    /// when that agent stopped while seeding (its counts lack what it had
    /// not seeded yet).
    pub fn adopt(dir: &Path, layout: u32) -> Result<Generation, TrackerError> {
        let probe = Probe::adopt(dir)?;
        if probe.seeding()? {
            return Err(ProbeError::Adopt(
                dir.to_path_buf(),
                "its agent stopped while seeding".into(),
            )
            .into());
        }
        let bases = probe
            .seed_bases()
            .into_iter()
            .map(|(inode, counts)| (inode, counts.count))
            .collect();
        Ok(Generation {
            probe,
            seed_base: Mutex::new(bases),
            adopted: Some(layout),
            seeded_at: SystemTime::now(),
            report: Mutex::new(SeedReport::default()),
            attached_ns: kernel::boot_ns(),
            seed_ends: Mutex::new(Vec::new()),
        })
    }

    /// Whether a namespace was seeded into this generation (by this agent
    /// or the one that pinned it). One that was not, and existed before
    /// the program was attached, has sockets the kernel side never saw.
    pub fn has_seed_base(&self, inode: u32) -> bool {
        lock(&self.seed_base).contains_key(&inode)
    }

    /// Closes leave tombstones from now on, so a stale dump row cannot
    /// bring a closed socket back while namespaces are being seeded.
    pub fn begin_seeding(&self) -> Result<(), TrackerError> {
        Ok(self.probe.set_seeding(true)?)
    }

    /// Seeding done: closes remove entries again; drop the tombstones.
    pub fn end_seeding(&self) -> Result<(), TrackerError> {
        self.probe.set_seeding(false)?;
        {
            let mut ends = lock(&self.seed_ends);
            if ends.len() == SEED_ENDS_KEPT {
                ends.remove(0);
            }
            ends.push(kernel::boot_ns());
        }
        let removed = self.probe.remove_tombstones()? as u64;
        lock(&self.report).tombstones_removed += removed;
        Ok(())
    }

    /// Insert every full TCP socket of one namespace (between
    /// [`Generation::begin_seeding`] and [`Generation::end_seeding`]):
    /// with NOEXIST, so an entry the kernel made first wins.
    pub fn seed(&self, target: &SeedTarget) -> Result<SeedReport, TrackerError> {
        let started = Instant::now();
        let inode = target.inode;
        let dump_all = || -> Result<(SeedReport, [i64; 2 * STATE_SLOTS]), TrackerError> {
            let now = kernel::boot_ns();
            let mut report = SeedReport::default();
            let mut base = [0i64; 2 * STATE_SLOTS];
            let mut failure: Option<ProbeError> = None;
            // A dump under churn can skip a socket; one that changed
            // nothing (see sockstat::tcp_activity) cannot. So dump again,
            // inserting only sockets not seen yet, until a dump ran while
            // the namespace stood still (or MAX_SEED_PASSES).
            let mut seen: HashSet<u64> = HashSet::new();
            for pass in 1..=MAX_SEED_PASSES {
                let before = sockstat::tcp_activity();
                for (af, family) in [(diag::AF_INET, FAMILY_INET), (diag::AF_INET6, FAMILY_INET6)] {
                    diag::dump(Proto::Tcp, af, ALL_STATES, |row| {
                        if row.kind != Kind::Full || failure.is_some() || !seen.insert(row.cookie) {
                            return;
                        }
                        report.dumped += 1;
                        let entry = SockEntry {
                            since_ns: now,
                            netns: inode,
                            state: row.state,
                            family,
                            flags: ENTRY_SEEDED,
                            _pad: 0,
                        };
                        match self.probe.seed(row.cookie, &entry) {
                            Ok(Insert::Inserted) => {
                                report.inserted += 1;
                                base[slot(family, row.state)] += 1;
                            }
                            Ok(Insert::Exists) => report.already_known += 1,
                            Ok(Insert::Full) => report.map_full += 1,
                            Err(e) => failure = Some(e),
                        }
                    })?;
                }
                report.passes = pass;
                let after = sockstat::tcp_activity();
                if failure.is_some() || (before.is_some() && before == after) {
                    break;
                }
            }
            match failure {
                Some(e) => Err(e.into()),
                None => Ok((report, base)),
            }
        };
        let (mut report, base) = match target.path {
            None => dump_all()?,
            Some(path) => netns::run_in(path, dump_all)??,
        };
        {
            // Written even when nothing was inserted: an adopting agent
            // seeds only the namespaces without a base.
            let mut bases = lock(&self.seed_base);
            let cell = bases.entry(inode).or_insert([0; 2 * STATE_SLOTS]);
            for (c, b) in cell.iter_mut().zip(base) {
                *c += b;
            }
            self.probe
                .set_seed_base(inode, &NsCounts { count: *cell })?;
        }
        report.millis = millis(started.elapsed());
        let mut total = lock(&self.report);
        total.dumped += report.dumped;
        total.inserted += report.inserted;
        total.already_known += report.already_known;
        total.map_full += report.map_full;
        total.millis += report.millis;
        total.passes = total.passes.max(report.passes);
        Ok(report)
    }

    /// Why one namespace's counts disagree with the kernel, for the log
    /// before a re-seed: its entries against a fresh dump, cookie by cookie
    /// (at most `limit` lines), and its counters against its entries. A
    /// dump under churn adds noise; at a quiet moment every line is a fault.
    pub fn audit(&self, target: &SeedTarget, limit: usize) -> Result<Vec<String>, TrackerError> {
        let inode = target.inode;
        let dump = || -> Result<HashMap<u64, (u8, u8, String)>, TrackerError> {
            let mut rows = HashMap::new();
            for (af, family) in [(diag::AF_INET, FAMILY_INET), (diag::AF_INET6, FAMILY_INET6)] {
                diag::dump(Proto::Tcp, af, ALL_STATES, |row| {
                    if row.kind == Kind::Full {
                        let what = format!("{} -> {}, inode {}", row.src, row.dst, row.inode);
                        rows.insert(row.cookie, (family, row.state, what));
                    }
                })?;
            }
            Ok(rows)
        };
        let kernel = match target.path {
            None => dump()?,
            Some(path) => netns::run_in(path, dump)??,
        };
        let entries = self.probe.entries_of(inode);
        let mut lines = Vec::new();
        let mut by_entries = [0i64; 2 * STATE_SLOTS];
        for (cookie, e) in &entries {
            by_entries[slot(e.family, e.state)] += 1;
            match kernel.get(cookie) {
                Some((family, state, _)) if (*family, *state) == (e.family, e.state) => {}
                Some((family, state, what)) => lines.push(format!(
                    "sk {cookie:x}: entry {} (flags {}), kernel {} ({what})",
                    describe(e.family, e.state),
                    e.flags,
                    describe(*family, *state)
                )),
                None => lines.push(format!(
                    "sk {cookie:x}: entry {} (flags {}, since {:.1} ms ago), not in the kernel's dump",
                    describe(e.family, e.state),
                    e.flags,
                    kernel::boot_ns().saturating_sub(e.since_ns) as f64 / 1e6
                )),
            }
        }
        let known: std::collections::HashSet<u64> = entries.iter().map(|(c, _)| *c).collect();
        for (cookie, (family, state, what)) in &kernel {
            if !known.contains(cookie) {
                lines.push(format!(
                    "sk {cookie:x}: no entry, kernel {} ({what})",
                    describe(*family, *state)
                ));
            }
        }
        if !lines.is_empty() {
            let stats = self.probe.stats();
            lines.push(format!(
                "primary skipped {} nested events, backup handled {} and skipped {}",
                self.probe.primary_misses(),
                stats[STAT_BACKUP_HANDLED as usize],
                self.probe.backup_misses()
            ));
            lines.push(format!(
                "attached {:.1} ms ago; seedings ended {:?} ms ago",
                self.attached_ns_ago(),
                lock(&self.seed_ends)
                    .iter()
                    .map(|t| kernel::boot_ns().saturating_sub(*t) / 1_000_000)
                    .collect::<Vec<_>>()
            ));
        }
        let dropped = lines.len().saturating_sub(limit);
        lines.truncate(limit);
        if dropped > 0 {
            lines.push(format!("... and {dropped} more"));
        }
        let deltas = self.probe.tcp_deltas(inode)?;
        let base = self.seed_base(inode);
        for (i, want) in by_entries.iter().enumerate() {
            let counted = base[i] + deltas[i];
            if counted != *want {
                lines.push(format!(
                    "slot {i} ({}): counted {counted} (seeded {} + kernel {}), entries {want}",
                    describe((i / STATE_SLOTS) as u8, (i % STATE_SLOTS) as u8),
                    base[i],
                    deltas[i]
                ));
            }
        }
        Ok(lines)
    }

    fn attached_ns_ago(&self) -> f64 {
        kernel::boot_ns().saturating_sub(self.attached_ns) as f64 / 1e6
    }

    /// The seeded base of one namespace (zeros if never seeded).
    pub fn seed_base(&self, inode: u32) -> [i64; 2 * STATE_SLOTS] {
        lock(&self.seed_base)
            .get(&inode)
            .copied()
            .unwrap_or([0; 2 * STATE_SLOTS])
    }

    pub fn report(&self) -> SeedReport {
        lock(&self.report).clone()
    }

    /// Reasons the kernel-side counts cannot be trusted right now.
    pub fn health(&self) -> Health {
        let mut reasons = Vec::new();
        let stats = self.probe.stats();
        if stats[STAT_SOCKS_FULL as usize] > 0 || lock(&self.report).map_full > 0 {
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
        let lost = unbacked + misses.saturating_sub(handled);
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
            lost,
            nested_events: misses,
            nested_handled: stats[STAT_BACKUP_HANDLED as usize],
        }
    }
}

/// "tcp4 ESTABLISHED" for a family and a kernel TCP state.
fn describe(family: u8, state: u8) -> String {
    format!(
        "{} {} ({state})",
        netconn_common::Family::tcp_of(family).name(),
        netconn_common::State::from_kernel(state).name()
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StreamSwitch for Generation {
    fn switch_stream(&self, on: bool) -> Result<(), ProbeError> {
        self.probe.set_streaming(on)
    }
}
