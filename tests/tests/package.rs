//! The Debian package end to end, on this machine: `cargo xtask dist` builds
//! it from this tree, `dpkg -i` installs it, and from the installed paths the
//! binary runs, `man` finds every page, the completions load, the unit passes
//! `systemd-analyze verify` and rates at most "OK" offline, every file of
//! deploy/ is shipped, and the agent serves a member of group `netconn` while
//! running as the packaged user with only the unit's capabilities. Then
//! `dpkg --purge` must leave none of the package's files or symlinks behind.
//!
//! It refuses to touch a `netconn` package that is already installed. The
//! `netconn` system user and group stay after a purge, as Debian leaves
//! system users (files may still belong to them).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail, ensure};
use netconn_tests::require_root;

const PACKAGE: &str = "netconn";
const BIN: &str = "/usr/bin/netconn";
const UNIT: &str = "/usr/lib/systemd/system/netconn.service";
const SYSUSERS: &str = "/usr/lib/sysusers.d/netconn.conf";
const ENABLED: &str = "/etc/systemd/system/multi-user.target.wants/netconn.service";
const DSH_STATE: &str = "/var/lib/systemd/deb-systemd-helper-enabled/netconn.service.dsh-also";
const SHARE: &str = "/usr/share/netconn";
const COMPLETIONS: [&str; 3] = [
    "/usr/share/bash-completion/completions/netconn",
    "/usr/share/zsh/vendor-completions/_netconn",
    "/usr/share/fish/vendor_completions.d/netconn.fish",
];
const PAGES: [&str; 6] = [
    "netconn",
    "netconn-agent",
    "netconn-stats",
    "netconn-watch",
    "netconn-check",
    "netconn-completions",
];

#[test]
fn package_installs_runs_and_purges_clean() -> Result<()> {
    require_root()?;
    require_tools()?;
    if let Some(status) = package_status()? {
        bail!(
            "cannot run: package {PACKAGE} is already on this machine ({status}); this test \
             installs and purges its own build, so remove it first: dpkg --purge {PACKAGE}"
        );
    }
    let started = SystemTime::now();
    let deb = build_package()?;
    let written = std::fs::metadata(&deb)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading {}", deb.display()))?;
    ensure!(
        written >= started,
        "{} was not written by this run's dist build",
        deb.display()
    );

    let installed = Installed::install(&deb)?;
    check_binary()?;
    check_man_pages()?;
    check_completions()?;
    check_unit()?;
    check_deploy_files()?;
    check_agent_as_packaged_user()?;

    let files = installed.files()?;
    ensure!(
        files.iter().any(|f| f == Path::new(BIN)),
        "dpkg -L does not list {BIN}: {files:?}"
    );
    installed.purge()?;
    check_purged(&files)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn run(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {shown}"))
}

/// `cmd`'s stdout; an error with its stderr when it fails.
fn stdout_of(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn require_tools() -> Result<()> {
    for (tool, why) in [
        ("dpkg", "installs the package (Debian or Ubuntu only)"),
        ("dpkg-query", "lists what the package installed"),
        ("man", "finds the installed pages (apt-get install man-db)"),
        (
            "systemd-analyze",
            "verifies the installed unit (apt-get install systemd)",
        ),
        (
            "setpriv",
            "runs the agent as the packaged user (util-linux)",
        ),
        ("bash", "loads the bash completions"),
    ] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            bail!("cannot run: {tool} not found; it {why}");
        }
    }
    Ok(())
}

/// dpkg's status of the package, None when dpkg knows nothing of it.
fn package_status() -> Result<Option<String>> {
    let out = run(Command::new("dpkg-query").args(["-W", "-f=${Status}", PACKAGE]))?;
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // "unknown ok not-installed" is what dpkg keeps after a purge.
    if !out.status.success() || status.is_empty() || status.ends_with("not-installed") {
        return Ok(None);
    }
    Ok(Some(status))
}

/// Build the package from this tree the way a user does.
fn build_package() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = run(Command::new(cargo)
        .args(["run", "--quiet", "--package", "xtask", "--", "dist"])
        .current_dir(workspace_root()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("cargo xtask dist failed ({}):\n{stderr}", out.status);
    }
    let deb = stderr
        .lines()
        .find_map(|l| l.strip_prefix("xtask: package: "))
        .map(|p| PathBuf::from(p.trim()))
        .with_context(|| format!("cargo xtask dist named no package:\n{stderr}"))?;
    ensure!(deb.is_file(), "{} does not exist", deb.display());
    Ok(deb)
}

/// The installed package; purged on drop if a check failed first, so a
/// failing run does not leave it on the machine.
struct Installed {
    purged: bool,
}

impl Installed {
    fn install(deb: &Path) -> Result<Installed> {
        let out = run(Command::new("dpkg").arg("-i").arg(deb))?;
        let installed = Installed { purged: false };
        if !out.status.success() {
            bail!(
                "dpkg -i {} failed ({}):\n{}{}",
                deb.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(installed)
    }

    fn files(&self) -> Result<Vec<PathBuf>> {
        Ok(stdout_of(Command::new("dpkg").args(["-L", PACKAGE]))?
            .lines()
            .filter(|l| l.starts_with('/'))
            .map(PathBuf::from)
            .collect())
    }

    fn purge(mut self) -> Result<()> {
        self.purged = true;
        stdout_of(Command::new("dpkg").args(["--purge", PACKAGE]))?;
        Ok(())
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.purged {
            let _ = Command::new("dpkg")
                .args(["--purge", PACKAGE])
                .stdout(Stdio::null())
                .status();
        }
    }
}

fn check_binary() -> Result<()> {
    let version = stdout_of(Command::new(BIN).arg("--version"))?;
    let want = format!("netconn {}", env!("CARGO_PKG_VERSION"));
    ensure!(
        version.trim() == want,
        "{BIN} --version said {version:?}, want {want:?}"
    );
    Ok(())
}

fn check_man_pages() -> Result<()> {
    for page in PAGES {
        let path = stdout_of(Command::new("man").args(["-w", page]))?;
        ensure!(
            path.trim() == format!("/usr/share/man/man1/{page}.1.gz"),
            "man -w {page} found {path:?}, not the packaged page"
        );
    }
    Ok(())
}

fn check_completions() -> Result<()> {
    for file in COMPLETIONS {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        ensure!(
            text.contains("netconn") && text.contains("stats"),
            "{file} is not a netconn completion script"
        );
    }
    // bash-completion sources the file on first use; it must register itself.
    let registered = stdout_of(Command::new("bash").args([
        "--norc",
        "-c",
        &format!("source {} && complete -p netconn", COMPLETIONS[0]),
    ]))?;
    ensure!(
        registered.contains("_netconn"),
        "bash completion did not register: {registered:?}"
    );
    Ok(())
}

fn check_unit() -> Result<()> {
    ensure!(Path::new(SYSUSERS).is_file(), "{SYSUSERS} not installed");
    for db in ["passwd", "group"] {
        stdout_of(Command::new("getent").args([db, "netconn"]))
            .with_context(|| format!("postinst did not create the netconn {db} entry"))?;
    }
    ensure!(
        std::fs::symlink_metadata(ENABLED).is_ok_and(|m| m.file_type().is_symlink()),
        "postinst did not enable the unit ({ENABLED} missing)"
    );
    // verify also checks that ExecStart's binary and the Documentation= man
    // pages exist, so it runs on the installed files.
    let out = run(Command::new("systemd-analyze").args(["verify", UNIT]))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_us: Vec<&str> = stderr.lines().filter(|l| l.contains("netconn")).collect();
    ensure!(
        out.status.success() && about_us.is_empty(),
        "systemd-analyze verify {UNIT} ({}):\n{stderr}",
        out.status
    );
    // Threshold 49: "OK" ends at exposure 4.9.
    let out = run(Command::new("systemd-analyze").args([
        "security",
        "--offline=true",
        "--threshold=49",
        UNIT,
    ]))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let overall = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .with_context(|| format!("no overall exposure level in:\n{stdout}"))?;
    eprintln!("systemd-analyze security --offline: {}", overall.trim());
    let level: f64 = overall
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("cannot read the level in {overall:?}"))?;
    ensure!(
        out.status.success() && level <= 4.9,
        "the unit is rated above OK: {}",
        overall.trim()
    );
    Ok(())
}

/// Every file under the repository's deploy/ is shipped, unchanged, under
/// /usr/share/netconn/: whatever is added there rides along.
fn check_deploy_files() -> Result<()> {
    let deploy = workspace_root().join("deploy");
    let mut pending = vec![deploy.clone()];
    let mut seen = 0;
    while let Some(dir) = pending.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let rel = path.strip_prefix(&deploy)?;
            let shipped = Path::new(SHARE).join(rel);
            let want = std::fs::read(&path)?;
            let got = std::fs::read(&shipped).with_context(|| {
                format!("{} not shipped as {}", rel.display(), shipped.display())
            })?;
            ensure!(
                got == want,
                "{} differs from {}",
                shipped.display(),
                path.display()
            );
            seen += 1;
        }
    }
    ensure!(seen >= 3, "deploy/ has only {seen} files: wrong directory?");
    Ok(())
}

/// The capabilities the installed unit grants, as setpriv wants them:
/// `-all,+bpf,+perfmon,...`.
fn unit_capabilities() -> Result<String> {
    let unit = std::fs::read_to_string(UNIT).with_context(|| format!("reading {UNIT}"))?;
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .context("the unit has no AmbientCapabilities= line")?;
    let mut caps = String::from("-all");
    for cap in line.split_whitespace() {
        let name = cap
            .strip_prefix("CAP_")
            .with_context(|| format!("odd capability {cap:?}"))?;
        caps.push_str(",+");
        caps.push_str(&name.to_ascii_lowercase());
    }
    Ok(caps)
}

/// Run the installed agent the way the unit does (user netconn, its ambient
/// capabilities and nothing else, --group netconn, a 0750 runtime
/// directory), ask it as a member of the group, and be refused as a
/// non-member. systemd itself is not running here; this is the part of the
/// unit that can be tried without it.
fn check_agent_as_packaged_user() -> Result<()> {
    let caps = unit_capabilities()?;
    let dir = PathBuf::from(format!("/tmp/netconn-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    stdout_of(
        Command::new("install")
            .args(["-d", "-m", "0750", "-o", "netconn", "-g", "netconn"])
            .arg(&dir),
    )?;
    let socket = dir.join("netconn.sock");
    let log = dir.with_extension("log");
    let child = Command::new("setpriv")
        .args(["--reuid=netconn", "--regid=netconn", "--init-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(format!("--bounding-set={caps}"))
        .args([
            "--no-new-privs",
            "--",
            BIN,
            "agent",
            "--group",
            "netconn",
            "--socket",
        ])
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting the installed agent under setpriv")?;
    let mut agent = Running { child };
    let outcome = (|| -> Result<()> {
        let client = |groups: &str| {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--reuid=nobody", "--regid=nogroup"])
                .arg(groups)
                .args(["--", BIN, "stats", "--json", "--socket"])
                .arg(&socket);
            cmd
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let stats = loop {
            let out = run(&mut client("--groups=netconn"))?;
            if out.status.success() {
                break String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if let Some(st) = agent.child.try_wait()? {
                bail!("the agent exited ({st}) before serving");
            }
            if Instant::now() > deadline {
                bail!(
                    "no answer within 60 s: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let json: serde_json::Value = serde_json::from_str(&stats)?;
        ensure!(
            json["meta"]["exact"].is_boolean() && json["all"].is_object(),
            "odd stats reply: {stats}"
        );
        let refused = run(&mut client("--clear-groups"))?;
        ensure!(
            !refused.status.success()
                && String::from_utf8_lossy(&refused.stderr).contains("permission denied"),
            "a user outside group netconn was not refused: {:?}",
            refused
        );
        agent.stop()?;
        ensure!(!socket.exists(), "the agent left {}", socket.display());
        Ok(())
    })();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&log);
    outcome.with_context(|| format!("agent as user netconn with {caps}; its log:\n{log_text}"))
}

/// The agent process; killed on drop unless it was stopped cleanly.
struct Running {
    child: Child,
}

impl Running {
    /// SIGTERM, then it must exit 0 (detach, remove the socket) within 10 s.
    fn stop(&mut self) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait()? {
                ensure!(st.success(), "the agent exited with {st} on SIGTERM");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the agent did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn check_purged(files: &[PathBuf]) -> Result<()> {
    if let Some(status) = package_status()? {
        bail!("after dpkg --purge, dpkg still has {PACKAGE}: {status}");
    }
    let listed = run(Command::new("dpkg").args(["-L", PACKAGE]))?;
    ensure!(
        !listed.status.success() && listed.stdout.is_empty(),
        "dpkg -L {PACKAGE} still lists: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
    // Directories shared with other packages (/usr/share/man/man1) stay;
    // every file, and every directory only we had, must be gone.
    let left: Vec<&PathBuf> = files
        .iter()
        .filter(|f| match std::fs::symlink_metadata(f) {
            Ok(m) if m.is_dir() => f.starts_with(SHARE) || f.ends_with("doc/netconn"),
            Ok(_) => true,
            Err(_) => false,
        })
        .collect();
    ensure!(left.is_empty(), "left behind after purge: {left:?}");
    for path in [ENABLED, DSH_STATE] {
        ensure!(
            std::fs::symlink_metadata(path).is_err(),
            "left behind after purge: {path}"
        );
    }
    Ok(())
}
