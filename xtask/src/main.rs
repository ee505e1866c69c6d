//! `cargo xtask`: set-up, build, run and test netconn on a fresh machine.
//!
//! Every step says what it does; `run` and `test` install what is missing
//! first (see `setup`).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

mod bench;
mod bench_load;
mod bench_metrics;
mod bench_netns;
mod bench_stream;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and tests need (LLVM 22, rust-src for nightly, bpf-linker,
    /// Prometheus, tmux), mount tracefs/bpffs, and install the packaging tools (cargo-deb,
    /// man-db, systemd-analyze).
    Setup,
    /// Build the release `netconn` binary (with its eBPF program).
    Build,
    /// Build, then run `netconn ARGS`; starts a temporary agent if none is serving.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the release binary, its man pages and completions, and the Debian package (target/dist/).
    Dist,
    /// fmt check, clippy -D warnings, unit tests, then the integration tests (root, real kernel).
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark: check latency against the agent, the netlink fallback and ss, at scale; the stream; the parser; a metrics scrape over many namespaces.
    Bench {
        /// Largest population to build (spread over several processes).
        #[arg(long, default_value_t = 200_000)]
        sockets: u64,
        /// Queries per population size for the per-query figures.
        #[arg(long, default_value_t = 20_000)]
        queries: usize,
        /// Whole-process runs per population size.
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Seconds of churn per phase of the stream benchmark.
        #[arg(long, default_value_t = 3)]
        stream_seconds: u64,
        /// Interleaved rounds of each mode in the load benchmark.
        #[arg(long, default_value_t = 7)]
        load_rounds: usize,
        /// Seconds of wrk per round of the load benchmark.
        #[arg(long, default_value_t = 5)]
        load_seconds: u64,
        /// wrk connections in the load benchmark.
        #[arg(long, default_value_t = 32)]
        load_connections: u32,
        /// Scrapes the metrics benchmark times.
        #[arg(long, default_value_t = 200)]
        scrapes: usize,
        /// Which part to run (`load`: nginx under wrk with and without the agent).
        #[arg(long, value_parser = ["all", "check", "stream", "diag", "netns", "metrics", "load"], default_value = "all")]
        part: String,
        /// `--part netns` and `--part metrics`: how many small namespaces.
        #[arg(long, default_value_t = 300)]
        namespaces: usize,
        /// `--part netns`: sockets in each small namespace.
        #[arg(long, default_value_t = 300)]
        per_namespace: u32,
        /// `--part netns`: sockets in the one big namespace.
        #[arg(long, default_value_t = 291_000)]
        big_sockets: u64,
        /// `--part netns`: interleaved `ss -tan` / agent start-ups in the big namespace (medians).
        #[arg(long, default_value_t = 5)]
        big_rounds: usize,
        /// `--part netns`: seconds over which CPU at rest is measured.
        #[arg(long, default_value_t = 20)]
        rest_seconds: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup(),
        Task::Build => setup_if_needed().and_then(|()| build()).map(|_| ()),
        Task::Run { args } => setup_if_needed().and_then(|()| run(&args)),
        Task::Dist => setup_if_needed()
            .and_then(|()| install_packaging_tools())
            .and_then(|()| dist())
            .map(|_| ()),
        // The package test needs the packaging tools too.
        Task::Test { args } => setup_if_needed()
            .and_then(|()| install_packaging_tools())
            .and_then(|()| test(&args)),
        Task::Bench {
            sockets,
            queries,
            runs,
            stream_seconds,
            scrapes,
            load_rounds,
            load_seconds,
            load_connections,
            part,
            namespaces,
            per_namespace,
            big_sockets,
            big_rounds,
            rest_seconds,
        } => setup_if_needed().and_then(|()| {
            if part == "load" || part == "all" {
                bench_load::setup()?;
            }
            let netconn = build()?;
            // NETCONN_BIN: measure another build (e.g. a baseline) instead.
            let netconn = std::env::var_os("NETCONN_BIN")
                .map(PathBuf::from)
                .unwrap_or(netconn);
            let popgen = workspace_root().join("target/release/popgen");
            if part == "all" || part == "check" {
                bench::run(
                    &popgen,
                    &netconn,
                    &bench::BenchArgs {
                        sockets,
                        queries,
                        runs,
                    },
                )?;
            }
            if part == "all" || part == "stream" {
                bench_stream::run(&popgen, &netconn, stream_seconds)?;
            }
            if part == "all" || part == "netns" {
                bench_netns::run(
                    &popgen,
                    &netconn,
                    &bench_netns::NetnsBenchArgs {
                        namespaces,
                        sockets_per_namespace: per_namespace,
                        big_sockets,
                        big_rounds,
                        rest_seconds,
                    },
                )?;
            }
            if part == "all" || part == "diag" {
                say("sock_diag parsing: in place against netlink-packet-sock-diag");
                status(cargo().args([
                    "bench",
                    "--package",
                    "netconn-user",
                    "--bench",
                    "diag_parse",
                ]))?;
            }
            if part == "all" || part == "metrics" {
                bench_metrics::run(&netconn, namespaces, scrapes)?;
            }
            if part == "all" || part == "load" {
                bench_load::run(
                    &netconn,
                    &bench_load::LoadArgs {
                        rounds: load_rounds,
                        seconds: load_seconds,
                        connections: load_connections,
                    },
                )?;
            }
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

const LLVM_PACKAGE: &str = "llvm-22-dev";
/// Pinned, built with --locked: 3.8.0 builds on Rust 1.85+, so on our 1.95.
const CARGO_DEB_VERSION: &str = "3.8.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// Debian's Prometheus server; it ships promtool too.
const PROMETHEUS_PACKAGE: &str = "prometheus";

fn say(msg: &str) {
    eprintln!("xtask: {msg}");
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !st.success() {
        bail!("{shown} failed ({st})");
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Names of what is missing (each fixed by `setup`).
fn missing() -> Vec<&'static str> {
    let mut out = Vec::new();
    if !Path::new(LLVM_PREFIX).join("lib").is_dir() {
        out.push("llvm");
    }
    let nightly_src = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("rust-src"))
        .unwrap_or(false);
    if !nightly_src {
        out.push("rust-src");
    }
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        out.push("bpf-linker");
    }
    // The top tests drive `netconn top` in a real terminal.
    if !succeeds(Command::new("tmux").arg("-V")) {
        out.push("tmux");
    }
    // The metrics test runs the real Prometheus server against the agent
    // and checks the exposition and rules with its promtool.
    if !["prometheus", "promtool"]
        .iter()
        .all(|tool| succeeds(Command::new(tool).arg("--version")))
    {
        out.push("prometheus");
    }
    // The monitoring test validates the shipped Icinga 2 and Nagios
    // definitions with the real daemons' configuration checks.
    if !succeeds(Command::new("icinga2").arg("--version"))
        || !succeeds(Command::new("nagios4").arg("--version"))
    {
        out.push("monitoring");
    }
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        out.push("tracefs");
    }
    if !Path::new("/sys/fs/bpf").is_dir() || !is_mounted("/sys/fs/bpf") {
        out.push("bpffs");
    }
    out
}

fn is_mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(path)))
        .unwrap_or(false)
}

fn setup_if_needed() -> anyhow::Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!("missing: {}; running setup", missing.join(", ")));
    setup()
}

fn setup() -> anyhow::Result<()> {
    let missing = missing();
    let mut debian = Vec::new();
    if missing.contains(&"llvm") {
        say(&format!(
            "installing {LLVM_PACKAGE} (bpf-linker links against LLVM 22, the nightly's LLVM)"
        ));
        debian.push(LLVM_PACKAGE);
    }
    if missing.contains(&"tmux") {
        say("installing tmux (the `netconn top` tests drive it in a real terminal)");
        debian.push("tmux");
    }
    if !debian.is_empty() {
        apt_install(&debian, Recommends::Yes)?;
    }
    if missing.contains(&"monitoring") {
        say(
            "installing icinga2-bin, icinga2-common and nagios4-core (their configuration checks validate the shipped definitions; no daemon is started)",
        );
        apt_install(
            &["icinga2-bin", "icinga2-common", "nagios4-core"],
            Recommends::No,
        )?;
    }
    if missing.contains(&"prometheus") {
        say(&format!(
            "installing {PROMETHEUS_PACKAGE} (server and promtool, for the metrics test; under systemd the package also starts its own service)"
        ));
        apt_install(&[PROMETHEUS_PACKAGE], Recommends::No)?;
    }
    if missing.contains(&"rust-src") {
        say("adding rust-src to the nightly toolchain (the eBPF crate builds core from source)");
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if missing.contains(&"bpf-linker") {
        say("building bpf-linker against LLVM 22 (about a minute)");
        status(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", LLVM_PREFIX),
        )?;
    }
    if missing.contains(&"tracefs") {
        say("mounting tracefs on /sys/kernel/tracing");
        status(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))?;
    }
    if missing.contains(&"bpffs") {
        say("mounting bpffs on /sys/fs/bpf");
        status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    install_packaging_tools()?;
    say("setup complete");
    Ok(())
}

/// What `dist` and the package test need that the build does not: kept out
/// of `missing()` so `run` on a fresh machine does not wait for them.
fn missing_packaging_tools() -> Vec<&'static str> {
    let mut out = Vec::new();
    let cargo_deb = cargo()
        .args(["deb", "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB_VERSION))
        .unwrap_or(false);
    if !cargo_deb {
        out.push("cargo-deb");
    }
    // The package test asks man where the pages went (`man -w`).
    if !succeeds(Command::new("man").arg("--version")) {
        out.push("man-db");
    }
    // systemd-analyze checks the unit; systemd-sysusers (same package)
    // creates the netconn user when the package is installed. Neither needs
    // systemd to be running.
    if !succeeds(Command::new("systemd-analyze").arg("--version")) {
        out.push("systemd");
    }
    out
}

fn install_packaging_tools() -> anyhow::Result<()> {
    let missing = missing_packaging_tools();
    if missing.contains(&"cargo-deb") {
        say(&format!(
            "building cargo-deb {CARGO_DEB_VERSION} (builds the Debian package; about a minute)"
        ));
        status(cargo().args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ]))?;
    }
    let apt: Vec<&str> = missing.into_iter().filter(|m| *m != "cargo-deb").collect();
    if !apt.is_empty() {
        say(&format!(
            "installing {} (for the package and its test)",
            apt.join(", ")
        ));
        apt_install(&apt, Recommends::No)?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Recommends {
    Yes,
    No,
}

/// `apt-get update`, then install `packages` non-interactively.
fn apt_install(packages: &[&str], recommends: Recommends) -> anyhow::Result<()> {
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-qq"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    if recommends == Recommends::No {
        install.arg("--no-install-recommends");
    }
    status(install.args(packages))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn build() -> anyhow::Result<PathBuf> {
    say(
        "building netconn (release; the eBPF program is built by netconn-user/build.rs on nightly)",
    );
    let started = Instant::now();
    status(cargo().args([
        "build",
        "--release",
        "--package",
        "netconn-user",
        "--package",
        "netconn-tests",
        "--bins",
    ]))?;
    say(&format!(
        "built in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(workspace_root().join("target/release/netconn"))
}

/// Where `dist` puts the man pages, completions and the package (the paths
/// `[package.metadata.deb]` in netconn-user/Cargo.toml reads).
fn dist_dir() -> PathBuf {
    workspace_root().join("target/dist")
}

/// The release binary, the man pages and completions generated by it (the
/// one clap definition), and the Debian package holding them with the unit,
/// sysusers and all of deploy/. Returns the package's path.
fn dist() -> anyhow::Result<PathBuf> {
    let netconn = build()?;
    let out = dist_dir();
    let man = out.join("man");
    let completions = out.join("completions");
    // From scratch: a page of a command since removed must not ride along.
    for dir in [&man, &completions] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    say(&format!("writing man pages into {}", man.display()));
    let pages = Command::new(&netconn)
        .arg("generate-man")
        .arg(&man)
        .output()
        .context("running netconn generate-man")?;
    if !pages.status.success() {
        bail!(
            "netconn generate-man failed ({}): {}",
            pages.status,
            String::from_utf8_lossy(&pages.stderr).trim()
        );
    }
    say(&format!(
        "writing completions into {}",
        completions.display()
    ));
    // The names each shell looks for in its vendor directory.
    for (shell, file) in [
        ("bash", "netconn.bash"),
        ("zsh", "_netconn"),
        ("fish", "netconn.fish"),
    ] {
        let script = Command::new(&netconn)
            .args(["completions", shell])
            .output()
            .with_context(|| format!("running netconn completions {shell}"))?;
        if !script.status.success() || script.stdout.is_empty() {
            bail!(
                "netconn completions {shell} failed ({}): {}",
                script.status,
                String::from_utf8_lossy(&script.stderr).trim()
            );
        }
        let path = completions.join(file);
        std::fs::write(&path, &script.stdout)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    say("building the Debian package (cargo-deb)");
    // --no-build: package exactly the binary built above.
    let deb = cargo()
        .args(["deb", "--package", "netconn-user", "--no-build", "--output"])
        .arg(&out)
        .output()
        .context("running cargo deb (run `cargo xtask setup`)")?;
    for line in String::from_utf8_lossy(&deb.stderr).lines() {
        // cargo-deb notes that the generated files are not Cargo's to build,
        // which is the point; anything else it says is shown.
        if !line.contains("will not be built") {
            eprintln!("{line}");
        }
    }
    if !deb.status.success() {
        bail!("cargo deb failed ({})", deb.status);
    }
    let stdout = String::from_utf8_lossy(&deb.stdout);
    let path = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb did not say which package it wrote")?;
    let path = if path.is_absolute() {
        path
    } else {
        workspace_root().join(path)
    };
    say(&format!("package: {}", path.display()));
    Ok(path)
}

fn run(args: &[String]) -> anyhow::Result<()> {
    let netconn = build()?;
    let is_agent = args.first().map(String::as_str) == Some("agent");
    let needs_agent = matches!(args.first().map(String::as_str), Some("stats" | "watch"));
    let mut temporary: Option<Child> = None;
    if needs_agent && !agent_answers(&netconn) {
        say("no agent is serving; starting one for this command (run `netconn agent` to keep one)");
        let child = Command::new(&netconn)
            .arg("agent")
            .spawn()
            .context("starting the agent")?;
        temporary = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !agent_answers(&netconn) {
            if let Some(child) = temporary.as_mut()
                && let Ok(Some(st)) = child.try_wait()
            {
                bail!("the agent exited ({st}) before serving");
            }
            if Instant::now() > deadline {
                bail!("the agent did not start serving within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if is_agent {
        say("starting the agent; Ctrl-C stops it");
    }
    let result = status(Command::new(&netconn).args(args));
    if let Some(mut child) = temporary {
        // SIGTERM lets it detach and remove its socket.
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = child.wait();
    }
    result
}

fn agent_answers(netconn: &Path) -> bool {
    succeeds(Command::new(netconn).args(["stats", "--json"]))
}

fn test(args: &[String]) -> anyhow::Result<()> {
    say("cargo fmt --check");
    status(cargo().args(["fmt", "--all", "--", "--check"]))?;
    say("cargo clippy -D warnings");
    // Default members only: the eBPF crate does not build for the host.
    status(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    let nightly = || {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", "nightly", "cargo"])
            .current_dir(workspace_root().join("netconn-ebpf"))
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER");
        cmd
    };
    if succeeds(nightly().args(["clippy", "--version"])) {
        say("cargo clippy -D warnings on the eBPF crate (nightly, bpfel target)");
        status(nightly().args([
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))?;
    } else {
        say("skipping clippy on the eBPF crate: the nightly toolchain has no clippy");
    }
    let netconn = build()?;
    if !is_root() {
        bail!("the integration tests load eBPF into the kernel: run them as root");
    }
    say("running unit and integration tests one at a time (they share the kernel)");
    status(
        cargo()
            .args(["test", "--release", "--", "--test-threads=1"])
            .args(args)
            .env("NETCONN_BIN", &netconn),
    )
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
