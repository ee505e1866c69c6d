//! A test program that leaks (or, with `--healthy`, does not leak) CLOSE_WAIT
//! sockets at a steady rate: it listens on `--port`, connects to itself
//! `--rate` times a second, the client side closes at once, and the accepted
//! side is kept open forever (leak) or closed (healthy). Prints `ready`.
//! A line `release` on stdin closes every kept socket and stops leaking
//! (the connection rate stays the same); EOF exits.

use std::{
    io::{BufRead as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

fn main() -> std::process::ExitCode {
    let mut port = 7300u16;
    let mut rate = 10u32;
    let mut healthy = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|v| v.parse().ok()).unwrap_or(port),
            "--rate" => rate = args.next().and_then(|v| v.parse().ok()).unwrap_or(rate),
            "--healthy" => healthy = true,
            other => {
                eprintln!("leaker: unknown argument {other}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("leaker: bind 127.0.0.1:{port}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let kept: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let leaking = Arc::new(AtomicBool::new(!healthy));
    {
        let kept = Arc::clone(&kept);
        let leaking = Arc::clone(&leaking);
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                if !leaking.load(Ordering::Relaxed) {
                    // Read until the peer's FIN, then close: no CLOSE_WAIT
                    // left behind (briefly one, as in any healthy server).
                    std::thread::spawn(move || {
                        let mut conn = conn;
                        let _ = std::io::copy(&mut conn, &mut std::io::sink());
                    });
                } else if let Ok(mut k) = kept.lock() {
                    k.push(conn);
                }
            }
        });
    }
    std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0u64.. {
            let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate.max(1)));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if let Ok(c) = TcpStream::connect(("127.0.0.1", port)) {
                drop(c);
            }
        }
    });
    println!("ready");
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        if line.trim() == "release"
            && let Ok(mut k) = kept.lock()
        {
            leaking.store(false, Ordering::Relaxed);
            k.clear();
            // The test may have stopped reading: ignore a closed stdout.
            let _ = writeln!(std::io::stdout(), "released");
        }
    }
    std::process::ExitCode::SUCCESS
}
