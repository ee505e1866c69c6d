//! One generation: a loaded and attached program, its maps, and the
//! namespaces seeded into them. Seeding: attach first, then run the kernel's
//! seeding iterator in each namespace (from a thread inside it), which
//! enters every full TCP socket that no event entered yet, each under its
//! socket lock: no event can race it, and running it twice changes nothing.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use netconn_common::{
    FAMILY_INET, FAMILY_INET6, STAT_BACKUP_HANDLED, STAT_COUNTS_FULL, STAT_READ_FAILED,
    STAT_SOCKS_FULL, STATE_SLOTS, slot,
};

use crate::{
    kernel::{
        self,
        diag::{self, ALL_STATES, Kind, Proto},
        netns,
        probe::{ChangeHooks, Probe, ProbeError},
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

pub(super) fn millis(d: std::time::Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

pub(super) struct Generation {
    pub probe: Probe,
    /// Namespaces seeded into this generation, by inode. Kept after a
    /// namespace is gone on purpose: its counters net to zero (its sockets
    /// all closed, each with an event), and a new namespace that reuses the
    /// inode has only sockets the programs saw from their first event. A
    /// copy of the kernel's SEEDED map, which carries it to the next agent
    /// when pinned.
    seeded: Mutex<HashSet<u32>>,
    /// The layout version of the pinned generation this one adopted.
    pub adopted: Option<u32>,
    pub seeded_at: SystemTime,
    /// What seeding did, over all namespaces.
    report: Mutex<SeedReport>,
    /// Boot time of the attach, and of the end of the last SEED_ENDS_KEPT
    /// seedings, so that an audit can place an entry's `since_ns`.
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
    /// ([`Generation::seed`]) adds what existed before.
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
            seeded: Mutex::new(HashSet::new()),
            adopted: None,
            seeded_at: SystemTime::now(),
            report: Mutex::new(SeedReport::default()),
            attached_ns: kernel::boot_ns(),
            seed_ends: Mutex::new(Vec::new()),
        })
    }

    /// Take over the generation an earlier agent pinned at `dir`. A
    /// namespace that agent had not finished seeding is seeded again.
    pub fn adopt(dir: &Path, layout: u32) -> Result<Generation, TrackerError> {
        let probe = Probe::adopt(dir)?;
        let seeded = probe.seeded().into_iter().collect();
        Ok(Generation {
            probe,
            seeded: Mutex::new(seeded),
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
    pub fn is_seeded(&self, inode: u32) -> bool {
        lock(&self.seeded).contains(&inode)
    }

    /// Enter every full TCP socket of one namespace that the programs have
    /// not entered yet (the seeding iterator, run from inside it).
    pub fn seed(&self, target: &SeedTarget) -> Result<SeedReport, TrackerError> {
        let started = Instant::now();
        let run = || self.probe.seed_here();
        let seeded = match target.path {
            None => run()?,
            Some(path) => netns::run_in(path, run)??,
        };
        let now = kernel::boot_ns();
        self.probe.mark_seeded(target.inode, now)?;
        lock(&self.seeded).insert(target.inode);
        {
            let mut ends = lock(&self.seed_ends);
            if ends.len() == SEED_ENDS_KEPT {
                ends.remove(0);
            }
            ends.push(now);
        }
        let report = SeedReport {
            dumped: seeded.visited,
            inserted: seeded.inserted,
            already_known: seeded.known,
            map_full: seeded.failed,
            millis: millis(started.elapsed()),
        };
        let mut total = lock(&self.report);
        total.dumped += report.dumped;
        total.inserted += report.inserted;
        total.already_known += report.already_known;
        total.map_full += report.map_full;
        total.millis += report.millis;
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
        let counted = self.probe.tcp_deltas(inode)?;
        for (i, want) in by_entries.iter().enumerate() {
            if counted[i] != *want {
                lines.push(format!(
                    "slot {i} ({}): counted {}, entries {want}",
                    describe((i / STATE_SLOTS) as u8, (i % STATE_SLOTS) as u8),
                    counted[i]
                ));
            }
        }
        Ok(lines)
    }

    fn attached_ns_ago(&self) -> f64 {
        kernel::boot_ns().saturating_sub(self.attached_ns) as f64 / 1e6
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
