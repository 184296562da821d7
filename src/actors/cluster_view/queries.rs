//! ClusterView's read-only questions: node listings, placement candidates, load histories,
//! lease expiries and dead nodes. None changes the view.

use std::time::Instant;

use actix::prelude::*;

use super::*;
use crate::cns::snapshot::NodeBrief;

impl ClusterView {
    /// `page` of the nodes in id order, each as `describe` makes it, with the total and where
    /// the next page starts.
    fn page_of<T>(&self, page: NodePage, describe: impl Fn(u64, &NodeEntry) -> T) -> Paged<T> {
        let mut ids: Vec<u64> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| page.after.is_none_or(|after| *id > after))
            .collect();
        ids.sort_unstable();
        let limit = page.limit.max(1);
        let next_after = (ids.len() > limit).then(|| ids[limit - 1]);
        ids.truncate(limit);
        Paged {
            nodes: ids
                .into_iter()
                .filter_map(|id| Some(describe(id, self.nodes.get(&id)?)))
                .collect(),
            total: self.nodes.len(),
            next_after,
        }
    }

    fn snapshot(&self, id: u64, node: &NodeEntry, now: f64) -> NodeSnapshot {
        NodeSnapshot {
            id,
            addr: node.addr.clone(),
            instance_id: node.instance_id.clone(),
            status: node.status,
            connected: node.session.is_some(),
            last_heartbeat_unix_ms: node.last_heartbeat_unix_ms,
            phi: node.detector.phi(now),
            stats: node.latest.clone(),
            leader_regions: node.leader_regions,
            follower_regions: node.follower_regions,
            regions: None,
            history_len: node.history.len(),
            cordoned: self.cordoned.get(&id).cloned(),
        }
    }
}

impl Handler<ListNodes> for ClusterView {
    type Result = MessageResult<ListNodes>;

    fn handle(&mut self, msg: ListNodes, _ctx: &mut Self::Context) -> Self::Result {
        let now = self.ms_since_epoch(Instant::now());
        MessageResult(self.page_of(msg.page, |id, node| self.snapshot(id, node, now)))
    }
}

impl Handler<GetNode> for ClusterView {
    type Result = MessageResult<GetNode>;

    fn handle(&mut self, msg: GetNode, _ctx: &mut Self::Context) -> Self::Result {
        let now = self.ms_since_epoch(Instant::now());
        MessageResult(self.nodes.get(&msg.node_id).map(|node| NodeSnapshot {
            regions: Some(node.regions.clone()),
            ..self.snapshot(msg.node_id, node, now)
        }))
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
                        && !self.cordoned.contains_key(id)
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

/// Samples a node's CPU share is averaged over for the planners (ten heartbeats).
const UTILIZATION_SAMPLES: usize = 10;

impl Handler<GetLoadSnapshot> for ClusterView {
    type Result = MessageResult<GetLoadSnapshot>;

    fn handle(&mut self, _msg: GetLoadSnapshot, _ctx: &mut Self::Context) -> Self::Result {
        let mut nodes: Vec<NodeBrief> = self
            .nodes
            .iter()
            .map(|(&id, n)| {
                let recent = n.history.len().clamp(1, UTILIZATION_SAMPLES);
                let utilization = n
                    .history
                    .work(UTILIZATION_SAMPLES)
                    .map(|(_, share)| share)
                    .sum::<f64>()
                    / recent as f64;
                NodeBrief {
                    node_id: id,
                    schedulable: n.status == NodeStatus::Alive
                        && n.session.is_some()
                        && !self.cordoned.contains_key(&id),
                    ru: n.ru,
                    capacity: n.history.capacity(),
                    utilization,
                    regions: n.leader_regions + n.follower_regions,
                    leaders: n.leader_regions,
                    size: n.size,
                    hottest: n.hottest.clone(),
                    coldest: n.coldest.clone(),
                }
            })
            .collect();
        nodes.sort_unstable_by_key(|n| n.node_id);
        MessageResult(nodes)
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
        MessageResult(self.page_of(msg.page, |id, node| NodeLoad {
            id,
            addr: node.addr.clone(),
            status: node.status,
            samples: node.history.newest(msg.samples).collect(),
        }))
    }
}

impl Handler<GetNodeHistory> for ClusterView {
    type Result = MessageResult<GetNodeHistory>;

    fn handle(&mut self, msg: GetNodeHistory, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.nodes
                .get(&msg.node_id)
                .map(|n| n.history.newest(usize::MAX).collect())
                .unwrap_or_default(),
        )
    }
}

impl Handler<ListDeadNodes> for ClusterView {
    type Result = MessageResult<ListDeadNodes>;

    fn handle(&mut self, _msg: ListDeadNodes, _ctx: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        MessageResult(
            self.nodes
                .iter()
                .filter(|(_, n)| n.status == NodeStatus::Dead)
                .map(|(&id, n)| DeadNode {
                    node_id: id,
                    // Seeded nodes count from their seeding (this term heard nothing earlier).
                    silent_for: n
                        .last_request_at
                        .map_or(Duration::MAX, |at| now.saturating_duration_since(at)),
                })
                .collect(),
        )
    }
}
