//! The transition stream: read the kernel's ring buffer on one thread and
//! fan each event out to the watchers whose filters match. Every watcher has
//! its own bounded queue; one that cannot keep up loses events for itself
//! alone and is told how many (`{"dropped":N}`), as are kernel ring-buffer
//! overflows. Nothing on this path ever waits for a watcher.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use netconn_common::{EVENT_FIRST_SEEN, EVENT_OWNER, EVENT_SINCE_SEEDING, FAMILY_INET, StateEvent};
use tokio::sync::mpsc;

use super::tracker::Tracker;
use crate::{kernel, proto::Filter};
use netconn_common::State;

/// Longest a transition waits in the kernel's ring before a watcher sees it.
const POLL_MS: i32 = 10;
/// The reader's sleep while no one watches transitions: the kernel writes
/// none then (the stream switch is off), and waking 100 times a second for
/// nothing was a tenth of the agent's CPU at rest with 300 namespaces. A new
/// watcher's first lines wait at most this long.
const IDLE_POLL_MS: i32 = 100;

/// Lines a watcher may have queued before it starts losing events.
pub const WATCHER_QUEUE: usize = 65_536;

/// Whether `e` passes `filter` (see [`Filter`] for how lists combine).
fn matches(filter: &Filter, e: &StateEvent) -> bool {
    let any = |list: &[u16], port: u16| list.is_empty() || list.contains(&port);
    let state_name = |s: u8| State::from_kernel(s).name();
    (filter.port.is_empty() || filter.port.contains(&e.sport) || filter.port.contains(&e.dport))
        && any(&filter.local_port, e.sport)
        && any(&filter.remote_port, e.dport)
        && (filter.family.is_empty()
            || filter
                .family
                .contains(&if e.family == FAMILY_INET { 4 } else { 6 }))
        && (filter.state.is_empty()
            || filter
                .state
                .iter()
                .any(|s| s == state_name(e.old) || s == state_name(e.new)))
        && (filter.netns.is_empty() || filter.netns.contains(&e.netns))
}

/// One connected watcher, as the fan-out sees it.
struct Watcher {
    filter: Filter,
    alerts: bool,
    events: bool,
    queue: mpsc::Sender<Arc<str>>,
    counters: Arc<WatcherCounters>,
}

/// Losses to report to one watcher, taken by its writer before each line.
#[derive(Default)]
pub struct WatcherCounters {
    /// Events its queue had no room for.
    pub slow: AtomicU64,
    /// Events the kernel's ring buffer had no room for while it watched.
    pub kernel: AtomicU64,
}

impl WatcherCounters {
    /// A `{"dropped":N,...}` line if anything was lost since the last call.
    pub fn take_dropped_line(&self) -> Option<String> {
        let slow = self.slow.swap(0, Ordering::Relaxed);
        let kernel = self.kernel.swap(0, Ordering::Relaxed);
        (slow + kernel > 0).then(|| {
            let dropped = crate::proto::Dropped {
                dropped: slow + kernel,
                slow_reader: slow,
                kernel_ring: kernel,
            };
            serde_json::to_string(&dropped).unwrap_or_default()
        })
    }
}

/// The registry of watchers. Cheap to share.
#[derive(Default)]
pub struct Hub {
    watchers: Mutex<Vec<Watcher>>,
    /// Every loss any watcher was told of, for the metrics: never reset
    /// (a watcher's own counters are, each time it is told).
    dropped: AtomicU64,
}

/// What a new watcher gets: its queue and its loss counters.
pub struct Subscription {
    pub lines: mpsc::Receiver<Arc<str>>,
    pub counters: Arc<WatcherCounters>,
}

impl Hub {
    /// Register a watcher; returns whether it is the first event watcher
    /// (the caller then switches the kernel stream on).
    pub fn subscribe(&self, filter: Filter, events: bool, alerts: bool) -> (Subscription, usize) {
        let (queue, lines) = mpsc::channel(WATCHER_QUEUE);
        let counters = Arc::new(WatcherCounters::default());
        let mut watchers = lock(&self.watchers);
        watchers.push(Watcher {
            filter,
            alerts,
            events,
            queue,
            counters: Arc::clone(&counters),
        });
        let n = watchers.iter().filter(|w| w.events).count();
        (Subscription { lines, counters }, n)
    }

    /// Whether anyone wants transitions.
    pub fn has_event_watchers(&self) -> bool {
        lock(&self.watchers).iter().any(|w| w.events)
    }

    /// Forget watchers whose connection is gone; returns how many event
    /// watchers remain.
    pub fn prune(&self) -> usize {
        let mut watchers = lock(&self.watchers);
        watchers.retain(|w| !w.queue.is_closed());
        watchers.iter().filter(|w| w.events).count()
    }

    /// Hand one batch of events to every matching watcher, never blocking.
    fn publish(&self, batch: &[(StateEvent, Arc<str>)]) {
        let watchers = lock(&self.watchers);
        for w in watchers.iter().filter(|w| w.events) {
            for (event, line) in batch {
                if !matches(&w.filter, event) {
                    continue;
                }
                match w.queue.try_send(Arc::clone(line)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        w.counters.slow.fetch_add(1, Ordering::Relaxed);
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        }
    }

    /// Tell every event watcher the kernel dropped `n` events.
    fn kernel_dropped(&self, n: u64) {
        for w in lock(&self.watchers).iter().filter(|w| w.events) {
            w.counters.kernel.fetch_add(n, Ordering::Relaxed);
            self.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Send an alert line to the `--alerts` watchers.
    pub fn publish_alert(&self, line: &str) {
        let line: Arc<str> = Arc::from(line);
        for w in lock(&self.watchers).iter().filter(|w| w.alerts) {
            if w.queue.try_send(Arc::clone(&line)).is_err() {
                w.counters.slow.fetch_add(1, Ordering::Relaxed);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Events (and alert lines) not delivered, summed over watchers, over
    /// the agent's life.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Deliver the kernel's transitions to the watchers until the tracker
/// stops; follows re-seeds to the new generation's ring.
pub fn run_stream(tracker: &Tracker, hub: &Hub) {
    while !tracker.stopped() {
        let Some((ring, source)) = tracker.take_ring() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let mut names = Names::default();
        pump(
            ring,
            hub,
            || source.dropped_total(),
            || !tracker.stopped() && tracker.is_current(&source),
            |cache: &mut Names| {
                let version = tracker.names_version();
                if cache.version != Some(version) {
                    let (version, names) = tracker.names();
                    cache.version = Some(version);
                    cache.json = names
                        .into_iter()
                        .map(|(inode, name)| (inode, serde_json::Value::from(name).to_string()))
                        .collect();
                }
            },
            &mut names,
        );
    }
}

/// Namespace names as JSON strings, by inode, as of a tracker version.
#[derive(Default)]
struct Names {
    version: Option<u64>,
    json: HashMap<u32, String>,
}

/// Read the ring buffer until `keep_going` says stop, publishing to `hub`.
/// `dropped_total` reads the kernel's cumulative overflow counter.
fn pump(
    mut ring: aya::maps::RingBuf<aya::maps::MapData>,
    hub: &Hub,
    dropped_total: impl Fn() -> u64,
    keep_going: impl Fn() -> bool,
    update_names: impl Fn(&mut Names),
    names: &mut Names,
) {
    let fd = ring.as_raw_fd();
    let mut batch: Vec<(StateEvent, Arc<str>)> = Vec::with_capacity(1024);
    let mut dropped_seen = dropped_total();
    while keep_going() {
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // The kernel wakes us only once a batch has built up (see
        // netconn-ebpf's WAKEUP_BYTES); this timeout bounds the delay of
        // the rest.
        let timeout = if hub.has_event_watchers() {
            POLL_MS
        } else {
            IDLE_POLL_MS
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pollfd, 1, timeout) };
        let clock = Clock::now();
        update_names(names);
        loop {
            batch.clear();
            while batch.len() < batch.capacity() {
                let Some(item) = ring.next() else { break };
                if item.len() < size_of::<StateEvent>() {
                    continue;
                }
                // SAFETY: the kernel wrote a StateEvent; read unaligned.
                let event: StateEvent =
                    unsafe { std::ptr::read_unaligned(item.as_ptr() as *const StateEvent) };
                let line = render(&event, &clock, names.json.get(&event.netns));
                batch.push((event, Arc::from(line)));
            }
            if batch.is_empty() {
                break;
            }
            hub.publish(&batch);
        }
        let dropped = dropped_total();
        if dropped > dropped_seen {
            hub.kernel_dropped(dropped - dropped_seen);
            dropped_seen = dropped;
        }
    }
}

/// Converts the kernel's boot-time stamps to wall-clock time.
struct Clock {
    wall: SystemTime,
    boot_ns: u64,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            wall: SystemTime::now(),
            boot_ns: kernel::boot_ns(),
        }
    }

    fn wall_of(&self, boot_ns: u64) -> SystemTime {
        let behind = Duration::from_nanos(self.boot_ns.saturating_sub(boot_ns));
        self.wall.checked_sub(behind).unwrap_or(self.wall)
    }
}

/// One JSON line with the documented field names (see README). Written by
/// hand rather than through serde_json::Value: this runs for every event
/// and the allocations of a Value tree would dominate its cost.
fn render(e: &StateEvent, clock: &Clock, netns_name: Option<&String>) -> String {
    use std::fmt::Write as _;
    let (laddr, raddr) = if e.family == FAMILY_INET {
        let v4 = |a: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]));
        (v4(&e.saddr), v4(&e.daddr))
    } else {
        (
            IpAddr::V6(Ipv6Addr::from(e.saddr)),
            IpAddr::V6(Ipv6Addr::from(e.daddr)),
        )
    };
    let mut out = String::with_capacity(256);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        r#"{{"time":"{}","netns":{},"sk":"{:x}","family":"{}","laddr":"{laddr}","lport":{},"raddr":"{raddr}","rport":{},"old":"{}","new":"{}","ms":{}"#,
        humantime::format_rfc3339_micros(clock.wall_of(e.ts_ns)),
        e.netns,
        e.cookie,
        if e.family == FAMILY_INET {
            "tcp4"
        } else {
            "tcp6"
        },
        e.sport,
        e.dport,
        State::from_kernel(e.old).name(),
        State::from_kernel(e.new).name(),
        // Milliseconds with microsecond resolution; 0 when first seen.
        (e.in_state_ns / 1000) as f64 / 1000.0,
    );
    if let Some(name) = netns_name {
        let _ = write!(out, r#","netns_name":{name}"#);
    }
    if e.flags & EVENT_OWNER != 0 {
        let end = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
        let comm = String::from_utf8_lossy(&e.comm[..end]);
        // The command name is the one field a process controls: escape it.
        let comm = serde_json::Value::from(comm.as_ref()).to_string();
        let _ = write!(out, r#","pid":{},"comm":{comm}"#, e.pid);
    } else {
        out.push_str(r#","pid":null,"comm":null"#);
    }
    if e.flags & EVENT_FIRST_SEEN != 0 {
        out.push_str(r#","note":"first_seen""#);
    } else if e.flags & EVENT_SINCE_SEEDING != 0 {
        out.push_str(r#","note":"since_seeding""#);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> StateEvent {
        let mut e = StateEvent {
            ts_ns: 0,
            cookie: 1,
            in_state_ns: 1_234_567,
            netns: 42,
            pid: 7,
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 8080,
            dport: 50000,
            family: FAMILY_INET,
            old: 1,
            new: 8,
            flags: EVENT_OWNER,
            comm: [0; 16],
        };
        e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        e.comm[..4].copy_from_slice(b"curl");
        e
    }

    #[test]
    fn renders_documented_fields() {
        let clock = Clock {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            boot_ns: 5_000_000,
        };
        let mut e = event();
        e.ts_ns = 4_000_000;
        let name = serde_json::Value::from("blue \"ns\"").to_string();
        let line = render(&e, &clock, Some(&name));
        // The hand-written line is the protocol's typed Transition.
        let typed: crate::proto::Transition = serde_json::from_str(&line).unwrap();
        assert_eq!((typed.lport, typed.pid), (8080, Some(7)));
        assert_eq!(typed.netns_name.as_deref(), Some("blue \"ns\""));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "1970-01-12T13:46:39.999000Z");
        assert_eq!(v["family"], "tcp4");
        assert_eq!(v["laddr"], "127.0.0.1");
        assert_eq!(v["raddr"], "10.0.0.2");
        assert_eq!(v["lport"], 8080);
        assert_eq!(v["rport"], 50000);
        assert_eq!(v["old"], "ESTABLISHED");
        assert_eq!(v["new"], "CLOSE_WAIT");
        assert_eq!(v["ms"], 1.234);
        assert_eq!(v["netns"], 42);
        assert_eq!(v["sk"], "1");
        assert_eq!(v["pid"], 7);
        assert_eq!(v["comm"], "curl");
        e.comm[..6].copy_from_slice(b"a\"b\\c\n");
        let v: serde_json::Value = serde_json::from_str(&render(&e, &clock, None)).unwrap();
        assert_eq!(v["comm"], "a\"b\\c\n");
        e.flags = EVENT_FIRST_SEEN;
        e.family = netconn_common::FAMILY_INET6;
        e.saddr = [0; 16];
        e.saddr[15] = 1;
        e.in_state_ns = 0;
        let v: serde_json::Value = serde_json::from_str(&render(&e, &clock, None)).unwrap();
        assert_eq!(v["laddr"], "::1");
        assert_eq!(v["family"], "tcp6");
        assert_eq!(v["ms"], 0.0);
        assert!(v["pid"].is_null() && v["comm"].is_null());
        assert_eq!(v["note"], "first_seen");
    }

    #[test]
    fn filters_combine_as_documented() {
        let e = event();
        let f = |json: &str| matches(&serde_json::from_str::<Filter>(json).unwrap(), &e);
        assert!(f("{}"));
        assert!(f(r#"{"port":[50000]}"#));
        assert!(f(r#"{"port":[8080]}"#));
        assert!(!f(r#"{"local_port":[50000]}"#));
        assert!(f(r#"{"remote_port":[50000],"family":[4]}"#));
        assert!(!f(r#"{"family":[6]}"#));
        assert!(f(r#"{"state":["CLOSE_WAIT"]}"#));
        assert!(f(r#"{"state":["ESTABLISHED","LISTEN"]}"#));
        assert!(!f(r#"{"state":["LISTEN"]}"#));
        assert!(!f(r#"{"port":[1],"state":["CLOSE_WAIT"]}"#));
        assert!(
            serde_json::from_str::<Filter>(r#"{"family":[5]}"#)
                .unwrap()
                .validate()
                .is_err()
        );
        assert!(
            serde_json::from_str::<Filter>(r#"{"state":["NOPE"]}"#)
                .unwrap()
                .validate()
                .is_err()
        );
        assert!(serde_json::from_str::<Filter>(r#"{"bogus":1}"#).is_err());
    }

    #[test]
    fn slow_watcher_loses_only_its_own_events_and_is_told() {
        let hub = Hub::default();
        let (mut fast, _) = hub.subscribe(Filter::default(), true, false);
        let (slow, _) = hub.subscribe(Filter::default(), true, false);
        let clock = Clock::now();
        let e = event();
        let line: Arc<str> = Arc::from(render(&e, &clock, None));
        let batch: Vec<_> = (0..WATCHER_QUEUE + 10)
            .map(|_| (e, Arc::clone(&line)))
            .collect();
        // The fast watcher drains as it goes; the slow one never reads.
        let mut fast_got = 0;
        for chunk in batch.chunks(1000) {
            hub.publish(chunk);
            while fast.lines.try_recv().is_ok() {
                fast_got += 1;
            }
        }
        assert_eq!(fast_got, WATCHER_QUEUE + 10);
        assert_eq!(fast.counters.take_dropped_line(), None);
        let dropped = slow.counters.take_dropped_line().unwrap();
        assert!(dropped.contains("\"dropped\":10"), "{dropped}");
        hub.kernel_dropped(3);
        assert!(
            slow.counters
                .take_dropped_line()
                .unwrap()
                .contains("\"kernel_ring\":3")
        );
        // The metrics' total: 10 for the slow watcher, 3 kernel-ring losses
        // for each of the two; taking a watcher's line does not reset it.
        assert_eq!(hub.dropped_total(), 10 + 2 * 3);
    }
}
