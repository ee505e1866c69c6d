//! Running the real `netconn agent` in tests: start it (optionally inside a
//! network namespace) on a private socket, ask it for stats, stop it with
//! SIGTERM and check that it cleaned up.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Netns, counts_from_json, diff_counts, ss_counts_in};
use netconn_common::Counts;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The `netconn` binary under test: `$NETCONN_BIN` (set by `cargo xtask
/// test` to the binary it just built), else built from this tree into the
/// tests' own target dir (never a stale one lying around).
pub fn netconn_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("NETCONN_BIN") {
        return Ok(PathBuf::from(path));
    }
    static FOUND: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            crate::population::built_binary("netconn-user", "netconn").map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Differences in the cells the eBPF program counts as they change: full TCP
/// sockets in every state but the three that timewait and request socks
/// share (TIME_WAIT, FIN_WAIT2, SYN_RECV), which come from the refresh.
pub fn event_driven_diff(agent: &Counts, ss: &Counts) -> Vec<String> {
    use netconn_common::State;
    let refreshed = [State::TimeWait, State::FinWait2, State::SynRecv];
    agent
        .cells()
        .zip(ss.cells())
        .filter(|((f, s, x), (_, _, y))| f.is_tcp() && !refreshed.contains(s) && x != y)
        .map(|((f, s, x), (_, _, y))| format!("{} {}: agent {x}, ss {y}", f.name(), s.name()))
        .collect()
}

/// A fresh socket path for one agent.
pub fn socket_path() -> PathBuf {
    PathBuf::from(format!(
        "/tmp/netconn-test-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

pub struct Agent {
    child: Option<Child>,
    socket: PathBuf,
    netns: Option<String>,
    log: PathBuf,
}

impl Agent {
    /// Start an agent in the test's own namespace.
    pub fn start(extra: &[&str]) -> Result<Agent> {
        Self::start_in(None, extra)
    }

    /// Start an agent (inside `netns` when given) and wait until it answers.
    pub fn start_in(netns: Option<&Netns>, extra: &[&str]) -> Result<Agent> {
        Self::start_at(netns, socket_path(), extra)
    }

    /// [`Agent::start_in`] on a given socket path: a restart on the same
    /// path looks to clients like the same agent coming back.
    pub fn start_at(netns: Option<&Netns>, socket: PathBuf, extra: &[&str]) -> Result<Agent> {
        let bin = netconn_bin()?;
        let log = socket.with_extension("log");
        let mut cmd = match netns {
            Some(ns) => ns.command(&bin),
            None => Command::new(&bin),
        };
        cmd.arg("agent")
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("creating agent log")?);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut agent = Agent {
            child: Some(child),
            socket,
            netns: netns.map(|n| n.name().to_string()),
            log,
        };
        agent.wait_serving(Duration::from_secs(60))?;
        Ok(agent)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_serving(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.request(r#"{"cmd":"ping"}"#).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("agent exited ({status}) before serving:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("agent not serving after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send one raw request line, return the reply line.
    pub fn request(&self, line: &str) -> Result<String> {
        let stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut writer = stream.try_clone()?;
        writer.write_all(line.as_bytes())?;
        writer.write_all(b"\n")?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply)?;
        Ok(reply)
    }

    /// The agent's `stats --json` object.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let reply = self.request(r#"{"cmd":"stats"}"#)?;
        serde_json::from_str(&reply).with_context(|| format!("bad stats reply: {reply}"))
    }

    /// The agent's counts in `ss` shape, and whether it calls them exact.
    pub fn counts(&self) -> Result<(Counts, serde_json::Value)> {
        let stats = self.stats()?;
        let meta = stats.get("meta").cloned().unwrap_or_default();
        Ok((counts_from_json(&stats)?, meta))
    }

    /// Wait until `ss` (in the agent's namespace) is quiet and the agent
    /// agrees with it exactly, calling itself exact, without having had to
    /// re-seed (a re-seed would hide a counting bug). The refreshed part of
    /// the agent's answer may lag by up to its refresh interval, so a few
    /// rounds are allowed; the last difference is the error.
    pub fn assert_matches_ss(&self, timeout: Duration) -> Result<Counts> {
        let counts = self.assert_matches_ss_after_reseeds(timeout)?;
        let (_, meta) = self.counts()?;
        if meta.get("reseeds").and_then(|r| r.as_u64()) != Some(0) {
            bail!(
                "agent matched ss only after re-seeding: {meta}\n{}",
                self.log()
            );
        }
        Ok(counts)
    }

    /// [`Agent::assert_matches_ss`] for tests that provoke a re-seed.
    pub fn assert_matches_ss_after_reseeds(&self, timeout: Duration) -> Result<Counts> {
        let netns = self.netns.clone();
        self.assert_matches(|| self.counts(), || ss_counts_in(netns.as_deref()), timeout)
    }

    /// Counts of one namespace (`stats --netns SELECTOR`) and its meta.
    pub fn counts_of(&self, selector: &str) -> Result<(Counts, serde_json::Value)> {
        let request = serde_json::json!({"cmd": "stats", "netns": selector}).to_string();
        let reply: serde_json::Value = serde_json::from_str(&self.request(&request)?)?;
        if let Some(error) = reply.get("error") {
            bail!("agent refused stats --netns {selector}: {error}");
        }
        let meta = reply.get("meta").cloned().unwrap_or_default();
        Ok((counts_from_json(&reply)?, meta))
    }

    /// The namespace `selector` names equals `ss` run in `ss_where` (a name
    /// or a namespace file, see [`crate::netns::command_in`]) and says exact.
    pub fn assert_netns_matches_ss(
        &self,
        selector: &str,
        ss_where: &str,
        timeout: Duration,
    ) -> Result<Counts> {
        self.assert_matches(
            || self.counts_of(selector),
            || ss_counts_in(Some(ss_where)),
            timeout,
        )
        .with_context(|| format!("namespace {selector}"))
    }

    /// Poll until `query` equals `ss` at a quiescent moment (ss the same
    /// before and after the query) and says exact. An answer that says
    /// exact while an event-driven cell differs fails at once.
    fn assert_matches(
        &self,
        query: impl Fn() -> Result<(Counts, serde_json::Value)>,
        ss: impl Fn() -> Result<Counts>,
        timeout: Duration,
    ) -> Result<Counts> {
        let deadline = Instant::now() + timeout;
        loop {
            let before = ss()?;
            let (agent, meta) = query()?;
            let after = ss()?;
            let exact = meta.get("exact").and_then(|e| e.as_bool()) == Some(true);
            let last = if before == after {
                let diff = diff_counts(&agent, &after);
                if diff.is_empty() && exact {
                    return Ok(after);
                }
                // With ss the same before and after the query, the states the
                // tracepoint counts (event-driven, no refresh lag) must match
                // whenever the agent says exact: an exact answer is never wrong.
                let wrong = event_driven_diff(&agent, &after);
                if exact && !wrong.is_empty() {
                    bail!("the agent answered exact but wrong: {wrong:?}; meta: {meta}");
                }
                format!("differences: {diff:?}; meta: {meta}")
            } else {
                "ss never settled".to_string()
            };
            if Instant::now() > deadline {
                bail!("agent does not match ss after {timeout:?}: {last}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, wait, and check the socket file is gone.
    pub fn stop(mut self) -> Result<ExitStatus> {
        let status = self.terminate()?;
        if self.socket.exists() {
            bail!("agent left its socket {} behind", self.socket.display());
        }
        Ok(status)
    }

    /// SIGKILL, as a crash: the agent cleans nothing up (its socket file
    /// stays; the next agent on the path replaces it).
    pub fn kill(mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("agent already stopped");
        };
        child.kill().context("SIGKILL to the agent")?;
        Ok(child.wait()?)
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("agent already stopped");
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("agent ignored SIGTERM for 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.terminate();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Names of the BPF programs loaded in the kernel right now.
pub fn loaded_bpf_program_names() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded BPF programs")?;
        names.push(info.name_as_str().unwrap_or_default().to_string());
    }
    Ok(names)
}

/// How many netconn primary programs (`netconn_state`) are loaded now,
/// host-wide: one per attached generation.
pub fn netconn_programs() -> usize {
    loaded_bpf_program_names()
        .map(|names| {
            names
                .iter()
                .filter(|n| n.as_str() == "netconn_state")
                .count()
        })
        .unwrap_or(0)
}

/// The netconn programs loaded before a test starts its own: the count once
/// it has stood still for 500 ms (at most 10 s), so that a program an
/// earlier test's agent left behind while exiting, which the kernel is still
/// releasing, is not counted as staying (seen: a pin test right after the
/// netns tests counted one too many and then waited for it in vain).
pub fn netconn_programs_baseline() -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut count = netconn_programs();
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(500) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = netconn_programs();
        if now != count {
            count = now;
            since = Instant::now();
        }
    }
    count
}

/// Wait until `n` netconn programs are loaded. The kernel releases a
/// program's link and the program itself from a work queue shortly after
/// the last descriptor closes, so give it a few seconds.
pub fn netconn_programs_settle_at(n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if netconn_programs() == n {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resident memory of a process, in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
