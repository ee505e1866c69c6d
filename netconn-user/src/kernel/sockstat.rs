//! The kernel's O(1) per-namespace socket counters, `/proc/net/sockstat` and
//! `/proc/net/sockstat6`.
//!
//! `inuse` counts full sockets hashed by the protocol (listeners, connecting,
//! connected and orphaned ones, bound UDP sockets); `tw` counts timewait socks
//! of both address families. Request socks are in neither.

use std::{fs, io};

/// Read through `thread-self`, not `/proc/net` (= `/proc/self/net`, the main
/// thread's namespace), so that the numbers come from the same namespace as a
/// sock_diag dump made by the calling thread.
const SOCKSTAT: &str = "/proc/thread-self/net/sockstat";
const SOCKSTAT6: &str = "/proc/thread-self/net/sockstat6";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockStat {
    /// `TCP: inuse`: IPv4 TCP sockets, timewait and request socks excluded.
    pub tcp4_inuse: u64,
    /// `TCP6: inuse`.
    pub tcp6_inuse: u64,
    /// `TCP: tw`: timewait socks, IPv4 and IPv6 together.
    pub tw: u64,
    /// `UDP: inuse`.
    pub udp4_inuse: u64,
    /// `UDP6: inuse`.
    pub udp6_inuse: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SockStatError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{file}: no `{key}` in a `{line}:` line")]
    Missing {
        file: &'static str,
        line: &'static str,
        key: &'static str,
    },
    #[error("{file}: `{line}: {key}` is {value:?}, not a count")]
    BadNumber {
        file: &'static str,
        line: &'static str,
        key: &'static str,
        value: String,
    },
}

/// Anything that moves a TCP socket in or out of the kernel's hash tables
/// in the calling thread's namespace moves at least one of these: the
/// `Tcp:` opens and segment counters of `/proc/net/snmp` (both families:
/// TCP keeps one set per namespace) and the sockstat counters (a timewait
/// sock expires without a segment). Equal readings around a sock_diag dump
/// mean nothing was hashed or unhashed during it, so it skipped nothing
/// (a dump resumes by position in a hash chain, and a chain that changed
/// under it can make it skip a socket). None when unreadable.
pub fn tcp_activity() -> Option<(SockStat, [u64; 4])> {
    let stat = read().ok()?;
    let snmp = fs::read_to_string("/proc/thread-self/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let field = |key: &str| -> Option<u64> {
        let at = names.split_whitespace().position(|n| n == key)?;
        values.split_whitespace().nth(at)?.parse().ok()
    };
    Some((
        stat,
        [
            field("ActiveOpens")?,
            field("PassiveOpens")?,
            field("InSegs")?,
            field("OutSegs")?,
        ],
    ))
}

/// Read the counters of the calling thread's network namespace.
pub fn read() -> Result<SockStat, SockStatError> {
    read_files(SOCKSTAT, SOCKSTAT6)
}

/// A namespace's two sockstat files, kept open. A proc net file reads the
/// namespace it was opened in, whichever thread reads it later, so a read
/// is two `pread`s: no path walk, no check that a process is still inside,
/// no entering the namespace. (Opening and closing them every pass was a
/// quarter of the agent's CPU at rest with 300 namespaces.) Holding them
/// keeps the namespace's `struct net` alive, so its inode cannot be reused
/// while they are open: drop them when the namespace is gone.
pub struct Files {
    v4: fs::File,
    v6: Option<fs::File>,
}

impl Files {
    /// The calling thread's namespace.
    pub fn open_here() -> Result<Files, SockStatError> {
        Files::open(SOCKSTAT, SOCKSTAT6)
    }

    /// The namespace process `pid` is in now.
    pub fn open_pid(pid: u32) -> Result<Files, SockStatError> {
        Files::open(
            &format!("/proc/{pid}/net/sockstat"),
            &format!("/proc/{pid}/net/sockstat6"),
        )
    }

    fn open(v4_path: &str, v6_path: &str) -> Result<Files, SockStatError> {
        let v4 = fs::File::open(v4_path).map_err(|source| SockStatError::Io {
            path: v4_path.to_string(),
            source,
        })?;
        let v6 = match fs::File::open(v6_path) {
            Ok(file) => Some(file),
            // The file does not exist when IPv6 is disabled: no IPv6 sockets.
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(SockStatError::Io {
                    path: v6_path.to_string(),
                    source,
                });
            }
        };
        Ok(Files { v4, v6 })
    }

    pub fn read(&self) -> Result<SockStat, SockStatError> {
        let v4 = read_whole(&self.v4, "sockstat")?;
        let v6 = match &self.v6 {
            Some(file) => read_whole(file, "sockstat6")?,
            None => String::new(),
        };
        parse(&v4, &v6)
    }
}

/// A proc file from its start (the kernel regenerates it at offset 0).
fn read_whole(file: &fs::File, name: &str) -> Result<String, SockStatError> {
    use std::os::unix::fs::FileExt as _;
    let mut out = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = file
            .read_at(&mut buf, out.len() as u64)
            .map_err(|source| SockStatError::Io {
                path: name.to_string(),
                source,
            })?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(out).map_err(|_| SockStatError::Io {
        path: name.to_string(),
        source: io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"),
    })
}

fn read_files(v4_path: &str, v6_path: &str) -> Result<SockStat, SockStatError> {
    let v4 = fs::read_to_string(v4_path).map_err(|source| SockStatError::Io {
        path: v4_path.to_string(),
        source,
    })?;
    let v6 = match fs::read_to_string(v6_path) {
        Ok(text) => text,
        // The file does not exist when IPv6 is disabled: no IPv6 sockets.
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(SockStatError::Io {
                path: v6_path.to_string(),
                source,
            });
        }
    };
    parse(&v4, &v6)
}

/// Parse the two files' contents. An empty `sockstat6` means no IPv6.
pub fn parse(sockstat: &str, sockstat6: &str) -> Result<SockStat, SockStatError> {
    const V4: &str = "sockstat";
    const V6: &str = "sockstat6";
    let no_v6 = sockstat6.trim().is_empty();
    let v6 = |line, key| {
        if no_v6 {
            Ok(0)
        } else {
            field(sockstat6, V6, line, key)
        }
    };
    Ok(SockStat {
        tcp4_inuse: field(sockstat, V4, "TCP", "inuse")?,
        tw: field(sockstat, V4, "TCP", "tw")?,
        udp4_inuse: field(sockstat, V4, "UDP", "inuse")?,
        tcp6_inuse: v6("TCP6", "inuse")?,
        udp6_inuse: v6("UDP6", "inuse")?,
    })
}

/// The value after `key` on the line `label: key value key value ...`.
fn field(
    text: &str,
    file: &'static str,
    label: &'static str,
    key: &'static str,
) -> Result<u64, SockStatError> {
    let missing = SockStatError::Missing {
        file,
        line: label,
        key,
    };
    // Exact label match: "UDP" must not pick up "UDPLITE".
    let Some(rest) = text
        .lines()
        .find_map(|l| l.split_once(':').filter(|(name, _)| name.trim() == label))
        .map(|(_, rest)| rest)
    else {
        return Err(missing);
    };
    let mut words = rest.split_whitespace();
    while let Some(word) = words.next() {
        let value = words.next();
        if word == key {
            let value = value.unwrap_or_default();
            return value.parse().map_err(|_| SockStatError::BadNumber {
                file,
                line: label,
                key,
                value: value.to_string(),
            });
        }
    }
    Err(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "sockets: used 19\n\
        TCP: inuse 5 orphan 0 tw 2 alloc 8 mem 1\n\
        UDP: inuse 3 mem 2\n\
        UDPLITE: inuse 9\n\
        RAW: inuse 0\n\
        FRAG: inuse 0 memory 0\n";
    const V6: &str =
        "TCP6: inuse 2\nUDP6: inuse 1\nUDPLITE6: inuse 7\nRAW6: inuse 0\nFRAG6: inuse 0 memory 0\n";

    #[test]
    fn parses_sample() {
        let s = parse(V4, V6).unwrap();
        assert_eq!(
            s,
            SockStat {
                tcp4_inuse: 5,
                tcp6_inuse: 2,
                tw: 2,
                udp4_inuse: 3,
                udp6_inuse: 1
            }
        );
    }

    #[test]
    fn empty_sockstat6_means_no_ipv6() {
        let s = parse(V4, "").unwrap();
        assert_eq!((s.tcp6_inuse, s.udp6_inuse, s.tcp4_inuse), (0, 0, 5));
    }

    #[test]
    fn missing_and_bad_fields_are_errors() {
        let no_udp = V4.replace("UDP: inuse 3 mem 2\n", "");
        assert!(matches!(
            parse(&no_udp, V6),
            Err(SockStatError::Missing { line: "UDP", .. })
        ));
        let no_tw = V4.replace(" tw 2", "");
        assert!(matches!(
            parse(&no_tw, V6),
            Err(SockStatError::Missing { key: "tw", .. })
        ));
        let bad = V4.replace("inuse 5", "inuse x5");
        let err = parse(&bad, V6).unwrap_err();
        assert!(matches!(err, SockStatError::BadNumber { ref value, .. } if value == "x5"));
        assert!(err.to_string().contains("TCP: inuse"), "{err}");
        let dangling = V4.replace("tw 2 alloc 8 mem 1", "tw");
        assert!(matches!(
            parse(&dangling, V6),
            Err(SockStatError::BadNumber { .. })
        ));
        assert!(matches!(
            parse(V4, "TCP6: inuse 2\n"),
            Err(SockStatError::Missing {
                file: "sockstat6",
                line: "UDP6",
                ..
            })
        ));
        assert!(parse("", V6).is_err());
    }

    #[test]
    fn reads_this_namespace() {
        let s = read().unwrap();
        eprintln!("{s:?}");
    }
}
