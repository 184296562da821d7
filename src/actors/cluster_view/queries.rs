//! ClusterView's read-only questions: node listings, placement candidates, load histories,
//! lease expiries and dead nodes. None changes the view.

use std::time::Instant;

use actix::prelude::*;

use super::*;

impl Handler<ListNodes> for ClusterView {
    type Result = MessageResult<ListNodes>;

    fn handle(&mut self, _msg: ListNodes, _ctx: &mut Self::Context) -> Self::Result {
        let now = self.ms_since_epoch(Instant::now());
        let mut nodes: Vec<_> = self
            .nodes
            .iter()
            .map(|(&id, node)| NodeSnapshot {
                id,
                addr: node.addr.clone(),
                instance_id: node.instance_id.clone(),
                status: node.status,
                connected: node.session.is_some(),
                last_heartbeat_unix_ms: node.last_heartbeat_unix_ms,
                phi: node.detector.phi(now),
                stats: node.latest.clone(),
                regions: node.regions.clone(),
                history_len: node.history.len(),
            })
            .collect();
        nodes.sort_by_key(|n| n.id);
        MessageResult(nodes)
    }
}

impl Handler<ListCandidates> for ClusterView {
    type Result = MessageResult<ListCandidates>;

    fn handle(&mut self, _msg: ListCandidates, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.nodes
                .iter()
                .filter(|(id, n)| {
                    n.status == NodeStatus::Alive
                        && n.session.is_some()
                        && !self.draining.contains(id)
                })
                .map(|(&id, n)| Candidate {
                    peer: Peer {
                        id,
                        addr: n.addr.clone(),
                    },
                    regions: n.latest.as_ref().map_or(0, |s| s.region_num),
                    rcus: n.latest.as_ref().map_or(0, |s| s.rcus),
                    wcus: n.latest.as_ref().map_or(0, |s| s.wcus),
                })
                .collect(),
        )
    }
}

impl Handler<GetReplicaReport> for ClusterView {
    type Result = MessageResult<GetReplicaReport>;

    fn handle(&mut self, msg: GetReplicaReport, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.nodes
                .get(&msg.node_id)
                .filter(|n| n.latest.is_some())
                .map(|n| n.replicas.clone()),
        )
    }
}

impl Handler<GetLeaseExpiry> for ClusterView {
    type Result = MessageResult<GetLeaseExpiry>;

    fn handle(&mut self, msg: GetLeaseExpiry, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.nodes
                .get(&msg.node_id)
                .and_then(|n| n.last_request_at)
                .map(|at| at + msg.region_lease),
        )
    }
}

impl Handler<GetLoadHistory> for ClusterView {
    type Result = MessageResult<GetLoadHistory>;

    fn handle(&mut self, msg: GetLoadHistory, _ctx: &mut Self::Context) -> Self::Result {
        let mut nodes: Vec<NodeLoad> = self
            .nodes
            .iter()
            .map(|(&id, node)| NodeLoad {
                id,
                addr: node.addr.clone(),
                status: node.status,
                samples: node
                    .history
                    .iter()
                    .skip(node.history.len().saturating_sub(msg.samples))
                    .cloned()
                    .collect(),
            })
            .collect();
        nodes.sort_by_key(|n| n.id);
        MessageResult(nodes)
    }
}

impl Handler<GetNodeHistory> for ClusterView {
    type Result = MessageResult<GetNodeHistory>;

    fn handle(&mut self, msg: GetNodeHistory, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.nodes
                .get(&msg.node_id)
                .map(|n| n.history.iter().cloned().collect())
                .unwrap_or_default(),
        )
    }
}

impl Handler<ListDeadNodes> for ClusterView {
    type Result = MessageResult<ListDeadNodes>;

    fn handle(&mut self, _msg: ListDeadNodes, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.nodes
                .iter()
                .filter(|(_, n)| n.status == NodeStatus::Dead)
                .map(|(&id, _)| id)
                .collect(),
        )
    }
}
