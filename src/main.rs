//! The `metasrv` binary: parses configuration (file, then `METASRV_*` environment, then flags),
//! sets up logging, opens the store, binds the sockets, and hands over to `metasrv::run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metasrv::config::Backend;
use metasrv::{Config, Listeners};
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: at a million regions the leader's heap churns through a
/// report per datanode per second, and glibc's per-thread arenas kept hundreds of MiB freed but
/// unreturned (the scale benchmark's leader: 1,018 MiB with glibc; see BENCHMARKS.md).
/// The `system-allocator` feature keeps glibc's, for heap profilers that hook malloc
/// (heaptrack: `BENCH_HEAPTRACK` in the benchmarks). Built with `no_thp`: mimalloc would ask
/// for transparent huge pages, and a new leader rebuilding its state then faulted in and
/// zeroed 2 MiB at a time (a quarter of its CPU through a takeover at full scale, and about
/// 250 MiB more RSS after it; see BENCHMARKS.md).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "metasrv",
    version,
    about = "Metadata, routing and scheduling server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a metasrv. With no arguments: standalone, on the embedded store under ./data.
    Start(Box<StartArgs>),
    /// Operates a running cluster: status, nodes, tables, routes, procedures, maintenance,
    /// leadership, the user key space, region migration, leader transfer and node drain.
    Ctl(Box<metasrv::ctl::CtlArgs>),
    /// Prints the SHA-256 of a bearer token, as `[[security.tokens]] sha256` stores it.
    HashToken {
        /// The token (read from standard input when omitted, so it stays out of shell history).
        token: Option<String>,
    },
}

#[derive(clap::Args, Default)]
struct StartArgs {
    /// A TOML config file; environment variables (METASRV_*) and flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:3002]; port 0 picks a free port.
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// HTTP listen address for /health and /metrics [default: 127.0.0.1:4002].
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Metadata store backend [default: embedded].
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Directory of the embedded store [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// etcd client endpoints, comma separated (with --backend etcd).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Option<Vec<String>>,
    /// etcd key prefix; keys live under {prefix}/{cluster_id}/ [default: /metasrv].
    #[arg(long)]
    etcd_key_prefix: Option<String>,
    /// Cluster id [default: 0].
    #[arg(long)]
    cluster_id: Option<u64>,
    /// This replica's member id [default: 1].
    #[arg(long)]
    member_id: Option<u64>,
    /// This replica's name [default: metasrv-{member_id}].
    #[arg(long)]
    member_name: Option<String>,
    /// TTL of the etcd lease behind this member's candidacy, e.g. 3s [default: 3s].
    #[arg(long, value_parser = humantime::parse_duration)]
    election_lease_ttl: Option<Duration>,
    /// Heartbeat interval asked of datanodes, e.g. 1s or 500ms [default: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
    /// PEM certificate chain: with --tls-key, gRPC and HTTP serve TLS only.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CA that every client certificate must chain to (mutual TLS).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
}

impl StartArgs {
    /// File, then environment, then flags.
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_toml_file(path)?,
            None => Config::default(),
        };
        config.apply_env(std::env::vars())?;
        if let Some(v) = self.grpc_addr {
            config.grpc_addr = v;
        }
        if let Some(v) = self.http_addr {
            config.http_addr = v;
        }
        if let Some(v) = self.backend {
            config.store.backend = v;
        }
        if let Some(v) = self.data_dir {
            config.store.data_dir = v;
        }
        if let Some(v) = self.etcd_endpoints {
            config.etcd.endpoints = v;
        }
        if let Some(v) = self.etcd_key_prefix {
            config.etcd.key_prefix = v;
        }
        if let Some(v) = self.cluster_id {
            config.cluster_id = v;
        }
        if let Some(v) = self.member_id {
            config.member_id = v;
        }
        if let Some(v) = self.member_name {
            config.member_name = Some(v);
        }
        if let Some(v) = self.election_lease_ttl {
            config.election_lease_ttl = v;
        }
        if let Some(v) = self.heartbeat_interval {
            config.heartbeat_interval = v;
        }
        if let Some(v) = self.tls_cert {
            config.security.tls_cert = Some(v);
        }
        if let Some(v) = self.tls_key {
            config.security.tls_key = Some(v);
        }
        if let Some(v) = self.tls_client_ca {
            config.security.tls_client_ca = Some(v);
        }
        config.validate()?;
        Ok(config)
    }
}

fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("METASRV_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let cli = Cli::parse();
    let args = match cli.command {
        Command::Start(args) => *args,
        Command::Ctl(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let result = runtime.block_on(metasrv::ctl::run(
                *args,
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            ));
            if let Err(e) = result {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
            return Ok(());
        }
        Command::HashToken { token } => {
            let token = match token {
                Some(token) => token,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("cannot read the token from standard input")?;
                    line.trim_end_matches(['\n', '\r']).to_owned()
                }
            };
            println!("{}", metasrv::security::hash_token(&token));
            return Ok(());
        }
    };
    let config = args.into_config()?;

    // gRPC runs on this multi-threaded runtime; the actors run on their own actix system, which
    // `metasrv::run` starts (see src/actors/mod.rs).
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot build the tokio runtime")?
        .block_on(start(config))
}

async fn start(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let store = metasrv::open_store(&config)
        .await
        .context("cannot open the metadata store")?;
    let listeners = Listeners::bind(&config)
        .await
        .with_context(|| format!("cannot bind {} / {}", config.grpc_addr, config.http_addr))?;
    let grpc_addr = listeners.grpc.local_addr()?;
    let http_addr = listeners.http.local_addr()?;
    tracing::info!(
        %grpc_addr, %http_addr, backend = store.name(),
        cluster_id = config.cluster_id, member = %config.member_name(),
        "metasrv started"
    );
    // A machine-readable line for scripts and test harnesses (which start us on port 0).
    println!(
        "metasrv ready grpc={grpc_addr} http={http_addr} backend={}",
        store.name()
    );
    metasrv::run(config, store, listeners, shutdown).await?;
    tracing::info!("metasrv stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled: a signal that arrives once the servers answer (but before the
/// shutdown future runs) must stop metasrv gracefully, not kill it.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("Ctrl-C received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}
