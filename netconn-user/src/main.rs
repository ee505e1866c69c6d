//! `netconn`: exact live TCP/UDP connection-state counts from the kernel.
//!
//! Where things are: a count is born in the eBPF program (netconn-ebpf) or in
//! a sock_diag dump (`diag`), is stored in the kernel's maps (`probe`) and the
//! agent's tracker (`tracker`), and is read through the agent's socket
//! (`server` / `client`) and rendered by `counts` and `check`.

mod alerts;
mod btf;
mod check;
mod client;
mod counts;
mod diag;
mod leaks;
mod logger;
mod probe;
mod proto;
mod server;
mod sockstat;
mod stream;
mod tracker;
mod watch;

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{
    check::{CheckArgs, Status},
    client::{Client, ClientError},
    counts::Counts,
};

#[derive(Parser)]
#[command(
    name = "netconn",
    version,
    about = "Exact live TCP/UDP connection-state counts from the kernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the eBPF tracker, seed existing sockets, serve queries on a Unix socket.
    Agent(AgentArgs),
    /// Print the current counts from the agent.
    Stats(StatsArgs),
    /// Stream TCP state transitions (or leak alerts) as they happen.
    Watch(watch::WatchArgs),
    /// Nagios/Icinga plugin: check connection counts against thresholds.
    #[command(disable_version_flag = true)]
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Unix socket to serve on.
    #[arg(long, env = "NETCONN_SOCKET", default_value = proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Group given access to the socket (mode 0660), e.g. the monitoring user's.
    #[arg(long)]
    group: Option<String>,
    /// Capacity of the kernel's per-socket map (full TCP sockets in all
    /// namespaces); preallocated, 88 bytes of kernel memory each.
    #[arg(long, default_value_t = 1 << 19, value_parser = clap::value_parser!(u32).range(1..=(1 << 26)))]
    max_sockets: u32,
    /// How often the TIME_WAIT / request-socket / UDP part is re-read, in ms (at most 900).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=900))]
    refresh_ms: u64,
    /// Leak rules (TOML); without it the defaults apply (see README).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Size of the kernel's transition ring buffer for `watch`, in MiB (a power of two).
    #[arg(long, default_value_t = 8, value_parser = parse_ring_mib)]
    ring_mib: u32,
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !n.is_power_of_two() || n > 1024 {
        return Err(format!("{n} is not a power of two between 1 and 1024"));
    }
    Ok(n)
}

#[derive(clap::Args)]
struct StatsArgs {
    /// The agent's socket.
    #[arg(long, env = "NETCONN_SOCKET", default_value = proto::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print JSON (keys tcp4, tcp6, udp4, udp6, tcp, udp, all, meta).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    logger::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    let result = match cli.command {
        Command::Agent(args) => agent(args),
        Command::Stats(args) => stats(args),
        Command::Watch(args) => watch::run(args),
        Command::Check(args) => return run_check(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netconn: {}", render(&e));
            ExitCode::FAILURE
        }
    }
}

/// Usage errors exit 2, except under `check`, where the plugin contract says 3.
fn clap_exit(e: &clap::Error) -> ExitCode {
    let is_check = std::env::args().nth(1).as_deref() == Some("check");
    if is_check {
        let (text, status) = check::clap_error_report(e);
        println!("{}", text.trim_end());
        return ExitCode::from(status.code() as u8);
    }
    let _ = e.print();
    ExitCode::from(if e.use_stderr() { 2 } else { 0 })
}

/// One line: the error and its causes, without repeating a cause the
/// message already contains.
fn render(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let rules = match &args.rules {
        Some(path) => leaks::load_rules(path)?,
        None => leaks::default_rules(),
    };
    let mut bound = server::Bound::bind(&args.socket, args.group.as_deref())?;
    let tracker = Arc::new(tracker::Tracker::start(tracker::Config {
        max_sockets: args.max_sockets,
        refresh: Duration::from_millis(args.refresh_ms),
        ring_bytes: args.ring_mib << 20,
    })?);
    // Blocking work runs on threads of its own; the runtime only serves.
    let workers = [
        spawn(&tracker, "refresh", |t| t.run_maintenance())?,
        spawn(&tracker, "stream", |t| t.run_stream())?,
        spawn(&tracker, "leaks", move |t| alerts::run(t, rules))?,
    ];
    log::info!("serving on {}", args.socket.display());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let outcome = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        tokio::select! {
            _ = bound.serve(Arc::clone(&tracker)) => {}
            _ = term.recv() => log::info!("SIGTERM: shutting down"),
            _ = int.recv() => log::info!("SIGINT: shutting down"),
        }
        anyhow::Ok(())
    });
    // Dropping the runtime ends the connection tasks and their tracker refs.
    drop(runtime);
    tracker.stop();
    for worker in workers {
        let _ = worker.join();
    }
    drop(bound);
    // Last reference: detaches the program and frees the maps.
    drop(tracker);
    outcome
}

/// A named thread running `work` on the shared tracker until it stops.
fn spawn(
    tracker: &Arc<tracker::Tracker>,
    name: &str,
    work: impl FnOnce(&tracker::Tracker) + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let tracker = Arc::clone(tracker);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || work(&tracker))
        .with_context(|| format!("starting the {name} thread"))
}

fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let reply = Client::connect(&args.socket)?.stats()?;
    if args.json {
        println!("{reply}");
        return Ok(());
    }
    let counts = Counts::from_json(&reply).context("the agent's reply has no counts")?;
    print!("{}", counts.table());
    if let Some(meta) = reply.get("meta") {
        let exact = meta.get("exact").and_then(|v| v.as_bool()).unwrap_or(false);
        let age = meta
            .get("refreshed_age_ms")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0);
        if exact {
            println!("exact; TIME_WAIT/request/UDP part {age:.0} ms old");
        } else {
            let reasons = meta
                .get("inexact")
                .map(|v| v.to_string())
                .unwrap_or_default();
            println!("NOT EXACT: {reasons}");
        }
    }
    Ok(())
}

/// `netconn check`: always one line on stdout and a plugin exit code.
fn run_check(args: &CheckArgs) -> ExitCode {
    if args.version {
        println!("{}", check::version_line());
        return ExitCode::SUCCESS;
    }
    if args.leaks {
        let (line, status) = check_leaks(args);
        println!("{line}");
        return ExitCode::from(status.code() as u8);
    }
    let (line, status) = match check_counts(args) {
        Ok(counts) => match check::evaluate(&counts, args) {
            Ok(result) => result,
            Err(e) => (e.to_string(), e.status()),
        },
        Err(e) => (format!("UNKNOWN: {}", render(&e)), Status::Unknown),
    };
    println!("{line}");
    ExitCode::from(status.code() as u8)
}

/// `check --leaks`: the agent's active leak alerts as one Nagios line,
/// worst severity first; OK when there are none.
fn check_leaks(args: &CheckArgs) -> (String, Status) {
    let alerts = match Client::connect(&args.socket).and_then(|mut c| c.leaks()) {
        Ok(a) => a,
        Err(ClientError::NoAgent(path)) => {
            return (
                format!(
                    "UNKNOWN: no netconn agent at {} (leak detection runs in the agent)",
                    path.display()
                ),
                Status::Unknown,
            );
        }
        Err(e) => return (format!("UNKNOWN: {e}"), Status::Unknown),
    };
    let mut alerts = alerts;
    alerts.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.rule.cmp(&b.rule)));
    let status = match alerts.iter().map(|a| a.severity).max() {
        None => Status::Ok,
        Some(s) if s.exit_code() == 2 => Status::Critical,
        Some(_) => Status::Warning,
    };
    let mut line = if alerts.is_empty() {
        "No connection leaks detected.".to_string()
    } else {
        alerts
            .iter()
            .map(|a| {
                let tag = if a.severity.exit_code() == 2 {
                    "CRITICAL"
                } else {
                    "WARNING"
                };
                format!("{} [{tag}]", a.message)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let status = if args.always_ok {
        line.push_str(" (always ok)");
        Status::Ok
    } else {
        status
    };
    if !args.no_perfdata {
        line.push_str(&format!("|'leaks'={}", alerts.len()));
    }
    (line, status)
}

/// Counts from the agent; without one, from a single netlink dump (same
/// numbers, O(sockets) instead of O(1)) unless `--require-agent`.
fn check_counts(args: &CheckArgs) -> anyhow::Result<Counts> {
    match Client::connect(&args.socket).and_then(|mut c| c.stats()) {
        Ok(reply) => Counts::from_json(&reply).context("the agent's reply has no counts"),
        Err(ClientError::NoAgent(path)) if args.require_agent => {
            anyhow::bail!("no netconn agent at {}", path.display())
        }
        Err(ClientError::NoAgent(_)) => {
            let tcp = diag::count(diag::Proto::Tcp, diag::ALL_STATES, |_| true)?;
            let udp = diag::count(diag::Proto::Udp, diag::ALL_STATES, |_| true)?;
            Ok(tcp.merged(&udp))
        }
        Err(e) => Err(e.into()),
    }
}
