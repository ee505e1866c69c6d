//! Pinning a generation in bpffs so that it outlives the agent: where the
//! pins live, and the few raw bpf(2) calls aya 0.14 does not offer for
//! them (links of cgroup programs cannot be pinned through aya, and its
//! objects hide their descriptors).
//!
//! Layout: `<root>/layout-<LAYOUT_VERSION>/` holds one file per map (named
//! as in the eBPF object), `prog_<name>` per tracepoint program (the agent
//! reads their run statistics) and `link_<name>` per attachment. A
//! directory is written as `<dir>-new` (bpffs refuses names with a dot)
//! and renamed when complete, so an agent never adopts a half-pinned one.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

/// Where `netconn agent --pin` keeps its generation by default.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/netconn";

/// bpf(2) commands (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;

/// Attach types for BPF_LINK_CREATE (enum bpf_attach_type).
pub const BPF_CGROUP_SOCK_OPS: u32 = 3;
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_CGROUP_INET6_CONNECT: u32 = 11;
pub const BPF_TRACE_ITER: u32 = 28;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] io::Error),
    #[error("{0} is not on a bpffs mount (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(PathBuf),
}

/// The directory of this build's layout under `root`.
pub fn layout_dir(root: &Path, version: u32) -> PathBuf {
    root.join(format!("layout-{version}"))
}

/// Where [`layout_dir`] is written before it is renamed into place.
pub fn staging_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push("-new");
    dir.with_file_name(name)
}

/// The layout version a directory under the root holds, if it is one.
pub fn version_of(dir: &Path) -> Option<u32> {
    dir.file_name()?
        .to_str()?
        .strip_prefix("layout-")?
        .parse()
        .ok()
}

/// Everything under `root` except `keep`: other layout versions, and
/// `-new` directories a crash left half-written.
pub fn others(root: &Path, keep: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p != keep)
        .collect();
    out.sort();
    out
}

/// Remove a pinned directory. Its links detach (and its programs and maps
/// are freed) once no process holds them open.
pub fn remove(dir: &Path) -> Result<(), PinError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PinError::Io(dir.to_path_buf(), e)),
    }
}

/// Make `root` (on bpffs) if missing.
pub fn ensure_root(root: &Path) -> Result<(), PinError> {
    std::fs::create_dir_all(root).map_err(|e| PinError::Io(root.to_path_buf(), e))?;
    if !on_bpffs(root) {
        return Err(PinError::NotBpffs(root.to_path_buf()));
    }
    Ok(())
}

fn on_bpffs(path: &Path) -> bool {
    /// BPF_FS_MAGIC (include/uapi/linux/magic.h).
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; c is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// The bpf_attr of BPF_OBJ_PIN and BPF_OBJ_GET.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

impl ObjAttr {
    fn new(path: &std::ffi::CStr, bpf_fd: u32) -> ObjAttr {
        ObjAttr {
            pathname: path.as_ptr() as u64,
            bpf_fd,
            file_flags: 0,
            path_fd: 0,
            _pad: 0,
        }
    }
}

/// Pin the bpf object behind `fd` at `path`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<(), PinError> {
    let c = cstring(path)?;
    sys_bpf_raw(BPF_OBJ_PIN, &ObjAttr::new(&c, fd.as_raw_fd() as u32))
        .map(drop)
        .map_err(|e| PinError::Io(path.to_path_buf(), e))
}

/// Open the bpf object pinned at `path`.
pub fn obj_get(path: &Path) -> Result<OwnedFd, PinError> {
    let c = cstring(path)?;
    sys_bpf(BPF_OBJ_GET, &ObjAttr::new(&c, 0)).map_err(|e| PinError::Io(path.to_path_buf(), e))
}

/// Attach a loaded `tp_btf` program to its tracepoint; the returned link
/// detaches it when closed (unless pinned).
pub fn raw_tracepoint_open(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        /// NULL: the tracepoint the program was loaded for (attach_btf_id).
        name: u64,
        prog_fd: u32,
        _pad: u32,
        cookie: u64,
    }
    let attr = Attr {
        name: 0,
        prog_fd: prog.as_raw_fd() as u32,
        _pad: 0,
        cookie: 0,
    };
    sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &attr)
}

/// Attach a loaded cgroup program to the cgroup open at `target` through a
/// BPF link (coexists with other programs there).
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<OwnedFd> {
    raw_link_create(prog, target.as_raw_fd() as u32, attach_type)
}

/// Attach a loaded iterator program (BPF_TRACE_ITER): the link is what
/// [`iter_create`] makes iterators from.
pub fn iter_link_create(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    raw_link_create(prog, 0, BPF_TRACE_ITER)
}

/// BPF_LINK_CREATE with no options.
fn raw_link_create(prog: BorrowedFd<'_>, target_fd: u32, attach_type: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        _rest: [u64; 6],
    }
    let attr = Attr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd,
        attach_type,
        flags: 0,
        _rest: [0; 6],
    };
    sys_bpf(BPF_LINK_CREATE, &attr)
}

/// A new iterator of an iterator link: reading it to EOF runs the program
/// once per object. A socket iterator walks the network namespace of the
/// calling thread at this call.
pub fn iter_create(link: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
        flags: u32,
    }
    let attr = Attr {
        link_fd: link.as_raw_fd() as u32,
        flags: 0,
    };
    sys_bpf(BPF_ITER_CREATE, &attr)
}

fn cstring(path: &Path) -> Result<CString, PinError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        PinError::Io(
            path.to_path_buf(),
            io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"),
        )
    })
}

/// bpf(2); Ok(its non-negative return value).
fn sys_bpf_raw<A>(cmd: libc::c_long, attr: &A) -> io::Result<i64> {
    // SAFETY: attr is a valid bpf_attr prefix of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const A,
            std::mem::size_of::<A>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// bpf(2) for the commands that return a new descriptor.
fn sys_bpf<A>(cmd: libc::c_long, attr: &A) -> io::Result<OwnedFd> {
    let fd = sys_bpf_raw(cmd, attr)?;
    // SAFETY: the kernel returned a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_directories_name_their_version() {
        let root = Path::new("/sys/fs/bpf/netconn");
        assert_eq!(layout_dir(root, 7), root.join("layout-7"));
        assert_eq!(version_of(&root.join("layout-7")), Some(7));
        assert_eq!(
            staging_dir(&root.join("layout-7")),
            root.join("layout-7-new")
        );
        assert_eq!(version_of(&root.join("layout-7-new")), None);
        assert_eq!(version_of(&root.join("other")), None);
    }
}
