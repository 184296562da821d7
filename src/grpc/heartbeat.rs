//! The `Heartbeat` gRPC service: each stream becomes a `HeartbeatSession` actor on one of the
//! session arbiters (on the leader only: a follower answers with a redirect); `AskLeader` names
//! the current leader.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{instrumented, RequestLimits};
use crate::actors::heartbeat_session::{HeartbeatSession, SessionContext};
use crate::actors::ActorRuntime;
use crate::election::Leadership;
use crate::metrics::Metrics;
use crate::proto::v1::{self as pb, heartbeat_server::Heartbeat};

pub use crate::proto::v1::heartbeat_server::HeartbeatServer;

/// Responses queued per stream before a node that does not read is cut off.
const OUTBOUND_CAPACITY: usize = 64;

/// The longest an `AskLeader` waits for the leadership to change (see the request's
/// `wait_millis`).
const MAX_ASK_LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(6);

pub struct HeartbeatService {
    actors: Arc<ActorRuntime>,
    sessions: SessionContext,
    limits: RequestLimits,
    metrics: Arc<Metrics>,
    leadership: Arc<Leadership>,
    next_session_id: AtomicU64,
}

impl HeartbeatService {
    pub fn new(
        actors: Arc<ActorRuntime>,
        sessions: SessionContext,
        limits: RequestLimits,
        metrics: Arc<Metrics>,
        leadership: Arc<Leadership>,
    ) -> Self {
        Self {
            actors,
            sessions,
            limits,
            metrics,
            leadership,
            next_session_id: AtomicU64::new(1),
        }
    }
}

impl HeartbeatService {
    /// Returns once this member knows a leader other than the one at `unreachable`, or that
    /// one again after an election (it restarted on its address and won), and itself only
    /// once it serves (a caller sent to a member still loading would be refused); or after
    /// `wait`.
    async fn until_another_leader(&self, unreachable: &str, wait: std::time::Duration) {
        let me = self.leadership.me().id;
        let mut changes = self.leadership.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        // Whether the leadership left `unreachable` since the request came.
        let mut left = false;
        loop {
            {
                let state = changes.borrow_and_update();
                match &state.leader {
                    Some(leader) if leader.grpc_addr != unreachable || left => {
                        if leader.id != me || state.serving {
                            return;
                        }
                    }
                    Some(_) => {}
                    None => left = true,
                }
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                // The wait is over, or the member is shutting down.
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::HeartbeatResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Heartbeat for HeartbeatService {
    type HeartbeatStream = ResponseStream;

    async fn heartbeat(
        &self,
        request: Request<Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, Status> {
        // Only the leader takes heartbeats; a follower redirects the datanode to it.
        self.leadership.require_leader()?;
        let inbound = request.into_inner();
        let (outbound, responses) = tokio::sync::mpsc::channel(OUTBOUND_CAPACITY);
        let session_id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        HeartbeatSession::start_on(
            self.actors.next_session_arbiter(),
            session_id,
            self.sessions.clone(),
            inbound,
            outbound,
        );
        Ok(Response::new(Box::pin(
            ReceiverStream::new(responses).map(|outgoing| *outgoing),
        )))
    }

    async fn ask_leader(
        &self,
        request: Request<pb::AskLeaderRequest>,
    ) -> Result<Response<pb::AskLeaderResponse>, Status> {
        let req = request.into_inner();
        // The wait for the next leader comes before the measured part: it is the caller's
        // choice, not the request's latency (every election would put seconds into
        // AskLeader's histogram). A request the header check refuses does not wait.
        let waits = !req.unreachable_leader.is_empty() && req.wait_millis > 0;
        if waits && self.limits.check_header(req.header.as_ref()).is_ok() {
            let wait =
                std::time::Duration::from_millis(req.wait_millis.into()).min(MAX_ASK_LEADER_WAIT);
            self.until_another_leader(&req.unreachable_leader, wait)
                .await;
        }
        instrumented(&self.metrics, "Heartbeat", "AskLeader", async {
            self.limits.check_header(req.header.as_ref())?;
            let leader = self.leadership.leader().ok_or_else(|| {
                Status::unavailable("no metasrv leader is elected yet; retry shortly")
            })?;
            Ok(pb::AskLeaderResponse {
                header: self.limits.response_header(),
                leader: Some(pb::Peer {
                    id: leader.id,
                    addr: leader.grpc_addr,
                }),
            })
        })
        .await
    }
}
