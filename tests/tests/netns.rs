//! Every network namespace: the agent, started in a private namespace of
//! its own, finds `ip netns add` namespaces and unnamed ones held by
//! `unshare --net` processes, names them (ip netns name, container from the
//! cgroup path, pid and command), counts each exactly as `ss` inside it
//! shows, learns a namespace that appears while it runs, and forgets one
//! that vanishes. Root only; a test that cannot run fails with its reason.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use netconn_tests::*;

const POPGEN: &str = env!("CARGO_BIN_EXE_popgen");
const SETTLE: Duration = Duration::from_secs(30);
/// cgroup v2 on these machines (hybrid mode); see KERNEL-NOTES.
const CGROUP2: &str = "/sys/fs/cgroup/unified";

/// An unnamed namespace, alive while its `unshare --net` process runs.
struct Unnamed {
    child: Child,
}

impl Unnamed {
    fn start() -> Result<Unnamed> {
        let own = std::fs::read_link("/proc/self/ns/net")?;
        let child = Command::new("unshare")
            .args([
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up && exec sleep 600",
            ])
            .stdin(Stdio::null())
            .spawn()
            .context("cannot run: unshare --net (needs root and util-linux)")?;
        let unnamed = Unnamed { child };
        let deadline = Instant::now() + Duration::from_secs(5);
        // Ready once it has its own namespace and lo is up (sleep runs).
        while std::fs::read_link(unnamed.path()).ok().as_ref() == Some(&own)
            || std::fs::read_to_string(format!("/proc/{}/comm", unnamed.pid()))?.trim() != "sleep"
        {
            ensure!(Instant::now() < deadline, "unshare --net did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(unnamed)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.pid())
    }

    fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(std::fs::metadata(self.path())?.ino())
    }
}

impl Drop for Unnamed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cgroup named the way a container runtime names its own, holding one
/// process; removed on drop (after the process is gone).
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn place(relative: &str, pid: u32) -> Result<Cgroup> {
        ensure!(
            std::path::Path::new(CGROUP2).join("cgroup.procs").is_file(),
            "cannot run: no cgroup v2 hierarchy at {CGROUP2}"
        );
        let dir = PathBuf::from(CGROUP2).join(relative);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cgroup = Cgroup { dir };
        std::fs::write(cgroup.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving {pid} into {}", cgroup.dir.display()))?;
        Ok(cgroup)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Innermost first; a runtime-style path has several levels.
        let mut dir = self.dir.clone();
        while dir.starts_with(CGROUP2) && dir != std::path::Path::new(CGROUP2) {
            if std::fs::remove_dir(&dir).is_err() {
                break;
            }
            dir.pop();
        }
    }
}

fn all_netns(agent: &Agent) -> Result<serde_json::Value> {
    let reply: serde_json::Value =
        serde_json::from_str(&agent.request(r#"{"cmd":"stats","all_netns":true}"#)?)?;
    ensure!(
        reply["namespaces"].is_array(),
        "not a namespaces reply: {reply}"
    );
    Ok(reply)
}

fn entry(reply: &serde_json::Value, inode: u64) -> Option<serde_json::Value> {
    reply["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["netns"] == inode)
        .cloned()
}

fn inode_of_name(name: &str) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(format!("/run/netns/{name}"))?.ino())
}

/// Wait until the agent lists `inode`, return its entry.
fn wait_listed(agent: &Agent, inode: u64, within: Duration) -> Result<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(e) = entry(&all_netns(agent)?, inode) {
            return Ok(e);
        }
        if Instant::now() > deadline {
            bail!(
                "namespace {inode} not listed within {within:?}:\n{}",
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Named, unnamed and container namespaces, each counted as `ss` inside it
/// shows, by every kind of selector; the agent's own stays the default.
#[test]
fn every_namespace_is_counted_and_named() -> Result<()> {
    require_root()?;
    let home = Netns::create("nc-home")?;
    let blue = Netns::create("nc-blue")?;
    let _home_pop = Population::start_with(
        POPGEN,
        &PopSpec {
            family: FamilySel::Both,
            listeners: 2,
            established: 20,
            ..PopSpec::default()
        },
        &PopOptions {
            netns: Some(home.name().to_string()),
            ..PopOptions::default()
        },
    )?;
    let _blue_pop = Population::start_with(
        POPGEN,
        &PopSpec {
            family: FamilySel::Both,
            listeners: 3,
            established: 50,
            close_wait: 5,
            time_wait: 7,
            fin_wait2: 4,
            udp_bound: 6,
            udp_connected: 2,
            ..PopSpec::default()
        },
        &PopOptions {
            netns: Some(blue.name().to_string()),
            ..PopOptions::default()
        },
    )?;
    let docker = Unnamed::start()?;
    let id = format!(
        "{:064x}",
        u128::from(std::process::id()) << 64 | 0xdead_beef
    );
    let _cgroup = Cgroup::place(&format!("system.slice/docker-{id}.scope"), docker.pid())?;
    let _docker_pop = Population::start_with(
        POPGEN,
        &PopSpec {
            family: FamilySel::V4,
            listeners: 1,
            established: 9,
            ..PopSpec::default()
        },
        &PopOptions {
            netns: Some(docker.path()),
            ..PopOptions::default()
        },
    )?;
    let plain = Unnamed::start()?;
    let _plain_pop = Population::start_with(
        POPGEN,
        &PopSpec {
            family: FamilySel::V6,
            established: 4,
            udp_bound: 1,
            ..PopSpec::default()
        },
        &PopOptions {
            netns: Some(plain.path()),
            ..PopOptions::default()
        },
    )?;

    let agent = Agent::start_in(Some(&home), &[])?;
    // The default is still the agent's own namespace.
    agent.assert_matches_ss(SETTLE)?;

    let blue_inode = inode_of_name(blue.name())?;
    let b = wait_listed(&agent, blue_inode, SETTLE)?;
    ensure!(b["name"] == blue.name(), "{b}");
    ensure!(b["container"].is_null(), "{b}");
    let d = wait_listed(&agent, docker.inode()?, SETTLE)?;
    ensure!(d["container"]["runtime"] == "docker", "{d}");
    ensure!(d["container"]["id"] == id.as_str(), "{d}");
    ensure!(d["name"] == format!("docker:{}", &id[..12]), "{d}");
    let p = wait_listed(&agent, plain.inode()?, SETTLE)?;
    ensure!(
        p["name"].as_str().is_some_and(|n| n.starts_with("pid ")),
        "{p}"
    );
    ensure!(p["pid"].is_u64(), "{p}");

    // Every kind of selector, each equal to ss inside that namespace.
    agent.assert_netns_matches_ss(blue.name(), blue.name(), SETTLE)?;
    agent.assert_netns_matches_ss(&blue_inode.to_string(), blue.name(), SETTLE)?;
    agent.assert_netns_matches_ss(&id[..12], &docker.path(), SETTLE)?;
    agent.assert_netns_matches_ss(&docker.pid().to_string(), &docker.path(), SETTLE)?;
    agent.assert_netns_matches_ss(&plain.inode()?.to_string(), &plain.path(), SETTLE)?;

    // The CLI: --netns by path (resolved by the client), --all-netns text.
    let bin = netconn_bin()?;
    let out = Command::new(&bin)
        .args(["stats", "--json", "--netns"])
        .arg(format!("/run/netns/{}", blue.name()))
        .arg("--socket")
        .arg(agent.socket())
        .output()?;
    ensure!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(v["meta"]["netns"] == blue_inode, "{v}");
    ensure!(v["meta"]["netns_name"] == blue.name(), "{v}");
    let out = Command::new(&bin)
        .args(["stats", "--all-netns", "--socket"])
        .arg(agent.socket())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success() && text.contains(blue.name()), "{text}");
    ensure!(text.contains(&format!("docker:{}", &id[..12])), "{text}");
    let bad = Command::new(&bin)
        .args(["stats", "--netns", "no-such-namespace", "--socket"])
        .arg(agent.socket())
        .output()?;
    let err = String::from_utf8_lossy(&bad.stderr);
    ensure!(
        bad.status.code() == Some(1)
            && err.lines().count() == 1
            && err.contains("no-such-namespace"),
        "{bad:?}"
    );
    agent.stop()?;
    Ok(())
}

/// Each runtime's cgroup naming gives the namespace of a process inside it
/// a container name: docker, containerd (CRI), CRI-O in a Kubernetes pod,
/// podman, systemd-nspawn, and a bare Kubernetes pod (cgroupfs driver).
#[test]
fn container_runtimes_are_named_from_cgroup_paths() -> Result<()> {
    require_root()?;
    let home = Netns::create("nc-home")?;
    let id = |n: u32| {
        format!(
            "{:08x}{:056x}",
            0xc0ffee00u32 + n,
            u64::from(std::process::id())
        )
    };
    let uid = format!(
        "{:08x}-1111-4222-8333-{:012x}",
        std::process::id(),
        0xabcdefu64
    );
    let cases: Vec<(String, &str, String, Option<String>)> = vec![
        (
            format!("system.slice/docker-{}.scope", id(1)),
            "docker",
            id(1),
            None,
        ),
        (
            format!("system.slice/cri-containerd-{}.scope", id(2)),
            "containerd",
            id(2),
            None,
        ),
        (
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-{}.scope",
                uid.replace('-', "_"),
                id(3)
            ),
            "cri-o",
            id(3),
            Some(uid.clone()),
        ),
        (
            format!("machine.slice/libpod-{}.scope", id(4)),
            "podman",
            id(4),
            None,
        ),
        (
            format!(
                "machine.slice/systemd-nspawn@nc{}.service/payload",
                std::process::id()
            ),
            "systemd-nspawn",
            format!("nc{}", std::process::id()),
            None,
        ),
        (
            format!("kubepods/besteffort/pod{uid}"),
            "kubernetes",
            uid.clone(),
            Some(uid.clone()),
        ),
    ];
    let mut held = Vec::new();
    for (path, ..) in &cases {
        let ns = Unnamed::start()?;
        let cgroup = Cgroup::place(path, ns.pid())?;
        held.push((ns, cgroup));
    }
    let agent = Agent::start_in(Some(&home), &[])?;
    for ((ns, _), (path, runtime, id, pod)) in held.iter().zip(&cases) {
        let e = wait_listed(&agent, ns.inode()?, SETTLE)?;
        ensure!(e["container"]["runtime"] == *runtime, "{path}: {e}");
        ensure!(e["container"]["id"] == id.as_str(), "{path}: {e}");
        match pod {
            Some(pod) => ensure!(e["container"]["pod"] == pod.as_str(), "{path}: {e}"),
            None => ensure!(e["container"].get("pod").is_none(), "{path}: {e}"),
        }
    }
    agent.stop()?;
    // Processes first, then their cgroups.
    for (ns, cgroup) in held {
        drop(ns);
        drop(cgroup);
    }
    Ok(())
}

/// A namespace that appears while the agent runs is counted within 1 s of
/// its first socket; one that vanishes is forgotten.
#[test]
fn namespaces_appear_and_vanish_while_running() -> Result<()> {
    require_root()?;
    let home = Netns::create("nc-home")?;
    let agent = Agent::start_in(Some(&home), &[])?;
    agent.assert_matches_ss(SETTLE)?;

    let late = Unnamed::start()?;
    let inode = late.inode()?;
    let pop = Population::start_with(
        POPGEN,
        &PopSpec {
            family: FamilySel::Both,
            listeners: 1,
            established: 3,
            ..PopSpec::default()
        },
        &PopOptions {
            netns: Some(late.path()),
            ..PopOptions::default()
        },
    )?;
    let first_socket = Instant::now();
    let listed = wait_listed(&agent, inode, Duration::from_secs(5))?;
    let took = first_socket.elapsed();
    eprintln!("learned a new namespace {took:?} after its population was ready");
    ensure!(took <= Duration::from_secs(1), "took {took:?}: {listed}");
    agent.assert_netns_matches_ss(&inode.to_string(), &late.path(), SETTLE)?;

    pop.stop()?;
    drop(late);
    let deadline = Instant::now() + Duration::from_secs(10);
    while entry(&all_netns(&agent)?, inode).is_some() {
        ensure!(
            Instant::now() < deadline,
            "a vanished namespace is still listed:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(agent.log().contains("is gone"), "forgetting not logged");
    agent.assert_matches_ss(SETTLE)?;
    agent.stop()?;
    Ok(())
}

/// Without CAP_SYS_ADMIN the agent cannot enter other namespaces: it says
/// so in one log line and in --all-netns, and keeps counting its own.
#[test]
fn without_cap_sys_admin_it_falls_back_to_its_own_namespace() -> Result<()> {
    require_root()?;
    let home = Netns::create("nc-home")?;
    let blue = Netns::create("nc-blue")?;
    let bin = netconn_bin()?;
    let socket = socket_path();
    let log = socket.with_extension("log");
    let mut child = home
        .command("capsh")
        .args(["--drop=cap_sys_admin", "--"])
        .arg("-c")
        .arg(format!(
            "exec {} agent --socket {}",
            bin.display(),
            socket.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("cannot run: capsh (libcap2-bin)")?;
    let deadline = Instant::now() + SETTLE;
    let reply = loop {
        let out = Command::new(&bin)
            .args(["stats", "--all-netns", "--json", "--socket"])
            .arg(&socket)
            .output()?;
        if out.status.success() {
            break serde_json::from_slice::<serde_json::Value>(&out.stdout)?;
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            bail!(
                "agent without CAP_SYS_ADMIN did not serve: {}",
                std::fs::read_to_string(&log)?
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log)?;
    let names: Vec<&str> = reply["namespaces"]
        .as_array()
        .context("no namespaces")?
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    ensure!(
        names.len() == 1,
        "only its own namespace expected: {names:?}"
    );
    ensure!(!names.contains(&blue.name()), "{names:?}");
    ensure!(
        reply["meta"]["inexact"]
            .to_string()
            .contains("CAP_SYS_ADMIN"),
        "{reply}"
    );
    ensure!(
        text.lines().filter(|l| l.contains("CAP_SYS_ADMIN")).count() == 1,
        "{text}"
    );
    Ok(())
}
