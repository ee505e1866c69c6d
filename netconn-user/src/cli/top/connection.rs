//! `top`'s link to the agent, and nothing else: two threads report through
//! one channel as [`Update`]s.
//! - the poller asks `stats` and `leaks` once a second, and `top` for the
//!   state the view selected (at once when the selection changes); it alone
//!   says whether the agent is there ([`Link`]);
//! - the watcher holds a `watch` stream for the selected namespace and
//!   forwards its transitions.
//!
//! Both reconnect on their own when the agent goes away and comes back, so
//! an agent restart costs a few missed samples, never the session.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    path::Path,
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

use netconn_common::State;

use crate::{
    cli::client::{Client, ClientError, connect_stream},
    proto::{
        Alert, ErrorReply, Filter, NamespacesReply, Request, StatsReply, TopReply, Transition,
        WatchLine,
    },
};

/// Updates queued for the view at most; transitions beyond it are counted
/// as dropped rather than held (the view shows only the latest anyway).
const QUEUE: usize = 16_384;
/// How long the watcher blocks on a read before looking at what is wanted.
const WATCH_TICK: Duration = Duration::from_millis(250);
/// Pause between attempts while the agent is away.
const RETRY: Duration = Duration::from_secs(1);

/// What the view wants from the agent now.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    /// State to break down with `top`.
    pub state: State,
    /// Family group for `top` (tcp4 ... all).
    pub family: &'static str,
    /// Namespace whose transitions to stream; none before the first stats.
    pub netns: Option<u32>,
}

/// Whether the agent answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Link {
    Connecting,
    Up,
    /// Nothing serves the socket (never started, or gone for good so far).
    NoAgent(String),
    /// Something answers but the exchange failed (permission, protocol...).
    Failed(String),
}

#[derive(Debug)]
pub enum Update {
    /// One poll: the counts (one row per namespace the agent reports) and
    /// the active alerts.
    Poll {
        stats: Box<StatsReply>,
        /// Every namespace (None from an agent that cannot say).
        all: Option<Box<NamespacesReply>>,
        alerts: Vec<Alert>,
    },
    Top(Box<TopReply>),
    /// The agent refused or failed a `top` (an older agent, say).
    TopFailed(String),
    Transition(Box<Transition>),
    /// Transitions lost: reported by the agent, or not queued here.
    Dropped(u64),
    /// The watch stream was refused.
    WatchFailed(String),
    Link(Link),
}

/// The running threads; dropping it stops them (within a second).
pub struct Connection {
    wanted: Arc<Mutex<Wanted>>,
    /// Wakes the poller when the selection changed; dropping it stops the
    /// poller, which drops its end of the stop channel for the watcher.
    wake: SyncSender<()>,
    pub updates: Receiver<Update>,
}

impl Connection {
    pub fn start(socket: &Path, interval: Duration, wanted: Wanted) -> Connection {
        let wanted = Arc::new(Mutex::new(wanted));
        let (tx, updates) = mpsc::sync_channel(QUEUE);
        let (wake, woken) = mpsc::sync_channel(1);
        let (alive, stop) = mpsc::sync_channel::<()>(0);
        {
            let (socket, wanted, tx) = (socket.to_path_buf(), Arc::clone(&wanted), tx.clone());
            std::thread::spawn(move || {
                poller(&socket, interval, &wanted, &woken, &tx);
                drop(alive);
            });
        }
        {
            let (socket, wanted) = (socket.to_path_buf(), Arc::clone(&wanted));
            std::thread::spawn(move || watcher(&socket, &wanted, &stop, &tx));
        }
        Connection {
            wanted,
            wake,
            updates,
        }
    }

    /// Ask for something else; a no-op when nothing changed.
    pub fn want(&self, new: &Wanted) {
        let mut wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        if *wanted != *new {
            *wanted = new.clone();
            drop(wanted);
            // Full means a wake-up is already pending.
            let _ = self.wake.try_send(());
        }
    }
}

fn current(wanted: &Mutex<Wanted>) -> Wanted {
    wanted.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// What a failed exchange means for the link.
fn link_of(e: &ClientError) -> Link {
    match e {
        ClientError::NoAgent(_) => Link::NoAgent(e.to_string()),
        // The agent went away mid-exchange: it is stopping or restarting.
        ClientError::Io(path, _) | ClientError::Protocol(path) => Link::NoAgent(format!(
            "lost the netconn agent at {} (stopped or restarting?)",
            path.display()
        )),
        _ => Link::Failed(e.to_string()),
    }
}

fn poller(
    socket: &Path,
    interval: Duration,
    wanted: &Mutex<Wanted>,
    woken: &Receiver<()>,
    tx: &SyncSender<Update>,
) {
    let mut client: Option<Client> = None;
    let mut link = Link::Connecting;
    let mut set_link = |new: Link| -> bool {
        if new != link {
            link = new.clone();
            return tx.send(Update::Link(new)).is_ok();
        }
        true
    };
    let mut next_poll = Instant::now();
    let mut top_due = true;
    loop {
        if Instant::now() >= next_poll {
            next_poll = Instant::now() + interval;
            let polled = client
                .take()
                .map_or_else(|| Client::connect(socket), Ok)
                .and_then(|mut c| {
                    let stats = c.stats(None)?;
                    let all = c.stats_all().ok().map(Box::new);
                    let alerts = c.leaks()?;
                    Ok((c, stats, all, alerts))
                });
            match polled {
                Ok((c, stats, all, alerts)) => {
                    client = Some(c);
                    let poll = Update::Poll {
                        stats: Box::new(stats),
                        all,
                        alerts,
                    };
                    if !set_link(Link::Up) || tx.send(poll).is_err() {
                        return;
                    }
                    top_due = true;
                }
                Err(e) => {
                    if !set_link(link_of(&e)) {
                        return;
                    }
                    // Retry once a second however short the interval.
                    next_poll = Instant::now() + RETRY.max(interval);
                }
            }
        }
        if top_due && let Some(c) = client.as_mut() {
            top_due = false;
            let w = current(wanted);
            let update = match c.top(w.state, w.family) {
                Ok(reply) => Update::Top(Box::new(reply)),
                Err(ClientError::Agent(message)) => Update::TopFailed(message),
                Err(e) => {
                    client = None;
                    Update::TopFailed(e.to_string())
                }
            };
            if tx.send(update).is_err() {
                return;
            }
        }
        match woken.recv_timeout(next_poll.saturating_duration_since(Instant::now())) {
            Ok(()) => top_due = true,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Stream the selected namespace's transitions; reconnect when the agent
/// comes back or the selection changes. Ends when `stop` disconnects.
fn watcher(socket: &Path, wanted: &Mutex<Wanted>, stop: &Receiver<()>, tx: &SyncSender<Update>) {
    let stopped = || matches!(stop.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    while !stopped() {
        let Some(netns) = current(wanted).netns else {
            std::thread::sleep(WATCH_TICK);
            continue;
        };
        match stream(socket, netns, wanted, &stopped, tx) {
            Ended::Changed => {}
            Ended::Lost => std::thread::sleep(RETRY),
            Ended::ViewGone => return,
        }
    }
}

enum Ended {
    /// The wanted namespace changed: reconnect at once.
    Changed,
    /// The agent is gone or refused: try again later.
    Lost,
    ViewGone,
}

fn stream(
    socket: &Path,
    netns: u32,
    wanted: &Mutex<Wanted>,
    stopped: &dyn Fn() -> bool,
    tx: &SyncSender<Update>,
) -> Ended {
    let Ok(stream) = connect_stream(socket) else {
        return Ended::Lost;
    };
    let filter = Filter {
        netns: vec![netns],
        ..Filter::default()
    };
    let Ok(mut request) = serde_json::to_vec(&Request::watch(filter, false)) else {
        return Ended::Lost;
    };
    request.push(b'\n');
    if stream.set_read_timeout(Some(WATCH_TICK)).is_err() || (&stream).write_all(&request).is_err()
    {
        return Ended::Lost;
    }
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut line = String::new();
    let mut first = true;
    let mut lost_here = 0u64;
    loop {
        // A timed-out read keeps what it got in `line`: only a complete
        // line is parsed and cleared.
        match reader.read_line(&mut line) {
            Ok(0) => return Ended::Lost,
            Ok(_) if !line.ends_with('\n') => continue,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stopped() {
                    return Ended::ViewGone;
                }
                if current(wanted).netns != Some(netns) {
                    return Ended::Changed;
                }
                continue;
            }
            Err(_) => return Ended::Lost,
        }
        if first {
            first = false;
            if let Ok(refusal) = serde_json::from_str::<ErrorReply>(&line) {
                let _ = tx.send(Update::WatchFailed(refusal.error));
                return Ended::Lost;
            }
        }
        let update = match serde_json::from_str::<WatchLine>(&line) {
            Ok(WatchLine::Transition(t)) => Some(Update::Transition(Box::new(t))),
            Ok(WatchLine::Dropped(d)) => Some(Update::Dropped(d.dropped)),
            Ok(WatchLine::Alert { .. }) | Err(_) => None,
        };
        line.clear();
        let Some(update) = update else { continue };
        if lost_here > 0 && tx.try_send(Update::Dropped(lost_here)).is_ok() {
            lost_here = 0;
        }
        match tx.try_send(update) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => lost_here += 1,
            Err(TrySendError::Disconnected(_)) => return Ended::ViewGone,
        }
    }
}
