//! sock_diag dumps and the kernel's sockstat counters against the real
//! kernel: what each kind of socket looks like in a dump, request sockets
//! over a veth pair, dump counts equal to `ss`, and sockstat's `inuse`/`tw`
//! equal to the dump's full and timewait rows. Root only; a test that cannot
//! run fails with its reason.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use netconn_common::{Counts, Family, State};
use netconn_user::kernel::{
    diag::{self, AF_INET, ALL_STATES, BOUND_INACTIVE, Kind, Proto, Row, count},
    sockstat,
};
use testutil::*;

fn find(rows: &[Row], src: SocketAddr, dst: SocketAddr) -> Option<Row> {
    rows.iter().copied().find(|r| r.src == src && r.dst == dst)
}

/// TIME_WAIT, orphaned FIN_WAIT2 (a timewait sock in substate FIN_WAIT2)
/// and a full FIN_WAIT2 socket over loopback; cookies against SO_COOKIE.
#[test]
fn kinds_of_closing_sockets_on_loopback() {
    in_fresh_netns(|| {
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
    });
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
        panic!("cannot run: cannot create named network namespaces (needs root and iproute2)");
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
        let stat = netconn_user::kernel::sockstat::read().unwrap();
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
            netconn_user::kernel::sockstat::read().unwrap(),
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
    in_fresh_netns(|| {
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
    });
}

/// Relations between the counters and a sock_diag dump, on a known
/// population in a private namespace.
#[test]
fn inuse_matches_full_sockets_in_dump() {
    use netconn_user::kernel::diag::BOUND_INACTIVE;

    testutil::in_fresh_netns(|| {
        let (_population, want) = testutil::build_population();
        // A v4-mapped connection to a dual-stack listener: the accepted
        // side is an AF_INET6 socket.
        let dual = std::net::TcpListener::bind("[::]:0").unwrap();
        let port = dual.local_addr().unwrap().port();
        let _mapped_client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_mapped_server, peer) = dual.accept().unwrap();
        eprintln!("accepted v4-mapped peer {peer}");

        let full = |proto| diag::count(proto, ALL_STATES, |r| r.kind == Kind::Full).unwrap();
        // Let FIN/ACK exchanges (delayed ACKs) settle first.
        let mut want = want;
        want.add(Family::Tcp4, State::Established, 1);
        want.add(Family::Tcp6, State::Established, 1);
        want.add(Family::Tcp6, State::Listen, 1);
        let all = || {
            diag::count(Proto::Tcp, ALL_STATES, |_| true)
                .unwrap()
                .merged(&diag::count(Proto::Udp, ALL_STATES, |_| true).unwrap())
        };
        let settled = testutil::wait_until(Duration::from_secs(5), || all() == want);
        assert!(settled, "dump {:?} != expected {want:?}", all());

        let stat = sockstat::read().unwrap();
        let tcp = full(Proto::Tcp);
        let udp = full(Proto::Udp);
        let bound = diag::count(Proto::Tcp, BOUND_INACTIVE, |_| true).unwrap();
        let tw = diag::count(Proto::Tcp, ALL_STATES, |r| r.kind == Kind::TimeWait).unwrap();
        let mut orphans = 0;
        for af in [diag::AF_INET, diag::AF_INET6] {
            diag::dump(Proto::Tcp, af, ALL_STATES, |r| {
                if r.kind == Kind::Full && r.inode == 0 {
                    orphans += 1;
                }
            })
            .unwrap();
        }
        eprintln!("sockstat: {stat:?}");
        for state in State::ALL {
            let (v4, v6) = (tcp.get(Family::Tcp4, state), tcp.get(Family::Tcp6, state));
            if v4 + v6 > 0 {
                eprintln!("full rows {:<12} tcp4 {v4:3} tcp6 {v6:3}", state.name());
            }
        }
        eprintln!(
            "bound-inactive tcp4/tcp6: {}/{}; timewait rows: {}; full orphans (inode 0): {orphans}",
            bound.family_total(Family::Tcp4),
            bound.family_total(Family::Tcp6),
            tw.family_total(Family::Tcp4) + tw.family_total(Family::Tcp6)
        );
        assert!(
            tcp.get(Family::Tcp4, State::SynSent) > 0 && tcp.get(Family::Tcp4, State::Listen) > 0
        );
        assert!(orphans > 0, "population has an orphaned FIN_WAIT1 socket");
        assert_eq!(stat.tcp4_inuse, tcp.family_total(Family::Tcp4));
        assert_eq!(stat.tcp6_inuse, tcp.family_total(Family::Tcp6));
        assert_eq!(
            stat.tw,
            tw.family_total(Family::Tcp4) + tw.family_total(Family::Tcp6)
        );
        assert_eq!(stat.udp4_inuse, udp.family_total(Family::Udp4));
        assert_eq!(stat.udp6_inuse, udp.family_total(Family::Udp6));
    });
}

/// Helpers for these tests. Every population lives in its own network
/// namespace, so concurrent tests and the host's own sockets cannot disturb
/// the counts.
mod testutil {
    use std::io::{self, Write as _};
    use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use netconn_common::{Counts, Family};
    use netconn_user::kernel::diag::{Proto, Row, dump};

    /// `SO_COOKIE` (asm-generic value; libc does not export it).
    const SO_COOKIE: libc::c_int = 57;

    fn join<T>(handle: std::thread::JoinHandle<T>) -> T {
        match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Run `f` on a thread inside a new, empty network namespace with `lo`
    /// up. A test that cannot get one fails with the reason.
    pub fn in_fresh_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        join(std::thread::spawn(move || {
            // SAFETY: plain syscall; affects only this thread.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!(
                    "cannot run: unshare(CLONE_NEWNET): {} (needs root)",
                    io::Error::last_os_error()
                );
            }
            lo_up();
            f()
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

    /// Counts as `ss` sees them, run from this thread (so in its netns:
    /// the threads and processes it starts inherit it).
    pub fn ss_counts() -> Counts {
        netconn_tests::ss_counts().expect("ss")
    }

    /// The population the ss comparison and the sockstat test share.
    pub struct Population {
        _keep: Vec<Box<dyn std::any::Any>>,
    }

    /// Build, in the current netns, a known mix; return it and the expected
    /// counts (full sockets + timewait + request, as `ss` shows them).
    pub fn build_population() -> (Population, Counts) {
        use netconn_common::State::*;
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
