//! The client commands, one module each: they ask the agent over its
//! socket (`client`, speaking `proto`) and print. Nothing here loads eBPF
//! or holds agent state; `check` alone falls back to a sock_diag dump.

pub mod check;
pub mod client;
pub mod stats;
pub mod top;
pub mod watch;

use clap::{Parser, Subcommand};

use crate::agent;

/// The whole command line, one definition for the binary (and for man
/// pages and completions).
#[derive(Parser, Debug)]
#[command(
    name = "netconn",
    version,
    about = "Exact live TCP/UDP connection-state counts from the kernel"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load the eBPF tracker, seed existing sockets, serve queries on a Unix socket.
    Agent(agent::Options),
    /// Print the current counts from the agent.
    Stats(stats::StatsArgs),
    /// Stream TCP state transitions (or leak alerts) as they happen.
    Watch(watch::WatchArgs),
    /// Live terminal view: counts with history, namespaces, who holds a state, alerts, transitions.
    Top(top::TopArgs),
    /// Nagios/Icinga plugin: check connection counts against thresholds.
    #[command(disable_version_flag = true)]
    Check(check::CheckArgs),
}
