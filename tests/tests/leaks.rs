//! Leak detection end to end: a program leaking CLOSE_WAIT sockets at a
//! steady rate on a known port is named (pid, comm, port) by the age and
//! growth rules within their windows, on `watch --alerts` and `check
//! --leaks`; the alerts clear once the sockets are closed; the same
//! connection rate without a leak raises nothing.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use netconn_tests::*;

const LEAKER: &str = env!("CARGO_BIN_EXE_leaker");

const RULES: &str = r#"
[[rule]]
name = "cw-age"
kind = "age"
family = "tcp"
state = "CLOSE_WAIT"
older_than = "3s"
severity = "critical"

[[rule]]
name = "cw-growth"
kind = "growth"
family = "tcp"
state = "CLOSE_WAIT"
per_minute = 300
window = "10s"
"#;

struct Leaker {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Leaker {
    fn start(ns: &Netns, port: u16, healthy: bool) -> Result<Leaker> {
        let mut cmd = ns.command(LEAKER);
        cmd.args(["--port", &port.to_string(), "--rate", "20"]);
        if healthy {
            cmd.arg("--healthy");
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        let stdin = child.stdin.take();
        let mut first = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut first)?;
        ensure!(first.trim() == "ready", "leaker said {first:?}");
        Ok(Leaker { child, stdin })
    }

    fn release(&mut self) -> Result<()> {
        writeln!(self.stdin.as_mut().context("stdin")?, "release")?;
        Ok(())
    }
}

impl Drop for Leaker {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `netconn watch --alerts --json`, lines collected on a thread.
fn alert_watcher(agent: &Agent) -> Result<(Child, mpsc::Receiver<serde_json::Value>)> {
    let mut child = Command::new(netconn_bin()?)
        .args(["watch", "--alerts", "--json", "--socket"])
        .arg(agent.socket())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && tx.send(v["alert"].clone()).is_err()
            {
                return;
            }
        }
    });
    Ok((child, rx))
}

/// An agent with the test's rules in a fresh namespace, and an alert
/// watcher on it. Dropping it stops the watcher and removes the rules file.
struct Lab {
    ns: Netns,
    rules: std::path::PathBuf,
    agent: Agent,
    watcher: Child,
    alerts: mpsc::Receiver<serde_json::Value>,
}

impl Lab {
    fn new(name: &str) -> Result<Lab> {
        let ns = Netns::create(name)?;
        let rules = std::env::temp_dir().join(format!("{name}-{}.toml", std::process::id()));
        std::fs::write(&rules, RULES)?;
        let agent = Agent::start_in(Some(&ns), &["--rules", rules.to_str().unwrap_or_default()])?;
        let (watcher, alerts) = alert_watcher(&agent)?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(Lab {
            ns,
            rules,
            agent,
            watcher,
            alerts,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.watcher.kill();
        let _ = self.watcher.wait();
        let _ = std::fs::remove_file(&self.rules);
    }
}

fn wait_for(
    rx: &mpsc::Receiver<serde_json::Value>,
    what: &str,
    within: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<(serde_json::Value, Duration)> {
    let started = Instant::now();
    while let Some(left) = within.checked_sub(started.elapsed()) {
        if let Ok(v) = rx.recv_timeout(left)
            && pred(&v)
        {
            return Ok((v, started.elapsed()));
        }
    }
    bail!("no {what} within {within:?}")
}

fn check_leaks(agent: &Agent) -> Result<(String, i32)> {
    let out = Command::new(netconn_bin()?)
        .args(["check", "--leaks", "--socket"])
        .arg(agent.socket())
        .output()?;
    Ok((
        String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
        out.status.code().unwrap_or(-1),
    ))
}

#[test]
fn leaking_program_is_named_and_alerts_clear() -> Result<()> {
    require_root()?;
    let lab = Lab::new("nc-leak")?;
    let (agent, alerts) = (&lab.agent, &lab.alerts);
    let mut leaker = Leaker::start(&lab.ns, 7300, false)?;
    let pid = leaker.child.id();
    // Age: the first leaked socket is 3 s old after 3 s, plus a tick.
    let (age, after) = wait_for(alerts, "age alert", Duration::from_secs(8), |a| {
        a["event"] == "fired" && a["rule"] == "cw-age"
    })?;
    eprintln!("age alert after {after:?}: {}", age["message"]);
    // Growth: 20/s = 1200/min, over a 10 s window.
    let (growth, after) = wait_for(alerts, "growth alert", Duration::from_secs(15), |a| {
        a["event"] == "fired" && a["rule"] == "cw-growth"
    })?;
    eprintln!("growth alert after {after:?}: {}", growth["message"]);
    for alert in [&age, &growth] {
        let offenders = &alert["offenders"];
        ensure!(offenders["ports"][0]["port"] == 7300, "port: {alert}");
        let process = &offenders["processes"][0];
        ensure!(process["pid"] == pid, "pid {pid}: {alert}");
        ensure!(process["comm"] == "leaker", "comm: {alert}");
        let message = alert["message"].as_str().unwrap_or_default();
        ensure!(
            message.contains("leaker") && message.contains("7300"),
            "{message}"
        );
    }
    let (line, code) = check_leaks(agent)?;
    ensure!(
        code == 2,
        "check --leaks exit {code}: {line}\nalert events since: {:?}\nagent log:\n{}",
        alerts.try_iter().collect::<Vec<_>>(),
        agent.log()
    );
    ensure!(
        line.contains("[CRITICAL]") && line.contains("leaker"),
        "{line}"
    );
    ensure!(
        agent.log().contains("alert=fired rule=cw-age"),
        "not logged"
    );

    // Close the leaked sockets (the program goes on connecting, healthily).
    leaker.release()?;
    wait_for(alerts, "age clear", Duration::from_secs(5), |a| {
        a["event"] == "cleared" && a["rule"] == "cw-age"
    })?;
    wait_for(alerts, "growth clear", Duration::from_secs(15), |a| {
        a["event"] == "cleared" && a["rule"] == "cw-growth"
    })?;
    let (line, code) = check_leaks(agent)?;
    ensure!(code == 0, "after release: {line}");
    Ok(())
}

#[test]
fn healthy_workload_at_the_same_rate_raises_nothing() -> Result<()> {
    require_root()?;
    let lab = Lab::new("nc-healthy")?;
    let _leaker = Leaker::start(&lab.ns, 7301, true)?;
    // Longer than both windows (3 s age, 10 s growth) plus ticks.
    let quiet = Duration::from_secs(15);
    if let Ok(a) = lab.alerts.recv_timeout(quiet) {
        bail!("false positive: {a}");
    }
    let (line, code) = check_leaks(&lab.agent)?;
    ensure!(
        code == 0 && line.starts_with("No connection leaks"),
        "{line}"
    );
    Ok(())
}

#[test]
fn bad_rules_file_is_one_clear_line() -> Result<()> {
    require_root()?;
    let rules = std::env::temp_dir().join(format!("netconn-rules-bad-{}.toml", std::process::id()));
    std::fs::write(
        &rules,
        "[[rule]]\nkind = \"age\"\nstate = \"CLOSE-WAIT\"\nolder_than = \"5m\"\n",
    )?;
    let out = Command::new(netconn_bin()?)
        .args(["agent", "--socket"])
        .arg(socket_path())
        .arg("--rules")
        .arg(&rules)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "{err}");
    ensure!(
        err.trim().lines().count() == 1 && err.contains("CLOSE-WAIT"),
        "{err}"
    );
    let _ = std::fs::remove_file(&rules);
    Ok(())
}

/// A rule scoped to other namespaces (`netns = "..."`) watches a leaker in
/// a namespace the agent is not in; the alert names that namespace, and a
/// rule without a scope (the agent's own namespace only) stays quiet.
#[test]
fn scoped_rule_names_the_namespace_it_fired_in() -> Result<()> {
    require_root()?;
    let home = Netns::create("nc-leakhome")?;
    let away = Netns::create("nc-leakaway")?;
    let rules = std::env::temp_dir().join(format!("nc-scoped-{}.toml", std::process::id()));
    std::fs::write(
        &rules,
        format!(
            r#"
[[rule]]
name = "away-cw-age"
kind = "age"
family = "tcp"
state = "CLOSE_WAIT"
older_than = "3s"
netns = "{}"

[[rule]]
name = "own-cw-age"
kind = "age"
family = "tcp"
state = "CLOSE_WAIT"
older_than = "3s"
"#,
            away.name()
        ),
    )?;
    let agent = Agent::start_in(
        Some(&home),
        &["--rules", rules.to_str().unwrap_or_default()],
    )?;
    let (mut watcher, alerts) = alert_watcher(&agent)?;
    let mut leaker = Leaker::start(&away, 47311, false)?;
    let (fired, _) = wait_for(&alerts, "a fired alert", Duration::from_secs(20), |a| {
        a["event"] == "fired"
    })?;
    ensure!(fired["rule"] == "away-cw-age", "{fired}");
    ensure!(fired["netns_name"] == away.name(), "{fired}");
    ensure!(fired["netns"].is_u64(), "{fired}");
    ensure!(
        fired["message"]
            .as_str()
            .is_some_and(|m| m.contains(away.name())),
        "{fired}"
    );
    let ports = fired["offenders"]["ports"].to_string();
    ensure!(
        ports.contains("47311"),
        "offenders from the other namespace: {fired}"
    );
    let (line, code) = check_leaks(&agent)?;
    ensure!(code == 1 && line.contains(away.name()), "{line}");
    leaker.release()?;
    wait_for(&alerts, "the clear", Duration::from_secs(20), |a| {
        a["event"] == "cleared" && a["netns_name"] == away.name()
    })?;
    let _ = watcher.kill();
    let _ = watcher.wait();
    let _ = std::fs::remove_file(&rules);
    agent.stop()?;
    Ok(())
}

/// A re-seed must not restart leak ages: the fresh generation's seeded
/// entries only know when they were seeded, so without the ages the
/// retired generation knew, every age alert would clear and `check
/// --leaks` drop from critical. The re-seed is forced from another
/// namespace the agent tracks, by a socket that changes family without an
/// event (IPV6_ADDRFORM), so the leak itself is left alone.
#[test]
fn leak_ages_survive_a_reseed() -> Result<()> {
    use std::net::{TcpListener, TcpStream};
    require_root()?;
    let lab = Lab::new("nc-leak-reseed")?;
    let _leaker = Leaker::start(&lab.ns, 7320, false)?;
    wait_for(&lab.alerts, "age alert", Duration::from_secs(8), |a| {
        a["event"] == "fired" && a["rule"] == "cw-age"
    })?;

    let other = Netns::create("nc-leak-af")?;
    let _held = other.run(|| -> Result<_> {
        let listener = TcpListener::bind("[::]:0")?;
        let port = listener.local_addr()?.port();
        let client = TcpStream::connect(("::ffff:127.0.0.1", port))?;
        let (server, _) = listener.accept()?;
        // The agent must have seen the v6 pair before it changes family.
        std::thread::sleep(Duration::from_millis(1500));
        ipv6_addrform_to_v4(&client)?;
        Ok((listener, client, server))
    })??;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, meta) = lab.agent.counts()?;
        if meta["reseeds_total"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no re-seed within 30 s: {meta}\nagent log:\n{}",
            lab.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cleared = wait_for(
        &lab.alerts,
        "age alert cleared",
        Duration::from_secs(3),
        |a| a["event"] == "cleared" && a["rule"] == "cw-age",
    );
    ensure!(
        cleared.is_err(),
        "the age alert cleared after the re-seed: {cleared:?}\nagent log:\n{}",
        lab.agent.log()
    );
    let (line, code) = check_leaks(&lab.agent)?;
    ensure!(
        code == 2,
        "check --leaks exit {code} after the re-seed: {line}\nagent log:\n{}",
        lab.agent.log()
    );
    Ok(())
}
