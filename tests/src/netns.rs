//! Fresh named network namespaces (`ip netns add`) for isolated tests.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use anyhow::{Context, Result, bail};

use crate::ss::ss_counts_in;
use netconn_common::Counts;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named network namespace with loopback up; deleted on drop. Processes
/// still inside keep it alive until they exit (drop a [`crate::Population`]
/// running in it first).
pub struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Creates `PREFIX-PID-N` and brings its loopback up (both 127.0.0.1
    /// and ::1 need it).
    pub fn create(prefix: &str) -> Result<Netns> {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `program` inside this namespace (see [`command_in`]): add arguments
    /// and run it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(Some(&self.name), program)
    }

    /// [`crate::ss_counts`] inside this namespace.
    pub fn ss_counts(&self) -> Result<Counts> {
        ss_counts_in(Some(&self.name))
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// opens and processes it spawns (popgen, ss) live in the namespace.
    /// A panic in `f` is resumed on the caller's thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        thread::scope(|s| {
            let h = s.spawn(move || -> Result<T> {
                // SAFETY: setns on an fd we hold; it only changes this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("setns into {path}"));
                }
                Ok(f())
            });
            match h.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("netconn-tests: {e:#}");
        }
    }
}

/// `program` run inside a network namespace: a name (`/run/netns/NAME`) or
/// a namespace file (e.g. /proc/PID/ns/net of an unnamed namespace);
/// `None` runs it here. Through `nsenter --net=`, not `ip netns exec`, which
/// remounts /sys and so hides bpffs and the cgroup v2 hierarchy the agent
/// attaches its change hooks to.
pub fn command_in(netns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    let Some(netns) = netns else {
        return Command::new(program);
    };
    let path = if netns.starts_with('/') {
        netns.to_string()
    } else {
        format!("/run/netns/{netns}")
    };
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={path}")).arg("--").arg(program);
    c
}

/// Creates a fresh namespace, runs `f` inside it (see [`Netns::run`]), and
/// deletes the namespace afterwards.
pub fn with_netns<T: Send>(prefix: &str, f: impl FnOnce(&Netns) -> Result<T> + Send) -> Result<T> {
    let ns = Netns::create(prefix)?;
    ns.run(|| f(&ns))?
}
