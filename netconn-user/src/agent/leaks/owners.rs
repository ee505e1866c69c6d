//! Which processes own given sockets: every `/proc/PID/fd/N` link to a
//! socket reads `socket:[INODE]`. One scan costs a readlink per open file
//! of every process, so it runs only when an alert fires or is refreshed.
//!
//! Processes come and go during the scan and unprivileged callers cannot
//! read other users' fd directories: such processes are skipped, so the
//! answer is best effort (complete when run as root).

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::unix::ffi::OsStrExt as _,
    path::Path,
};

use crate::proto::ProcessInfo;

/// The result of one scan: owners of each looked-up inode.
#[derive(Debug, Default)]
pub struct Owners {
    pids: HashMap<u32, Vec<u32>>,
    comms: HashMap<u32, String>,
}

impl Owners {
    /// Scan the live `/proc` for the owners of `inodes`.
    pub fn lookup(inodes: &HashSet<u32>) -> Owners {
        Owners::scan(Path::new("/proc"), inodes)
    }

    pub(super) fn scan(proc_root: &Path, inodes: &HashSet<u32>) -> Owners {
        let mut owners = Owners::default();
        if inodes.is_empty() {
            return owners;
        }
        let Ok(entries) = fs::read_dir(proc_root) else {
            return owners;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue; // not a process directory
            };
            let dir = entry.path();
            let mut held = held_sockets(&dir, inodes);
            if held.is_empty() {
                continue;
            }
            // No comm means the process exited since its fds were read.
            let Ok(comm) = fs::read_to_string(dir.join("comm")) else {
                continue;
            };
            // A socket dup'ed to several fds is still one socket.
            held.sort_unstable();
            held.dedup();
            for inode in held {
                owners.pids.entry(inode).or_default().push(pid);
            }
            owners
                .comms
                .insert(pid, comm.trim_end_matches('\n').to_string());
        }
        owners
    }

    /// Processes holding any of `inodes`, most sockets first (then by pid).
    /// A socket shared by several processes (fork) counts for each.
    pub fn processes(&self, inodes: impl IntoIterator<Item = u32>) -> Vec<ProcessInfo> {
        let mut per_pid: HashMap<u32, u64> = HashMap::new();
        for inode in inodes {
            for &pid in self.pids.get(&inode).into_iter().flatten() {
                *per_pid.entry(pid).or_default() += 1;
            }
        }
        let mut out: Vec<ProcessInfo> = per_pid
            .into_iter()
            .map(|(pid, sockets)| ProcessInfo {
                pid,
                comm: self.comms.get(&pid).cloned().unwrap_or_default(),
                sockets,
            })
            .collect();
        out.sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.pid.cmp(&b.pid)));
        out
    }
}

/// Inodes among `wanted` that the process in `dir` has open; empty when the
/// process vanished or its fds are not ours to read.
fn held_sockets(dir: &Path, wanted: &HashSet<u32>) -> Vec<u32> {
    let Ok(fds) = fs::read_dir(dir.join("fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|target| socket_inode(target.as_os_str().as_bytes()))
        .filter(|inode| wanted.contains(inode))
        .collect()
}

/// `socket:[12345]` -> 12345.
fn socket_inode(link: &[u8]) -> Option<u32> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::{fd::AsRawFd as _, unix::fs::symlink};

    #[test]
    fn socket_links_parse_and_others_do_not() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"pipe:[12345]"), None);
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
    }

    #[test]
    fn finds_own_tcp_socket_by_its_fstat_inode() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: fstat only writes into the zeroed stat buffer we own, and
        // the fd stays open for the call since `listener` is alive.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(listener.as_raw_fd(), &mut st) }, 0);
        let inode = u32::try_from(st.st_ino).unwrap();

        let owners = Owners::lookup(&HashSet::from([inode]));
        let procs = owners.processes([inode]);
        let me = std::process::id();
        let comm = fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(
            procs,
            vec![ProcessInfo {
                pid: me,
                comm: comm.trim_end().to_string(),
                sockets: 1
            }]
        );
        assert!(!procs[0].comm.is_empty());
    }

    #[test]
    fn fake_proc_tree_skips_vanished_unreadable_and_foreign_entries() {
        let root = std::env::temp_dir().join(format!("netconn-owners-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mkfd = |pid: &str, fd: &str, target: &str| {
            let dir = root.join(pid).join("fd");
            fs::create_dir_all(&dir).unwrap();
            symlink(target, dir.join(fd)).unwrap();
        };
        // 100: two fds on socket 42 (dup), one on 43, a pipe and a file.
        mkfd("100", "3", "socket:[42]");
        mkfd("100", "4", "socket:[42]");
        mkfd("100", "5", "socket:[43]");
        mkfd("100", "6", "pipe:[42]");
        mkfd("100", "7", "/dev/null");
        fs::write(root.join("100/comm"), "leaky-app\n").unwrap();
        // 200: shares socket 42 (forked child).
        mkfd("200", "0", "socket:[42]");
        fs::write(root.join("200/comm"), "child\n").unwrap();
        // 300: no fd dir (exited, or another user's process).
        fs::create_dir_all(root.join("300")).unwrap();
        // 400: has socket 42 but no comm (exited mid-scan).
        mkfd("400", "1", "socket:[42]");
        // 500: only sockets nobody asked about.
        mkfd("500", "1", "socket:[7]");
        fs::write(root.join("500/comm"), "other\n").unwrap();
        // Not a process.
        mkfd("self", "1", "socket:[42]");

        let owners = Owners::scan(&root, &HashSet::from([42, 43]));
        let procs = owners.processes([42, 43]);
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(
            procs,
            vec![
                ProcessInfo {
                    pid: 100,
                    comm: "leaky-app".into(),
                    sockets: 2
                },
                ProcessInfo {
                    pid: 200,
                    comm: "child".into(),
                    sockets: 1
                },
            ]
        );
        assert!(owners.processes([7]).is_empty());
        assert!(
            Owners::scan(Path::new("/nonexistent"), &HashSet::from([42]))
                .pids
                .is_empty()
        );
    }
}
