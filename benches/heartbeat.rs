//! Heartbeat benchmark: messages per second through metasrv's heartbeat pipeline (tonic ->
//! HeartbeatSession actor -> ClusterView) against a raw tonic bidirectional echo server with the
//! same message types and sizes, measured in the same run; round-trip percentiles; 10,000
//! streams at 1 Hz; and the server's memory per connected node.
//!
//! Both servers run as child processes of this binary (so their memory can be read from /proc),
//! the load generator runs here. Run:
//!
//!     cargo bench --bench heartbeat
//!     cargo bench --bench heartbeat -- --streams 1000,10000 --seconds 10 --rate-seconds 15
//!
//! Results are printed as a markdown table for BENCHMARKS.md.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{flag, ServerProcess, CLUSTER};
use metasrv::proto::bench::echo_client::EchoClient;
use metasrv::proto::v1 as pb;
use metasrv::proto::v1::heartbeat_client::HeartbeatClient;
use metasrv::sim::{sample_request, SimDatanodeConfig};
use tokio::sync::{mpsc, Barrier};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Streams per HTTP/2 connection (under h2's default concurrent-stream cap of 200).
const STREAMS_PER_CONNECTION: usize = 100;
/// Regions each simulated node reports (sizes the request like a small datanode's).
const REGIONS_PER_NODE: u64 = 4;

// ---- Load generation ----------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Echo,
    Metasrv,
}

/// How each stream sends.
#[derive(Clone, Copy)]
enum Pace {
    /// As fast as responses come back (one request in flight per stream).
    ClosedLoop,
    /// One request per period, phases spread evenly over the period.
    Every(Duration),
}

struct RunResult {
    messages: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    rss_connected: u64,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

async fn open_stream(
    target: Target,
    channel: Channel,
    first: pb::HeartbeatRequest,
) -> (
    mpsc::Sender<pb::HeartbeatRequest>,
    tonic::Streaming<pb::HeartbeatResponse>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(first).await.expect("queue the first request");
    let responses = match target {
        Target::Echo => EchoClient::new(channel)
            .stream(ReceiverStream::new(rx))
            .await
            .expect("open echo stream")
            .into_inner(),
        Target::Metasrv => HeartbeatClient::new(channel)
            .heartbeat(ReceiverStream::new(rx))
            .await
            .expect("open heartbeat stream")
            .into_inner(),
    };
    (tx, responses)
}

async fn run_load(
    server: &ServerProcess,
    target: Target,
    streams: usize,
    pace: Pace,
    duration: Duration,
) -> RunResult {
    let connections = streams.div_ceil(STREAMS_PER_CONNECTION);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(
            metasrv::client::connect(&server.addr)
                .await
                .expect("connect"),
        );
    }
    // Everyone connects and gets a first answer, then the measured window starts together.
    let ready = Arc::new(Barrier::new(streams + 1));
    let go = Arc::new(Barrier::new(streams + 1));
    let mut tasks = Vec::with_capacity(streams);
    for i in 0..streams {
        let channel = channels[i % connections].clone();
        let ready = ready.clone();
        let go = go.clone();
        let node_id = i as u64 + 1;
        let config = SimDatanodeConfig {
            regions: (0..REGIONS_PER_NODE).map(|r| (node_id << 32) | r).collect(),
            ..SimDatanodeConfig::new(CLUSTER, node_id)
        };
        let request = sample_request(&config, &uuid::Uuid::new_v4().to_string());
        tasks.push(tokio::spawn(async move {
            let (tx, mut responses) = open_stream(target, channel, request.clone()).await;
            responses
                .next()
                .await
                .expect("first response")
                .expect("first response ok");
            ready.wait().await;
            go.wait().await;
            let started = Instant::now();
            let mut latencies = Vec::new();
            let mut ticker = match pace {
                Pace::ClosedLoop => None,
                Pace::Every(period) => {
                    let phase = period.mul_f64(i as f64 / streams as f64);
                    let mut ticker =
                        tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    Some(ticker)
                }
            };
            while started.elapsed() < duration {
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                    if started.elapsed() >= duration {
                        break;
                    }
                }
                let sent = Instant::now();
                if tx.send(request.clone()).await.is_err() {
                    break;
                }
                match responses.next().await {
                    Some(Ok(_)) => latencies.push(sent.elapsed().as_micros() as u32),
                    _ => break,
                }
            }
            latencies
        }));
    }
    ready.wait().await;
    // Give the server a moment to settle allocations, then read its memory with all connected.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = server.rss_bytes();
    go.wait().await;
    let started = Instant::now();
    let mut latencies_us = Vec::new();
    for task in tasks {
        latencies_us.extend(task.await.expect("stream task"));
    }
    let elapsed = started
        .elapsed()
        .min(duration.max(Duration::from_millis(1)));
    latencies_us.sort_unstable();
    RunResult {
        messages: latencies_us.len() as u64,
        elapsed,
        latencies_us,
        rss_connected,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve-echo") {
        return common::serve_echo(&args);
    }
    // `cargo bench` passes --bench; under `cargo test` this binary runs a seconds-long smoke
    // version, so the test suite proves the benchmark still works without paying for it.
    let smoke = !args.iter().any(|a| a == "--bench");
    let streams: Vec<usize> = args
        .iter()
        .position(|a| a == "--streams")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|s| s.parse().ok()).collect())
        .unwrap_or_else(|| if smoke { vec![20] } else { vec![1000, 10_000] });
    let seconds: u64 = flag(&args, "--seconds").unwrap_or(if smoke { 1 } else { 10 });
    let rate_seconds: u64 = flag(&args, "--rate-seconds").unwrap_or(if smoke { 2 } else { 15 });
    let rate_streams: usize =
        flag(&args, "--rate-streams").unwrap_or(if smoke { 20 } else { 10_000 });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("| streams | raw echo msgs/s | metasrv msgs/s | ratio | echo p50 / p99 ms | metasrv p50 / p99 ms |");
        println!("|---|---|---|---|---|---|");
        for &n in &streams {
            let duration = Duration::from_secs(seconds);
            let echo_server = ServerProcess::echo(&[]);
            let echo = run_load(&echo_server, Target::Echo, n, Pace::ClosedLoop, duration).await;
            drop(echo_server);
            let metasrv_server = ServerProcess::metasrv(&[]);
            let meta = run_load(&metasrv_server, Target::Metasrv, n, Pace::ClosedLoop, duration).await;
            drop(metasrv_server);
            assert!(echo.messages > 0 && meta.messages > 0, "a load run answered nothing");
            println!(
                "| {n} | {:.0} | {:.0} | {:.0}% | {:.2} / {:.2} | {:.2} / {:.2} |",
                echo.rate(),
                meta.rate(),
                100.0 * meta.rate() / echo.rate(),
                echo.percentile_ms(0.5),
                echo.percentile_ms(0.99),
                meta.percentile_ms(0.5),
                meta.percentile_ms(0.99),
            );
        }

        let metasrv_server = ServerProcess::metasrv(&[]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle_rss = metasrv_server.rss_bytes();
        let period = Duration::from_secs(1);
        let paced = run_load(
            &metasrv_server,
            Target::Metasrv,
            rate_streams,
            Pace::Every(period),
            Duration::from_secs(rate_seconds),
        )
        .await;
        let rss_after = metasrv_server.rss_bytes();
        // Each stream sends one heartbeat per period; a lost answer would show here.
        assert!(
            paced.messages as f64 >= 0.9 * (rate_streams as u64 * rate_seconds) as f64,
            "paced run answered only {} heartbeats",
            paced.messages
        );
        let per_node = paced.rss_connected.saturating_sub(idle_rss) as f64 / rate_streams as f64;
        let per_node_after = rss_after.saturating_sub(idle_rss) as f64 / rate_streams as f64;
        println!();
        println!("| {rate_streams} streams at 1 Hz for {rate_seconds}s | value |");
        println!("|---|---|");
        println!("| heartbeats answered | {} ({:.0}/s) |", paced.messages, paced.rate());
        println!("| round trip p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |",
            paced.percentile_ms(0.5), paced.percentile_ms(0.99), paced.percentile_ms(1.0));
        println!("| metasrv RSS idle / connected | {:.1} / {:.1} MiB |",
            idle_rss as f64 / 1048576.0, paced.rss_connected as f64 / 1048576.0);
        println!("| metasrv RSS after the run | {:.1} MiB |", rss_after as f64 / 1048576.0);
        println!("| memory per connected node (connected / after {rate_seconds}s of history) | {:.1} / {:.1} KiB |",
            per_node / 1024.0, per_node_after / 1024.0);
    });
}
