//! The client commands, one module each: they ask the agent over its
//! socket (`client`, speaking `proto`) and print. Nothing here loads eBPF
//! or holds agent state; `check` alone falls back to a sock_diag dump.

pub mod check;
pub mod client;
pub mod generate;
pub mod stats;
pub mod top;
pub mod unload;
pub mod watch;

use clap::{Parser, Subcommand};

use crate::agent;

/// Where things are, for `--help` and the man page's closing section.
const AFTER_HELP: &str = "\
Files:
  /run/netconn/netconn.sock
      the agent's socket (mode 0660; --group gives a group access)
  /usr/lib/systemd/system/netconn.service
      the packaged unit; members of group netconn may query it
  /usr/share/netconn/
      example leak rules and monitoring files

Environment:
  NETCONN_SOCKET   socket path for every command (as --socket)
  NETCONN_LOG      agent log level: error, warn, info (default), debug

See netconn-agent(1), netconn-stats(1), netconn-watch(1), netconn-check(1).";

/// The whole command line, one definition for the binary (and for man
/// pages and completions).
#[derive(Parser, Debug)]
#[command(
    name = "netconn",
    version,
    about = "Exact live TCP/UDP connection-state counts from the kernel",
    after_long_help = AFTER_HELP
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(generate::CompletionsArgs),
    /// Detach and remove the kernel side `agent --pin` left pinned.
    Unload(unload::UnloadArgs),
    /// Write the man pages into a directory (used by packaging).
    #[command(hide = true)]
    GenerateMan(generate::GenerateManArgs),
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
