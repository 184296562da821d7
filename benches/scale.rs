//! Scale benchmark: 10,000 simulated datanodes heartbeating at 1 Hz against two metasrv
//! processes on one etcd, with 1,000,000 routed regions (1,000 tables of 1,000 regions, one copy
//! each). Measured in one run:
//!
//! 1. seeding: the tables are created through CreateTable, a few at a time (informational);
//! 2. steady state over `--seconds`: the leader's CPU (cores) and RSS, and the heartbeat round
//!    trip (request sent to acknowledgement received, as the datanodes see it) p50 / p99;
//! 3. CreateTable of a 1,024-region table (1 and 3 copies), repeated;
//! 4. the failover of one datanode that leads 10,000 regions (SIGKILL-equivalent: its stream
//!    and tasks vanish) until every one of them is led, with a write lease, by a live node;
//! 5. leader takeover: the metasrv leader is SIGKILLed; the time until the other member leads,
//!    serves a route (a fresh client), and has granted leases to every datanode again.
//!
//! The datanodes run in this process and share 100 streams per HTTP/2 connection
//! ([`ChannelPool`]): metasrv still sees one stream per node, but 10,000 connections would need
//! 20,000 descriptors here during a leader change. The figures are compared with the targets
//! of issue 11 and printed as markdown for BENCHMARKS.md.
//!
//! First a baseline at a hundredth of the size (the failed node leads a tenth), then the full
//! run; the report gives both and their ratio.
//!
//! Run: `cargo bench --bench scale` (flags: --nodes 10000 --tables 1000 --regions 1000
//! --victim-regions 10000 --seconds 30 --creates 3 --create-regions 1024 --parallel-creates 4
//! --full-history).
//! Needs `etcd`. Without `--bench` (as `cargo test` runs it) a small smoke run.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{flag, percentile, EtcdServer, ServerProcess, CLUSTER};
use futures::StreamExt;
use metasrv::catalog::model::TableName;
use metasrv::client::{ChannelPool, MetaClient, MetasrvTarget};
use metasrv::sim::workload::host_table;
use metasrv::sim::{SimDatanode, SimDatanodeConfig};

/// The metasrv binary's allocator here too: 10,000 simulated datanodes share the two cores
/// with the metasrv under test, and glibc's malloc was among their largest costs in a profile
/// of the takeover (`BENCH_PERF_TAKEOVER`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Clone)]
struct Plan {
    nodes: u64,
    tables: u32,
    regions: u32,
    victim_regions: u32,
    seconds: u64,
    creates: usize,
    create_regions: u32,
    parallel_creates: usize,
    /// Measure the steady state only once every node's stats history is full (`node_history`
    /// reports: 5 minutes at the defaults), for the memory of a leader that has run a while.
    full_history: bool,
}

/// Starts `perf record` of the whole machine into `output` for `BENCH_PERF_SECONDS` (10 by
/// default), and gives it 300 ms to start. With `BENCH_PERF_DWARF` set, it records `process`
/// alone with DWARF call graphs instead: the frame-pointer stacks of `-g` lose the callers of
/// `memmove` and of most of the standard library.
fn profile_machine(output: &str, process: u32) -> std::process::Child {
    let seconds = std::env::var("BENCH_PERF_SECONDS").unwrap_or_else(|_| "10".into());
    let mut perf = std::process::Command::new("perf");
    if std::env::var_os("BENCH_PERF_DWARF").is_some() {
        let pid = process.to_string();
        perf.args([
            "record",
            "-F",
            "199",
            "--call-graph",
            "dwarf",
            "-p",
            &pid,
            "-o",
            output,
            "--",
            "sleep",
            &seconds,
        ]);
    } else {
        perf.args([
            "record", "-F", "499", "-g", "-a", "-o", output, "--", "sleep", &seconds,
        ]);
    }
    let child = perf.spawn().expect("perf runs");
    std::thread::sleep(Duration::from_millis(300));
    child
}

/// The stats samples the leader keeps for node 1 now (its `history_len`).
fn history_len(member: &ServerProcess) -> Option<u64> {
    let body = member.http_get("/v1/nodes?limit=1")?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["nodes"][0]["history_len"].as_u64()
}

/// `node_history`'s default.
const NODE_HISTORY: u64 = 300;

fn member(etcd: &str, id: u64) -> ServerProcess {
    ServerProcess::etcd_member(etcd, "/scale-bench", id, &[])
}

/// Whether the member serves as leader (false if it does not answer).
fn is_leader(member: &ServerProcess) -> bool {
    member
        .http_get("/v1/leader")
        .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
        .is_some_and(|json| json["is_leader"] == true)
}

/// Polls `check` every 20 ms until it holds; panics naming `what` after `limit`.
async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// CPU seconds the process has used (user + system), from /proc (USER_HZ is 100 on Linux).
fn cpu_seconds(pid: u32) -> f64 {
    cpu_seconds_of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// CPU seconds (user + system) of a `/proc/.../stat` line.
fn cpu_seconds_of(stat: &str) -> f64 {
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds each thread of `pid` has used, with its name, by thread id.
fn thread_cpu_seconds(pid: u32) -> std::collections::BTreeMap<u32, (String, f64)> {
    let mut threads = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let name = stat
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map_or(String::new(), |(name, _)| name.to_owned());
        threads.insert(tid, (name, cpu_seconds_of(&stat)));
    }
    threads
}

/// The busiest threads between two [`thread_cpu_seconds`] samples `seconds` apart, as
/// "name/tid: cores" (the actor arbiters are started in order: ClusterView's first).
fn busiest_threads(
    before: &std::collections::BTreeMap<u32, (String, f64)>,
    after: &std::collections::BTreeMap<u32, (String, f64)>,
    seconds: f64,
) -> String {
    let mut used: Vec<(f64, String)> = after
        .iter()
        .map(|(tid, (name, cpu))| {
            let earlier = before.get(tid).map_or(0.0, |(_, cpu)| *cpu);
            ((cpu - earlier) / seconds, format!("{name}/{tid}"))
        })
        .collect();
    used.sort_by(|a, b| b.0.total_cmp(&a.0));
    used.iter()
        .take(8)
        .map(|(cores, name)| format!("{name}: {cores:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the machine's CPU goes over a window: the leader, the other member, this process
/// (the simulated datanodes), etcd, and the machine's idle and stolen time, in cores.
struct CpuShares {
    at: Instant,
    per_process: Vec<(&'static str, u32, f64)>,
    /// (idle, steal) jiffies from /proc/stat.
    machine: (f64, f64),
}

impl CpuShares {
    fn start(processes: &[(&'static str, u32)]) -> Self {
        Self {
            at: Instant::now(),
            per_process: processes
                .iter()
                .map(|(name, pid)| (*name, *pid, cpu_seconds(*pid)))
                .collect(),
            machine: machine_idle_and_steal(),
        }
    }

    fn report(&self) -> String {
        let seconds = self.at.elapsed().as_secs_f64();
        let mut parts: Vec<String> = self
            .per_process
            .iter()
            .map(|(name, pid, before)| {
                format!("{name} {:.2}", (cpu_seconds(*pid) - before) / seconds)
            })
            .collect();
        let (idle, steal) = machine_idle_and_steal();
        // Jiffies are 1/100 s.
        parts.push(format!(
            "idle {:.2}",
            (idle - self.machine.0) / 100.0 / seconds
        ));
        parts.push(format!(
            "stolen {:.2}",
            (steal - self.machine.1) / 100.0 / seconds
        ));
        format!("cores: {}", parts.join(", "))
    }
}

/// The machine's idle (idle + iowait) and steal jiffies.
fn machine_idle_and_steal() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    (field(3) + field(4), field(7))
}

/// Wall-clock milliseconds since the Unix epoch, to line the figures up with the servers' logs
/// (`BENCH_SERVER_LOG`).
/// How many of `nodes` lost a heartbeat stream so far, by reason (code and the start of the
/// message), most frequent first: a node should lose none outside the takeover.
fn disconnections(nodes: &[Option<SimDatanode>]) -> String {
    let mut by_reason: std::collections::BTreeMap<String, usize> = Default::default();
    let mut nodes_hit = 0;
    for node in nodes.iter().flatten() {
        let mut hit = false;
        for event in node.events() {
            if let metasrv::sim::datanode::SimEvent::Disconnected { reason } = event {
                hit = true;
                let reason = reason.map_or_else(
                    || "ended".to_owned(),
                    |status| {
                        let message: String = status.message().chars().take(70).collect();
                        format!("{:?}: {message}", status.code())
                    },
                );
                *by_reason.entry(reason).or_default() += 1;
            }
        }
        nodes_hit += usize::from(hit);
    }
    let mut reasons: Vec<(String, usize)> = by_reason.into_iter().collect();
    reasons.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let listed: Vec<String> = reasons
        .iter()
        .take(4)
        .map(|(reason, n)| format!("{n} x {reason}"))
        .collect();
    format!("{nodes_hit} nodes lost a stream [{}]", listed.join("; "))
}

fn wall_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let plan = Plan {
        nodes: flag(&args, "--nodes").unwrap_or(if smoke { 12 } else { 10_000 }),
        tables: flag(&args, "--tables").unwrap_or(if smoke { 6 } else { 1_000 }),
        regions: flag(&args, "--regions").unwrap_or(if smoke { 24 } else { 1_000 }),
        victim_regions: flag(&args, "--victim-regions").unwrap_or(if smoke { 24 } else { 10_000 }),
        seconds: flag(&args, "--seconds").unwrap_or(if smoke { 2 } else { 30 }),
        creates: flag(&args, "--creates").unwrap_or(if smoke { 1 } else { 3 }),
        create_regions: flag(&args, "--create-regions").unwrap_or(if smoke { 64 } else { 1024 }),
        parallel_creates: flag(&args, "--parallel-creates").unwrap_or(4),
        full_history: args.iter().any(|a| a == "--full-history"),
    };
    // The baseline, in the same invocation: the same run at a hundredth of the cluster (the
    // failed node still leads a tenth of the regions it leads in the full run).
    let baseline = Plan {
        nodes: (plan.nodes / 100).max(4),
        tables: (plan.tables / 100).max(2),
        victim_regions: (plan.victim_regions / 10).max(1),
        creates: 1,
        // Its nodes' histories take as long to fill, and hold a hundredth as much.
        full_history: false,
        ..plan.clone()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let base = runtime.block_on(run(baseline.clone()));
    let full = runtime.block_on(run(plan.clone()));
    report(&baseline, &base, &plan, &full);
}

/// What one run measured.
struct Figures {
    total_regions: usize,
    victim_regions: usize,
    cores: f64,
    rss: u64,
    /// Node 1's stats samples when `rss` was measured.
    samples_held: u64,
    rss_after: u64,
    acks: usize,
    rtt_p50: f64,
    rtt_p99: f64,
    /// (copies, time) of each large create.
    creates: Vec<(u32, Duration)>,
    failover: Duration,
    leads: Duration,
    routes: Duration,
    heartbeats: Duration,
    seeding: Duration,
}

async fn run(plan: Plan) -> Figures {
    let etcd = EtcdServer::start();
    let mut members = vec![member(&etcd.endpoint, 1), member(&etcd.endpoint, 2)];
    let endpoints: Vec<String> = members.iter().map(|m| m.addr.clone()).collect();
    wait_until("a metasrv leader", Duration::from_secs(30), || {
        members.iter().any(is_leader)
    })
    .await;
    let pool = ChannelPool::new(endpoints.clone(), (plan.nodes as usize).div_ceil(100));
    let interval = Duration::from_secs(1);
    let start_node = |id: u64| {
        SimDatanode::start_on(
            MetasrvTarget::Pooled(pool.clone()),
            SimDatanodeConfig {
                interval,
                ..SimDatanodeConfig::new(CLUSTER, id)
            },
        )
    };
    let meta = Arc::new(
        MetaClient::connect(&endpoints, CLUSTER, 0)
            .await
            .expect("client"),
    );
    let name = |i: u32| TableName::new("greptime", "public", &format!("metrics_{i}"));
    let create = |table: TableName, regions: u32, copies: u32| {
        let meta = meta.clone();
        async move {
            let started = Instant::now();
            let (_, route) = meta
                .create_table(host_table(CLUSTER, &table, regions, copies))
                .await
                .unwrap_or_else(|e| panic!("create {table}: {e}"));
            (started.elapsed(), route)
        }
    };
    let create_many = |tables: std::ops::Range<u32>, at_once: usize| {
        let create = &create;
        async move {
            futures::stream::iter(tables)
                .map(|i| create(name(i), plan.regions, 1))
                .buffer_unordered(at_once)
                .collect::<Vec<_>>()
                .await
        }
    };

    // ---- 1. Seeding ------------------------------------------------------------------------
    // Nodes 1 and 2 alone take the first tables, so node 1 leads `victim_regions` regions;
    // the rest go to the other nodes once they have joined (placement prefers the emptiest).
    let seeding = Instant::now();
    let mut nodes: Vec<Option<SimDatanode>> = vec![Some(start_node(1)), Some(start_node(2))];
    let alive = |nodes: &Vec<Option<SimDatanode>>, since: Instant| {
        nodes
            .iter()
            .flatten()
            .all(|n| n.last_grant_at().is_some_and(|at| at > since))
    };
    wait_until(
        "nodes 1 and 2 to heartbeat",
        Duration::from_secs(30),
        || alive(&nodes, seeding),
    )
    .await;
    let first_tables = (2 * plan.victim_regions)
        .div_ceil(plan.regions)
        .min(plan.tables);
    // One at a time: concurrent creates place from the same counts, and node 1 must end up
    // leading exactly half.
    let first = create_many(0..first_tables, 1).await;
    let victim_tables: Vec<TableName> = first.iter().map(|(_, r)| r.info.name.clone()).collect();
    let victim_regions: Vec<u64> = first
        .iter()
        .flat_map(|(_, r)| r.route.regions.iter())
        .filter(|r| r.leader.id == 1)
        .map(|r| r.region_id)
        .collect();
    // Start the others spread over one heartbeat interval, so their reports are too.
    let joined = Instant::now();
    for id in 3..=plan.nodes {
        nodes.push(Some(start_node(id)));
        if id % 100 == 0 {
            tokio::time::sleep(interval / (plan.nodes as u32 / 100).max(1)).await;
        }
    }
    wait_until("every node to heartbeat", Duration::from_secs(120), || {
        alive(&nodes, joined)
    })
    .await;
    let rest = create_many(first_tables..plan.tables, plan.parallel_creates).await;
    let seeding = seeding.elapsed();
    let total_regions: usize = first
        .iter()
        .chain(&rest)
        .map(|(_, r)| r.route.regions.len())
        .sum();
    eprintln!(
        "seeded {} tables, {total_regions} regions on {} nodes in {seeding:?}; node 1 leads {}",
        plan.tables,
        plan.nodes,
        victim_regions.len()
    );
    let leader_index = members.iter().position(is_leader).expect("a leader");

    // ---- 2. Steady state -------------------------------------------------------------------
    // One interval for the last creates' reports, then a clean window.
    tokio::time::sleep(interval * 2).await;
    for node in nodes.iter().flatten() {
        node.take_round_trips();
    }
    if plan.full_history {
        wait_until(
            "node histories to fill",
            Duration::from_secs(NODE_HISTORY + 120),
            || history_len(&members[leader_index]).is_some_and(|len| len >= NODE_HISTORY),
        )
        .await;
    }
    let pid = members[leader_index].pid();
    let (cpu_before, window_start) = (cpu_seconds(pid), Instant::now());
    let threads_before = thread_cpu_seconds(pid);
    let other = members[1 - leader_index].pid();
    let processes = [
        ("leader", pid),
        ("follower", other),
        ("datanodes", std::process::id()),
        ("etcd", etcd.pid()),
    ];
    let shares = CpuShares::start(&processes);
    // BENCH_PERF_STEADY=<file>: profile the leader and this process (the simulated
    // datanodes, which share the cores) through the steady window; `perf report --pid`
    // separates them.
    let mut profiler = std::env::var("BENCH_PERF_STEADY").ok().map(|output| {
        let pid = format!("{pid},{}", std::process::id());
        let seconds = plan.seconds.to_string();
        std::process::Command::new("perf")
            .args([
                "record", "-F", "499", "-g", "-p", &pid, "-o", &output, "--", "sleep",
            ])
            .arg(&seconds)
            .spawn()
            .expect("perf runs")
    });
    tokio::time::sleep(Duration::from_secs(plan.seconds)).await;
    if let Some(perf) = profiler.as_mut() {
        let _ = perf.wait();
    }
    let cores = (cpu_seconds(pid) - cpu_before) / window_start.elapsed().as_secs_f64();
    eprintln!("steady: {}", shares.report());
    eprintln!(
        "by the end of the steady window: {}",
        disconnections(&nodes)
    );
    eprintln!(
        "steady: busiest threads of the leader: {}",
        busiest_threads(
            &threads_before,
            &thread_cpu_seconds(pid),
            window_start.elapsed().as_secs_f64()
        )
    );
    let rss = members[leader_index].rss_bytes();
    let samples_held = history_len(&members[leader_index]).unwrap_or(0);
    let mut round_trips: Vec<Duration> = nodes
        .iter()
        .flatten()
        .flat_map(|n| n.take_round_trips())
        .collect();
    round_trips.sort_unstable();
    let rtt = |p: f64| percentile(&round_trips, p).map_or(f64::NAN, ms);
    eprintln!(
        "steady: {cores:.2} cores, RSS {:.0} MiB ({samples_held} of {NODE_HISTORY} history samples per node), heartbeat p50 {:.2} ms p99 {:.2} ms over {} acks",
        mib(rss),
        rtt(0.5),
        rtt(0.99),
        round_trips.len()
    );

    // ---- 3. CreateTable of a large table ---------------------------------------------------
    let mut create_times: Vec<(u32, Duration)> = Vec::new();
    for copies in [1, 3] {
        for i in 0..plan.creates {
            let table = TableName::new("greptime", "public", &format!("large_{copies}_{i}"));
            let (took, route) = create(table, plan.create_regions, copies).await;
            assert_eq!(route.route.regions.len(), plan.create_regions as usize);
            eprintln!(
                "create of {} regions x {copies}: {took:?}",
                plan.create_regions
            );
            create_times.push((copies, took));
        }
    }

    // ---- 4. Failover of a node leading `victim_regions` regions ----------------------------
    // BENCH_PERF_FAILOVER=<file>: profile the whole machine through the failover (the leader,
    // the datanodes and etcd share the cores); the pids are printed for `perf report --pid`.
    let failover_profiler = std::env::var("BENCH_PERF_FAILOVER").ok().map(|output| {
        eprintln!(
            "failover profile: leader pid {}, datanodes pid {}, etcd pid {}",
            pid,
            std::process::id(),
            etcd.pid()
        );
        profile_machine(&output, pid)
    });
    let victim_set: std::collections::HashSet<u64> = victim_regions.iter().copied().collect();
    let promotions = |nodes: &[Option<SimDatanode>]| -> u64 {
        nodes.iter().skip(1).flatten().map(|n| n.promotions()).sum()
    };
    let promotions_before = promotions(&nodes);
    let killed_at = Instant::now();
    eprintln!("killing node 1 at unix ms {}", wall_ms());
    let failover_threads = thread_cpu_seconds(pid);
    let shares = CpuShares::start(&processes);
    nodes[0].take().expect("node 1").kill();
    // Tables whose every region of the victim's is led again (routed to a live node that
    // holds it as leader) are not asked for again: regions do not move back during the
    // failover, and asking for all of them every poll (10,000 regions' routes, 50 times a
    // second) took the cores the failover and the heartbeats share with this process.
    let mut done_tables: std::collections::HashSet<TableName> = Default::default();
    let failover = loop {
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "regions of the killed node not all led again within 60 s"
        );
        // Routes are asked for only once the live datanodes have been promoted as many times
        // as the killed node led regions (each of its regions needs one promotion before a
        // route can name a live leader of it): asking for every victim table's route each
        // poll before that (1,000,000 regions' routes a poll at 10,000 tables of 100) took the
        // cores the failover shares with this process.
        if promotions(&nodes) - promotions_before < victim_regions.len() as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let pending: Vec<TableName> = victim_tables
            .iter()
            .filter(|table| !done_tables.contains(*table))
            .cloned()
            .collect();
        // A hundred tables per Route request, four requests at a time: one request per table
        // made the poll itself seconds long at full scale (each request queued behind 10,000
        // heartbeats a second), and the figure is only as fine as a poll.
        let answers: Vec<_> = futures::stream::iter(pending.chunks(100))
            .map(|chunk| {
                for table in chunk {
                    meta.invalidate(table);
                }
                meta.routes(chunk)
            })
            .buffer_unordered(4)
            .collect()
            .await;
        for routes in answers.into_iter().flatten() {
            for route in &routes {
                let all_led_again = route
                    .route
                    .regions
                    .iter()
                    .filter(|r| victim_set.contains(&r.region_id))
                    .all(|r| {
                        r.leader.id != 1
                            && nodes[(r.leader.id - 1) as usize].as_ref().is_some_and(|n| {
                                n.role_of(r.region_id) == Some(metasrv::stats::RegionRole::Leader)
                            })
                    });
                if all_led_again {
                    done_tables.insert(route.info.name.clone());
                }
            }
        }
        if done_tables.len() == victim_tables.len() {
            break killed_at.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Some(mut profiler) = failover_profiler {
        // The takeover's profile must not overlap it.
        let _ = profiler.wait();
    }
    eprintln!("failover: {}", shares.report());
    eprintln!("by the end of the failover: {}", disconnections(&nodes));
    eprintln!(
        "failover of {} regions: {failover:?}; busiest threads of the leader meanwhile: {}",
        victim_regions.len(),
        busiest_threads(
            &failover_threads,
            &thread_cpu_seconds(pid),
            failover.as_secs_f64()
        )
    );

    // ---- 5. Leader takeover after SIGKILL ----------------------------------------------------
    let survivor = 1 - leader_index;
    // BENCH_PERF_TAKEOVER=<file>: profile the whole machine through the takeover (perf
    // record -a: the new leader, and the datanodes it competes with for the cores); the new
    // leader's pid is printed for `perf report --pid`.
    let _profiler = std::env::var("BENCH_PERF_TAKEOVER").ok().map(|output| {
        eprintln!("new leader: pid {}", members[survivor].pid());
        profile_machine(&output, members[survivor].pid())
    });
    let killed_at = Instant::now();
    eprintln!("killing the metasrv leader at unix ms {}", wall_ms());
    let survivor_threads = thread_cpu_seconds(members[survivor].pid());
    let shares = CpuShares::start(&[
        ("new leader", members[survivor].pid()),
        ("datanodes", std::process::id()),
        ("etcd", etcd.pid()),
    ]);
    members[leader_index].kill();
    let leads = wait_until("the other member to lead", Duration::from_secs(60), || {
        is_leader(&members[survivor])
    })
    .await;
    let survivor_addr = vec![members[survivor].addr.clone()];
    let probe_table = name(plan.tables - 1);
    let routes = loop {
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "no route served within 60 s"
        );
        if let Ok(client) = MetaClient::connect(&survivor_addr, CLUSTER, 0).await {
            if client.route(&probe_table).await.is_ok() {
                break killed_at.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Each node's first stream to the new leader and first grant from it, as seen by polling
    // (every 20 ms, well inside the 1 s between a node's reports).
    let live: Vec<&SimDatanode> = nodes.iter().flatten().collect();
    let mut reconnected: Vec<Option<Duration>> = vec![None; live.len()];
    let mut granted: Vec<Option<Duration>> = vec![None; live.len()];
    wait_until(
        "every live node to be granted leases by the new leader",
        Duration::from_secs(60),
        || {
            for (i, node) in live.iter().enumerate() {
                let after_kill = |at: Option<Instant>| {
                    at.filter(|at| *at > killed_at)
                        .map(|at| at.duration_since(killed_at))
                };
                reconnected[i] = reconnected[i].or_else(|| after_kill(node.last_connected_at()));
                granted[i] = granted[i].or_else(|| after_kill(node.last_grant_at()));
            }
            granted.iter().all(Option::is_some)
        },
    )
    .await;
    let heartbeats = killed_at.elapsed();
    eprintln!("takeover: {}", shares.report());
    eprintln!(
        "takeover: busiest threads of the new leader: {}",
        busiest_threads(
            &survivor_threads,
            &thread_cpu_seconds(members[survivor].pid()),
            heartbeats.as_secs_f64()
        )
    );
    let spread = |times: &[Option<Duration>]| {
        let mut times: Vec<Duration> = times.iter().flatten().copied().collect();
        times.sort_unstable();
        (percentile(&times, 0.5), percentile(&times, 1.0))
    };
    // Deciles, to see the shape of the reconnection burst and not only its ends.
    let deciles = |times: &[Option<Duration>]| {
        let mut times: Vec<Duration> = times.iter().flatten().copied().collect();
        times.sort_unstable();
        (1..=10)
            .map(|d| {
                percentile(&times, d as f64 / 10.0)
                    .map_or(f64::NAN, ms)
                    .round()
            })
            .collect::<Vec<_>>()
    };
    eprintln!(
        "takeover deciles (ms): streams reopened {:?}, granted {:?}",
        deciles(&reconnected),
        deciles(&granted)
    );
    let (reconnect_p50, reconnect_max) = spread(&reconnected);
    let (granted_p50, granted_max) = spread(&granted);
    eprintln!(
        "takeover: leads {leads:?}, routes {routes:?}, streams reopened p50 {reconnect_p50:?} \
         max {reconnect_max:?}, granted p50 {granted_p50:?} max {granted_max:?}, every node \
         granted {heartbeats:?}"
    );
    eprintln!("by the end of the takeover: {}", disconnections(&nodes));
    let rss_after = members[survivor].rss_bytes();

    drop(nodes);
    drop(members);
    drop(etcd);
    Figures {
        total_regions,
        victim_regions: victim_regions.len(),
        cores,
        rss,
        samples_held,
        rss_after,
        acks: round_trips.len(),
        rtt_p50: rtt(0.5),
        rtt_p99: rtt(0.99),
        creates: create_times,
        failover,
        leads,
        routes,
        heartbeats,
        seeding,
    }
}

fn report(base_plan: &Plan, base: &Figures, plan: &Plan, full: &Figures) {
    let creates = |figures: &Figures, copies: u32| {
        let mut times: Vec<Duration> = figures
            .creates
            .iter()
            .filter(|(c, _)| *c == copies)
            .map(|(_, t)| *t)
            .collect();
        times.sort_unstable();
        times.last().copied().map_or(f64::NAN, ms)
    };
    let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
    let shape = |p: &Plan, f: &Figures| {
        format!(
            "{} nodes, {} regions ({} x {})",
            p.nodes, f.total_regions, p.tables, p.regions
        )
    };
    println!(
        "\nBaseline: {}; measured: {}. Datanodes at 1 Hz, one copy per region, two metasrv members on etcd.",
        shape(base_plan, base),
        shape(plan, full)
    );
    println!("\n| measure | baseline | at scale | ratio | target | |");
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, unit: &str, b: f64, f: f64, target: &str, ok: Option<bool>| {
        println!(
            "| {name} | {b:.2} {unit} | {f:.2} {unit} | {:.2}x | {target} | {} |",
            f / b,
            ok.map_or("", verdict)
        );
    };
    row(
        "leader CPU, steady state",
        "cores",
        base.cores,
        full.cores,
        "",
        None,
    );
    row(
        "leader RSS, steady state",
        "MiB",
        mib(base.rss),
        mib(full.rss),
        "< 1024 MiB",
        Some(full.rss < 1 << 30),
    );
    row(
        "new leader RSS after takeover",
        "MiB",
        mib(base.rss_after),
        mib(full.rss_after),
        "< 1024 MiB",
        Some(full.rss_after < 1 << 30),
    );
    row(
        "heartbeat round trip p50",
        "ms",
        base.rtt_p50,
        full.rtt_p50,
        "",
        None,
    );
    row(
        "heartbeat round trip p99",
        "ms",
        base.rtt_p99,
        full.rtt_p99,
        "< 50 ms",
        Some(full.rtt_p99 < 50.0),
    );
    let (b1, f1) = (creates(base, 1), creates(full, 1));
    row(
        &format!(
            "CreateTable, {} regions x 1 copy (max)",
            plan.create_regions
        ),
        "ms",
        b1,
        f1,
        "< 1000 ms",
        Some(f1 < 1000.0),
    );
    row(
        &format!(
            "CreateTable, {} regions x 3 copies (max)",
            plan.create_regions
        ),
        "ms",
        creates(base, 3),
        creates(full, 3),
        "",
        None,
    );
    row(
        &format!(
            "failover, all regions led again ({} / {} regions)",
            base.victim_regions, full.victim_regions
        ),
        "ms",
        ms(base.failover),
        ms(full.failover),
        "< 5000 ms",
        Some(full.failover < Duration::from_secs(5)),
    );
    row(
        "takeover after SIGKILL: the other member leads",
        "ms",
        ms(base.leads),
        ms(full.leads),
        "",
        None,
    );
    row(
        "takeover: serves routes",
        "ms",
        ms(base.routes),
        ms(full.routes),
        "< 5000 ms",
        Some(full.routes < Duration::from_secs(5)),
    );
    row(
        "takeover: every datanode granted leases again",
        "ms",
        ms(base.heartbeats),
        ms(full.heartbeats),
        "< 5000 ms",
        Some(full.heartbeats < Duration::from_secs(5)),
    );
    row(
        "seeding through CreateTable",
        "s",
        base.seeding.as_secs_f64(),
        full.seeding.as_secs_f64(),
        "",
        None,
    );
    println!(
        "\n({} / {} heartbeat acknowledgements measured; at the RSS measurement each node's \
         stats history held {} / {} of its {NODE_HISTORY} samples.)",
        base.acks, full.acks, base.samples_held, full.samples_held
    );
}
