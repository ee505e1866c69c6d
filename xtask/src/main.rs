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
    /// Install what the build needs (LLVM 22, rust-src for nightly, bpf-linker) and mount tracefs/bpffs.
    Setup,
    /// Build the release `netconn` binary (with its eBPF program).
    Build,
    /// Build, then run `netconn ARGS`; starts a temporary agent if none is serving.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// fmt check, clippy -D warnings, unit tests, then the integration tests (root, real kernel).
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark: check latency against the agent, the netlink fallback and ss, at scale.
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
        /// Which part to run (`load`: nginx under wrk with and without the agent).
        #[arg(long, value_parser = ["all", "check", "stream", "load"], default_value = "all")]
        part: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup(),
        Task::Build => setup_if_needed().and_then(|()| build()).map(|_| ()),
        Task::Run { args } => setup_if_needed().and_then(|()| run(&args)),
        Task::Test { args } => setup_if_needed().and_then(|()| test(&args)),
        Task::Bench {
            sockets,
            queries,
            runs,
            stream_seconds,
            load_rounds,
            load_seconds,
            load_connections,
            part,
        } => setup_if_needed().and_then(|()| {
            if part == "load" || part == "all" {
                bench_load::setup()?;
            }
            let netconn = build()?;
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
            if part == "all" || part == "load" {
                // NETCONN_BIN: compare another build (e.g. a baseline) under load.
                let netconn = std::env::var_os("NETCONN_BIN")
                    .map(PathBuf::from)
                    .unwrap_or(netconn);
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
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

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
    if missing.contains(&"llvm") {
        say(&format!(
            "installing {LLVM_PACKAGE} (bpf-linker links against LLVM 22, the nightly's LLVM)"
        ));
        status(Command::new("apt-get").args(["update", "-qq"]))?;
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", LLVM_PACKAGE])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
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
    say("setup complete");
    Ok(())
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
