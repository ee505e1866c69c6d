//! The agent's Unix socket: who may bind it, and serving requests on it.
//! Each connection is its own task; a bad or slow client only ever costs
//! its own connection.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
};

use super::Agent;
use crate::proto::{Command, LeaksReply, MAX_REQUEST, Pong, Request, error_reply};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
/// An idle connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another netconn agent is already serving {0}")]
    AlreadyRunning(PathBuf),
    #[error("cannot create {0}: permission denied (run the agent as root)")]
    Permission(PathBuf),
    #[error("cannot bind {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error("no group named {0}")]
    NoGroup(String),
}

/// The bound socket plus the lock that makes it ours. Dropping it removes
/// the socket file.
pub struct Bound {
    path: PathBuf,
    _lock: File,
    /// std until serving starts: binding happens before the runtime exists.
    listener: Option<std::os::unix::net::UnixListener>,
}

impl Bound {
    /// Take `path`: refuse if a live agent holds it, take over a stale file
    /// left by a dead one. The lock file (`PATH.lock`, flock) decides, so two
    /// agents starting at once cannot both win.
    pub fn bind(path: &Path, group: Option<&str>) -> Result<Bound, ServerError> {
        let io_err = |e: io::Error| match e.kind() {
            io::ErrorKind::PermissionDenied => ServerError::Permission(path.to_path_buf()),
            _ => ServerError::Io(path.to_path_buf(), e),
        };
        let gid = group.map(group_id).transpose()?;
        // Started by hand, nothing has made the default's directory (under
        // systemd, RuntimeDirectory= has); 0755 so group members reach the socket.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io_err)?;
        }
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err)?;
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if rc != 0 {
            return Err(ServerError::AlreadyRunning(path.to_path_buf()));
        }
        // We hold the lock: any socket file is a dead agent's.
        match std::fs::remove_file(path) {
            Ok(()) => log::info!("removed stale socket {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(io_err)?;
        listener.set_nonblocking(true).map_err(io_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io_err)?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(io_err)?;
        }
        Ok(Bound {
            path: path.to_path_buf(),
            _lock: lock,
            listener: Some(listener),
        })
    }

    /// Serve until the future is dropped.
    pub async fn serve(&mut self, agent: Arc<Agent>) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let listener = match UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                log::error!("cannot serve {}: {e}", self.path.display());
                return;
            }
        };
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok((stream, _)) => {
                    let agent = Arc::clone(&agent);
                    tokio::spawn(async move {
                        if let Err(e) = serve_connection(stream, &agent).await {
                            log::debug!("connection ended: {e}");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        self.listener = None;
        // The lock file stays: unlinking it while another agent may have it
        // open would let two agents lock two different files.
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve_connection(stream: UnixStream, agent: &Arc<Agent>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_REQUEST as u64 + 1);
        let read = limited.read_until(b'\n', &mut line);
        let n = match tokio::time::timeout(IDLE_TIMEOUT, read).await {
            Ok(n) => n?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            let reply = if line.len() > MAX_REQUEST {
                error_reply(&format!("request longer than {MAX_REQUEST} bytes"))
            } else {
                error_reply("request not terminated by a newline")
            };
            write.write_all(format!("{reply}\n").as_bytes()).await?;
            return Ok(());
        }
        let request: Request = match serde_json::from_slice(&line) {
            Ok(r) => r,
            Err(e) => {
                let reply = error_reply(&format!(
                    "bad request ({e}); expected {{\"cmd\":\"stats\"}}, {{\"cmd\":\"ping\"}}, {{\"cmd\":\"leaks\"}}, {{\"cmd\":\"top\",\"state\":...}} or {{\"cmd\":\"watch\"}}"
                ));
                write.write_all(format!("{reply}\n").as_bytes()).await?;
                continue;
            }
        };
        if request.cmd == Command::Watch {
            // The connection becomes a stream until the client leaves.
            return watch(request, reader, write, agent).await;
        }
        let mut reply = match request.cmd {
            // A dump and a /proc scan: off the runtime thread, cached.
            Command::Top => super::offenders::answer(&request, agent).await,
            _ => answer(&request, agent),
        };
        reply.push('\n');
        write.write_all(reply.as_bytes()).await?;
    }
}

/// Stream transitions (or alerts) matching the request to this client.
async fn watch(
    request: Request,
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    write: tokio::net::unix::OwnedWriteHalf,
    agent: &Agent,
) -> io::Result<()> {
    let mut write = tokio::io::BufWriter::with_capacity(1 << 16, write);
    let mut filter = request.filter;
    let resolved = filter.validate().and_then(|()| {
        for name in std::mem::take(&mut filter.netns_name) {
            let inode = agent.tracker.resolve(&name)?;
            filter.netns.push(inode);
        }
        Ok(())
    });
    if let Err(message) = resolved {
        write
            .write_all(format!("{}\n", error_reply(&message)).as_bytes())
            .await?;
        return write.flush().await;
    }
    let events = !request.alerts;
    let (mut sub, watchers) = agent.hub.subscribe(filter, events, request.alerts);
    if events && watchers == 1 {
        agent.tracker.set_streaming(true);
    }
    let result = async {
        let mut scratch = [0u8; 256];
        loop {
            tokio::select! {
                lines = sub.lines.recv() => {
                    let Some(lines) = lines else { return Ok(()) };
                    if let Some(dropped) = sub.counters.take_dropped_line() {
                        write.write_all(dropped.as_bytes()).await?;
                        write.write_all(b"\n").await?;
                    }
                    sub.counters.queued.fetch_sub(lines.count, Ordering::Relaxed);
                    write.write_all(lines.text.as_bytes()).await?;
                    // Batch writes while more lines are queued.
                    while let Ok(lines) = sub.lines.try_recv() {
                        sub.counters.queued.fetch_sub(lines.count, Ordering::Relaxed);
                        write.write_all(lines.text.as_bytes()).await?;
                    }
                    write.flush().await?;
                }
                // The client sends nothing more: EOF or error means it left.
                n = reader.read(&mut scratch) => {
                    if n.unwrap_or(0) == 0 {
                        return Ok(());
                    }
                }
                // A drop with nothing else to say still gets reported.
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(dropped) = sub.counters.take_dropped_line() {
                        write.write_all(dropped.as_bytes()).await?;
                        write.write_all(b"\n").await?;
                        write.flush().await?;
                    }
                }
            }
        }
    }
    .await;
    drop(sub);
    if agent.hub.prune() == 0 {
        agent.tracker.set_streaming(false);
    }
    result
}

fn answer(request: &Request, agent: &Agent) -> String {
    let reply = match request.cmd {
        Command::Ping => serde_json::to_string(&Pong { pong: true }),
        Command::Watch | Command::Top => {
            return error_reply("internal error: served elsewhere");
        }
        Command::Leaks => serde_json::to_string(&LeaksReply {
            alerts: agent.alerts.get(),
        }),
        Command::Stats if request.all_netns => serde_json::to_string(&agent.tracker.snapshot_all()),
        Command::Stats => match agent.tracker.snapshot(request.netns.as_deref()) {
            Ok(reply) => serde_json::to_string(&reply),
            Err(e) => return error_reply(&e),
        },
    };
    reply.unwrap_or_else(|e| error_reply(&format!("internal error: {e}")))
}

/// A group's id through the system's resolver (NSS: files, LDAP, sssd,
/// ...), or a number as given.
fn group_id(name: &str) -> Result<u32, ServerError> {
    let no_group = || ServerError::NoGroup(name.to_string());
    let Ok(cname) = std::ffi::CString::new(name) else {
        return Err(no_group());
    };
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: zeroed plain C struct, filled by getgrnam_r.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        // SAFETY: valid C string, struct and buffer of the stated length.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut group,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc == 0 && !found.is_null() {
            return Ok(group.gr_gid);
        }
        return name.parse().map_err(|_| no_group());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn groups_resolve_through_nss_or_as_numbers() {
        assert_eq!(super::group_id("root").ok(), Some(0));
        assert_eq!(super::group_id("4242").ok(), Some(4242));
        assert!(super::group_id("no-such-group-netconn").is_err());
    }
}
