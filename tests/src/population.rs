//! [`Population`]: one or more `popgen` processes holding a known socket
//! population, stopped on drop.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::spec::{HELD_FDS_PER_PROCESS, PopSpec, add_counts};
use netconn_common::Counts;

/// How to run the popgen processes.
#[derive(Clone, Debug)]
pub struct PopOptions {
    /// Run inside this network namespace: a name (`ip netns exec NAME`) or
    /// a namespace file such as /proc/PID/ns/net (`nsenter --net=PATH`).
    pub netns: Option<String>,
    /// How long every process together may take to print `ready`.
    pub ready_timeout: Duration,
    /// Held descriptors per process when the spec is split.
    pub held_fds_per_process: u64,
    /// How long a process may take to exit after stdin EOF before SIGKILL.
    pub stop_timeout: Duration,
}

impl Default for PopOptions {
    fn default() -> Self {
        PopOptions {
            netns: None,
            ready_timeout: Duration::from_secs(120),
            held_fds_per_process: HELD_FDS_PER_PROCESS,
            stop_timeout: Duration::from_secs(30),
        }
    }
}

struct Proc {
    spec: PopSpec,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }
}

/// Running popgen processes. Dropping it closes their stdin (clean exit:
/// RST for held sockets, own TIME_WAITs destroyed) and SIGKILLs any that
/// do not exit within [`PopOptions::stop_timeout`].
pub struct Population {
    procs: Vec<Proc>,
    expected: Counts,
    stop_timeout: Duration,
}

/// The popgen binary for this crate's own unit tests: `$NETCONN_POPGEN` if
/// set; otherwise built from this tree (see [`built_binary`]).
/// Integration tests should pass `env!("CARGO_BIN_EXE_popgen")` instead.
pub fn popgen_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NETCONN_POPGEN") {
        return Ok(PathBuf::from(p));
    }
    // Build once per test process, however many tests ask.
    static FOUND: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| built_binary("netconn-tests", "popgen").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// `bin` of `package`, (re)built from this tree with `$CARGO build` into the
/// running tests' own target dir and profile, so tests never use a stale or
/// missing binary. Outside cargo it is only looked up.
pub fn built_binary(package: &str, bin: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let mut dir = exe
        .parent()
        .context("test executable has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let target_dir = dir.parent().filter(|t| t.join("CACHEDIR.TAG").is_file());
    let profile = dir.file_name().and_then(|n| n.to_str());
    if let (Some(cargo), Some(target_dir), Some(profile)) =
        (std::env::var_os("CARGO"), target_dir, profile)
    {
        // Plain layout only: with --target the binary is looked up but not
        // rebuilt.
        let profile = if profile == "debug" { "dev" } else { profile };
        let out = Command::new(cargo)
            .args(["build", "-q", "-p", package, "--bin", bin])
            .args(["--profile", profile])
            .arg("--target-dir")
            .arg(target_dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running cargo build for {bin}"))?;
        if !out.status.success() {
            bail!(
                "cargo build of {bin} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let p = dir.join(bin);
    if !p.is_file() {
        bail!(
            "{bin} binary not found at {}: run `cargo build -p {package} --bins` with the same \
             target dir first",
            p.display()
        );
    }
    Ok(p)
}

impl Population {
    /// Starts `spec` (split over processes as needed) in the current network
    /// namespace and waits until every process printed `ready`.
    pub fn start(popgen: impl AsRef<Path>, spec: &PopSpec) -> Result<Population> {
        Population::start_with(popgen, spec, &PopOptions::default())
    }

    pub fn start_with(
        popgen: impl AsRef<Path>,
        spec: &PopSpec,
        opts: &PopOptions,
    ) -> Result<Population> {
        let popgen = popgen.as_ref();
        let parts = spec.split(opts.held_fds_per_process)?;
        let mut pop = Population {
            procs: Vec::with_capacity(parts.len()),
            expected: Counts::default(),
            stop_timeout: opts.stop_timeout,
        };
        // Start them all first so they build in parallel; on error `pop` is
        // dropped, which stops the ones already started.
        for part in parts {
            let p = spawn(popgen, &part, opts.netns.as_deref())?;
            pop.expected = add_counts(&pop.expected, &part.expected());
            pop.procs.push(p);
        }
        let deadline = Instant::now() + opts.ready_timeout;
        for (i, p) in pop.procs.iter_mut().enumerate() {
            wait_ready(p, deadline)
                .with_context(|| format!("popgen #{i} ({}) did not become ready", p.spec))?;
        }
        Ok(pop)
    }

    /// Exact `ss` deltas of all processes (see [`PopSpec::expected`]).
    pub fn expected(&self) -> &Counts {
        &self.expected
    }

    /// The spec each process was started with.
    pub fn specs(&self) -> Vec<&PopSpec> {
        self.procs.iter().map(|p| &p.spec).collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|p| p.child.id()).collect()
    }

    /// What each process wrote to stderr so far (popgen runs with `-v`, so
    /// this includes its build/teardown timings).
    pub fn logs(&self) -> Vec<String> {
        self.procs.iter().map(Proc::stderr_text).collect()
    }

    /// Number of popgen processes.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Waits up to `timeout` for a stdout line from process `i` starting
    /// with `prefix` (e.g. `churn-stopped`), and returns it.
    pub fn wait_line(&self, i: usize, prefix: &str, timeout: Duration) -> Result<String> {
        let p = self.procs.get(i).context("no such popgen process")?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match p.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Ok(l),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    bail!("no `{prefix}` line from popgen #{i} within {timeout:?}")
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "popgen #{i} closed stdout before `{prefix}`; stderr: {}",
                        p.stderr_text()
                    )
                }
            }
        }
    }

    /// Stops every process (stdin EOF) and checks each exited with 0.
    pub fn stop(mut self) -> Result<()> {
        let results = self.shutdown();
        let errors: Vec<String> = results
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| r.err().map(|e| format!("popgen #{i}: {e:#}")))
            .collect();
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(())
    }

    fn shutdown(&mut self) -> Vec<Result<()>> {
        for p in &mut self.procs {
            // EOF on stdin is popgen's signal to tear down and exit.
            p.stdin.take();
        }
        let deadline = Instant::now() + self.stop_timeout;
        let mut results = Vec::new();
        for p in self.procs.drain(..) {
            results.push(reap(p, deadline));
        }
        results
    }
}

impl Drop for Population {
    fn drop(&mut self) {
        for r in self.shutdown() {
            if let Err(e) = r {
                eprintln!("netconn-tests: stopping popgen: {e:#}");
            }
        }
    }
}

fn spawn(popgen: &Path, spec: &PopSpec, netns: Option<&str>) -> Result<Proc> {
    let mut cmd = crate::netns::command_in(netns, popgen);
    cmd.args(spec.to_args())
        .arg("-v")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {} {spec}", popgen.display()))?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take().context("popgen stdout not piped")?;
    let mut stderr = child.stderr.take().context("popgen stderr not piped")?;
    let (tx, rx) = mpsc::channel();
    // Keep draining stdout for the process's whole life so it never blocks
    // on a full pipe; lines go to `wait_ready` / `wait_line`.
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let err_buf = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&err_buf);
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = sink.lock() {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    Ok(Proc {
        spec: spec.clone(),
        child,
        stdin,
        lines: rx,
        stderr: err_buf,
    })
}

fn wait_ready(p: &mut Proc, deadline: Instant) -> Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.lines.recv_timeout(left) {
            Ok(l) if l.trim() == "ready" => return Ok(()),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                bail!("timed out; stderr so far: {}", p.stderr_text())
            }
            Err(RecvTimeoutError::Disconnected) => {
                // stdout closed: the process is exiting; report how.
                let status = wait_until(&mut p.child, Instant::now() + Duration::from_secs(5));
                // Give the stderr reader a moment to catch the last words.
                thread::sleep(Duration::from_millis(50));
                bail!("exited ({}): {}", describe(&status), p.stderr_text())
            }
        }
    }
}

fn wait_until(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    loop {
        if let Some(st) = child.try_wait().context("waiting for popgen")? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn describe(st: &Result<Option<ExitStatus>>) -> String {
    match st {
        Ok(Some(s)) => s.to_string(),
        Ok(None) => "still running".to_owned(),
        Err(e) => format!("{e:#}"),
    }
}

fn reap(mut p: Proc, deadline: Instant) -> Result<()> {
    match wait_until(&mut p.child, deadline)? {
        Some(st) if st.success() => Ok(()),
        Some(st) => bail!("exited with {st}: {}", p.stderr_text()),
        None => {
            // Best effort: it may exit between the check and the kill.
            let _ = p.child.kill();
            let _ = p.child.wait();
            bail!("did not exit after stdin EOF; killed (its sockets closed without cleanup)")
        }
    }
}
