//! `cargo xtask bench --part metrics`: what a Prometheus scrape costs inside
//! a real agent tracking many network namespaces. Builds `namespaces`
//! `ip netns` namespaces, each holding a few sockets (tcp4 and tcp6
//! listeners and connections, a UDP socket), starts an agent with
//! `--metrics` in one more, scrapes it, and reads the time each scrape
//! spent inside the agent from its debug log. For comparison it times
//! `stats --all-netns`, which reads every namespace's sockstat at query
//! time (the check a scrape takes from the last maintenance pass instead).

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use netconn_tests::{Agent, Netns, http};

/// The documented port; free inside the bench's own namespace.
const METRICS_ADDR: &str = "127.0.0.1:9977";

/// Sockets one namespace holds for the bench (dropped with it).
#[derive(Default)]
struct Held {
    _listeners: Vec<TcpListener>,
    _streams: Vec<TcpStream>,
    _udp: Vec<UdpSocket>,
}

/// Two listeners (tcp4, tcp6), four connected pairs, one UDP socket: five
/// non-zero family x state cells, as a small container has.
fn populate() -> std::io::Result<Held> {
    let mut held = Held::default();
    for ip in [
        std::net::IpAddr::V4(Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
        let addr = listener.local_addr()?;
        for _ in 0..2 {
            held._streams.push(TcpStream::connect(addr)?);
            held._streams.push(listener.accept()?.0);
        }
        held._listeners.push(listener);
    }
    held._udp.push(UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?);
    Ok(held)
}

fn quantiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let pick = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    (pick(0.5), pick(0.99), pick(1.0))
}

/// The agent's `scrape: N bytes in T ms (input I ms, input + encoding W ms)`
/// debug lines: (T, I, W) each.
fn scrape_lines(log: &str) -> Vec<(f64, f64, f64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split_once("scrape: ")?.1;
            let mut numbers = rest
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .filter(|t| !t.is_empty() && *t != ".")
                .filter_map(|t| t.parse::<f64>().ok());
            let _bytes = numbers.next()?;
            Some((numbers.next()?, numbers.next()?, numbers.next()?))
        })
        .collect()
}

pub fn run(netconn: &Path, namespaces: usize, scrapes: usize) -> Result<()> {
    // SAFETY: no other thread of this process reads the environment now.
    unsafe {
        std::env::set_var("NETCONN_BIN", netconn);
        // The scrape timing lines are debug lines.
        std::env::set_var("NETCONN_LOG", "debug");
    }
    eprintln!("bench: creating {namespaces} network namespaces with a few sockets each");
    let started = Instant::now();
    let mut spaces = Vec::with_capacity(namespaces);
    let mut held = Vec::with_capacity(namespaces);
    for _ in 0..namespaces {
        let ns = Netns::create("nc-mb")?;
        held.push(ns.run(populate)?.context("sockets in a bench namespace")?);
        spaces.push(ns);
    }
    eprintln!("bench: created in {:.1} s", started.elapsed().as_secs_f64());
    let home = Netns::create("nc-mbench")?;
    let agent = Agent::start_in(Some(&home), &["--metrics", METRICS_ADDR])?;
    // Every bench namespace tracked (plus the host's and any others).
    let deadline = Instant::now() + Duration::from_secs(120);
    let tracked = loop {
        let reply: serde_json::Value =
            serde_json::from_str(&agent.request(r#"{"cmd":"stats","all_netns":true}"#)?)?;
        let n = reply["namespaces"].as_array().map_or(0, Vec::len);
        if n > namespaces {
            break n;
        }
        if Instant::now() > deadline {
            bail!("the agent tracks only {n} namespaces:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // Let the maintenance pass refresh every namespace at least twice.
    std::thread::sleep(Duration::from_secs(3));

    let addr: SocketAddr = METRICS_ADDR.parse()?;
    let log_before = scrape_lines(&agent.log()).len();
    let (round_trips, bytes, series) =
        home.run(move || -> Result<(Vec<f64>, usize, usize)> {
            let mut times = Vec::with_capacity(scrapes);
            let (mut bytes, mut series) = (0, 0);
            for _ in 0..scrapes {
                let t = Instant::now();
                let reply = http::get(addr, "/metrics")?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                ensure!(reply.status == 200, "GET /metrics: {}", reply.status);
                bytes = reply.body.len();
                series = reply
                    .body
                    .lines()
                    .filter(|l| l.starts_with("netconn_sockets{"))
                    .count();
            }
            Ok((times, bytes, series))
        })??;
    let mut all_netns = Vec::with_capacity(scrapes / 4);
    for _ in 0..(scrapes / 4).max(1) {
        let t = Instant::now();
        agent.request(r#"{"cmd":"stats","all_netns":true}"#)?;
        all_netns.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let inside: Vec<(f64, f64, f64)> = scrape_lines(&agent.log())
        .into_iter()
        .skip(log_before)
        .collect();
    ensure!(
        inside.len() >= scrapes,
        "only {} scrape lines in the agent's log",
        inside.len()
    );
    let (t50, t99, tmax) = quantiles(inside.iter().map(|x| x.0).collect());
    let (i50, i99, _) = quantiles(inside.iter().map(|x| x.1).collect());
    let (w50, w99, _) = quantiles(inside.iter().map(|x| x.2).collect());
    let (r50, r99, rmax) = quantiles(round_trips);
    let (a50, a99, amax) = quantiles(all_netns);
    println!(
        "metrics: {tracked} namespaces tracked, {series} netconn_sockets series, {bytes} bytes a scrape, {scrapes} scrapes"
    );
    println!("  inside the agent         p50 {t50:.2} ms  p99 {t99:.2} ms  max {tmax:.2} ms");
    println!("    taking the input       p50 {i50:.2} ms  p99 {i99:.2} ms");
    println!("    input + encoding       p50 {w50:.2} ms  p99 {w99:.2} ms");
    println!("  GET /metrics round trip  p50 {r50:.2} ms  p99 {r99:.2} ms  max {rmax:.2} ms");
    println!(
        "  stats --all-netns (sockstat read per namespace at query time) p50 {a50:.2} ms  p99 {a99:.2} ms  max {amax:.2} ms"
    );
    if t50 > 5.0 {
        println!("  over the 5 ms budget for a scrape");
    }
    agent.stop()?;
    drop(held);
    drop(spaces);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_lines_parse() {
        let log = "netconn[1]: DEBUG scrape: 12345 bytes in 1.250 ms (input 0.500 ms, input + encoding 1.100 ms)\nnetconn[1]: INFO other";
        assert_eq!(scrape_lines(log), vec![(1.25, 0.5, 1.1)]);
    }
}
