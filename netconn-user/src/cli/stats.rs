//! `netconn stats`: the agent's counts as a table or as its JSON.

use std::{fmt::Write as _, path::PathBuf};

use netconn_common::{Counts, Family, State};

use super::client::Client;
use crate::proto::{self, NamespacesReply};

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// The agent's socket.
    #[arg(long, env = "NETCONN_SOCKET", default_value = proto::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON: the keys tcp4, tcp6, udp4, udp6, tcp, udp, all, and meta.
    #[arg(long)]
    pub json: bool,
    /// With --json: leave out `meta`, printing exactly the seven count keys
    /// (the drop-in form for consumers that validate that shape strictly).
    #[arg(long, requires = "json", conflicts_with = "all_netns")]
    pub no_meta: bool,
    /// The network namespace to count: a name (`host`, an `ip netns` name, a
    /// container name as listed by --all-netns), a container id, an inode, a
    /// pid inside it, or a path such as /run/netns/NAME. Default: the
    /// agent's own.
    #[arg(long, value_name = "NETNS")]
    pub netns: Option<String>,
    /// One line per namespace the agent tracks (with --json: every count).
    #[arg(long, conflicts_with = "netns")]
    pub all_netns: bool,
}

pub fn run(args: &StatsArgs) -> anyhow::Result<()> {
    let mut client = Client::connect(&args.socket)?;
    if args.all_netns {
        let reply = client.stats_all()?;
        if args.json {
            println!("{}", serde_json::to_string(&reply)?);
        } else {
            print!("{}", namespaces_table(&reply));
        }
        return Ok(());
    }
    let reply = client.stats(args.netns.as_deref().map(super::netns_arg))?;
    if args.json {
        let line = if args.no_meta {
            serde_json::to_string(&reply.counts)?
        } else {
            serde_json::to_string(&reply)?
        };
        println!("{line}");
        return Ok(());
    }
    let meta = &reply.meta;
    if args.netns.is_some() {
        println!("network namespace {} ({})", meta.netns_name, meta.netns);
    }
    print!("{}", table(&reply.counts));
    if meta.exact {
        println!(
            "exact; TIME_WAIT/request/UDP part {:.0} ms old",
            meta.refreshed_age_ms
        );
    } else {
        println!("NOT EXACT: {}", meta.inexact.join("; "));
    }
    Ok(())
}

/// Human table: one row per state, one column per family plus totals.
/// States that are zero everywhere are left out to keep it short.
pub fn table(counts: &Counts) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "STATE", "tcp4", "tcp6", "udp4", "udp6", "total"
    );
    let mut row = |label: &str, cells: [u64; 4]| {
        let total: u64 = cells.iter().sum();
        let _ = writeln!(
            out,
            "{label:<12} {:>9} {:>9} {:>9} {:>9} {total:>9}",
            cells[0], cells[1], cells[2], cells[3]
        );
    };
    for state in State::ALL {
        let cells = Family::ALL.map(|f| counts.get(f, state));
        if cells.iter().any(|&n| n > 0) {
            row(state.name(), cells);
        }
    }
    row("total", Family::ALL.map(|f| counts.family_total(f)));
    out
}

/// `--all-netns`: one line per namespace with the totals of the main states.
pub fn namespaces_table(reply: &NamespacesReply) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<22} {:>10} {:>8} {:>7} {:>9} {:>10} {:>8} {:>6} {:>8}",
        "NAME",
        "CONTAINER",
        "NETNS",
        "ESTAB",
        "LISTEN",
        "TIME_WAIT",
        "CLOSE_WAIT",
        "SYN_RECV",
        "UDP",
        "TOTAL"
    );
    for ns in &reply.namespaces {
        let c = &ns.counts;
        let tcp = |s: State| c.sum(&[Family::Tcp4, Family::Tcp6], s);
        let udp = c.family_total(Family::Udp4) + c.family_total(Family::Udp6);
        let container = ns
            .container
            .as_ref()
            .map(|c| format!("{}:{}", c.runtime, c.id.get(..12).unwrap_or(&c.id)))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<24} {:<22} {:>10} {:>8} {:>7} {:>9} {:>10} {:>8} {:>6} {:>8}{}",
            ns.name,
            container,
            ns.netns,
            tcp(State::Established),
            tcp(State::Listen),
            tcp(State::TimeWait),
            tcp(State::CloseWait),
            tcp(State::SynRecv),
            udp,
            c.total(),
            if ns.exact { "" } else { "  NOT EXACT" }
        );
    }
    let meta = &reply.meta;
    if meta.exact {
        let _ = writeln!(out, "{} namespaces, exact", reply.namespaces.len());
    } else {
        let _ = writeln!(
            out,
            "{} namespaces; NOT EXACT: {}",
            reply.namespaces.len(),
            meta.inexact.join("; ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_non_zero_states_and_totals() {
        let mut c = Counts::default();
        c.set(Family::Tcp4, State::Listen, 3);
        c.set(Family::Udp6, State::Close, 2);
        let t = table(&c);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("STATE"));
        assert!(
            lines[1].starts_with("CLOSE ") && lines[1].ends_with(" 2"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("LISTEN") && lines[2].ends_with(" 3"),
            "{t}"
        );
        assert!(
            lines[3].starts_with("total") && lines[3].ends_with(" 5"),
            "{t}"
        );
    }
}
