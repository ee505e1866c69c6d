//! `netconn watch`: ask the agent for the transition (or alert) stream and
//! print it, as aligned columns or as the agent's JSON lines.

use std::{
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
};

use anyhow::Context as _;

use super::client::{ClientError, connect_stream};
use crate::proto::{self, AlertEvent, ErrorReply, Filter, Request, Transition, WatchLine};

#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// Either side's port; repeatable.
    #[arg(long)]
    port: Vec<u16>,
    /// Local port; repeatable.
    #[arg(long)]
    local_port: Vec<u16>,
    /// Remote port; repeatable.
    #[arg(long)]
    remote_port: Vec<u16>,
    /// 4 or 6; repeatable.
    #[arg(long, value_parser = clap::value_parser!(u8).range(4..=6))]
    family: Vec<u8>,
    /// State (old or new), e.g. ESTABLISHED or close_wait; repeatable.
    #[arg(long)]
    state: Vec<String>,
    /// Network namespace: a name, container id, inode, pid, or a path such
    /// as /run/netns/NAME; repeatable (default: every namespace).
    #[arg(long)]
    netns: Vec<String>,
    /// Print one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Show leak alerts (fired and cleared) instead of transitions.
    #[arg(long)]
    alerts: bool,
    /// The agent's socket.
    #[arg(long, env = "NETCONN_SOCKET", default_value = proto::DEFAULT_SOCKET)]
    socket: PathBuf,
}

pub fn run(args: &WatchArgs) -> anyhow::Result<()> {
    let filter = Filter {
        port: args.port.clone(),
        local_port: args.local_port.clone(),
        remote_port: args.remote_port.clone(),
        family: args.family.clone(),
        state: args.state.iter().map(|s| s.to_ascii_uppercase()).collect(),
        netns: Vec::new(),
        netns_name: args.netns.iter().map(|n| super::netns_arg(n)).collect(),
    };
    filter.validate().map_err(anyhow::Error::msg)?;
    let stream: UnixStream = connect_stream(&args.socket)?;
    let mut request = serde_json::to_vec(&Request::watch(filter, args.alerts))?;
    request.push(b'\n');
    (&stream)
        .write_all(&request)
        .context("sending the watch request")?;

    let out = std::io::stdout();
    let mut out = BufWriter::new(out.lock());
    if !args.json && !args.alerts {
        writeln!(out, "{}", header())?;
        out.flush()?;
    }
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        if reader
            .read_line(&mut line)
            .context("reading from the agent")?
            == 0
        {
            anyhow::bail!("the agent closed the stream");
        }
        // Only the first line can be a refusal; after it, lines are events,
        // drop reports or alerts.
        if first {
            first = false;
            if let Ok(refusal) = serde_json::from_str::<ErrorReply>(&line) {
                return Err(ClientError::Agent(refusal.error).into());
            }
        }
        let written = if args.json {
            // The agent's lines are already the documented JSON: from here
            // on, pass its bytes through as they come (no line splitting,
            // no UTF-8 check), so one watcher keeps up with the kernel at
            // little cost.
            if out
                .write_all(line.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                return Ok(());
            }
            return pass_through(reader, out);
        } else {
            let value: WatchLine =
                serde_json::from_str(&line).context("the agent sent a malformed line")?;
            writeln!(out, "{}", text(&value))
        };
        // A closed stdout (e.g. `| head`) ends the watch quietly.
        if written.is_err() {
            return Ok(());
        }
        // Flush when the agent has nothing more buffered right now.
        if reader.buffer().is_empty() && out.flush().is_err() {
            return Ok(());
        }
    }
}

/// Copy the agent's stream to `out` until either end closes.
fn pass_through(
    mut reader: BufReader<UnixStream>,
    mut out: impl std::io::Write,
) -> anyhow::Result<()> {
    loop {
        let chunk = reader.fill_buf().context("reading from the agent")?;
        if chunk.is_empty() {
            // Whatever is buffered goes out before the error.
            let _ = out.flush();
            anyhow::bail!("the agent closed the stream");
        }
        let n = chunk.len();
        // A closed stdout (e.g. `| head`) ends the watch quietly.
        if out.write_all(chunk).and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
        reader.consume(n);
    }
}

fn header() -> String {
    format!(
        "{:<27} {:>10} {:<4} {:<28} {:<28} {:<11}    {:<11} {:>10} {:>7} {}",
        "TIME", "NETNS", "FAM", "LOCAL", "REMOTE", "OLD", "NEW", "MS", "PID", "COMM"
    )
}

/// One aligned line for an event, a drop report or an alert.
fn text(line: &WatchLine) -> String {
    match line {
        WatchLine::Dropped(d) => format!(
            "*** dropped {} events (slow reader {}, kernel ring full {})",
            d.dropped, d.slow_reader, d.kernel_ring
        ),
        WatchLine::Alert { alert } => {
            let (event, at, severity, message) = match alert {
                AlertEvent::Fired(a) => ("FIRED", a.since, Some(a.severity), &a.message),
                AlertEvent::Updated(a) => ("UPDATED", a.since, Some(a.severity), &a.message),
                AlertEvent::Cleared {
                    cleared_at,
                    message,
                    ..
                } => ("CLEARED", *cleared_at, None, message),
            };
            let severity = severity.map(|s| s.name()).unwrap_or("");
            format!(
                "{} {event:<8} {severity:<8} {message}",
                humantime::format_rfc3339_millis(at)
            )
        }
        WatchLine::Transition(t) => transition(t),
    }
}

fn transition(t: &Transition) -> String {
    let endpoint = |addr: &str, port: u16| {
        if addr.contains(':') {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        }
    };
    let pid = t.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    format!(
        "{:<27} {:>10} {:<4} {:<28} {:<28} {:<11} -> {:<11} {:>10.3} {:>7} {}",
        t.time,
        t.netns_name.clone().unwrap_or_else(|| t.netns.to_string()),
        t.family,
        endpoint(&t.laddr, t.lport),
        endpoint(&t.raddr, t.rport),
        t.old,
        t.new,
        t.ms,
        pid,
        t.comm.as_deref().unwrap_or("-"),
    )
}
