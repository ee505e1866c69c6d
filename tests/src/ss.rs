//! Per-(family, state) socket counts as `ss` reports them, as the product's
//! own [`Counts`].

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use netconn_common::{Counts, Family, State};
use serde::Deserialize as _;

/// `ss`'s state column to the state (iproute2's `sstate_name`). UNCONN is
/// state 7 (CLOSE): an unconnected UDP socket.
pub fn ss_state(ss_state: &str) -> Option<State> {
    Some(match ss_state {
        "ESTAB" => State::Established,
        "SYN-SENT" => State::SynSent,
        "SYN-RECV" => State::SynRecv,
        "FIN-WAIT-1" => State::FinWait1,
        "FIN-WAIT-2" => State::FinWait2,
        "TIME-WAIT" => State::TimeWait,
        "UNCONN" | "CLOSED" | "CLOSE" => State::Close,
        "CLOSE-WAIT" => State::CloseWait,
        "LAST-ACK" => State::LastAck,
        "LISTEN" => State::Listen,
        "CLOSING" => State::Closing,
        "UNKNOWN" => State::Unknown,
        _ => return None,
    })
}

/// Counts in the current network namespace (`ss` inherits it; inside
/// [`crate::Netns::run`] that is the namespace's).
pub fn ss_counts() -> Result<Counts> {
    ss_counts_in(None)
}

/// Counts in a network namespace (a name or a namespace file, see
/// [`crate::netns::command_in`]), or
/// in the current one with `None`.
pub fn ss_counts_in(netns: Option<&str>) -> Result<Counts> {
    // The four dumps run in parallel; each is streamed line by line so a
    // 250k-socket namespace never sits in memory as one string.
    let jobs = [
        (Family::Tcp4, "-tanH", "-4"),
        (Family::Tcp6, "-tanH", "-6"),
        (Family::Udp4, "-uanH", "-4"),
        (Family::Udp6, "-uanH", "-6"),
    ];
    let mut handles = Vec::new();
    for (fam, proto, af) in jobs {
        let mut cmd = crate::netns::command_in(netns, "ss");
        cmd.args([proto, af])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning `ss {proto} {af}` (is iproute2 installed?)"))?;
        let stdout = child.stdout.take().context("ss stdout not piped")?;
        let mut stderr = child.stderr.take().context("ss stderr not piped")?;
        let h = thread::spawn(move || -> Result<(Family, [u64; 12])> {
            let parsed = count_ss_lines(BufReader::with_capacity(1 << 16, stdout));
            let mut err = String::new();
            // Best effort: stderr only enriches the error message.
            let _ = stderr.read_to_string(&mut err);
            let status = child.wait().context("waiting for ss")?;
            if !status.success() {
                bail!("`ss {proto} {af}` failed ({status}): {}", err.trim());
            }
            let counts = parsed.with_context(|| format!("parsing `ss {proto} {af}`"))?;
            Ok((fam, counts))
        });
        handles.push(h);
    }
    let mut out = Counts::default();
    for h in handles {
        let (fam, counts) = h
            .join()
            .map_err(|_| anyhow!("ss reader thread panicked"))??;
        for (state, n) in State::ALL.into_iter().zip(counts) {
            out.set(fam, state, n);
        }
    }
    Ok(out)
}

/// Counts rows per state in `ss -H` output (first column = state), in
/// [`State::ALL`] order.
pub fn count_ss_lines(mut r: impl BufRead) -> Result<[u64; 12]> {
    let mut out = [0u64; 12];
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)
            .context("reading ss output")?
            == 0
        {
            break;
        }
        let Some(tok) = line
            .split(|b| b.is_ascii_whitespace())
            .find(|t| !t.is_empty())
        else {
            continue;
        };
        let tok = std::str::from_utf8(tok).unwrap_or("<non-utf8>");
        let state = ss_state(tok).with_context(|| {
            format!(
                "unexpected ss state {tok:?} in line {:?}",
                String::from_utf8_lossy(&line).trim_end()
            )
        })?;
        out[state.index()] += 1;
    }
    Ok(out)
}

/// Cells that differ, as `tcp4 TIME_WAIT: agent 10, ss 12`. Empty if equal.
pub fn diff_counts(agent: &Counts, ss: &Counts) -> Vec<String> {
    diff_counts_labeled(agent, "agent", ss, "ss")
}

/// [`diff_counts`] with own labels (e.g. "expected" / "ss").
pub fn diff_counts_labeled(a: &Counts, a_label: &str, b: &Counts, b_label: &str) -> Vec<String> {
    a.cells()
        .zip(b.cells())
        .filter(|((_, _, x), (_, _, y))| x != y)
        .map(|((f, s, x), (_, _, y))| {
            format!("{} {}: {a_label} {x}, {b_label} {y}", f.name(), s.name())
        })
        .collect()
}

/// Polls [`ss_counts`] until two reads ~200 ms apart are equal, and returns
/// that table.
pub fn wait_quiescent(timeout: Duration) -> Result<Counts> {
    wait_quiescent_with(ss_counts, Duration::from_millis(200), timeout)
}

/// [`wait_quiescent`] with any reader (e.g. `|| ss_counts_in(Some(ns))`).
pub fn wait_quiescent_with(
    mut read: impl FnMut() -> Result<Counts>,
    interval: Duration,
    timeout: Duration,
) -> Result<Counts> {
    let deadline = Instant::now() + timeout;
    let mut prev = read()?;
    loop {
        thread::sleep(interval);
        let cur = read()?;
        if cur == prev {
            return Ok(cur);
        }
        if Instant::now() >= deadline {
            let d = diff_counts_labeled(&prev, "before", &cur, "after");
            bail!(
                "socket counts still changing after {timeout:?}; last change: {}",
                d.join("; ")
            );
        }
        prev = cur;
    }
}

/// Reads a `stats --json`-shaped object (`{"tcp4": {"LISTEN": 3, ...}, ...}`;
/// other keys such as `meta` are ignored).
pub fn counts_from_json(v: &serde_json::Value) -> Result<Counts> {
    Counts::deserialize(v).context("not a stats object")
}
