//! Everything that talks to the kernel, and nothing else: the eBPF program
//! and its maps (`probe`, with struct offsets from `btf`; the per-socket
//! table in `socks`), sock_diag dumps
//! (`diag`) and the O(1) per-namespace counters (`sockstat`). No policy
//! lives here: callers decide what a reading means.

pub mod btf;
pub mod diag;
pub mod netns;
pub mod pin;
pub mod probe;
pub mod socks;
pub mod sockstat;

/// Inode of this process's network namespace (what the kernel side keys by).
pub fn own_netns() -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata("/proc/self/ns/net")?.ino() as u32)
}

/// CLOCK_BOOTTIME in ns, the clock of bpf_ktime_get_boot_ns().
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Loading a program parses the kernel's BTF (megabytes, freed again);
/// hand that memory back so the agent's resident size stays small.
pub fn release_freed_memory() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}
