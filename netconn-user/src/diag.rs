//! Full sock_diag (inet_diag) dumps of the calling thread's network namespace.
//!
//! This is the exact-but-O(n) source of truth: one `SOCK_DIAG_BY_FAMILY` dump
//! per (protocol, address family), parsed in place without a per-row
//! allocation so that 200,000+ sockets stay cheap.
//!
//! The netlink socket is created by the calling thread, so the dump covers
//! that thread's network namespace (a thread that did `setns`/`unshare` sees
//! its own namespace, not the process's).

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;

use netlink_packet_core::{
    NLA_TYPE_MASK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN,
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NlasIterator, Parseable,
};
use netlink_packet_sock_diag::{
    SOCK_DIAG_BY_FAMILY, SockDiagMessage,
    inet::{
        ExtensionFlags, InetRequest, InetResponseBuffer, InetResponseHeader, SocketId, StateFlags,
    },
};
use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

use crate::counts::{Counts, Family, State};

/// `AF_INET` as the `u8` that `inet_diag_req_v2.sdiag_family` carries.
pub const AF_INET: u8 = libc::AF_INET as u8;
/// `AF_INET6` as the `u8` that `inet_diag_req_v2.sdiag_family` carries.
pub const AF_INET6: u8 = libc::AF_INET6 as u8;

/// Every classic state bit, 0..=11: what `ss -a` (iproute2 6.1) asks for.
/// Setting the SYN_RECV bit makes the kernel add TCP_NEW_SYN_RECV (12), so
/// request sockets are included and reported as state 3.
#[allow(dead_code, reason = "API for callers; tests use it")]
pub const ALL_STATES: u32 = (1 << 12) - 1;
/// TCP_BOUND_INACTIVE (13): TCP sockets that are bound but neither listening
/// nor connected. Opt-in: they are dumped with state CLOSE (7) and `ss`
/// (iproute2 6.1) does not show them.
#[allow(dead_code, reason = "API for callers; tests use it")]
pub const BOUND_INACTIVE: u32 = 1 << 13;

/// `idiag_timer` value the kernel uses only for timewait socks.
const TIMER_TIME_WAIT: u8 = 3;
const TCP_SYN_RECV: u8 = 3;
const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;
/// `INET_DIAG_SHUTDOWN`: put unconditionally by `inet_diag_msg_attrs_fill`,
/// i.e. on every full socket and on nothing else.
const INET_DIAG_SHUTDOWN: u16 = 8;

/// Size of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
/// Size of `struct inet_diag_msg`, the fixed part before the attributes.
const INET_DIAG_MSG_LEN: usize = size_of::<InetResponseBuffer>();
/// Read buffer. The kernel caps dump skbs at 32 KiB (`netlink_recvmsg`
/// clamps `max_recvmsg_len`), so 64 KiB never truncates.
const RECV_BUF_LEN: usize = 64 * 1024;
/// SO_RCVBUF request: room for many dump skbs queued ahead of the reader.
const SOCKET_RCVBUF: libc::c_int = 1 << 20;

/// The transport protocol to dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn ipproto(self) -> u8 {
        match self {
            Proto::Tcp => libc::IPPROTO_TCP as u8,
            Proto::Udp => libc::IPPROTO_UDP as u8,
        }
    }
}

/// What kind of kernel object the row is. Full sockets are what the eBPF
/// tracepoint tracks; timewait socks and request socks never fire it, so they
/// must be told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A `struct sock` (listener, connecting, established, closing, UDP...).
    Full,
    /// A `struct inet_timewait_sock`; `state` is its substate (TIME_WAIT, or
    /// FIN_WAIT2 for an orphaned FIN_WAIT2 socket).
    TimeWait,
    /// A `struct request_sock` (half-open, TCP_NEW_SYN_RECV in the kernel,
    /// reported as SYN_RECV).
    Request,
}

/// One dumped socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// tcp4/tcp6/udp4/udp6, from the protocol and the row's address family.
    pub family: Family,
    /// Raw kernel `idiag_state` (timewait socks report their substate).
    pub state: u8,
    pub kind: Kind,
    /// The value `bpf_get_socket_cookie()` / `SO_COOKIE` return.
    pub cookie: u64,
    /// Socket inode, 0 for timewait/request socks and orphans.
    pub inode: u32,
    pub uid: u32,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Raw `idiag_timer` (1 retransmit, 2 keepalive, 3 timewait, 4 probe).
    pub timer: u8,
    /// Bit `1 << t` set for every attribute type `t < 32` present.
    pub attrs: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("address family {0} is neither AF_INET nor AF_INET6")]
    AddressFamily(u8),
    #[error("cannot open sock_diag netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("cannot send sock_diag request: {0}")]
    Send(#[source] io::Error),
    #[error("cannot receive sock_diag reply: {0}")]
    Recv(#[source] io::Error),
    #[error("sock_diag request failed: {}", io::Error::from_raw_os_error(*errno))]
    Netlink { errno: i32 },
    #[error("netlink reply of {len} bytes truncated to {buf} bytes")]
    Truncated { len: usize, buf: usize },
    #[error("netlink receive queue overrun")]
    Overrun,
    #[error("malformed sock_diag message: {reason}")]
    Malformed { reason: String },
}

fn malformed(reason: impl std::fmt::Display) -> DiagError {
    DiagError::Malformed {
        reason: reason.to_string(),
    }
}

/// Dump every socket of `proto` and `af` ([`AF_INET`] or [`AF_INET6`]) whose
/// state bit (`1 << state`) is in `states`, calling `f` for each row so that
/// callers can count without collecting.
pub fn dump(proto: Proto, af: u8, states: u32, mut f: impl FnMut(&Row)) -> Result<(), DiagError> {
    if af != AF_INET && af != AF_INET6 {
        return Err(DiagError::AddressFamily(af));
    }
    let socket = open()?;
    send_request(&socket, proto, af, states)?;

    let mut buf = vec![0u8; RECV_BUF_LEN];
    loop {
        let len = recv(&socket, &mut buf)?;
        let datagram = buf.get(..len).ok_or(DiagError::Truncated {
            len,
            buf: buf.len(),
        })?;
        if parse_datagram(datagram, proto, &mut f)? == Flow::Done {
            return Ok(());
        }
    }
}

/// Count rows per (family, state) over both address families of `proto`,
/// keeping only rows for which `filter` returns true.
pub fn count(
    proto: Proto,
    states: u32,
    filter: impl Fn(&Row) -> bool,
) -> Result<Counts, DiagError> {
    let mut counts = Counts::default();
    for af in [AF_INET, AF_INET6] {
        dump(proto, af, states, |row| {
            if filter(row) {
                counts.add(row.family, State::from_kernel(row.state), 1);
            }
        })?;
    }
    Ok(counts)
}

fn open() -> Result<Socket, DiagError> {
    let socket = Socket::new(NETLINK_SOCK_DIAG).map_err(DiagError::Socket)?;
    // Only a throughput hint (capped by rmem_max): a refusal is not an error.
    if let Err(e) = socket.set_rx_buf_sz(SOCKET_RCVBUF) {
        log::debug!("sock_diag: SO_RCVBUF {SOCKET_RCVBUF}: {e}");
    }
    socket
        .connect(&netlink_sys::SocketAddr::new(0, 0))
        .map_err(DiagError::Socket)?;
    Ok(socket)
}

fn send_request(socket: &Socket, proto: Proto, af: u8, states: u32) -> Result<(), DiagError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let request = InetRequest {
        family: af,
        protocol: proto.ipproto(),
        // No optional extensions: the rows stay small; the attributes the
        // classification needs are always sent.
        extensions: ExtensionFlags::empty(),
        // from_bits_retain: bits 12/13 are not named by the crate but are
        // meaningful to the kernel.
        states: StateFlags::from_bits_retain(states),
        socket_id: if af == AF_INET {
            SocketId::new_v4()
        } else {
            SocketId::new_v6()
        },
    };
    let mut message = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    message.finalize();
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    let sent = socket.send(&bytes, 0).map_err(DiagError::Send)?;
    if sent != bytes.len() {
        return Err(DiagError::Send(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} bytes", bytes.len()),
        )));
    }
    Ok(())
}

/// One datagram; with MSG_TRUNC the kernel returns the real length, so a
/// datagram larger than `buf` is reported instead of silently cut.
fn recv(socket: &Socket, buf: &mut [u8]) -> Result<usize, DiagError> {
    loop {
        match socket.recv(&mut &mut buf[..], libc::MSG_TRUNC) {
            Ok(len) => return Ok(len),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DiagError::Recv(e)),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    More,
    Done,
}

/// Walk the netlink messages of one datagram.
fn parse_datagram(
    mut data: &[u8],
    proto: Proto,
    f: &mut impl FnMut(&Row),
) -> Result<Flow, DiagError> {
    while !data.is_empty() {
        // new_checked guarantees NLMSG_HDRLEN <= length <= data.len().
        let message = NetlinkBuffer::new_checked(data).map_err(malformed)?;
        let len = message.length() as usize;
        let payload = &data[NLMSG_HDRLEN..len];
        match message.message_type() {
            SOCK_DIAG_BY_FAMILY => f(&parse_row(payload, proto)?),
            NLMSG_DONE => {
                // A dump's DONE carries the dump's final status.
                match read_i32(payload) {
                    Some(code) if code < 0 => return Err(DiagError::Netlink { errno: -code }),
                    _ => return Ok(Flow::Done),
                }
            }
            NLMSG_ERROR => match read_i32(payload) {
                // An ACK (code 0) also ends the exchange.
                Some(0) => return Ok(Flow::Done),
                Some(code) => {
                    return Err(DiagError::Netlink {
                        errno: code.saturating_neg(),
                    });
                }
                None => return Err(malformed("NLMSG_ERROR without an error code")),
            },
            NLMSG_OVERRUN => return Err(DiagError::Overrun),
            NLMSG_NOOP => {}
            other => log::debug!("sock_diag: skipping netlink message type {other}"),
        }
        // Messages are 4-byte aligned; the last one may lack its padding.
        let next = len.next_multiple_of(4);
        data = data.get(next..).unwrap_or_default();
    }
    Ok(Flow::More)
}

fn read_i32(payload: &[u8]) -> Option<i32> {
    let bytes: [u8; 4] = payload.get(..4)?.try_into().ok()?;
    Some(i32::from_ne_bytes(bytes))
}

fn parse_row(payload: &[u8], proto: Proto) -> Result<Row, DiagError> {
    let header = InetResponseHeader::parse(payload).map_err(malformed)?;
    // Parsing succeeded, so the fixed part is all there.
    let timer = payload[2]; // struct inet_diag_msg: family, state, timer, ...
    let attrs = attr_mask(&payload[INET_DIAG_MSG_LEN..])?;
    let family = match (proto, header.family) {
        (Proto::Tcp, AF_INET) => Family::Tcp4,
        (Proto::Tcp, AF_INET6) => Family::Tcp6,
        (Proto::Udp, AF_INET) => Family::Udp4,
        (Proto::Udp, AF_INET6) => Family::Udp6,
        (_, af) => return Err(malformed(format_args!("row with address family {af}"))),
    };
    let id = &header.socket_id;
    Ok(Row {
        family,
        state: header.state,
        kind: classify(header.state, timer, attrs),
        cookie: cookie(id.cookie),
        inode: header.inode,
        uid: header.uid,
        src: SocketAddr::new(id.source_address, id.source_port),
        dst: SocketAddr::new(id.destination_address, id.destination_port),
        timer,
        attrs,
    })
}

fn attr_mask(attrs: &[u8]) -> Result<u32, DiagError> {
    let mut mask = 0u32;
    for nla in NlasIterator::new(attrs) {
        let kind = nla.map_err(malformed)?.kind() & NLA_TYPE_MASK;
        if kind < 32 {
            mask |= 1 << kind;
        }
    }
    Ok(mask)
}

/// `idiag_cookie` is `__u32[2]` in host order; `sock_diag_save_cookie` puts
/// the low half of the 64-bit socket cookie in `[0]` and the high half in
/// `[1]`. The crate hands over the 8 raw bytes.
fn cookie(raw: [u8; 8]) -> u64 {
    let low = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let high = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    (u64::from(high) << 32) | u64::from(low)
}

/// Full sockets are filled by `inet_sk_diag_fill`, which always emits
/// INET_DIAG_SHUTDOWN; timewait socks (timer 3, state = substate) and request
/// socks (state SYN_RECV) get only the base message plus, for CAP_NET_ADMIN,
/// INET_DIAG_MARK.
fn classify(state: u8, timer: u8, attrs: u32) -> Kind {
    if attrs & (1 << INET_DIAG_SHUTDOWN) != 0 {
        Kind::Full
    } else if timer == TIMER_TIME_WAIT || state == TCP_TIME_WAIT {
        Kind::TimeWait
    } else if state == TCP_SYN_RECV || state == TCP_NEW_SYN_RECV {
        Kind::Request
    } else {
        Kind::Full
    }
}

/// Helpers for the real (kernel) tests of this module and of `sockstat`.
/// Every population lives in its own network namespace, so concurrent tests
/// and the host's own sockets cannot disturb the counts.
#[cfg(test)]
pub(crate) mod testutil {
    use std::io::{self, Write as _};
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use super::{Proto, Row, dump};
    use crate::counts::{Counts, Family, State};

    /// `SO_COOKIE` (asm-generic value; libc does not export it).
    const SO_COOKIE: libc::c_int = 57;

    fn join<T>(handle: std::thread::JoinHandle<T>) -> T {
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Run `f` on a thread inside a new, empty network namespace with `lo`
    /// up. `None` (test skipped) when namespaces cannot be created.
    pub fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        join(std::thread::spawn(move || {
            // SAFETY: plain syscall; affects only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "skipping: unshare(CLONE_NEWNET): {}",
                    io::Error::last_os_error()
                );
                return None;
            }
            lo_up();
            Some(f())
        }))
    }

    /// Run `f` on a thread that joined the namespace at `path`.
    pub fn in_named_netns<T: Send + 'static>(
        path: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let file = std::fs::File::open(path).unwrap();
        join(std::thread::spawn(move || {
            // SAFETY: plain syscall on a valid fd; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
            f()
        }))
    }

    fn lo_up() {
        // SAFETY: ioctl on a fresh socket with a zeroed, NUL-terminated ifreq.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let fd = OwnedFd::from_raw_fd(fd);
            let mut ifr: libc::ifreq = std::mem::zeroed();
            ifr.ifr_name[0] = b'l' as libc::c_char;
            ifr.ifr_name[1] = b'o' as libc::c_char;
            assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr), 0);
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr), 0);
        }
    }

    /// A named namespace (`ip netns add`), deleted on drop.
    pub struct NamedNetns {
        pub name: String,
    }

    impl NamedNetns {
        pub fn add(name: String) -> Option<NamedNetns> {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            ip(&["netns", "add", &name]).then_some(NamedNetns { name })
        }

        pub fn path(&self) -> String {
            format!("/run/netns/{}", self.name)
        }
    }

    impl Drop for NamedNetns {
        fn drop(&mut self) {
            ip(&["netns", "del", &self.name]);
        }
    }

    /// Run `ip ARGS`, true on success.
    pub fn ip(args: &[&str]) -> bool {
        match Command::new("ip").args(args).output() {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                eprintln!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                false
            }
            Err(e) => {
                eprintln!("ip {}: {e}", args.join(" "));
                false
            }
        }
    }

    pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        loop {
            if cond() {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn rows(proto: Proto, af: u8, states: u32) -> Vec<Row> {
        let mut out = Vec::new();
        dump(proto, af, states, |r| out.push(*r)).unwrap();
        out
    }

    pub fn tcp_pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn raw_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: sockaddr_storage is plain data and large enough for both.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = &mut storage as *mut _ as *mut libc::sockaddr_in;
                // SAFETY: see above.
                unsafe {
                    (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                    (*sin).sin_port = a.port().to_be();
                    (*sin).sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                }
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = &mut storage as *mut _ as *mut libc::sockaddr_in6;
                // SAFETY: see above.
                unsafe {
                    (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                    (*sin6).sin6_port = a.port().to_be();
                    (*sin6).sin6_addr.s6_addr = a.ip().octets();
                }
                size_of::<libc::sockaddr_in6>()
            }
        };
        (storage, len as libc::socklen_t)
    }

    fn tcp_socket(addr: SocketAddr) -> OwnedFd {
        let domain = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain syscall; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                domain,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: fd is a fresh, valid descriptor.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    /// Non-blocking connect: the socket stays in SYN_SENT while the SYN goes
    /// unanswered.
    pub fn nb_connect(addr: SocketAddr) -> OwnedFd {
        let fd = tcp_socket(addr);
        let (sa, len) = raw_sockaddr(addr);
        // SAFETY: sa/len describe a valid sockaddr for fd's family.
        let rc = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                len,
            )
        };
        let err = io::Error::last_os_error();
        assert!(
            rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
            "connect: {err}"
        );
        fd
    }

    /// A TCP socket bound to `addr` but neither listening nor connected.
    pub fn tcp_bound(addr: SocketAddr) -> OwnedFd {
        let fd = tcp_socket(addr);
        let (sa, len) = raw_sockaddr(addr);
        // SAFETY: sa/len describe a valid sockaddr for fd's family.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                len,
            )
        };
        assert_eq!(rc, 0, "bind: {}", io::Error::last_os_error());
        fd
    }

    /// Change the backlog of a listening socket (listen() again does that).
    pub fn set_backlog(listener: &TcpListener, backlog: i32) {
        // SAFETY: plain syscall on a valid listening fd.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), backlog) }, 0);
    }

    pub fn so_cookie(fd: &impl AsRawFd) -> u64 {
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: cookie/len are a valid u64 out-buffer.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_COOKIE,
                &mut cookie as *mut u64 as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(rc, 0, "SO_COOKIE: {}", io::Error::last_os_error());
        cookie
    }

    pub fn inode(fd: &impl AsRawFd) -> u32 {
        // SAFETY: fstat into a zeroed stat on a valid fd.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        st.st_ino as u32
    }

    /// `ss` state name to state (iproute2's `sstate_name`).
    fn ss_state(name: &str) -> State {
        match name {
            "ESTAB" => State::Established,
            "SYN-SENT" => State::SynSent,
            "SYN-RECV" => State::SynRecv,
            "FIN-WAIT-1" => State::FinWait1,
            "FIN-WAIT-2" => State::FinWait2,
            "TIME-WAIT" => State::TimeWait,
            "UNCONN" => State::Close,
            "CLOSE-WAIT" => State::CloseWait,
            "LAST-ACK" => State::LastAck,
            "LISTEN" => State::Listen,
            "CLOSING" => State::Closing,
            other => panic!("unknown ss state {other:?}"),
        }
    }

    /// Counts as `ss` sees them (run from this thread, so in its netns).
    pub fn ss_counts() -> Counts {
        let mut counts = Counts::default();
        for (flags, family) in [
            ("-tanH4", Family::Tcp4),
            ("-tanH6", Family::Tcp6),
            ("-uanH4", Family::Udp4),
            ("-uanH6", Family::Udp6),
        ] {
            let out = Command::new("ss").arg(flags).output().unwrap();
            assert!(
                out.status.success(),
                "ss {flags}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(state) = line.split_whitespace().next() {
                    counts.add(family, ss_state(state), 1);
                }
            }
        }
        counts
    }

    /// The population the ss comparison and the sockstat test share.
    pub struct Population {
        _keep: Vec<Box<dyn std::any::Any>>,
    }

    /// Build, in the current netns, a known mix; return it and the expected
    /// counts (full sockets + timewait + request, as `ss` shows them).
    pub fn build_population() -> (Population, Counts) {
        use crate::counts::State::*;
        let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
        let mut want = Counts::default();
        for (family, any, lo) in [
            (Family::Tcp4, "0.0.0.0:0", "127.0.0.1:0"),
            (Family::Tcp6, "[::]:0", "[::1]:0"),
        ] {
            let v4 = family == Family::Tcp4;
            let l = TcpListener::bind(lo).unwrap();
            want.add(family, Listen, 1);
            let pairs = if v4 { 3 } else { 2 };
            for _ in 0..pairs {
                keep.push(Box::new(tcp_pair(&l)));
                want.add(family, Established, 2);
            }
            // TIME_WAIT on the client side.
            for _ in 0..(if v4 { 2 } else { 1 }) {
                let (c, s) = tcp_pair(&l);
                drop(c);
                std::thread::sleep(Duration::from_millis(10));
                drop(s);
                want.add(family, TimeWait, 1);
            }
            // Half-closed: full FIN_WAIT2 + CLOSE_WAIT.
            let (c, s) = tcp_pair(&l);
            c.shutdown(std::net::Shutdown::Write).unwrap();
            keep.push(Box::new((c, s)));
            want.add(family, FinWait2, 1);
            want.add(family, CloseWait, 1);
            // Orphaned FIN_WAIT2 (timewait sock) + CLOSE_WAIT.
            let (c, s) = tcp_pair(&l);
            drop(c);
            keep.push(Box::new(s));
            want.add(family, FinWait2, 1);
            want.add(family, CloseWait, 1);
            // Orphaned FIN_WAIT1 (a full socket without an inode): the client
            // fills the pipe, then closes; its FIN waits behind the data.
            if v4 {
                let (c, s) = tcp_pair(&l);
                c.set_nonblocking(true).unwrap();
                let chunk = [0u8; 65536];
                while (&c).write(&chunk).is_ok() {}
                drop(c);
                keep.push(Box::new(s));
                want.add(family, FinWait1, 1);
                want.add(family, Established, 1);
            }
            // SYN_SENT: backlog 0 and one queued child make the listener drop
            // further SYNs.
            let l0 = TcpListener::bind(lo).unwrap();
            set_backlog(&l0, 0);
            want.add(family, Listen, 1);
            keep.push(Box::new(tcp_pair_unaccepted(&l0)));
            want.add(family, Established, 2);
            for _ in 0..2 {
                keep.push(Box::new(nb_connect(l0.local_addr().unwrap())));
                want.add(family, SynSent, 1);
            }
            keep.push(Box::new(l0));
            keep.push(Box::new(l));
            // Bound but inactive: only with BOUND_INACTIVE.
            keep.push(Box::new(tcp_bound(lo.parse().unwrap())));
            // A wildcard listener too.
            keep.push(Box::new(TcpListener::bind(any).unwrap()));
            want.add(family, Listen, 1);
        }
        for (family, lo, unconn, conn) in [
            (Family::Udp4, "127.0.0.1:0", 2, 1),
            (Family::Udp6, "[::1]:0", 1, 2),
        ] {
            let target = UdpSocket::bind(lo).unwrap();
            want.add(family, Close, 1);
            for _ in 1..unconn {
                keep.push(Box::new(UdpSocket::bind(lo).unwrap()));
                want.add(family, Close, 1);
            }
            for _ in 0..conn {
                let u = UdpSocket::bind(lo).unwrap();
                u.connect(target.local_addr().unwrap()).unwrap();
                keep.push(Box::new(u));
                want.add(family, Established, 1);
            }
            keep.push(Box::new(target));
        }
        (Population { _keep: keep }, want)
    }

    /// connect() without accept(): the child waits in the accept queue.
    pub fn tcp_pair_unaccepted(l: &TcpListener) -> std::net::TcpStream {
        std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, SocketAddr, TcpListener};
    use std::time::{Duration, Instant};

    use super::testutil::*;
    use super::*;

    // ---- pure parsing -----------------------------------------------------

    fn nlmsg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        out.extend_from_slice(&1u32.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(len.next_multiple_of(4), 0);
        out
    }

    /// A `struct inet_diag_msg` for 127.0.0.1:sport -> 127.0.0.2:dport.
    fn diag_msg(af: u8, state: u8, timer: u8, cookie: u64, attrs: &[u16]) -> Vec<u8> {
        let mut m = vec![af, state, timer, 0];
        m.extend_from_slice(&1234u16.to_be_bytes());
        m.extend_from_slice(&80u16.to_be_bytes());
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..4].copy_from_slice(&[127, 0, 0, 1]);
        dst[..4].copy_from_slice(&[127, 0, 0, 2]);
        m.extend_from_slice(&src);
        m.extend_from_slice(&dst);
        m.extend_from_slice(&0u32.to_ne_bytes()); // if
        m.extend_from_slice(&(cookie as u32).to_ne_bytes());
        m.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        for v in [0u32, 0, 0, 1000, 4242] {
            // expires, rqueue, wqueue, uid, inode
            m.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(m.len(), INET_DIAG_MSG_LEN);
        for &kind in attrs {
            m.extend_from_slice(&5u16.to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(&[0, 0, 0, 0]); // u8 value + padding
        }
        m
    }

    fn parse_all(data: &[u8]) -> (Result<Flow, DiagError>, Vec<Row>) {
        let mut rows = Vec::new();
        let flow = parse_datagram(data, Proto::Tcp, &mut |r: &Row| rows.push(*r));
        (flow, rows)
    }

    #[test]
    fn parses_multipart_rows_then_done() {
        let mut data = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            &diag_msg(AF_INET, 1, 0, 0x1122_3344_5566_7788, &[8, 10]),
        );
        data.extend(nlmsg(NLMSG_NOOP, &[]));
        data.extend(nlmsg(0x77, &[1, 2, 3])); // unknown type: skipped
        data.extend(nlmsg(SOCK_DIAG_BY_FAMILY, &diag_msg(AF_INET, 6, 3, 7, &[])));
        let (flow, rows) = parse_all(&data);
        assert_eq!(flow.unwrap(), Flow::More);
        assert_eq!(rows.len(), 2);
        let r = rows[0];
        assert_eq!(r.family, Family::Tcp4);
        assert_eq!(r.kind, Kind::Full);
        assert_eq!(r.cookie, 0x1122_3344_5566_7788);
        assert_eq!(r.src, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(r.dst, "127.0.0.2:80".parse().unwrap());
        assert_eq!((r.uid, r.inode), (1000, 4242));
        assert_eq!(r.attrs, (1 << 8) | (1 << 10));
        assert_eq!(
            (rows[1].kind, rows[1].state, rows[1].timer),
            (Kind::TimeWait, 6, 3)
        );

        let done = nlmsg(NLMSG_DONE, &0i32.to_ne_bytes());
        assert_eq!(parse_all(&done).0.unwrap(), Flow::Done);
    }

    #[test]
    fn netlink_errors_are_reported() {
        let err = nlmsg(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        assert!(matches!(
            parse_all(&err).0,
            Err(DiagError::Netlink { errno: libc::EPERM })
        ));
        let done = nlmsg(NLMSG_DONE, &(-libc::EINTR).to_ne_bytes());
        assert!(matches!(
            parse_all(&done).0,
            Err(DiagError::Netlink { errno: libc::EINTR })
        ));
        let ack = nlmsg(NLMSG_ERROR, &0i32.to_ne_bytes());
        assert_eq!(parse_all(&ack).0.unwrap(), Flow::Done);
        assert!(matches!(
            parse_all(&nlmsg(NLMSG_ERROR, &[])).0,
            Err(DiagError::Malformed { .. })
        ));
        assert!(matches!(
            parse_all(&nlmsg(NLMSG_OVERRUN, &[])).0,
            Err(DiagError::Overrun)
        ));
        let e = DiagError::Netlink { errno: libc::EPERM }.to_string();
        assert!(e.contains("not permitted"), "{e}");
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error_not_a_panic() {
        let full = nlmsg(SOCK_DIAG_BY_FAMILY, &diag_msg(AF_INET, 1, 0, 1, &[8]));
        for cut in 1..full.len() {
            let (flow, _) = parse_all(&full[..cut]);
            assert!(
                matches!(flow, Err(DiagError::Malformed { .. })),
                "cut at {cut}"
            );
        }
        // Short fixed part, bad family, bad attribute length.
        assert!(
            parse_all(&nlmsg(SOCK_DIAG_BY_FAMILY, &[2, 1, 0]))
                .0
                .is_err()
        );
        assert!(
            parse_all(&nlmsg(SOCK_DIAG_BY_FAMILY, &diag_msg(1, 1, 0, 1, &[])))
                .0
                .is_err()
        );
        let mut bad_attr = diag_msg(AF_INET, 1, 0, 1, &[]);
        bad_attr.extend_from_slice(&[2, 0, 8, 0]);
        assert!(parse_all(&nlmsg(SOCK_DIAG_BY_FAMILY, &bad_attr)).0.is_err());
        // Header claiming more than the datagram holds.
        let mut lying = full.clone();
        lying[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse_all(&lying).0.is_err());
    }

    #[test]
    fn classification_rule() {
        const SHUT: u32 = 1 << INET_DIAG_SHUTDOWN;
        const MARK: u32 = 1 << 15;
        assert_eq!(classify(1, 0, SHUT), Kind::Full);
        assert_eq!(classify(3, 1, SHUT), Kind::Full); // full SYN_RECV (fastopen)
        assert_eq!(classify(5, 0, SHUT), Kind::Full);
        assert_eq!(classify(6, 3, 0), Kind::TimeWait);
        assert_eq!(classify(5, 3, MARK), Kind::TimeWait);
        assert_eq!(classify(3, 1, MARK), Kind::Request);
        assert_eq!(classify(3, 1, 0), Kind::Request);
    }

    #[test]
    fn cookie_halves() {
        let c: u64 = 0xdead_beef_0000_1234;
        let mut raw = [0u8; 8];
        raw[..4].copy_from_slice(&(c as u32).to_ne_bytes());
        raw[4..].copy_from_slice(&((c >> 32) as u32).to_ne_bytes());
        assert_eq!(cookie(raw), c);
    }

    #[test]
    fn rejects_unknown_family() {
        assert!(matches!(
            dump(Proto::Tcp, 1, ALL_STATES, |_| {}),
            Err(DiagError::AddressFamily(1))
        ));
    }

    // ---- real kernel ------------------------------------------------------

    fn find(rows: &[Row], src: SocketAddr, dst: SocketAddr) -> Option<Row> {
        rows.iter().copied().find(|r| r.src == src && r.dst == dst)
    }

    /// TIME_WAIT, orphaned FIN_WAIT2 (a timewait sock in substate FIN_WAIT2)
    /// and a full FIN_WAIT2 socket over loopback; cookies against SO_COOKIE.
    #[test]
    fn kinds_of_closing_sockets_on_loopback() {
        let Some(()) = in_fresh_netns(|| {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();

            // TIME_WAIT: client closes first, then the server.
            let (c, s) = tcp_pair(&l);
            let (tw_src, tw_dst, tw_cookie) = (
                c.local_addr().unwrap(),
                c.peer_addr().unwrap(),
                so_cookie(&c),
            );
            drop(c);
            std::thread::sleep(Duration::from_millis(20));
            drop(s);

            // Orphaned FIN_WAIT2: client closes, server never does.
            let (c, s_keep) = tcp_pair(&l);
            let (ofw_src, ofw_dst, ofw_cookie) = (
                c.local_addr().unwrap(),
                c.peer_addr().unwrap(),
                so_cookie(&c),
            );
            drop(c);

            // Full FIN_WAIT2: client shuts down writing but keeps the fd.
            let (c_half, s_half) = tcp_pair(&l);
            c_half.shutdown(std::net::Shutdown::Write).unwrap();

            let ok = wait_until(Duration::from_secs(5), || {
                let rows = rows(Proto::Tcp, AF_INET, ALL_STATES);
                find(&rows, tw_src, tw_dst).is_some_and(|r| r.state == 6)
                    && find(&rows, ofw_src, ofw_dst).is_some_and(|r| r.kind == Kind::TimeWait)
                    && find(
                        &rows,
                        c_half.local_addr().unwrap(),
                        c_half.peer_addr().unwrap(),
                    )
                    .is_some_and(|r| r.state == 5)
            });
            let rows = rows(Proto::Tcp, AF_INET, ALL_STATES);
            for r in &rows {
                eprintln!(
                    "{:?} state {:2} timer {} attrs {:#07x} inode {:6} uid {} {} -> {}",
                    r.kind, r.state, r.timer, r.attrs, r.inode, r.uid, r.src, r.dst
                );
            }
            assert!(ok, "sockets did not reach the expected states");

            let tw = find(&rows, tw_src, tw_dst).unwrap();
            assert_eq!(
                (tw.kind, tw.state, tw.timer, tw.inode),
                (Kind::TimeWait, 6, 3, 0)
            );
            assert_eq!(
                tw.attrs & !(1 << 15),
                0,
                "timewait: only INET_DIAG_MARK may appear"
            );
            assert_eq!(
                tw.cookie, tw_cookie,
                "timewait sock keeps the full socket's cookie"
            );

            let ofw = find(&rows, ofw_src, ofw_dst).unwrap();
            assert_eq!(
                (ofw.kind, ofw.state, ofw.timer, ofw.inode),
                (Kind::TimeWait, 5, 3, 0)
            );
            assert_eq!(ofw.cookie, ofw_cookie);

            let half = find(
                &rows,
                c_half.local_addr().unwrap(),
                c_half.peer_addr().unwrap(),
            )
            .unwrap();
            assert_eq!((half.kind, half.state), (Kind::Full, 5));
            assert_eq!(half.cookie, so_cookie(&c_half));
            assert_eq!(half.inode, inode(&c_half));
            let peer = find(
                &rows,
                s_half.local_addr().unwrap(),
                s_half.peer_addr().unwrap(),
            )
            .unwrap();
            assert_eq!((peer.kind, peer.state), (Kind::Full, 8));
            let lrow = find(
                &rows,
                l.local_addr().unwrap(),
                (Ipv4Addr::UNSPECIFIED, 0).into(),
            )
            .unwrap();
            assert_eq!(
                (lrow.kind, lrow.state, lrow.cookie),
                (Kind::Full, 10, so_cookie(&l))
            );

            // Every full socket carries SHUTDOWN (INET_DIAG_PROTOCOL does not
            // appear in dumps).
            for r in rows.iter().filter(|r| r.kind == Kind::Full) {
                assert_ne!(r.attrs & (1 << 8), 0, "{r:?}");
            }
            // The state filter applies to the timewait substate.
            let fw2 = rows_with(1 << 5);
            assert!(
                fw2.iter()
                    .any(|r| r.src == ofw_src && r.kind == Kind::TimeWait)
            );
            assert!(fw2.iter().all(|r| r.state == 5));
            drop((s_keep, c_half, s_half));
        }) else {
            return;
        };
    }

    fn rows_with(states: u32) -> Vec<Row> {
        rows(Proto::Tcp, AF_INET, states)
    }

    /// Request sockets: a listener in one namespace, clients in another over
    /// a veth pair, and a bogus permanent neighbour entry for the client on
    /// the server side so SYN-ACKs never arrive: the server holds request
    /// socks, the clients stay in SYN_SENT.
    #[test]
    fn request_socks_over_veth() {
        const SRV_IP: &str = "10.231.0.1";
        const CLI_IP: &str = "10.231.0.2";
        const N: usize = 5;
        let pid = std::process::id();
        let (Some(srv), Some(cli)) = (
            NamedNetns::add(format!("ncdiag-srv-{pid}")),
            NamedNetns::add(format!("ncdiag-cli-{pid}")),
        ) else {
            eprintln!("skipping: cannot create named network namespaces");
            return;
        };
        let (s, c) = (srv.name.as_str(), cli.name.as_str());
        let setup: &[&[&str]] = &[
            &[
                "-n", s, "link", "add", "vsrv", "type", "veth", "peer", "name", "vcli", "netns", c,
            ],
            &["-n", s, "addr", "add", "10.231.0.1/24", "dev", "vsrv"],
            &["-n", c, "addr", "add", "10.231.0.2/24", "dev", "vcli"],
            &["-n", s, "link", "set", "vsrv", "up"],
            &["-n", c, "link", "set", "vcli", "up"],
            &["-n", s, "link", "set", "lo", "up"],
            &["-n", c, "link", "set", "lo", "up"],
            &[
                "-n",
                s,
                "neigh",
                "replace",
                CLI_IP,
                "lladdr",
                "02:00:00:00:00:99",
                "nud",
                "permanent",
                "dev",
                "vsrv",
            ],
        ];
        for args in setup {
            assert!(ip(args), "setup failed");
        }

        let listener = in_named_netns(&srv.path(), || TcpListener::bind((SRV_IP, 0)).unwrap());
        let port = listener.local_addr().unwrap().port();
        let clients = in_named_netns(&cli.path(), move || {
            let to: SocketAddr = (SRV_IP.parse::<Ipv4Addr>().unwrap(), port).into();
            (0..N).map(|_| nb_connect(to)).collect::<Vec<_>>()
        });

        let server_side = in_named_netns(&srv.path(), move || {
            let is_req = |r: &Row| r.kind == Kind::Request && r.src.port() == port;
            let ok = wait_until(Duration::from_secs(10), || {
                rows(Proto::Tcp, AF_INET, ALL_STATES)
                    .iter()
                    .filter(|r| is_req(r))
                    .count()
                    == N
            });
            let all = rows(Proto::Tcp, AF_INET, ALL_STATES);
            let syn_recv_bit = rows(Proto::Tcp, AF_INET, 1 << 3);
            let new_syn_recv_bit = rows(Proto::Tcp, AF_INET, 1 << 12);
            let listen_bit = rows(Proto::Tcp, AF_INET, 1 << 10);
            let stat = crate::sockstat::read().unwrap();
            (ok, all, syn_recv_bit, new_syn_recv_bit, listen_bit, stat)
        });
        let (ok, all, syn_recv_bit, new_syn_recv_bit, listen_bit, stat) = server_side;
        for r in &all {
            eprintln!(
                "server: {:?} state {:2} timer {} attrs {:#07x} inode {} uid {} {} -> {}",
                r.kind, r.state, r.timer, r.attrs, r.inode, r.uid, r.src, r.dst
            );
        }
        assert!(ok, "expected {N} request socks");
        let reqs: Vec<&Row> = all.iter().filter(|r| r.kind == Kind::Request).collect();
        assert_eq!(reqs.len(), N);
        for r in &reqs {
            assert_eq!((r.state, r.timer, r.inode, r.uid), (3, 1, 0, 0));
            assert_eq!(
                r.attrs & !(1 << 15),
                0,
                "request sock: only INET_DIAG_MARK may appear"
            );
        }
        assert_eq!(
            syn_recv_bit.len(),
            N,
            "SYN_RECV bit includes TCP_NEW_SYN_RECV"
        );
        assert!(
            syn_recv_bit
                .iter()
                .all(|r| r.state == 3 && r.kind == Kind::Request)
        );
        eprintln!("NEW_SYN_RECV bit alone: {} rows", new_syn_recv_bit.len());
        assert_eq!(listen_bit.len(), 1);
        eprintln!("server sockstat: {stat:?}");
        assert_eq!(
            stat.tcp4_inuse, 1,
            "request socks are not in inuse, the listener is"
        );

        let (cli_rows, cli_stat) = in_named_netns(&cli.path(), || {
            (
                rows(Proto::Tcp, AF_INET, ALL_STATES),
                crate::sockstat::read().unwrap(),
            )
        });
        eprintln!("client: {} rows, sockstat {cli_stat:?}", cli_rows.len());
        assert_eq!(cli_rows.len(), N);
        assert!(
            cli_rows
                .iter()
                .all(|r| r.state == 2 && r.kind == Kind::Full)
        );
        assert_eq!(
            cli_stat.tcp4_inuse, N as u64,
            "SYN_SENT sockets are in inuse"
        );
        drop((clients, listener));
    }

    fn table(c: &Counts) -> BTreeMap<(&'static str, &'static str), u64> {
        let mut m = BTreeMap::new();
        for f in Family::ALL {
            for s in State::ALL {
                if c.get(f, s) != 0 {
                    m.insert((f.name(), s.name()), c.get(f, s));
                }
            }
        }
        m
    }

    #[test]
    fn counts_match_ss() {
        let Some(()) = in_fresh_netns(|| {
            let (_population, want) = build_population();
            let ours = || {
                count(Proto::Tcp, ALL_STATES, |_| true)
                    .unwrap()
                    .merged(&count(Proto::Udp, ALL_STATES, |_| true).unwrap())
            };
            // Let the handshakes and FIN exchanges settle.
            let settled = wait_until(Duration::from_secs(5), || ours() == want);
            let (ours, ss) = (ours(), ss_counts());
            eprintln!("count(): {:?}", table(&ours));
            eprintln!("ss:      {:?}", table(&ss));
            assert!(settled, "count() != expected {:?}", table(&want));
            assert_eq!(table(&ours), table(&ss));

            // BOUND_INACTIVE adds exactly the two bound TCP sockets, as CLOSE.
            let bound = count(Proto::Tcp, ALL_STATES | BOUND_INACTIVE, |_| true).unwrap();
            assert_eq!(bound.get(Family::Tcp4, State::Close), 1);
            assert_eq!(bound.get(Family::Tcp6, State::Close), 1);
            // UDP ignores the bit (no such UDP state).
            let udp = count(Proto::Udp, u32::MAX, |_| true).unwrap();
            assert_eq!(
                udp.family_total(Family::Udp4) + udp.family_total(Family::Udp6),
                6
            );
        }) else {
            return;
        };
    }

    /// Dump speed. NETCONN_DIAG_BENCH_SOCKETS sets the population (default
    /// 20,000 TCP sockets). The sockets are held by child processes running
    /// `bench_holder`, since one process may not have enough descriptors.
    #[test]
    fn dump_timing() {
        const PAIRS_PER_HOLDER: usize = 9_000;
        let n: usize = std::env::var("NETCONN_DIAG_BENCH_SOCKETS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let Some(()) = in_fresh_netns(move || {
            use std::io::{BufRead, BufReader};
            use std::process::{Command, Stdio};

            let start = Instant::now();
            let test = module_path!()
                .split_once("::")
                .map_or("", |(_, rest)| rest)
                .to_string()
                + "::bench_holder";
            let mut holders = Vec::new();
            let mut left = n / 2;
            while left > 0 {
                let pairs = left.min(PAIRS_PER_HOLDER);
                left -= pairs;
                // Spawned from this thread, so the child is in this netns.
                let child = Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", &test, "--nocapture", "--test-threads=1"])
                    .env(HOLDER_ENV, pairs.to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                holders.push(child);
            }
            // Kept open until the holders exit, so they never write to a
            // closed pipe.
            let mut outputs = Vec::new();
            for child in &mut holders {
                let mut out = BufReader::new(child.stdout.take().unwrap());
                let ready = (&mut out)
                    .lines()
                    .map_while(Result::ok)
                    .any(|l| l.contains("holder-ready"));
                assert!(ready, "holder did not start");
                outputs.push(out);
            }
            let sockets = (n / 2) * 2 + holders.len();
            eprintln!(
                "built {sockets} TCP sockets in {} processes in {:?}",
                holders.len(),
                start.elapsed()
            );

            for round in 0..3 {
                let (t, cpu) = (Instant::now(), thread_cpu());
                let mut rows = 0usize;
                dump(Proto::Tcp, AF_INET, ALL_STATES, |_| rows += 1).unwrap();
                let (d, cpu_end) = (t.elapsed(), thread_cpu());
                eprintln!(
                    "round {round}: dump of {rows} tcp4 rows in {d:?} ({:.0} ns/row; user {:?}, sys {:?})",
                    d.as_nanos() as f64 / rows.max(1) as f64,
                    cpu_end.0 - cpu.0,
                    cpu_end.1 - cpu.1,
                );
                assert_eq!(rows, sockets);
            }
            let t = Instant::now();
            let c = count(Proto::Tcp, ALL_STATES, |r| r.kind == Kind::Full).unwrap();
            eprintln!(
                "count() over both families in {:?}: {} tcp4",
                t.elapsed(),
                c.family_total(Family::Tcp4)
            );
            let t = Instant::now();
            let out = std::process::Command::new("ss")
                .arg("-tanH")
                .output()
                .unwrap();
            eprintln!(
                "for comparison: ss -tanH in {:?} ({} lines)",
                t.elapsed(),
                out.stdout.iter().filter(|&&b| b == b'\n').count()
            );
            for mut child in holders {
                drop(child.stdin.take()); // EOF: the holder exits
                let _ = child.wait();
            }
            drop(outputs);
        }) else {
            return;
        };
    }

    /// (user, system) CPU time of the calling thread.
    fn thread_cpu() -> (Duration, Duration) {
        // SAFETY: getrusage fills the zeroed struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) }, 0);
        let tv = |t: libc::timeval| {
            Duration::from_micros(t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64)
        };
        (tv(ru.ru_utime), tv(ru.ru_stime))
    }

    const HOLDER_ENV: &str = "NETCONN_DIAG_HOLDER_PAIRS";

    /// Not a test by itself: with NETCONN_DIAG_HOLDER_PAIRS set (by
    /// `dump_timing`), hold that many established pairs until stdin closes.
    #[test]
    fn bench_holder() {
        use std::io::{Read, Write};
        let Some(pairs) = std::env::var(HOLDER_ENV)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        else {
            return;
        };
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let keep: Vec<_> = (0..pairs).map(|_| tcp_pair(&l)).collect();
        // Straight to fd 1: the test harness captures print!.
        let mut out = std::io::stdout().lock();
        writeln!(out, "holder-ready {}", keep.len()).unwrap();
        out.flush().unwrap();
        drop(out);
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    }
}
