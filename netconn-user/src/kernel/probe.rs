//! The kernel side as the agent sees it: load the eBPF program with this
//! kernel's struct offsets, attach it, and give typed access to its maps.
//! Dropping a [`Probe`] detaches the program and frees its maps.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use aya::{
    Btf as AyaBtf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Iter},
};
use netconn_common::{
    BANKS, CONTROL_STREAM, NS_SLOT_PROBES, NS_SLOTS_MAX, NsCounts, SEED_FAILED, SEED_INSERTED,
    SEED_KNOWN, STAT_SLOTS, STATE_SLOTS, SockEntry, SockSlot, TRANSITION_CELLS, ns_slot_probe,
    sock_slots, spill_capacity,
};

use crate::kernel::{
    btf::{Btf, BtfError},
    pin::{self, PinError},
    socks::{SockTable, SocksError},
};

/// The compiled eBPF object, built by build.rs with aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netconn"));

/// Programs in the object, in attach order: the primary must be attached
/// first so that it runs first for each event (see netconn-ebpf).
const PROGRAM_NAMES: [&str; 2] = ["netconn_state", "netconn_backup"];
const TRACEPOINT: &str = "inet_sock_set_state";
/// The seeding iterator (see netconn-ebpf) and the kernel iterator it runs on.
const SEED_PROGRAM: &str = "netconn_seed";
const SEED_ITERATOR: &str = "tcp";
/// Maps the agent reads or writes, pinned and adopted by these names.
const SHARED_MAPS: [&str; 9] = [
    "SOCKS",
    "SOCKS_SPILL",
    "COUNTS",
    "NS_SLOTS",
    "TRANSITIONS",
    "CONTROL",
    "STATS",
    "EVENTS",
    "SEEDED",
];
/// The change hooks' map (see [`ChangeHooks`]).
const CHANGES_MAP: &str = "NS_CHANGES";
/// The change hooks and their attach types (see netconn-ebpf's changes.rs).
const CHANGE_HOOKS: [(&str, u32); 3] = [
    ("netconn_sockops", pin::BPF_CGROUP_SOCK_OPS),
    ("netconn_connect4", pin::BPF_CGROUP_INET4_CONNECT),
    ("netconn_connect6", pin::BPF_CGROUP_INET6_CONNECT),
];

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Btf(#[from] BtfError),
    #[error(
        "kernel has no tracepoint sock:{TRACEPOINT} in its BTF (needs Linux 4.16+ with CONFIG_DEBUG_INFO_BTF)"
    )]
    NoTracepoint,
    #[error("permission denied loading eBPF: run as root (or with CAP_BPF and CAP_PERFMON)")]
    Permission,
    #[error("the eBPF object is empty: it was built with AYA_BUILD_SKIP=1; rebuild without it")]
    EmptyObject,
    #[error("loading the eBPF program failed: {0}")]
    Load(String),
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, String),
    #[error(transparent)]
    Socks(#[from] SocksError),
    #[error("pinning: {0}")]
    Pin(#[from] PinError),
    #[error("cannot adopt {0}: {1}")]
    Adopt(PathBuf, String),
}

/// What one run of the seeding iterator did, in full TCP sockets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seeded {
    /// Sockets it visited.
    pub visited: u64,
    /// Of those, entered and counted.
    pub inserted: u64,
    /// Already had an entry (an event came first).
    pub known: u64,
    /// Could not be entered (map full): not counted.
    pub failed: u64,
}

pub struct Probe {
    // Field order matters for Drop: links first (closing an unpinned link
    // detaches its program), then maps, then the object.
    /// Attachments: closing one detaches its program, unless it is pinned.
    links: Vec<(&'static str, OwnedFd)>,
    /// The shared maps (from the object, or from pins).
    maps: Parts,
    /// The seeding iterator's link: iterators are made from it.
    seed_link: OwnedFd,
    /// The change hooks (see [`ChangeHooks`]); None when they could not be
    /// attached. Shared with the generations that replace this one.
    hooks: Option<Arc<ChangeHooks>>,
    /// Descriptors of what [`Probe::pin`] pins, by pin name: the shared
    /// maps and the tracepoint programs.
    pinnable: Vec<(String, OwnedFd)>,
    prog_fd: i32,
    backup_fd: i32,
    unbacked_misses: u64,
    max_sockets: u32,
    _ebpf: Option<Ebpf>,
}

impl Probe {
    /// Load and attach. The program starts counting at once; the caller
    /// seeds pre-existing sockets afterwards ([`Probe::seed_here`]).
    ///
    /// `hooks`: the change hooks of the generation this one replaces, kept
    /// as they are; None attaches this object's own, before the tracepoint
    /// programs: attaching a cgroup program makes tracing programs already
    /// attached miss events now and then (measured: README, "Other BPF
    /// programs").
    pub fn attach(
        max_sockets: u32,
        ring_bytes: u32,
        hooks: Option<Arc<ChangeHooks>>,
    ) -> Result<Probe, ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::EmptyObject);
        }
        let started = std::time::Instant::now();
        let phase = |what: &str| {
            log::debug!(
                "attach: {what} at {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            )
        };
        // aya parses the kernel's BTF for itself; ours (for the offsets) is
        // parsed beside it: each is a few tens of ms of a start-up.
        let aya_btf = std::thread::spawn(AyaBtf::from_sys_fs);
        let btf = Btf::from_sys_fs()?;
        if !btf.has_typedef(&format!("btf_trace_{TRACEPOINT}")) {
            return Err(ProbeError::NoTracepoint);
        }
        // (global in the eBPF object, struct, member path)
        let offsets: [(&str, &str, &[&str]); 12] = [
            ("SK_FAMILY_OFFSET", "sock_common", &["skc_family"]),
            ("SK_PROTOCOL_OFFSET", "sock", &["sk_protocol"]),
            ("SK_STATE_OFFSET", "sock_common", &["skc_state"]),
            ("SK_NET_OFFSET", "sock_common", &["skc_net", "net"]),
            ("NET_INUM_OFFSET", "net", &["ns", "inum"]),
            ("SK_DADDR_OFFSET", "sock_common", &["skc_daddr"]),
            ("SK_RCV_SADDR_OFFSET", "sock_common", &["skc_rcv_saddr"]),
            ("SK_DPORT_OFFSET", "sock_common", &["skc_dport"]),
            ("INET_SPORT_OFFSET", "inet_sock", &["inet_sport"]),
            ("SK_V6_DADDR_OFFSET", "sock_common", &["skc_v6_daddr"]),
            (
                "SK_V6_RCV_SADDR_OFFSET",
                "sock_common",
                &["skc_v6_rcv_saddr"],
            ),
            ("SK_LOCK_OWNED_OFFSET", "sock", &["sk_lock", "owned"]),
        ];
        let mut values = [0u64; 12];
        for ((_, strukt, path), value) in offsets.iter().zip(values.iter_mut()) {
            *value = u64::from(btf.offset_of(strukt, path)?);
        }

        let slots = sock_slots(max_sockets);
        let aya_btf = aya_btf
            .join()
            .map_err(|_| ProbeError::Load("parsing BTF panicked".into()))?
            .map_err(|e| ProbeError::Load(e.to_string()))?;
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&aya_btf))
            .map_max_entries("SOCKS", slots)
            .map_max_entries("SOCKS_SPILL", spill_capacity(max_sockets))
            .map_max_entries("EVENTS", ring_bytes);
        for ((global, _, _), value) in offsets.iter().zip(values.iter()) {
            loader.override_global(global, value, true);
        }
        loader.override_global("SOCK_SLOTS", &slots, true);
        phase("BTF parsed");
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| classify(&e))?;
        phase("maps created");

        // Every shared map, with a descriptor kept for pinning.
        let mut maps = Vec::new();
        let mut pinnable = Vec::new();
        for name in SHARED_MAPS {
            let Some(map) = ebpf.take_map(name) else {
                return Err(ProbeError::Map(name, "missing from the object".into()));
            };
            pinnable.push((
                name.to_string(),
                map_fd(&map).map_err(|e| ProbeError::Map(name, e.to_string()))?,
            ));
            maps.push((name, map));
        }
        let parts = Parts::from_maps(maps)?;

        // Verify both programs before attaching either, so the primary runs
        // without its backup for microseconds, not for a verifier run. The
        // three are verified on threads of their own: verifying is most of
        // loading (47 + 38 + 8 ms here, one after another).
        let mut tracepoints: Vec<(&str, &mut BtfTracePoint)> = Vec::new();
        let mut iterator: Option<&mut Iter> = None;
        let wrong_type = |e: aya::programs::ProgramError| ProbeError::Load(e.to_string());
        for (name, program) in ebpf.programs_mut() {
            if name == SEED_PROGRAM {
                iterator = Some(program.try_into().map_err(wrong_type)?);
            } else if let Some(known) = PROGRAM_NAMES.iter().find(|n| **n == name) {
                tracepoints.push((known, program.try_into().map_err(wrong_type)?));
            }
        }
        tracepoints.sort_by_key(|(name, _)| PROGRAM_NAMES.iter().position(|n| n == name));
        let iterator =
            iterator.ok_or_else(|| ProbeError::Load(format!("program {SEED_PROGRAM} missing")))?;
        if tracepoints.len() != PROGRAM_NAMES.len() {
            return Err(ProbeError::Load("a tracepoint program is missing".into()));
        }
        let btf = &aya_btf;
        let verified: Vec<Result<(), ProbeError>> = std::thread::scope(|scope| {
            let mut workers = Vec::new();
            for (_, program) in tracepoints.iter_mut() {
                workers.push(
                    scope.spawn(move || program.load(TRACEPOINT, btf).map_err(|e| classify(&e))),
                );
            }
            let iterator = &mut *iterator;
            workers.push(
                scope.spawn(move || iterator.load(SEED_ITERATOR, btf).map_err(|e| classify(&e))),
            );
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(ProbeError::Load("verifier thread panicked".into()))
                    })
                })
                .collect()
        });
        verified
            .into_iter()
            .collect::<Result<Vec<()>, ProbeError>>()?;
        let mut fds = [-1; 2];
        for ((name, program), fd) in tracepoints.iter().zip(fds.iter_mut()) {
            let owned = program
                .fd()
                .map_err(|e| ProbeError::Load(e.to_string()))?
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| ProbeError::Load(e.to_string()))?;
            *fd = owned.as_raw_fd();
            pinnable.push((format!("prog_{name}"), owned));
        }
        let seed_link = {
            let fd = iterator.fd().map_err(|e| ProbeError::Load(e.to_string()))?;
            pin::iter_link_create(fd.as_fd()).map_err(|e| classify(&e))?
        };
        phase("seeding iterator verified");
        let own_changes = ebpf
            .take_map(CHANGES_MAP)
            .ok_or_else(|| ProbeError::Map(CHANGES_MAP, "missing from the object".into()))?;
        let hooks = match hooks {
            Some(shared) => Some(shared),
            None => match attach_change_hooks(&mut ebpf, own_changes) {
                Ok(hooks) => Some(Arc::new(hooks)),
                Err(e) => {
                    log::warn!(
                        "{e}: namespaces with listeners or UDP sockets are re-read every refresh"
                    );
                    None
                }
            },
        };
        phase("change hooks attached");
        let mut links = Vec::new();
        for (name, fd) in PROGRAM_NAMES.iter().zip(fds) {
            // SAFETY: fd is held open by `pinnable` for the whole call.
            let prog = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let link = pin::raw_tracepoint_open(prog).map_err(|e| classify(&e))?;
            links.push((*name, link));
        }
        phase("tracepoint programs attached");
        let [prog_fd, backup_fd] = fds;
        // Nested runs the primary missed before the backup was attached were
        // handled by nobody.
        let unbacked_misses = prog_info(prog_fd)
            .map(|info| info.recursion_misses)
            .unwrap_or(0);

        Ok(Probe {
            links,
            maps: parts,
            seed_link,
            hooks,
            pinnable,
            prog_fd,
            backup_fd,
            unbacked_misses,
            max_sockets,
            _ebpf: Some(ebpf),
        })
    }

    /// Take over a generation an earlier agent pinned in `dir` (see
    /// [`Probe::pin`]): its programs never stopped counting. The stream
    /// switch is turned off until someone watches, and what the ring holds
    /// from before is dropped.
    pub fn adopt(dir: &Path) -> Result<Probe, ProbeError> {
        let adopt_err = |what: String| ProbeError::Adopt(dir.to_path_buf(), what);
        let mut maps = Vec::new();
        let mut pinnable = Vec::new();
        for name in SHARED_MAPS {
            let path = dir.join(name);
            let data = MapData::from_pin(&path)
                .map_err(|e| adopt_err(format!("map {name}: {}", render_chain(&e))))?;
            let map =
                Map::from_map_data(data).map_err(|e| adopt_err(format!("map {name}: {e}")))?;
            pinnable.push((
                name.to_string(),
                map_fd(&map).map_err(|e| adopt_err(format!("map {name}: {e}")))?,
            ));
            maps.push((name, map));
        }
        let parts = Parts::from_maps(maps)?;
        let max_sockets = parts.socks.slots();
        let mut fds = [-1; 2];
        for (name, fd) in PROGRAM_NAMES.iter().zip(fds.iter_mut()) {
            let owned = pin::obj_get(&dir.join(format!("prog_{name}")))?;
            *fd = owned.as_raw_fd();
            pinnable.push((format!("prog_{name}"), owned));
        }
        let seed_link = pin::obj_get(&dir.join(format!("link_{SEED_PROGRAM}")))?;
        // Links stay attached through their pins; the agent holds none.
        for name in PROGRAM_NAMES {
            let path = dir.join(format!("link_{name}"));
            if !path.exists() {
                return Err(adopt_err(format!("{} is missing", path.display())));
            }
        }
        // Pinned without its change hooks: refresh without them.
        let hooks = ChangeHooks::adopt(dir).map(Arc::new);
        let [prog_fd, backup_fd] = fds;
        // Transitions from before this agent: nobody asked for them.
        if let Some(events) = lock(&parts.events).as_mut() {
            while events.next().is_some() {}
        }
        let probe = Probe {
            links: Vec::new(),
            maps: parts,
            seed_link,
            hooks,
            pinnable,
            prog_fd,
            backup_fd,
            unbacked_misses: 0,
            max_sockets,
            _ebpf: None,
        };
        probe.set_streaming(false)?;
        Ok(probe)
    }

    /// Pin this generation's maps, programs and links at `dir` so that it
    /// keeps counting after the agent exits (written as `<dir>-new`, then
    /// renamed: an adopter never finds half of it). `dir` must not exist.
    pub fn pin(&self, dir: &Path) -> Result<(), ProbeError> {
        let staging = pin::staging_dir(dir);
        pin::remove(&staging)?;
        std::fs::create_dir(&staging).map_err(|e| PinError::Io(staging.clone(), e))?;
        for (name, fd) in &self.pinnable {
            pin::obj_pin(fd.as_fd(), &staging.join(name))?;
        }
        for (name, fd) in &self.links {
            pin::obj_pin(fd.as_fd(), &staging.join(format!("link_{name}")))?;
        }
        pin::obj_pin(
            self.seed_link.as_fd(),
            &staging.join(format!("link_{SEED_PROGRAM}")),
        )?;
        if let Some(hooks) = &self.hooks {
            hooks.pin(&staging)?;
        }
        std::fs::rename(&staging, dir).map_err(|e| PinError::Io(dir.to_path_buf(), e))?;
        Ok(())
    }

    /// Namespaces seeded into this generation (by this agent or the one
    /// that pinned it), as the kernel keeps them.
    pub fn seeded(&self) -> Vec<u32> {
        lock(&self.maps.seeded)
            .keys()
            .filter_map(Result::ok)
            .collect()
    }

    /// Note in the kernel that a namespace is seeded (for the next agent).
    pub fn mark_seeded(&self, inode: u32, at_ns: u64) -> Result<(), ProbeError> {
        lock(&self.maps.seeded)
            .insert(inode, at_ns, 0)
            .map_err(|e| ProbeError::Map("SEEDED", e.to_string()))
    }

    /// Seed the network namespace of the calling thread: run the seeding
    /// iterator over its TCP sockets. Sockets that have an entry are left
    /// alone, so running it again is harmless.
    pub fn seed_here(&self) -> Result<Seeded, ProbeError> {
        use std::io::Read as _;
        let err = |e: io::Error| ProbeError::Map("SOCKS", format!("seeding iterator: {e}"));
        let mut iter = std::fs::File::from(pin::iter_create(self.seed_link.as_fd()).map_err(err)?);
        let mut seeded = Seeded::default();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match iter.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                // The kernel restarts a batch it could not finish.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(err(e)),
            };
            for byte in &buf[..n] {
                seeded.visited += 1;
                match *byte {
                    SEED_INSERTED => seeded.inserted += 1,
                    SEED_KNOWN => seeded.known += 1,
                    SEED_FAILED => seeded.failed += 1,
                    _ => {}
                }
            }
        }
        Ok(seeded)
    }

    pub fn max_sockets(&self) -> u32 {
        self.max_sockets
    }

    /// Turn the transition stream on or off (on while someone watches).
    pub fn set_streaming(&self, on: bool) -> Result<(), ProbeError> {
        self.set_control(CONTROL_STREAM, on)
    }

    fn set_control(&self, index: u32, on: bool) -> Result<(), ProbeError> {
        self.maps
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(index, u32::from(on), 0)
            .map_err(|e| ProbeError::Map("CONTROL", e.to_string()))
    }

    /// The ring buffer of transitions, for the one reader.
    pub fn take_events(&self) -> Option<RingBuf<MapData>> {
        self.maps
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The kernel's entry for a live socket.
    pub fn socket(&self, cookie: u64) -> Option<SockEntry> {
        self.maps.socks.get(cookie).map(|e| entry_of(&e))
    }

    /// Every live entry of namespace `netns`: (cookie, entry). A walk of
    /// the whole table; for audits after a disagreement, never on a query
    /// path.
    pub fn entries_of(&self, netns: u32) -> Vec<(u64, SockEntry)> {
        self.maps
            .socks
            .live()
            .into_iter()
            .filter(|e| e.netns == netns)
            .map(|e| (e.cookie, entry_of(&e)))
            .collect()
    }

    /// Every live entry: (cookie, entry). A walk of the whole table; for a
    /// re-seed, never on a query path.
    pub fn entries(&self) -> Vec<(u64, SockEntry)> {
        self.maps
            .socks
            .live()
            .into_iter()
            .map(|e| (e.cookie, entry_of(&e)))
            .collect()
    }

    /// Summed per-CPU TCP counter deltas of one namespace (slot layout of
    /// `NsCounts`); zeros if the namespace has no counters yet.
    pub fn tcp_deltas(&self, netns: u32) -> Result<[i64; 2 * STATE_SLOTS], ProbeError> {
        let mut sum = [0i64; 2 * STATE_SLOTS];
        let Some(slot) = self.ns_slot(netns)? else {
            return Ok(sum);
        };
        for bank in 0..BANKS {
            let per_cpu = self
                .maps
                .counts
                .get(&(bank * NS_SLOTS_MAX + slot), 0)
                .map_err(|e| ProbeError::Map("COUNTS", e.to_string()))?;
            for cpu in per_cpu.iter() {
                for (s, c) in sum.iter_mut().zip(cpu.count.iter()) {
                    *s += c;
                }
            }
        }
        Ok(sum)
    }

    /// The kernel's counter slot of namespace `netns`, if it has one: the
    /// same probe sequence the eBPF program uses (usually one lookup).
    fn ns_slot(&self, netns: u32) -> Result<Option<u32>, ProbeError> {
        for i in 0..NS_SLOT_PROBES {
            let candidate = ns_slot_probe(netns, i);
            match self.maps.ns_slots.get(&candidate, 0) {
                Ok(owner) if owner == netns => return Ok(Some(candidate)),
                Ok(_) => continue,
                Err(MapError::KeyNotFound) => return Ok(None),
                Err(e) => return Err(ProbeError::Map("NS_SLOTS", e.to_string())),
            }
        }
        Ok(None)
    }

    /// How many changes the kernel noted for the namespace with this cookie
    /// that move no counter (request socket created, UDP connect); None when
    /// the hooks are not attached (then any moment may hold such a change).
    pub fn ns_changes(&self, cookie: u64) -> Option<u64> {
        let map = &self.hooks.as_ref()?.changes;
        match map.get(&cookie, 0) {
            Ok(n) => Some(n),
            Err(MapError::KeyNotFound) => Some(0),
            Err(_) => None,
        }
    }

    /// The change hooks, for the generation that replaces this one.
    pub fn hooks(&self) -> Option<Arc<ChangeHooks>> {
        self.hooks.clone()
    }

    /// Namespaces (inodes) the kernel side has counters for: every namespace
    /// a TCP event came from since the program was loaded.
    pub fn namespaces(&self) -> Vec<u32> {
        // NS_SLOTS maps a counter slot to the namespace that took it.
        self.maps
            .ns_slots
            .iter()
            .filter_map(Result::ok)
            .map(|(_, netns)| netns)
            .collect()
    }

    /// Sockets the kernel side counts in all namespaces (live entries).
    pub fn tracked_total(&self) -> i64 {
        self.maps
            .ns_slots
            .keys()
            .filter_map(Result::ok)
            .flat_map(|slot| (0..BANKS).map(move |bank| bank * NS_SLOTS_MAX + slot))
            .filter_map(|index| self.maps.counts.get(&index, 0).ok())
            .map(|per_cpu| {
                per_cpu
                    .iter()
                    .map(|c| c.count.iter().sum::<i64>())
                    .sum::<i64>()
            })
            .sum()
    }

    /// For `netconn_transitions_total{family,from,to}`.
    /// Counted TCP transitions since load, summed over CPUs, as (family
    /// (FAMILY_*), old state, new state, count); non-zero cells only.
    pub fn transitions(&self) -> Vec<(u8 /*family*/, u8 /*old*/, u8 /*new*/, u64)> {
        (0..TRANSITION_CELLS)
            .filter_map(|cell| {
                let n: u64 = (0..BANKS)
                    .filter_map(|bank| {
                        self.maps
                            .transitions
                            .get(&(bank * TRANSITION_CELLS + cell), 0)
                            .ok()
                    })
                    .map(|per_cpu| per_cpu.iter().sum::<u64>())
                    .sum();
                (n > 0).then_some((
                    (cell >> 8) as u8,
                    (cell >> 4 & 15) as u8,
                    (cell & 15) as u8,
                    n,
                ))
            })
            .collect()
    }

    /// Error counters (ERROR_* indices), summed over CPUs.
    pub fn stats(&self) -> [u64; STAT_SLOTS as usize] {
        let mut out = [0u64; STAT_SLOTS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(per_cpu) = self.maps.errors.get(&(i as u32), 0) {
                *slot = per_cpu.iter().sum();
            }
        }
        out
    }

    /// Runs of the primary program the kernel skipped because it was already
    /// running on that CPU. Read from bpf_prog_info.
    /// Nested events the primary missed while it was attached alone
    /// (between the two attaches): lost.
    pub fn unbacked_misses(&self) -> u64 {
        self.unbacked_misses
    }

    pub fn backup_misses(&self) -> u64 {
        prog_info(self.backup_fd)
            .map(|info| info.recursion_misses)
            .unwrap_or(0)
    }

    pub fn primary_misses(&self) -> u64 {
        prog_info(self.prog_fd)
            .map(|info| info.recursion_misses)
            .unwrap_or(0)
    }
}

/// The kernel hooks that note changes moving no counter (see netconn-ebpf's
/// changes.rs), and their map. Attached once per agent (and kept when
/// pinned), not per generation: a re-seed must not attach cgroup programs
/// under the tracing programs that are counting.
pub struct ChangeHooks {
    /// Closing one detaches its program, unless it is pinned.
    links: Vec<(&'static str, OwnedFd)>,
    /// Changes per namespace cookie.
    changes: HashMap<MapData, u64, u64>,
    changes_fd: OwnedFd,
}

impl ChangeHooks {
    /// The hooks pinned in `dir`, if they were.
    fn adopt(dir: &Path) -> Option<ChangeHooks> {
        let data = MapData::from_pin(dir.join(CHANGES_MAP)).ok()?;
        let map = Map::from_map_data(data).ok()?;
        let changes_fd = map_fd(&map).ok()?;
        let changes = HashMap::try_from(map).ok()?;
        // Attached through their pins; nothing to hold.
        Some(ChangeHooks {
            links: Vec::new(),
            changes,
            changes_fd,
        })
    }

    fn pin(&self, dir: &Path) -> Result<(), ProbeError> {
        pin::obj_pin(self.changes_fd.as_fd(), &dir.join(CHANGES_MAP))?;
        for (name, fd) in &self.links {
            pin::obj_pin(fd.as_fd(), &dir.join(format!("link_{name}")))?;
        }
        Ok(())
    }
}

/// Attach the change hooks to the cgroup v2 root, where they see every
/// socket on the host, each through a BPF link (coexists with other
/// programs there; pinnable, unlike aya 0.14's cgroup links).
fn attach_change_hooks(ebpf: &mut Ebpf, changes: Map) -> Result<ChangeHooks, ProbeError> {
    use aya::programs::{CgroupSockAddr, SockOps};
    let root = cgroup2_root().ok_or_else(|| {
        ProbeError::Load("no cgroup v2 hierarchy mounted (see /proc/mounts)".into())
    })?;
    let dir = std::fs::File::open(&root)
        .map_err(|e| ProbeError::Load(format!("cannot open {}: {e}", root.display())))?;
    let load_err = |e: aya::programs::ProgramError| ProbeError::Load(render_chain(&e));
    let missing = |name: &str| ProbeError::Load(format!("program {name} missing"));
    let mut links = Vec::new();
    for (name, attach_type) in CHANGE_HOOKS {
        let program = ebpf.program_mut(name).ok_or_else(|| missing(name))?;
        let fd = if attach_type == pin::BPF_CGROUP_SOCK_OPS {
            let p: &mut SockOps = program.try_into().map_err(load_err)?;
            p.load().map_err(load_err)?;
            p.fd().map_err(load_err)?.as_fd().as_raw_fd()
        } else {
            let p: &mut CgroupSockAddr = program.try_into().map_err(load_err)?;
            p.load().map_err(load_err)?;
            p.fd().map_err(load_err)?.as_fd().as_raw_fd()
        };
        // SAFETY: the program's descriptor, open while `ebpf` lives.
        let prog = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let link = pin::link_create(prog, dir.as_fd(), attach_type)
            .map_err(|e| ProbeError::Load(format!("attaching {name}: {e}")))?;
        links.push((name, link));
    }
    let map_err = |e: MapError| ProbeError::Map(CHANGES_MAP, e.to_string());
    let changes_fd = map_fd(&changes).map_err(|e| ProbeError::Map(CHANGES_MAP, e.to_string()))?;
    Ok(ChangeHooks {
        links,
        changes: HashMap::try_from(changes).map_err(map_err)?,
        changes_fd,
    })
}

fn entry_of(e: &SockSlot) -> SockEntry {
    SockEntry {
        since_ns: e.since_ns,
        netns: e.netns,
        state: e.state,
        family: e.family(),
        flags: e.flags(),
        _pad: 0,
    }
}

/// The typed shared maps, from the object or from pins.
struct Parts {
    socks: SockTable,
    counts: PerCpuArray<MapData, NsCounts>,
    ns_slots: HashMap<MapData, u32, u32>,
    transitions: PerCpuArray<MapData, u64>,
    control: Mutex<Array<MapData, u32>>,
    errors: PerCpuArray<MapData, u64>,
    /// Taken by the stream reader (see [`Probe::take_events`]).
    events: Mutex<Option<RingBuf<MapData>>>,
    seeded: Mutex<HashMap<MapData, u32, u64>>,
}

impl Parts {
    fn from_maps(maps: Vec<(&'static str, Map)>) -> Result<Parts, ProbeError> {
        let mut by_name: std::collections::HashMap<&'static str, Map> = maps.into_iter().collect();
        let mut take = |name: &'static str| {
            by_name
                .remove(name)
                .ok_or_else(|| ProbeError::Map(name, "missing".into()))
        };
        let err = |name: &'static str| move |e: MapError| ProbeError::Map(name, e.to_string());
        Ok(Parts {
            socks: SockTable::new(take("SOCKS")?, take("SOCKS_SPILL")?)?,
            counts: PerCpuArray::try_from(take("COUNTS")?).map_err(err("COUNTS"))?,
            ns_slots: HashMap::try_from(take("NS_SLOTS")?).map_err(err("NS_SLOTS"))?,
            transitions: PerCpuArray::try_from(take("TRANSITIONS")?).map_err(err("TRANSITIONS"))?,
            control: Mutex::new(Array::try_from(take("CONTROL")?).map_err(err("CONTROL"))?),
            errors: PerCpuArray::try_from(take("STATS")?).map_err(err("STATS"))?,
            events: Mutex::new(Some(
                RingBuf::try_from(take("EVENTS")?).map_err(err("EVENTS"))?,
            )),
            seeded: Mutex::new(HashMap::try_from(take("SEEDED")?).map_err(err("SEEDED"))?),
        })
    }
}

/// A descriptor of a map's own (for pinning it later).
fn map_fd(map: &Map) -> io::Result<OwnedFd> {
    let data = match map {
        Map::HashMap(d) | Map::Array(d) | Map::PerCpuArray(d) | Map::RingBuf(d) => d,
        _ => return Err(io::Error::other("unexpected map type")),
    };
    data.fd().as_fd().try_clone_to_owned()
}

/// An error and its sources on one line (aya's Display stops at the call).
fn render_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Where cgroup v2 is mounted: /sys/fs/cgroup on unified hosts,
/// /sys/fs/cgroup/unified on hybrid ones.
fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut f = line.split(' ');
        let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "cgroup2").then(|| std::path::PathBuf::from(dir))
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn prog_info(fd: i32) -> io::Result<aya_obj::generated::bpf_prog_info> {
    // SAFETY: bpf_prog_info is plain data; the kernel fills at most info_len bytes.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut attr = InfoByFd {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &mut info as *mut _ as u64,
    };
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: attr points to valid memory of the declared size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoByFd,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(code) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        if let Some(sys) = err.downcast_ref::<aya::sys::SyscallError>() {
            return sys.io_error.raw_os_error();
        }
        cur = err.source();
    }
    None
}

/// Turn an aya error into the one line a user needs.
fn classify(e: &(dyn std::error::Error + 'static)) -> ProbeError {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match os_error(e) {
        // For root, EACCES is the verifier rejecting a program: show its log.
        Some(libc::EPERM) => ProbeError::Permission,
        Some(libc::EACCES) if !root => ProbeError::Permission,
        _ => {
            let mut msg = e.to_string();
            let mut cur = e.source();
            while let Some(inner) = cur {
                msg.push_str(": ");
                msg.push_str(&inner.to_string());
                cur = inner.source();
            }
            ProbeError::Load(msg)
        }
    }
}
