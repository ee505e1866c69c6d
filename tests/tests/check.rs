//! `netconn check` end to end: a known population, the real agent (and
//! the netlink fallback without one), a matrix of flags; printed counts
//! equal `ss` and exit codes follow the thresholds.

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{Result, bail, ensure};
use netconn_tests::*;

const POPGEN: &str = env!("CARGO_BIN_EXE_popgen");

fn population() -> PopSpec {
    PopSpec {
        family: FamilySel::V4,
        listeners: 20,
        established: 150,
        close_wait: 10,
        time_wait: 30,
        udp_bound: 5,
        udp_connected: 2,
        ..PopSpec::default()
    }
}

struct Outcome {
    line: String,
    code: i32,
}

fn check(ns: &Netns, socket: &std::path::Path, args: &[&str]) -> Result<Outcome> {
    let out = ns
        .command(netconn_bin()?)
        .arg("check")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(stdout.lines().count() == 1, "check printed {stdout:?}");
    Ok(Outcome {
        line: stdout.trim_end().to_string(),
        code: out.status.code().unwrap_or(-1),
    })
}

/// `'tcp_ESTABLISHED'=300 ...` -> {"tcp_ESTABLISHED": 300, ...}
fn perfdata(line: &str) -> Result<BTreeMap<String, u64>> {
    let Some((_, perf)) = line.split_once('|') else {
        bail!("no perfdata in {line:?}");
    };
    let mut out = BTreeMap::new();
    for item in perf.split_whitespace() {
        let Some((label, value)) = item.split_once('=') else {
            bail!("bad perfdata item {item:?}");
        };
        out.insert(label.trim_matches('\'').to_string(), value.parse()?);
    }
    Ok(out)
}

/// What the plugin must print for an unfiltered check, from ss: every
/// non-zero (type, state), UDP folded into NONE.
fn expected_perfdata(ss: &Counts) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (family, kind) in [(Family::Tcp4, "tcp"), (Family::Tcp6, "tcp6")] {
        for state in State::ALL {
            let n = ss.get(family, state);
            if n > 0 {
                out.insert(format!("{kind}_{}", state.name()), n);
            }
        }
    }
    for (family, kind) in [(Family::Udp4, "udp"), (Family::Udp6, "udp6")] {
        let n = ss.family_total(family);
        if n > 0 {
            out.insert(format!("{kind}_NONE"), n);
        }
    }
    out
}

/// The flag matrix; run once with the agent and once without.
fn matrix(ns: &Netns, socket: &std::path::Path, ss: &Counts) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    let all = check(ns, socket, &[])?;
    ensure!(all.code == 0, "unfiltered: {}", all.line);
    ensure!(
        perfdata(&all.line)? == expected_perfdata(ss),
        "unfiltered: {} vs ss {ss:?}",
        all.line
    );
    lines.push(all.line);

    let est = ss.get(Family::Tcp4, State::Established);
    ensure!(
        est == 300,
        "population should give 300 tcp4 ESTABLISHED, ss has {est}"
    );
    // The user's Icinga line, unchanged.
    for (args, code, line) in [
        (
            vec![
                "--conn-type=tcp",
                "--conn-status=established",
                "--warning=200",
            ],
            1,
            "tcp ESTABLISHED: 300 [WARNING]|'tcp_ESTABLISHED'=300".to_string(),
        ),
        (
            vec![
                "--conn-type",
                "tcp",
                "--conn-status",
                "established",
                "-w",
                "200",
                "-c",
                "250",
            ],
            2,
            "tcp ESTABLISHED: 300 [CRITICAL]|'tcp_ESTABLISHED'=300".to_string(),
        ),
        (
            vec!["--conn-type=tcp", "--conn-status=established", "-w", "1000"],
            0,
            "tcp ESTABLISHED: 300|'tcp_ESTABLISHED'=300".to_string(),
        ),
        (
            vec![
                "--conn-type=tcp",
                "--conn-status=established",
                "-c",
                "@250:400",
                "--no-perfdata",
            ],
            2,
            "tcp ESTABLISHED: 300 [CRITICAL]".to_string(),
        ),
        (
            vec![
                "--conn-type=tcp",
                "--conn-status=listen",
                "--conn-status=time_wait",
                "-w",
                "25",
            ],
            1,
            "tcp TIME WAIT: 30 [WARNING], tcp LISTEN: 20|'tcp_TIME_WAIT'=30 'tcp_LISTEN'=20"
                .to_string(),
        ),
        (
            vec!["--conn-type=udp", "--conn-status=none"],
            0,
            "udp NONE: 7|'udp_NONE'=7".to_string(),
        ),
        (
            vec![
                "--conn-type=tcp6",
                "--conn-status=established",
                "--conn-status=closing",
            ],
            0,
            "No connections of type \"tcp6\" in status \"established,closing\" found.".to_string(),
        ),
        (
            vec![
                "--conn-type=tcp",
                "--conn-status=established",
                "-c",
                "1",
                "--always-ok",
            ],
            0,
            "tcp ESTABLISHED: 300 [CRITICAL] (always ok)|'tcp_ESTABLISHED'=300".to_string(),
        ),
    ] {
        let got = check(ns, socket, &args)?;
        ensure!(
            got.line == line,
            "{args:?}: got {:?}, want {line:?}",
            got.line
        );
        ensure!(got.code == code, "{args:?}: exit {} want {code}", got.code);
        lines.push(got.line);
    }
    for bad in [
        vec!["--conn-status=bogus"],
        vec!["-w", "10:5"],
        vec!["--conn-type"],
        vec!["--frobnicate"],
    ] {
        let got = check(ns, socket, &bad)?;
        ensure!(got.code == 3, "{bad:?}: exit {} ({})", got.code, got.line);
    }
    Ok(lines)
}

#[test]
fn check_matches_ss_with_and_without_agent() -> Result<()> {
    require_root()?;
    let ns = Netns::create("nc-check")?;
    let _pop = Population::start_with(
        POPGEN,
        &population(),
        &PopOptions {
            netns: Some(ns.name().to_string()),
            ..PopOptions::default()
        },
    )?;
    let agent = Agent::start_in(Some(&ns), &["--group", "nogroup"])?;
    let ss = agent.assert_matches_ss(Duration::from_secs(30))?;
    let with_agent = matrix(&ns, agent.socket(), &ss)?;

    // Not root, but in the socket's group: answered by the agent.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(netconn_bin()?)
        .args(["check", "--require-agent", "--conn-type=tcp", "--socket"])
        .arg(agent.socket())
        .output()?;
    ensure!(out.status.code() == Some(0), "non-root check: {out:?}");
    ensure!(String::from_utf8_lossy(&out.stdout).contains("tcp ESTABLISHED: 300"));

    let socket = agent.socket().to_path_buf();
    agent.stop()?;
    // No agent: the same answers from one netlink dump.
    let without = matrix(&ns, &socket, &ss)?;
    ensure!(
        with_agent == without,
        "fallback differs:\n{with_agent:?}\n{without:?}"
    );
    let required = check(&ns, &socket, &["--require-agent"])?;
    ensure!(required.code == 3);
    ensure!(
        required.line == format!("UNKNOWN: no netconn agent at {}", socket.display()),
        "{}",
        required.line
    );
    Ok(())
}
