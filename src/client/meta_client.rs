//! `MetaClient`: what a frontend uses to talk to metasrv. It finds the leader (AskLeader), fetches
//! table routes lazily into a local cache, drops a table's route when a datanode answers
//! InvalidRoute (the caller calls [`MetaClient::invalidate`]) so the next lookup refetches, splits
//! a batch of rows of several tables into per-endpoint, per-region batches by each table's
//! partition rule, and orders select endpoints by the configured priority.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use tonic::transport::Channel;

use crate::catalog::model::{route_from_pb, Peer, TableInfo, TableName, TableRoute};
use crate::catalog::partition::{region_number_of, Row};
use crate::client::{authed, AuthedChannel, BearerToken, ClientSecurity};
use crate::proto::v1 as pb;
use crate::proto::v1::heartbeat_client::HeartbeatClient;
use crate::proto::v1::router_client::RouterClient;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach a metasrv leader at any of {endpoints:?}: {reason}")]
    NoLeader {
        endpoints: Vec<String>,
        reason: String,
    },
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("metasrv answered {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("metasrv sent a bad route: {0}")]
    BadRoute(String),
    #[error("a row of table {table} cannot be routed: {reason}")]
    Unroutable { table: TableName, reason: String },
}

/// A table's route as the client caches it.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedRoute {
    pub info: TableInfo,
    pub route: TableRoute,
}

/// How long a call keeps following redirects and retrying an unavailable leader (a leader
/// failover takes about the election lease TTL).
pub const FAILOVER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(15);

/// How long one Route call may take before the client looks for the leader again (Route is
/// served from memory: a leader that takes this long is not serving).
const ROUTE_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// The same for DDL, which waits on datanodes (instruction timeout, 10 s by default) and etcd.
const DDL_ATTEMPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long one member may take to say who leads.
const ASK_LEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Asks each endpoint in turn who leads, and connects to the leader.
pub async fn find_leader(
    endpoints: &[String],
    cluster_id: u64,
    member_id: u64,
) -> Result<(Peer, Channel), ClientError> {
    find_leader_with(endpoints, cluster_id, member_id, &ClientSecurity::default()).await
}

/// [`find_leader`] over TLS when `security` names a CA.
pub async fn find_leader_with(
    endpoints: &[String],
    cluster_id: u64,
    member_id: u64,
    security: &ClientSecurity,
) -> Result<(Peer, Channel), ClientError> {
    find_leader_after(endpoints, cluster_id, member_id, security, None).await
}

/// [`find_leader_with`] right after losing the leader at `unreachable` (see [`find_leader_via`]).
pub(crate) async fn find_leader_after(
    endpoints: &[String],
    cluster_id: u64,
    member_id: u64,
    security: &ClientSecurity,
    unreachable: Option<&str>,
) -> Result<(Peer, Channel), ClientError> {
    let connect = |addr: &str| {
        let addr = addr.to_owned();
        let security = security.clone();
        async move {
            super::connect_with(&addr, &security)
                .await
                .map_err(|e| e.to_string())
        }
    };
    find_leader_via(
        endpoints,
        cluster_id,
        member_id,
        security,
        connect,
        unreachable,
    )
    .await
}

/// How long a member may hold an `AskLeader` that names a leader the caller could not reach,
/// waiting for the next one (the request's `wait_millis`). Longer than an election after a
/// leader's death (its 3 s lease, up to half a second more for etcd to expire it) and the next
/// leader's load, so that a datanode asks once per election: with 2 s, every datanode asked
/// again while the next leader loaded (10,000 answers, failed streams and new asks, on the
/// cores the load needed).
pub(crate) const ASK_LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// [`find_leader_with`] over channels made by `connect` (a fresh connection, or one of a
/// [`super::ChannelPool`]'s shared ones). `unreachable`: the address of a leader the caller
/// just lost. It is asked first, at once (the loss may have been the connection's, not the
/// leader's); the other members are asked to wait for the leadership to change before they
/// answer, so that a datanode learns of the next leader the moment it serves instead of
/// polling through the election.
pub(crate) async fn find_leader_via<F, Fut>(
    endpoints: &[String],
    cluster_id: u64,
    member_id: u64,
    security: &ClientSecurity,
    connect: F,
    unreachable: Option<&str>,
) -> Result<(Peer, Channel), ClientError>
where
    F: Fn(&str) -> Fut,
    Fut: std::future::Future<Output = Result<Channel, String>>,
{
    let mut reason = String::from("no endpoints given");
    let mut refusal: Option<tonic::Status> = None;
    let bearer = security.bearer().map_err(|e| ClientError::NoLeader {
        endpoints: endpoints.to_vec(),
        reason: e.to_string(),
    })?;
    let mut ordered: Vec<String> = endpoints.to_vec();
    if let Some(lost) = unreachable {
        // The lost leader first (stable: the others in the order given), by the address it
        // advertises even where the endpoints spell it otherwise.
        if !ordered.iter().any(|endpoint| endpoint == lost) {
            ordered.insert(0, lost.to_owned());
        }
        ordered.sort_by_key(|endpoint| endpoint.as_str() != lost);
    }
    let ask = |channel: Channel, wait: std::time::Duration| {
        let mut client = HeartbeatClient::new(super::authed(channel, bearer.clone()));
        let request = pb::AskLeaderRequest {
            header: super::header(cluster_id, member_id),
            unreachable_leader: unreachable.unwrap_or_default().to_owned(),
            wait_millis: wait.as_millis() as u32,
        };
        // Bounded: a member that hangs (paused, half-partitioned) must not stall the search.
        async move {
            tokio::time::timeout(ASK_LEADER_TIMEOUT + wait, client.ask_leader(request))
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer to AskLeader")))
        }
    };
    for endpoint in &ordered {
        let channel = match connect(endpoint).await {
            Ok(channel) => channel,
            Err(e) => {
                reason = format!("{endpoint}: {e}");
                continue;
            }
        };
        let wait = match unreachable {
            Some(lost) if lost != endpoint.as_str() => ASK_LEADER_WAIT,
            _ => std::time::Duration::ZERO,
        };
        let leader = match ask(channel.clone(), wait).await {
            Ok(response) => match response.into_inner().leader {
                Some(leader) => Peer::from(leader),
                None => {
                    reason = format!("{endpoint}: no leader known");
                    continue;
                }
            },
            // Members check callers alike, but not always at once (a token rotation rolls
            // through them): ask the others, and report the refusal if none lets us in.
            Err(status) if is_refusal(&status) => {
                refusal = Some(status);
                continue;
            }
            Err(status) => {
                reason = format!("{endpoint}: {}", status.message());
                continue;
            }
        };
        if leader.addr == *endpoint {
            return Ok((leader, channel));
        }
        match connect(&leader.addr).await {
            Ok(channel) => {
                if !wait.is_zero() && leader.addr != unreachable.unwrap_or_default() {
                    // A member names the next leader once it won, which may be before it
                    // serves (it loads its state first): the next leader itself answers once it
                    // serves, so the stream opens then instead of being refused and retried.
                    let _ = ask(channel.clone(), wait).await;
                }
                return Ok((leader, channel));
            }
            Err(e) => reason = format!("leader {} at {}: {e}", leader.id, leader.addr),
        }
    }
    if let Some(refusal) = refusal {
        return Err(ClientError::Status(refusal));
    }
    Err(ClientError::NoLeader {
        endpoints: endpoints.to_vec(),
        reason,
    })
}

/// Whether metasrv refused the caller itself (its credentials), not the call's timing.
pub fn is_refusal(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    )
}

/// Which copy of a region reads go to first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadPriority {
    /// The leader, then followers (fresh reads).
    #[default]
    LeaderFirst,
    /// Followers, then the leader (spreads read load off leaders).
    FollowersPreferred,
}

/// Rows of one region, to be written to its leader.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionBatch {
    pub table: TableName,
    pub region_id: u64,
    pub region_number: u32,
    /// The route version the rows were split by.
    pub route_version: u64,
    pub rows: Vec<Row>,
}

/// Everything bound for one datanode.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointBatch {
    pub endpoint: Peer,
    pub regions: Vec<RegionBatch>,
}

pub struct MetaClient {
    cluster_id: u64,
    member_id: u64,
    endpoints: Vec<String>,
    security: ClientSecurity,
    /// The token on every call (from `security`).
    bearer: BearerToken,
    leader: RwLock<Peer>,
    router: RwLock<RouterClient<AuthedChannel>>,
    cache: RwLock<HashMap<TableName, Arc<CachedRoute>>>,
    route_fetches: AtomicU64,
}

impl MetaClient {
    /// Asks each endpoint in turn who leads and connects to the leader, retrying with backoff
    /// for up to [`FAILOVER_PATIENCE`] while no leader is elected (a cluster starting or failing
    /// over).
    pub async fn connect(
        endpoints: &[String],
        cluster_id: u64,
        member_id: u64,
    ) -> Result<Self, ClientError> {
        Self::connect_with(endpoints, cluster_id, member_id, ClientSecurity::default()).await
    }

    /// [`MetaClient::connect`] to members that serve TLS.
    pub async fn connect_with(
        endpoints: &[String],
        cluster_id: u64,
        member_id: u64,
        security: ClientSecurity,
    ) -> Result<Self, ClientError> {
        let started = std::time::Instant::now();
        let mut backoff = std::time::Duration::from_millis(50);
        let (leader, channel) = loop {
            match find_leader_with(endpoints, cluster_id, member_id, &security).await {
                Ok(found) => break found,
                Err(e @ ClientError::Status(_)) => return Err(e),
                Err(e) if started.elapsed() >= FAILOVER_PATIENCE => return Err(e),
                Err(e) => {
                    tracing::debug!("no metasrv leader yet: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                }
            }
        };
        let bearer = security.bearer().map_err(|e| ClientError::NoLeader {
            endpoints: endpoints.to_vec(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            cluster_id,
            member_id,
            bearer: bearer.clone(),
            security,
            endpoints: endpoints.to_vec(),
            leader: RwLock::new(leader),
            router: RwLock::new(RouterClient::new(authed(channel, bearer))),
            cache: RwLock::new(HashMap::new()),
            route_fetches: AtomicU64::new(0),
        })
    }

    /// The leader this client talks to now.
    pub fn leader(&self) -> Peer {
        self.leader.read().clone()
    }

    /// Finds the leader again (after a redirect or a broken connection).
    async fn rediscover(&self, hint: Option<String>) -> Result<(), ClientError> {
        let mut endpoints = Vec::with_capacity(self.endpoints.len() + 1);
        endpoints.extend(hint);
        endpoints.extend(self.endpoints.iter().cloned());
        let (leader, channel) =
            find_leader_with(&endpoints, self.cluster_id, self.member_id, &self.security).await?;
        tracing::info!(leader = leader.id, addr = %leader.addr, "following the metasrv leader");
        *self.leader.write() = leader;
        *self.router.write() = RouterClient::new(authed(channel, self.bearer.clone()));
        Ok(())
    }

    /// Runs `call` against the leader, following redirects and reconnecting after failures
    /// with backoff, for at most [`FAILOVER_PATIENCE`].
    /// An attempt that takes longer than `attempt_timeout` counts as an unavailable leader (it
    /// may hang: paused, or partitioned behind an open socket).
    async fn with_leader<T, F, Fut>(
        &self,
        attempt_timeout: std::time::Duration,
        mut call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(RouterClient<AuthedChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let started = std::time::Instant::now();
        let mut backoff = std::time::Duration::from_millis(50);
        loop {
            let router = self.router.read().clone();
            let attempt = tokio::time::timeout(attempt_timeout, call(router))
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::unavailable(format!(
                        "metasrv did not answer within {attempt_timeout:?}"
                    )))
                });
            match attempt {
                Ok(value) => return Ok(value),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    if started.elapsed() >= FAILOVER_PATIENCE {
                        return Err(status.into());
                    }
                    let hint = crate::election::redirect_target(&status);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                    if let Err(e) = self.rediscover(hint).await {
                        tracing::debug!("no metasrv leader yet: {e}");
                    }
                }
                Err(status) => return Err(status.into()),
            }
        }
    }

    fn header(&self) -> Option<pb::RequestHeader> {
        super::header(self.cluster_id, self.member_id)
    }

    /// The Router client of the current leader, for DDL and catalog calls.
    pub fn router(&self) -> RouterClient<AuthedChannel> {
        self.router.read().clone()
    }

    /// Route fetches made so far (cache misses and refetches).
    pub fn route_fetches(&self) -> u64 {
        self.route_fetches.load(Ordering::Relaxed)
    }

    /// The cached route of `table`, without asking metasrv.
    pub fn cached(&self, table: &TableName) -> Option<Arc<CachedRoute>> {
        self.cache.read().get(table).cloned()
    }

    /// Forgets `table`'s route (after an InvalidRoute answer); the next lookup refetches.
    pub fn invalidate(&self, table: &TableName) {
        self.cache.write().remove(table);
    }

    /// Creates a table and caches its route.
    pub async fn create_table(
        &self,
        mut request: pb::CreateTableRequest,
    ) -> Result<(bool, Arc<CachedRoute>), ClientError> {
        request.header = self.header();
        // Retried across a leader change. A first attempt that committed before its answer was
        // lost makes the retry answer AlreadyExists: use if_not_exists for an idempotent create.
        let response = self
            .with_leader(DDL_ATTEMPT_TIMEOUT, |mut router| {
                let request = request.clone();
                async move { router.create_table(request).await }
            })
            .await?
            .into_inner();
        let route = response
            .route
            .ok_or_else(|| ClientError::BadRoute("CreateTable returned no route".into()))?;
        let cached = self.cache_route(route)?;
        Ok((response.created, cached))
    }

    fn cache_route(&self, route: pb::TableRoute) -> Result<Arc<CachedRoute>, ClientError> {
        let (info, route) = route_from_pb(route).map_err(ClientError::BadRoute)?;
        let cached = Arc::new(CachedRoute { info, route });
        let mut cache = self.cache.write();
        // Never replace a newer route with an older one fetched concurrently.
        let keep_existing = cache.get(&cached.info.name).is_some_and(|existing| {
            existing.info.id == cached.info.id && existing.route.version > cached.route.version
        });
        if keep_existing {
            return Ok(cache[&cached.info.name].clone());
        }
        cache.insert(cached.info.name.clone(), cached.clone());
        Ok(cached)
    }

    /// The routes of `tables`, from the cache, fetching the missing ones in one call.
    pub async fn routes(&self, tables: &[TableName]) -> Result<Vec<Arc<CachedRoute>>, ClientError> {
        let missing: Vec<TableName> = {
            let cache = self.cache.read();
            let mut missing: Vec<TableName> = tables
                .iter()
                .filter(|t| !cache.contains_key(*t))
                .cloned()
                .collect();
            missing.sort();
            missing.dedup();
            missing
        };
        if !missing.is_empty() {
            self.route_fetches.fetch_add(1, Ordering::Relaxed);
            let request = pb::RouteRequest {
                header: self.header(),
                table_names: missing.iter().map(Into::into).collect(),
            };
            let response = self
                .with_leader(ROUTE_ATTEMPT_TIMEOUT, |mut router| {
                    let request = request.clone();
                    async move { router.route(request).await }
                })
                .await?
                .into_inner();
            for route in response.routes {
                self.cache_route(route)?;
            }
        }
        let cache = self.cache.read();
        tables
            .iter()
            .map(|t| {
                cache.get(t).cloned().ok_or_else(|| {
                    ClientError::BadRoute(format!("metasrv returned no route for {t}"))
                })
            })
            .collect()
    }

    pub async fn route(&self, table: &TableName) -> Result<Arc<CachedRoute>, ClientError> {
        Ok(self
            .routes(std::slice::from_ref(table))
            .await?
            .into_iter()
            .next()
            .expect("routes returns one route per table asked"))
    }

    /// Splits rows of several tables into batches per datanode and region, by each table's
    /// partition rule and current route.
    pub async fn split_rows(
        &self,
        rows: Vec<(TableName, Row)>,
    ) -> Result<Vec<EndpointBatch>, ClientError> {
        let mut tables: Vec<TableName> = rows.iter().map(|(t, _)| t.clone()).collect();
        tables.sort();
        tables.dedup();
        let routes: HashMap<TableName, Arc<CachedRoute>> = tables
            .iter()
            .cloned()
            .zip(self.routes(&tables).await?)
            .collect();
        // endpoint address -> (endpoint, region id -> batch); BTreeMaps keep the output stable.
        let mut by_endpoint: BTreeMap<String, (Peer, BTreeMap<u64, RegionBatch>)> = BTreeMap::new();
        for (table, row) in rows {
            let cached = &routes[&table];
            let number = region_number_of(&cached.info.partition, &row).map_err(|reason| {
                ClientError::Unroutable {
                    table: table.clone(),
                    reason,
                }
            })?;
            let region = cached
                .route
                .regions
                .iter()
                .find(|r| r.region_number == number)
                .ok_or_else(|| ClientError::Unroutable {
                    table: table.clone(),
                    reason: format!("the route has no region number {number}"),
                })?;
            let (_, regions) = by_endpoint
                .entry(region.leader.addr.clone())
                .or_insert_with(|| (region.leader.clone(), BTreeMap::new()));
            regions
                .entry(region.region_id)
                .or_insert_with(|| RegionBatch {
                    table: table.clone(),
                    region_id: region.region_id,
                    region_number: number,
                    route_version: cached.route.version,
                    rows: Vec::new(),
                })
                .rows
                .push(row);
        }
        Ok(by_endpoint
            .into_values()
            .map(|(endpoint, regions)| EndpointBatch {
                endpoint,
                regions: regions.into_values().collect(),
            })
            .collect())
    }
}

/// The endpoints to read region `region_number` from, in the order to try them.
pub fn select_endpoints(
    route: &CachedRoute,
    region_number: u32,
    priority: ReadPriority,
) -> Vec<Peer> {
    let Some(region) = route
        .route
        .regions
        .iter()
        .find(|r| r.region_number == region_number)
    else {
        return Vec::new();
    };
    match priority {
        ReadPriority::LeaderFirst => std::iter::once(region.leader.clone())
            .chain(region.followers.iter().cloned())
            .collect(),
        ReadPriority::FollowersPreferred => region
            .followers
            .iter()
            .cloned()
            .chain(std::iter::once(region.leader.clone()))
            .collect(),
    }
}
