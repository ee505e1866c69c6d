//! `netconn watch` end to end: scripted connections in a namespace, the
//! real program and agent; each watcher receives exactly the expected
//! transitions, filters apply, and a stalled watcher is told what it lost
//! while the others lose nothing.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixStream,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use netconn_tests::*;

const POPGEN: &str = env!("CARGO_BIN_EXE_popgen");

/// A `netconn watch --json` process whose lines are collected on a thread.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    fn start(agent: &Agent, args: &[&str]) -> Result<Watcher> {
        let mut child = Command::new(netconn_bin()?)
            .args(["watch", "--json", "--socket"])
            .arg(agent.socket())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // Raw lines: parsing here would make the test the slow reader.
            for line in BufReader::with_capacity(1 << 16, stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Watcher { child, lines })
    }

    /// Everything received until nothing new arrives for `quiet`.
    fn drain_raw(&self, quiet: Duration) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(v) = self.lines.recv_timeout(quiet) {
            out.push(v);
        }
        out
    }

    fn drain(&self, quiet: Duration) -> Vec<serde_json::Value> {
        self.drain_raw(quiet)
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until the agent has switched the stream on (a watcher counted).
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

type Key = (String, String, String); // (family, old, new)

fn key(v: &serde_json::Value) -> Key {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (s("family"), s("old"), s("new"))
}

fn tally(events: &[serde_json::Value]) -> BTreeMap<Key, usize> {
    let mut out = BTreeMap::new();
    for e in events {
        *out.entry(key(e)).or_default() += 1;
    }
    out
}

fn expected(family: &str, with_refused: bool) -> BTreeMap<Key, usize> {
    let mut out = BTreeMap::new();
    let mut add = |old: &str, new: &str| {
        *out.entry((family.to_string(), old.to_string(), new.to_string()))
            .or_default() += 1;
    };
    // listener
    add("CLOSE", "LISTEN");
    add("LISTEN", "CLOSE");
    // client (closes first)
    add("CLOSE", "SYN_SENT");
    add("SYN_SENT", "ESTABLISHED");
    add("ESTABLISHED", "FIN_WAIT1");
    add("FIN_WAIT1", "FIN_WAIT2");
    add("FIN_WAIT2", "CLOSE");
    // accepted server side
    add("LISTEN", "SYN_RECV");
    add("SYN_RECV", "ESTABLISHED");
    add("ESTABLISHED", "CLOSE_WAIT");
    add("CLOSE_WAIT", "LAST_ACK");
    add("LAST_ACK", "CLOSE");
    if with_refused {
        add("CLOSE", "SYN_SENT");
        add("SYN_SENT", "CLOSE");
    }
    out
}

/// One connection: listen, connect, accept, client closes, server closes.
/// Returns (listener port, client's ephemeral port).
fn converse(listen: &str) -> Result<(u16, u16)> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let client = TcpStream::connect(addr)?;
    let client_port = client.local_addr()?.port();
    let (server, _) = listener.accept()?;
    drop(client);
    // Let the FIN arrive so the server side sees CLOSE_WAIT before closing.
    std::thread::sleep(Duration::from_millis(50));
    drop(server);
    std::thread::sleep(Duration::from_millis(50));
    drop(listener);
    Ok((addr.port(), client_port))
}

#[test]
fn watch_streams_exact_transitions_with_filters() -> Result<()> {
    require_root()?;
    let ns = Netns::create("nc-watch")?;
    let agent = Agent::start_in(Some(&ns), &[])?;
    let (_, meta) = agent.counts()?;
    let netns = meta["netns"].to_string();
    let all = Watcher::start(&agent, &["--netns", &netns])?;
    let v4_port = Watcher::start(&agent, &["--netns", &netns, "--port", "7101"])?;
    let v6_only = Watcher::start(&agent, &["--netns", &netns, "--family", "6"])?;
    let syn = Watcher::start(&agent, &["--netns", &netns, "--state", "syn_recv"])?;
    settle();

    let me = std::process::id();
    let ((p4, c4), (p6, c6)) = ns.run(|| -> Result<_> {
        let v4 = converse("127.0.0.1:7101")?;
        let v6 = converse("[::1]:7102")?;
        // Refused: nothing listens on 7103.
        ensure!(
            TcpStream::connect("127.0.0.1:7103").is_err(),
            "7103 should refuse"
        );
        Ok((v4, v6))
    })??;
    ensure!((p4, p6) == (7101, 7102));

    let events = all.drain(Duration::from_secs(2));
    let mut want = expected("tcp4", true);
    want.extend(expected("tcp6", false));
    ensure!(
        tally(&events) == want,
        "all: got {:#?}\nwant {want:#?}",
        tally(&events)
    );

    // Addresses and ports: every event names the right endpoints once the
    // kernel has assigned them (the first SYN_SENT has no local port yet,
    // and a listener has no peer).
    for e in &events {
        let fam = e["family"].as_str().unwrap_or_default();
        let lo = if fam == "tcp4" { "127.0.0.1" } else { "::1" };
        ensure!(e["laddr"] == lo, "laddr in {e}");
        let (lport, rport) = (e["lport"].as_u64(), e["rport"].as_u64());
        let ports = [p4, c4, p6, c6, 7103].map(|p| Some(u64::from(p)));
        // The refused connect's ephemeral port is never known to the test.
        let refused = rport == Some(7103);
        ensure!(
            ports.contains(&lport) || lport == Some(0) || refused,
            "lport in {e}"
        );
        if e["old"] != "CLOSE" || e["new"] != "LISTEN" {
            ensure!(
                ports.contains(&rport) || e["new"] == "CLOSE" && rport == Some(0),
                "rport in {e}"
            );
        }
        if e["old"] == "SYN_RECV" {
            ensure!(e["ms"].as_f64() >= Some(0.0), "ms in {e}");
        }
    }
    // The server side's first transition runs in softirq: no owner; the
    // client's connect runs in this test process: named.
    let accepted = events
        .iter()
        .find(|e| e["old"] == "LISTEN" && e["new"] == "SYN_RECV")
        .context("no LISTEN -> SYN_RECV")?;
    ensure!(
        accepted["pid"].is_null() && accepted["comm"].is_null(),
        "{accepted}"
    );
    let connect = events
        .iter()
        .find(|e| e["new"] == "SYN_SENT" && e["rport"] == 7101)
        .context("no connect")?;
    ensure!(connect["pid"] == me, "connect pid {connect} vs {me}");
    let established = events
        .iter()
        .find(|e| e["old"] == "ESTABLISHED" && e["new"] == "CLOSE_WAIT" && e["family"] == "tcp4")
        .context("no CLOSE_WAIT")?;
    ensure!(
        established["lport"] == 7101 && established["rport"] == c4,
        "{established}"
    );
    ensure!(established["raddr"] == "127.0.0.1");
    let ms = established["ms"].as_f64().unwrap_or(0.0);
    ensure!(ms > 0.0 && ms < 5000.0, "time in ESTABLISHED {ms}");

    let got = tally(&v4_port.drain(Duration::from_millis(500)));
    let want4 = expected("tcp4", false);
    ensure!(got == want4, "--port 7101: got {got:#?}");
    let got = tally(&v6_only.drain(Duration::from_millis(500)));
    ensure!(got == expected("tcp6", false), "--family 6: got {got:#?}");
    let got = syn.drain(Duration::from_millis(500));
    ensure!(
        got.len() == 4
            && got
                .iter()
                .all(|e| e["old"] == "SYN_RECV" || e["new"] == "SYN_RECV"),
        "--state syn_recv: {got:?}"
    );
    agent.stop()?;
    Ok(())
}

#[test]
fn stalled_watcher_is_told_and_others_lose_nothing() -> Result<()> {
    require_root()?;
    let ns = Netns::create("nc-stall")?;
    let agent = Agent::start_in(Some(&ns), &[])?;
    let (_, meta) = agent.counts()?;
    let netns = meta["netns"].to_string();
    let fast_a = Watcher::start(&agent, &["--netns", &netns])?;
    let fast_b = Watcher::start(&agent, &["--netns", &netns])?;
    // The stalled watcher: asks, then reads nothing until the churn is over.
    let mut stalled = UnixStream::connect(agent.socket())?;
    writeln!(
        stalled,
        r#"{{"cmd":"watch","filter":{{"netns":[{netns}]}}}}"#
    )?;
    settle();

    // ~10 transitions per connection: well past the 65,536-line queue.
    let churn = Population::start_with(
        POPGEN,
        &PopSpec {
            churn: Some(ChurnSpec {
                rate: 20_000,
                seconds: 2,
            }),
            natural_exit: true,
            ..PopSpec::default()
        },
        &PopOptions {
            netns: Some(ns.name().to_string()),
            ..PopOptions::default()
        },
    )?;
    churn.wait_line(0, "churn-stopped", Duration::from_secs(60))?;
    let a = fast_a.drain_raw(Duration::from_secs(2));
    let b = fast_b.drain_raw(Duration::from_millis(500));
    let drops: Vec<_> = a
        .iter()
        .chain(b.iter())
        .filter(|e| e.starts_with("{\"dropped\""))
        .collect();
    ensure!(drops.is_empty(), "fast watchers dropped events: {drops:?}");
    ensure!(a.len() > 2 * 65_536, "only {} events", a.len());
    ensure!(
        a.len() == b.len(),
        "fast watchers differ: {} vs {}",
        a.len(),
        b.len()
    );

    // Now read everything: what it got plus what it was told it lost must
    // be exactly what the fast watchers got. Nothing is lost silently.
    stalled.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut reader = BufReader::with_capacity(1 << 16, stalled);
    let mut line = String::new();
    let (mut events, mut dropped, mut reports) = (0u64, 0u64, 0);
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => bail!("stream ended"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
        if line.starts_with("{\"dropped\"") {
            let v: serde_json::Value = serde_json::from_str(&line)?;
            dropped += v["dropped"].as_u64().context("dropped count")?;
            reports += 1;
        } else {
            events += 1;
        }
    }
    ensure!(
        reports >= 1 && dropped > 0,
        "the stalled watcher was never told"
    );
    ensure!(
        events + dropped == a.len() as u64,
        "stalled: {events} received + {dropped} reported dropped != {} delivered to others",
        a.len()
    );
    agent.stop()?;
    Ok(())
}
