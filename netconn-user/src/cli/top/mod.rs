//! `netconn top`: a live terminal view of the agent, in the manner of
//! tokio-console: `connection` talks to the agent, `state` holds what is
//! known and chosen, `view` draws it. This module owns the terminal: it
//! puts it in raw mode on the alternate screen and gives it back on every
//! way out (quit, Ctrl-C, SIGTERM/SIGHUP, an error, a panic).

pub mod connection;
pub mod state;
pub mod view;

use std::{
    io::IsTerminal as _,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use self::{
    connection::Connection,
    state::{Action, App, Key},
};
use crate::proto;

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// The agent's socket.
    #[arg(long, env = "NETCONN_SOCKET", default_value = proto::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// How often to ask the agent for counts, in ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub interval_ms: u64,
}

/// Longest wait for a key before drawing again: new transitions show
/// within this.
const FRAME: Duration = Duration::from_millis(200);

/// Set by SIGTERM, SIGHUP or SIGINT: leave like `q` does.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::Relaxed);
}

pub fn run(args: &TopArgs) -> anyhow::Result<()> {
    // stdin too: the keys are read from it, and it is watched for hang-up.
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!("netconn top needs a terminal (use `netconn stats` or `watch` in scripts)");
    }
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let mut app = App::new(args.socket.display().to_string());
    let connection = Connection::start(
        &args.socket,
        Duration::from_millis(args.interval_ms),
        app.wanted(),
    );
    // Installs a panic hook that restores the terminal before the message.
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let _restore = Restore;
    let outcome = event_loop(&mut terminal, &mut app, &connection);
    let _ = terminal.show_cursor();
    outcome
}

/// Gives the terminal back however `run` ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    connection: &Connection,
) -> anyhow::Result<()> {
    loop {
        let now = Instant::now();
        while let Ok(update) = connection.updates.try_recv() {
            app.apply(update, now);
        }
        connection.want(&app.wanted());
        terminal
            .draw(|frame| view::render(frame, app, now))
            .context("drawing")?;
        let tty = wait_tty(FRAME);
        // Checked before the wait's result: a signal may have interrupted it.
        if SIGNALLED.load(Ordering::Relaxed) {
            return Ok(());
        }
        match tty.context("reading the terminal")? {
            Tty::Quiet => continue,
            Tty::HungUp => return Ok(()),
            Tty::Ready => {}
        }
        // Everything crossterm has now (one read may hold several keys).
        loop {
            if wait_tty(Duration::ZERO).context("reading the terminal")? == Tty::HungUp {
                return Ok(());
            }
            if !event::poll(Duration::ZERO).context("reading the terminal")? {
                break;
            }
            // A resize needs nothing: the next draw takes the new size.
            if let Event::Key(key) = event::read().context("reading the terminal")?
                && key.kind != KeyEventKind::Release
                && let Some(key) = map_key(key)
                && app.key(key) == Action::Quit
            {
                return Ok(());
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Tty {
    /// Nothing to read within the wait.
    Quiet,
    Ready,
    /// The terminal is gone (window closed, tmux killed).
    HungUp,
}

/// Wait for input on the terminal (stdin) ourselves before crossterm reads
/// it: crossterm 0.29 loops forever, at full CPU, reading a hung-up
/// terminal's end of file, so it must never be asked once that happened.
fn wait_tty(timeout: Duration) -> std::io::Result<Tty> {
    let mut fd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, and its count.
    let n = unsafe { libc::poll(&mut fd, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        // A signal: the caller looks at the flag and waits again.
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(Tty::Quiet)
        } else {
            Err(e)
        };
    }
    Ok(
        if fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            Tty::HungUp
        } else if fd.revents & libc::POLLIN != 0 {
            Tty::Ready
        } else {
            Tty::Quiet
        },
    )
}

fn map_key(key: KeyEvent) -> Option<Key> {
    Some(match key.code {
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}
