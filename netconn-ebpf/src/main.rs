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
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod changes;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
        generated::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
    },
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::BtfTracePointContext,
};
// The bpf target has no atomic types with fetch_add; the intrinsic lowers to
// the BPF atomic add instruction.
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};
use netconn_common::{
    CONTROL_SEEDING, CONTROL_SLOTS, CONTROL_STREAM, ENTRY_LIVE, ENTRY_SEEDED, ENTRY_TOMBSTONE,
    EVENT_FIRST_SEEN, EVENT_OWNER, EVENT_SINCE_SEEDING, FAMILY_INET, FAMILY_INET6, NsCounts,
    STAT_BACKUP_HANDLED, STAT_COUNTS_FULL, STAT_EVENTS_DROPPED, STAT_READ_FAILED, STAT_SLOTS,
    STAT_SOCKS_FULL, SockEntry, StateEvent, model::TCP_CLOSE, slot,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

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
#[unsafe(no_mangle)]
static SK_DADDR_OFFSET: u64 = 0; // sock_common.skc_daddr (__be32)
#[unsafe(no_mangle)]
static SK_RCV_SADDR_OFFSET: u64 = 0; // sock_common.skc_rcv_saddr (__be32)
#[unsafe(no_mangle)]
static SK_DPORT_OFFSET: u64 = 0; // sock_common.skc_dport (__be16)
#[unsafe(no_mangle)]
static INET_SPORT_OFFSET: u64 = 0; // inet_sock.inet_sport (__be16; kept after unhash, unlike skc_num)
#[unsafe(no_mangle)]
static SK_V6_DADDR_OFFSET: u64 = 0; // sock_common.skc_v6_daddr (struct in6_addr)
#[unsafe(no_mangle)]
static SK_V6_RCV_SADDR_OFFSET: u64 = 0; // sock_common.skc_v6_rcv_saddr
#[unsafe(no_mangle)]
static SK_LOCK_OWNED_OFFSET: u64 = 0; // sock.sk_lock.owned (int)

/// Live TCP sockets by cookie. A plain hash map, never LRU: an eviction would
/// silently lose a socket's count. Size is set by the agent at load time.
/// Preallocated on purpose: with BPF_F_NO_PREALLOC an insert may refill the
/// allocator through an irq_work self-IPI, whose exit runs pending softirqs
/// that fire this tracepoint again on the same CPU; the kernel skips such a
/// nested run (a lost event). Measured: 750 lost of ~100k while building
/// 45k connections on loopback without prealloc.
#[map]
static SOCKS: HashMap<u64, SockEntry> = HashMap::with_max_entries(1 << 19, 0);

/// Per-namespace, per-CPU state counters (deltas, see NsCounts).
#[map]
static COUNTS: PerCpuHashMap<u32, NsCounts> = PerCpuHashMap::with_max_entries(4096, 0);

/// Switches set by the agent; index CONTROL_SEEDING is non-zero while seeding.
/// State transitions for `netconn watch`, written only while CONTROL_STREAM
/// is on. Size set by the agent at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Unread bytes in EVENTS at which the reader is woken (about 700 events).
const WAKEUP_BYTES: u64 = 64 * 1024;

#[map]
static CONTROL: Array<u32> = Array::with_max_entries(CONTROL_SLOTS, 0);

/// Error counters (ERROR_*): any non-zero value makes the agent's counts inexact.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// One event the primary handled: the tracepoint's arguments and when.
#[repr(C)]
#[derive(Clone, Copy)]
struct Claim {
    /// Socket cookie (never reused, unlike a socket's address); 0 = free.
    cookie: u64,
    /// old << 32 | new
    transition: u64,
    at_ns: u64,
    /// Claims::next when it was written.
    seq: u64,
}

/// The last few events the primary handled on this CPU, newest at `next - 1`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Claims {
    slot: [Claim; CLAIM_SLOTS],
    next: u64,
}

const CLAIM_SLOTS: usize = 8;
/// A claim older than this is stale (its backup run was itself skipped) and
/// its slot is free. Generous: a softirq batch between the primary and the
/// backup of one event can take milliseconds.
const CLAIM_TTL_NS: u64 = 1_000_000_000;

#[map]
static CLAIMS: PerCpuArray<Claims> = PerCpuArray::with_max_entries(1, 0);

/// The primary handler. The kernel never runs a tracing program nested on
/// one CPU: if an interrupt arrives while the program is running and its
/// softirq fires this tracepoint again, that nested run is skipped and only
/// counted in the program's `recursion_misses` (measured: hundreds per 100k
/// events while building connections on loopback). Hence the backup below;
/// the primary records each event it has handled so the backup can tell.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn netconn_state(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: the arguments are those of trace_inet_sock_set_state(sk, old, new).
    let (sk, old, new): (*const c_void, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if sk.is_null() {
        return 0;
    }
    let cookie = cookie_of(sk);
    if let Err(stat) = try_set_state(sk, cookie, old, new) {
        bump(stat);
    }
    // Claimed after handling: the backup for this event runs right after
    // us, so the claim is as fresh as it can be when it is looked up.
    if let Some(claims) = CLAIMS.get_ptr_mut(0) {
        // SAFETY: this CPU's copy of our own map value. Volatile: the backup
        // may read it from an interrupt at any instruction, which the
        // compiler cannot see; `cookie` goes last so a torn slot never matches.
        unsafe {
            let now = bpf_ktime_get_ns();
            // A free (consumed or expired) slot, else the oldest claim. A
            // claim still waiting for its backup run is the newest but for
            // ones nested runs add (and mostly consume), while claims whose
            // backup run was skipped linger: evict those first.
            let next = core::ptr::read_volatile(&raw const (*claims).next);
            let mut index = 0;
            let mut oldest = u64::MAX;
            for i in 0..CLAIM_SLOTS {
                let slot = &raw const (*claims).slot[i];
                if core::ptr::read_volatile(&raw const (*slot).cookie) == 0
                    || now.wrapping_sub(core::ptr::read_volatile(&raw const (*slot).at_ns))
                        >= CLAIM_TTL_NS
                {
                    index = i;
                    break;
                }
                let age = next.wrapping_sub(core::ptr::read_volatile(&raw const (*slot).seq));
                if oldest == u64::MAX || age > oldest {
                    oldest = age;
                    index = i;
                }
            }
            // Advance `next` first: a backup run nested from here on starts
            // after this claim's sequence number, so its clean-up of claims
            // newer than itself can never take this one.
            core::ptr::write_volatile(&raw mut (*claims).next, next.wrapping_add(1));
            let slot = &raw mut (*claims).slot[index];
            core::ptr::write_volatile(&raw mut (*slot).cookie, 0);
            core::ptr::write_volatile(&raw mut (*slot).at_ns, now);
            core::ptr::write_volatile(&raw mut (*slot).transition, transition(old, new));
            core::ptr::write_volatile(&raw mut (*slot).seq, next);
            core::ptr::write_volatile(&raw mut (*slot).cookie, cookie);
        }
    }
    0
}

/// The backup handler, attached after the primary so that it runs after it
/// for the same event. An event the primary claimed is done (the claim is
/// consumed); any other event is one the kernel skipped the primary for, and
/// is handled here. Events both missed show up as primary `recursion_misses`
/// exceeding STAT_BACKUP_HANDLED, which the agent checks.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn netconn_backup(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: as in the primary.
    let (sk, old, new): (*const c_void, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    if sk.is_null() {
        return 0;
    }
    let cookie = cookie_of(sk);
    let Some(claims) = CLAIMS.get_ptr_mut(0) else {
        return handle_unclaimed(sk, cookie, old, new);
    };
    // SAFETY: this CPU's copy of our own map value.
    let started_at = unsafe { core::ptr::read_volatile(&raw const (*claims).next) };
    if !consume_claim(claims, cookie, transition(old, new)) {
        handle_unclaimed(sk, cookie, old, new);
    }
    // Claims written while this run was active come from primary runs
    // nested inside it, whose backup runs the kernel skipped (this program
    // was busy): nobody will consume them. Drop them so they cannot crowd
    // out a live claim.
    for i in 0..CLAIM_SLOTS {
        // SAFETY: as above; bounded index.
        unsafe {
            let slot = &raw mut (*claims).slot[i];
            if core::ptr::read_volatile(&raw const (*slot).cookie) != 0
                && core::ptr::read_volatile(&raw const (*slot).seq).wrapping_sub(started_at)
                    < u64::MAX / 2
            {
                core::ptr::write_volatile(&raw mut (*slot).cookie, 0);
            }
        }
    }
    0
}

/// Find and consume the primary's claim on this event: the same socket
/// (by cookie, which is never reused) making the same transition, recently.
#[inline(always)]
fn consume_claim(claims: *mut Claims, cookie: u64, want: u64) -> bool {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    for i in 0..CLAIM_SLOTS {
        // SAFETY: this CPU's copy of our own map value; bounded index.
        unsafe {
            let slot = &raw mut (*claims).slot[i];
            if core::ptr::read_volatile(&raw const (*slot).cookie) == cookie
                && core::ptr::read_volatile(&raw const (*slot).transition) == want
                && now.wrapping_sub(core::ptr::read_volatile(&raw const (*slot).at_ns))
                    < CLAIM_TTL_NS
            {
                core::ptr::write_volatile(&raw mut (*slot).cookie, 0);
                return true;
            }
        }
    }
    false
}

#[inline(always)]
fn cookie_of(sk: *const c_void) -> u64 {
    // SAFETY: the tracepoint's own socket pointer, non-null.
    unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
}

/// An event the kernel skipped the primary for: handle it here.
#[inline(always)]
fn handle_unclaimed(sk: *const c_void, cookie: u64, old: i32, new: i32) -> i32 {
    bump(STAT_BACKUP_HANDLED);
    if let Err(stat) = try_set_state(sk, cookie, old, new) {
        bump(stat);
    }
    0
}

#[inline(always)]
fn transition(old: i32, new: i32) -> u64 {
    ((old as u32 as u64) << 32) | new as u32 as u64
}

fn try_set_state(sk: *const c_void, cookie: u64, old: i32, new: i32) -> Result<(), u32> {
    if old == new {
        return Ok(());
    }
    // SAFETY: helpers on the tracepoint's own socket pointer. skc_to_tcp_sock
    // is non-null only for full TCP sockets (not SCTP, not the MPTCP socket).
    let is_tcp = unsafe { !bpf_skc_to_tcp_sock(sk as *mut c_void).is_null() };
    if !is_tcp {
        return Ok(());
    }
    let (family, netns) = read_family_netns(sk)?;
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let previous = track(cookie, family, netns, new as u8, now)?;
    if CONTROL.get(CONTROL_STREAM).is_some_and(|v| *v != 0) {
        emit(
            sk, cookie, family, netns, old as u8, new as u8, now, previous,
        );
    }
    Ok(())
}

/// Move the socket's count to `new` and update its entry. Returns the entry
/// it had before (for the event's time-in-state), if it had a live one.
#[inline(always)]
fn track(cookie: u64, family: u8, netns: u32, new: u8, now: u64) -> Result<Option<SockEntry>, u32> {
    let seeding = CONTROL.get(CONTROL_SEEDING).is_some_and(|v| *v != 0);
    let closing = new == TCP_CLOSE;
    if let Some(done) = update_existing(cookie, family, netns, new, now, seeding)? {
        return Ok(done);
    }
    // No entry. Inserts use NOEXIST: the agent's seed may insert this very
    // socket between our lookup and our insert (it runs on another CPU). A
    // blind overwrite would then leave the seeded state counted forever
    // (seen as a stale FIN_WAIT1 +1 after start-ups under churn); instead
    // the seeded entry is treated as existing.
    let inserted = if closing {
        if !seeding {
            return Ok(None);
        }
        let tomb = SockEntry {
            flags: ENTRY_TOMBSTONE,
            ..live_entry(netns, family, new, now)
        };
        SOCKS.insert(cookie, tomb, BPF_NOEXIST as u64).is_ok()
    } else {
        SOCKS
            .insert(
                cookie,
                live_entry(netns, family, new, now),
                BPF_NOEXIST as u64,
            )
            .is_ok()
    };
    if inserted {
        if !closing {
            count(netns, family, new, 1)?;
        }
        return Ok(None);
    }
    match update_existing(cookie, family, netns, new, now, seeding)? {
        Some(done) => Ok(done),
        None => Err(STAT_SOCKS_FULL),
    }
}

/// The transition for a socket that has an entry: `Some(previous live
/// entry)` when handled, `None` when there is no entry.
#[inline(always)]
fn update_existing(
    cookie: u64,
    family: u8,
    netns: u32,
    new: u8,
    now: u64,
    seeding: bool,
) -> Result<Option<Option<SockEntry>>, u32> {
    let closing = new == TCP_CLOSE;
    let Some(entry) = SOCKS.get_ptr_mut(cookie) else {
        return Ok(None);
    };
    // SAFETY: pointer to our own map value; this socket's transitions are
    // serialised by its lock, so no other event writes this entry now.
    let entry = unsafe { &mut *entry };
    if entry.flags != ENTRY_TOMBSTONE {
        let before = *entry;
        count(entry.netns, entry.family, entry.state, -1)?;
        if closing {
            if seeding {
                entry.flags = ENTRY_TOMBSTONE;
            } else {
                let _ = SOCKS.remove(cookie);
            }
        } else {
            *entry = live_entry(netns, family, new, now);
            count(netns, family, new, 1)?;
        }
        return Ok(Some(Some(before)));
    }
    // A tombstone: the socket closed during seeding and is now back
    // (connect again after a failed connect). Go on as a new socket.
    if closing {
        if !seeding {
            let _ = SOCKS.remove(cookie);
        }
    } else {
        *entry = live_entry(netns, family, new, now);
        count(netns, family, new, 1)?;
    }
    Ok(Some(None))
}

/// Send the transition to the agent's ring buffer (only while someone
/// watches). A full ring is counted, never silent.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn emit(
    sk: *const c_void,
    cookie: u64,
    family: u8,
    netns: u32,
    old: u8,
    new: u8,
    now: u64,
    previous: Option<SockEntry>,
) {
    let Some(mut slot) = EVENTS.reserve::<StateEvent>(0) else {
        bump(STAT_EVENTS_DROPPED);
        return;
    };
    let (in_state_ns, mut flags) = match previous {
        Some(p) if p.flags == ENTRY_SEEDED => (now.saturating_sub(p.since_ns), EVENT_SINCE_SEEDING),
        Some(p) => (now.saturating_sub(p.since_ns), 0),
        None => (0, EVENT_FIRST_SEEN),
    };
    let mut event = StateEvent {
        ts_ns: now,
        cookie,
        in_state_ns,
        netns,
        pid: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family,
        old,
        new,
        flags: 0,
        comm: [0; 16],
    };
    // SAFETY: probe reads at this kernel's BTF offsets; failures leave zeros.
    unsafe {
        let base = sk as *const u8;
        event.sport = u16::from_be(
            bpf_probe_read_kernel(base.add(offset(&INET_SPORT_OFFSET)) as *const u16).unwrap_or(0),
        );
        event.dport = u16::from_be(
            bpf_probe_read_kernel(base.add(offset(&SK_DPORT_OFFSET)) as *const u16).unwrap_or(0),
        );
        if family == FAMILY_INET {
            let s: [u8; 4] =
                bpf_probe_read_kernel(base.add(offset(&SK_RCV_SADDR_OFFSET)) as *const [u8; 4])
                    .unwrap_or([0; 4]);
            let d: [u8; 4] =
                bpf_probe_read_kernel(base.add(offset(&SK_DADDR_OFFSET)) as *const [u8; 4])
                    .unwrap_or([0; 4]);
            event.saddr[..4].copy_from_slice(&s);
            event.daddr[..4].copy_from_slice(&d);
        } else {
            event.saddr =
                bpf_probe_read_kernel(base.add(offset(&SK_V6_RCV_SADDR_OFFSET)) as *const [u8; 16])
                    .unwrap_or([0; 16]);
            event.daddr =
                bpf_probe_read_kernel(base.add(offset(&SK_V6_DADDR_OFFSET)) as *const [u8; 16])
                    .unwrap_or([0; 16]);
        }
        // The task on the CPU is the socket's owner only when the change runs
        // under the owner's socket lock (connect, listen, close, backlog
        // processing in release_sock); softirq and timer paths never own it.
        let owned: i32 =
            bpf_probe_read_kernel(base.add(offset(&SK_LOCK_OWNED_OFFSET)) as *const i32)
                .unwrap_or(0);
        if owned != 0 {
            event.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
            event.comm = bpf_get_current_comm().unwrap_or([0; 16]);
            flags |= EVENT_OWNER;
        }
    }
    event.flags = flags;
    slot.write(event);
    // Waking the reader costs more than the rest of this program; wake it
    // only when a batch has built up. The agent polls every few
    // milliseconds for the rest, which bounds a watcher's delay.
    let wake = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    slot.submit(wake as u64);
}

#[inline(always)]
fn live_entry(netns: u32, family: u8, state: u8, now: u64) -> SockEntry {
    SockEntry {
        since_ns: now,
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
            .map_err(|_| STAT_READ_FAILED)?;
        let family = match af {
            AF_INET => FAMILY_INET,
            AF_INET6 => FAMILY_INET6,
            _ => return Err(STAT_READ_FAILED),
        };
        let net: *const u8 =
            bpf_probe_read_kernel(base.add(offset(&SK_NET_OFFSET)) as *const *const u8)
                .map_err(|_| STAT_READ_FAILED)?;
        let inum: u32 = bpf_probe_read_kernel(net.add(offset(&NET_INUM_OFFSET)) as *const u32)
            .map_err(|_| STAT_READ_FAILED)?;
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
            COUNTS.get_ptr_mut(netns).ok_or(STAT_COUNTS_FULL)?
        }
    };
    // SAFETY: this CPU's copy of our map value. The add is atomic because
    // the backup program can run nested inside the primary on this CPU (see
    // netconn_backup) and a plain read-modify-write would lose its update.
    unsafe {
        let cell = &raw mut (*counters).count[slot(family, state)];
        atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(cell, delta);
    }
    Ok(())
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(n) = STATS.get_ptr_mut(index) {
        // SAFETY: this CPU's copy of our own map value; atomic for the same
        // reason as in `count`.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1) };
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
