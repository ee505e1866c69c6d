//! popgen: builds a known TCP/UDP socket population on loopback in the
//! current network namespace, prints `ready`, and holds it until stdin
//! closes or SIGTERM/SIGINT arrives. See `popgen --help`.

use std::io::{self, Read};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::thread;

use netconn_tests::generator::{self, STOP};
use netconn_tests::spec::PopSpec;

const HELP: &str = "\
popgen: build a known socket population on loopback and hold it.

Usage: popgen [COUNTS] [--family 4|6|both | --v4 | --v6] [--base-port P]
              [--churn [--rate N[/s]] [--seconds S]] [--natural-exit] [-v]

Counts apply to each selected family (default 4). In `ss` terms:
  --listeners N      +N LISTEN (ports P.. with --base-port P, else ephemeral)
  --established N    +2N ESTABLISHED (N accepted pairs)
  --close-wait N     +N CLOSE_WAIT, +N FIN_WAIT2 (the FIN_WAIT2 half is an
                     orphan timewait sock: it expires 60 s after creation)
  --time-wait N      +N TIME_WAIT (expire 60 s after creation)
  --fin-wait2 N      +N FIN_WAIT2, +N CLOSE_WAIT (both held by fds: no expiry)
  --udp-bound N      +N UNCONN (= CLOSE) in udp4/udp6
  --udp-connected N  +N ESTAB in udp4/udp6 (each connected to itself)
Helper listeners used to make connections are closed before `ready`.

--churn: after building, open and close short TCP connections (TIME_WAIT
  churn) at --rate per second (0 = as fast as possible, the default) for
  --seconds (default 60), then print `churn-stopped COUNT` and keep holding.
Exit: on stdin EOF or SIGTERM, exits 0. By default held TCP sockets are
  closed with RST and the process's own TIME_WAITs are destroyed (ss -K), so
  the namespace returns to its baseline; --natural-exit just closes.
";

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

fn install_signals() -> io::Result<()> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction with a plain handler and no flags (so
        // sleeping calls return EINTR) is valid.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{HELP}");
        return ExitCode::SUCCESS;
    }
    let verbose = args.iter().any(|a| a == "-v" || a == "--verbose");
    args.retain(|a| a != "-v" && a != "--verbose");
    let spec = match PopSpec::from_args(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("popgen: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = install_signals() {
        eprintln!("popgen: installing signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    // Stdin EOF (or any read error) means the caller is gone: stop.
    thread::spawn(|| {
        let mut buf = [0u8; 256];
        let mut stdin = io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        STOP.store(true, Ordering::Relaxed);
    });
    let mut out = io::stdout();
    match generator::run(&spec, &mut out, verbose) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("popgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
