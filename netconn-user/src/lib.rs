//! netconn: exact live TCP/UDP connection-state counts from the kernel.
//!
//! Where a count goes (see ARCHITECTURE.md):
//! - born in the kernel: the eBPF program (crate `netconn-ebpf`) counts full
//!   TCP sockets; the vocabulary (`Family`, `State`, `Counts`) and the kernel
//!   ABI live in `netconn-common`;
//! - read from the kernel: [`kernel`] (maps, sock_diag dumps, sockstat);
//! - kept, refreshed and served: [`agent`];
//! - asked for and printed: [`cli`], over the typed protocol in [`proto`].

pub mod agent;
pub mod cli;
pub mod kernel;
pub mod logger;
pub mod proto;

/// One line: the error and its causes, without repeating a cause the
/// message already contains.
pub fn render_error(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}
