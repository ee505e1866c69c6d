//! One generation: a loaded and attached program, its maps, and the sockets
//! the agent seeded into them. Seeding follows the scheme in KERNEL-NOTES:
//! attach first, then insert every dumped full TCP socket with NOEXIST so
//! the kernel's own view wins; tombstones stop stale dump rows.

use std::time::{Instant, SystemTime};

use netconn_common::{
    ENTRY_SEEDED, FAMILY_INET, FAMILY_INET6, STAT_BACKUP_HANDLED, STAT_COUNTS_FULL,
    STAT_READ_FAILED, STAT_SOCKS_FULL, STATE_SLOTS, SockEntry, slot,
};

use super::tracker::{Config, TrackerError, millis};
use crate::{
    kernel::{
        self,
        diag::{self, ALL_STATES, Kind, Proto},
        probe::{Insert, Probe, ProbeError},
    },
    proto::SeedReport,
};

pub(super) struct Generation {
    pub probe: Probe,
    /// Sockets inserted by the agent's seed, per NsCounts slot, for the
    /// agent's namespace; the kernel's deltas are added on top.
    pub seed_base: [i64; 2 * STATE_SLOTS],
    pub seeded_at: SystemTime,
    pub report: SeedReport,
}

/// What [`Generation::health`] found, read once per query.
pub(super) struct Health {
    /// Why the kernel-side counts cannot be trusted now (empty: they can).
    pub reasons: Vec<String>,
    pub nested_events: u64,
    pub nested_handled: u64,
}

impl Generation {
    /// Attach a fresh program, then seed every full TCP socket of `netns`.
    /// The stream switch starts off; the tracker sets it when it installs
    /// the generation (see `tracker::Current::install`).
    pub fn build(config: &Config, netns: u32) -> Result<Generation, TrackerError> {
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
        let now = kernel::boot_ns();
        let mut report = SeedReport::default();
        let mut seed_base = [0i64; 2 * STATE_SLOTS];
        let mut failure: Option<ProbeError> = None;
        for (af, family) in [(diag::AF_INET, FAMILY_INET), (diag::AF_INET6, FAMILY_INET6)] {
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
                    flags: ENTRY_SEEDED,
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
    pub fn health(&self) -> Health {
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

impl super::tracker::StreamSwitch for Generation {
    fn switch_stream(&self, on: bool) -> Result<(), ProbeError> {
        self.probe.set_streaming(on)
    }
}
