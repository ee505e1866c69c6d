//! The kernel's per-socket table as the agent reads it: `SOCKS`, an array of
//! [`SockSlot`]s in buckets of two (read through a shared read-only mapping,
//! no syscall per slot), and `SOCKS_SPILL`, a hash by cookie for sockets
//! whose bucket was full. Only the eBPF programs write either.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::Mutex,
};

use aya::maps::{HashMap, Map, MapData, MapError};
use netconn_common::{SockSlot, sock_bucket};

#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error("eBPF map SOCKS: {0}")]
    Map(#[from] MapError),
    #[error("eBPF map SOCKS: not an array")]
    NotArray,
    #[error("mapping eBPF map SOCKS: {0}")]
    Mmap(io::Error),
}

pub struct SockTable {
    /// The mapping of `SOCKS`; the kernel writes it while we read.
    base: NonNull<SockSlot>,
    slots: u32,
    len: usize,
    spill: Mutex<HashMap<MapData, u64, SockSlot>>,
    /// Held so that its descriptor stays valid (the programs are loaded
    /// against it after this is made).
    _socks: Map,
}

// SAFETY: the mapping is shared memory that is only read, slot by slot with
// volatile reads; it lives until Drop.
unsafe impl Send for SockTable {}
// SAFETY: as above.
unsafe impl Sync for SockTable {}

impl SockTable {
    /// Map `socks` (created with BPF_F_MMAPABLE) and take `spill`.
    pub fn new(socks: Map, spill: Map) -> Result<SockTable, SocksError> {
        let Map::Array(data) = &socks else {
            return Err(SocksError::NotArray);
        };
        let slots = data.info()?.max_entries();
        let len = (slots as usize * std::mem::size_of::<SockSlot>()).next_multiple_of(page_size());
        // SAFETY: a fresh shared read-only mapping of the map's whole value
        // area (the kernel allows exactly this for mmapable arrays).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(SocksError::Mmap(io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast()).ok_or(SocksError::NotArray)?;
        Ok(SockTable {
            base,
            slots,
            len,
            spill: Mutex::new(HashMap::try_from(spill)?),
            _socks: socks,
        })
    }

    /// Slots in `SOCKS` (a power of two).
    pub fn slots(&self) -> u32 {
        self.slots
    }

    fn slot(&self, index: u32) -> SockSlot {
        debug_assert!(index < self.slots);
        // SAFETY: index < slots, inside the mapping; a volatile copy, since
        // the kernel may be writing it (a torn read is one stale entry in an
        // audit or an age, never a count).
        unsafe { std::ptr::read_volatile(self.base.as_ptr().add(index as usize)) }
    }

    /// The entry of the live socket with this cookie.
    pub fn get(&self, cookie: u64) -> Option<SockSlot> {
        let first = sock_bucket(cookie, self.slots);
        for index in [first, first | 1] {
            let slot = self.slot(index);
            if slot.cookie == cookie {
                return Some(slot);
            }
        }
        if self.slot(first).spilled == 0 {
            return None;
        }
        lock(&self.spill).get(&cookie, 0).ok()
    }

    /// Every live entry (a walk of the whole table: for audits, never on a
    /// query path).
    pub fn live(&self) -> Vec<SockSlot> {
        let mut out: Vec<SockSlot> = (0..self.slots)
            .map(|i| self.slot(i))
            .filter(|s| s.cookie != 0)
            .collect();
        out.extend(
            lock(&self.spill)
                .iter()
                .filter_map(Result::ok)
                .map(|(_, e)| e),
        );
        out
    }
}

impl Drop for SockTable {
    fn drop(&mut self) {
        // SAFETY: our mapping, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

fn page_size() -> usize {
    // SAFETY: no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096).max(1)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
