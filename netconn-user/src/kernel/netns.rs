//! Network namespaces as the kernel shows them: which exist (every
//! `/proc/PID/ns/net`, and bind mounts such as `/run/netns/NAME`), a way
//! into each, and running work inside one. Entering needs CAP_SYS_ADMIN.
//!
//! A namespace is never held open here: an open descriptor would keep a dead
//! namespace alive. It is re-opened through its path each time.

use std::{
    collections::BTreeMap,
    fs,
    os::fd::AsRawFd as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Where `ip netns add` bind-mounts named namespaces.
pub const IP_NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {0}: {1}")]
    Open(PathBuf, std::io::Error),
    #[error(
        "cannot enter network namespace {0}: {1} (entering other namespaces needs CAP_SYS_ADMIN)"
    )]
    Enter(PathBuf, std::io::Error),
    #[error("cannot return to the agent's own network namespace: {0}")]
    Return(std::io::Error),
    #[error("the namespace thread failed")]
    Thread,
}

/// One namespace found by [`scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Inode number: what the kernel side keys counts by.
    pub inode: u32,
    /// The lowest pid inside it, if any process is.
    pub pid: Option<u32>,
    /// Its `ip netns` name, if bind-mounted under /run/netns.
    pub ip_name: Option<String>,
    /// A path that opens it: `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub path: PathBuf,
}

/// Inode of the namespace a `ns/net` file or bind mount refers to.
pub fn inode_of(path: &Path) -> std::io::Result<u32> {
    Ok(fs::metadata(path)?.ino() as u32)
}

/// The namespace of a process, from the `net:[INODE]` link (no stat of the
/// target, which is cheaper and works for any process we may read).
pub fn inode_of_pid(pid: u32) -> Option<u32> {
    let link = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    parse_ns_link(link.to_str()?)
}

/// The initial network namespace (the host's), when this process can see
/// it: kernel threads live there (kthreadd is pid 2 in the initial pid
/// namespace), as does pid 1 on most systems; pid 1's link may be
/// unreadable in a sandbox.
pub fn initial() -> Option<u32> {
    let kthreadd = fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd");
    if kthreadd && let Some(inode) = inode_of_pid(2) {
        return Some(inode);
    }
    inode_of_pid(1)
}

fn parse_ns_link(link: &str) -> Option<u32> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Every network namespace on the host that has a process in it or an
/// `ip netns` name. Cost: one readlink per process.
pub fn scan() -> Vec<Found> {
    let mut found: BTreeMap<u32, Found> = BTreeMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(inode) = inode_of_pid(pid) else {
                continue; // gone, or a kernel thread we may not read
            };
            let slot = found.entry(inode).or_insert_with(|| Found {
                inode,
                pid: Some(pid),
                ip_name: None,
                path: PathBuf::from(format!("/proc/{pid}/ns/net")),
            });
            if slot.pid.is_none_or(|p| pid < p) {
                slot.pid = Some(pid);
                if slot.ip_name.is_none() {
                    slot.path = PathBuf::from(format!("/proc/{pid}/ns/net"));
                }
            }
        }
    }
    // Namespace files all live on the kernel's one nsfs: a bind mount under
    // /run/netns shows its device; a leftover plain file there does not.
    let nsfs_dev = fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev());
    if let Ok(entries) = fs::read_dir(IP_NETNS_DIR) {
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let is_netns = match nsfs_dev {
                Some(dev) => meta.dev() == dev,
                None => is_netns_file(&path),
            };
            if !is_netns {
                continue;
            }
            let inode = meta.ino() as u32;
            let slot = found.entry(inode).or_insert_with(|| Found {
                inode,
                pid: None,
                ip_name: None,
                path: path.clone(),
            });
            // The bind mount outlives any process: prefer it as the way in.
            if slot.ip_name.is_none() {
                slot.ip_name = Some(name);
                slot.path = path;
            }
        }
    }
    found.into_values().collect()
}

/// Whether `path` opens a network namespace (nsfs), not a leftover file.
fn is_netns_file(path: &Path) -> bool {
    const NSFS_MAGIC: libc::c_long = 0x6e73_6673;
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    // SAFETY: fstatfs on a descriptor we own into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    rc == 0 && st.f_type as libc::c_long == NSFS_MAGIC
}

/// The calling thread's namespace's cookie: a 64-bit id the kernel never
/// reuses (unlike inodes), as eBPF's bpf_get_netns_cookie() returns it.
pub fn own_cookie() -> std::io::Result<u64> {
    /// SO_NETNS_COOKIE (include/uapi/asm-generic/socket.h); not in libc.
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a fresh socket we own and close below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is ours; OwnedFd closes it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid descriptor, buffer and length.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Run `f` inside each namespace of `paths` in turn, on one thread that
/// moves from one to the next (one thread for all, not one each: spawning
/// a thread costs more than the reading); None where it cannot enter.
pub fn run_in_each<T: Send>(paths: &[&Path], f: impl Fn() -> T + Sync) -> Vec<Option<T>> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                paths
                    .iter()
                    .map(|path| {
                        let file = fs::File::open(path).ok()?;
                        // SAFETY: setns on a descriptor we own; this thread only.
                        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                        (rc == 0).then(&f)
                    })
                    .collect()
            })
            .join()
            .unwrap_or_else(|_| paths.iter().map(|_| None).collect())
    })
}

/// Run `f` on a fresh thread inside the namespace at `path` (the thread's
/// sockets, sock_diag dumps and /proc/thread-self/net files are that
/// namespace's). The calling thread is untouched.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let file = fs::File::open(path).map_err(|e| NetnsError::Open(path.to_path_buf(), e))?;
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || {
            // SAFETY: setns on a descriptor we own; affects this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetnsError::Enter(
                    path.to_path_buf(),
                    std::io::Error::last_os_error(),
                ));
            }
            drop(file);
            Ok(f())
        });
        handle.join().map_err(|_| NetnsError::Thread)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_links_parse() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link("net:[x]"), None);
    }

    #[test]
    fn own_namespace_is_found_with_a_pid() {
        let own = inode_of(Path::new("/proc/self/ns/net")).unwrap();
        let all = scan();
        let me = all.iter().find(|f| f.inode == own).unwrap();
        assert!(me.pid.is_some());
        assert_eq!(inode_of(&me.path).unwrap(), own);
    }
}
