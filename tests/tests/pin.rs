//! `agent --pin`: the kernel side outlives the agent (SIGTERM or a crash),
//! keeps counting while no agent runs, and the next agent adopts it: exact
//! in its first answer, with no re-seed. Across layout versions the new
//! agent seeds its own generation and removes the old one. `netconn
//! unload` leaves nothing attached. Run as root, one at a time.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use netconn_tests::*;

const POPGEN: &str = env!("CARGO_BIN_EXE_popgen");
const SETTLE: Duration = Duration::from_secs(30);

fn in_ns(ns: &Netns) -> PopOptions {
    PopOptions {
        netns: Some(ns.name().to_string()),
        ..PopOptions::default()
    }
}

/// A pin root of the test's own (never the machine's real one), unloaded
/// at the end whatever happens.
struct PinRoot(PathBuf);

impl PinRoot {
    fn new(tag: &str) -> PinRoot {
        PinRoot(PathBuf::from(format!(
            "/sys/fs/bpf/netconn-test-{tag}-{}",
            std::process::id()
        )))
    }

    fn args(&self) -> [String; 3] {
        [
            "--pin".into(),
            "--pin-root".into(),
            self.0.display().to_string(),
        ]
    }

    fn unload(&self) -> Result<String> {
        let out = Command::new(netconn_bin()?)
            .args(["unload", "--pin-root"])
            .arg(&self.0)
            .output()
            .context("running netconn unload")?;
        ensure!(
            out.status.success(),
            "netconn unload failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(ns: &Netns, socket: &Path, root: &PinRoot, extra: &[&str]) -> Result<Agent> {
    let mut args: Vec<String> = root.args().to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Agent::start_at(Some(ns), socket.to_path_buf(), &args)
}

/// Connections opened and closed, and new ones held, while no agent runs.
fn churn_while_away(ns: &Netns) -> Result<Population> {
    let churn = Population::start_with(
        POPGEN,
        &PopSpec {
            family: FamilySel::Both,
            churn: Some(ChurnSpec {
                rate: 0,
                seconds: 2,
            }),
            ..PopSpec::default()
        },
        &in_ns(ns),
    )?;
    for i in 0..churn.len() {
        churn.wait_line(i, "churn-stopped", Duration::from_secs(30))?;
    }
    Ok(churn)
}

/// The new agent's very first answer (taken at a quiet moment: `ss` the
/// same before and after it) equals `ss` and says exact, with no re-seed.
fn first_answer_is_exact(agent: &Agent, ns: &Netns) -> Result<serde_json::Value> {
    for _ in 0..20 {
        let before = ns.ss_counts()?;
        let (counts, meta) = agent.counts()?;
        let after = ns.ss_counts()?;
        if before != after {
            // The namespace moved under the query: not the agent's fault.
            continue;
        }
        ensure!(meta["exact"] == true, "first answer not exact: {meta}");
        let diff = diff_counts(&counts, &after);
        ensure!(
            diff.is_empty(),
            "first answer differs from ss: {diff:?}\nmeta: {meta}\n{}",
            agent.log()
        );
        ensure!(meta["reseeds"] == 0, "re-seeded: {meta}");
        return Ok(meta);
    }
    bail!("ss never stood still around a query")
}

#[test]
fn restart_adopts_the_pinned_generation_without_a_gap() -> Result<()> {
    require_root()?;
    let ns = Netns::create("nc-pin")?;
    let root = PinRoot::new("adopt");
    let socket = socket_path();
    let before = netconn_programs_baseline();
    let _steady = Population::start_with(
        POPGEN,
        &PopSpec {
            family: FamilySel::Both,
            listeners: 3,
            established: 200,
            close_wait: 20,
            udp_bound: 5,
            ..PopSpec::default()
        },
        &in_ns(&ns),
    )?;
    let agent = start(&ns, &socket, &root, &[])?;
    agent.assert_matches_ss(SETTLE)?;
    let (_, meta) = agent.counts()?;
    ensure!(
        meta["pinned"]["adopted"] == false
            && meta["pinned"]["layout"] == netconn_common::LAYOUT_VERSION,
        "first agent should attach afresh: {meta}"
    );
    let mut agent = Some(agent);
    let mut held = Vec::new();
    for crash in [false, true] {
        let a = agent.take().context("no agent")?;
        let status = if crash { a.kill()? } else { a.stop()? };
        if !crash {
            ensure!(status.success(), "agent exit: {status}");
        }
        ensure!(
            netconn_programs_settle_at(before + 1),
            "the pinned program must stay attached after the agent exits (crash: {crash})"
        );
        held.push(churn_while_away(&ns)?);
        let a = start(&ns, &socket, &root, &[])?;
        let meta = first_answer_is_exact(&a, &ns).with_context(|| format!("crash: {crash}"))?;
        ensure!(
            meta["pinned"]["adopted"] == true && meta["seed"]["dumped"] == 0,
            "the restarted agent should adopt without seeding: {meta}"
        );
        ensure!(
            netconn_programs() == before + 1,
            "a second program was attached"
        );
        agent = Some(a);
    }
    let agent = agent.context("no agent")?;

    // The stream resumes: a watcher sees a connection made now.
    let mut watch = Command::new(netconn_bin()?)
        .args(["watch", "--json", "--netns", ns.name(), "--socket"])
        .arg(agent.socket())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting netconn watch")?;
    let stdout = watch.stdout.take().context("watch stdout")?;
    std::thread::sleep(Duration::from_millis(500));
    let _one = Population::start_with(
        POPGEN,
        &PopSpec {
            family: FamilySel::V4,
            established: 1,
            ..PopSpec::default()
        },
        &in_ns(&ns),
    )?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let seen = rx
        .recv_timeout(Duration::from_secs(10))
        .context("no transition streamed after adoption")?;
    let _ = watch.kill();
    let _ = watch.wait();
    ensure!(seen.contains("\"new\":"), "not a transition: {seen}");

    agent.stop()?;
    let out = root.unload()?;
    ensure!(out.contains("removed"), "unload said: {out}");
    ensure!(!root.0.exists(), "unload left {}", root.0.display());
    ensure!(
        netconn_programs_settle_at(before),
        "programs still attached after unload"
    );
    Ok(())
}

#[test]
fn upgrade_across_layouts_seeds_its_own_and_removes_the_old() -> Result<()> {
    require_root()?;
    let ns = Netns::create("nc-upgrade")?;
    let root = PinRoot::new("upgrade");
    let socket = socket_path();
    let before = netconn_programs_baseline();
    let _steady = Population::start_with(
        POPGEN,
        &PopSpec {
            family: FamilySel::Both,
            listeners: 2,
            established: 150,
            close_wait: 10,
            ..PopSpec::default()
        },
        &in_ns(&ns),
    )?;
    let old = start(&ns, &socket, &root, &["--layout-version", "999"])?;
    old.assert_matches_ss(SETTLE)?;
    old.stop()?;
    ensure!(root.0.join("layout-999").exists(), "old layout not pinned");
    let _held = churn_while_away(&ns)?;
    let new = start(&ns, &socket, &root, &[])?;
    let meta = first_answer_is_exact(&new, &ns)?;
    ensure!(
        meta["pinned"]["adopted"] == false
            && meta["pinned"]["replaced"] == serde_json::json!([999])
            && meta["seed"]["dumped"].as_u64() > Some(0),
        "the upgraded agent should seed its own generation and replace layout 999: {meta}"
    );
    ensure!(
        !root.0.join("layout-999").exists(),
        "the old layout is still pinned"
    );
    ensure!(
        netconn_programs_settle_at(before + 1),
        "the old layout's program is still attached (counting beside the new one)"
    );
    new.stop()?;
    root.unload()?;
    ensure!(
        netconn_programs_settle_at(before),
        "programs left after unload"
    );
    Ok(())
}

#[test]
fn without_pin_nothing_is_left_behind() -> Result<()> {
    require_root()?;
    let ns = Netns::create("nc-nopin")?;
    let root = PinRoot::new("none");
    let before = netconn_programs_baseline();
    let agent = Agent::start_in(Some(&ns), &["--pin-root", &root.0.display().to_string()])?;
    let (_, meta) = agent.counts()?;
    ensure!(meta.get("pinned").is_none(), "pinned without --pin: {meta}");
    agent.stop()?;
    ensure!(
        !root.0.exists(),
        "{} created without --pin",
        root.0.display()
    );
    ensure!(netconn_programs_settle_at(before), "program left attached");
    let out = root.unload()?;
    ensure!(out.contains("nothing pinned"), "unload said: {out}");
    Ok(())
}
