//! Placement cost: `Selector::place` (least-loaded) for one CreateTable of 1,024 regions with 3
//! copies, as the cluster grows from 3 to 10,000 datanodes. The ratio to the 3-node time shows
//! how placement scales with the node count (a sort of every node per region would grow about
//! 3,000-fold from 3 to 10,000 nodes; the heap grows with log nodes).
//!
//! Run: `cargo bench --bench placement` (flags: --repeats 20).

mod common;

use std::time::{Duration, Instant};

use common::flag;
use metasrv::catalog::model::Peer;
use metasrv::selector::{Candidate, Selector, SelectorKind};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = !args.iter().any(|a| a == "--bench");
    let repeats: usize = flag(&args, "--repeats").unwrap_or(if smoke { 1 } else { 20 });
    let sizes: &[usize] = if smoke {
        &[3, 100]
    } else {
        &[3, 100, 1_000, 10_000]
    };
    let mut rows = Vec::new();
    for &nodes in sizes {
        let candidates: Vec<Candidate> = (1..=nodes as u64)
            .map(|id| Candidate {
                peer: Peer {
                    id,
                    addr: format!("10.0.{}.{}:4001", id / 256, id % 256),
                },
                regions: (id * 7919) % 1_000,
                rcus: (id * 104_729) % 5_000,
                wcus: (id * 1_299_709) % 5_000,
            })
            .collect();
        let mut times: Vec<Duration> = (0..repeats)
            .map(|_| {
                let mut selector = Selector::new(SelectorKind::LeastLoaded);
                let started = Instant::now();
                let placed = selector.place(&candidates, 1_024, 3).expect("placement");
                let took = started.elapsed();
                assert_eq!(placed.len(), 1_024);
                took
            })
            .collect();
        times.sort_unstable();
        rows.push((nodes, times[times.len() / 2]));
    }
    let base = rows[0].1.as_secs_f64();
    println!(
        "| datanodes | place 1,024 regions x 3 copies (median of {repeats}) | ratio to 3 nodes |"
    );
    println!("|---|---|---|");
    for (nodes, median) in rows {
        println!(
            "| {nodes} | {:.3} ms | {:.1}x |",
            median.as_secs_f64() * 1000.0,
            median.as_secs_f64() / base
        );
    }
}
