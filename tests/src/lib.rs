//! Helpers for netconn's integration tests: build known socket populations
//! with the `popgen` binary ([`Population`]), read what `ss` sees
//! ([`ss_counts`]), compare ([`diff_counts`]), and isolate tests in fresh
//! network namespaces ([`Netns`]).
//!
//! A typical test:
//! ```no_run
//! use netconn_tests::*;
//! # fn main() -> anyhow::Result<()> {
//! require_root()?;
//! let base = wait_quiescent(std::time::Duration::from_secs(10))?;
//! let spec = PopSpec { established: 100, family: FamilySel::Both, ..PopSpec::default() };
//! // In an integration test: Population::start(env!("CARGO_BIN_EXE_popgen"), &spec)
//! let pop = Population::start(popgen_path()?, &spec)?;
//! let want = add_counts(&base, pop.expected());
//! let got = ss_counts()?;
//! assert!(diff_counts_labeled(&want, "expected", &got, "ss").is_empty());
//! # Ok(()) }
//! ```

pub mod agent;
pub mod generator;
pub mod http;
pub mod netns;
pub mod population;
pub mod prom;
pub mod spec;
pub mod ss;

pub use agent::{
    Agent, loaded_bpf_program_names, netconn_bin, netconn_programs, netconn_programs_baseline,
    netconn_programs_settle_at, rss_kib, socket_path,
};
pub use netconn_common::{Counts, Family, State};
pub use netns::{Netns, with_netns};
pub use population::{PopOptions, Population, popgen_path};
pub use spec::{ChurnSpec, FamilySel, IpVersion, PopSpec, add_counts};
pub use ss::{
    counts_from_json, diff_counts, diff_counts_labeled, ss_counts, ss_counts_in, ss_state,
    wait_quiescent, wait_quiescent_with,
};

/// Kernel tests need root (eBPF, sockets in bulk, `ss -K`, `ip netns`). A
/// test that cannot run fails with this reason; it never passes by skipping.
pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        anyhow::bail!(
            "cannot run: needs root (eBPF, sockets in bulk, ss -K, ip netns); euid is {euid}"
        );
    }
    Ok(())
}

/// Turn a connected AF_INET6 TCP socket with v4-mapped addresses into an
/// AF_INET one (IPV6_ADDRFORM): the kernel moves it between families without
/// firing the state tracepoint, which the agent must notice.
pub fn ipv6_addrform_to_v4(socket: &impl std::os::fd::AsRawFd) -> anyhow::Result<()> {
    // include/uapi/linux/in6.h: IPV6_ADDRFORM = 1.
    const IPV6_ADDRFORM: libc::c_int = 1;
    let af_inet: libc::c_int = libc::AF_INET;
    // SAFETY: setsockopt on a socket the caller owns, with a valid int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            IPV6_ADDRFORM,
            (&raw const af_inet).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    anyhow::ensure!(
        rc == 0,
        "IPV6_ADDRFORM: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

#[cfg(test)]
mod tests;
