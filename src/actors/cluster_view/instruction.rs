//! The mailbox's vocabulary: what metasrv asks a datanode ([`Instruction`], and its protobuf
//! form with a term-tagged id), how ClusterView reaches a session, and why an instruction got no
//! answer.

use std::time::Duration;

use actix::prelude::*;

use crate::actors::heartbeat_session::{CloseSession, DeliverInstruction};
use crate::proto::v1 as pb;
use crate::stats::RegionRole;

/// How ClusterView reaches one session.
#[derive(Clone)]
pub struct SessionHandle {
    pub session_id: u64,
    pub deliver: Recipient<DeliverInstruction>,
    pub close: Recipient<CloseSession>,
}

/// What metasrv can ask a datanode to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instruction {
    OpenRegion {
        region_id: u64,
        table: pb::TableName,
        role: RegionRole,
        /// The first lease of the region on the node.
        lease_millis: u64,
    },
    CloseRegion {
        region_id: u64,
    },
    PromoteToLeader {
        region_id: u64,
    },
    DemoteToFollower {
        region_id: u64,
    },
    InvalidateRouteCache {
        table_ids: Vec<u64>,
    },
    /// The leader of a region stops writing it and stays a follower (a migration's first half).
    DowngradeRegion {
        region_id: u64,
    },
    /// A follower becomes the leader with a first lease (a migration's second half).
    UpgradeRegion {
        region_id: u64,
        lease_millis: u64,
    },
}

impl Instruction {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::OpenRegion { .. } => "open_region",
            Self::CloseRegion { .. } => "close_region",
            Self::PromoteToLeader { .. } => "promote_to_leader",
            Self::DemoteToFollower { .. } => "demote_to_follower",
            Self::InvalidateRouteCache { .. } => "invalidate_route_cache",
            Self::DowngradeRegion { .. } => "downgrade_region",
            Self::UpgradeRegion { .. } => "upgrade_region",
        }
    }

    pub fn to_pb(&self, id: u64) -> pb::Instruction {
        use pb::instruction::Kind;
        let kind = match self.clone() {
            Self::OpenRegion {
                region_id,
                table,
                role,
                lease_millis,
            } => Kind::OpenRegion(pb::OpenRegion {
                region_id,
                table_name: Some(table),
                role: match role {
                    RegionRole::Leader => pb::RegionRole::Leader,
                    RegionRole::Follower => pb::RegionRole::Follower,
                } as i32,
                lease_millis,
            }),
            Self::CloseRegion { region_id } => Kind::CloseRegion(pb::CloseRegion { region_id }),
            Self::PromoteToLeader { region_id } => {
                Kind::PromoteToLeader(pb::PromoteToLeader { region_id })
            }
            Self::DemoteToFollower { region_id } => {
                Kind::DemoteToFollower(pb::DemoteToFollower { region_id })
            }
            Self::InvalidateRouteCache { table_ids } => {
                Kind::InvalidateRouteCache(pb::InvalidateRouteCache { table_ids })
            }
            Self::DowngradeRegion { region_id } => {
                Kind::DowngradeRegion(pb::DowngradeRegion { region_id })
            }
            Self::UpgradeRegion {
                region_id,
                lease_millis,
            } => Kind::UpgradeRegion(pb::UpgradeRegion {
                region_id,
                lease_millis,
            }),
        };
        pb::Instruction {
            id,
            kind: Some(kind),
        }
    }
}

/// Why an instruction got no result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MailboxError {
    #[error("node {0} has no heartbeat stream")]
    NodeNotConnected(u64),
    #[error("node {node_id} did not answer instruction {instruction_id} within {timeout:?}")]
    Timeout {
        node_id: u64,
        instruction_id: u64,
        timeout: Duration,
    },
    #[error("the mailbox was closed before node {0} answered")]
    Closed(u64),
    #[error("the heartbeat stream of node {0} ended before it answered")]
    StreamEnded(u64),
}

/// When each pending instruction times out, earliest first, swept on one timer. A timer per
/// instruction (`run_later`) is an item of the actor's context, and actix polls every item
/// each time the actor wakes: with 10,000 instructions in flight (a failover, a seeding of
/// large tables) every heartbeat ClusterView took cost 10,000 timer polls, for as long as the
/// instruction timeout, answered or not.
#[derive(Default)]
pub(super) struct Deadlines {
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(std::time::Instant, u64)>>,
}

impl Deadlines {
    pub fn push(&mut self, at: std::time::Instant, id: u64) {
        self.heap.push(std::cmp::Reverse((at, id)));
    }

    /// Takes the ids due by `now`, earliest first.
    pub fn take_due(&mut self, now: std::time::Instant) -> Vec<u64> {
        let mut due = Vec::new();
        while let Some(std::cmp::Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            due.push(id);
        }
        due
    }

    /// Once most entries are for instructions already answered (`pending` of them are still
    /// waiting), keeps only those `is_pending` accepts: the heap stays proportional to what
    /// waits, not to what was sent within a timeout.
    pub fn compact(&mut self, pending: usize, is_pending: impl Fn(u64) -> bool) {
        if self.heap.len() > 2 * pending + 1024 {
            self.heap
                .retain(|std::cmp::Reverse((_, id))| is_pending(*id));
        }
    }

    pub fn clear(&mut self) {
        self.heap.clear();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::Deadlines;
    use std::time::{Duration, Instant};

    #[test]
    fn due_ids_come_earliest_first_and_only_once() {
        let start = Instant::now();
        let mut deadlines = Deadlines::default();
        deadlines.push(start + Duration::from_secs(3), 3);
        deadlines.push(start + Duration::from_secs(1), 1);
        deadlines.push(start + Duration::from_secs(2), 2);
        assert!(deadlines.take_due(start).is_empty());
        assert_eq!(
            deadlines.take_due(start + Duration::from_secs(2)),
            vec![1, 2]
        );
        assert!(deadlines
            .take_due(start + Duration::from_secs(2))
            .is_empty());
        assert_eq!(deadlines.take_due(start + Duration::from_secs(9)), vec![3]);
        assert_eq!(deadlines.len(), 0);
    }

    #[test]
    fn compaction_drops_answered_instructions_only_once_they_dominate() {
        let start = Instant::now();
        let mut deadlines = Deadlines::default();
        for id in 0..2_000 {
            deadlines.push(start + Duration::from_secs(10), id);
        }
        // 2,000 entries for 1,000 pending: not worth a pass yet.
        deadlines.compact(1_000, |id| id < 1_000);
        assert_eq!(deadlines.len(), 2_000);
        // 2,000 entries for 10 pending: only those stay.
        deadlines.compact(10, |id| id < 10);
        assert_eq!(deadlines.len(), 10);
        assert_eq!(
            deadlines.take_due(start + Duration::from_secs(10)),
            (0..10).collect::<Vec<_>>()
        );
    }
}
