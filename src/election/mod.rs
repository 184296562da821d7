//! Who leads. [`Leadership`] is the shared, cheap-to-read answer that gRPC handlers consult on
//! every request (no actor round trip); the `ElectionActor` (src/actors/election.rs) is the only
//! writer. A follower refuses heartbeats, DDL and KV writes with a redirect naming the leader:
//! `UNAVAILABLE` with metadata `x-metasrv-leader` (address) and `x-metasrv-leader-id`.

pub mod user;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

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
    /// On etcd: the election lease this member campaigns with, and until when it surely still
    /// holds (measured from when its last renewal was *sent*). Leading ends there even if the
    /// ElectionActor has not noticed yet: a process paused past its lease (SIGSTOP, a long GC-
    /// like stall, a frozen VM) must not answer one more heartbeat or DDL when it resumes,
    /// because another member may lead by then. None: no lease bounds leading (embedded).
    lease: parking_lot::Mutex<Option<(i64, Instant)>>,
    /// Lock-free mirrors for the per-request check (every heartbeat asks): `serving`, and the
    /// lease's end in nanoseconds after `epoch` (0: unbounded).
    serving_now: AtomicBool,
    lease_end_nanos: AtomicU64,
    epoch: Instant,
    /// Set the moment this member learns its election key is gone or another's (the fence is
    /// lost): leading ends there, before the ElectionActor has stepped down. Cleared when `set`
    /// starts another term.
    deposed: AtomicBool,
}

/// Where this member stands, for a path that must not act on a leadership it cannot be sure of.
#[derive(Debug)]
pub enum Standing {
    /// The serving leader, within its election lease: it may grant region leases.
    Leading,
    /// Still the leader as far as it knows, but its election lease has not been renewed in time
    /// (an etcd hiccup, most likely): it grants nothing until a renewal confirms it, and keeps
    /// its streams, so a momentary doubt costs no reconnects.
    InDoubt,
    /// Not the leader (or deposed): the redirect to answer with.
    NotLeading(Status),
}

impl Leadership {
    pub fn new(me: MemberInfo) -> Self {
        let (changes, _) = watch::channel(LeadershipState::default());
        Self {
            me,
            state: RwLock::new(LeadershipState::default()),
            changes,
            lease: parking_lot::Mutex::new(None),
            serving_now: AtomicBool::new(false),
            lease_end_nanos: AtomicU64::new(0),
            epoch: Instant::now(),
            deposed: AtomicBool::new(false),
        }
    }

    pub fn me(&self) -> &MemberInfo {
        &self.me
    }

    pub fn state(&self) -> LeadershipState {
        self.state.read().clone()
    }

    /// Serving, and within the election lease: the answer every leader-only path checks.
    pub fn is_serving_leader(&self) -> bool {
        self.serving_now.load(Ordering::Acquire)
            && !self.deposed.load(Ordering::Acquire)
            && self.within_lease()
    }

    /// Ends leading at once in `term` (the fence is lost: this member's election key is gone or
    /// holds another value), whatever else it believes; the ElectionActor steps down next. A
    /// report about an earlier term is ignored.
    pub fn depose(&self, term: u64) {
        // Also before serving: a loss found while the catalog loads must keep the term from
        // serving at all.
        if self.state.read().term == term {
            self.deposed.store(true, Ordering::Release);
        }
    }

    /// Leading, in doubt, or not leading (with the redirect).
    pub fn standing(&self) -> Standing {
        if self.is_serving_leader() {
            return Standing::Leading;
        }
        let state = self.state.read();
        if state.serving && !self.deposed.load(Ordering::Acquire) {
            return Standing::InDoubt;
        }
        Standing::NotLeading(self.not_leading(&state))
    }

    fn not_leading(&self, state: &LeadershipState) -> Status {
        if state.serving {
            // Deposed, and the ElectionActor has not stepped down yet.
            return Status::unavailable(format!(
                "metasrv {} lost its leadership (its election key is gone); ask any member for \
                 the new leader",
                self.me.id
            ));
        }
        not_leader(state.leader.as_ref(), &self.me)
    }

    fn within_lease(&self) -> bool {
        match self.lease_end_nanos.load(Ordering::Acquire) {
            0 => true,
            end => self.nanos_since_epoch(Instant::now()) < end,
        }
    }

    fn nanos_since_epoch(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.epoch).as_nanos() as u64).max(1)
    }

    /// A new election lease: leading (once won) is bounded by `valid_until`.
    pub fn begin_lease(&self, lease_id: i64, valid_until: Instant) {
        let mut lease = self.lease.lock();
        *lease = Some((lease_id, valid_until));
        self.lease_end_nanos
            .store(self.nanos_since_epoch(valid_until), Ordering::Release);
    }

    /// A renewal of `lease_id` was acknowledged; a renewal of an abandoned lease is ignored.
    pub fn extend_lease(&self, lease_id: i64, valid_until: Instant) {
        let mut lease = self.lease.lock();
        if let Some((current, until)) = lease.as_mut() {
            if *current == lease_id && valid_until > *until {
                *until = valid_until;
                self.lease_end_nanos
                    .store(self.nanos_since_epoch(valid_until), Ordering::Release);
            }
        }
    }

    /// Until when the current election lease surely holds (None: no lease bounds leading).
    pub fn lease_valid_until(&self) -> Option<Instant> {
        self.lease.lock().map(|(_, until)| until)
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
        // A deposed term stays deposed; the next term starts clean.
        if self.state.read().term != state.term {
            self.deposed.store(false, Ordering::Release);
        }
        self.serving_now.store(state.serving, Ordering::Release);
        *self.state.write() = state.clone();
        self.changes.send_replace(state);
    }

    /// `Ok` on the serving leader; otherwise the redirect status.
    pub fn require_leader(&self) -> Result<(), Status> {
        match self.standing() {
            Standing::Leading => Ok(()),
            Standing::InDoubt => Err(Status::unavailable(format!(
                "metasrv {} cannot confirm its leadership (its election lease was not renewed \
                 in time); retry shortly",
                self.me.id
            ))),
            Standing::NotLeading(status) => Err(status),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn member(id: u64) -> MemberInfo {
        MemberInfo {
            id,
            name: format!("m{id}"),
            grpc_addr: format!("127.0.0.1:{}", 5000 + id),
            http_addr: format!("127.0.0.1:{}", 6000 + id),
        }
    }

    fn serving(leadership: &Leadership) {
        leadership.set(LeadershipState {
            serving: true,
            leader: Some(leadership.me().clone()),
            term: 1,
        });
    }

    #[test]
    fn without_a_lease_the_serving_leader_serves() {
        let leadership = Leadership::new(member(1));
        assert!(leadership.require_leader().is_err(), "not serving yet");
        serving(&leadership);
        assert!(leadership.is_serving_leader());
        assert!(leadership.require_leader().is_ok());
    }

    #[test]
    fn leading_ends_when_the_election_lease_may_have_lapsed() {
        let leadership = Leadership::new(member(1));
        serving(&leadership);
        leadership.begin_lease(7, Instant::now() + Duration::from_secs(60));
        assert!(leadership.is_serving_leader());
        // A process that resumes after its lease: it still believes it serves, but must not.
        leadership.begin_lease(8, Instant::now() - Duration::from_millis(1));
        assert!(!leadership.is_serving_leader());
        let status = leadership.require_leader().expect_err("lapsed lease");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("cannot confirm"), "{status:?}");
        // A renewal of an abandoned lease does not revive it; one of the current lease does.
        leadership.extend_lease(7, Instant::now() + Duration::from_secs(60));
        assert!(!leadership.is_serving_leader());
        leadership.extend_lease(8, Instant::now() + Duration::from_secs(60));
        assert!(leadership.is_serving_leader());
    }

    #[test]
    fn a_doubtful_leader_is_in_doubt_and_a_deposed_one_leads_no_more() {
        let leadership = Leadership::new(member(1));
        serving(&leadership);
        leadership.begin_lease(7, Instant::now() - Duration::from_millis(1));
        assert!(matches!(leadership.standing(), Standing::InDoubt));
        leadership.extend_lease(7, Instant::now() + Duration::from_secs(60));
        assert!(matches!(leadership.standing(), Standing::Leading));
        // A report about another term changes nothing; one about this term deposes at once.
        leadership.depose(2);
        assert!(leadership.is_serving_leader());
        leadership.depose(1);
        assert!(!leadership.is_serving_leader());
        match leadership.standing() {
            Standing::NotLeading(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable);
                assert!(
                    status.message().contains("lost its leadership"),
                    "{status:?}"
                );
            }
            other => panic!("deposed, yet {other:?}"),
        }
        // The next term starts clean.
        leadership.set(LeadershipState {
            serving: true,
            leader: Some(leadership.me().clone()),
            term: 2,
        });
        assert!(leadership.is_serving_leader());
    }

    #[test]
    fn a_follower_redirects_to_the_leader_it_knows() {
        let leadership = Leadership::new(member(1));
        leadership.set(LeadershipState {
            serving: false,
            leader: Some(member(2)),
            term: 0,
        });
        let status = leadership.require_leader().expect_err("follower");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(redirect_target(&status).as_deref(), Some("127.0.0.1:5002"));
    }
}
