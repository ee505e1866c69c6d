//! The client commands, one module each: they ask the agent over its
//! socket (`client`, speaking `proto`) and print. Nothing here loads eBPF
//! or holds agent state; `check` alone falls back to a sock_diag dump.

pub mod check;
pub mod client;
pub mod stats;
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
    /// Nagios/Icinga plugin: check connection counts against thresholds.
    #[command(disable_version_flag = true)]
    Check(check::CheckArgs),
}

/// A `--netns` value as sent to the agent: a path (which only this process
/// may see, e.g. in its mount namespace) becomes the inode it opens; names,
/// ids, inodes and pids go as given (see `proto::NetnsSelector`).
pub fn netns_arg(value: &str) -> String {
    if value.contains('/')
        && let Ok(inode) = crate::kernel::netns::inode_of(std::path::Path::new(value))
    {
        return inode.to_string();
    }
    value.to_string()
}
