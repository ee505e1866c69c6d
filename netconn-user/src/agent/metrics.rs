//! Prometheus metrics: `netconn agent --metrics ADDR` serves `GET /metrics`.
//!
//! This module knows nothing of the tracker. The agent (`agent::metrics_input`)
//! hands it a closure that returns a [`MetricsInput`] (plain data, cheap to
//! take: counters, briefly held locks, no /proc reads per namespace); each
//! scrape calls it on a blocking thread, encodes
//! the result with the official client library (`prometheus-client`) as a
//! custom [`Collector`], and answers. Nothing here is ever waited on by the
//! agent's other work: the encoding runs off the runtime thread and every
//! connection is its own task.
//!
//! Cardinality: the host namespace and the agent's own (`full_series`) get
//! every family x state series, zeros included, so queries and alerts on
//! them never see a series appear or vanish; other namespaces get only their
//! non-zero series, so a host with hundreds of short-lived container
//! namespaces exports what exists rather than 44 series per namespace.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::{Registry, Unit},
};
use tokio::sync::Semaphore;

use netconn_common::{Counts, Family, State};

/// The port documented for `--metrics` (README): chosen outside the ports
/// listed in Prometheus' default port allocations.
pub const DEFAULT_PORT: u16 = 9977;

/// Connections served at once; more wait in the kernel's backlog. A
/// Prometheus server keeps one per target.
const MAX_CONNECTIONS: usize = 64;
/// A connection that sends no complete request head for this long (idle
/// keep-alive included) is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("bad --metrics address {0:?}: expected IP:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")]
    BadAddress(String),
    #[error("cannot serve metrics on {0}: address already in use")]
    InUse(SocketAddr),
    #[error("cannot serve metrics on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("encoding metrics failed")]
    Encode(#[from] std::fmt::Error),
}

/// One network namespace's counts.
#[derive(Clone, Debug)]
pub struct NsSample {
    /// Namespace inode (what `stats` calls `netns`).
    pub netns: u32,
    /// The agent's name for it: `host`, an `ip netns` name, `docker:<id12>`,
    /// `pid N (comm)`, ...
    pub name: String,
    /// The container living in it as `runtime:id` (`docker:<id12>`), empty
    /// when none.
    pub container: String,
    pub counts: Counts,
    pub exact: bool,
    /// The host namespace or the agent's own: every family x state series is
    /// exported, zeros included (others export only non-zero series).
    pub full_series: bool,
}

/// A kernel-side count of one kind of transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// 0 = IPv4 (tcp4), 1 = IPv6 (tcp6), as the kernel counters key it.
    pub family: u8,
    /// Kernel state numbers.
    pub old: u8,
    pub new: u8,
    pub count: u64,
}

/// One active leak alert.
#[derive(Clone, Debug)]
pub struct AlertSample {
    pub rule: String,
    pub severity: String,
    pub netns: u32,
}

/// The agent process's own resource use, as client libraries report it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    /// Unix time the process started.
    pub start_time_seconds: f64,
}

/// Everything one scrape reports. Plain data.
#[derive(Clone, Debug, Default)]
pub struct MetricsInput {
    pub namespaces: Vec<NsSample>,
    /// Age of the oldest refreshed part (TIME_WAIT, request SYN_RECV, UDP)
    /// over all namespaces: the staleness bound of every `netconn_sockets`.
    pub refresh_age: Duration,
    pub reseeds: u64,
    /// Kernel events lost for counting over the agent's life.
    pub events_missed: u64,
    /// Events a watcher did not receive (slow reader or kernel ring full),
    /// counted once per watcher.
    pub watch_dropped: u64,
    pub transitions: Vec<Transition>,
    pub alerts: Vec<AlertSample>,
    pub version: &'static str,
    /// None when /proc/self could not be read (the metrics are left out).
    pub process: Option<ProcessStats>,
}

/// The exposition formats a scraper can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4 (the default).
    Text,
    /// OpenMetrics 1.0 text, when the Accept header names it.
    OpenMetrics,
}

impl Format {
    /// Prometheus asks for OpenMetrics first when it can parse it; anything
    /// else (curl, promtool, an old scraper) gets the classic text format.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// `node_tcp_connection_states`' spelling of a state.
fn state_label(state: State) -> &'static str {
    match state {
        State::Established => "established",
        State::SynSent => "syn_sent",
        State::SynRecv => "syn_recv",
        State::FinWait1 => "fin_wait1",
        State::FinWait2 => "fin_wait2",
        State::TimeWait => "time_wait",
        State::Close => "close",
        State::CloseWait => "close_wait",
        State::LastAck => "last_ack",
        State::Listen => "listen",
        State::Closing => "closing",
        State::Unknown => "unknown",
    }
}

/// Encode one scrape's worth of metrics.
pub fn encode(input: MetricsInput, format: Format) -> Result<String, MetricsError> {
    // About 130 bytes a socket series (five labels): sized up front so a
    // large scrape is not copied again and again while it grows.
    let cells: usize = input
        .namespaces
        .iter()
        .map(|ns| {
            if ns.full_series {
                44
            } else {
                nonzero_cells(&ns.counts)
            }
        })
        .sum();
    let mut out = String::with_capacity(8 * 1024 + cells * 140 + input.transitions.len() * 100);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(input)));
    match format {
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?,
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

fn nonzero_cells(counts: &Counts) -> usize {
    Family::ALL
        .iter()
        .flat_map(|&f| State::ALL.iter().map(move |&s| counts.get(f, s)))
        .filter(|&n| n > 0)
        .count()
}

/// One scrape's input as a collector: the registry calls it once.
#[derive(Debug)]
struct Scrape(MetricsInput);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let input = &self.0;
        let mut netns_ids: Vec<String> = Vec::with_capacity(input.namespaces.len());
        for ns in &input.namespaces {
            netns_ids.push(ns.netns.to_string());
        }

        let mut sockets = encoder.encode_descriptor(
            "netconn_sockets",
            "Sockets per network namespace, family and state, as ss counts them.",
            None,
            MetricType::Gauge,
        )?;
        for (ns, netns) in input.namespaces.iter().zip(&netns_ids) {
            let container = ns.container.as_str();
            for family in Family::ALL {
                for state in State::ALL {
                    let n = ns.counts.get(family, state);
                    // UNKNOWN is not a state node_exporter knows: only when seen.
                    let wanted = n > 0 || (ns.full_series && state != State::Unknown);
                    if !wanted {
                        continue;
                    }
                    let labels = [
                        ("netns", netns.as_str()),
                        ("netns_name", ns.name.as_str()),
                        ("container", container),
                        ("family", family.name()),
                        ("state", state_label(state)),
                    ];
                    sockets.encode_family(&labels)?.encode_gauge(&n)?;
                }
            }
        }

        if !input.transitions.is_empty() {
            let mut transitions = encoder.encode_descriptor(
                "netconn_transitions",
                "TCP state transitions counted by the kernel program.",
                None,
                MetricType::Counter,
            )?;
            for t in &input.transitions {
                let family = if t.family == 0 { "tcp4" } else { "tcp6" };
                let labels = [
                    ("family", family),
                    ("from", state_label(State::from_kernel(t.old))),
                    ("to", state_label(State::from_kernel(t.new))),
                ];
                transitions
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&t.count, None)?;
            }
        }

        let mut exact = encoder.encode_descriptor(
            "netconn_counts_exact",
            "1 when every count of the namespace is exact, 0 when not (see the agent's log or netconn stats).",
            None,
            MetricType::Gauge,
        )?;
        for (ns, netns) in input.namespaces.iter().zip(&netns_ids) {
            exact
                .encode_family(&[("netns", netns.as_str())])?
                .encode_gauge(&u32::from(ns.exact))?;
        }

        encoder
            .encode_descriptor(
                "netconn_refresh_age",
                "Age of the oldest refreshed part of the counts (TIME_WAIT, request SYN_RECV, UDP) over all namespaces when scraped.",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?
            .encode_gauge(&input.refresh_age.as_secs_f64())?;
        for (name, help, value) in [
            (
                "netconn_reseeds",
                "Times the agent re-seeded its kernel counters to recover exactness.",
                input.reseeds,
            ),
            (
                "netconn_events_missed",
                "Kernel socket state events lost for counting (skipped and not handled by the backup program).",
                input.events_missed,
            ),
            (
                "netconn_watch_dropped",
                "Transition events not delivered to a watcher (slow reader or full kernel ring), counted per watcher.",
                input.watch_dropped,
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }

        if !input.alerts.is_empty() {
            let mut alerts = encoder.encode_descriptor(
                "netconn_leak_alert_active",
                "1 for each leak alert active now (netconn check --leaks).",
                None,
                MetricType::Gauge,
            )?;
            for a in &input.alerts {
                let netns = a.netns.to_string();
                let labels = [
                    ("rule", a.rule.as_str()),
                    ("severity", a.severity.as_str()),
                    ("netns", netns.as_str()),
                ];
                alerts.encode_family(&labels)?.encode_gauge(&1u32)?;
            }
        }

        encoder
            .encode_descriptor(
                "netconn_build",
                "A metric with a constant '1' value labeled by the netconn version.",
                None,
                MetricType::Info,
            )?
            .encode_info(&[("version", input.version)])?;

        if let Some(p) = &input.process {
            encode_process(&mut encoder, p)?;
        }
        Ok(())
    }
}

/// The `process_*` metrics with client_golang's names and help texts.
fn encode_process(
    encoder: &mut DescriptorEncoder,
    p: &ProcessStats,
) -> Result<(), std::fmt::Error> {
    encoder
        .encode_descriptor(
            "process_cpu",
            "Total user and system CPU time spent in seconds.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&p.cpu_seconds, None)?;
    encoder
        .encode_descriptor(
            "process_open_fds",
            "Number of open file descriptors.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&p.open_fds)?;
    encoder
        .encode_descriptor(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&p.max_fds)?;
    encoder
        .encode_descriptor(
            "process_virtual_memory",
            "Virtual memory size in bytes.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?
        .encode_gauge(&p.virtual_bytes)?;
    encoder
        .encode_descriptor(
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(&Unit::Bytes),
            MetricType::Gauge,
        )?
        .encode_gauge(&p.resident_bytes)?;
    encoder
        .encode_descriptor(
            "process_start_time",
            "Start time of the process since unix epoch in seconds.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?
        .encode_gauge(&p.start_time_seconds)?;
    Ok(())
}

impl ProcessStats {
    /// Read from /proc/self as client libraries do; None if unreadable.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
        // SAFETY: sysconf has no preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid pointer to an rlimit.
        let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            limit.rlim_cur
        } else {
            0
        };
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        parse_stat(&stat, boot_time, ticks as u64, page as u64).map(|mut p| {
            p.open_fds = open_fds;
            p.max_fds = max_fds;
            p
        })
    }
}

/// The fields of /proc/self/stat that the process metrics need. The
/// command name may hold spaces and parentheses: fields count from the
/// last ')'.
fn parse_stat(stat: &str, boot_time: u64, ticks: u64, page: u64) -> Option<ProcessStats> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state) in proc(5)'s numbering.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ticks = ticks.max(1) as f64;
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
        open_fds: 0,
        max_fds: 0,
    })
}

/// Where the metrics are served; bound before the agent loads anything so a
/// bad address or a taken port fails at once.
pub struct MetricsServer {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

/// What the server calls to take one scrape's input.
pub type Source = Arc<dyn Fn() -> MetricsInput + Send + Sync>;

impl MetricsServer {
    pub fn bind(addr: &str) -> Result<MetricsServer, MetricsError> {
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| MetricsError::BadAddress(addr.to_string()))?;
        let listener = std::net::TcpListener::bind(addr).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => MetricsError::InUse(addr),
            _ => MetricsError::Bind(addr, e),
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| MetricsError::Bind(addr, e))?;
        let addr = listener.local_addr().unwrap_or(addr);
        Ok(MetricsServer { listener, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until the future is dropped (the agent's shutdown).
    pub async fn serve(self, source: Source) {
        let listener = match tokio::net::TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                log::error!("cannot serve metrics on {}: {e}", self.addr);
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!("metrics accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let source = Arc::clone(&source);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let source = Arc::clone(&source);
                    async move { Ok::<_, Infallible>(respond(req, source).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    log::debug!("metrics connection ended: {e}");
                }
                drop(permit);
            });
        }
    }
}

/// Only `GET /metrics` (and `HEAD`) does work; `/` links to it.
async fn respond(req: Request<Incoming>, source: Source) -> Response<Full<Bytes>> {
    let is_get = req.method() == Method::GET || req.method() == Method::HEAD;
    match req.uri().path() {
        "/metrics" if is_get => {}
        "/metrics" | "/" if !is_get => {
            let mut r = response(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n".into(),
            );
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        "/" => {
            let body = "<html><head><title>netconn</title></head><body>\
                        <h1>netconn</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n";
            return response(StatusCode::OK, "text/html; charset=utf-8", body.into());
        }
        _ => return response(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
    let format = Format::from_accept(
        req.headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    let started = Instant::now();
    // Off the runtime thread: the agent's socket keeps answering meanwhile.
    let encoded = tokio::task::spawn_blocking(move || {
        let began = Instant::now();
        let input = source();
        let taken = began.elapsed();
        encode(input, format).map(|body| (body, taken, began.elapsed()))
    })
    .await;
    match encoded {
        Ok(Ok((body, taken, work))) => {
            // `cargo xtask bench --part metrics` reads this line: the time a
            // scrape spends inside the agent, and its parts.
            log::debug!(
                "scrape: {} bytes in {:.3} ms (input {:.3} ms, input + encoding {:.3} ms)",
                body.len(),
                started.elapsed().as_secs_f64() * 1000.0,
                taken.as_secs_f64() * 1000.0,
                work.as_secs_f64() * 1000.0
            );
            response(StatusCode::OK, format.content_type(), body.into())
        }
        Ok(Err(e)) => {
            log::error!("{e}");
            response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "encoding failed\n".into(),
            )
        }
        Err(e) => {
            log::error!("metrics scrape failed: {e}");
            response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "scrape failed\n".into(),
            )
        }
    }
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> MetricsInput {
        let mut own = Counts::default();
        own.set(Family::Tcp4, State::Established, 3);
        own.set(Family::Udp6, State::Close, 2);
        let mut other = Counts::default();
        other.set(Family::Tcp6, State::Listen, 1);
        MetricsInput {
            namespaces: vec![
                NsSample {
                    netns: 4026531840,
                    name: "host".into(),
                    container: String::new(),
                    counts: own,
                    exact: true,
                    full_series: true,
                },
                NsSample {
                    netns: 4026532001,
                    name: "docker:0123456789ab".into(),
                    container: "docker:0123456789ab \"1\"".into(),
                    counts: other,
                    exact: false,
                    full_series: false,
                },
            ],
            refresh_age: Duration::from_millis(120),
            reseeds: 2,
            events_missed: 5,
            watch_dropped: 7,
            transitions: vec![],
            alerts: vec![AlertSample {
                rule: "close-wait-age".into(),
                severity: "warning".into(),
                netns: 4026531840,
            }],
            version: "0.1.0",
            process: Some(ProcessStats {
                cpu_seconds: 1.5,
                resident_bytes: 4096,
                virtual_bytes: 8192,
                open_fds: 9,
                max_fds: 1024,
                start_time_seconds: 1.7e9,
            }),
        }
    }

    fn samples(text: &str, name: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn own_namespace_has_every_series_others_only_non_zero() {
        let text = encode(sample(), Format::Text).unwrap();
        let sockets = samples(&text, "netconn_sockets");
        // 4 families x 11 states for the host, 1 for the other namespace.
        assert_eq!(sockets.len(), 45, "{text}");
        assert!(sockets.contains(
            &r#"netconn_sockets{netns="4026531840",netns_name="host",container="",family="tcp4",state="established"} 3"#
                .to_string()
        ));
        assert!(sockets.contains(
            &r#"netconn_sockets{netns="4026531840",netns_name="host",container="",family="tcp6",state="syn_recv"} 0"#
                .to_string()
        ));
        // Label values are escaped.
        assert!(sockets.contains(
            &r#"netconn_sockets{netns="4026532001",netns_name="docker:0123456789ab",container="docker:0123456789ab \"1\"",family="tcp6",state="listen"} 1"#
                .to_string()
        ));
        assert!(!text.contains("state=\"unknown\""));
        assert!(text.contains("# TYPE netconn_sockets gauge\n"));
    }

    #[test]
    fn scalar_metrics_have_prometheus_names() {
        let text = encode(sample(), Format::Text).unwrap();
        for line in [
            "netconn_counts_exact{netns=\"4026531840\"} 1",
            "netconn_counts_exact{netns=\"4026532001\"} 0",
            "netconn_refresh_age_seconds 0.12",
            "netconn_reseeds_total 2",
            "netconn_events_missed_total 5",
            "netconn_watch_dropped_total 7",
            "netconn_leak_alert_active{rule=\"close-wait-age\",severity=\"warning\",netns=\"4026531840\"} 1",
            "netconn_build_info{version=\"0.1.0\"} 1",
            "process_cpu_seconds_total 1.5",
            "process_resident_memory_bytes 4096",
            "process_virtual_memory_bytes 8192",
            "process_open_fds 9",
            "process_max_fds 1024",
            "process_start_time_seconds 1700000000.0",
            "# TYPE netconn_reseeds_total counter",
            "# TYPE netconn_build_info gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // No transitions yet: the metric has no series and no header.
        assert!(!text.contains("netconn_transitions"));
    }

    #[test]
    fn openmetrics_has_types_units_and_eof() {
        let text = encode(sample(), Format::OpenMetrics).unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for line in [
            "# TYPE netconn_reseeds counter",
            "netconn_reseeds_total 2",
            "# TYPE netconn_build info",
            "netconn_build_info{version=\"0.1.0\"} 1",
            "# UNIT netconn_refresh_age_seconds seconds",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn transitions_are_labelled_by_family_and_states() {
        let mut input = sample();
        input.transitions = vec![Transition {
            family: 1,
            old: 2,
            new: 1,
            count: 42,
        }];
        let text = encode(input, Format::Text).unwrap();
        assert!(
            text.contains(
                "netconn_transitions_total{family=\"tcp6\",from=\"syn_sent\",to=\"established\"} 42\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn accept_header_picks_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Text);
        assert_eq!(Format::from_accept(None), Format::Text);
    }

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let stat = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 123456789 300 18446744073709551615";
        let p = parse_stat(stat, 1_700_000_000, 100, 4096).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.start_time_seconds, 1_700_000_010.0);
        assert_eq!(p.virtual_bytes, 123_456_789);
        assert_eq!(p.resident_bytes, 300 * 4096);
        assert!(parse_stat("garbage", 0, 100, 4096).is_none());
    }

    #[test]
    fn bad_addresses_are_one_line_errors() {
        let e = MetricsServer::bind("localhost").err().unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "bad --metrics address \"localhost\": expected IP:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}"
            )
        );
        let taken = MetricsServer::bind("127.0.0.1:0").unwrap();
        let e = MetricsServer::bind(&taken.addr().to_string())
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot serve metrics on {}: address already in use",
                taken.addr()
            )
        );
    }
}
