//! Kernel side of netconn: keeps a per-socket entry and per-namespace TCP
//! state counters up to date from `sock:inet_sock_set_state`.
//!
//! Counting rule (see ../../shared/KERNEL-NOTES.md, "Seeding without a race"):
//! an entry that exists moves its count from its recorded state to the new
//! one; a socket without an entry is counted in its new state only (it is new,
//! or it predates the agent and was not seeded yet). While the agent seeds, a
//! close leaves a tombstone so a stale dump row cannot resurrect the socket.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        generated::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
    },
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::BtfTracePointContext,
};
use core::ffi::c_void;
use netconn_common::{
    CONTROL_SEEDING, ENTRY_LIVE, ENTRY_TOMBSTONE, ERROR_COUNTS_FULL, ERROR_READ, ERROR_SLOTS,
    ERROR_SOCKS_FULL, FAMILY_INET, FAMILY_INET6, NsCounts, SockEntry, slot,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_CLOSE: i32 = 7;

/// Byte offsets inside kernel structs, read from the running kernel's BTF by
/// the agent and written here before load (Rust eBPF has no CO-RE field
/// relocations). Names are `struct.field` in include/net/sock.h and
/// include/net/net_namespace.h / include/linux/ns_common.h.
#[unsafe(no_mangle)]
static SK_FAMILY_OFFSET: u64 = 0; // sock_common.skc_family (u16)
#[unsafe(no_mangle)]
static SK_NET_OFFSET: u64 = 0; // sock_common.skc_net.net (struct net *)
#[unsafe(no_mangle)]
static NET_INUM_OFFSET: u64 = 0; // net.ns.inum (unsigned int)

/// Live TCP sockets by cookie. A plain hash map, never LRU: an eviction would
/// silently lose a socket's count. Size is set by the agent at load time.
#[map]
static SOCKS: HashMap<u64, SockEntry> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// Per-namespace, per-CPU state counters (deltas, see NsCounts).
#[map]
static COUNTS: PerCpuHashMap<u32, NsCounts> = PerCpuHashMap::with_max_entries(4096, 0);

/// Switches set by the agent; index CONTROL_SEEDING is non-zero while seeding.
#[map]
static CONTROL: Array<u32> = Array::with_max_entries(1, 0);

/// Error counters (ERROR_*): any non-zero value makes the agent's counts inexact.
#[map]
static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ERROR_SLOTS, 0);

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn netconn_state(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: the arguments are those of trace_inet_sock_set_state(sk, old, new).
    let (sk, old, new): (*const c_void, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if let Err(error) = try_set_state(sk, old, new) {
        bump_error(error);
    }
    0
}

fn try_set_state(sk: *const c_void, old: i32, new: i32) -> Result<(), u32> {
    if old == new || sk.is_null() {
        return Ok(());
    }
    // SAFETY: helpers on the tracepoint's own socket pointer. skc_to_tcp_sock
    // is non-null only for full TCP sockets (not SCTP, not the MPTCP socket).
    let is_tcp = unsafe { !bpf_skc_to_tcp_sock(sk as *mut c_void).is_null() };
    if !is_tcp {
        return Ok(());
    }
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    let (family, netns) = read_family_netns(sk)?;
    let new = new as u8;
    let seeding = CONTROL.get(CONTROL_SEEDING).is_some_and(|v| *v != 0);

    if let Some(entry) = SOCKS.get_ptr_mut(cookie) {
        // SAFETY: pointer to our own map value; this socket's transitions are
        // serialised by its lock, so nobody else writes this entry now.
        let entry = unsafe { &mut *entry };
        if entry.flags == ENTRY_LIVE {
            count(entry.netns, entry.family, entry.state, -1)?;
            if new as i32 == TCP_CLOSE {
                if seeding {
                    entry.flags = ENTRY_TOMBSTONE;
                } else {
                    let _ = SOCKS.remove(cookie);
                }
                return Ok(());
            }
            *entry = live_entry(netns, family, new);
            return count(netns, family, new, 1);
        }
        // A tombstone: the socket closed during seeding and is now back
        // (connect again after a failed connect). Fall through as a new socket.
        if new as i32 == TCP_CLOSE {
            if !seeding {
                let _ = SOCKS.remove(cookie);
            }
            return Ok(());
        }
    } else if new as i32 == TCP_CLOSE {
        if seeding {
            let tomb = SockEntry {
                flags: ENTRY_TOMBSTONE,
                ..live_entry(netns, family, new)
            };
            SOCKS
                .insert(cookie, tomb, BPF_NOEXIST as u64)
                .map_err(|_| ERROR_SOCKS_FULL)?;
        }
        return Ok(());
    }
    SOCKS
        .insert(cookie, live_entry(netns, family, new), BPF_ANY as u64)
        .map_err(|_| ERROR_SOCKS_FULL)?;
    count(netns, family, new, 1)
}

#[inline(always)]
fn live_entry(netns: u32, family: u8, state: u8) -> SockEntry {
    SockEntry {
        // SAFETY: no preconditions.
        since_ns: unsafe { bpf_ktime_get_boot_ns() },
        netns,
        state,
        family,
        flags: ENTRY_LIVE,
        _pad: 0,
    }
}

/// Family index and namespace inode of `sk`, taken at every event because
/// IPV6_ADDRFORM can change a socket's family without an event.
#[inline(always)]
fn read_family_netns(sk: *const c_void) -> Result<(u8, u32), u32> {
    // SAFETY: reads through bpf_probe_read_kernel, which tolerates bad
    // addresses; the offsets come from this kernel's BTF.
    unsafe {
        let base = sk as *const u8;
        let af: u16 = bpf_probe_read_kernel(base.add(offset(&SK_FAMILY_OFFSET)) as *const u16)
            .map_err(|_| ERROR_READ)?;
        let family = match af {
            AF_INET => FAMILY_INET,
            AF_INET6 => FAMILY_INET6,
            _ => return Err(ERROR_READ),
        };
        let net: *const u8 =
            bpf_probe_read_kernel(base.add(offset(&SK_NET_OFFSET)) as *const *const u8)
                .map_err(|_| ERROR_READ)?;
        let inum: u32 = bpf_probe_read_kernel(net.add(offset(&NET_INUM_OFFSET)) as *const u32)
            .map_err(|_| ERROR_READ)?;
        Ok((family, inum))
    }
}

#[inline(always)]
fn offset(global: &'static u64) -> usize {
    // SAFETY: read_volatile keeps the compiler from folding the placeholder 0;
    // the loader has written the real value into .rodata.
    unsafe { core::ptr::read_volatile(global) as usize }
}

#[inline(always)]
fn count(netns: u32, family: u8, state: u8, delta: i64) -> Result<(), u32> {
    let counters = match COUNTS.get_ptr_mut(netns) {
        Some(p) => p,
        None => {
            // First socket of this namespace on this CPU's view: create the
            // entry (per-CPU values all zero), then take our CPU's copy.
            let _ = COUNTS.insert(netns, NsCounts::ZERO, BPF_NOEXIST as u64);
            COUNTS.get_ptr_mut(netns).ok_or(ERROR_COUNTS_FULL)?
        }
    };
    // SAFETY: this CPU's copy; the kernel never runs this program nested on
    // one CPU (a nested run is skipped and counted as a recursion miss, which
    // the agent reads).
    unsafe {
        let cell = &mut (*counters).count[slot(family, state)];
        *cell += delta;
    }
    Ok(())
}

#[inline(always)]
fn bump_error(index: u32) {
    if let Some(n) = ERRORS.get_ptr_mut(index) {
        // SAFETY: this CPU's copy of our own map value.
        unsafe { *n += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
