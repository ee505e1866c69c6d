//! `cargo xtask bench --part load`: what the agent costs a real server.
//! nginx answers `Connection: close` requests from wrk on loopback in a fresh
//! network namespace; rounds of no agent / agent / agent with one
//! `netconn watch --json` reader are interleaved, and the medians compared.
//! Then, with `kernel.bpf_stats_enabled=1` (off again afterwards), the kernel
//! time per transition of each of our programs. Throughput rounds run with
//! the statistics off: they cost two clock reads per program run themselves.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use netconn_tests::Netns;

use crate::{say, status, succeeds};

pub struct LoadArgs {
    pub rounds: usize,
    pub seconds: u64,
    pub connections: u32,
}

/// Every program the agent loads: the two on the tracepoint, the change
/// hooks (sock_ops and cgroup connect, which run per connection, not per
/// transition) and the seeding iterator (start-up only).
const PROGRAMS: [&str; 6] = [
    "netconn_state",
    "netconn_backup",
    "netconn_sockops",
    "netconn_connect4",
    "netconn_connect6",
    "netconn_seed",
];
/// The change hooks, shown together.
const HOOKS: [&str; 3] = ["netconn_sockops", "netconn_connect4", "netconn_connect6"];
const PORT: u16 = 8080;

/// Debian packages the load needs, by the binary that shows they are there.
const TOOLS: [(&str, &str); 3] = [
    ("/usr/sbin/nginx", "nginx-light"),
    ("/usr/bin/wrk", "wrk"),
    ("/usr/sbin/bpftool", "bpftool"),
];

/// Install nginx-light, wrk and bpftool if missing (Debian packages).
pub fn setup() -> Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(bin, _)| !Path::new(bin).exists())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!(
        "installing {} for the load benchmark",
        missing.join(", ")
    ));
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    // RUNLEVEL=1 keeps the package scripts from starting the system nginx.
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("RUNLEVEL", "1"),
    )?;
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    None,
    Agent,
    Watcher,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::None, Mode::Agent, Mode::Watcher];

    fn name(self) -> &'static str {
        match self {
            Mode::None => "no agent",
            Mode::Agent => "agent",
            Mode::Watcher => "agent + 1 watch --json",
        }
    }
}

/// One wrk run.
struct Round {
    mode: Mode,
    requests_per_s: f64,
    requests: u64,
    /// Agent process CPU over the run, % of one core.
    agent_cpu: Option<f64>,
    /// CPU time of nginx's worker and wrk per request, µs: unlike req/s it
    /// does not move with other load on the machine (softirq work is
    /// charged to the task it interrupts; this kernel has no separate irq
    /// time accounting).
    cpu_us_per_request: f64,
    /// Per program: (run time ns, runs, recursion misses), deltas.
    programs: Vec<(String, u64, u64, u64)>,
    watched: u64,
    /// Times the agent re-seeded itself (counts found inexact) by the end.
    reseeds: u64,
}

struct Bench<'a> {
    netconn: &'a Path,
    /// nginx's worker process.
    worker: u32,
    ns: Netns,
    dir: PathBuf,
    args: &'a LoadArgs,
}

fn nsenter(ns: &Netns, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name()))
        .arg("--")
        .arg(program);
    cmd
}

/// Kills and reaps a child when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGTERM lets the agent detach.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub(crate) fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (name, run_time_ns, run_cnt, recursion_misses, id)
type ProgStat = (String, u64, u64, u64, u64);

/// Our programs' (name, run_time_ns, run_cnt, recursion_misses, id), from
/// `bpftool prog show -j`, restricted to the programs `pid` holds.
fn prog_stats(pid: u32) -> Result<Vec<ProgStat>> {
    let ids = prog_ids(pid);
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let progs: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing bpftool output")?;
    let mut found = Vec::new();
    for p in progs.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        if !PROGRAMS.contains(&name) {
            continue;
        }
        // Other agents may be loaded (tests of other work trees): only ours.
        let Some(id) = p["id"].as_u64().filter(|id| ids.contains(id)) else {
            continue;
        };
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        found.push((
            name.to_string(),
            n("run_time_ns"),
            n("run_cnt"),
            n("recursion_misses"),
            id,
        ));
    }
    Ok(found)
}

/// Ids of the BPF programs `pid` holds open (`prog_id:` in its fdinfo;
/// Debian's bpftool does not list the holders itself).
fn prog_ids(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// `meta.reseeds` of the agent at `socket` (0 if it does not answer).
fn reseeds_of(netconn: &Path, socket: &Path) -> u64 {
    Command::new(netconn)
        .args(["stats", "--json", "--socket"])
        .arg(socket)
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v["meta"]["reseeds"].as_u64())
        .unwrap_or(0)
}

/// User + system CPU seconds of this process's reaped children.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// nginx's worker: the master's only child.
fn nginx_worker(master: u32) -> Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            bail!("nginx started no worker");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Restores kernel.bpf_stats_enabled when dropped.
struct StatsEnabled(String);

impl StatsEnabled {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn on() -> Result<StatsEnabled> {
        let before = std::fs::read_to_string(Self::PATH).context("reading bpf_stats_enabled")?;
        std::fs::write(Self::PATH, "1").context("enabling bpf_stats_enabled")?;
        Ok(StatsEnabled(before.trim().to_string()))
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, &self.0);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Bench<'_> {
    fn start_nginx(&self) -> Result<Reaped> {
        let root = self.dir.join("www");
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("index.html"), "netconn load bench\n")?;
        let d = self.dir.display();
        let conf = format!(
            "daemon off;\n\
             master_process on;\n\
             worker_processes 1;\n\
             user root;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log off;\n\
               keepalive_timeout 0;\n\
               client_body_temp_path {d}/body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               server {{\n\
                 listen 127.0.0.1:{PORT} backlog=4096;\n\
                 location / {{ root {d}/www; }}\n\
               }}\n\
             }}\n"
        );
        let path = self.dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = nsenter(&self.ns, "/usr/sbin/nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let nginx = Reaped(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !succeeds(nsenter(&self.ns, "wrk").args([
            "-t1",
            "-c1",
            "-d1s",
            &format!("http://127.0.0.1:{PORT}/"),
        ])) {
            if Instant::now() > deadline {
                bail!("nginx does not answer; see {d}/error.log");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(nginx)
    }

    fn start_agent(&self) -> Result<(Reaped, PathBuf)> {
        let socket = self.dir.join("agent.sock");
        let log = std::fs::File::create(self.dir.join("agent.log"))?;
        let child = nsenter(&self.ns, self.netconn)
            .arg("agent")
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        let mut agent = Reaped(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !succeeds(
            Command::new(self.netconn)
                .args(["stats", "--json", "--socket"])
                .arg(&socket),
        ) {
            if let Ok(Some(st)) = agent.0.try_wait() {
                bail!(
                    "the agent exited ({st}); see {}/agent.log",
                    self.dir.display()
                );
            }
            if Instant::now() > deadline {
                bail!("the agent did not serve within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok((agent, socket))
    }

    /// Run wrk; returns (requests/s, requests, CPU seconds of wrk).
    fn wrk(&self) -> Result<(f64, u64, f64)> {
        let children_before = children_cpu();
        let out = nsenter(&self.ns, "wrk")
            .args([
                "-t1",
                &format!("-c{}", self.args.connections),
                &format!("-d{}s", self.args.seconds),
                "-H",
                "Connection: close",
                &format!("http://127.0.0.1:{PORT}/"),
            ])
            .output()
            .context("running wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
        }
        let rate = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no Requests/sec in wrk output: {text}"))?;
        let requests = text
            .lines()
            .find_map(|l| {
                let l = l.trim();
                l.contains(" requests in ")
                    .then(|| l.split_whitespace().next()?.parse().ok())?
            })
            .with_context(|| format!("no request count in wrk output: {text}"))?;
        // wrk is the only child reaped meanwhile.
        Ok((rate, requests, children_cpu() - children_before))
    }

    fn round(&self, mode: Mode) -> Result<Round> {
        let mut agent = None;
        let mut watcher = None;
        let mut counter = None;
        let mut agent_socket = None;
        if mode != Mode::None {
            let (a, socket) = self.start_agent()?;
            agent_socket = Some(socket.clone());
            if mode == Mode::Watcher {
                let mut w = Command::new(self.netconn)
                    .args(["watch", "--json", "--socket"])
                    .arg(&socket)
                    .stdout(Stdio::piped())
                    .spawn()
                    .context("starting netconn watch")?;
                let stdout = w.stdout.take();
                counter = Some(std::thread::spawn(move || {
                    let Some(stdout) = stdout else { return 0u64 };
                    // Counts newlines in raw reads: the consumer should
                    // cost next to nothing, so that the round measures the
                    // watcher (parsing each line here took ~2% of a core).
                    let mut stdout = stdout;
                    let mut buf = vec![0u8; 1 << 20];
                    let mut lines = 0u64;
                    while let Ok(n) = stdout.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
                    }
                    lines
                }));
                watcher = Some(Reaped(w));
            }
            agent = Some(a);
            // Let the agent finish seeding and settle.
            std::thread::sleep(Duration::from_millis(500));
        }
        let pid = agent.as_ref().map(|a| a.0.id());
        let ticks0 = pid.and_then(cpu_ticks);
        let progs0 = match pid {
            Some(p) => prog_stats(p)?,
            None => Vec::new(),
        };
        let worker0 = cpu_ticks(self.worker);
        let started = Instant::now();
        let (requests_per_s, requests, wrk_cpu) = self.wrk()?;
        let wall = started.elapsed().as_secs_f64();
        let worker1 = cpu_ticks(self.worker);
        let ticks1 = pid.and_then(cpu_ticks);
        let worker_cpu = match (worker0, worker1) {
            (Some(a), Some(b)) => (b - a) as f64 / ticks_per_second(),
            _ => 0.0,
        };
        let cpu_us_per_request = (worker_cpu + wrk_cpu) * 1e6 / requests.max(1) as f64;
        let progs1 = match pid {
            Some(p) => prog_stats(p)?,
            None => Vec::new(),
        };
        let agent_cpu = match (ticks0, ticks1) {
            (Some(a), Some(b)) => Some((b - a) as f64 / ticks_per_second() / wall * 100.0),
            _ => None,
        };
        let programs = progs1
            .iter()
            .filter_map(|(name, t, n, m, id)| {
                // By id: a re-seed during the round loads new programs.
                let (_, t0, n0, m0, _) = progs0.iter().find(|p| p.4 == *id)?;
                Some((name.clone(), t - t0, n - n0, m - m0))
            })
            .collect();
        let reseeds = match &agent_socket {
            Some(socket) => reseeds_of(self.netconn, socket),
            None => 0,
        };
        drop(watcher);
        let watched = counter.and_then(|c| c.join().ok()).unwrap_or(0);
        drop(agent);
        Ok(Round {
            mode,
            requests_per_s,
            requests,
            agent_cpu,
            cpu_us_per_request,
            programs,
            watched,
            reseeds,
        })
    }
}

pub fn run(netconn: &Path, args: &LoadArgs) -> Result<()> {
    setup()?;
    let dir = std::env::temp_dir().join(format!("netconn-bench-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut bench = Bench {
        netconn,
        worker: 0,
        ns: Netns::create("nc-bench-load")?,
        dir: dir.clone(),
        args,
    };
    let nginx = bench.start_nginx()?;
    bench.worker = nginx_worker(nginx.0.id())?;
    say("warming up nginx and wrk");
    bench.wrk()?;

    // Throughput: interleaved rounds, each starting the rotation elsewhere
    // so that no mode always follows the same one.
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        for i in 0..Mode::ALL.len() {
            let mode = Mode::ALL[(r + i) % Mode::ALL.len()];
            let round = bench.round(mode)?;
            say(&format!(
                "round {}/{}: {:<24} {:>8.0} req/s {:>6.1} µs CPU/request",
                r + 1,
                args.rounds,
                mode.name(),
                round.requests_per_s,
                round.cpu_us_per_request
            ));
            rounds.push(round);
        }
    }

    // Kernel cost: bpf_stats on, agent rounds only.
    let stats_rounds = args.rounds.div_ceil(2).max(3);
    let mut costed = Vec::new();
    {
        let _stats = StatsEnabled::on()?;
        // --load-rounds 0: a quick look at the kernel cost alone.
        let modes: &[Mode] = if args.rounds == 0 {
            &[Mode::Agent]
        } else {
            &[Mode::Agent, Mode::Watcher]
        };
        for r in 0..stats_rounds {
            for &mode in modes {
                let round = bench.round(mode)?;
                say(&format!(
                    "bpf_stats round {}/{stats_rounds}: {}",
                    r + 1,
                    mode.name()
                ));
                costed.push(round);
            }
        }
    }
    drop(nginx);
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!(
        "netconn load bench: nginx (1 worker) serving `Connection: close` to wrk (1 thread, {} connections) on loopback, {} s per round, {} interleaved rounds; medians",
        args.connections, args.seconds, args.rounds
    );
    println!(
        "(CPU ratio: nginx + wrk CPU per request without the agent / with it, i.e. the \
         throughput a CPU-bound server keeps; it is not moved by other load on the machine, \
         unlike req/s)"
    );
    let base = median(
        rounds
            .iter()
            .filter(|r| r.mode == Mode::None)
            .map(|r| r.requests_per_s)
            .collect(),
    );
    let base_cpu = median(
        rounds
            .iter()
            .filter(|r| r.mode == Mode::None)
            .map(|r| r.cpu_us_per_request)
            .collect(),
    );
    println!(
        "{:<24} | {:>10} | {:>7} | {:>17} | {:>9} | {:>16} | {:>9}",
        "mode", "req/s", "ratio", "ratio range", "agent CPU", "CPU µs/request", "CPU ratio"
    );
    for mode in Mode::ALL {
        let of: Vec<&Round> = rounds.iter().filter(|r| r.mode == mode).collect();
        let rate = median(of.iter().map(|r| r.requests_per_s).collect());
        let ratios: Vec<f64> = of.iter().map(|r| r.requests_per_s / base).collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let cpu = median(of.iter().filter_map(|r| r.agent_cpu).collect());
        let per_request = median(of.iter().map(|r| r.cpu_us_per_request).collect());
        println!(
            "{:<24} | {:>10.0} | {:>6.1}% | {:>7.1}%-{:>6.1}% | {:>9} | {:>16.1} | {:>8.1}%",
            mode.name(),
            rate,
            rate / base * 100.0,
            lo * 100.0,
            hi * 100.0,
            if cpu.is_nan() {
                "-".to_string()
            } else {
                format!("{cpu:.1}%")
            },
            per_request,
            base_cpu / per_request * 100.0
        );
    }

    println!();
    println!(
        "kernel cost, kernel.bpf_stats_enabled=1 ({stats_rounds} rounds per mode; medians of per-round means)"
    );
    println!(
        "{:<24} | {:>15} | {:>15} | {:>22} | {:>9} | {:>12} | {:>9}",
        "mode",
        "netconn_state",
        "netconn_backup",
        "change hooks (runs)",
        "total",
        "transitions",
        "per conn"
    );
    for mode in [Mode::Agent, Mode::Watcher] {
        let of: Vec<&Round> = costed.iter().filter(|r| r.mode == mode).collect();
        // Median over rounds of the run time of the programs `pick` selects,
        // per transition (a primary run).
        let per_transition = |pick: &dyn Fn(&str) -> bool| {
            median(
                of.iter()
                    .filter_map(|r| {
                        let primary_runs = r.programs.iter().find(|p| p.0 == PROGRAMS[0])?.2;
                        let t: u64 = r.programs.iter().filter(|p| pick(&p.0)).map(|p| p.1).sum();
                        Some(t as f64 / primary_runs.max(1) as f64)
                    })
                    .collect(),
            )
        };
        let primary = per_transition(&|n| n == PROGRAMS[0]);
        let backup = per_transition(&|n| n == PROGRAMS[1]);
        let hooks = per_transition(&|n| HOOKS.contains(&n));
        let total = per_transition(&|_| true);
        let hook_runs = median(
            of.iter()
                .map(|r| {
                    let runs: u64 = r
                        .programs
                        .iter()
                        .filter(|p| HOOKS.contains(&p.0.as_str()))
                        .map(|p| p.2)
                        .sum();
                    runs as f64 / r.requests.max(1) as f64
                })
                .collect(),
        );
        let transitions: u64 = of
            .iter()
            .filter_map(|r| r.programs.iter().find(|p| p.0 == PROGRAMS[0]).map(|p| p.2))
            .sum();
        let per_conn = median(
            of.iter()
                .filter_map(|r| {
                    let runs = r.programs.iter().find(|p| p.0 == PROGRAMS[0])?.2;
                    Some(runs as f64 / r.requests.max(1) as f64)
                })
                .collect(),
        );
        println!(
            "{:<24} | {:>12.0} ns | {:>12.0} ns | {:>7.0} ns ({:>4.1}/conn) | {:>6.0} ns | {:>12} | {:>9.2}",
            mode.name(),
            primary,
            backup,
            hooks,
            hook_runs,
            total,
            transitions,
            per_conn
        );
    }
    let misses: u64 = costed
        .iter()
        .flat_map(|r| r.programs.iter())
        .filter(|p| p.0 == PROGRAMS[0])
        .map(|p| p.3)
        .sum();
    let watched: u64 = costed.iter().map(|r| r.watched).sum();
    let reseeds: u64 = rounds.iter().chain(&costed).map(|r| r.reseeds).sum();
    let agent_rounds = rounds
        .iter()
        .chain(&costed)
        .filter(|r| r.mode != Mode::None)
        .count();
    println!(
        "agent re-seeds (counts found inexact and rebuilt): {reseeds} in {agent_rounds} agent rounds"
    );
    println!(
        "(ns per transition = program run time / primary runs; the primary runs once per \
         transition, the backup too; the change hooks (sock_ops, cgroup connect) run per \
         connection, and their time is spread over its transitions; total = every netconn \
         program; nested runs the kernel skipped for the primary: {misses}; \
         lines the watcher received in the bpf_stats rounds: {watched})"
    );
    Ok(())
}
