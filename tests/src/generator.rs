//! The engine behind the `popgen` binary: builds a [`PopSpec`] population
//! on loopback, holds it, optionally churns, and tears it down.
//!
//! Every TCP connection of a kind is made in batches of [`BATCH`] against a
//! fresh helper listener on an ephemeral port, which is closed once the
//! batch is accepted (so helpers add no LISTEN rows). Where a connection
//! leaves a timewait sock (TIME_WAIT, or FIN_WAIT2 of an orphan), the
//! *accepted* side closes first, so the timewait sock sits on the helper
//! port: helpers bind without SO_REUSEADDR, so nothing else can bind that
//! port while the timewait sock lives, and no later connection can recycle
//! it (tcp_tw_reuse=2 reuses loopback TIME_WAITs after 1 s).

use std::collections::HashMap;
use std::io::{self, Write};
use std::mem;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::spec::{BATCH, ChurnSpec, IpVersion, PopSpec};

/// Set by SIGTERM/SIGINT or stdin EOF (see the `popgen` binary).
pub static STOP: AtomicBool = AtomicBool::new(false);

fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

const LISTEN_BACKLOG: i32 = 4096;
/// How long a batch may take to reach its states before popgen gives up.
const STATE_TIMEOUT: Duration = Duration::from_secs(20);

// Kernel TCP states (include/net/tcp_states.h), as in tcp_info.tcpi_state.
const TCP_FIN_WAIT2: u8 = 5;
const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;

/// Sockets held until exit, plus what the clean exit must destroy.
#[derive(Default)]
struct Held {
    tcp: Vec<OwnedFd>,
    udp: Vec<OwnedFd>,
    /// Helper ports on which our timewait socks live, per family.
    tw_ports: Vec<(IpVersion, u16)>,
}

fn loopback(f: IpVersion) -> IpAddr {
    match f {
        IpVersion::V4 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpVersion::V6 => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

/// Raises the soft descriptor limit to the hard one and checks `need` fits.
fn raise_nofile(need: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only write/read the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    if need > lim.rlim_cur {
        bail!(
            "this population needs ~{need} descriptors but the limit is {}; \
             spread it over several popgen processes",
            lim.rlim_cur
        );
    }
    Ok(())
}

fn setsockopt_int(fd: RawFd, level: i32, opt: i32, val: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int with its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&val as *const i32).cast(),
            mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// SO_LINGER {on, 0}: close() then sends RST and leaves no state behind.
fn set_linger_zero(fd: RawFd) -> io::Result<()> {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passes a pointer to a live linger struct with its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The socket's TCP state (first byte of struct tcp_info).
fn tcp_state(fd: RawFd) -> io::Result<u8> {
    let mut buf = [0u8; 8];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r == 0 {
        Ok(buf[0])
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A listening TCP socket on loopback. Helpers pass `reuse = false` so their
/// port stays exclusive while our timewait socks live on it.
fn listen_on(f: IpVersion, port: u16, reuse: bool) -> Result<TcpListener> {
    let domain = match f {
        IpVersion::V4 => libc::AF_INET,
        IpVersion::V6 => libc::AF_INET6,
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error()).context("socket(SOCK_STREAM)");
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if reuse {
        setsockopt_int(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1).context("SO_REUSEADDR")?;
    }
    let addr = SocketAddr::new(loopback(f), port);
    bind_raw(raw, &addr).with_context(|| {
        // Explicit ports inside ip_local_port_range collide with other
        // processes' client ports: say so.
        format!("bind TCP {addr} (pick --base-port below net.ipv4.ip_local_port_range)")
    })?;
    // SAFETY: listen(2) on a descriptor we own.
    if unsafe { libc::listen(raw, LISTEN_BACKLOG) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("listen on {addr}"));
    }
    Ok(TcpListener::from(fd))
}

fn bind_raw(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_storage is valid; we fill the variant
    // matching the address family and pass its exact length.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: `ss` holds a valid address of `len` bytes.
    let r = unsafe {
        libc::bind(
            fd,
            (&ss as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// accept() with a deadline, so a lost connection fails instead of hanging.
fn accept_by(l: &TcpListener, deadline: Instant) -> Result<(TcpStream, SocketAddr)> {
    loop {
        match l.accept() {
            Ok(x) => return Ok(x),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    bail!("accept timed out: a connected client never reached the accept queue");
                }
                let mut pfd = libc::pollfd {
                    fd: l.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = left.as_millis().min(1000) as i32;
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("accept"),
        }
    }
}

/// Connects `n` clients to a fresh helper listener and accepts them.
/// Returns the listener (caller closes it) and (client, server) pairs.
fn pair_batch(f: IpVersion, n: u32) -> Result<(TcpListener, Vec<(TcpStream, TcpStream)>)> {
    let l = listen_on(f, 0, false)?;
    l.set_nonblocking(true).context("nonblocking listener")?;
    let addr = l.local_addr().context("listener address")?;
    let mut clients = Vec::with_capacity(n as usize);
    for _ in 0..n {
        // Loopback connect completes the handshake before returning.
        let c = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
        clients.push(c);
    }
    let deadline = Instant::now() + STATE_TIMEOUT;
    let mut by_port = HashMap::with_capacity(n as usize);
    for _ in 0..n {
        let (s, peer) = accept_by(&l, deadline)?;
        by_port.insert(peer.port(), s);
    }
    let mut pairs = Vec::with_capacity(n as usize);
    for c in clients {
        let port = c.local_addr().context("client address")?.port();
        let s = by_port
            .remove(&port)
            .with_context(|| format!("no accepted socket for client port {port}"))?;
        pairs.push((c, s));
    }
    Ok((l, pairs))
}

/// Polls tcp_info until every socket is in its wanted state.
fn wait_states(socks: &[(RawFd, u8)], what: &str) -> Result<()> {
    let deadline = Instant::now() + STATE_TIMEOUT;
    let mut pending: Vec<(RawFd, u8)> = socks.to_vec();
    loop {
        let mut still = Vec::new();
        let mut example = None;
        for &(fd, want) in &pending {
            let st = tcp_state(fd).with_context(|| format!("{what}: TCP_INFO"))?;
            if st != want {
                still.push((fd, want));
                example.get_or_insert((st, want));
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let (st, want) = example.unwrap_or_default();
            bail!(
                "{what}: {} of {} sockets not in the expected state after {STATE_TIMEOUT:?} \
                 (e.g. state {st}, wanted {want})",
                still.len(),
                socks.len()
            );
        }
        pending = still;
        thread::sleep(Duration::from_millis(2));
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Established,
    FinWait2,
    CloseWait,
    TimeWait,
}

/// Builds `count` connections of `kind` in batches.
fn build_kind(f: IpVersion, kind: Kind, count: u32, held: &mut Held) -> Result<()> {
    let mut left = count;
    while left > 0 {
        if stopping() {
            return Ok(());
        }
        let n = left.min(BATCH);
        let (listener, pairs) = pair_batch(f, n)?;
        let port = listener
            .local_addr()
            .context("helper listener address")?
            .port();
        // The pairs are accepted: the helper listener has done its job.
        drop(listener);
        let what = format!("{kind:?} {f:?} batch on port {port}");
        match kind {
            Kind::Established => {
                for (c, s) in pairs {
                    held.tcp.push(c.into());
                    held.tcp.push(s.into());
                }
            }
            Kind::FinWait2 => {
                // Client half-closes and keeps its fd: a full FIN_WAIT2
                // socket (no timer) facing a held CLOSE_WAIT.
                for (c, _) in &pairs {
                    c.shutdown(Shutdown::Write).context("shutdown(SHUT_WR)")?;
                }
                let want: Vec<_> = pairs
                    .iter()
                    .flat_map(|(c, s)| {
                        [
                            (c.as_raw_fd(), TCP_FIN_WAIT2),
                            (s.as_raw_fd(), TCP_CLOSE_WAIT),
                        ]
                    })
                    .collect();
                wait_states(&want, &what)?;
                for (c, s) in pairs {
                    held.tcp.push(c.into());
                    held.tcp.push(s.into());
                }
            }
            Kind::CloseWait => {
                // Accepted side half-closes, waits for FIN_WAIT2 (its FIN is
                // acked), then closes: tcp_close() turns it into a timewait
                // sock in substate FIN_WAIT2 at once. The client holds
                // CLOSE_WAIT.
                for (_, s) in &pairs {
                    s.shutdown(Shutdown::Write).context("shutdown(SHUT_WR)")?;
                }
                let want: Vec<_> = pairs
                    .iter()
                    .flat_map(|(c, s)| {
                        [
                            (s.as_raw_fd(), TCP_FIN_WAIT2),
                            (c.as_raw_fd(), TCP_CLOSE_WAIT),
                        ]
                    })
                    .collect();
                wait_states(&want, &what)?;
                for (c, s) in pairs {
                    drop(s);
                    held.tcp.push(c.into());
                }
                held.tw_ports.push((f, port));
            }
            Kind::TimeWait => {
                // Accepted side sends FIN first; once the client is in
                // CLOSE_WAIT it sends its FIN; the client reaching CLOSE means
                // the accepted side acked it from TIME_WAIT. Both fds are then
                // plain CLOSE sockets and go away silently.
                for (_, s) in &pairs {
                    s.shutdown(Shutdown::Write).context("shutdown(SHUT_WR)")?;
                }
                let want: Vec<_> = pairs
                    .iter()
                    .map(|(c, _)| (c.as_raw_fd(), TCP_CLOSE_WAIT))
                    .collect();
                wait_states(&want, &what)?;
                for (c, _) in &pairs {
                    c.shutdown(Shutdown::Write).context("shutdown(SHUT_WR)")?;
                }
                let want: Vec<_> = pairs
                    .iter()
                    .flat_map(|(c, s)| [(c.as_raw_fd(), TCP_CLOSE), (s.as_raw_fd(), TCP_CLOSE)])
                    .collect();
                wait_states(&want, &what)?;
                drop(pairs);
                held.tw_ports.push((f, port));
            }
        }
        left -= n;
    }
    Ok(())
}

/// Binds `n` UDP sockets (optionally connected to themselves, so they show
/// as ESTAB without any peer socket). Port 0 first; when the ephemeral
/// range of an address is used up, IPv4 moves on to 127.0.0.2, ... and IPv6
/// (only ::1 exists) to explicit ports below the ephemeral range.
fn build_udp(f: IpVersion, n: u32, connected: bool, held: &mut Held) -> Result<()> {
    let mut v4_host: u8 = 1;
    let mut v6_port: Option<u32> = None;
    const V6_FALLBACK: (u32, u32) = (1024, 32768);
    for _ in 0..n {
        let sock = loop {
            let addr = match f {
                IpVersion::V4 => SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, v4_host)), 0),
                IpVersion::V6 => SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                    v6_port.map_or(0, |p| p as u16),
                ),
            };
            match UdpSocket::bind(addr) {
                Ok(s) => {
                    if let Some(p) = v6_port.as_mut() {
                        *p += 1;
                    }
                    break s;
                }
                Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => match f {
                    IpVersion::V4 => {
                        if v4_host == 254 {
                            bail!("no free UDP port on 127.0.0.1-254");
                        }
                        v4_host += 1;
                    }
                    IpVersion::V6 => {
                        let next = v6_port.map_or(V6_FALLBACK.0, |p| p + 1);
                        if next >= V6_FALLBACK.1 {
                            bail!("no free UDP port on ::1 (ephemeral range and 1024-32767 used)");
                        }
                        v6_port = Some(next);
                    }
                },
                Err(e) => return Err(e).with_context(|| format!("bind UDP {addr}")),
            }
        };
        if connected {
            let me = sock.local_addr().context("UDP local address")?;
            sock.connect(me)
                .with_context(|| format!("connect UDP {me} to itself"))?;
        }
        held.udp.push(sock.into());
    }
    Ok(())
}

fn build(spec: &PopSpec, held: &mut Held) -> Result<()> {
    for &f in spec.family.families() {
        let mut port = spec.base_port.map(u32::from);
        for _ in 0..spec.listeners {
            if stopping() {
                return Ok(());
            }
            let p = port.map_or(0, |p| p as u16);
            let l = listen_on(f, p, true)?;
            held.tcp.push(l.into());
            if let Some(p) = port.as_mut() {
                *p += 1;
            }
        }
        build_kind(f, Kind::Established, spec.established, held)?;
        build_kind(f, Kind::FinWait2, spec.fin_wait2, held)?;
        build_kind(f, Kind::CloseWait, spec.close_wait, held)?;
        build_kind(f, Kind::TimeWait, spec.time_wait, held)?;
        build_udp(f, spec.udp_bound, false, held)?;
        build_udp(f, spec.udp_connected, true, held)?;
    }
    Ok(())
}

/// Listeners for churn: a few per family so one destination's 4-tuples are
/// not all used up by its own TIME_WAITs.
struct Churner {
    listeners: Vec<(IpVersion, TcpListener, SocketAddr)>,
    made: u64,
    errors: u64,
}

impl Churner {
    fn new(spec: &PopSpec, held: &mut Held) -> Result<Churner> {
        let mut listeners = Vec::new();
        for &f in spec.family.families() {
            for _ in 0..4 {
                let l = listen_on(f, 0, false)?;
                l.set_nonblocking(true).context("nonblocking listener")?;
                let a = l.local_addr().context("churn listener address")?;
                held.tw_ports.push((f, a.port()));
                listeners.push((f, l, a));
            }
        }
        Ok(Churner {
            listeners,
            made: 0,
            errors: 0,
        })
    }

    /// One short connection: connect, accept, accepted side closes first
    /// (TIME_WAIT on the churn port), then the client.
    fn once(&mut self) -> Result<()> {
        let i = (self.made % self.listeners.len() as u64) as usize;
        let (_, l, addr) = &self.listeners[i];
        match TcpStream::connect(*addr) {
            Ok(c) => {
                let (s, _) = accept_by(l, Instant::now() + STATE_TIMEOUT)?;
                drop(s);
                drop(c);
                self.made += 1;
            }
            // Ephemeral ports of this destination used up: back off.
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                self.errors += 1;
                self.made += 1;
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).with_context(|| format!("churn connect to {addr}")),
        }
        Ok(())
    }

    fn run(&mut self, c: ChurnSpec) -> Result<()> {
        let start = Instant::now();
        let end = start + Duration::from_secs(c.seconds);
        while !stopping() && Instant::now() < end {
            if c.rate > 0 {
                let due = start + Duration::from_secs_f64(self.made as f64 / f64::from(c.rate));
                let now = Instant::now();
                if due > now {
                    thread::sleep((due - now).min(Duration::from_millis(50)));
                    continue;
                }
            }
            self.once()?;
        }
        Ok(())
    }
}

/// Destroys the timewait socks (and anything else) still on our helper
/// ports, with `ss -K` (SOCK_DESTROY; kernels >= 5.x destroy TIME_WAIT).
fn kill_port_sockets(ports: &[(IpVersion, u16)]) -> Result<()> {
    for fam in [IpVersion::V4, IpVersion::V6] {
        let mine: Vec<u16> = ports
            .iter()
            .filter(|(f, _)| *f == fam)
            .map(|&(_, p)| p)
            .collect();
        for chunk in mine.chunks(100) {
            let filter = chunk
                .iter()
                .map(|p| format!("sport = :{p}"))
                .collect::<Vec<_>>()
                .join(" or ");
            let af = match fam {
                IpVersion::V4 => "-4",
                IpVersion::V6 => "-6",
            };
            let out = Command::new("ss")
                .args(["-K", "-tanH", af])
                .arg(format!("( {filter} )"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .context("running ss -K")?;
            if !out.status.success() {
                bail!(
                    "ss -K failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    Ok(())
}

fn teardown(held: Held, natural: bool) -> Result<()> {
    let Held { tcp, udp, tw_ports } = held;
    if natural {
        drop(tcp);
        drop(udp);
        return Ok(());
    }
    // RST instead of FIN: no TIME_WAIT/FIN_WAIT2 is left behind, and the
    // RST also kills the peer's FIN_WAIT2 timewait sock of close-wait pairs.
    for fd in &tcp {
        // Best effort: a socket that refuses only leaves normal close state.
        let _ = set_linger_zero(fd.as_raw_fd());
    }
    drop(tcp);
    drop(udp);
    if !tw_ports.is_empty() {
        kill_port_sockets(&tw_ports)?;
    }
    Ok(())
}

/// TcpExt TCPTimeWaitOverflow of this namespace: closes that got no timewait
/// sock because net.ipv4.tcp_max_tw_buckets was reached.
fn tw_overflows() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").context("reading /proc/net/netstat")?;
    let mut rows = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(keys), Some(vals)) = (rows.next(), rows.next()) else {
        bail!("no TcpExt rows in /proc/net/netstat");
    };
    let v = keys
        .split_whitespace()
        .zip(vals.split_whitespace())
        .find(|(k, _)| *k == "TCPTimeWaitOverflow")
        .context("no TCPTimeWaitOverflow in /proc/net/netstat")?
        .1;
    v.parse()
        .with_context(|| format!("bad TCPTimeWaitOverflow value {v:?}"))
}

/// Builds the population, writes `ready`, churns if asked, holds until
/// [`STOP`], then tears down. `verbose` logs timings to stderr.
pub fn run(spec: &PopSpec, out: &mut dyn Write, verbose: bool) -> Result<()> {
    raise_nofile(spec.peak_fds())?;
    let t0 = Instant::now();
    let mut held = Held::default();
    let overflows = tw_overflows()?;
    let built = build(spec, &mut held).and_then(|()| {
        // An overflow silently drops TIME_WAIT/FIN_WAIT2 entries: the counts
        // we promise would be wrong, so fail loudly instead.
        let lost = tw_overflows()?.saturating_sub(overflows);
        if lost > 0 {
            bail!(
                "{lost} timewait socks were not created: net.ipv4.tcp_max_tw_buckets is \
                 exhausted in this namespace (TIME_WAIT + orphan FIN_WAIT2 over the limit)"
            );
        }
        Ok(())
    });
    if verbose {
        eprintln!(
            "popgen: built {} held descriptors ({} sockets in ss) in {:.3}s",
            held.tcp.len() + held.udp.len(),
            spec.total_sockets(),
            t0.elapsed().as_secs_f64()
        );
    }
    let result = built.and_then(|()| serve(spec, &mut held, out, verbose));
    let t1 = Instant::now();
    let torn = teardown(held, spec.natural_exit);
    if verbose {
        eprintln!("popgen: teardown in {:.3}s", t1.elapsed().as_secs_f64());
    }
    result.and(torn)
}

fn serve(spec: &PopSpec, held: &mut Held, out: &mut dyn Write, verbose: bool) -> Result<()> {
    if stopping() {
        return Ok(());
    }
    let mut churner = match spec.churn {
        Some(_) => {
            let mut ch = Churner::new(spec, held)?;
            // One cycle proves churn works before we claim readiness.
            ch.once()?;
            Some(ch)
        }
        None => None,
    };
    writeln!(out, "ready").context("writing ready")?;
    out.flush().context("flushing stdout")?;
    if let (Some(ch), Some(c)) = (churner.as_mut(), spec.churn) {
        let t = Instant::now();
        ch.run(c)?;
        let secs = t.elapsed().as_secs_f64();
        if verbose {
            eprintln!(
                "popgen: churned {} connections ({} EADDRNOTAVAIL) in {secs:.1}s",
                ch.made, ch.errors
            );
        }
        // Tell a watching test that churn is over (the population stays).
        writeln!(out, "churn-stopped {}", ch.made - ch.errors).context("writing stdout")?;
        out.flush().context("flushing stdout")?;
    }
    while !stopping() {
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
