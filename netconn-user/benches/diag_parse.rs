//! sock_diag parsing: the in-place parser in `kernel::diag` against the
//! netlink-packet-sock-diag crate's full message parse, on the same
//! synthetic datagrams. Run by `cargo xtask bench --part diag`.

use std::{hint::black_box, time::Instant};

use netconn_user::kernel::diag::bench;

fn main() {
    const ROWS: usize = 200;
    const ROUNDS: usize = 2_000;
    let data = bench::datagram(ROWS);
    assert_eq!(bench::parse_in_place(&data), ROWS);
    assert_eq!(bench::parse_with_crate(&data), ROWS);
    let time = |f: fn(&[u8]) -> usize| {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..ROUNDS {
                black_box(f(black_box(&data)));
            }
            best = best.min(t.elapsed().as_nanos() as f64 / (ROUNDS * ROWS) as f64);
        }
        best
    };
    let in_place = time(bench::parse_in_place);
    let with_crate = time(bench::parse_with_crate);
    println!("sock_diag parse, {ROWS}-row datagrams, best of 5 x {ROUNDS}:");
    println!("  in place (kernel::diag)        {in_place:>7.1} ns/row");
    println!("  netlink-packet-sock-diag       {with_crate:>7.1} ns/row");
    println!(
        "  ratio                          {:>7.1}x",
        with_crate / in_place
    );
}
