//! Test harness: real processes and in-process servers on loopback ports, each owning its temp
//! dir and killed in `Drop`. Readiness is awaited with deadlines, never with fixed sleeps.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metasrv::actors::cluster_view::{ClusterView, ListNodes, NodePage, NodeSnapshot, NodeStatus};
use metasrv::store::etcd::{EtcdConfig, EtcdStore};
use metasrv::store::KvBackend;
use metasrv::{Config, Listeners, Metasrv};
use tempfile::TempDir;

/// How long a server may take to become ready before the test fails.
pub const READY_DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port. The port is released before use, so a race with another process is
/// possible; callers that start servers retry on a failed start.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("can bind an ephemeral loopback port")
}

fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    // Keep panic messages readable: the tail is what explains a failure.
    let tail_start = text.len().saturating_sub(4000);
    let tail_start = (tail_start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[tail_start..].to_owned()
}

/// Certificate files for an etcd served over TLS (PEM).
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// A real single-member etcd server (Debian's `etcd-server`, or `$ETCD_BIN`) on free loopback
/// ports with a temp data dir.
pub struct EtcdProcess {
    child: Child,
    pub endpoint: String,
    log_path: PathBuf,
    _dir: TempDir,
}

impl EtcdProcess {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// An etcd that serves clients over TLS only and requires a client certificate signed by
    /// `tls.ca`.
    pub fn start_tls(tls: &EtcdTls) -> Self {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&EtcdTls>) -> Self {
        let mut last_error = String::new();
        for _attempt in 0..3 {
            match Self::try_start(tls) {
                Ok(etcd) => return etcd,
                Err(e) => last_error = e,
            }
        }
        panic!("etcd did not start after 3 attempts: {last_error}");
    }

    fn try_start(tls: Option<&EtcdTls>) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let client_port = free_port();
        let peer_port = free_port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log_path = dir.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let mut command = Command::new(&bin);
        if let Some(tls) = tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", "s1", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("s1={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| {
                format!("cannot run `{bin}` (install Debian's etcd-server or set ETCD_BIN): {e}")
            })?;
        let mut etcd = Self {
            child,
            endpoint: format!("127.0.0.1:{client_port}"),
            log_path,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            // Over TLS (client certificates required) the plain /health probe cannot be used:
            // a listening port is the signal, and callers retry their first request (bounded).
            let ready = if tls.is_some() {
                TcpStream::connect(&etcd.endpoint).is_ok()
            } else {
                etcd.healthy()
            };
            if ready {
                return Ok(etcd);
            }
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(format!(
                    "etcd exited with {status}; log:\n{}",
                    read_log(&etcd.log_path)
                ));
            }
            if started.elapsed() > READY_DEADLINE {
                return Err(format!(
                    "etcd not healthy after {READY_DEADLINE:?}; log:\n{}",
                    read_log(&etcd.log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// etcd's own `/health` says `"health":"true"`.
    fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(&self.endpoint) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream
            .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response.contains("\"health\":\"true\"")
    }

    pub fn config(&self, key_prefix: &str) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.endpoint.clone()],
            key_prefix: key_prefix.to_owned(),
            ..EtcdConfig::default()
        }
    }

    /// A store on this etcd under `{key_prefix}/{cluster_id}/`.
    pub async fn store(&self, key_prefix: &str, cluster_id: u64) -> Arc<dyn KvBackend> {
        Arc::new(
            EtcdStore::connect(&self.config(key_prefix), cluster_id)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to test etcd: {e}")),
        )
    }
}

/// A well-formed full heartbeat of `node_id` with no regions, for raw streams.
pub fn raw_heartbeat(cluster_id: u64, node_id: u64) -> metasrv::proto::v1::HeartbeatRequest {
    use metasrv::proto::v1 as pb;
    pb::HeartbeatRequest {
        header: metasrv::client::header(cluster_id, node_id),
        peer: Some(pb::Peer {
            id: node_id,
            addr: format!("127.0.0.1:{}", 5000 + node_id),
        }),
        node_stat: Some(pb::NodeStat::default()),
        instance_id: "raw".into(),
        ..Default::default()
    }
}

/// Sends `signal` (e.g. "STOP", "CONT", "KILL") to process `pid`.
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("can run kill");
    assert!(status.success(), "kill -{signal} failed");
}

impl EtcdProcess {
    /// Sends `signal` (e.g. "STOP", "CONT") to the etcd process.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `metasrv start` process of the binary under test, on port 0, reading its addresses from
/// the "metasrv ready" line it prints.
pub struct MetasrvProcess {
    child: Child,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    log_path: PathBuf,
}

impl MetasrvProcess {
    /// Starts `metasrv start` with `args` (plus port-0 addresses unless given) in `work_dir`,
    /// with `env` added to the environment; logs go to `work_dir/metasrv-<n>.log`.
    pub fn start(work_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = work_dir.join(format!("metasrv-{n}.log"));
        let log = std::fs::File::create(&log_path).expect("can create the metasrv log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_metasrv"));
        command.current_dir(work_dir).arg("start");
        if !args.contains(&"--grpc-addr") {
            command.args(["--grpc-addr", "127.0.0.1:0"]);
        }
        if !args.contains(&"--http-addr") {
            command.args(["--http-addr", "127.0.0.1:0"]);
        }
        // As for in-process servers: the CNS records only, unless the test says otherwise.
        if !env.iter().any(|(name, _)| *name == "METASRV_CNS_MODE") {
            command.env("METASRV_CNS_MODE", "dry-run");
        }
        command
            .args(args)
            .envs(env.iter().copied())
            .env("METASRV_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = command.spawn().expect("can run the metasrv binary");
        let stdout = child.stdout.take().expect("stdout is piped");
        // Read the ready line on a thread so that the deadline holds even if the child hangs.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("metasrv ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(READY_DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "metasrv exited or printed no ready line within {READY_DEADLINE:?}; log:\n{}",
                    read_log(&log_path)
                );
            }
        };
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(name))
                .and_then(|addr| addr.parse().ok())
                .unwrap_or_else(|| panic!("ready line {line:?} has no {name}"))
        };
        Self {
            grpc_addr: field("grpc="),
            http_addr: field("http="),
            child,
            log_path,
        }
    }

    /// Waits (bounded) until this member says it is the serving leader.
    pub async fn wait_until_leader(&self) {
        let http = self.http_addr;
        wait_for(
            "the metasrv to become leader",
            READY_DEADLINE,
            || async move {
                let (_, body) = http_get(http, "/v1/leader").await;
                let json: serde_json::Value = serde_json::from_str(&body).ok()?;
                (json["is_leader"] == true).then_some(())
            },
        )
        .await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "STOP", "CONT") without waiting.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }

    /// Sends `signal` (e.g. "KILL", "TERM") and waits for the process to exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        send_signal(self.pid(), signal);
        self.child.wait().expect("can wait for metasrv")
    }

    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }
}

impl Drop for MetasrvProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A metasrv started with `Metasrv::start` inside the test process, on port-0 listeners.
pub struct TestServer {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub cluster_view: actix::Addr<ClusterView>,
    pub leadership: Arc<metasrv::election::Leadership>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(store: Arc<dyn KvBackend>, mut config: Config) -> Self {
        // Tests that do not exercise the CNS keep it recording only: no rebalancing move may
        // race their own operations (they run past its settle time at most rarely, but then
        // it must not move a region under them).
        if config.cns == metasrv::cns::CnsConfig::default() {
            config.cns.mode = metasrv::cns::decisions::Mode::DryRun;
        }
        config.grpc_addr = "127.0.0.1:0".parse().expect("valid address");
        config.http_addr = "127.0.0.1:0".parse().expect("valid address");
        let listeners = Listeners::bind(&config).await.expect("can bind port 0");
        let grpc_addr = listeners.grpc.local_addr().expect("bound");
        let http_addr = listeners.http.local_addr().expect("bound");
        let metasrv = Metasrv::start(config, store, listeners)
            .await
            .expect("in-process metasrv starts");
        let cluster_view = metasrv.cluster_view().clone();
        let leadership_handle = metasrv.leadership().clone();
        // On etcd the member campaigns first; a single member wins at once.
        let mut leadership = metasrv.leadership().subscribe();
        tokio::time::timeout(READY_DEADLINE, leadership.wait_for(|s| s.serving))
            .await
            .expect("the in-process metasrv becomes leader in time")
            .expect("leadership channel open");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            if let Err(e) = metasrv.serve_until(shutdown).await {
                panic!("in-process metasrv failed: {e}");
            }
        });
        Self {
            grpc_addr,
            http_addr,
            cluster_view,
            leadership: leadership_handle,
            shutdown: Some(tx),
            task,
        }
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        metasrv::client::connect(&self.grpc_addr.to_string())
            .await
            .expect("can connect to the in-process metasrv")
    }

    /// Asks for a graceful shutdown and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("server stops within 10s")
            .expect("server task did not panic");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A minimal HTTP GET; returns (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path).await
}

/// A minimal HTTP request without a body; returns (status code, body).
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_request_with_body(addr, method, path, "").await
}

/// A minimal HTTP/1.1 request (one per connection) with a JSON body (none if empty); returns
/// (status code, body).
pub async fn http_request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("can connect to the HTTP port");
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("can send the request");
    // Read up to the end of the body: its Content-Length, or the end of the stream (some
    // servers keep the connection open whatever the request asked).
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if let Some(end) = complete_response(&bytes) {
            bytes.truncate(end);
            break;
        }
        let read = stream
            .read(&mut buffer)
            .await
            .expect("can read the response");
        if read == 0 {
            break;
        }
        bytes.extend_from_slice(&buffer[..read]);
    }
    let response = String::from_utf8_lossy(&bytes).into_owned();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        code,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

/// Where a response with a Content-Length ends, once it is all in `bytes`.
fn complete_response(bytes: &[u8]) -> Option<usize> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))?
        .trim()
        .parse()
        .ok()?;
    (bytes.len() >= head_end + length).then_some(head_end + length)
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// One member of an [`EtcdCluster`].
struct EtcdMember {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

/// A real multi-member etcd cluster on loopback ports; members can be stopped and restarted
/// (with their data) to test quorum loss.
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
    initial_cluster: String,
}

impl EtcdCluster {
    pub fn start(size: usize) -> Self {
        let members: Vec<EtcdMember> = (0..size)
            .map(|i| EtcdMember {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
        };
        for i in 0..size {
            cluster.start_member(i);
        }
        cluster.wait_healthy();
        cluster
    }

    /// (Re)starts member `i` on its ports and data dir.
    pub fn start_member(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster.clone();
        let member = &mut self.members[i];
        let client_url = format!("http://127.0.0.1:{}", member.client_port);
        let peer_url = format!("http://127.0.0.1:{}", member.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(member.dir.path().join("etcd.log"))
            .expect("etcd log");
        let log_err = log.try_clone().expect("etcd log");
        let child = Command::new(std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into()))
            .args(["--name", &member.name, "--data-dir"])
            .arg(member.dir.path().join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("run etcd (install Debian's etcd-server or set ETCD_BIN)");
        member.child = Some(child);
    }

    /// Kills member `i` (its data stays for a restart).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running member that is etcd's raft leader now, if one answers as such.
    pub async fn leader_index(&self) -> Option<usize> {
        for (i, member) in self.members.iter().enumerate() {
            if member.child.is_none() {
                continue;
            }
            let endpoint = format!("127.0.0.1:{}", member.client_port);
            let Ok(mut client) = etcd_client::Client::connect([endpoint], None).await else {
                continue;
            };
            let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(2), client.status()).await
            else {
                continue;
            };
            if status.header().map(|h| h.member_id()) == Some(status.leader()) {
                return Some(i);
            }
        }
        None
    }

    /// Client endpoints of every member, comma separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until a running member reports the cluster healthy (it has a raft leader).
    pub fn wait_healthy(&self) {
        self.wait_healthy_where(|_| true)
    }

    /// Waits until member `i` itself reports healthy (it rejoined and knows the leader).
    pub fn wait_member_healthy(&self, i: usize) {
        self.wait_healthy_where(|j| j == i)
    }

    fn wait_healthy_where(&self, which: impl Fn(usize) -> bool) {
        let started = Instant::now();
        loop {
            for (_, member) in self
                .members
                .iter()
                .enumerate()
                .filter(|(j, m)| m.child.is_some() && which(*j))
            {
                let Ok(mut stream) = TcpStream::connect(("127.0.0.1", member.client_port)) else {
                    continue;
                };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n");
                let mut response = String::new();
                let _ = stream.read_to_string(&mut response);
                if response.contains("\"health\":\"true\"") {
                    return;
                }
            }
            if started.elapsed() > READY_DEADLINE {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| read_log(&m.dir.path().join("etcd.log")))
                    .collect();
                panic!(
                    "the etcd cluster is not healthy after {READY_DEADLINE:?}; logs:\n{logs:#?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }
}

/// Every node an in-process ClusterView knows (None: the view did not answer).
pub async fn listed_nodes(view: &actix::Addr<ClusterView>) -> Option<Vec<NodeSnapshot>> {
    let page = NodePage::ALL;
    view.send(ListNodes { page })
        .await
        .ok()
        .map(|listing| listing.nodes)
}

/// The status ClusterView gives `node_id` (None: unknown).
pub async fn node_status(server: &TestServer, node_id: u64) -> Option<NodeStatus> {
    let nodes = listed_nodes(&server.cluster_view)
        .await
        .expect("cluster view answers");
    nodes
        .into_iter()
        .find(|n| n.id == node_id)
        .map(|n| n.status)
}

/// Waits (bounded) until ClusterView gives `node_id` `status`.
pub async fn wait_status(
    server: &TestServer,
    node_id: u64,
    status: NodeStatus,
    deadline: Duration,
) {
    wait_for(
        &format!("node {node_id} to be {status:?}"),
        deadline,
        || async move { (node_status(server, node_id).await == Some(status)).then_some(()) },
    )
    .await
}
