//! Shared by the benchmarks: the raw tonic echo server they measure against, and servers under
//! test started as child processes (so their memory can be read and they do not share the load
//! generator's runtime).

#![allow(dead_code)] // each benchmark uses a part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use metasrv::proto::bench::echo_server::{Echo, EchoServer};
use metasrv::proto::v1 as pb;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

pub const CLUSTER: u64 = 1;

pub fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// An in-process metasrv's configuration on loopback port 0 with its data under `data_dir`:
/// the production defaults (1 s heartbeats, 3 s leases), or a fast variant for smoke runs.
pub fn in_process_config(
    smoke: bool,
    cluster_id: u64,
    data_dir: &std::path::Path,
) -> metasrv::Config {
    use metasrv::failure_detector::FailureDetectorConfig;
    use std::time::Duration;
    let defaults = metasrv::Config::default();
    let mut config = if smoke {
        metasrv::Config {
            heartbeat_interval: Duration::from_millis(100),
            region_lease: Duration::from_millis(600),
            failover_safety_margin: Duration::from_millis(200),
            failure_detector: FailureDetectorConfig {
                acceptable_heartbeat_pause: Duration::from_millis(300),
                min_std_deviation: Duration::from_millis(20),
                ..FailureDetectorConfig::default()
            },
            ..defaults
        }
    } else {
        defaults
    };
    config.cluster_id = cluster_id;
    config.store.data_dir = data_dir.join("data");
    config.grpc_addr = "127.0.0.1:0".parse().expect("addr");
    config.http_addr = "127.0.0.1:0".parse().expect("addr");
    config
}

/// The p-th percentile of sorted samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

// ---- The raw echo server (the baseline) ---------------------------------------------------------

struct EchoService {
    route_response: pb::RouteResponse,
}

#[tonic::async_trait]
impl Echo for EchoService {
    type StreamStream = ReceiverStream<Result<pb::HeartbeatResponse, tonic::Status>>;

    async fn stream(
        &self,
        request: tonic::Request<tonic::Streaming<pb::HeartbeatRequest>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(Ok(_request)) = inbound.next().await {
                // The same response metasrv sends for a heartbeat.
                let response = pb::HeartbeatResponse {
                    header: Some(pb::ResponseHeader {
                        cluster_id: CLUSTER,
                        error: None,
                    }),
                    instructions: Vec::new(),
                    heartbeat_interval_millis: 1000,
                    // metasrv grants a (here empty) region lease on every acknowledgement.
                    region_lease: Some(pb::RegionLease {
                        duration_millis: 3000,
                        ..Default::default()
                    }),
                };
                if tx.send(Ok(response)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }

    async fn unary(
        &self,
        _request: tonic::Request<pb::HeartbeatRequest>,
    ) -> Result<tonic::Response<pb::HeartbeatResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::HeartbeatResponse::default()))
    }

    async fn route(
        &self,
        _request: tonic::Request<pb::RouteRequest>,
    ) -> Result<tonic::Response<pb::RouteResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.route_response.clone()))
    }
}

/// Runs the echo server (the child side of [`ServerProcess::echo`]). `--route-response FILE`
/// gives the encoded RouteResponse to answer Route with.
pub fn serve_echo(args: &[String]) {
    let route_response = flag::<String>(args, "--route-response")
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|bytes| pb::RouteResponse::decode(bytes.as_slice()).ok())
        .unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("echo ready grpc={}", listener.local_addr().expect("addr"));
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(EchoService { route_response }))
            .serve_with_incoming(metasrv::server::nodelay_incoming(listener))
            .await
            .expect("echo server");
    });
}

// ---- Servers under test as child processes ----------------------------------------------------

pub struct ServerProcess {
    child: Child,
    pub addr: String,
    /// The HTTP address, for servers that print one (metasrv).
    pub http_addr: Option<String>,
    _dir: tempfile::TempDir,
}

impl ServerProcess {
    fn spawn(mut command: Command, ready_prefix: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // BENCH_SERVER_LOG (a METASRV_LOG filter, e.g. `metasrv::catalog=debug`) shows the
        // server's log on this process's stderr, to see where time goes.
        let server_log = if std::env::var_os("BENCH_SERVER_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        // BENCH_HEAPTRACK=<dir>: record every server's heap with heaptrack's preload library
        // (build with `--features system-allocator`: mimalloc bypasses malloc); then
        // `heaptrack_interpret < <dir>/server-N.raw | gzip > N.gz; heaptrack_print N.gz`.
        if let Some(out) = std::env::var_os("BENCH_HEAPTRACK") {
            static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let raw = std::path::Path::new(&out).join(format!("server-{n}.raw"));
            command
                .env("LD_PRELOAD", "/usr/lib/heaptrack/libheaptrack_preload.so")
                .env("DUMP_HEAPTRACK_OUTPUT", raw);
        }
        let mut child = command
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(server_log)
            .spawn()
            .expect("spawn server");
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with(ready_prefix) => break line,
                Some(Ok(_)) => continue,
                _ => panic!("server exited before it was ready"),
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|p| p.strip_prefix(name))
                .map(str::to_owned)
        };
        let addr = field("grpc=").expect("grpc= in the ready line");
        let http_addr = field("http=");
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            addr,
            http_addr,
            _dir: dir,
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// GET `path` on the HTTP port; the body, or None if the server does not answer.
    pub fn http_get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.http_addr.as_deref()?).ok()?;
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
    }

    /// The raw echo server: this benchmark binary re-run with `--serve-echo`.
    pub fn echo(extra_args: &[&str]) -> Self {
        let mut command = Command::new(std::env::current_exe().expect("own path"));
        command.arg("--serve-echo").args(extra_args);
        Self::spawn(command, "echo ready")
    }

    /// `metasrv start` on port 0 (embedded store in a temp dir unless `extra_args` say else).
    pub fn metasrv(extra_args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_metasrv"));
        command
            .args([
                "start",
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .args(["--cluster-id", &CLUSTER.to_string()])
            .args(extra_args)
            .env(
                "METASRV_LOG",
                std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // The CNS plans and records (its cost is measured) but moves nothing: the simulated
            // datanodes report random loads, and rebalancing them would move regions under
            // the figures these benchmarks take (`benches/cns.rs` measures the CNS itself).
            .env(
                "METASRV_CNS_MODE",
                std::env::var("BENCH_CNS_MODE").unwrap_or_else(|_| "dry-run".into()),
            );
        Self::spawn(command, "metasrv ready")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A member of a metasrv cluster on `etcd`, under `key_prefix`, with `extra_args`.
    pub fn etcd_member(etcd: &str, key_prefix: &str, id: u64, extra_args: &[&str]) -> Self {
        let id = id.to_string();
        let mut args = vec![
            "--backend",
            "etcd",
            "--etcd-endpoints",
            etcd,
            "--etcd-key-prefix",
            key_prefix,
            "--member-id",
            &id,
        ];
        args.extend_from_slice(extra_args);
        Self::metasrv(&args)
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A single-member etcd (`etcd` on PATH, or `$ETCD_BIN`) on free loopback ports.
pub struct EtcdServer {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl EtcdServer {
    /// The etcd process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start() -> Self {
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port")
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new(std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into()))
            .args(["--name", "s1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args([
                "--initial-cluster",
                &format!("s1={peer_url}"),
                "--initial-cluster-state",
                "new",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run etcd (install Debian's etcd-server)");
        let server = Self {
            child,
            endpoint: format!("127.0.0.1:{client}"),
            _dir: dir,
        };
        let started = std::time::Instant::now();
        loop {
            use std::io::{Read, Write};
            if let Ok(mut stream) = std::net::TcpStream::connect(&server.endpoint) {
                let _ = stream.write_all(b"GET /health HTTP/1.0\r\n\r\n");
                let mut body = String::new();
                let _ = stream.read_to_string(&mut body);
                if body.contains("\"health\":\"true\"") {
                    return server;
                }
            }
            assert!(
                started.elapsed().as_secs() < 30,
                "etcd did not become healthy"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
