//! Keeping the answer current: re-read what the tracepoint never shows,
//! watch for drift against the kernel's own counters, and re-seed a fresh
//! generation when the counts cannot be trusted.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use netconn_common::{
    Counts, Family, State,
    model::{TCP_FIN_WAIT2, TCP_SYN_RECV, TCP_TIME_WAIT},
};

use super::{
    generation::Generation,
    tracker::{Tracker, TrackerError, Untracked, family_moved, write_lock},
};
use crate::kernel::{
    self,
    diag::{self, ALL_STATES, Kind, Proto},
    sockstat,
};

/// The dump that finds what the tracepoint never reports: timewait socks
/// (TIME_WAIT, and FIN_WAIT2 of an orphan) and request socks (SYN_RECV).
const UNTRACKED_STATES: u32 = (1 << TCP_SYN_RECV) | (1 << TCP_FIN_WAIT2) | (1 << TCP_TIME_WAIT);
/// Identical disagreement with the kernel's `inuse` counters for this many
/// refreshes in a row (nothing changing meanwhile) means our counts drifted.
const DRIFT_ROUNDS: u32 = 4;
/// The same, when the disagreement is a socket that changed family (see
/// `tracker::family_moved`): answers already say inexact, so recover fast.
const MOVED_ROUNDS: u32 = 2;
/// Re-seeding is not retried more often than this.
const RESEED_BACKOFF: Duration = Duration::from_secs(10);

impl Tracker {
    /// Re-read what the tracepoint cannot see. Cost: one sock_diag dump of
    /// the TIME_WAIT/FIN_WAIT2/SYN_RECV TCP sockets and one of all UDP
    /// sockets, linear in their number (measured in the README).
    pub(super) fn refresh(&self) -> Result<(), TrackerError> {
        let taken_at = Instant::now();
        let mut counts = Counts::default();
        for af in [diag::AF_INET, diag::AF_INET6] {
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
        while !self.stopped() {
            let started = Instant::now();
            if let Err(e) = self.refresh() {
                log::error!("refresh failed: {e}");
            }
            let reason = self
                .current
                .get()
                .health()
                .reasons
                .into_iter()
                .next()
                .or_else(|| drift.check(self).and_then(|()| drift.reason()));
            *write_lock(&self.drift) = drift.reason();
            if let Some(reason) = reason {
                let generation = self.current.get();
                let room = generation.probe.tracked_total()
                    < i64::from(generation.probe.max_sockets()) * 9 / 10;
                let backoff_over = last_reseed.is_none_or(|t| t.elapsed() > RESEED_BACKOFF);
                if room && backoff_over {
                    log::warn!("counts inexact ({reason}); re-seeding");
                    last_reseed = Some(Instant::now());
                    match Generation::build(&self.config, self.netns()) {
                        Ok(fresh) => {
                            log::info!("re-seeded: {:?}", fresh.report);
                            self.current.install(fresh);
                            self.reseeds.fetch_add(1, Ordering::Relaxed);
                            drift = DriftWatch::default();
                            *write_lock(&self.drift) = None;
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
}

/// Compares our full-socket TCP totals with the kernel's per-namespace
/// `inuse` counters. Under churn they differ from moment to moment, so only
/// the same disagreement over several quiet refreshes counts as drift.
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
    /// Some(()) once the same disagreement has lasted DRIFT_ROUNDS.
    fn check(&mut self, tracker: &Tracker) -> Option<()> {
        let stat = sockstat::read().ok()?;
        let tracked = tracker.tracked(&tracker.current.get(), &mut Vec::new());
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
        self.moved = family_moved(&tracked, &stat);
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
