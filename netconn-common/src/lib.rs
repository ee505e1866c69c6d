//! Types that cross the kernel boundary: written by the eBPF program, read
//! (and for seeding, written) by the agent. Every struct is `#[repr(C)]` with
//! explicit padding so both sides agree byte for byte.
#![no_std]

#[cfg(feature = "serde")]
extern crate std;

pub mod model;
pub use model::{Counts, Family, State};

/// Per-socket entry of the `SOCKS` map, keyed by socket cookie.
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
    /// [`ENTRY_LIVE`], [`ENTRY_SEEDED`] or [`ENTRY_TOMBSTONE`].
    pub flags: u8,
    pub _pad: u8,
}

/// Value of the kernel's `SOCKS` map: [`SockEntry`] plus where the socket's
/// namespace counters are, so that an event needs no namespace lookup. The
/// agent sees [`SockEntry`]; netconn-user/src/probe.rs converts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSock {
    pub since_ns: u64,
    pub netns: u32,
    /// Index into `COUNTS` of `netns`'s counters, or [`NS_SLOT_UNKNOWN`]
    /// (seeded by the agent: the kernel finds it at the socket's next event).
    pub ns_slot: u16,
    pub state: u8,
    /// [`FAMILY_INET`] or [`FAMILY_INET6`] in bit 0, ENTRY_* above it.
    pub family_flags: u8,
}

impl KernelSock {
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

/// Version of everything `netconn agent --pin` leaves in bpffs: the maps'
/// names, key and value layouts, sizes and meaning, and the programs'
/// counting rules. Bump it with any such change: an agent adopts only pins
/// of its own version (bpffs does not check a reopened map's layout) and
/// replaces any other. Pins live under `<pin root>/layout-<version>/`.
pub const LAYOUT_VERSION: u32 = 1;

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

/// [`KernelSock::ns_slot`] not known yet.
pub const NS_SLOT_UNKNOWN: u16 = u16::MAX;

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
/// A live entry inserted by the agent's seed: `since_ns` is when the agent
/// saw the socket, not when it entered its state.
pub const ENTRY_SEEDED: u8 = 2;
/// The socket closed while the agent was seeding: the entry only reserves the
/// cookie so that a stale dump row cannot bring the socket back. Not counted.
pub const ENTRY_TOMBSTONE: u8 = 1;

/// Family index used in [`NsCounts`].
pub const FAMILY_INET: u8 = 0;
pub const FAMILY_INET6: u8 = 1;

/// Slots per family in [`NsCounts`]: TCP states are 1..=12, so 16 fits them
/// with a power-of-two stride the verifier can bound with a mask.
pub const STATE_SLOTS: usize = 16;

/// Per-CPU TCP counters of one network namespace (value of `COUNTS`, at the
/// namespace's slot in `NS_SLOTS`). Each CPU holds deltas; the true count is the sum over CPUs
/// plus what the agent seeded, and any one CPU's value may be negative.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NsCounts {
    pub count: [i64; 2 * STATE_SLOTS],
}

impl NsCounts {
    pub const ZERO: NsCounts = NsCounts {
        count: [0; 2 * STATE_SLOTS],
    };
}

/// Slot of `family` (FAMILY_*) and `state` in [`NsCounts::count`].
#[inline(always)]
pub const fn slot(family: u8, state: u8) -> usize {
    ((family as usize & 1) * STATE_SLOTS) | (state as usize & (STATE_SLOTS - 1))
}

/// Indices of the `CONTROL` array map.
pub const CONTROL_SEEDING: u32 = 0;
/// Non-zero while at least one watcher wants the transition stream.
pub const CONTROL_STREAM: u32 = 1;
pub const CONTROL_SLOTS: u32 = 2;

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
/// Tombstones not noted in `TOMBSTONES` because it was full: the agent then
/// looks for them through the whole `SOCKS` map.
pub const STAT_TOMBSTONES_LOST: u32 = 5;
pub const STAT_SLOTS: u32 = 6;

/// Capacity of the `TOMBSTONES` queue: cookies of the tombstones made while
/// seeding, so that the agent removes them without walking `SOCKS` (a
/// syscall or two per entry: 0.4 s at 250k sockets). Past it the agent
/// walks the map.
pub const TOMBSTONE_QUEUE: u32 = 1 << 16;

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
    unsafe impl aya::Pod for super::KernelSock {}
    unsafe impl aya::Pod for super::NsCounts {}
    unsafe impl aya::Pod for super::StateEvent {}
}

const _: () = assert!(core::mem::size_of::<SockEntry>() == 16);
const _: () = assert!(core::mem::size_of::<KernelSock>() == 16);
const _: () = assert!(transition_cell(1, 15, 15) < TRANSITION_CELLS);
const _: () = assert!(NS_SLOTS_MAX == 1 << 12); // ns_slot_probe keeps 12 bits
const _: () = assert!(core::mem::size_of::<NsCounts>() == 256);
const _: () = assert!(core::mem::size_of::<StateEvent>() == 88);
