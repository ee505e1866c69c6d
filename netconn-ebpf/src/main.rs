//! Kernel side of netconn: keeps a per-socket entry and per-namespace TCP
//! state counters up to date from `sock:inet_sock_set_state`.
//!
//! Counting rule: an entry that exists moves its count from its recorded
//! state to the new one; a socket without an entry is counted in its new
//! state only (it is new, or it predates the agent and was not seeded yet).
//! Seeding is `netconn_seed`, an `iter/tcp` program: it visits each socket
//! under the socket's lock, so no event of that socket can interleave, and
//! enters the ones without an entry. Invariant: a namespace's counters are
//! the sum of its live entries, by family and state.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod changes;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns,
        generated::{bpf_get_socket_cookie, bpf_jiffies64, bpf_seq_write, bpf_skc_to_tcp_sock},
    },
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::BtfTracePointContext,
};
// The bpf target has no atomic types with fetch_add; the intrinsic lowers to
// the BPF atomic add instruction.
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd},
    ptr::{read_volatile, write_volatile},
};
use netconn_common::{
    BANKS, CONTROL_SLOTS, CONTROL_STREAM, ENTRY_LIVE, ENTRY_SEEDED, EVENT_FIRST_SEEN, EVENT_OWNER,
    EVENT_SINCE_SEEDING, FAMILY_INET, FAMILY_INET6, NS_SLOT_PROBES, NS_SLOTS_MAX, NsCounts,
    SEED_FAILED, SEED_INSERTED, SEED_KNOWN, STAT_BACKUP_HANDLED, STAT_COUNTS_FULL,
    STAT_EVENTS_DROPPED, STAT_READ_FAILED, STAT_SLOTS, STAT_SOCKS_FULL, STATE_SLOTS, SockSlot,
    StateEvent, TRANSITION_CELLS, model, ns_slot_probe, slot, sock_bucket, transition_cell,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;

/// Byte offsets inside kernel structs, read from the running kernel's BTF by
/// the agent and written here before load (Rust eBPF has no CO-RE field
/// relocations). Names are `struct.field` in include/net/sock.h and
/// include/net/net_namespace.h / include/linux/ns_common.h. They live in
/// frozen .rodata, so the verifier knows their values: `sk + OFFSET` is a
/// typed BTF access it checks once, and the load is one instruction instead
/// of a bpf_probe_read_kernel call.
#[unsafe(no_mangle)]
static SK_FAMILY_OFFSET: u64 = 0; // sock_common.skc_family (u16)
#[unsafe(no_mangle)]
static SK_PROTOCOL_OFFSET: u64 = 0; // sock.sk_protocol (u16)
#[unsafe(no_mangle)]
static SK_STATE_OFFSET: u64 = 0; // sock_common.skc_state (u8)
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

/// Size of SOCKS (a power of two), set by the agent before load.
#[unsafe(no_mangle)]
static SOCK_SLOTS: u32 = 2;

/// BPF_F_MMAPABLE (uapi/linux/bpf.h): the agent reads SOCKS through a
/// shared mapping instead of a syscall per slot.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Live TCP sockets, two slots per bucket (see SockSlot, sock_bucket). An
/// array: the lookup is inlined and needs no hashing or bucket lock, and
/// the few thousand sockets a busy server holds at once sit in a few
/// hundred KiB (a hash keyed by cookie spread them over its whole bucket
/// array: a cache miss per event). Size set by the agent at load time.
#[map]
static SOCKS: Array<SockSlot> = Array::with_max_entries(1 << 19, BPF_F_MMAPABLE);

/// Sockets whose bucket was full, by cookie. A plain hash map, never LRU:
/// an eviction would silently lose a socket's count. Preallocated on
/// purpose: with BPF_F_NO_PREALLOC an insert may refill the allocator
/// through an irq_work self-IPI, whose exit runs pending softirqs that fire
/// this tracepoint again on the same CPU; the kernel skips such a nested
/// run (a lost event). Measured: 750 lost of ~100k while building 45k
/// connections on loopback without prealloc. Size set by the agent.
#[map]
static SOCKS_SPILL: HashMap<u64, SockSlot> = HashMap::with_max_entries(1 << 18, 0);

/// Per-CPU state counters (deltas, see NsCounts), one entry per namespace
/// slot. An array, not a hash keyed by namespace: the lookup is inlined by
/// the verifier, and the slot is found once per socket (kept in its entry).
#[map]
static COUNTS: PerCpuArray<NsCounts> = PerCpuArray::with_max_entries(BANKS * NS_SLOTS_MAX, 0);

/// COUNTS slot -> the namespace inode that owns it (see ns_slot_probe).
/// Slots are never freed: an inode reused by a new namespace keeps counting
/// where the old one left off, as inode-keyed counters did.
#[map]
static NS_SLOTS: HashMap<u32, u32> = HashMap::with_max_entries(NS_SLOTS_MAX, 0);

/// Namespaces the agent has seeded (inode -> boot time it finished), so
/// that a pinned generation tells the next agent which need no seeding.
/// Never touched by the programs.
#[map]
static SEEDED: HashMap<u32, u64> = HashMap::with_max_entries(NS_SLOTS_MAX, 0);

/// Counted TCP transitions per (family, old, new), at transition_cell(), for
/// `netconn_transitions_total`. 512 cells of one per-CPU array: the lookup
/// is inlined, and summing 4 KiB per CPU is cheap for the agent.
#[map]
static TRANSITIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(BANKS * TRANSITION_CELLS, 0);

/// State transitions for `netconn watch`, written only while CONTROL_STREAM
/// is on. Size set by the agent at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Events a CPU writes to EVENTS before it wakes the reader (the reader
/// also polls every few milliseconds). Counted per CPU rather than asking
/// the ring for its unread bytes: that reads the consumer position, which
/// the reader writes for every event it takes, so the cache line bounced
/// between the reader's CPU and every writer's on each event.
const WAKEUP_EVENTS: u64 = 640;

/// Switches set by the agent (CONTROL_*).
#[map]
static CONTROL: Array<u32> = Array::with_max_entries(CONTROL_SLOTS, 0);

/// Error counters (ERROR_*): any non-zero value makes the agent's counts inexact.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// This CPU's clock reading at the start of the current jiffy, and its
/// stream events since it last woke the reader.
#[repr(C)]
#[derive(Clone, Copy)]
struct Tick {
    jiffies: u64,
    boot_ns: u64,
    unwoken: u64,
}

#[map]
static TICK: PerCpuArray<Tick> = PerCpuArray::with_max_entries(1, 0);

/// Boot time, to within a jiffy (1-10 ms), for entries nobody watches: only
/// leak ages (minutes) read them. A clocksource read costs ~35 ns per event
/// on these machines; this reads it once per jiffy per CPU (every ~200
/// events under load) and otherwise reuses that reading. A nested run may
/// see a half-written Tick: the time is then one jiffy off, no more.
/// `jiffies`: the caller's reading of bpf_jiffies64().
#[inline(always)]
fn tick_time(jiffies: u64) -> u64 {
    let Some(tick) = TICK.get_ptr_mut(0) else {
        // SAFETY: no preconditions.
        return unsafe { bpf_ktime_get_boot_ns() };
    };
    // SAFETY: this CPU's copy of our own map value.
    unsafe {
        if read_volatile(&raw const (*tick).jiffies) == jiffies {
            return read_volatile(&raw const (*tick).boot_ns);
        }
        let now = bpf_ktime_get_boot_ns();
        write_volatile(&raw mut (*tick).boot_ns, now);
        write_volatile(&raw mut (*tick).jiffies, jiffies);
        now
    }
}

/// One event the primary ran for: the tracepoint's arguments.
#[repr(C)]
#[derive(Clone, Copy)]
struct Claim {
    sk: u64,
    /// old << 32 | new
    transition: u64,
    /// jiffies when pushed.
    at: u64,
}

/// A claim older than this many jiffies (64 ms at HZ=1000, 256 ms at
/// HZ=250) was left by a primary run nested in a backup run after the
/// backup's last write: nobody pops it, and it must not match a later event
/// of a socket that reuses the address. A pending claim waits only for the
/// interrupts and softirqs nested between a primary run and its backup run
/// (a softirq batch yields to ksoftirqd after 2 ms): far younger.
const CLAIM_TTL_JIFFIES: u64 = 64;

/// Events the primary ran for whose backup run has not come yet, as a
/// stack: runs nest, so the backup run of an event always comes right after
/// the primary's and after every run nested inside those.
#[repr(C)]
#[derive(Clone, Copy)]
struct Claims {
    depth: u64,
    slot: [Claim; CLAIM_SLOTS],
}

const CLAIM_SLOTS: usize = 8;

#[map]
static CLAIMS: PerCpuArray<Claims> = PerCpuArray::with_max_entries(1, 0);

/// The primary handler. The kernel never runs a tracing program nested on
/// one CPU: if an interrupt arrives while the program is running and its
/// softirq fires this tracepoint again, that nested run is skipped and only
/// counted in the program's `recursion_misses` (measured: hundreds per 100k
/// events while building connections on loopback). Hence the backup below;
/// the primary pushes a claim for each event it ran for so the backup can
/// tell.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn netconn_state(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: the arguments are those of trace_inet_sock_set_state(sk, old, new).
    let (sk, old, new): (*const c_void, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    // One reading for the entry's time and the claim's age.
    // SAFETY: no preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    if !sk.is_null()
        && let Err(stat) = try_set_state(sk, old, new, PRIMARY, jiffies)
    {
        bump(stat);
    }
    // Claimed after handling: a run nested before this point was skipped
    // for the primary and finds no claim of its own on top, so its backup
    // run handles it.
    if let Some(claims) = CLAIMS.get_ptr_mut(0) {
        // SAFETY: this CPU's copy of our own map value. Volatile: the backup
        // may read it from an interrupt at any instruction, which the
        // compiler cannot see; `depth` goes last so the claim is whole when
        // it becomes visible. A full stack, or one whose newest claim is
        // stale, only holds claims nobody will pop (see CLAIM_TTL_JIFFIES):
        // start over, so that they cannot match a later event.
        unsafe {
            let depth = read_volatile(&raw const (*claims).depth);
            let index = if depth >= CLAIM_SLOTS as u64
                || (depth > 0
                    && jiffies.wrapping_sub(read_volatile(
                        &raw const (*claims).slot[(depth - 1) as usize & (CLAIM_SLOTS - 1)].at,
                    )) > CLAIM_TTL_JIFFIES)
            {
                0
            } else {
                depth
            };
            let slot = &raw mut (*claims).slot[index as usize & (CLAIM_SLOTS - 1)];
            write_volatile(&raw mut (*slot).sk, sk as u64);
            write_volatile(&raw mut (*slot).transition, transition(old, new));
            write_volatile(&raw mut (*slot).at, jiffies);
            write_volatile(&raw mut (*claims).depth, index + 1);
        }
    }
    0
}

/// The backup handler, attached after the primary so that it runs after it
/// for the same event. When the primary ran for this event, its claim is on
/// top of the stack (or under claims pushed by primary runs nested in this
/// one): pop it, done (the common path: one inlined map lookup and two
/// compares). Otherwise the kernel skipped the primary for this event (we
/// are nested inside it), and the event is handled here.
/// Events both missed show up as primary `recursion_misses` exceeding
/// STAT_BACKUP_HANDLED, which the agent checks.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn netconn_backup(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: as in the primary.
    let (sk, old, new): (*const c_void, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let Some(claims) = CLAIMS.get_ptr_mut(0) else {
        return handle_unclaimed(sk, old, new);
    };
    // SAFETY: this CPU's copy of our own map value; bounded index.
    unsafe {
        let jiffies = bpf_jiffies64();
        let depth = read_volatile(&raw const (*claims).depth);
        // Normally the claim is on top. Above it can only be claims of
        // primary runs nested inside this run before we read `depth`: their
        // backup runs were skipped (we were busy), so they are dropped with it.
        for k in 0..CLAIM_SLOTS as u64 {
            if k >= depth {
                break;
            }
            let index = depth - 1 - k;
            let claim = &raw const (*claims).slot[index as usize & (CLAIM_SLOTS - 1)];
            if read_volatile(&raw const (*claim).sk) == sk as u64
                && read_volatile(&raw const (*claim).transition) == transition(old, new)
                && jiffies.wrapping_sub(read_volatile(&raw const (*claim).at)) <= CLAIM_TTL_JIFFIES
            {
                // Also drops what primary runs nested in this run pushed
                // meanwhile (as above).
                write_volatile(&raw mut (*claims).depth, index);
                return 0;
            }
        }
        handle_unclaimed(sk, old, new);
        // As above: nothing pushed while we ran will be popped.
        write_volatile(&raw mut (*claims).depth, depth);
    }
    0
}

#[inline(always)]
fn cookie_of(sk: *const c_void) -> u64 {
    // SAFETY: the tracepoint's own socket pointer, non-null.
    unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
}

/// Banks of COUNTS and TRANSITIONS (see netconn_common::BANKS).
const PRIMARY: u32 = 0;
const BACKUP: u32 = 1;

/// An event the kernel skipped the primary for: handle it here. Not
/// inlined, so that the backup's common path (a claim popped) is a few
/// contiguous instructions.
#[inline(never)]
fn handle_unclaimed(sk: *const c_void, old: i32, new: i32) -> i32 {
    bump(STAT_BACKUP_HANDLED);
    if !sk.is_null()
        // SAFETY: no preconditions.
        && let Err(stat) = try_set_state(sk, old, new, BACKUP, unsafe { bpf_jiffies64() })
    {
        bump(stat);
    }
    0
}

#[inline(always)]
fn transition(old: i32, new: i32) -> u64 {
    ((old as u32 as u64) << 32) | new as u32 as u64
}

#[inline(always)]
fn try_set_state(
    sk: *const c_void,
    old: i32,
    new: i32,
    bank: u32,
    jiffies: u64,
) -> Result<(), u32> {
    if old == new {
        return Ok(());
    }
    // SAFETY: typed loads from the tracepoint's socket at this kernel's BTF
    // offsets. Full TCP sockets only (not SCTP, not the MPTCP socket; the
    // tracepoint only fires for full sockets).
    let (protocol, af) = unsafe {
        (
            load::<u16>(sk, &SK_PROTOCOL_OFFSET),
            load::<u16>(sk, &SK_FAMILY_OFFSET),
        )
    };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let family = match af {
        AF_INET => FAMILY_INET,
        AF_INET6 => FAMILY_INET6,
        _ => return Err(STAT_READ_FAILED),
    };
    let cookie = cookie_of(sk);
    let streaming = CONTROL.get(CONTROL_STREAM).is_some_and(|v| *v != 0);
    let now = if streaming {
        // A watcher gets exact times.
        // SAFETY: no preconditions.
        unsafe { bpf_ktime_get_boot_ns() }
    } else {
        tick_time(jiffies)
    };
    let previous = track(sk, cookie, family, new as u8, now, bank)?;
    let cell = bank * TRANSITION_CELLS + transition_cell(family, old as u8, new as u8);
    if let Some(n) = TRANSITIONS.get_ptr_mut(cell) {
        // SAFETY: this CPU's copy of our own map value, this program's bank.
        unsafe { *n += 1 };
    }
    if streaming {
        let (in_state_ns, flags) = match previous {
            Some(p) if p.flags() == ENTRY_SEEDED => {
                (now.saturating_sub(p.since_ns), EVENT_SINCE_SEEDING)
            }
            Some(p) => (now.saturating_sub(p.since_ns), 0),
            None => (0, EVENT_FIRST_SEEN),
        };
        let stream = Stream {
            cookie,
            in_state_ns,
            now,
            family,
            old: old as u8,
            new: new as u8,
            flags,
        };
        emit(sk, &stream);
    }
    Ok(())
}

/// Move the socket's count to `new` and update its entry. Returns the entry
/// it had before (for the event's time-in-state), if it had one.
#[inline(always)]
fn track(
    sk: *const c_void,
    cookie: u64,
    family: u8,
    new: u8,
    now: u64,
    bank: u32,
) -> Result<Option<SockSlot>, u32> {
    // Always looked up, even for a socket's first event: handling an event
    // twice must leave the counts alone (see netconn_backup).
    if let Some(found) = find(cookie)? {
        // SAFETY: our own map value; this socket's transitions (and the
        // seeding iterator's visit) are serialised by its lock, so nobody
        // else writes this entry now.
        let entry = unsafe { &mut *found.entry };
        let before = *entry;
        let from = slot(entry.family(), entry.state);
        if new == model::TCP_CLOSE {
            count(bank, entry.ns_slot, Some(from), None)?;
            remove(&found, cookie);
        } else {
            count(bank, entry.ns_slot, Some(from), Some(slot(family, new)))?;
            entry.since_ns = now;
            entry.state = new;
            entry.family_flags = SockSlot::family_flags(family, ENTRY_LIVE);
        }
        return Ok(Some(before));
    }
    if new == model::TCP_CLOSE {
        return Ok(None);
    }
    let netns = netns_of(sk);
    let ns_slot = ns_slot_of(netns)?;
    insert(cookie, netns, ns_slot, family, new, ENTRY_LIVE, now)?;
    count(bank, ns_slot, None, Some(slot(family, new)))?;
    Ok(None)
}

/// Where a socket's entry is.
struct Found {
    entry: *mut SockSlot,
    /// The bucket's first slot, when the entry is in SOCKS_SPILL.
    spilled_from: Option<*mut SockSlot>,
}

/// The two SOCKS slots of a cookie's bucket.
#[inline(always)]
fn bucket(cookie: u64) -> Result<(*mut SockSlot, *mut SockSlot), u32> {
    // SAFETY: a global the loader filled in (read_volatile: see load()).
    let slots = unsafe { read_volatile(&SOCK_SLOTS) };
    let first = sock_bucket(cookie, slots);
    match (SOCKS.get_ptr_mut(first), SOCKS.get_ptr_mut(first | 1)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(STAT_SOCKS_FULL),
    }
}

#[inline(always)]
fn find(cookie: u64) -> Result<Option<Found>, u32> {
    let (first, second) = bucket(cookie)?;
    // SAFETY: our own map values. Another CPU may claim or free a slot of
    // this bucket meanwhile, but only for another cookie: never this one.
    unsafe {
        if read_volatile(&raw const (*first).cookie) == cookie {
            return Ok(Some(Found {
                entry: first,
                spilled_from: None,
            }));
        }
        if read_volatile(&raw const (*second).cookie) == cookie {
            return Ok(Some(Found {
                entry: second,
                spilled_from: None,
            }));
        }
        if read_volatile(&raw const (*first).spilled) != 0
            && let Some(entry) = SOCKS_SPILL.get_ptr_mut(cookie)
        {
            return Ok(Some(Found {
                entry,
                spilled_from: Some(first),
            }));
        }
    }
    Ok(None)
}

/// Enter a socket: a free slot of its bucket, claimed with a compare and
/// exchange (another CPU may be claiming one for another socket), or else
/// SOCKS_SPILL.
#[inline(always)]
fn insert(
    cookie: u64,
    netns: u32,
    ns_slot: u16,
    family: u8,
    state: u8,
    flags: u8,
    now: u64,
) -> Result<(), u32> {
    let (first, second) = bucket(cookie)?;
    // SAFETY: our own map values; a claimed slot is ours until we free it.
    unsafe {
        for slot in [first, second] {
            let (_, claimed) = atomic_cxchg::<
                u64,
                { AtomicOrdering::SeqCst },
                { AtomicOrdering::SeqCst },
            >(&raw mut (*slot).cookie, 0, cookie);
            if claimed {
                (*slot).since_ns = now;
                (*slot).netns = netns;
                (*slot).ns_slot = ns_slot;
                (*slot).state = state;
                (*slot).family_flags = SockSlot::family_flags(family, flags);
                return Ok(());
            }
        }
        // Counted before the insert, so that a lookup never misses it.
        atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(&raw mut (*first).spilled, 1);
        let entry = SockSlot {
            cookie,
            since_ns: now,
            netns,
            ns_slot,
            state,
            family_flags: SockSlot::family_flags(family, flags),
            spilled: 0,
            _pad: 0,
        };
        if SOCKS_SPILL
            .insert(cookie, entry, BPF_NOEXIST as u64)
            .is_err()
        {
            atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(
                &raw mut (*first).spilled,
                u32::MAX,
            );
            return Err(STAT_SOCKS_FULL);
        }
    }
    Ok(())
}

#[inline(always)]
fn remove(found: &Found, cookie: u64) {
    // SAFETY: our own map values.
    unsafe {
        match found.spilled_from {
            Some(first) => {
                let _ = SOCKS_SPILL.remove(cookie);
                atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(
                    &raw mut (*first).spilled,
                    u32::MAX,
                );
            }
            // Last: from here on another socket may claim the slot.
            None => write_volatile(&raw mut (*found.entry).cookie, 0),
        }
    }
}

/// The seeding iterator: run by the agent in each namespace (reading an
/// `iter/tcp` iterator made there), once per socket, with full sockets
/// locked. Enters each full TCP socket that has no entry yet, counted in
/// its state. One byte per full socket goes to the reader (SEED_*).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn netconn_seed(ctx: *mut c_void) -> i32 {
    // SAFETY: ctx is a struct bpf_iter__tcp { struct bpf_iter_meta *meta;
    // struct sock_common *sk_common; uid_t uid; }, and meta->seq comes first
    // in bpf_iter_meta.
    let (seq, sk) = unsafe {
        let meta = read_volatile(ctx as *const *const c_void);
        (
            read_volatile(meta as *const *mut c_void),
            read_volatile((ctx as *const *const c_void).add(1)),
        )
    };
    if sk.is_null() {
        return 0;
    }
    // NULL for timewait and request sockets, which the refresh counts.
    // SAFETY: a socket pointer from the iterator, non-null.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) } as *const c_void;
    if tp.is_null() {
        return 0;
    }
    let outcome = match try_seed(tp) {
        Ok(outcome) => outcome,
        Err(stat) => {
            bump(stat);
            SEED_FAILED
        }
    };
    // SAFETY: the iterator's seq_file and one byte of our stack.
    unsafe { bpf_seq_write(seq.cast(), (&raw const outcome).cast(), 1) };
    0
}

#[inline(always)]
fn try_seed(sk: *const c_void) -> Result<u8, u32> {
    // SAFETY: typed loads from the iterator's (full, TCP) socket.
    let (state, af) = unsafe {
        (
            load::<u8>(sk, &SK_STATE_OFFSET),
            load::<u16>(sk, &SK_FAMILY_OFFSET),
        )
    };
    let family = match af {
        AF_INET => FAMILY_INET,
        AF_INET6 => FAMILY_INET6,
        _ => return Err(STAT_READ_FAILED),
    };
    let cookie = cookie_of(sk);
    if state == model::TCP_CLOSE || find(cookie)?.is_some() {
        return Ok(SEED_KNOWN);
    }
    let netns = netns_of(sk);
    let ns_slot = ns_slot_of(netns)?;
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    insert(cookie, netns, ns_slot, family, state, ENTRY_SEEDED, now)?;
    // The primary's bank, with an atomic add: an iterator can be preempted
    // (the programs cannot), but the primary's plain adds on this CPU never
    // straddle an instruction of ours.
    let counters = COUNTS
        .get_ptr_mut(PRIMARY * NS_SLOTS_MAX + u32::from(ns_slot))
        .ok_or(STAT_COUNTS_FULL)?;
    // SAFETY: this CPU's copy of our map value; index masked.
    unsafe {
        let cell = &raw mut (*counters).count[slot(family, state) & (2 * STATE_SLOTS - 1)];
        atomic_xadd::<i64, i64, { AtomicOrdering::Relaxed }>(cell, 1);
    }
    Ok(SEED_INSERTED)
}

/// What [`emit`] streams besides the socket's own fields.
#[derive(Clone, Copy)]
struct Stream {
    cookie: u64,
    in_state_ns: u64,
    now: u64,
    family: u8,
    old: u8,
    new: u8,
    flags: u8,
}

/// Send the transition to the agent's ring buffer (only while someone
/// watches). A full ring is counted, never silent. A function of its own
/// (a BPF-to-BPF call), not inlined: the counting path stays short and
/// contiguous, and only watchers pay for this.
#[inline(never)]
fn emit(sk: *const c_void, stream: &Stream) {
    let Some(mut slot) = EVENTS.reserve::<StateEvent>(0) else {
        bump(STAT_EVENTS_DROPPED);
        return;
    };
    let Stream {
        cookie,
        in_state_ns,
        now,
        family,
        old,
        new,
        mut flags,
    } = *stream;
    let mut event = StateEvent {
        ts_ns: now,
        cookie,
        in_state_ns,
        netns: netns_of(sk),
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
    // SAFETY: typed loads at this kernel's BTF offsets (see load()).
    unsafe {
        // inet_sport lies past struct sock: load it through the socket
        // typed as the tcp_sock it is (inet_sock is its prefix).
        let tp = bpf_skc_to_tcp_sock(sk as *mut c_void) as *const c_void;
        if !tp.is_null() {
            event.sport = u16::from_be(load::<u16>(tp, &INET_SPORT_OFFSET));
        }
        event.dport = u16::from_be(load::<u16>(sk, &SK_DPORT_OFFSET));
        if family == FAMILY_INET {
            event.saddr[..4].copy_from_slice(&load::<u32>(sk, &SK_RCV_SADDR_OFFSET).to_ne_bytes());
            event.daddr[..4].copy_from_slice(&load::<u32>(sk, &SK_DADDR_OFFSET).to_ne_bytes());
        } else {
            event.saddr = load_in6(sk, &SK_V6_RCV_SADDR_OFFSET);
            event.daddr = load_in6(sk, &SK_V6_DADDR_OFFSET);
        }
        // The task on the CPU is the socket's owner only when the change runs
        // under the owner's socket lock (connect, listen, close, backlog
        // processing in release_sock); softirq and timer paths never own it.
        if load::<i32>(sk, &SK_LOCK_OWNED_OFFSET) != 0 {
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
    let wake = match TICK.get_ptr_mut(0) {
        // SAFETY: this CPU's copy of our own map value. A nested run may
        // see a half-done count: one wake-up early or late, no more.
        Some(tick) => unsafe {
            let unwoken = read_volatile(&raw const (*tick).unwoken) + 1;
            if unwoken >= WAKEUP_EVENTS {
                write_volatile(&raw mut (*tick).unwoken, 0);
                BPF_RB_FORCE_WAKEUP
            } else {
                write_volatile(&raw mut (*tick).unwoken, unwoken);
                BPF_RB_NO_WAKEUP
            }
        },
        None => BPF_RB_FORCE_WAKEUP,
    };
    slot.submit(wake as u64);
}

/// Namespace inode of `sk` (sk->__sk_common.skc_net.net->ns.inum).
#[inline(always)]
fn netns_of(sk: *const c_void) -> u32 {
    // SAFETY: typed loads at this kernel's BTF offsets; skc_net is never
    // NULL for a socket that fires this tracepoint.
    unsafe {
        let net = load::<*const c_void>(sk, &SK_NET_OFFSET);
        load::<u32>(net, &NET_INUM_OFFSET)
    }
}

/// The COUNTS slot of namespace `netns`, taking a free one the first time.
/// Open addressing in NS_SLOTS; an insert with BPF_NOEXIST is atomic, so
/// two CPUs never take one slot. Runs once per new socket, not per event.
#[inline(always)]
fn ns_slot_of(netns: u32) -> Result<u16, u32> {
    for i in 0..NS_SLOT_PROBES {
        let candidate = ns_slot_probe(netns, i);
        for _ in 0..2 {
            if let Some(owner) = NS_SLOTS.get_ptr(candidate) {
                // SAFETY: our own map value.
                if unsafe { *owner } == netns {
                    return Ok(candidate as u16);
                }
                break; // another namespace's: probe on
            }
            // Free: take it, unless another CPU took it meanwhile (then
            // look again: it may have taken it for this namespace).
            if NS_SLOTS
                .insert(candidate, netns, BPF_NOEXIST as u64)
                .is_ok()
            {
                return Ok(candidate as u16);
            }
        }
    }
    Err(STAT_COUNTS_FULL)
}

/// A field of a kernel struct: `base` is a BTF-typed kernel pointer and
/// `offset` a .rodata global the loader filled in.
///
/// # Safety
/// `offset` must be that of a field of type `T` in `base`'s struct.
#[inline(always)]
unsafe fn load<T: Copy>(base: *const c_void, offset: &'static u64) -> T {
    // SAFETY: the caller's; read_volatile keeps the compiler from folding
    // the placeholder 0 of the global.
    unsafe {
        let at = (base as *const u8).add(read_volatile(offset) as usize);
        read_volatile(at as *const T)
    }
}

/// An in6_addr field, as four 32-bit loads (its members are u8/u16/u32
/// arrays: wider loads cross them).
///
/// # Safety
/// As for [`load`], for a `struct in6_addr` field.
#[inline(always)]
unsafe fn load_in6(sk: *const c_void, offset: &'static u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    // SAFETY: the caller's.
    unsafe {
        let at = (sk as *const u8).add(read_volatile(offset) as usize) as *const u32;
        for i in 0..4 {
            out[i * 4..i * 4 + 4].copy_from_slice(&read_volatile(at.add(i)).to_ne_bytes());
        }
    }
    out
}

/// Add -1 at `from` and +1 at `to` in this CPU's counters of `ns_slot`
/// in `bank` (one lookup for both).
#[inline(always)]
fn count(bank: u32, ns_slot: u16, from: Option<usize>, to: Option<usize>) -> Result<(), u32> {
    let counters = COUNTS
        .get_ptr_mut(bank * NS_SLOTS_MAX + u32::from(ns_slot))
        .ok_or(STAT_COUNTS_FULL)?;
    // SAFETY: this CPU's copy of our map value; indices masked. Plain adds:
    // only this program writes this bank, and it never runs nested in itself.
    unsafe {
        let cells = &raw mut (*counters).count;
        if let Some(from) = from {
            (*cells)[from & (2 * STATE_SLOTS - 1)] -= 1;
        }
        if let Some(to) = to {
            (*cells)[to & (2 * STATE_SLOTS - 1)] += 1;
        }
    }
    Ok(())
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(n) = STATS.get_ptr_mut(index) {
        // SAFETY: this CPU's copy of our own map value; atomic because both
        // programs write here and one can run nested in the other (rare
        // events only: one bank is enough).
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
