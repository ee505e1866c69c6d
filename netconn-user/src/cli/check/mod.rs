//! `netconn check`: a Nagios/Icinga plugin, drop-in for the Python
//! `network-connections` plugin: always one line on stdout and a plugin
//! exit code. `evaluate` and `range` are the pure part (filters, thresholds,
//! the report); this module fetches the counts; `leaks` reports the agent's
//! leak alerts.
//!
//! Choices where the original behaviour is not pinned down:
//! - Only non-zero (type, status) items are shown and checked against the
//!   thresholds, so "nothing matched" is always OK (as in the original).
//! - TCP sockets in [`State::Unknown`] are shown as `tcp UNKNOWN: n` only when
//!   the status filter is absent or `all`: no `--conn-status` value names
//!   them, and hiding them from an unfiltered check would make totals lie.
//! - `--always-ok` puts ` (always ok)` before the `|` so perfdata stays
//!   parseable, and applies to the "no connections" line too. It does not
//!   mask argument errors: those stay UNKNOWN.
//! - Values are case-sensitive, like the original's argparse choices.

mod evaluate;
mod leaks;
mod range;
#[cfg(test)]
mod tests;

use std::{path::PathBuf, process::ExitCode};

use netconn_common::Counts;

pub use evaluate::evaluate;
pub use range::{Range, RangeError};

use super::client::{Client, ClientError};
use crate::{kernel::diag, proto::DEFAULT_SOCKET};

/// Arguments of `netconn check`; main.rs flattens this into its subcommand.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct CheckArgs {
    /// Connection type to count (all, tcp, tcp6, udp, udp6); repeatable, OR'd.
    #[arg(long = "conn-type", value_name = "TYPE")]
    pub conn_type: Vec<String>,

    /// Connection status to count (all, close, close_wait, closing,
    /// established, fin_wait1, fin_wait2, last_ack, listen, none, syn_recv,
    /// syn_sent, time_wait); repeatable, OR'd. UDP sockets have status none.
    #[arg(long = "conn-status", value_name = "STATUS")]
    pub conn_status: Vec<String>,

    /// WARNING threshold per item, as a Nagios range (e.g. 200, 10:, @5:10).
    // Hyphen values allowed so negative ranges such as `-10:-5` reach our
    // parser instead of being taken for flags.
    #[arg(short = 'w', long, value_name = "RANGE", allow_hyphen_values = true)]
    pub warning: Option<String>,

    /// CRITICAL threshold per item, as a Nagios range.
    #[arg(short = 'c', long, value_name = "RANGE", allow_hyphen_values = true)]
    pub critical: Option<String>,

    /// Report normally but always exit 0.
    #[arg(long)]
    pub always_ok: bool,

    /// Leave out the performance data after `|`.
    #[arg(long)]
    pub no_perfdata: bool,

    // A plain flag because clap's automatic version flag lives on commands,
    // not on flattened args; `run` answers it before contacting the agent.
    /// Print the version and exit.
    #[arg(short = 'V', long)]
    pub version: bool,

    /// Agent socket.
    #[arg(long, value_name = "PATH", env = "NETCONN_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// The network namespace to check (name, container id, inode, pid or
    /// path; see `netconn stats --netns`). Default: the agent's own. Needs
    /// the agent.
    #[arg(long, value_name = "NETNS")]
    pub netns: Option<String>,

    /// Fail (UNKNOWN) instead of falling back when the agent is unreachable.
    #[arg(long)]
    pub require_agent: bool,

    /// Report the agent's active leak alerts instead of counts (WARNING or
    /// CRITICAL by the worst alert's severity, OK when there are none).
    #[arg(long)]
    pub leaks: bool,
}

/// Plugin state; the discriminant is the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Status {
    /// Process exit code.
    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
            Status::Unknown => "UNKNOWN",
        }
    }
}

/// Everything that makes the check UNKNOWN. Each message is a single line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckError {
    #[error("invalid --{flag} range '{value}': {source}")]
    InvalidRange {
        flag: &'static str,
        value: String,
        source: RangeError,
    },
    #[error("invalid --conn-type value '{0}' (expected one of: all, tcp, tcp6, udp, udp6)")]
    UnknownConnType(String),
    #[error(
        "invalid --conn-status value '{0}' (expected one of: all, close, close_wait, closing, \
         established, fin_wait1, fin_wait2, last_ack, listen, none, syn_recv, syn_sent, time_wait)"
    )]
    UnknownConnStatus(String),
}

impl CheckError {
    /// Argument and internal errors are always UNKNOWN (never masked by
    /// `--always-ok`).
    pub fn status(&self) -> Status {
        Status::Unknown
    }
}

/// The `-V/--version` output.
pub fn version_line() -> String {
    format!("netconn check {}", env!("CARGO_PKG_VERSION"))
}

/// What to print and how to exit for a clap parse failure: help and version
/// requests keep clap's full text and exit 0; anything else becomes one line
/// and UNKNOWN (clap would otherwise exit 2, which Nagios reads as CRITICAL).
pub fn clap_error_report(err: &clap::Error) -> (String, Status) {
    use clap::error::ErrorKind;
    // Plain text: the StyledStr Display drops ANSI styling.
    let rendered = err.render().to_string();
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            (rendered.trim_end().to_string(), Status::Ok)
        }
        _ => {
            let first = rendered
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("invalid arguments");
            let line = first.strip_prefix("error: ").unwrap_or(first);
            (line.to_string(), Status::Unknown)
        }
    }
}

/// `netconn check`: print the line, return the plugin's exit code.
pub fn run(args: &CheckArgs) -> ExitCode {
    let (line, status) = if args.version {
        (version_line(), Status::Ok)
    } else if args.leaks {
        leaks::check(args)
    } else {
        match counts(args) {
            Ok(counts) => evaluate(&counts, args).unwrap_or_else(|e| (e.to_string(), e.status())),
            Err(e) => (
                format!("UNKNOWN: {}", crate::render_error(&e)),
                Status::Unknown,
            ),
        }
    };
    println!("{line}");
    ExitCode::from(status.code() as u8)
}

/// Counts from the agent; without one, from a single netlink dump (same
/// numbers, O(sockets) instead of O(1)) unless `--require-agent`.
fn counts(args: &CheckArgs) -> anyhow::Result<Counts> {
    let netns = args.netns.as_deref().map(crate::cli::netns_arg);
    match Client::connect(&args.socket).and_then(|mut c| c.stats(netns.clone())) {
        Ok(reply) => Ok(reply.counts),
        Err(ClientError::NoAgent(path)) if args.require_agent || netns.is_some() => {
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
