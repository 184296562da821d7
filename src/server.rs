//! The entry point of a metasrv instance: [`open_store`] then [`run`], as in mini-redis.
//! `main.rs` only parses configuration, sets up logging and binds the sockets, so tests can bind
//! port 0 and start an in-process server with no readiness sleep.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use actix::{Actor, Addr};
use tokio::task::JoinHandle;

use crate::actors::autoadmin::{Autoadmin, AutoadminHandle};
use crate::actors::cluster_view::{CloseAllSessions, ClusterView, ClusterViewConfig};
use crate::actors::election::{ElectionActor, EtcdElection, Resign};
use crate::actors::heartbeat_session::SessionContext;
use crate::actors::scheduler::{AttachTables, FailoverConfig, Scheduler};
use crate::actors::ActorRuntime;
use crate::catalog::manager::DdlConfig;
use crate::catalog::ownership::RegionOwnership;
use crate::catalog::{DdlError, TableManager};
use crate::cns::decisions::DecisionLog;
use crate::config::{Backend, Config};
use crate::election::user::{EtcdUserElection, LocalElection, UserElection};
use crate::election::{Leadership, MemberInfo};
use crate::grpc::admin::{AdminServer, AdminService};
use crate::grpc::autoadmin::{AutoadminServer, AutoadminService};
use crate::grpc::election::{ElectionServer, ElectionService};
use crate::grpc::heartbeat::{HeartbeatServer, HeartbeatService};
use crate::grpc::router::{RouterServer, RouterService};
use crate::grpc::store::{StoreServer, StoreService};
use crate::grpc::RequestLimits;
use crate::http::{router, HttpState};
use crate::metrics::Metrics;
use crate::procedure::ProcedureStore;
use crate::security::layer::AuthLayer;
use crate::security::tls::{PeerNames, TlsListener};
use crate::security::Authenticator;
use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::EtcdStore;
use crate::store::fenced::FencedStore;
use crate::store::{KvBackend, StoreError};

/// How long in-flight requests may run after shutdown is asked before they are cut.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the metadata store: {0}")]
    Store(#[from] StoreError),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
    #[error("cannot load the catalog: {0}")]
    Catalog(#[from] DdlError),
    #[error("a server task failed: {0}")]
    Task(String),
    #[error("cannot start the actor system: {0}")]
    Actors(#[source] std::io::Error),
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] crate::security::tls::TlsError),
}

/// The sockets a metasrv serves on, bound by the caller.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        Ok(Self {
            grpc: TcpListener::bind(config.grpc_addr).await?,
            http: TcpListener::bind(config.http_addr).await?,
        })
    }
}

/// Opens the configured metadata store.
pub async fn open_store(config: &Config) -> Result<Arc<dyn KvBackend>, StoreError> {
    Ok(match config.store.backend {
        Backend::Embedded => Arc::new(EmbeddedStore::open(&config.store.data_dir)?),
        Backend::Etcd => Arc::new(EtcdStore::connect(&config.etcd, config.cluster_id).await?),
    })
}

/// Serves gRPC and HTTP until `shutdown` completes, then drains in-flight requests for at most
/// [`SHUTDOWN_GRACE`].
pub async fn run(
    config: Config,
    store: Arc<dyn KvBackend>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Metasrv::start(config, store, listeners)
        .await?
        .serve_until(shutdown)
        .await
}

/// A started metasrv: its servers run in background tasks; [`Metasrv::serve_until`] waits for
/// the shutdown signal and stops everything. Tests and examples keep the handle to reach the
/// actors (e.g. to send an instruction through the ClusterView's mailbox).
pub struct Metasrv {
    cluster_view: Addr<ClusterView>,
    autoadmin: AutoadminHandle,
    election: Addr<ElectionActor>,
    leadership: Arc<Leadership>,
    actors: Arc<ActorRuntime>,
    token: CancellationToken,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
}

impl Metasrv {
    /// Starts the actors and both servers on `listeners`.
    pub async fn start(
        config: Config,
        store: Arc<dyn KvBackend>,
        listeners: Listeners,
    ) -> Result<Self, ServerError> {
        let metrics = Arc::new(Metrics::new());
        let limits = RequestLimits {
            cluster_id: config.cluster_id,
            max_request_bytes: config.max_request_bytes,
            max_batch_ops: config.max_batch_ops,
        };
        let session_threads = match config.session_threads {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        };
        let actors = Arc::new(ActorRuntime::start(session_threads).map_err(ServerError::Actors)?);
        // Every write of this member goes through the fence; on etcd it starts as a follower.
        let etcd_election = store.as_etcd().map(|etcd| EtcdElection {
            client: etcd.client().clone(),
            prefix: etcd.prefix().to_vec(),
            lease_ttl: config.election_lease_ttl,
        });
        let fenced = Arc::new(if etcd_election.is_some() {
            FencedStore::follower(store.clone())
        } else {
            FencedStore::unfenced(store.clone())
        });
        let store: Arc<dyn KvBackend> = fenced.clone();
        let grpc_addr = match &config.advertise_addr {
            Some(addr) => addr.clone(),
            None => listeners
                .grpc
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        };
        let me = MemberInfo {
            id: config.member_id,
            name: config.member_name(),
            grpc_addr,
            http_addr: listeners
                .http
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        };
        let leadership = Arc::new(Leadership::new(me.clone()));
        let view_config = ClusterViewConfig {
            heartbeat_interval: config.heartbeat_interval,
            failure_detector: config.failure_detector.clone(),
            node_history: config.node_history,
            region_history: config.region_history,
            ru_prices: config.cns.ru_prices.clone(),
            seed_grace: config.region_lease,
        };
        // Twice what a lease wait can need of a resolved grant (one lease plus the margin).
        let ownership = Arc::new(RegionOwnership::new(
            2 * (config.region_lease + config.failover_safety_margin),
        ));
        let view = ClusterView::new(
            view_config,
            store.clone(),
            ownership.clone(),
            metrics.clone(),
        );
        let mailbox = view.mailbox();
        let cluster_view = ClusterView::start_in_arbiter(actors.singletons(), move |_| view);
        let maintenance = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scheduler = {
            let view = cluster_view.clone();
            let mailbox = mailbox.clone();
            let selector = config.selector;
            let leadership = leadership.clone();
            let failover = FailoverConfig {
                max_concurrent: config.max_concurrent_failovers,
                region_lease: config.region_lease,
                safety_margin: config.failover_safety_margin,
                instruction_timeout: config.instruction_timeout,
                reconcile_interval: config.heartbeat_interval.max(Duration::from_millis(50)),
                replica_repair_after: config.replica_repair_after,
            };
            let procedures = ProcedureStore::new(store.clone());
            let maintenance = maintenance.clone();
            let metrics = metrics.clone();
            let background = tokio::runtime::Handle::current();
            Scheduler::start_in_arbiter(actors.singletons(), move |_| {
                Scheduler::new(
                    view,
                    mailbox,
                    selector,
                    leadership,
                    failover,
                    procedures,
                    maintenance,
                    metrics,
                )
                .with_operation_runtime(background)
            })
        };
        let tables = Arc::new(TableManager::new(
            store.clone(),
            ownership.clone(),
            scheduler.clone(),
            mailbox.clone(),
            DdlConfig {
                max_regions_per_table: config.max_regions_per_table,
                open_region_timeout: config.instruction_timeout,
                region_lease: config.region_lease,
            },
        ));
        scheduler.do_send(AttachTables {
            tables: tables.clone(),
        });
        let autoadmin = {
            let log = DecisionLog::shared(config.cns.decisions_kept);
            let mode = Arc::new(parking_lot::RwLock::new(config.cns.mode));
            let (cns, view, scheduler, tables, leadership, maintenance, store) = (
                config.cns.clone(),
                cluster_view.clone(),
                scheduler.clone(),
                tables.clone(),
                leadership.clone(),
                maintenance.clone(),
                store.clone(),
            );
            let (actor_log, actor_mode) = (log.clone(), mode.clone());
            let actor = Autoadmin::start_in_arbiter(actors.planning(), move |_| {
                Autoadmin::new(
                    cns,
                    view,
                    scheduler,
                    tables,
                    leadership,
                    maintenance,
                    store,
                    actor_log,
                    actor_mode,
                )
            });
            AutoadminHandle { actor, log, mode }
        };
        let standalone = etcd_election.is_none();
        let election = {
            let (leadership, fenced, tables, view) = (
                leadership.clone(),
                fenced.clone(),
                tables.clone(),
                cluster_view.clone(),
            );
            let me = me.clone();
            let background = tokio::runtime::Handle::current();
            ElectionActor::start_in_arbiter(actors.election(), move |_| {
                ElectionActor::new(
                    me,
                    leadership,
                    fenced,
                    tables,
                    view,
                    etcd_election,
                    background,
                )
            })
        };
        if standalone {
            // The single replica leads at once; serve only once its catalog is loaded.
            let mut changes = leadership.subscribe();
            let loaded = tokio::time::timeout(
                Duration::from_secs(30),
                changes.wait_for(|state| state.serving),
            )
            .await;
            if !matches!(loaded, Ok(Ok(_))) {
                return Err(ServerError::Catalog(DdlError::Corrupt(
                    "the catalog did not load within 30s (see the log)".into(),
                )));
            }
        }
        let decode_limit = decode_limit_for(&config);
        let sessions = SessionContext {
            cluster_id: config.cluster_id,
            heartbeat_interval_millis: config.heartbeat_interval.as_millis() as u64,
            region_lease_millis: config.region_lease.as_millis() as u64,
            instruction_timeout: config.instruction_timeout,
            orphan_region_grace: config.orphan_region_grace,
            ownership,
            tables: tables.clone(),
            cluster_view: cluster_view.clone(),
            mailbox: mailbox.clone(),
            metrics: metrics.clone(),
            leadership: leadership.clone(),
        };
        let heartbeat_service = HeartbeatServer::new(HeartbeatService::new(
            actors.clone(),
            sessions,
            limits.clone(),
            metrics.clone(),
            leadership.clone(),
        ))
        .max_decoding_message_size(decode_limit);
        let quarantine = tables.quarantine().clone();
        let router_service = RouterServer::new(RouterService::new(
            tables.clone(),
            leadership.clone(),
            limits.clone(),
            metrics.clone(),
        ))
        .max_decoding_message_size(decode_limit);
        let user_election: Arc<dyn UserElection> = match store.as_etcd() {
            Some(etcd) => Arc::new(EtcdUserElection::new(etcd.client().clone(), etcd.prefix())),
            None => Arc::new(LocalElection::start()),
        };
        let election_service = ElectionServer::new(ElectionService::new(
            user_election,
            limits.clone(),
            metrics.clone(),
        ))
        .max_decoding_message_size(decode_limit);
        let admin_service = AdminServer::new(AdminService::new(
            scheduler.clone(),
            ProcedureStore::new(store.clone()),
            leadership.clone(),
            limits.clone(),
            metrics.clone(),
        ))
        .max_decoding_message_size(decode_limit);
        let autoadmin_service = AutoadminServer::new(AutoadminService::new(
            autoadmin.clone(),
            leadership.clone(),
            limits.clone(),
            metrics.clone(),
        ))
        .max_decoding_message_size(decode_limit);
        let store_service = StoreServer::new(StoreService::new(
            store.clone(),
            leadership.clone(),
            limits,
            metrics.clone(),
        ))
        .max_decoding_message_size(decode_limit);

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<StoreServer<StoreService>>()
            .await;
        health_reporter
            .set_serving::<HeartbeatServer<HeartbeatService>>()
            .await;
        health_reporter
            .set_serving::<RouterServer<RouterService>>()
            .await;
        health_reporter
            .set_serving::<ElectionServer<ElectionService>>()
            .await;
        health_reporter
            .set_serving::<AdminServer<AdminService>>()
            .await;
        health_reporter
            .set_serving::<AutoadminServer<AutoadminService>>()
            .await;
        // Both reflection versions: older grpcurl builds and Python's grpcio-reflection only
        // speak v1alpha.
        let reflection_builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection = reflection_builder().build_v1()?;
        let reflection_v1alpha = reflection_builder().build_v1alpha()?;

        if config.security.authenticates() {
            tracing::info!("security: {}", config.security.describe());
        } else {
            tracing::warn!("security: {}", config.security.describe());
        }
        let authenticator = Arc::new(Authenticator::new(&config.security));
        let mut grpc_server = tonic::transport::Server::builder();
        if let Some(tls) = crate::security::tls::grpc_tls(&config.security)? {
            grpc_server = grpc_server.tls_config(tls)?;
        }
        let http_tls = crate::security::tls::http_tls(&config.security)?;
        let token = CancellationToken::new();
        let grpc_token = token.clone();
        let grpc = tokio::spawn(
            grpc_server
                .layer(AuthLayer::new(authenticator.clone()))
                .add_service(health_service)
                .add_service(reflection)
                .add_service(reflection_v1alpha)
                .add_service(store_service)
                .add_service(heartbeat_service)
                .add_service(router_service)
                .add_service(election_service)
                .add_service(admin_service)
                .add_service(autoadmin_service)
                .serve_with_incoming_shutdown(nodelay_incoming(listeners.grpc), async move {
                    grpc_token.cancelled().await
                }),
        );
        let http_state = HttpState {
            scheduler: scheduler.clone(),
            maintenance,
            store,
            leadership: leadership.clone(),
            cluster_view: cluster_view.clone(),
            metrics,
            quarantine,
            member_id: config.member_id,
            member_name: config.member_name(),
            cluster_id: config.cluster_id,
            authenticator,
            tables: tables.clone(),
            election: election.clone(),
            autoadmin: autoadmin.clone(),
        };
        let http_token = token.clone();
        let app = router(http_state).into_make_service_with_connect_info::<PeerNames>();
        let http = match http_tls {
            Some(acceptor) => {
                let listener = TlsListener::new(listeners.http, acceptor)?;
                tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async move { http_token.cancelled().await })
                        .await
                })
            }
            None => tokio::spawn(async move {
                axum::serve(listeners.http, app)
                    .with_graceful_shutdown(async move { http_token.cancelled().await })
                    .await
            }),
        };
        Ok(Self {
            cluster_view,
            autoadmin,
            election,
            leadership,
            actors,
            token,
            grpc,
            http,
        })
    }

    pub fn cluster_view(&self) -> &Addr<ClusterView> {
        &self.cluster_view
    }

    /// The Autoadmin (decisions, mode, planning on demand).
    pub fn autoadmin(&self) -> &AutoadminHandle {
        &self.autoadmin
    }

    pub fn leadership(&self) -> &Arc<Leadership> {
        &self.leadership
    }

    /// Serves until `shutdown` completes (or a server fails), then closes heartbeat streams,
    /// drains in-flight requests for at most [`SHUTDOWN_GRACE`] and stops the actors.
    pub async fn serve_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Self {
            cluster_view,
            autoadmin: _,
            election,
            leadership: _,
            actors,
            token,
            mut grpc,
            mut http,
        } = self;
        let early = tokio::select! {
            result = &mut grpc => Some(server_result(result, ServerError::Grpc)),
            result = &mut http => Some(server_result(result, ServerError::Http)),
            () = shutdown => None,
        };
        tracing::info!("shutdown: closing heartbeat streams and draining in-flight requests");
        // Hand leadership over at once rather than after the lease TTL.
        let _ = tokio::time::timeout(Duration::from_secs(2), election.send(Resign)).await;
        token.cancel();
        // Heartbeat streams never end by themselves: close them so the gRPC server can drain.
        let _ = cluster_view
            .send(CloseAllSessions {
                status: tonic::Status::unavailable("metasrv is shutting down"),
            })
            .await;
        let result = match early {
            Some(result) => {
                grpc.abort();
                http.abort();
                result
            }
            None => {
                let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
                    let grpc = server_result((&mut grpc).await, ServerError::Grpc);
                    let http = server_result((&mut http).await, ServerError::Http);
                    grpc.and(http)
                })
                .await;
                drained.unwrap_or_else(|_| {
                    tracing::warn!(grace = ?SHUTDOWN_GRACE, "in-flight requests did not finish in time; cutting them");
                    grpc.abort();
                    http.abort();
                    Ok(())
                })
            }
        };
        // Stopping the actor system joins its thread: do it off the async workers.
        let _ = tokio::task::spawn_blocking(move || drop(actors)).await;
        result
    }
}

/// Accepted connections with Nagle's algorithm off: small gRPC messages must not wait for the
/// peer's delayed ACK (a 40 ms stall per unary call otherwise).
pub fn nodelay_incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            // Best effort: a socket that refuses the option still works, only slower.
            let _ = stream.set_nodelay(true);
        }
        accepted
    })
}

fn server_result<E>(
    joined: Result<Result<(), E>, tokio::task::JoinError>,
    wrap: impl FnOnce(E) -> ServerError,
) -> Result<(), ServerError> {
    match joined {
        Ok(result) => result.map_err(wrap),
        Err(e) => Err(ServerError::Task(e.to_string())),
    }
}

/// Let tonic decode somewhat more than the limit so that handlers can refuse an oversized request
/// with a message naming the limit; anything far larger is cut by tonic itself.
fn decode_limit_for(config: &Config) -> usize {
    config.max_request_bytes.saturating_mul(2)
}
