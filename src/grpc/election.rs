//! The `Election` gRPC service (datanodes electing a writer among replicas) over a
//! [`UserElection`]. Served by every member: the election state lives in etcd (or, on the
//! embedded backend, in the single replica).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::{instrumented, RequestLimits};
use crate::election::user::{ElectionError, LeaderInfo, LeaderKey, UserElection};
use crate::metrics::Metrics;
use crate::proto::v1::{self as pb, election_server::Election};

pub use crate::proto::v1::election_server::ElectionServer;

const SERVICE: &str = "Election";
/// The shortest candidacy lease accepted.
const MIN_TTL: Duration = Duration::from_secs(1);

pub struct ElectionService {
    election: Arc<dyn UserElection>,
    limits: RequestLimits,
    metrics: Arc<Metrics>,
}

impl ElectionService {
    pub fn new(
        election: Arc<dyn UserElection>,
        limits: RequestLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            election,
            limits,
            metrics,
        }
    }
}

impl From<ElectionError> for Status {
    fn from(e: ElectionError) -> Self {
        match e {
            ElectionError::InvalidArgument(m) => Status::invalid_argument(m),
            ElectionError::LeaseNotFound(_) => Status::not_found(e.to_string()),
            ElectionError::NotLeader(m) => Status::failed_precondition(m),
            ElectionError::Unavailable(m) => Status::unavailable(m),
            ElectionError::PermissionDenied(m) => Status::permission_denied(m),
        }
    }
}

fn key_to_pb(key: LeaderKey) -> pb::LeaderKey {
    pb::LeaderKey {
        name: key.name,
        key: key.key,
        lease: key.lease,
        rev: key.rev,
    }
}

fn key_from_pb(key: Option<pb::LeaderKey>) -> Result<LeaderKey, Status> {
    let key = key.ok_or_else(|| Status::invalid_argument("leader key is missing"))?;
    check_name(&key.name)?;
    Ok(LeaderKey {
        name: key.name,
        key: key.key,
        lease: key.lease,
        rev: key.rev,
    })
}

fn check_name(name: &str) -> Result<(), Status> {
    if name.is_empty() || name.len() > 256 || name.contains('/') {
        return Err(Status::invalid_argument(format!(
            "election name {name:?} must be 1-256 characters without '/'"
        )));
    }
    Ok(())
}

fn leader_response(limits: &RequestLimits, info: Option<LeaderInfo>) -> pb::LeaderResponse {
    let (leader, value) = match info {
        Some(info) => (Some(key_to_pb(info.key)), info.value),
        None => (None, Vec::new()),
    };
    pb::LeaderResponse {
        header: limits.response_header(),
        leader,
        value,
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "Campaign", async {
            self.limits.check_header(req.header.as_ref())?;
            self.limits.check_size(prost::Message::encoded_len(&req))?;
            check_name(&req.name)?;
            let lease = if req.lease != 0 {
                req.lease
            } else {
                let ttl = Duration::from_millis(req.ttl_millis);
                if ttl < MIN_TTL {
                    return Err(Status::invalid_argument(format!(
                        "ttl_millis {} is below the minimum of {} ms",
                        req.ttl_millis,
                        MIN_TTL.as_millis()
                    )));
                }
                self.election.grant(ttl).await?
            };
            let key = self.election.campaign(&req.name, req.value, lease).await?;
            Ok(pb::CampaignResponse {
                header: self.limits.response_header(),
                leader: Some(key_to_pb(key)),
            })
        })
        .await
    }

    async fn keep_alive(
        &self,
        request: Request<pb::KeepAliveRequest>,
    ) -> Result<Response<pb::KeepAliveResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "KeepAlive", async {
            self.limits.check_header(req.header.as_ref())?;
            let ttl = self.election.keep_alive(req.lease).await?;
            Ok(pb::KeepAliveResponse {
                header: self.limits.response_header(),
                ttl_millis: ttl.as_millis() as u64,
            })
        })
        .await
    }

    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "Proclaim", async {
            self.limits.check_header(req.header.as_ref())?;
            self.limits.check_size(prost::Message::encoded_len(&req))?;
            let key = key_from_pb(req.leader)?;
            self.election.proclaim(&key, req.value).await?;
            Ok(pb::ProclaimResponse {
                header: self.limits.response_header(),
            })
        })
        .await
    }

    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "Leader", async {
            self.limits.check_header(req.header.as_ref())?;
            check_name(&req.name)?;
            let info = self.election.leader(&req.name).await?;
            Ok(leader_response(&self.limits, info))
        })
        .await
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let req = request.into_inner();
        self.limits.check_header(req.header.as_ref())?;
        check_name(&req.name)?;
        let limits = self.limits.clone();
        let stream = self
            .election
            .observe(&req.name)
            .await?
            .map(move |item| match item {
                Ok(info) => Ok(leader_response(&limits, info)),
                Err(e) => Err(Status::from(e)),
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "Resign", async {
            self.limits.check_header(req.header.as_ref())?;
            let key = key_from_pb(req.leader)?;
            self.election.resign(&key).await?;
            Ok(pb::ResignResponse {
                header: self.limits.response_header(),
            })
        })
        .await
    }
}
