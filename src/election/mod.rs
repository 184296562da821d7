//! Who leads. [`Leadership`] is the shared, cheap-to-read answer that gRPC handlers consult on
//! every request (no actor round trip); the `ElectionActor` (src/actors/election.rs) is the only
//! writer. A follower refuses heartbeats, DDL and KV writes with a redirect naming the leader:
//! `UNAVAILABLE` with metadata `x-metasrv-leader` (address) and `x-metasrv-leader-id`.

pub mod user;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::Status;

/// Metadata keys of a not-leader redirect.
pub const LEADER_ADDR_KEY: &str = "x-metasrv-leader";
pub const LEADER_ID_KEY: &str = "x-metasrv-leader-id";

/// A metasrv replica, as it campaigns (the value of its election key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    /// Where clients reach its gRPC services.
    pub grpc_addr: String,
    pub http_addr: String,
}

/// The current view of leadership.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LeadershipState {
    /// This member leads and has loaded its state: it serves heartbeats, DDL and writes.
    pub serving: bool,
    /// The leader, if known (this member or another).
    pub leader: Option<MemberInfo>,
    /// Grows each time this member becomes leader.
    pub term: u64,
}

pub struct Leadership {
    me: MemberInfo,
    state: RwLock<LeadershipState>,
    changes: watch::Sender<LeadershipState>,
}

impl Leadership {
    pub fn new(me: MemberInfo) -> Self {
        let (changes, _) = watch::channel(LeadershipState::default());
        Self {
            me,
            state: RwLock::new(LeadershipState::default()),
            changes,
        }
    }

    pub fn me(&self) -> &MemberInfo {
        &self.me
    }

    pub fn state(&self) -> LeadershipState {
        self.state.read().clone()
    }

    pub fn is_serving_leader(&self) -> bool {
        self.state.read().serving
    }

    pub fn leader(&self) -> Option<MemberInfo> {
        self.state.read().leader.clone()
    }

    /// Changes as they happen (for tests, HTTP and clients in-process).
    pub fn subscribe(&self) -> watch::Receiver<LeadershipState> {
        self.changes.subscribe()
    }

    /// Only the ElectionActor calls this.
    pub fn set(&self, state: LeadershipState) {
        *self.state.write() = state.clone();
        self.changes.send_replace(state);
    }

    /// `Ok` on the serving leader; otherwise the redirect status.
    pub fn require_leader(&self) -> Result<(), Status> {
        let state = self.state.read();
        if state.serving {
            return Ok(());
        }
        Err(not_leader(state.leader.as_ref(), &self.me))
    }
}

/// The redirect a follower answers with.
pub fn not_leader(leader: Option<&MemberInfo>, me: &MemberInfo) -> Status {
    let mut status = match leader {
        Some(leader) if leader.id != me.id => Status::unavailable(format!(
            "metasrv {} is not the leader; the leader is member {} at {}",
            me.id, leader.id, leader.grpc_addr
        )),
        Some(_) => Status::unavailable(format!(
            "metasrv {} is becoming the leader; retry shortly",
            me.id
        )),
        None => Status::unavailable(format!(
            "metasrv {} is not the leader and no leader is elected yet; retry shortly",
            me.id
        )),
    };
    if let Some(leader) = leader.filter(|l| l.id != me.id) {
        if let Ok(addr) = leader.grpc_addr.parse() {
            status.metadata_mut().insert(LEADER_ADDR_KEY, addr);
        }
        if let Ok(id) = leader.id.to_string().parse() {
            status.metadata_mut().insert(LEADER_ID_KEY, id);
        }
    }
    status
}

/// The leader address a redirect names, if any.
pub fn redirect_target(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_ADDR_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
