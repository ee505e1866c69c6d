//! `cargo xtask bench`, stream part: transitions per second delivered to
//! one `netconn watch --json` with no loss, and the kernel-side cost per
//! event (bpf run-time statistics) with no watcher and with one.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use netconn_tests::{Agent, ChurnSpec, Netns, PopOptions, PopSpec, Population};

/// Every program that runs while sockets change: the two on the tracepoint
/// (the first runs once per transition) and the change hooks (per
/// connection).
const PROGRAMS: [&str; 5] = [
    "netconn_state",
    "netconn_backup",
    "netconn_sockops",
    "netconn_connect4",
    "netconn_connect6",
];

/// Summed (run time, run count) of our programs in the kernel.
fn bpf_stats() -> Result<(Duration, u64)> {
    let mut time = Duration::ZERO;
    let mut primary_runs = 0;
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing BPF programs")?;
        let name = info.name_as_str().unwrap_or_default();
        if PROGRAMS.contains(&name) {
            time += info.run_time();
            if name == PROGRAMS[0] {
                primary_runs += info.run_count();
            }
        }
    }
    Ok((time, primary_runs))
}

/// Restores kernel.bpf_stats_enabled when dropped.
struct StatsEnabled(String);

impl StatsEnabled {
    fn on() -> Result<StatsEnabled> {
        const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
        let before = std::fs::read_to_string(PATH).context("reading bpf_stats_enabled")?;
        std::fs::write(PATH, "1").context("enabling bpf_stats_enabled")?;
        Ok(StatsEnabled(before.trim().to_string()))
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

struct Phase {
    events: u64,
    seconds: f64,
    ns_per_event: f64,
}

fn churn(popgen: &Path, ns: &Netns, seconds: u64, processes: usize) -> Result<Vec<Population>> {
    (0..processes)
        .map(|_| {
            Population::start_with(
                popgen,
                &PopSpec {
                    churn: Some(ChurnSpec { rate: 0, seconds }),
                    natural_exit: true,
                    ..PopSpec::default()
                },
                &PopOptions {
                    netns: Some(ns.name().to_string()),
                    ..PopOptions::default()
                },
            )
        })
        .collect()
}

/// What one watcher received: events, reported drops, first and last arrival.
type Received = (u64, u64, Option<Instant>, Option<Instant>);

/// Count a `watch --json` watcher's lines on a thread.
fn count_lines(stdout: Option<std::process::ChildStdout>) -> std::thread::JoinHandle<Received> {
    std::thread::spawn(move || {
        let (mut events, mut dropped) = (0u64, 0u64);
        let (mut first, mut last) = (None, None);
        let Some(stdout) = stdout else {
            return (0, 0, None, None);
        };
        let mut reader = BufReader::with_capacity(1 << 20, stdout);
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if line.starts_with("{\"dropped\"") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                dropped += v["dropped"].as_u64().unwrap_or(0);
            } else {
                events += 1;
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
            }
            line.clear();
        }
        (events, dropped, first, last)
    })
}

/// Churn for `seconds`; returns transitions the kernel saw, wall seconds,
/// and kernel time per transition (both programs).
fn run_phase(popgen: &Path, ns: &Netns, seconds: u64) -> Result<Phase> {
    let (t0, n0) = bpf_stats()?;
    let started = Instant::now();
    let pops = churn(popgen, ns, seconds, 2)?;
    for p in &pops {
        p.wait_line(0, "churn-stopped", Duration::from_secs(seconds + 60))?;
    }
    let churn_seconds = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let (t1, n1) = bpf_stats()?;
    drop(pops);
    let events = n1 - n0;
    Ok(Phase {
        events,
        seconds: churn_seconds,
        ns_per_event: (t1 - t0).as_nanos() as f64 / events.max(1) as f64,
    })
}

pub fn run(popgen: &Path, netconn: &Path, seconds: u64) -> Result<()> {
    let _stats = StatsEnabled::on()?;
    let ns = Netns::create("nc-bench-stream")?;
    let agent = Agent::start_in(Some(&ns), &[])?;
    let (_, meta) = agent.counts()?;
    let netns = meta["netns"].to_string();

    eprintln!("bench: churning {seconds} s with no watcher");
    let quiet = run_phase(popgen, &ns, seconds)?;

    eprintln!("bench: churning {seconds} s with one `netconn watch --json`");
    let mut watcher = Command::new(netconn)
        .args(["watch", "--json", "--netns", &netns, "--socket"])
        .arg(agent.socket())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting netconn watch")?;
    let counter = count_lines(watcher.stdout.take());
    std::thread::sleep(Duration::from_millis(300));
    let watched = run_phase(popgen, &ns, seconds)?;
    std::thread::sleep(Duration::from_secs(1));
    let _ = watcher.kill();
    let _ = watcher.wait();
    let (delivered, dropped, first, last) = counter.join().unwrap_or((0, 0, None, None));
    let span = match (first, last) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => watched.seconds,
    };
    let (_, meta) = agent.counts()?;
    agent.stop()?;

    println!();
    println!(
        "netconn stream bench ({seconds} s of loopback churn per phase, kernel.bpf_stats_enabled=1; kernel ns per transition: every netconn program, change hooks included)"
    );
    println!(
        "{:<22} | {:>12} {:>12} | {:>14} | {:>10}",
        "phase", "transitions", "per second", "kernel ns/event", "dropped"
    );
    println!(
        "{:<22} | {:>12} {:>12.0} | {:>14.0} | {:>10}",
        "no watcher",
        quiet.events,
        quiet.events as f64 / quiet.seconds,
        quiet.ns_per_event,
        "-"
    );
    println!(
        "{:<22} | {:>12} {:>12.0} | {:>14.0} | {:>10}",
        "one --json watcher",
        watched.events,
        watched.events as f64 / watched.seconds,
        watched.ns_per_event,
        dropped
    );
    println!(
        "delivered to the watcher: {delivered} of {} transitions, {:.0}/s over {:.2} s of streaming",
        watched.events,
        delivered as f64 / span,
        span
    );
    println!(
        "nested runs handled by the backup program: {} of {}",
        meta["nested_handled"], meta["nested_events"]
    );
    Ok(())
}
