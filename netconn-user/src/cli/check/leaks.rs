//! `check --leaks`: the agent's active leak alerts as one Nagios line,
//! worst severity first; OK when there are none.

use super::{CheckArgs, Status};
use crate::cli::client::{Client, ClientError};

pub fn check(args: &CheckArgs) -> (String, Status) {
    let mut alerts = match Client::connect(&args.socket).and_then(|mut c| c.leaks()) {
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
