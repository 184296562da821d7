//! The `Admin` gRPC service: region migration, leader transfer and node drain, started as
//! procedures by the Scheduler; `GetProcedure` reads one back.

use std::sync::Arc;

use actix::Addr;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::{instrumented, RequestLimits};
use crate::actors::scheduler::{
    OperationError, OperationRequest, Scheduler, StartOperation, WatchProcedure,
};
use crate::election::Leadership;
use crate::metrics::Metrics;
use crate::procedure::{Procedure, ProcedureState, ProcedureStore};
use crate::proto::v1::{self as pb, admin_server::Admin};

pub use crate::proto::v1::admin_server::AdminServer;

const SERVICE: &str = "Admin";

pub struct AdminService {
    scheduler: Addr<Scheduler>,
    procedures: ProcedureStore,
    leadership: Arc<Leadership>,
    limits: RequestLimits,
    metrics: Arc<Metrics>,
}

impl AdminService {
    pub fn new(
        scheduler: Addr<Scheduler>,
        procedures: ProcedureStore,
        leadership: Arc<Leadership>,
        limits: RequestLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            scheduler,
            procedures,
            leadership,
            limits,
            metrics,
        }
    }

    async fn start(
        &self,
        request: OperationRequest,
        wait: bool,
    ) -> Result<pb::OperationResponse, Status> {
        self.leadership.require_leader()?;
        let progress = start_operation(&self.scheduler, request)
            .await
            .map_err(|e| {
                if matches!(e, OperationError::NotLeader) {
                    // The redirect (with the leader's address) when there is one to give.
                    self.leadership
                        .require_leader()
                        .err()
                        .unwrap_or_else(|| Status::unavailable(e.to_string()))
                } else {
                    operation_status(e)
                }
            })?;
        let procedure = if wait {
            wait_until_finished(progress).await?
        } else {
            let current = progress.borrow().clone();
            current
        };
        Ok(pb::OperationResponse {
            header: self.limits.response_header(),
            procedure: Some(procedure_to_pb(&procedure)),
        })
    }
}

/// Asks the Scheduler to start `request`.
pub async fn start_operation(
    scheduler: &Addr<Scheduler>,
    request: OperationRequest,
) -> Result<watch::Receiver<Procedure>, OperationError> {
    scheduler
        .send(StartOperation { request })
        .await
        .map_err(|e| OperationError::Unavailable(format!("the scheduler is unavailable: {e}")))?
}

/// Waits for the procedure behind `progress` to finish.
pub async fn wait_until_finished(
    mut progress: watch::Receiver<Procedure>,
) -> Result<Procedure, Status> {
    match progress.wait_for(|p| !p.is_running()).await {
        Ok(procedure) => Ok(procedure.clone()),
        Err(_) => Err(Status::unavailable(
            "leadership changed before the procedure finished; the next leader resumes it \
             (see GET /v1/procedures)",
        )),
    }
}

/// The latest state of procedure `id`: this leader's live progress if it runs it, otherwise
/// the record.
pub async fn find_procedure(
    scheduler: &Addr<Scheduler>,
    procedures: &ProcedureStore,
    id: &str,
) -> Result<Option<Procedure>, Status> {
    if let Ok(Some(progress)) = scheduler.send(WatchProcedure { id: id.into() }).await {
        let current = progress.borrow().clone();
        return Ok(Some(current));
    }
    procedures.get(id).await.map_err(Status::from)
}

pub fn operation_status(error: OperationError) -> Status {
    let message = error.to_string();
    match error {
        OperationError::NotLeader | OperationError::Unavailable(_) => Status::unavailable(message),
        OperationError::NotFound(_) => Status::not_found(message),
        OperationError::FailedPrecondition(_) => Status::failed_precondition(message),
        OperationError::InvalidArgument(_) => Status::invalid_argument(message),
    }
}

pub fn procedure_to_pb(procedure: &Procedure) -> pb::ProcedureInfo {
    pb::ProcedureInfo {
        id: procedure.id.clone(),
        kind: procedure.kind.clone(),
        state: match procedure.state {
            ProcedureState::Running => "running",
            ProcedureState::Done => "done",
            ProcedureState::Failed => "failed",
        }
        .into(),
        node_id: procedure.node_id,
        region_id: procedure.region_id,
        target_node: procedure.target_node,
        total: procedure.progress.total,
        moved: procedure.progress.moved,
        failed: procedure.progress.failed,
        steps: procedure.steps.clone(),
        started_at_unix_ms: procedure.started_at_unix_ms,
        updated_at_unix_ms: procedure.updated_at_unix_ms,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn migrate_region(
        &self,
        request: Request<pb::MigrateRegionRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "MigrateRegion", async {
            self.limits.check_header(req.header.as_ref())?;
            self.start(
                OperationRequest::MigrateRegion {
                    region_id: req.region_id,
                    to: req.to_node,
                },
                req.wait,
            )
            .await
        })
        .await
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "TransferLeader", async {
            self.limits.check_header(req.header.as_ref())?;
            self.start(
                OperationRequest::TransferLeader {
                    region_id: req.region_id,
                    to: req.to_node,
                },
                req.wait,
            )
            .await
        })
        .await
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "DrainNode", async {
            self.limits.check_header(req.header.as_ref())?;
            self.start(
                OperationRequest::DrainNode {
                    node_id: req.node_id,
                },
                req.wait,
            )
            .await
        })
        .await
    }

    async fn get_procedure(
        &self,
        request: Request<pb::GetProcedureRequest>,
    ) -> Result<Response<pb::OperationResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "GetProcedure", async {
            self.limits.check_header(req.header.as_ref())?;
            let procedure = find_procedure(&self.scheduler, &self.procedures, &req.procedure_id)
                .await?
                .ok_or_else(|| Status::not_found(format!("no procedure {:?}", req.procedure_id)))?;
            Ok(pb::OperationResponse {
                header: self.limits.response_header(),
                procedure: Some(procedure_to_pb(&procedure)),
            })
        })
        .await
    }
}
