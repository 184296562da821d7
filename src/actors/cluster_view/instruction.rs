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
