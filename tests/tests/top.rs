//! `netconn top` in a real terminal: tmux (80x24) runs it against a real
//! agent holding a known population in a fresh namespace; `send-keys`
//! operates it and `capture-pane` reads the screen, which must show the
//! counts `ss` sees in that namespace and the right view after each key.
//! Also: active leak alerts and who holds the leaking state, no agent, an
//! agent restart, and the terminal given back on `q`, Ctrl-C and SIGTERM. tmux comes from `cargo xtask setup`; without it (or
//! without root) these tests fail with the reason.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use netconn_tests::*;

const POPGEN: &str = env!("CARGO_BIN_EXE_popgen");
const WAIT: Duration = Duration::from_secs(20);
/// The shell's prompt (PS1 adds a space, which capture-pane trims).
const PROMPT: &str = "top-test$";

/// A private tmux server with one 80x24 session running a plain bash;
/// killed on drop (only this server: it has its own socket name).
struct Tmux {
    server: String,
    dir: PathBuf,
}

impl Tmux {
    fn start(width: u16, height: u16) -> Result<Tmux> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let version = Command::new("tmux").arg("-V").output();
        if !version.is_ok_and(|o| o.status.success()) {
            bail!("cannot run: tmux is missing (`cargo xtask setup` installs Debian's tmux)");
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let server = format!("netconn-top-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&server);
        std::fs::create_dir_all(&dir)?;
        let tmux = Tmux { server, dir };
        let shell = format!("env PS1='{PROMPT} ' bash --norc --noprofile");
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "-c",
            &tmux.dir.display().to_string(),
            &shell,
        ])?;
        tmux.wait_for("the shell prompt", |s| s.contains(PROMPT))?;
        Ok(tmux)
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.server)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running tmux")?;
        ensure!(
            out.status.success(),
            "tmux {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Press keys (tmux key names: `Down`, `Enter`, `C-c`, or text).
    fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.run(&args).map(drop)
    }

    /// Type a line into the shell.
    fn line(&self, text: &str) -> Result<()> {
        self.run(&["send-keys", "-t", "top", "-l", text])?;
        self.keys(&["Enter"])
    }

    fn screen(&self) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// Poll the screen until `ok` holds; the error shows the last screen.
    fn wait_for(&self, what: &str, mut ok: impl FnMut(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen()?;
            if ok(&screen) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                bail!("no {what} on screen after {WAIT:?}; the screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Start `netconn top` on `socket`; the shell says how it exited.
    fn start_top(&self, socket: &Path) -> Result<()> {
        self.line(&format!(
            "clear; '{}' top --socket '{}'; echo top-exited-$?",
            netconn_bin()?.display(),
            socket.display()
        ))
    }

    /// After top exits: the shell is back in cooked mode on the normal
    /// screen (what is typed is echoed and run; top's view is gone).
    fn assert_terminal_restored(&self) -> Result<()> {
        self.wait_for("top-exited-0", |s| s.contains("top-exited-0"))?;
        self.line("echo restored-$((6 * 7))")?;
        let screen = self.wait_for("the shell answering", |s| {
            s.contains("echo restored-$((6 * 7))") && s.contains("restored-42")
        })?;
        ensure!(
            !screen.contains("netconn top  ns") && !screen.contains("transitions in ns"),
            "top's view is still on screen after it exited:\n{screen}"
        );
        Ok(())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The states table on screen: `STATE tcp4 tcp6 udp4 udp6 total` rows
/// (the selected one starts with `>`); states not listed are zero. Each
/// row's total must be its sum.
fn screen_counts(screen: &str) -> Result<Counts> {
    let mut counts = Counts::default();
    for line in screen.lines() {
        let mut words = line.split_whitespace();
        let Some(state) = words
            .next()
            .and_then(|w| State::from_name(w.trim_start_matches('>')))
        else {
            continue;
        };
        let numbers: Vec<u64> = words.take(5).filter_map(|w| w.parse().ok()).collect();
        let [tcp4, tcp6, udp4, udp6, total] = numbers[..] else {
            continue; // e.g. the namespace header naming the state
        };
        ensure!(
            tcp4 + tcp6 + udp4 + udp6 == total,
            "row total is not its sum: {line}"
        );
        for (family, n) in Family::ALL.into_iter().zip([tcp4, tcp6, udp4, udp6]) {
            counts.set(family, state, n);
        }
    }
    Ok(counts)
}

/// Wait until the screen's counts equal `ss` in the namespace (ss the same
/// before and after the capture, so a settling population cannot pass).
fn wait_for_ss_counts(tmux: &Tmux, ns: &Netns) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let before = ns.ss_counts()?;
        let screen = tmux.screen()?;
        let after = ns.ss_counts()?;
        let shown = screen_counts(&screen)?;
        if before == after && shown == after && screen.contains("exact") {
            return Ok(screen);
        }
        if Instant::now() > deadline {
            bail!(
                "screen never matched ss: {:?}\n{screen}",
                diff_counts_labeled(&after, "ss", &shown, "screen")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Transition lines on screen (`HH:MM:SS.mmm tcp4 ...`).
fn transition_lines(screen: &str) -> Vec<&str> {
    screen
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.len() > 13 && l.as_bytes()[2] == b':' && l.as_bytes()[8] == b'.'
        })
        .collect()
}

/// Move the selection to `state`'s row with the arrow keys (rows are in
/// `State::ALL` order), however many rows appeared meanwhile.
fn select_state(tmux: &Tmux, state: State) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        let screen = tmux.screen()?;
        let selected = screen.lines().find_map(|l| {
            let name = l.strip_prefix('>')?.split_whitespace().next()?;
            State::from_name(name)
        });
        let key = match selected {
            Some(s) if s == state => return Ok(()),
            Some(s) if s.index() < state.index() => "Down",
            Some(_) => "Up",
            None => "Down",
        };
        if Instant::now() > deadline {
            bail!("cannot select {}; the screen:\n{screen}", state.name());
        }
        tmux.keys(&[key])?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Open and close a connection to `port` inside the namespace.
fn connect(ns: &Netns, port: u16) -> Result<()> {
    ns.run(|| TcpStream::connect(("127.0.0.1", port)).map(drop))?
        .with_context(|| format!("connecting to port {port}"))
}

fn population(ns: &Netns) -> Result<Population> {
    let spec = PopSpec {
        family: FamilySel::Both,
        listeners: 3,
        base_port: Some(7400),
        established: 25,
        // Held on both sides: no orphan that expires during the test.
        fin_wait2: 4,
        udp_bound: 3,
        udp_connected: 2,
        ..PopSpec::default()
    };
    let options = PopOptions {
        netns: Some(ns.name().to_string()),
        ..PopOptions::default()
    };
    Population::start_with(POPGEN, &spec, &options)
}

#[test]
fn top_shows_the_counts_ss_sees_and_answers_every_key() -> Result<()> {
    require_root()?;
    let tmux = Tmux::start(80, 24)?;
    let ns = Netns::create("top")?;
    let agent = Agent::start_in(Some(&ns), &[])?;
    let pop = population(&ns)?;
    let netns = agent.stats()?["meta"]["netns"]
        .as_u64()
        .context("no meta.netns")?;

    // The new request, raw: a bad state is refused and the agent serves on.
    let refused = agent.request(r#"{"cmd":"top","state":"NAPPING"}"#)?;
    ensure!(refused.contains("unknown state"), "{refused}");
    let listen = agent.request(r#"{"cmd":"top","state":"LISTEN","family":"tcp"}"#)?;
    let listen: serde_json::Value = serde_json::from_str(&listen)?;
    ensure!(listen["sockets"] == 6, "{listen}");
    ensure!(
        listen["ports"][0] == serde_json::json!({"port": 7400, "sockets": 2}),
        "{listen}"
    );
    ensure!(listen["processes"][0]["comm"] == "popgen", "{listen}");
    // Asked again at once: the same breakdown, reused rather than redone.
    let again = agent.request(r#"{"cmd":"top","state":"LISTEN","family":"tcp"}"#)?;
    let again: serde_json::Value = serde_json::from_str(&again)?;
    ensure!(again["ports"] == listen["ports"], "{again}");
    ensure!(
        again["age_ms"].as_f64().is_some_and(|age| age > 0.0),
        "not from the cache: {again}"
    );

    tmux.start_top(agent.socket())?;
    let screen = wait_for_ss_counts(&tmux, &ns)?;
    ensure!(
        screen.contains(&format!(">{netns}")) && screen.contains(ns.name()),
        "no row for the agent's namespace {netns}:\n{screen}"
    );
    ensure!(screen.contains("leak alerts (0 active)"), "{screen}");

    tmux.keys(&["?"])?;
    tmux.wait_for("the help", |s| {
        s.contains("netconn top: keys") && s.contains("pause / resume")
    })?;
    tmux.keys(&["x"])?;
    tmux.wait_for("the view without the help", |s| {
        !s.contains("netconn top: keys") && s.contains("STATE")
    })?;

    // Every namespace has a row; sorting keeps the selection, and the next
    // namespace then the previous one comes back to it.
    tmux.keys(&["s"])?;
    tmux.wait_for("sorted by sockets", |s| s.contains("sorted by sockets"))?;
    tmux.keys(&["n"])?;
    tmux.keys(&["N"])?;
    tmux.keys(&["s"])?;
    tmux.wait_for("sorted by netns, the row still selected", |s| {
        s.contains("sorted by netns") && s.contains(&format!(">{netns}"))
    })?;

    tmux.keys(&["f"])?;
    tmux.wait_for("family tcp", |s| {
        s.contains("family tcp ") && s.contains("(tcp)")
    })?;
    // Down to LISTEN: its breakdown names the listeners' ports and popgen.
    select_state(&tmux, State::Listen)?;
    let pid = pop.pids()[0];
    let screen = tmux.wait_for("who holds LISTEN", |s| {
        s.contains("who holds LISTEN (tcp): 6 sockets")
            && s.contains("7400 (2)  7401 (2)  7402 (2)")
            && s.contains(&format!("popgen[{pid}] (6)"))
    })?;
    ensure!(screen.contains(">LISTEN"), "{screen}");

    // Paused: new transitions are counted, not shown; resumed: shown.
    tmux.keys(&["p"])?;
    tmux.wait_for("PAUSED", |s| s.contains("PAUSED (0 new"))?;
    let shown_before = transition_lines(&tmux.screen()?).len();
    connect(&ns, 7401)?;
    let screen = tmux.wait_for("transitions counted while paused", |s| {
        s.contains("PAUSED (") && !s.contains("PAUSED (0 new")
    })?;
    ensure!(
        transition_lines(&screen).len() == shown_before,
        "the paused pane moved:\n{screen}"
    );
    tmux.keys(&["p"])?;
    tmux.wait_for("the resumed pane", |s| {
        !s.contains("PAUSED") && transition_lines(s).iter().any(|l| l.contains(":7401 "))
    })?;

    // Port filter: only 7402's transitions remain.
    tmux.keys(&["/"])?;
    tmux.wait_for("the port prompt", |s| s.contains("port filter: _"))?;
    tmux.keys(&["7", "4", "0", "2", "Enter"])?;
    tmux.wait_for("the filter applied", |s| {
        s.contains("port 7402") && transition_lines(s).is_empty()
    })?;
    connect(&ns, 7401)?;
    connect(&ns, 7402)?;
    let screen = tmux.wait_for("port 7402's transitions", |s| {
        transition_lines(s).iter().any(|l| l.contains(":7402 "))
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let screen = format!("{screen}{}", tmux.screen()?);
    let lines = transition_lines(&screen);
    ensure!(
        lines.iter().all(|l| l.contains(":7402 ")),
        "other ports shown under the 7402 filter:\n{screen}"
    );

    tmux.keys(&["q"])?;
    tmux.assert_terminal_restored()?;
    drop(pop);
    agent.stop()?;
    Ok(())
}

#[test]
fn top_says_when_no_agent_runs_and_reconnects_when_it_comes_back() -> Result<()> {
    require_root()?;
    let tmux = Tmux::start(80, 24)?;
    let ns = Netns::create("top-restart")?;
    let socket = socket_path();

    tmux.start_top(&socket)?;
    let missing = format!("no netconn agent at {}", socket.display());
    tmux.wait_for("the no-agent message", |s| s.contains(&missing))?;

    let agent = Agent::start_at(Some(&ns), socket.clone(), &[])?;
    let pop = population(&ns)?;
    wait_for_ss_counts(&tmux, &ns)?;

    agent.stop()?;
    tmux.wait_for("the agent reported gone", |s| {
        s.contains("STALE (agent away)")
            && (s.contains(&missing) || s.contains("lost the netconn agent"))
    })?;
    let agent = Agent::start_at(Some(&ns), socket.clone(), &[])?;
    tmux.wait_for("reconnected", |s| {
        s.contains("reconnected to the agent") && !s.contains("STALE")
    })?;
    wait_for_ss_counts(&tmux, &ns)?;

    tmux.keys(&["C-c"])?;
    tmux.assert_terminal_restored()?;
    drop(pop);
    agent.stop()?;
    Ok(())
}

/// The running top's pid: the shell's only child while it runs.
fn top_pid(tmux: &Tmux) -> Result<i32> {
    let shell = tmux.run(&["display-message", "-p", "-t", "top", "#{pane_pid}"])?;
    let shell = shell.trim();
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))?;
    Ok(children
        .split_whitespace()
        .next()
        .context("no child of the shell")?
        .parse()?)
}

#[test]
fn top_gives_the_terminal_back_on_sigterm() -> Result<()> {
    require_root()?;
    let tmux = Tmux::start(80, 24)?;
    let socket = socket_path();
    tmux.start_top(&socket)?;
    tmux.wait_for("the no-agent message", |s| {
        s.contains("no netconn agent at")
    })?;
    let top = top_pid(&tmux)?;
    // SAFETY: signalling a process this test started (through tmux).
    ensure!(
        unsafe { libc::kill(top, libc::SIGTERM) } == 0,
        "kill failed"
    );
    tmux.assert_terminal_restored()
}

/// Closing the terminal under top (a window closed, tmux killed) ends it,
/// rather than leaving it spinning on the dead terminal.
#[test]
fn top_exits_when_its_terminal_goes_away() -> Result<()> {
    require_root()?;
    let tmux = Tmux::start(80, 24)?;
    let socket = socket_path();
    tmux.start_top(&socket)?;
    tmux.wait_for("the no-agent message", |s| {
        s.contains("no netconn agent at")
    })?;
    let top = top_pid(&tmux)?;
    let stat = format!("/proc/{top}/stat");
    tmux.run(&["kill-server"])?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&stat).exists() {
        if Instant::now() > deadline {
            // SAFETY: ending a process this test started.
            unsafe { libc::kill(top, libc::SIGKILL) };
            bail!("top still running 5 s after its terminal went away");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Leak rules that fire within seconds, and a program leaking CLOSE_WAIT.
const RULES: &str = r#"
[[rule]]
name = "cw-age"
kind = "age"
family = "tcp"
state = "CLOSE_WAIT"
older_than = "2s"
severity = "critical"
"#;

#[test]
fn top_lists_active_leak_alerts_and_who_holds_the_leaking_state() -> Result<()> {
    require_root()?;
    // Wide: the breakdown is listed beside the tables.
    let tmux = Tmux::start(132, 40)?;
    let ns = Netns::create("top-leak")?;
    let rules = std::env::temp_dir().join(format!("top-leak-{}.toml", std::process::id()));
    std::fs::write(&rules, RULES)?;
    let agent = Agent::start_in(Some(&ns), &["--rules", &rules.display().to_string()]);
    let _ = std::fs::remove_file(&rules);
    let agent = agent?;
    let mut leaker = ns
        .command(env!("CARGO_BIN_EXE_leaker"))
        .args(["--port", "7350", "--rate", "10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let result = (|| -> Result<()> {
        tmux.start_top(agent.socket())?;
        tmux.wait_for("the CLOSE_WAIT row", |s| {
            screen_counts(s).is_ok_and(|c| c.get(Family::Tcp4, State::CloseWait) > 0)
        })?;
        select_state(&tmux, State::CloseWait)?;
        let pid = leaker.id();
        // CLOSE_WAIT climbs by about 10 a second: a positive growth once
        // the history is 5 s long.
        let growth = |screen: &str| -> Option<f64> {
            let row = screen.lines().find(|l| l.starts_with(">CLOSE_WAIT"))?;
            row.split_whitespace().nth(6)?.parse().ok()
        };
        tmux.wait_for("the alert, who holds CLOSE_WAIT, its growth", |s| {
            s.contains("leak alerts (1 active)")
                && s.contains("CRIT CLOSE_WAIT leak")
                && s.contains("local ports")
                && s.lines().any(|l| l.trim_end().ends_with("  7350"))
                && s.contains(&format!("  {pid} leaker"))
                && growth(s).is_some_and(|g| g > 0.0)
        })?;
        tmux.keys(&["q"])?;
        tmux.assert_terminal_restored()
    })();
    let _ = leaker.kill();
    let _ = leaker.wait();
    agent.stop()?;
    result
}
