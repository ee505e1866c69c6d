//! Per-(family, state) socket counts as `ss` reports them, in the shape of
//! the agent's `stats --json` (`tcp4`, `tcp6`, `udp4`, `udp6`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// family -> state -> count; every family in [`FAMILIES`] and every state
/// in [`STATES`] present (zeros included).
pub type SsCounts = BTreeMap<String, BTreeMap<String, u64>>;

pub const FAMILIES: [&str; 4] = ["tcp4", "tcp6", "udp4", "udp6"];

/// Kernel TCP state names, as the agent reports them.
pub const STATES: [&str; 12] = [
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "UNKNOWN",
];

/// A table with every family and state at zero.
pub fn zero_counts() -> SsCounts {
    FAMILIES
        .iter()
        .map(|f| {
            let states = STATES.iter().map(|s| ((*s).to_owned(), 0)).collect();
            ((*f).to_owned(), states)
        })
        .collect()
}

/// Maps the state column of `ss` to the kernel name. UNCONN is state 7
/// (CLOSE): an unconnected UDP socket.
pub fn ss_state_name(ss_state: &str) -> Option<&'static str> {
    Some(match ss_state {
        "ESTAB" => "ESTABLISHED",
        "SYN-SENT" => "SYN_SENT",
        "SYN-RECV" => "SYN_RECV",
        "FIN-WAIT-1" => "FIN_WAIT1",
        "FIN-WAIT-2" => "FIN_WAIT2",
        "TIME-WAIT" => "TIME_WAIT",
        "UNCONN" | "CLOSED" | "CLOSE" => "CLOSE",
        "CLOSE-WAIT" => "CLOSE_WAIT",
        "LAST-ACK" => "LAST_ACK",
        "LISTEN" => "LISTEN",
        "CLOSING" => "CLOSING",
        "UNKNOWN" => "UNKNOWN",
        _ => return None,
    })
}

/// Counts in the current network namespace (`ss` inherits it; inside
/// [`crate::Netns::run`] that is the namespace's).
pub fn ss_counts() -> Result<SsCounts> {
    ss_counts_in(None)
}

/// Counts in the named network namespace (`ip netns exec NAME ss ...`), or
/// in the current one with `None`.
pub fn ss_counts_in(netns: Option<&str>) -> Result<SsCounts> {
    // The four dumps run in parallel; each is streamed line by line so a
    // 250k-socket namespace never sits in memory as one string.
    let jobs: Vec<(&str, &str, &str)> = vec![
        ("tcp4", "-tanH", "-4"),
        ("tcp6", "-tanH", "-6"),
        ("udp4", "-uanH", "-4"),
        ("udp6", "-uanH", "-6"),
    ];
    let mut handles = Vec::new();
    for (fam, proto, af) in jobs {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "ss"]);
                c
            }
            None => Command::new("ss"),
        };
        cmd.args([proto, af])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning `ss {proto} {af}` (is iproute2 installed?)"))?;
        let stdout = child.stdout.take().context("ss stdout not piped")?;
        let mut stderr = child.stderr.take().context("ss stderr not piped")?;
        let h = thread::spawn(move || -> Result<(String, BTreeMap<String, u64>)> {
            let parsed = count_ss_lines(BufReader::with_capacity(1 << 16, stdout));
            let mut err = String::new();
            // Best effort: stderr only enriches the error message.
            let _ = stderr.read_to_string(&mut err);
            let status = child.wait().context("waiting for ss")?;
            if !status.success() {
                bail!("`ss {proto} {af}` failed ({status}): {}", err.trim());
            }
            let counts = parsed.with_context(|| format!("parsing `ss {proto} {af}`"))?;
            Ok((fam.to_owned(), counts))
        });
        handles.push(h);
    }
    let mut out = zero_counts();
    for h in handles {
        let (fam, counts) = h
            .join()
            .map_err(|_| anyhow!("ss reader thread panicked"))??;
        out.insert(fam, counts);
    }
    Ok(out)
}

/// Counts rows per state in `ss -H` output (first column = state).
pub fn count_ss_lines(mut r: impl BufRead) -> Result<BTreeMap<String, u64>> {
    let mut idx = [0u64; STATES.len()];
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
        let name = ss_state_name(tok).with_context(|| {
            format!(
                "unexpected ss state {tok:?} in line {:?}",
                String::from_utf8_lossy(&line).trim_end()
            )
        })?;
        // STATES holds every name ss_state_name returns.
        if let Some(i) = STATES.iter().position(|s| *s == name) {
            idx[i] += 1;
        }
    }
    Ok(STATES
        .iter()
        .zip(idx)
        .map(|(s, n)| ((*s).to_owned(), n))
        .collect())
}

/// Cells that differ, as `tcp4 TIME_WAIT: agent 10, ss 12`. Empty if equal
/// (missing cells count as 0).
pub fn diff_counts(agent: &SsCounts, ss: &SsCounts) -> Vec<String> {
    diff_counts_labeled(agent, "agent", ss, "ss")
}

/// [`diff_counts`] with own labels (e.g. "expected" / "ss").
pub fn diff_counts_labeled(
    a: &SsCounts,
    a_label: &str,
    b: &SsCounts,
    b_label: &str,
) -> Vec<String> {
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for t in [a, b] {
        for (fam, states) in t {
            for state in states.keys() {
                keys.push((fam, state));
            }
        }
    }
    keys.sort_by_key(|(f, s)| {
        // Families and states in their canonical order, unknown ones last.
        let fi = FAMILIES.iter().position(|x| x == f).unwrap_or(usize::MAX);
        let si = STATES.iter().position(|x| x == s).unwrap_or(usize::MAX);
        (fi, *f, si, *s)
    });
    keys.dedup();
    let get =
        |t: &SsCounts, f: &str, s: &str| t.get(f).and_then(|m| m.get(s)).copied().unwrap_or(0);
    keys.into_iter()
        .filter_map(|(f, s)| {
            let (x, y) = (get(a, f, s), get(b, f, s));
            (x != y).then(|| format!("{f} {s}: {a_label} {x}, {b_label} {y}"))
        })
        .collect()
}

/// Polls [`ss_counts`] until two reads ~200 ms apart are equal, and returns
/// that table.
pub fn wait_quiescent(timeout: Duration) -> Result<SsCounts> {
    wait_quiescent_with(ss_counts, Duration::from_millis(200), timeout)
}

/// [`wait_quiescent`] with any reader (e.g. `|| ss_counts_in(Some(ns))`).
pub fn wait_quiescent_with(
    mut read: impl FnMut() -> Result<SsCounts>,
    interval: Duration,
    timeout: Duration,
) -> Result<SsCounts> {
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

/// Reads a `stats --json`-shaped object (`{"tcp4": {"LISTEN": 3, ...}, ...}`)
/// into a full table; missing families/states count as 0, extra keys are
/// ignored.
pub fn counts_from_json(v: &serde_json::Value) -> Result<SsCounts> {
    let mut out = zero_counts();
    for fam in FAMILIES {
        let Some(states) = v.get(fam) else { continue };
        let obj = states
            .as_object()
            .with_context(|| format!("{fam}: expected an object, got {states}"))?;
        let row = out.entry(fam.to_owned()).or_default();
        for (state, n) in obj {
            let n = n
                .as_u64()
                .with_context(|| format!("{fam}.{state}: expected a count, got {n}"))?;
            row.insert(state.clone(), n);
        }
    }
    Ok(out)
}
