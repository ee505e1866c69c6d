//! The transition stream: read the kernel's ring buffer on one thread and
//! fan each event out to the watchers whose filters match. Every watcher has
//! its own bounded queue; one that cannot keep up loses events for itself
//! alone and is told how many (`{"dropped":N}`), as are kernel ring-buffer
//! overflows. Nothing on this path ever waits for a watcher.

use std::{
    collections::HashMap,
    net::Ipv6Addr,
    ops::Range,
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
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
    queue: mpsc::Sender<Lines>,
    counters: Arc<WatcherCounters>,
}

/// Whole lines for one watcher, each ending in `\n`: a batch's worth at a
/// time, so that a watcher costs one queue operation and one allocation per
/// batch rather than per event.
pub struct Lines {
    pub text: Arc<str>,
    pub count: usize,
}

/// Losses to report to one watcher, taken by its writer before each line.
#[derive(Default)]
pub struct WatcherCounters {
    /// Events its queue had no room for.
    pub slow: AtomicU64,
    /// Events the kernel's ring buffer had no room for while it watched.
    pub kernel: AtomicU64,
    /// Lines in its queue, at most WATCHER_QUEUE; its writer takes off
    /// what it dequeues.
    pub queued: AtomicUsize,
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
    pub lines: mpsc::Receiver<Lines>,
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
    /// A watcher whose queue is full loses the lines that do not fit.
    fn publish(&self, batch: &Batch) {
        let watchers = lock(&self.watchers);
        // Watchers without a filter share one copy of the whole batch.
        let mut everything: Option<Arc<str>> = None;
        for w in watchers.iter().filter(|w| w.events) {
            let room = WATCHER_QUEUE.saturating_sub(w.counters.queued.load(Ordering::Relaxed));
            let (text, count, mut lost) = if w.filter.is_empty() && batch.lines.len() <= room {
                let text = everything.get_or_insert_with(|| Arc::from(batch.text.as_str()));
                (Arc::clone(text), batch.lines.len(), 0)
            } else {
                let mut text = String::new();
                let (mut count, mut lost) = (0, 0);
                for (event, range) in &batch.lines {
                    if !matches(&w.filter, event) {
                        continue;
                    }
                    if count < room {
                        text.push_str(&batch.text[range.clone()]);
                        count += 1;
                    } else {
                        lost += 1;
                    }
                }
                (Arc::from(text), count, lost)
            };
            if count > 0 {
                w.counters.queued.fetch_add(count, Ordering::Relaxed);
                if let Err(e) = w.queue.try_send(Lines { text, count }) {
                    w.counters.queued.fetch_sub(count, Ordering::Relaxed);
                    if matches!(e, mpsc::error::TrySendError::Full(_)) {
                        lost += count;
                    }
                }
            }
            if lost > 0 {
                w.counters.slow.fetch_add(lost as u64, Ordering::Relaxed);
                self.dropped.fetch_add(lost as u64, Ordering::Relaxed);
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
        let text: Arc<str> = Arc::from(format!("{line}\n"));
        for w in lock(&self.watchers).iter().filter(|w| w.alerts) {
            let queued = w.counters.queued.fetch_add(1, Ordering::Relaxed);
            let sent = queued < WATCHER_QUEUE
                && w.queue
                    .try_send(Lines {
                        text: Arc::clone(&text),
                        count: 1,
                    })
                    .is_ok();
            if !sent {
                w.counters.queued.fetch_sub(1, Ordering::Relaxed);
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
    let mut batch = Batch::default();
    let mut dropped_seen = dropped_total();
    let mut renderer = Renderer::new(Clock::now());
    while keep_going() {
        let mut pollfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // The kernel wakes us only once a batch has built up (see
        // netconn-ebpf's WAKEUP_EVENTS); this timeout bounds the delay of
        // the rest.
        let timeout = if hub.has_event_watchers() {
            POLL_MS
        } else {
            IDLE_POLL_MS
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pollfd, 1, timeout) };
        renderer.set_clock(Clock::now());
        update_names(names);
        loop {
            batch.clear();
            while batch.lines.len() < BATCH_LINES {
                let Some(item) = ring.next() else { break };
                if item.len() < size_of::<StateEvent>() {
                    continue;
                }
                // SAFETY: the kernel wrote a StateEvent; read unaligned.
                let event: StateEvent =
                    unsafe { std::ptr::read_unaligned(item.as_ptr() as *const StateEvent) };
                let start = batch.text.len();
                renderer.line(&mut batch.text, &event, names.json.get(&event.netns));
                batch.text.push('\n');
                batch.lines.push((event, start..batch.text.len()));
            }
            if batch.lines.is_empty() {
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

/// Events read from the ring in one go.
const BATCH_LINES: usize = 1024;

/// One read's events and their lines, rendered once for every watcher:
/// `text` holds the lines, each event the range of its own.
#[derive(Default)]
struct Batch {
    text: String,
    lines: Vec<(StateEvent, Range<usize>)>,
}

impl Batch {
    fn clear(&mut self) {
        self.text.clear();
        self.lines.clear();
    }
}

/// Converts the kernel's boot-time stamps to wall-clock time.
#[derive(Clone, Copy)]
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

/// Writes transition lines: one JSON object with the documented field
/// names (see README). By hand, and the time's date part once a second:
/// this runs for every event (150,000 a second under the load bench), and
/// `write!` with humantime's formatter was about a third of the agent's CPU
/// there. The unit tests hold it to what `serde_json` reads back.
struct Renderer {
    clock: Clock,
    /// The whole second `prefix` renders.
    second: Option<u64>,
    /// `YYYY-MM-DDTHH:MM:SS.` of `second`.
    prefix: String,
}

impl Renderer {
    fn new(clock: Clock) -> Renderer {
        Renderer {
            clock,
            second: None,
            prefix: String::new(),
        }
    }

    fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// RFC 3339 UTC with microseconds, as humantime's
    /// `format_rfc3339_micros` writes it.
    fn time(&mut self, out: &mut String, boot_ns: u64) {
        let wall = self.clock.wall_of(boot_ns);
        let Ok(since_epoch) = wall.duration_since(SystemTime::UNIX_EPOCH) else {
            out.push_str(&humantime::format_rfc3339_micros(wall).to_string());
            return;
        };
        let second = since_epoch.as_secs();
        if self.second != Some(second) {
            let whole = humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + Duration::from_secs(second),
            )
            .to_string();
            self.prefix.clear();
            self.prefix.push_str(whole.trim_end_matches('Z'));
            self.prefix.push('.');
            self.second = Some(second);
        }
        out.push_str(&self.prefix);
        push_padded(out, since_epoch.subsec_micros(), 6);
        out.push('Z');
    }

    /// One line for `e`, without the newline.
    fn line(&mut self, out: &mut String, e: &StateEvent, netns_name: Option<&String>) {
        let v4 = e.family == FAMILY_INET;
        out.push_str(r#"{"time":""#);
        self.time(out, e.ts_ns);
        out.push_str(r#"","netns":"#);
        push_int(out, e.netns);
        out.push_str(r#","sk":""#);
        push_hex(out, e.cookie);
        out.push_str(if v4 {
            r#"","family":"tcp4","laddr":""#
        } else {
            r#"","family":"tcp6","laddr":""#
        });
        push_addr(out, v4, &e.saddr);
        out.push_str(r#"","lport":"#);
        push_int(out, e.sport);
        out.push_str(r#","raddr":""#);
        push_addr(out, v4, &e.daddr);
        out.push_str(r#"","rport":"#);
        push_int(out, e.dport);
        out.push_str(r#","old":""#);
        out.push_str(State::from_kernel(e.old).name());
        out.push_str(r#"","new":""#);
        out.push_str(State::from_kernel(e.new).name());
        out.push_str(r#"","ms":"#);
        push_millis(out, e.in_state_ns);
        if let Some(name) = netns_name {
            out.push_str(r#","netns_name":"#);
            out.push_str(name);
        }
        if e.flags & EVENT_OWNER != 0 {
            out.push_str(r#","pid":"#);
            push_int(out, e.pid);
            out.push_str(r#","comm":"#);
            push_comm(out, &e.comm);
        } else {
            out.push_str(r#","pid":null,"comm":null"#);
        }
        if e.flags & EVENT_FIRST_SEEN != 0 {
            out.push_str(r#","note":"first_seen""#);
        } else if e.flags & EVENT_SINCE_SEEDING != 0 {
            out.push_str(r#","note":"since_seeding""#);
        }
        out.push('}');
    }
}

fn push_int(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `n` in `width` decimal digits, zero-padded (n < 10^width).
fn push_padded(out: &mut String, n: u32, width: usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

fn push_hex(out: &mut String, mut n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[at..] {
        out.push(char::from(b));
    }
}

fn push_addr(out: &mut String, v4: bool, addr: &[u8; 16]) {
    if v4 {
        for (i, octet) in addr[..4].iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            push_int(out, *octet);
        }
    } else {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = write!(out, "{}", Ipv6Addr::from(*addr));
    }
}

/// Milliseconds with microsecond resolution, as a JSON number written the
/// way Rust prints the f64 `micros / 1000.0` (`1.5`, `0`, `12.345`): exact
/// for any time in a state shorter than 35 years.
fn push_millis(out: &mut String, ns: u64) {
    let micros = ns / 1000;
    push_int(out, micros / 1000);
    let mut frac = (micros % 1000) as u32;
    if frac != 0 {
        out.push('.');
        let mut width = 3;
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        push_padded(out, frac, width);
    }
}

/// The command name, the one field a process controls: a JSON string,
/// escaped by serde_json unless it is plain printable ASCII.
fn push_comm(out: &mut String, comm: &[u8; 16]) {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    let comm = &comm[..end];
    if comm
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push('"');
        for &b in comm {
            out.push(char::from(b));
        }
        out.push('"');
    } else {
        let comm = String::from_utf8_lossy(comm);
        out.push_str(&serde_json::Value::from(comm.as_ref()).to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn render(e: &StateEvent, clock: &Clock, netns_name: Option<&String>) -> String {
        let mut out = String::new();
        Renderer::new(*clock).line(&mut out, e, netns_name);
        out
    }

    /// The renderer before it was written by hand (`write!`, humantime's
    /// formatter, f64 printing): the new one must give the same bytes.
    fn reference(e: &StateEvent, clock: &Clock, netns_name: Option<&String>) -> String {
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
        let mut out = String::new();
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
            (e.in_state_ns / 1000) as f64 / 1000.0,
        );
        if let Some(name) = netns_name {
            let _ = write!(out, r#","netns_name":{name}"#);
        }
        if e.flags & EVENT_OWNER != 0 {
            let end = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
            let comm = String::from_utf8_lossy(&e.comm[..end]);
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

    #[test]
    fn renders_the_same_bytes_as_before() {
        // A small xorshift: many varied events, reproducible.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let clock = Clock {
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_600_000),
            boot_ns: 90_000_000_000_000,
        };
        let name = serde_json::Value::from("docker:0123456789ab").to_string();
        // One renderer across events, so its per-second cache is exercised.
        let mut renderer = Renderer::new(clock);
        for i in 0..20_000u64 {
            let mut e = event();
            e.ts_ns = clock.boot_ns - next() % 3_000_000_000 + if i % 7 == 0 { 5 } else { 0 };
            e.cookie = next() >> (next() % 64);
            e.netns = next() as u32;
            e.pid = next() as u32;
            e.sport = next() as u16;
            e.dport = (next() % 3) as u16 * next() as u16;
            e.family = if i % 3 == 0 {
                netconn_common::FAMILY_INET6
            } else {
                FAMILY_INET
            };
            for b in e.saddr.iter_mut().chain(e.daddr.iter_mut()) {
                *b = if next() % 4 == 0 { 0 } else { next() as u8 };
            }
            e.old = (next() % 14) as u8;
            e.new = (next() % 14) as u8;
            // Up to ~30 years, with round values often.
            e.in_state_ns = match i % 4 {
                0 => 0,
                1 => (next() % 1_000_000) * 1_000_000,
                2 => (next() % 100_000) * 10_000,
                _ => next() % 1_000_000_000_000_000_000,
            };
            e.flags = (next() % 8) as u8;
            e.comm = [0; 16];
            for b in e.comm.iter_mut().take((next() % 17) as usize) {
                *b = match next() % 10 {
                    0 => next() as u8,
                    1 => b'"',
                    2 => b'\\',
                    _ => b'a' + (next() % 26) as u8,
                };
            }
            let netns_name = (i % 2 == 0).then_some(&name);
            let mut ours = String::new();
            renderer.line(&mut ours, &e, netns_name);
            assert_eq!(ours, reference(&e, &clock, netns_name));
        }
    }

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
        let line = format!("{}\n", render(&e, &clock, None));
        // The fast watcher drains as it goes; the slow one never reads.
        let mut fast_got = 0;
        let mut left = WATCHER_QUEUE + 10;
        while left > 0 {
            let mut batch = Batch::default();
            for _ in 0..left.min(1000) {
                let start = batch.text.len();
                batch.text.push_str(&line);
                batch.lines.push((e, start..batch.text.len()));
            }
            left -= batch.lines.len();
            hub.publish(&batch);
            while let Ok(lines) = fast.lines.try_recv() {
                assert_eq!(lines.text.matches('\n').count(), lines.count);
                fast.counters
                    .queued
                    .fetch_sub(lines.count, Ordering::Relaxed);
                fast_got += lines.count;
            }
        }
        assert_eq!(fast_got, WATCHER_QUEUE + 10);
        // The slow one holds a full queue of whole lines.
        let mut slow_lines = slow.lines;
        let mut held = 0;
        while let Ok(lines) = slow_lines.try_recv() {
            assert!(
                lines
                    .text
                    .split_terminator('\n')
                    .all(|l| l == line.trim_end())
            );
            held += lines.count;
        }
        assert_eq!(held, WATCHER_QUEUE);
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
