//! Types that cross the kernel boundary: written by the eBPF programs, read
//! by the agent (which writes only switches and the seeded-namespace set).
//! Every struct is `#[repr(C)]` with explicit padding so both sides agree
//! byte for byte.
#![no_std]

#[cfg(feature = "serde")]
extern crate std;

pub mod model;
pub use model::{Counts, Family, State};

/// A socket's entry as the agent reads it (from a [`SockSlot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockEntry {
    /// `bpf_ktime_get_boot_ns()` when the socket entered `state` (for a
    /// seeded socket: when the agent first saw it).
    pub since_ns: u64,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    /// Kernel TCP state (1..=11).
    pub state: u8,
    /// [`FAMILY_INET`] or [`FAMILY_INET6`].
    pub family: u8,
    /// [`ENTRY_LIVE`] or [`ENTRY_SEEDED`].
    pub flags: u8,
    pub _pad: u8,
}

/// One slot of the kernel's per-socket table (`SOCKS`, an array; and
/// `SOCKS_SPILL`, a hash keyed by cookie for what the array has no room
/// for). A socket's slots are the two of its bucket, [`sock_bucket`]: one
/// cache line, found with no hashing, and cookies are handed out in
/// sequence, so live sockets rarely share a bucket. The agent sees
/// [`SockEntry`]; netconn-user/src/kernel/probe.rs converts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockSlot {
    /// The socket's cookie; 0: the slot is free (cookies start at 1).
    pub cookie: u64,
    pub since_ns: u64,
    pub netns: u32,
    /// Index into `COUNTS` of `netns`'s counters.
    pub ns_slot: u16,
    pub state: u8,
    /// [`FAMILY_INET`] or [`FAMILY_INET6`] in bit 0, ENTRY_* above it.
    pub family_flags: u8,
    /// In a bucket's first slot only, and not part of its entry: how many
    /// sockets of this bucket are in `SOCKS_SPILL` (0: no need to look).
    pub spilled: u32,
    pub _pad: u32,
}

impl SockSlot {
    #[inline(always)]
    pub const fn family(&self) -> u8 {
        self.family_flags & 1
    }

    #[inline(always)]
    pub const fn flags(&self) -> u8 {
        self.family_flags >> 1
    }

    #[inline(always)]
    pub const fn family_flags(family: u8, flags: u8) -> u8 {
        (family & 1) | (flags << 1)
    }
}

/// Index of the first of the two `SOCKS` slots of the socket with this
/// cookie; `slots` is the array's size, a power of two.
#[inline(always)]
pub const fn sock_bucket(cookie: u64, slots: u32) -> u32 {
    (cookie as u32) & (slots - 1) & !1
}

/// `SOCKS` slots for a table that must hold `max_sockets`: a power of two
/// at least as large (at least 2). `SOCKS_SPILL` holds
/// [`spill_capacity`] more for buckets that fill up.
pub const fn sock_slots(max_sockets: u32) -> u32 {
    let n = if max_sockets < 2 { 2 } else { max_sockets };
    n.next_power_of_two()
}

/// Entries of `SOCKS_SPILL` for a table of `max_sockets`: an eighth
/// (preallocated memory is paid for at every start: faulting in 40 MiB took
/// 0.17 s on a busy host).
pub const fn spill_capacity(max_sockets: u32) -> u32 {
    let n = max_sockets / 8;
    if n < 32 { 32 } else { n }
}

/// Version of everything `netconn agent --pin` leaves in bpffs: the maps'
/// names, key and value layouts, sizes and meaning, and the programs'
/// counting rules. Bump it with any such change: an agent adopts only pins
/// of its own version (bpffs does not check a reopened map's layout) and
/// replaces any other. Pins live under `<pin root>/layout-<version>/`.
pub const LAYOUT_VERSION: u32 = 3;

/// `COUNTS` and `TRANSITIONS` hold two banks: one written only by the
/// primary program, one only by the backup. The two can nest on one CPU but
/// never write the same bank, so their per-CPU adds need no atomics (a lock
/// prefix per add). Readers sum both; a bank's cells start at
/// `bank * (cells per bank)`.
pub const BANKS: u32 = 2;

/// Namespaces with counters (`COUNTS` slots per bank, `NS_SLOTS` entries).
pub const NS_SLOTS_MAX: u32 = 4096;
/// A namespace's slot is the first of `ns_slot_probe(netns, 0..NS_SLOT_PROBES)`
/// that `NS_SLOTS` (slot -> namespace inode) gives to it; a slot is taken by
/// inserting there with BPF_NOEXIST, which the kernel does atomically.
pub const NS_SLOT_PROBES: u32 = 32;

/// The `i`th slot to try for namespace `netns` (open addressing).
#[inline(always)]
pub const fn ns_slot_probe(netns: u32, i: u32) -> u32 {
    ((netns.wrapping_mul(0x9E37_79B1) >> 20).wrapping_add(i)) & (NS_SLOTS_MAX - 1)
}

/// Cells of the `TRANSITIONS` per-CPU array: one per (family, old, new),
/// at [`transition_cell`].
pub const TRANSITION_CELLS: u32 = 2 * STATE_SLOTS as u32 * STATE_SLOTS as u32;

/// Cell of `TRANSITIONS` counting `family`'s `old` -> `new` transitions.
#[inline(always)]
pub const fn transition_cell(family: u8, old: u8, new: u8) -> u32 {
    ((family as u32 & 1) << 8) | ((old as u32 & 15) << 4) | (new as u32 & 15)
}

/// The entry tracks a live socket and is counted in `COUNTS`.
pub const ENTRY_LIVE: u8 = 0;
/// A live entry made by the seeding iterator: `since_ns` is when the agent
/// seeded the socket, not when it entered its state.
pub const ENTRY_SEEDED: u8 = 2;

/// Family index used in [`NsCounts`].
pub const FAMILY_INET: u8 = 0;
pub const FAMILY_INET6: u8 = 1;

/// Slots per family in [`NsCounts`]: TCP states are 1..=12, so 16 fits them
/// with a power-of-two stride the verifier can bound with a mask.
pub const STATE_SLOTS: usize = 16;

/// Per-CPU TCP counters of one network namespace (value of `COUNTS`, at the
/// namespace's slot in `NS_SLOTS`). Each CPU holds deltas; the true count is
/// the sum over CPUs and banks, and any one CPU's value may be negative.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NsCounts {
    pub count: [i64; 2 * STATE_SLOTS],
}

/// Slot of `family` (FAMILY_*) and `state` in [`NsCounts::count`].
#[inline(always)]
pub const fn slot(family: u8, state: u8) -> usize {
    ((family as usize & 1) * STATE_SLOTS) | (state as usize & (STATE_SLOTS - 1))
}

/// Indices of the `CONTROL` array map.
/// Non-zero while at least one watcher wants the transition stream.
pub const CONTROL_STREAM: u32 = 0;
pub const CONTROL_SLOTS: u32 = 1;

/// Indices of the `STATS` per-CPU array map. The first three make counts
/// inexact. A per-socket insert failed (map full): that socket is not counted.
pub const STAT_SOCKS_FULL: u32 = 0;
/// A namespace's counters could not be created (COUNTS full).
pub const STAT_COUNTS_FULL: u32 = 1;
/// Reading the socket's family or namespace failed.
pub const STAT_READ_FAILED: u32 = 2;
/// Events the backup program handled because the primary was busy on that
/// CPU (the kernel skipped the primary's nested run). Equal to the primary's
/// `recursion_misses` when nothing was lost.
pub const STAT_BACKUP_HANDLED: u32 = 3;
/// Transitions not streamed because the ring buffer was full.
pub const STAT_EVENTS_DROPPED: u32 = 4;
pub const STAT_SLOTS: u32 = 5;

/// What the seeding iterator (`netconn_seed`) writes for each full TCP
/// socket it visits: one byte.
pub const SEED_INSERTED: u8 = b'+';
/// The socket had an entry already: an event came first.
pub const SEED_KNOWN: u8 = b'=';
/// The socket could not be entered (map full, or its namespace's counters).
pub const SEED_FAILED: u8 = b'!';

/// One TCP state transition, as streamed through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StateEvent {
    /// `bpf_ktime_get_boot_ns()` at the transition.
    pub ts_ns: u64,
    pub cookie: u64,
    /// Time spent in the old state; 0 when unknown ([`EVENT_FIRST_SEEN`]).
    pub in_state_ns: u64,
    pub netns: u32,
    /// Owning process (tgid), valid with [`EVENT_OWNER`].
    pub pid: u32,
    /// Local and remote address: IPv4 in the first 4 bytes, or IPv6.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Local and remote port, host byte order.
    pub sport: u16,
    pub dport: u16,
    /// [`FAMILY_INET`] or [`FAMILY_INET6`].
    pub family: u8,
    pub old: u8,
    pub new: u8,
    /// EVENT_* bits.
    pub flags: u8,
    /// Owning process's command, valid with [`EVENT_OWNER`].
    pub comm: [u8; 16],
}

/// The change ran in the owning process (under its socket lock): `pid` and
/// `comm` name it.
pub const EVENT_OWNER: u8 = 1;
/// The socket had no entry: new, or older than the agent and never seeded.
pub const EVENT_FIRST_SEEN: u8 = 2;
/// The old state was seeded: `in_state_ns` counts from the seeding.
pub const EVENT_SINCE_SEEDING: u8 = 4;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, no padding, any bit pattern is valid.
    unsafe impl aya::Pod for super::SockEntry {}
    unsafe impl aya::Pod for super::SockSlot {}
    unsafe impl aya::Pod for super::NsCounts {}
    unsafe impl aya::Pod for super::StateEvent {}
}

const _: () = assert!(core::mem::size_of::<SockEntry>() == 16);
const _: () = assert!(core::mem::size_of::<SockSlot>() == 32);
const _: () = assert!(transition_cell(1, 15, 15) < TRANSITION_CELLS);
const _: () = assert!(NS_SLOTS_MAX == 1 << 12); // ns_slot_probe keeps 12 bits
const _: () = assert!(core::mem::size_of::<NsCounts>() == 256);
const _: () = assert!(core::mem::size_of::<StateEvent>() == 88);
