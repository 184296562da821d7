//! Leader takeover time: 3 metasrv processes over one etcd; the leader is SIGKILLed and the time
//! until another member serves as leader is measured, over repeats (the killed member is
//! restarted as a follower between rounds). With the default 2 s election lease.
//!
//! Run: `cargo bench --bench failover` (flags: --repeats 20 --lease-ttl 2s). Needs `etcd`.

mod common;

use std::time::{Duration, Instant};

use common::{flag, percentile, EtcdServer, ServerProcess};

fn member(etcd: &str, id: u64, ttl: &str) -> ServerProcess {
    ServerProcess::etcd_member(etcd, "/failover-bench", id, &["--election-lease-ttl", ttl])
}

/// (serves as leader, the leader id it names), or None if it does not answer.
fn view(member: &ServerProcess) -> Option<(bool, Option<u64>)> {
    let body = member.http_get("/v1/leader")?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((json["is_leader"] == true, json["leader"]["id"].as_u64()))
}

/// Polls until `check` holds (every 10 ms, at most 30 s).
fn wait(what: &str, check: impl Fn() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve-echo") {
        return common::serve_echo(&args);
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let repeats: usize = flag(&args, "--repeats").unwrap_or(if smoke { 1 } else { 20 });
    let ttl: String = flag(&args, "--lease-ttl").unwrap_or_else(|| "2s".into());
    let etcd = EtcdServer::start();
    let mut members: Vec<ServerProcess> =
        (1..=3).map(|id| member(&etcd.endpoint, id, &ttl)).collect();
    let mut takeovers = Vec::new();
    for round in 0..repeats {
        wait("a leader", || {
            members
                .iter()
                .filter(|m| view(m).is_some_and(|v| v.0))
                .count()
                == 1
        });
        let leader = members
            .iter()
            .position(|m| view(m).is_some_and(|v| v.0))
            .expect("a leader");
        let killed_at = Instant::now();
        members[leader].kill();
        let survivors: Vec<usize> = (0..members.len()).filter(|i| *i != leader).collect();
        wait("a new leader", || {
            survivors
                .iter()
                .any(|&i| view(&members[i]).is_some_and(|v| v.0))
        });
        let takeover = killed_at.elapsed();
        takeovers.push(takeover);
        eprintln!("round {round}: takeover {takeover:?}");
        // Bring the killed member back as a follower for the next round.
        members[leader] = member(&etcd.endpoint, leader as u64 + 1, &ttl);
        wait("the restarted member to know the leader", || {
            view(&members[leader]).is_some_and(|v| v.1.is_some() && !v.0)
        });
    }
    takeovers.sort_unstable();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    println!("| leader takeover after SIGKILL, lease TTL {ttl}, {repeats} rounds | ms |");
    println!("|---|---|");
    println!("| p50 | {:.0} |", ms(percentile(&takeovers, 0.5)));
    println!("| p99 | {:.0} |", ms(percentile(&takeovers, 0.99)));
    println!(
        "| min / max | {:.0} / {:.0} |",
        ms(takeovers.first().copied()),
        ms(takeovers.last().copied())
    );
}
