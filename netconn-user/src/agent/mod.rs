//! The long-running agent: wiring of its pieces, and nothing else.
//!
//! * `tracker` stores the counts per network namespace and says whether
//!   they are exact; `generation` loads, attaches and seeds one kernel-side
//!   generation; `refresh` finds namespaces (named by `naming`), keeps their
//!   untracked part current and re-seeds on trouble;
//! * `hub` fans the kernel's transitions out to watchers;
//! * `alerts` runs the leak rules of `leaks`;
//! * `offenders` answers `top` with the same logic, cached;
//! * `server` answers on the Unix socket;
//! * `metrics` serves Prometheus over HTTP (`--metrics`) from the plain
//!   input [`metrics_input`] takes from the other pieces.
//!
//! The pieces never call each other in a circle: each loop gets the parts
//! it needs from the [`Agent`] this module owns.

mod alerts;
mod generation;
mod hub;
pub mod leaks;
pub mod metrics;
mod naming;
mod offenders;
mod refresh;
mod server;
mod tracker;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;

pub use tracker::MAX_AGE;

use crate::proto;

/// `netconn agent`'s options.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Unix socket to serve on.
    #[arg(long, env = "NETCONN_SOCKET", default_value = proto::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Group given access to the socket (mode 0660), e.g. the monitoring user's.
    #[arg(long)]
    pub group: Option<String>,
    /// Capacity of the kernel's per-socket map (full TCP sockets in all
    /// namespaces); preallocated, 88 bytes of kernel memory each.
    #[arg(long, default_value_t = 1 << 19, value_parser = clap::value_parser!(u32).range(1..=(1 << 26)))]
    pub max_sockets: u32,
    /// How often the TIME_WAIT / request-socket / UDP part is re-read, in ms (at most 900).
    // 700: a pass reads every namespace's counters, so its cost scales with
    // namespaces; 700 ms keeps 300 idle namespaces under 2% of a core while
    // each refreshed part is still confirmed well within the 1 s answers allow.
    #[arg(long, default_value_t = 700, value_parser = clap::value_parser!(u64).range(10..=900))]
    pub refresh_ms: u64,
    /// Leak rules (TOML); without it the defaults apply (see README).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Size of the kernel's transition ring buffer for `watch`, in MiB (a power of two).
    #[arg(long, default_value_t = 8, value_parser = parse_ring_mib)]
    pub ring_mib: u32,
    /// Serve Prometheus metrics on this IP:PORT (GET /metrics), e.g.
    /// 127.0.0.1:9977; off unless given.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Leave the kernel side pinned in bpffs when the agent exits (also on a
    /// crash): it keeps counting, and the next agent adopts it without
    /// re-seeding. `netconn unload` removes it.
    #[arg(long)]
    pub pin: bool,
    /// Where `--pin` keeps the kernel side (on bpffs).
    #[arg(long, value_name = "DIR", default_value = crate::kernel::pin::DEFAULT_ROOT)]
    pub pin_root: PathBuf,
    /// The layout version pins are written and adopted as (for upgrade tests).
    #[arg(long, hide = true, default_value_t = netconn_common::LAYOUT_VERSION)]
    pub layout_version: u32,
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !n.is_power_of_two() || n > 1024 {
        return Err(format!("{n} is not a power of two between 1 and 1024"));
    }
    Ok(n)
}

/// What the agent's loops and connections share.
pub struct Agent {
    pub tracker: tracker::Tracker,
    pub hub: hub::Hub,
    pub alerts: alerts::ActiveAlerts,
    pub offenders: offenders::OffenderCache,
}

/// Run the agent until SIGINT or SIGTERM.
pub fn run(options: Options) -> anyhow::Result<()> {
    let rules = match &options.rules {
        Some(path) => leaks::load_rules(path)?,
        None => leaks::default_rules(),
    };
    let mut bound = server::Bound::bind(&options.socket, options.group.as_deref())?;
    // Bound before anything is loaded: a bad address or a taken port fails
    // at once, in one line.
    let metrics_server = options
        .metrics
        .as_deref()
        .map(metrics::MetricsServer::bind)
        .transpose()?;
    let tracker = tracker::Tracker::start(tracker::Config {
        pin_root: options.pin.then(|| options.pin_root.clone()),
        layout_version: options.layout_version,
        max_sockets: options.max_sockets,
        refresh: Duration::from_millis(options.refresh_ms),
        ring_bytes: options.ring_mib << 20,
    })?;
    let agent = Arc::new(Agent {
        tracker,
        hub: hub::Hub::default(),
        alerts: alerts::ActiveAlerts::default(),
        offenders: offenders::OffenderCache::default(),
    });
    // Blocking work runs on threads of its own; the runtime only serves.
    let workers = [
        spawn(&agent, "refresh", |a| a.tracker.run_maintenance())?,
        spawn(&agent, "stream", |a| hub::run_stream(&a.tracker, &a.hub))?,
        spawn(&agent, "leaks", move |a| {
            alerts::run(&a.tracker, &a.hub, &a.alerts, rules)
        })?,
    ];
    log::info!("serving on {}", options.socket.display());
    let metrics_task = metrics_server.map(|server| {
        log::info!("serving metrics on http://{}/metrics", server.addr());
        let agent = Arc::clone(&agent);
        server.serve(Arc::new(move || metrics_input(&agent)))
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let outcome = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        if let Some(task) = metrics_task {
            tokio::spawn(task);
        }
        tokio::select! {
            _ = bound.serve(Arc::clone(&agent)) => {}
            _ = term.recv() => log::info!("SIGTERM: shutting down"),
            _ = int.recv() => log::info!("SIGINT: shutting down"),
        }
        anyhow::Ok(())
    });
    // Dropping the runtime ends the connection tasks and their references.
    drop(runtime);
    agent.tracker.stop();
    for worker in workers {
        let _ = worker.join();
    }
    // Pinned, the kernel side outlives us: nobody reads the stream now.
    agent.tracker.leave();
    drop(bound);
    // Last reference: detaches the program and frees the maps.
    drop(agent);
    outcome
}

/// What one metrics scrape reports, taken from the agent's pieces: every
/// namespace's counts (without a /proc read per namespace, see
/// [`tracker::Tracker::snapshot_all_cached`]) and a few counters. Runs on a
/// blocking thread per scrape.
fn metrics_input(agent: &Agent) -> metrics::MetricsInput {
    let tracker = &agent.tracker;
    let all = tracker.snapshot_all_cached();
    let own = tracker.netns();
    let host = tracker.host();
    // The oldest refreshed part bounds the staleness of every series.
    let refresh_age = tracker.oldest_refresh();
    let namespaces = all
        .namespaces
        .into_iter()
        .map(|ns| metrics::NsSample {
            netns: ns.netns,
            // The agent's name, as `stats --all-netns` shows it.
            name: ns.name,
            container: ns
                .container
                .as_ref()
                .map(container_label)
                .unwrap_or_default(),
            counts: ns.counts,
            exact: ns.exact,
            full_series: ns.netns == own || Some(ns.netns) == host,
        })
        .collect();
    metrics::MetricsInput {
        namespaces,
        refresh_age,
        reseeds: all.meta.reseeds,
        events_missed: tracker.events_missed(),
        watch_dropped: agent.hub.dropped_total(),
        // The kernel's per-CPU transition counters, over every generation.
        transitions: tracker
            .transitions()
            .into_iter()
            .map(|(family, old, new, count)| metrics::Transition {
                family,
                old,
                new,
                count,
            })
            .collect(),
        // Each alert names the namespace its rule fired in.
        alerts: agent
            .alerts
            .get()
            .into_iter()
            .map(|a| metrics::AlertSample {
                rule: a.rule,
                severity: a.severity.name().into(),
                netns: a.namespace.netns,
            })
            .collect(),
        version: env!("CARGO_PKG_VERSION"),
        process: metrics::ProcessStats::read(),
    }
}

/// The `container` label: `runtime:id` with the id as people see it
/// (`docker:0123456789ab`; a machine name or pod UID whole), like the
/// namespace names `naming` gives.
fn container_label(c: &proto::Container) -> String {
    format!("{}:{}", c.runtime, naming::short_id(&c.id))
}

/// A named thread running `work` on the shared agent until it stops.
fn spawn(
    agent: &Arc<Agent>,
    name: &str,
    work: impl FnOnce(&Agent) + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let agent = Arc::clone(agent);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || work(&agent))
        .with_context(|| format!("starting the {name} thread"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_labels_use_the_short_id() {
        let c = |runtime: &str, id: &str| proto::Container {
            runtime: runtime.into(),
            id: id.into(),
            pod: None,
        };
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(container_label(&c("docker", id)), "docker:0123456789ab");
        assert_eq!(
            container_label(&c("systemd-nspawn", "web1")),
            "systemd-nspawn:web1"
        );
        let pod = "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b";
        assert_eq!(
            container_label(&c("kubernetes", pod)),
            format!("kubernetes:{pod}")
        );
    }
}
