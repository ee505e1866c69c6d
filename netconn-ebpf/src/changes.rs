//! Changes to a namespace's untracked part that move none of the kernel's
//! O(1) counters, so that the agent re-reads a namespace only when it may
//! have changed:
//! - a request socket is created (a SYN on a listener): sock_ops calls its
//!   programs with the request socket for BPF_SOCK_OPS_RWND_INIT;
//! - a UDP socket connects (CLOSE -> ESTABLISHED with no counter moving):
//!   the cgroup connect4/connect6 hooks.
//!
//! Both count into `NS_CHANGES`, keyed by the namespace's cookie (never
//! reused, unlike its inode). Attached to the cgroup v2 root, so they run
//! for every socket on the host.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_SOCK_OPS_RWND_INIT},
    helpers::generated::bpf_get_netns_cookie,
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::HashMap,
    programs::{SockAddrContext, SockOpsContext},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

/// include/uapi/linux/in.h
const IPPROTO_UDP: u32 = 17;

/// Changes per namespace cookie. Preallocated: see SOCKS in main.rs.
#[map]
static NS_CHANGES: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

/// Request sockets are created in softirq context for the listener's
/// cgroup; the kernel's default for every callback is kept (reply 0, the
/// program allows).
#[sock_ops]
pub fn netconn_sockops(ctx: SockOpsContext) -> u32 {
    // SAFETY: the context the kernel passes.
    let fullsock = unsafe { (*ctx.ops).is_fullsock };
    if ctx.op() == BPF_SOCK_OPS_RWND_INIT && fullsock == 0 {
        changed(ctx.ops.cast());
    }
    1
}

#[cgroup_sock_addr(connect4)]
pub fn netconn_connect4(ctx: SockAddrContext) -> i32 {
    udp_connect(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn netconn_connect6(ctx: SockAddrContext) -> i32 {
    udp_connect(&ctx)
}

/// Always allows the connect; only notes UDP ones.
#[inline(always)]
fn udp_connect(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context the kernel passes.
    if unsafe { (*ctx.sock_addr).protocol } == IPPROTO_UDP {
        changed(ctx.sock_addr.cast());
    }
    1
}

#[inline(always)]
fn changed(ctx: *mut core::ffi::c_void) {
    // SAFETY: a program context bpf_get_netns_cookie accepts.
    let cookie = unsafe { bpf_get_netns_cookie(ctx) };
    if let Some(n) = NS_CHANGES.get_ptr_mut(cookie) {
        // SAFETY: our own map value; other CPUs may add at the same time.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
    } else {
        let _ = NS_CHANGES.insert(cookie, 1, BPF_NOEXIST as u64);
    }
}
