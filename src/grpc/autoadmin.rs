//! The `Autoadmin` gRPC service: the decision stream (`WatchDecisions`, resumable from a
//! sequence number), approval and rejection, and the mode. A thin adapter over the Autoadmin
//! actor and its decision log.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{instrumented, RequestLimits};
use actix::{Addr, Handler, Message};

use crate::actors::autoadmin::{
    ApproveDecision, Autoadmin as AutoadminActor, AutoadminError, AutoadminHandle, RejectDecision,
    SetMode,
};
use crate::cns::decisions::{Decision, DecisionEvent, Mode};
use crate::cns::planner::Action;
use crate::election::Leadership;
use crate::metrics::Metrics;
use crate::proto::v1::{self as pb, autoadmin_server::Autoadmin};

pub use crate::proto::v1::autoadmin_server::AutoadminServer;

const SERVICE: &str = "Autoadmin";
/// Events queued for one watcher before its stream waits (and, far enough behind, ends).
const STREAM_BUFFER: usize = 64;

pub struct AutoadminService {
    autoadmin: AutoadminHandle,
    leadership: Arc<Leadership>,
    limits: RequestLimits,
    metrics: Arc<Metrics>,
}

impl AutoadminService {
    pub fn new(
        autoadmin: AutoadminHandle,
        leadership: Arc<Leadership>,
        limits: RequestLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            autoadmin,
            leadership,
            limits,
            metrics,
        }
    }

    fn response(&self, decision: Decision) -> pb::DecisionResponse {
        pb::DecisionResponse {
            header: self.limits.response_header(),
            decision: Some(decision_to_pb(&decision)),
        }
    }
}

/// Why the Autoadmin refused, as a status (the redirect to the leader when it is not one).
pub fn autoadmin_status(error: AutoadminError, leadership: &Leadership) -> Status {
    match error {
        AutoadminError::NotLeader => leadership
            .require_leader()
            .err()
            .unwrap_or_else(|| Status::unavailable(error.to_string())),
        AutoadminError::NotFound(_) => Status::not_found(error.to_string()),
        AutoadminError::FailedPrecondition(_) => Status::failed_precondition(error.to_string()),
        AutoadminError::Unavailable(_) => Status::unavailable(error.to_string()),
    }
}

/// Sends `message` to the Autoadmin; its refusal (or an unreachable actor) as a status.
pub async fn ask<M, T>(
    autoadmin: &Addr<AutoadminActor>,
    message: M,
    leadership: &Leadership,
) -> Result<T, Status>
where
    M: Message<Result = Result<T, AutoadminError>> + Send + 'static,
    T: Send + 'static,
    AutoadminActor: Handler<M>,
{
    autoadmin
        .send(message)
        .await
        .map_err(|e| Status::unavailable(format!("autoadmin: {e}")))?
        .map_err(|e| autoadmin_status(e, leadership))
}

/// A decision as the proto has it.
pub fn decision_to_pb(decision: &Decision) -> pb::Decision {
    let name = |value: serde_json::Value| value.as_str().unwrap_or_default().to_owned();
    let mut out = pb::Decision {
        id: decision.id,
        status: name(serde_json::to_value(decision.status).unwrap_or_default()),
        mode: decision.mode.name().into(),
        planner: decision.proposal.planner.name().into(),
        reason: decision.proposal.reason.clone(),
        figures: decision
            .proposal
            .figures
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        expected: decision.proposal.expected.clone(),
        at_unix_ms: decision.at_unix_ms,
        updated_at_unix_ms: decision.updated_at_unix_ms,
        procedure_id: decision.procedure_id.clone().unwrap_or_default(),
        outcome: decision.outcome.clone().unwrap_or_default(),
        ..Default::default()
    };
    match &decision.proposal.action {
        Action::Migrate {
            region_id,
            from,
            to,
        } => {
            out.action = "migrate".into();
            (out.region_id, out.from_node, out.to_node) = (*region_id, *from, *to);
        }
        Action::TransferLeader {
            region_id,
            from,
            to,
        } => {
            out.action = "transfer_leader".into();
            (out.region_id, out.from_node, out.to_node) = (*region_id, *from, *to);
        }
        Action::AddDatanodes { count } => {
            out.action = "add_datanodes".into();
            out.count = *count;
        }
        Action::RemoveDatanodes { nodes } => {
            out.action = "remove_datanodes".into();
            out.nodes = nodes.clone();
        }
        Action::ReplaceNode { node_id } => {
            out.action = "replace_node".into();
            out.nodes = vec![*node_id];
        }
    }
    out
}

fn event_to_pb(event: &DecisionEvent, truncated: bool) -> pb::DecisionEvent {
    pb::DecisionEvent {
        seq: event.seq,
        decision: Some(decision_to_pb(&event.decision)),
        truncated,
    }
}

#[tonic::async_trait]
impl Autoadmin for AutoadminService {
    type WatchDecisionsStream = ReceiverStream<Result<pb::DecisionEvent, Status>>;

    async fn watch_decisions(
        &self,
        request: Request<pb::WatchDecisionsRequest>,
    ) -> Result<Response<Self::WatchDecisionsStream>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "WatchDecisions", async {
            self.limits.check_header(req.header.as_ref())?;
            self.leadership.require_leader()?;
            let (backlog, mut live) = self.autoadmin.log.lock().watch(req.after_seq);
            let (tx, rx) = mpsc::channel(STREAM_BUFFER);
            let mut leadership = self.leadership.subscribe();
            let term = leadership.borrow().term;
            tokio::spawn(async move {
                // A sequence from another log (another leader's, further along) must not
                // hide this log's events: the backlog replays all of them, and live events
                // count from this log's end.
                let mut last = req.after_seq.min(backlog.last_seq);
                let mut truncated = backlog.truncated;
                for event in &backlog.events {
                    if tx.send(Ok(event_to_pb(event, truncated))).await.is_err() {
                        return;
                    }
                    truncated = false;
                    last = event.seq;
                }
                loop {
                    tokio::select! {
                        event = live.recv() => match event {
                            // Events the backlog already gave come again from the receiver.
                            Ok(event) if event.seq <= last => {}
                            Ok(event) => {
                                last = event.seq;
                                if tx.send(Ok(event_to_pb(&event, false))).await.is_err() {
                                    return;
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(missed)) => {
                                let _ = tx.send(Err(Status::aborted(format!(
                                    "this watcher fell {missed} events behind; resume with after_seq = {last}"
                                )))).await;
                                return;
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                        changed = leadership.changed() => {
                            let state = leadership.borrow().clone();
                            if changed.is_err() || !state.serving || state.term != term {
                                let _ = tx.send(Err(Status::unavailable(format!(
                                    "this member stopped leading; resume with after_seq = {last} on the new leader"
                                )))).await;
                                return;
                            }
                        }
                        _ = tx.closed() => return,
                    }
                }
            });
            Ok(ReceiverStream::new(rx))
        })
        .await
    }

    async fn approve_decision(
        &self,
        request: Request<pb::DecisionRequest>,
    ) -> Result<Response<pb::DecisionResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "ApproveDecision", async {
            self.limits.check_header(req.header.as_ref())?;
            let decision = ask(
                &self.autoadmin.actor,
                ApproveDecision { id: req.id },
                &self.leadership,
            )
            .await?;
            Ok(self.response(decision))
        })
        .await
    }

    async fn reject_decision(
        &self,
        request: Request<pb::DecisionRequest>,
    ) -> Result<Response<pb::DecisionResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "RejectDecision", async {
            self.limits.check_header(req.header.as_ref())?;
            let reason = (!req.reason.is_empty()).then(|| req.reason.chars().take(500).collect());
            let decision = ask(
                &self.autoadmin.actor,
                RejectDecision { id: req.id, reason },
                &self.leadership,
            )
            .await?;
            Ok(self.response(decision))
        })
        .await
    }

    async fn set_mode(
        &self,
        request: Request<pb::SetModeRequest>,
    ) -> Result<Response<pb::SetModeResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "SetMode", async {
            self.limits.check_header(req.header.as_ref())?;
            let mode = Mode::parse(&req.mode).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "mode {:?}: expected auto, dry-run or approve",
                    req.mode
                ))
            })?;
            let mode = ask(&self.autoadmin.actor, SetMode { mode }, &self.leadership).await?;
            Ok(pb::SetModeResponse {
                header: self.limits.response_header(),
                mode: mode.name().into(),
            })
        })
        .await
    }
}
