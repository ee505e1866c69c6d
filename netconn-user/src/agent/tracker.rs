//! Where the counts live and whether they are exact. Two sources make one
//! answer:
//!
//! * full TCP sockets: event-driven, counted by the eBPF program per
//!   (netns, family, state), plus the sockets the agent seeded at start-up
//!   ([`Generation::seed_base`]);
//! * what the tracepoint never shows (timewait socks, request socks, UDP):
//!   refreshed from a state-filtered sock_diag dump (see `refresh`), and
//!   every answer says how old that part is.
//!
//! This module stores and combines; the loops that keep it current live in
//! `refresh` (maintenance) and `hub` (the transition stream).

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use netconn_common::{
    Counts, FAMILY_INET, FAMILY_INET6, Family, STAT_EVENTS_DROPPED, STATE_SLOTS, State, slot,
};

use super::generation::Generation;
use crate::{
    kernel::{
        self, diag,
        probe::ProbeError,
        sockstat::{self, SockStat},
    },
    proto::{Meta, StatsReply},
};

/// The refreshed part must never be older than this when a query arrives.
pub const MAX_AGE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("sock_diag dump failed: {0}")]
    Diag(#[from] diag::DiagError),
    #[error("cannot read own network namespace: {0}")]
    Netns(std::io::Error),
}

pub struct Config {
    pub max_sockets: u32,
    pub refresh: Duration,
    /// Size of the kernel's transition ring buffer (a power of two).
    pub ring_bytes: u32,
}

/// The refreshed part of the answer.
#[derive(Clone, Debug)]
pub(super) struct Untracked {
    pub counts: Counts,
    /// When the dump started: the data is at least this old.
    pub taken_at: Instant,
    pub took: Duration,
}

/// Something whose kernel stream can be switched: a generation (a fake one
/// in tests).
pub(super) trait StreamSwitch {
    fn switch_stream(&self, on: bool) -> Result<(), ProbeError>;
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
    netns: u32,
    pub(super) current: Current<Generation>,
    pub(super) untracked: RwLock<Option<Untracked>>,
    /// A persistent disagreement with the kernel's counters, as a reason.
    pub(super) drift: RwLock<Option<String>>,
    pub(super) reseeds: AtomicU64,
    stop: AtomicBool,
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
    /// Attach, seed, take the first refresh. On return the tracker answers.
    pub fn start(config: Config) -> Result<Tracker, TrackerError> {
        let netns = kernel::own_netns().map_err(TrackerError::Netns)?;
        let generation = Generation::build(&config, netns)?;
        let tracker = Tracker {
            config,
            netns,
            current: Current::new(generation),
            untracked: RwLock::new(None),
            drift: RwLock::new(None),
            reseeds: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        };
        tracker.refresh()?;
        kernel::release_freed_memory();
        Ok(tracker)
    }

    pub fn netns(&self) -> u32 {
        self.netns
    }

    /// Full TCP sockets as the kernel side counts them (seed + deltas), for
    /// the agent's namespace. Negative cells mean a counting bug: reported.
    pub(super) fn tracked(&self, generation: &Generation, inexact: &mut Vec<String>) -> Counts {
        let mut counts = Counts::default();
        match generation.probe.tcp_deltas(self.netns) {
            Ok(deltas) => {
                for family_index in [FAMILY_INET, FAMILY_INET6] {
                    let family = Family::tcp_of(family_index);
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
    pub fn snapshot(&self) -> StatsReply {
        let generation = self.current.get();
        let mut inexact = Vec::new();
        let mut counts = self.tracked(&generation, &mut inexact);
        // Two small /proc reads: the one change the tracepoint cannot show
        // for a full socket (IPV6_ADDRFORM) must not be answered as exact.
        if let Ok(stat) = sockstat::read()
            && let Some(reason) = family_moved(&counts, &stat)
        {
            inexact.push(reason);
        }
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

        StatsReply {
            counts,
            meta: Meta {
                version: env!("CARGO_PKG_VERSION").to_string(),
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
    pub fn time_in_state(&self, cookie: u64) -> Option<Duration> {
        let entry = self.current.get().probe.socket(cookie)?;
        Some(Duration::from_nanos(
            kernel::boot_ns().saturating_sub(entry.since_ns),
        ))
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// IPV6_ADDRFORM turns a connected AF_INET6 TCP socket into AF_INET with no
/// state change, so no event: the kernel's `inuse` counters move it from
/// TCP6 to TCP while our per-family counts do not. The signature: the same
/// TCP total, split differently.
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

pub(super) fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

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
