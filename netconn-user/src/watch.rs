//! `netconn watch`: ask the agent for the transition (or alert) stream and
//! print it, as aligned columns or as the agent's JSON lines.

use std::{
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    os::unix::net::UnixStream,
    path::PathBuf,
};

use anyhow::Context as _;

use crate::{client::ClientError, stream::Filter};

#[derive(clap::Args)]
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
    /// Network namespace inode; repeatable (default: every namespace).
    #[arg(long)]
    netns: Vec<u32>,
    /// Print one JSON object per line.
    #[arg(long)]
    json: bool,
    /// Show leak alerts (fired and cleared) instead of transitions.
    #[arg(long)]
    alerts: bool,
    /// The agent's socket.
    #[arg(long, env = "NETCONN_SOCKET", default_value = crate::proto::DEFAULT_SOCKET)]
    socket: PathBuf,
}

pub fn run(args: WatchArgs) -> anyhow::Result<()> {
    let filter = Filter {
        port: args.port,
        local_port: args.local_port,
        remote_port: args.remote_port,
        family: args.family,
        state: args.state.iter().map(|s| s.to_ascii_uppercase()).collect(),
        netns: args.netns,
    };
    filter.validate().map_err(anyhow::Error::msg)?;
    let stream = UnixStream::connect(&args.socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NoAgent(args.socket.clone())
        }
        std::io::ErrorKind::PermissionDenied => ClientError::Permission(args.socket.clone()),
        _ => ClientError::Io(args.socket.clone(), e),
    })?;
    let request = serde_json::json!({ "cmd": "watch", "filter": filter, "alerts": args.alerts });
    (&stream)
        .write_all(format!("{request}\n").as_bytes())
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
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(error) = v.get("error").and_then(|e| e.as_str())
            {
                return Err(ClientError::Agent(error.to_string()).into());
            }
        }
        let written = if args.json {
            // The agent's lines are already the documented JSON: pass them
            // through unparsed, so one watcher keeps up with the kernel.
            out.write_all(line.as_bytes())
        } else {
            let value: serde_json::Value =
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

fn header() -> String {
    format!(
        "{:<27} {:>10} {:<4} {:<28} {:<28} {:<11}    {:<11} {:>10} {:>7} {}",
        "TIME", "NETNS", "FAM", "LOCAL", "REMOTE", "OLD", "NEW", "MS", "PID", "COMM"
    )
}

/// One aligned line for an event, a drop report or an alert.
fn text(v: &serde_json::Value) -> String {
    if let Some(n) = v.get("dropped") {
        return format!(
            "*** dropped {n} events (slow reader {}, kernel ring full {})",
            v["slow_reader"], v["kernel_ring"]
        );
    }
    if let Some(alert) = v.get("alert") {
        let event = alert["event"]
            .as_str()
            .unwrap_or("alert")
            .to_ascii_uppercase();
        let at = alert["cleared_at"]
            .as_str()
            .or_else(|| alert["since"].as_str())
            .unwrap_or("");
        let severity = alert["severity"].as_str().unwrap_or("");
        return format!(
            "{at} {event:<8} {severity:<8} {}",
            alert["message"].as_str().unwrap_or("")
        );
    }
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    let endpoint = |a: &str, p: &str| {
        let addr = s(a);
        if addr.contains(':') {
            format!("[{addr}]:{}", v[p])
        } else {
            format!("{addr}:{}", v[p])
        }
    };
    let pid = v["pid"]
        .as_u64()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "-".into());
    format!(
        "{:<27} {:>10} {:<4} {:<28} {:<28} {:<11} -> {:<11} {:>10.3} {:>7} {}",
        s("time"),
        v["netns"],
        s("family"),
        endpoint("laddr", "lport"),
        endpoint("raddr", "rport"),
        s("old"),
        s("new"),
        v["ms"].as_f64().unwrap_or(0.0),
        pid,
        v["comm"].as_str().unwrap_or("-"),
    )
}
