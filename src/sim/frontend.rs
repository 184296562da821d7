//! A simulated frontend: writes rows through the `MetaClient` to simulated datanodes, following
//! the seed's Insert flow: split by the cached route, send each region's rows to its leader, and
//! on an InvalidRoute answer drop the table's route, refetch, re-split and retry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::join_all;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use super::datanode::{ERROR_KIND_KEY, INVALID_ROUTE};
use crate::catalog::model::{Peer, TableName};
use crate::catalog::partition::Row;
use crate::client::{select_endpoints, ClientError, MetaClient, ReadPriority};
use crate::proto::sim as sim_pb;
use crate::proto::sim::datanode_client::DatanodeClient;

/// How many times a batch is re-split after InvalidRoute before the insert fails.
const MAX_ROUTE_RETRIES: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error(transparent)]
    Meta(#[from] ClientError),
    #[error("datanode {addr} failed: {status}")]
    Datanode { addr: String, status: tonic::Status },
    #[error("rows of {0} still hit stale routes after {MAX_ROUTE_RETRIES} refetches")]
    RouteRetriesExhausted(TableName),
    #[error("region {region_number} of {table} has no reachable copy")]
    NoReplica {
        table: TableName,
        region_number: u32,
    },
}

pub fn is_invalid_route(status: &tonic::Status) -> bool {
    status
        .metadata()
        .get(ERROR_KIND_KEY)
        .is_some_and(|v| v == INVALID_ROUTE)
}

pub struct SimFrontend {
    meta: Arc<MetaClient>,
    datanodes: Mutex<HashMap<String, DatanodeClient<Channel>>>,
    invalid_routes: AtomicU64,
}

impl SimFrontend {
    pub fn new(meta: Arc<MetaClient>) -> Self {
        Self {
            meta,
            datanodes: Mutex::new(HashMap::new()),
            invalid_routes: AtomicU64::new(0),
        }
    }

    pub fn meta(&self) -> &MetaClient {
        &self.meta
    }

    /// InvalidRoute answers received so far.
    pub fn invalid_routes(&self) -> u64 {
        self.invalid_routes.load(Ordering::Relaxed)
    }

    fn datanode(&self, peer: &Peer) -> Result<DatanodeClient<Channel>, FrontendError> {
        let mut clients = self.datanodes.lock();
        if let Some(client) = clients.get(&peer.addr) {
            return Ok(client.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{}", peer.addr))
            .map_err(|e| FrontendError::Meta(ClientError::Transport(e)))?
            .tcp_nodelay(true)
            .connect_lazy();
        let client = DatanodeClient::new(channel);
        clients.insert(peer.addr.clone(), client.clone());
        Ok(client)
    }

    /// Writes rows of any tables; returns the rows written.
    pub async fn insert(&self, rows: Vec<(TableName, Row)>) -> Result<u64, FrontendError> {
        let mut pending = rows;
        let mut written = 0;
        for _attempt in 0..=MAX_ROUTE_RETRIES {
            if pending.is_empty() {
                return Ok(written);
            }
            let batches = self.meta.split_rows(std::mem::take(&mut pending)).await?;
            let mut sends = Vec::new();
            for endpoint in &batches {
                let client = self.datanode(&endpoint.endpoint)?;
                for region in &endpoint.regions {
                    let mut client = client.clone();
                    let request = sim_pb::WriteRequest {
                        region_id: region.region_id,
                        route_version: region.route_version,
                        rows: region.rows.len() as u32,
                    };
                    sends.push(async move { client.write(request).await });
                }
            }
            let outcomes = join_all(sends).await;
            let regions = batches
                .iter()
                .flat_map(|e| e.regions.iter().map(move |r| (&e.endpoint, r)));
            for ((endpoint, region), outcome) in regions.zip(outcomes) {
                match outcome {
                    Ok(response) => written += response.into_inner().accepted_rows,
                    Err(status) if is_invalid_route(&status) => {
                        self.invalid_routes.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(table = %region.table, region = region.region_id, "invalid route: refetching");
                        self.meta.invalidate(&region.table);
                        pending.extend(
                            region
                                .rows
                                .iter()
                                .map(|r| (region.table.clone(), r.clone())),
                        );
                    }
                    Err(status) => {
                        // An unreachable leader may have moved too: refetch next time. A node
                        // that is down (or restarted: same address, new process) gets a fresh
                        // connection next time rather than the one that failed.
                        self.meta.invalidate(&region.table);
                        if status.code() == tonic::Code::Unavailable {
                            self.datanodes.lock().remove(&endpoint.addr);
                        }
                        return Err(FrontendError::Datanode {
                            addr: endpoint.addr.clone(),
                            status,
                        });
                    }
                }
            }
        }
        match pending.first() {
            None => Ok(written),
            Some((table, _)) => Err(FrontendError::RouteRetriesExhausted(table.clone())),
        }
    }

    /// Reads region `region_number` of `table` from the first copy that answers, in `priority`
    /// order; returns who answered and what.
    pub async fn read_region(
        &self,
        table: &TableName,
        region_number: u32,
        priority: ReadPriority,
    ) -> Result<(Peer, sim_pb::ReadResponse), FrontendError> {
        let route = self.meta.route(table).await?;
        let Some(region) = route
            .route
            .regions
            .iter()
            .find(|r| r.region_number == region_number)
        else {
            return Err(FrontendError::NoReplica {
                table: table.clone(),
                region_number,
            });
        };
        for peer in select_endpoints(&route, region_number, priority) {
            let mut client = self.datanode(&peer)?;
            if let Ok(response) = client
                .read(sim_pb::ReadRequest {
                    region_id: region.region_id,
                })
                .await
            {
                return Ok((peer, response.into_inner()));
            }
        }
        self.meta.invalidate(table);
        Err(FrontendError::NoReplica {
            table: table.clone(),
            region_number,
        })
    }
}
