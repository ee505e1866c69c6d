//! `cargo xtask bench --part netns`: what tracking every namespace costs.
//!
//! Two set-ups, each with the agent in a private namespace of its own:
//! - many small namespaces (`ip netns add`, a population in each): seed
//!   time, agent CPU at rest, `stats --all-netns --json` time, against `ss
//!   -tan` run in every namespace;
//! - one big namespace: seed time and CPU at rest against `ss -tan` there.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use netconn_tests::{Agent, FamilySel, Netns, PopOptions, PopSpec, Population};

use crate::bench_load::{cpu_ticks, ticks_per_second};

pub struct NetnsBenchArgs {
    pub namespaces: usize,
    pub sockets_per_namespace: u32,
    pub big_sockets: u64,
    pub rest_seconds: u64,
    /// Interleaved `ss -tan` / agent start-up pairs in the big namespace.
    pub big_rounds: usize,
}

pub fn run(popgen: &Path, netconn: &Path, args: &NetnsBenchArgs) -> Result<()> {
    // SAFETY: single-threaded here; set before any thread reads it.
    unsafe { std::env::set_var("NETCONN_BIN", netconn) };
    // `--namespaces 0` skips the small namespaces: the big one alone.
    let many = match args.namespaces {
        0 => None,
        _ => Some(many_namespaces(popgen, args)?),
    };
    let big = one_big_namespace(popgen, args)?;
    println!();
    println!("netconn bench --part netns (agent in a private namespace of its own)");
    for r in many.into_iter().chain([big]) {
        println!();
        println!("{}", r.title);
        println!(
            "  namespaces {:>5}   sockets {:>8}   agent answers exact: {}",
            r.namespaces, r.sockets, r.exact
        );
        println!(
            "  seeding (start to serving): agent {:>8.2} s   ss -tan in each namespace {:>8.2} s   ratio {:>5.2}",
            r.seed_s,
            r.ss_s,
            r.seed_s / r.ss_s
        );
        if let Some(exact_s) = r.exact_s {
            println!("  start to every namespace answering exact: {exact_s:.2} s");
        }
        println!(
            "  agent CPU at rest over {} s: {:.2}% of one core",
            args.rest_seconds, r.rest_cpu_pct
        );
        if let Some((p50, max)) = r.query_ms {
            println!(
                "  stats --all-netns --json over the socket: p50 {p50:.2} ms, max {max:.2} ms"
            );
        }
    }
    Ok(())
}

struct Report {
    title: String,
    namespaces: usize,
    sockets: u64,
    exact: bool,
    /// Start to every namespace answering exact.
    exact_s: Option<f64>,
    seed_s: f64,
    ss_s: f64,
    rest_cpu_pct: f64,
    query_ms: Option<(f64, f64)>,
}

fn many_namespaces(popgen: &Path, args: &NetnsBenchArgs) -> Result<Report> {
    let home = Netns::create("ncb-home")?;
    let per = args.sockets_per_namespace;
    // Established pairs, two listeners and some UDP: nothing that changes
    // on its own, so "at rest" is at rest.
    let spec = PopSpec {
        family: FamilySel::V4,
        listeners: 2,
        established: (per.saturating_sub(2 + per / 10)) / 2,
        udp_bound: per / 10,
        ..PopSpec::default()
    };
    eprintln!(
        "bench netns: {} namespaces of {} sockets",
        args.namespaces,
        spec.total_sockets()
    );
    let started = Instant::now();
    let mut spaces = Vec::new();
    let mut pops = Vec::new();
    for _ in 0..args.namespaces {
        let ns = Netns::create("ncb")?;
        let pop = Population::start_with(
            popgen,
            &spec,
            &PopOptions {
                netns: Some(ns.name().to_string()),
                ready_timeout: Duration::from_secs(600),
                ..PopOptions::default()
            },
        )?;
        pops.push(pop);
        spaces.push(ns);
    }
    eprintln!(
        "bench netns: built in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let ss_s = time_ss(spaces.iter().map(|n| format!("/run/netns/{}", n.name())))?;
    let t = Instant::now();
    let agent = Agent::start_in(Some(&home), &[])?;
    let seed_s = t.elapsed().as_secs_f64();
    // Every namespace answered exact: seeded and its refreshed part fresh.
    let deadline = Instant::now() + Duration::from_secs(120);
    let reply = loop {
        let reply = all_netns(&agent)?;
        let all_exact = reply["namespaces"]
            .as_array()
            .is_some_and(|a| a.iter().all(|n| n["exact"] == true));
        if all_exact || Instant::now() > deadline {
            break reply;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let exact_s = t.elapsed().as_secs_f64();
    let listed = reply["namespaces"].as_array().map_or(0, Vec::len);
    ensure!(
        listed > args.namespaces,
        "agent lists {listed} namespaces, expected more than {}",
        args.namespaces
    );
    // A sample checked against ss: the first, a middle and the last.
    for ns in [
        &spaces[0],
        &spaces[spaces.len() / 2],
        &spaces[spaces.len() - 1],
    ] {
        agent.assert_netns_matches_ss(ns.name(), ns.name(), Duration::from_secs(60))?;
    }
    let exact = reply["namespaces"]
        .as_array()
        .is_some_and(|a| a.iter().all(|n| n["exact"] == true));
    let rest_cpu_pct = cpu_at_rest(&agent, args.rest_seconds)?;
    let query_ms = Some(query_times(&agent, 50)?);
    let sockets = spec.total_sockets() * args.namespaces as u64;
    agent.stop()?;
    drop(pops);
    Ok(Report {
        title: format!(
            "{} namespaces of {} sockets",
            args.namespaces,
            spec.total_sockets()
        ),
        namespaces: listed,
        sockets,
        exact,
        exact_s: Some(exact_s),
        seed_s,
        ss_s,
        rest_cpu_pct,
        query_ms,
    })
}

fn one_big_namespace(popgen: &Path, args: &NetnsBenchArgs) -> Result<Report> {
    let ns = Netns::create("ncb-big")?;
    let udp = (args.big_sockets / 7) as u32;
    let spec = PopSpec {
        family: FamilySel::V4,
        listeners: 100,
        established: ((args.big_sockets - u64::from(udp) - 100) / 2) as u32,
        udp_bound: udp,
        ..PopSpec::default()
    };
    eprintln!(
        "bench netns: one namespace of {} sockets",
        spec.total_sockets()
    );
    let _pop = Population::start_with(
        popgen,
        &spec,
        &PopOptions {
            netns: Some(ns.name().to_string()),
            ready_timeout: Duration::from_secs(900),
            ..PopOptions::default()
        },
    )?;
    // Start-up against `ss -tan`, interleaved: this machine's speed moves
    // by tens of percent within minutes, so one pair proves little.
    let path = format!("/run/netns/{}", ns.name());
    let (mut ss_times, mut seed_times) = (Vec::new(), Vec::new());
    for round in 1..=args.big_rounds.max(1) {
        let ss_s = time_ss(std::iter::once(path.clone()))?;
        let t = Instant::now();
        let agent = Agent::start_in(Some(&ns), &[])?;
        let seed_s = t.elapsed().as_secs_f64();
        eprintln!(
            "bench netns: round {round}: start to serving {seed_s:.2} s, ss -tan {ss_s:.2} s, ratio {:.2}",
            seed_s / ss_s
        );
        for line in agent.log().lines().filter(|l| l.contains("ready in")) {
            eprintln!("agent log: {line}");
        }
        ss_times.push(ss_s);
        seed_times.push(seed_s);
        agent.stop()?;
    }
    let (ss_s, seed_s) = (median(&mut ss_times), median(&mut seed_times));
    let agent = Agent::start_in(Some(&ns), &[])?;
    agent.assert_matches_ss(Duration::from_secs(120))?;
    let rest_cpu_pct = cpu_at_rest(&agent, args.rest_seconds)?;
    let (_, meta) = agent.counts()?;
    for line in agent
        .log()
        .lines()
        .filter(|l| l.contains("ready in") || l.contains("attach:"))
    {
        eprintln!("agent log: {line}");
    }
    agent.stop()?;
    Ok(Report {
        title: format!(
            "one namespace of {} sockets (medians of {} interleaved start-ups)",
            spec.total_sockets(),
            args.big_rounds.max(1)
        ),
        namespaces: 1,
        sockets: spec.total_sockets(),
        exact: meta["exact"] == true,
        exact_s: None,
        seed_s,
        ss_s,
        rest_cpu_pct,
        query_ms: None,
    })
}

/// `ss -tan` in each namespace, one after another: what a scanning
/// collector pays per pass.
fn time_ss(paths: impl Iterator<Item = String>) -> Result<f64> {
    let t = Instant::now();
    for path in paths {
        let st = Command::new("nsenter")
            .arg(format!("--net={path}"))
            .args(["--", "ss", "-tan"])
            .stdout(Stdio::null())
            .status()
            .context("running nsenter ss")?;
        ensure!(st.success(), "ss in {path} failed");
    }
    Ok(t.elapsed().as_secs_f64())
}

/// utime + stime of the agent over `seconds`, as a share of one core.
fn cpu_at_rest(agent: &Agent, seconds: u64) -> Result<f64> {
    let pid = agent.pid().context("agent has no pid")?;
    // Let the first passes after seeding settle.
    std::thread::sleep(Duration::from_secs(2));
    let ticks = || cpu_ticks(pid).context("cannot read the agent's /proc/PID/stat");
    let before = ticks()?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let spent = ticks()? - before;
    Ok(100.0 * spent as f64 / ticks_per_second() / t.elapsed().as_secs_f64())
}

fn all_netns(agent: &Agent) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &agent.request(r#"{"cmd":"stats","all_netns":true}"#)?,
    )?)
}

/// Round trips of `stats --all-netns` on one connection: p50 and max, ms.
fn query_times(agent: &Agent, n: usize) -> Result<(f64, f64)> {
    let stream = UnixStream::connect(agent.socket())?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut times = Vec::with_capacity(n);
    let mut line = String::new();
    for _ in 0..n {
        let t = Instant::now();
        writer.write_all(b"{\"cmd\":\"stats\",\"all_netns\":true}\n")?;
        line.clear();
        reader.read_line(&mut line)?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[n / 2], times[n - 1]))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
