//! `netconn agent --metrics` against the real thing: Debian's Prometheus
//! server scrapes an agent in a fresh namespace holding a known population,
//! and PromQL over its HTTP API must return what `ss` counts, per family and
//! state, for the agent's namespace and for a second one it tracks (found
//! and named by the agent, like every namespace on the host). promtool
//! checks the exposition and the rules file; the dashboard's queries run
//! against the same server.
//!
//! These tests fail, never skip, when they cannot run (not root, Prometheus
//! missing): `cargo xtask test` provides both.

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::{SocketAddr, TcpStream},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use netconn_tests::{prom::Prometheus, *};

const POPGEN: &str = env!("CARGO_BIN_EXE_popgen");
/// Inside a fresh namespace every port is free: the documented ones.
const AGENT_ADDR: &str = "127.0.0.1:9977";
const PROMETHEUS_ADDR: &str = "127.0.0.1:9090";
const SETTLE: Duration = Duration::from_secs(30);

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("constant address")
}

/// What the metrics test needs, or why it cannot run.
fn require_all() -> Result<()> {
    require_root()?;
    prom::require_tool("prometheus")?;
    prom::require_tool("promtool")
}

/// The metric's lowercase state label (node_exporter's spelling) -> state.
fn label_state(label: &str) -> Option<State> {
    State::ALL
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(label))
}

/// Inode of an `ip netns` namespace (the `netns` label).
fn inode_of_name(name: &str) -> Result<u64> {
    Ok(std::fs::metadata(format!("/run/netns/{name}"))?.ino())
}

/// One namespace's `netconn_sockets` as Prometheus returns it, and how many
/// series it has; every series must carry the namespace's name and an
/// empty container label (an `ip netns` namespace holds no container).
fn sockets_from_prometheus(
    prom: &Prometheus,
    ns: &Netns,
    netns: u64,
    name: &str,
) -> Result<(Counts, usize)> {
    let result = prom.query(ns, &format!(r#"netconn_sockets{{netns="{netns}"}}"#))?;
    let mut counts = Counts::default();
    let mut series = BTreeSet::new();
    for sample in &result {
        let labels = &sample["metric"];
        ensure!(
            labels["netns_name"] == name && labels["container"].as_str().unwrap_or("").is_empty(),
            "netns {netns} should be named {name:?} with no container: {sample}"
        );
        let family = labels["family"].as_str().unwrap_or_default();
        let state = labels["state"].as_str().unwrap_or_default();
        let Some(family) = Family::from_name(family) else {
            bail!("unknown family label {family:?}");
        };
        let Some(state) = label_state(state) else {
            bail!("unknown state label {state:?}");
        };
        let Some(value) = prom::sample_value(sample) else {
            bail!("no value in {sample}");
        };
        counts.set(family, state, value as u64);
        series.insert((family, state));
    }
    Ok((counts, series.len()))
}

/// Poll until Prometheus' `netconn_sockets` of one namespace equals `ss`
/// there, at a moment `ss` is the same before and after the query; returns
/// the counts and the namespace's series count.
fn prometheus_matches_ss(
    prom: &Prometheus,
    ns: &Netns,
    netns: u64,
    name: &str,
) -> Result<(Counts, usize)> {
    // The agent lags ss by up to its refresh interval, and Prometheus by a
    // scrape interval: a few rounds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = ss_counts_in(Some(name))?;
        let (got, series) = sockets_from_prometheus(prom, ns, netns, name)?;
        let after = ss_counts_in(Some(name))?;
        let diff = diff_counts_labeled(&got, "prometheus", &after, "ss");
        if before == after && diff.is_empty() {
            return Ok((after, series));
        }
        if Instant::now() > deadline {
            bail!("Prometheus' netconn_sockets of {name} ({netns}) differs from ss: {diff:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Wait until Prometheus has scraped the agent successfully `n` times.
fn wait_scrapes(prom: &Prometheus, ns: &Netns, n: f64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = prom
            .query(ns, r#"sum_over_time(up{job="netconn"}[1m])"#)?
            .first()
            .and_then(prom::sample_value)
            .unwrap_or(0.0);
        if got >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            let targets = prom.api(ns, "/api/v1/targets").unwrap_or_default();
            bail!("only {got} successful scrapes after {timeout:?}; targets: {targets}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The exposition as a plain scraper (no Accept header) gets it, through
/// `promtool check metrics`.
fn promtool_check_metrics(ns: &Netns) -> Result<String> {
    let agent = addr(AGENT_ADDR);
    let reply = ns.run(move || http::get(agent, "/metrics"))??;
    ensure!(reply.status == 200, "GET /metrics: {}", reply.status);
    ensure!(
        reply.header("content-type") == Some("text/plain; version=0.0.4; charset=utf-8"),
        "content type {:?}",
        reply.header("content-type")
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(reply.body.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        reply.body
    );
    Ok(reply.body)
}

/// Every rule of the rules file loaded and evaluated without error.
fn rules_evaluate_cleanly(prom: &Prometheus, ns: &Netns) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let data = prom.api(ns, "/api/v1/rules")?;
        let rules: Vec<&serde_json::Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let bad: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{} ({}: {})", r["name"], r["health"], r["lastError"]))
            .collect();
        if !rules.is_empty() && bad.is_empty() {
            return Ok(rules.len());
        }
        if Instant::now() > deadline {
            bail!("rules not all healthy: {bad:?} of {} rules", rules.len());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The dashboard's queries, with Grafana's variables filled in.
fn dashboard_queries() -> Result<Vec<(String, String)>> {
    let path = repo_file("deploy/grafana/netconn.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let dashboard: serde_json::Value = serde_json::from_str(&text)?;
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let filled = expr
                .replace("$__rate_interval", "1m")
                .replace("$__range", "5m")
                .replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$netns_name", ".*")
                .replace("$family", ".*");
            out.push((panel["title"].as_str().unwrap_or("?").to_string(), filled));
        }
    }
    Ok(out)
}

/// Prometheus scrapes the agent; `netconn_sockets` equals `ss` per family x
/// state; promtool accepts the exposition and the rules; the rules and the
/// dashboard's queries run against the server without error.
#[test]
fn prometheus_scrapes_match_ss() -> Result<()> {
    require_all()?;
    let rules = repo_file("deploy/prometheus/netconn-rules.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()?;
    ensure!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let ns = Netns::create("nc-metrics")?;
    // Prometheus first: it is the slow one to start, and the population's
    // TIME_WAIT sockets only last a minute.
    let prom = Prometheus::start_in(
        &ns,
        addr(PROMETHEUS_ADDR),
        &[addr(AGENT_ADDR)],
        &[rules.as_path()],
    )?;
    let spec = PopSpec {
        family: FamilySel::Both,
        listeners: 4,
        established: 60,
        close_wait: 7,
        time_wait: 12,
        fin_wait2: 3,
        udp_bound: 5,
        udp_connected: 2,
        ..PopSpec::default()
    };
    let pop = Population::start_with(
        POPGEN,
        &spec,
        &PopOptions {
            netns: Some(ns.name().to_string()),
            ..PopOptions::default()
        },
    )?;
    // A second namespace the agent finds by itself, as it finds every one:
    // no TIME_WAIT there, so its counts hold still while compared.
    let other = Netns::create("nc-metrics-other")?;
    let other_spec = PopSpec {
        family: FamilySel::Both,
        listeners: 2,
        established: 5,
        close_wait: 3,
        udp_bound: 2,
        ..PopSpec::default()
    };
    let other_pop = Population::start_with(
        POPGEN,
        &other_spec,
        &PopOptions {
            netns: Some(other.name().to_string()),
            ..PopOptions::default()
        },
    )?;
    let agent = Agent::start_in(Some(&ns), &["--metrics", AGENT_ADDR])?;
    agent.assert_matches_ss(SETTLE)?;
    agent.assert_netns_matches_ss(other.name(), other.name(), SETTLE)?;
    let netns = inode_of_name(ns.name())?;
    let other_netns = inode_of_name(other.name())?;
    let (_, meta) = agent.counts()?;
    ensure!(meta["netns"] == netns, "agent's namespace: {meta}");

    wait_scrapes(&prom, &ns, 2.0, SETTLE)
        .with_context(|| format!("agent log:\n{}", agent.log()))?;
    // The agent's own namespace (not the host here): all 44 series.
    let (seen, series) = prometheus_matches_ss(&prom, &ns, netns, ns.name())?;
    ensure!(
        series == 44,
        "the agent's namespace must have all 4 x 11 series, zeros included; got {series}"
    );
    // Besides the population: the agent's and Prometheus' listeners, the
    // scrape connection and the test's API connection (both ends each).
    let mut ours = Counts::default();
    ours.set(Family::Tcp4, State::Listen, 2);
    ours.set(Family::Tcp4, State::Established, 4);
    let expected = add_counts(pop.expected(), &ours);
    let diff = diff_counts_labeled(&expected, "expected", &seen, "ss");
    ensure!(
        diff.is_empty(),
        "the namespace holds more than expected: {diff:?}"
    );
    // The other namespace: under its ip netns name, only non-zero series.
    let (other_seen, other_series) = prometheus_matches_ss(&prom, &ns, other_netns, other.name())?;
    let nonzero = other_seen.cells().filter(|&(_, _, n)| n > 0).count();
    ensure!(
        other_series == nonzero,
        "{} should export only its {nonzero} non-zero series, not {other_series}",
        other.name()
    );
    ensure!(
        diff_counts_labeled(other_pop.expected(), "expected", &other_seen, "ss").is_empty(),
        "{} holds other sockets than its population: {other_seen:?}",
        other.name()
    );
    // The host namespace (the initial one) always has all 44 series.
    let host = prom.query(&ns, r#"count(netconn_sockets{netns_name="host"})"#)?;
    ensure!(
        host.first().and_then(prom::sample_value) == Some(44.0),
        "host series: {host:?}"
    );

    for (promql, want) in [
        (format!(r#"netconn_counts_exact{{netns="{netns}"}}"#), 1.0),
        (
            format!(r#"netconn_counts_exact{{netns="{other_netns}"}}"#),
            1.0,
        ),
        (r#"up{job="netconn"}"#.to_string(), 1.0),
        ("netconn_reseeds_total".to_string(), 0.0),
        ("netconn_events_missed_total".to_string(), 0.0),
        ("netconn_watch_dropped_total".to_string(), 0.0),
        (r#"count(netconn_build_info{version!=""})"#.to_string(), 1.0),
    ] {
        let got = prom.query(&ns, &promql)?;
        let value = got.first().and_then(prom::sample_value);
        ensure!(value == Some(want), "{promql}: {got:?}, want {want}");
    }
    for promql in [
        "process_resident_memory_bytes > 0",
        "process_open_fds > 0",
        // A fresh agent may not have used a whole clock tick of CPU yet.
        "process_cpu_seconds_total >= 0",
        "process_start_time_seconds > time() - 3600",
        "process_max_fds >= process_open_fds",
        "netconn_refresh_age_seconds < 1.5",
    ] {
        ensure!(
            prom.query(&ns, promql)?.len() == 1,
            "{promql} has no result"
        );
    }

    let exposition = promtool_check_metrics(&ns)?;
    ensure!(exposition.contains("# TYPE netconn_sockets gauge"));
    let healthy = rules_evaluate_cleanly(&prom, &ns)?;
    ensure!(healthy == 7, "7 rules expected, {healthy} loaded");
    for (panel, expr) in dashboard_queries()? {
        prom.query(&ns, &expr)
            .with_context(|| format!("dashboard panel {panel:?}"))?;
    }
    agent.stop()?;
    drop(pop);
    drop(other_pop);
    Ok(())
}

/// Wrong paths get 404, wrong methods 405, garbage 400; a client that
/// never finishes its request does not hold up others; the agent keeps
/// serving metrics and its socket throughout.
#[test]
fn bad_requests_are_refused_and_the_agent_keeps_serving() -> Result<()> {
    require_root()?;
    let ns = Netns::create("nc-metrics-bad")?;
    let agent = Agent::start_in(Some(&ns), &["--metrics", AGENT_ADDR])?;
    let a = addr(AGENT_ADDR);
    ns.run(move || -> Result<()> {
        // Holds a connection open with half a request all along.
        let mut stalled = TcpStream::connect(a)?;
        stalled.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")?;

        for (method, path, status) in [
            ("GET", "/nope", 404),
            ("GET", "/metrics/x", 404),
            ("POST", "/metrics", 405),
            ("DELETE", "/metrics", 405),
            ("PUT", "/", 405),
            ("GET", "/", 200),
            ("HEAD", "/metrics", 200),
        ] {
            let reply = http::request(a, method, path, &[])?;
            ensure!(
                reply.status == status,
                "{method} {path}: {} want {status}",
                reply.status
            );
            if status == 405 {
                ensure!(
                    reply.header("allow") == Some("GET, HEAD"),
                    "{method} {path}"
                );
            }
        }
        let index = http::get(a, "/")?;
        ensure!(index.body.contains("href=\"/metrics\""), "{}", index.body);
        let garbage = http::send_raw(a, b"\x16\x03\x01 not http at all\r\n\r\n")?;
        ensure!(garbage.status == 400, "garbage: {}", garbage.status);

        let text = http::get(a, "/metrics")?;
        ensure!(text.status == 200);
        ensure!(text.body.contains("netconn_sockets{"), "{}", text.body);
        let om = http::request(
            a,
            "GET",
            "/metrics",
            &[(
                "Accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )],
        )?;
        ensure!(
            om.header("content-type")
                == Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            "{:?}",
            om.header("content-type")
        );
        ensure!(om.body.ends_with("# EOF\n"), "OpenMetrics without EOF");
        drop(stalled);
        Ok(())
    })??;
    agent.assert_matches_ss(SETTLE)?;

    // Start-up errors are one line and exit 1: a bad address, a taken port.
    let bin = netconn_bin()?;
    for (metrics, want) in [
        (
            "localhost:9977",
            "netconn: bad --metrics address \"localhost:9977\": expected IP:PORT, e.g. 127.0.0.1:9977"
                .to_string(),
        ),
        (
            AGENT_ADDR,
            format!("netconn: cannot serve metrics on {AGENT_ADDR}: address already in use"),
        ),
    ] {
        let socket = socket_path();
        let out = ns
            .command(&bin)
            .args(["agent", "--socket"])
            .arg(&socket)
            .args(["--metrics", metrics])
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(1), "{metrics}: {out:?}");
        ensure!(stderr.trim_end() == want, "{metrics}: stderr {stderr:?}");
        ensure!(!socket.exists(), "left {} behind", socket.display());
    }
    agent.stop()?;
    Ok(())
}

/// The dashboard is Grafana JSON over these metrics with a data source
/// variable (no root needed: a file check).
#[test]
fn dashboard_uses_the_datasource_variable_and_known_metrics() -> Result<()> {
    let path = repo_file("deploy/grafana/netconn.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let variables = dashboard["templating"]["list"]
        .as_array()
        .context("no templating list")?;
    ensure!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
        "no datasource variable"
    );
    ensure!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let known = [
        "netconn_sockets",
        "netconn_transitions_total",
        "netconn_counts_exact",
        "netconn_refresh_age_seconds",
        "netconn_reseeds_total",
        "netconn_events_missed_total",
        "netconn_watch_dropped_total",
        "netconn_leak_alert_active",
        "netconn_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ];
    let mut ids = BTreeSet::new();
    let queries = dashboard_queries()?;
    ensure!(queries.len() >= 10, "only {} queries", queries.len());
    for panel in dashboard["panels"].as_array().context("no panels")? {
        ensure!(
            ids.insert(panel["id"].as_u64()),
            "duplicate panel id {panel}"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        ensure!(
            matches!((x, w), (Some(x), Some(w)) if x + w <= 24),
            "panel outside the 24-column grid: {panel}"
        );
        if panel["type"] == "row" {
            continue;
        }
        ensure!(
            panel["datasource"]["uid"] == "${datasource}",
            "panel {} does not use the datasource variable",
            panel["title"]
        );
        for target in panel["targets"]
            .as_array()
            .context("panel without targets")?
        {
            let expr = target["expr"].as_str().unwrap_or_default();
            ensure!(
                known.iter().any(|m| expr.contains(m)),
                "{expr:?} uses none of netconn's metrics"
            );
        }
    }
    Ok(())
}

/// `netconn_transitions_total` counts what the kernel program saw: a
/// connection made and closed on loopback in the agent's namespace moves
/// the counters of its transitions by at least one each.
#[test]
fn transitions_total_counts_the_kernel_transitions() -> Result<()> {
    require_root()?;
    let ns = Netns::create("nc-metrics-tr")?;
    let agent = Agent::start_in(Some(&ns), &["--metrics", AGENT_ADDR])?;
    let a = addr(AGENT_ADDR);
    let cell = |body: &str, from: &str, to: &str| -> u64 {
        let want =
            format!(r#"netconn_transitions_total{{family="tcp4",from="{from}",to="{to}"}} "#);
        body.lines()
            .find_map(|l| l.strip_prefix(want.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    };
    let before = ns.run(move || http::get(a, "/metrics").map(|r| r.body))??;
    ns.run(|| -> Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        drop(client);
        drop(server);
        Ok(())
    })??;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = ns.run(move || http::get(a, "/metrics").map(|r| r.body))??;
        let moved: Vec<(&str, &str)> = [
            ("close", "syn_sent"),
            ("syn_sent", "established"),
            ("syn_recv", "established"),
            ("established", "fin_wait1"),
            ("established", "close_wait"),
        ]
        .into_iter()
        .filter(|(from, to)| cell(&after, from, to) <= cell(&before, from, to))
        .collect();
        if moved.is_empty() {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "transitions not counted: {moved:?}\n{after}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.stop()?;
    Ok(())
}
