//! `cargo xtask bench`: build large socket populations in a private network
//! namespace and print, side by side, what an answer costs: a query to the
//! agent, a whole `netconn check` process, the check's netlink fallback and
//! `ss -tan | wc -l`, at several population sizes (to show flatness).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use netconn_tests::{Agent, FamilySel, Netns, PopOptions, PopSpec, Population, rss_kib};

pub struct BenchArgs {
    pub sockets: u64,
    pub queries: usize,
    pub runs: usize,
}

struct Row {
    sockets: u64,
    query_p50_us: f64,
    query_p99_us: f64,
    query_max_us: f64,
    check_median_ms: f64,
    fallback_median_ms: f64,
    ss_median_ms: f64,
    agent_rss_kib: u64,
    refresh_ms: f64,
    reseeds: u64,
}

/// A population of about `sockets` sockets, mostly established pairs, with
/// some of every kind the agent counts differently.
fn spec_for(sockets: u64) -> PopSpec {
    let tw = (sockets / 20) as u32; // 5% TIME_WAIT (refreshed part)
    let udp = (sockets / 100) as u32; // 1% UDP
    let listeners = 100u32;
    let close_wait = (sockets / 100) as u32; // 2% (CLOSE_WAIT + orphan FIN_WAIT2)
    let rest = sockets.saturating_sub(u64::from(tw + udp + listeners + 2 * close_wait));
    PopSpec {
        family: FamilySel::V4,
        listeners,
        established: (rest / 2) as u32,
        close_wait,
        time_wait: tw,
        udp_bound: udp,
        ..PopSpec::default()
    }
}

pub fn run(popgen: &Path, netconn: &Path, args: &BenchArgs) -> Result<()> {
    let ns = Netns::create("nc-bench")?;
    let opts = PopOptions {
        netns: Some(ns.name().to_string()),
        ready_timeout: Duration::from_secs(600),
        ..PopOptions::default()
    };
    // SAFETY-free env: the tests' Agent helper finds the binary here.
    // SAFETY: single-threaded at this point; set before any thread reads it.
    unsafe { std::env::set_var("NETCONN_BIN", netconn) };

    let agent = Agent::start_in(Some(&ns), &[])?;
    let mut populations = Vec::new();
    let mut rows = Vec::new();
    let stages = [0, args.sockets / 4, args.sockets];
    let mut built = 0u64;
    for target in stages {
        if target > built {
            let spec = spec_for(target - built);
            eprintln!("bench: building {} more sockets", spec.total_sockets());
            let started = Instant::now();
            let pop = Population::start_with(popgen, &spec, &opts)?;
            eprintln!(
                "bench: built in {:.1} s over {} processes",
                started.elapsed().as_secs_f64(),
                pop.len()
            );
            built += spec.total_sockets();
            populations.push(pop);
        }
        let ss = agent
            .assert_matches_ss(Duration::from_secs(60))
            .context("agent differs from ss")?;
        let sockets: u64 = ss.total();
        eprintln!("bench: {sockets} sockets, agent equals ss; measuring");
        rows.push(measure(&ns, &agent, netconn, sockets, args)?);
    }

    // Seeding cost at the largest population: a second agent starting now.
    let started = Instant::now();
    let late = Agent::start_in(Some(&ns), &[])?;
    let serving_after = started.elapsed();
    let (_, meta) = late.counts()?;
    let late_rss = late.pid().map(rss_kib).unwrap_or(0);
    late.assert_matches_ss(Duration::from_secs(60))?;
    late.stop()?;

    println!();
    println!(
        "netconn bench (agent in its own network namespace; medians over {} process runs, {} queries)",
        args.runs, args.queries
    );
    println!(
        "{:>9} | {:>9} {:>9} {:>9} | {:>10} | {:>11} | {:>9} | {:>9} {:>9} | {:>8} {:>8} {:>7}",
        "sockets",
        "query p50",
        "p99",
        "max",
        "check proc",
        "fallback",
        "ss|wc -l",
        "ss/check",
        "fb/check",
        "RSS KiB",
        "refresh",
        "reseeds"
    );
    for r in &rows {
        println!(
            "{:>9} | {:>7.1}us {:>7.1}us {:>7.1}us | {:>8.2}ms | {:>9.2}ms | {:>7.1}ms | {:>8.1}x {:>8.1}x | {:>8} {:>6.1}ms {:>7}",
            r.sockets,
            r.query_p50_us,
            r.query_p99_us,
            r.query_max_us,
            r.check_median_ms,
            r.fallback_median_ms,
            r.ss_median_ms,
            r.ss_median_ms / r.check_median_ms,
            r.fallback_median_ms / r.check_median_ms,
            r.agent_rss_kib,
            r.refresh_ms,
            r.reseeds,
        );
    }
    println!(
        "seeding at {} sockets: {} (agent serving {:.0} ms after start), agent RSS {} KiB",
        rows.last().map(|r| r.sockets).unwrap_or(0),
        meta["seed"],
        serving_after.as_secs_f64() * 1000.0,
        late_rss
    );
    let (_, meta) = agent.counts()?;
    println!(
        "kernel events the primary program missed (nested): {}, handled by the backup: {}",
        meta["nested_events"], meta["nested_handled"]
    );
    for line in agent
        .log()
        .lines()
        .filter(|l| l.contains("re-seed") || l.contains("WARN"))
    {
        println!("agent log: {line}");
    }
    drop(agent);
    drop(populations);
    Ok(())
}

fn measure(
    ns: &Netns,
    agent: &Agent,
    netconn: &Path,
    sockets: u64,
    args: &BenchArgs,
) -> Result<Row> {
    // Per query: one persistent connection, as a poller would keep.
    let stream = UnixStream::connect(agent.socket())?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut samples = Vec::with_capacity(args.queries);
    for _ in 0..args.queries {
        let t = Instant::now();
        writer.write_all(b"{\"cmd\":\"stats\"}\n")?;
        line.clear();
        reader.read_line(&mut line)?;
        samples.push(t.elapsed());
    }
    ensure!(line.contains("\"tcp4\""), "bad reply {line}");
    let meta: serde_json::Value = serde_json::from_str(&line)?;
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;

    // Whole processes, spawned from a thread inside the namespace so that
    // `ip netns exec` does not add its own cost.
    let socket = agent.socket().to_path_buf();
    let runs = args.runs;
    let (check, fallback, ss) = ns.run(|| -> Result<(f64, f64, f64)> {
        let time = |mut make: Box<dyn FnMut() -> Command>, n: usize| -> Result<f64> {
            let mut t = Vec::with_capacity(n);
            for _ in 0..n {
                let started = Instant::now();
                let status = make()
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()?;
                t.push(started.elapsed());
                ensure!(status.code().is_some(), "killed");
            }
            t.sort();
            Ok(t[t.len() / 2].as_secs_f64() * 1000.0)
        };
        let check = time(
            Box::new(|| {
                let mut c = Command::new(netconn);
                c.args(["check", "--require-agent", "--socket"])
                    .arg(&socket);
                c
            }),
            runs,
        )?;
        let fallback = time(
            Box::new(|| {
                let mut c = Command::new(netconn);
                c.args(["check", "--socket", "/nonexistent/netconn.sock"]);
                c
            }),
            runs.clamp(3, 10),
        )?;
        let ss = time(
            Box::new(|| {
                let mut c = Command::new("sh");
                c.args(["-c", "ss -tan | wc -l"]);
                c
            }),
            runs.clamp(3, 10),
        )?;
        Ok((check, fallback, ss))
    })??;

    Ok(Row {
        sockets,
        query_p50_us: pct(0.5),
        query_p99_us: pct(0.99),
        query_max_us: pct(1.0),
        check_median_ms: check,
        fallback_median_ms: fallback,
        ss_median_ms: ss,
        agent_rss_kib: agent.pid().map(rss_kib).unwrap_or(0),
        refresh_ms: meta["meta"]["refresh_ms"].as_f64().unwrap_or(0.0),
        reseeds: meta["meta"]["reseeds"].as_u64().unwrap_or(0),
    })
}
