//! `ElectionActor`: decides whether this member leads, and is the only writer of [`Leadership`]
//! and of the [`FencedStore`]'s fence. On the etcd backend it campaigns through etcd's election
//! API with a lease of `election.lease_ttl`, kept alive at a third of the TTL; on the embedded
//! backend the single replica is leader at once.
//!
//! Becoming leader: set the fence (the leader key), reload the catalog, reset the ClusterView,
//! then serve. Losing leadership (etcd says the lease expired, or has not confirmed it for 4/3
//! of its TTL; another leader observed; the fence lost; resign): refuse writes first (fence off), stop
//! serving, close every heartbeat stream, then campaign again with a new lease. Every step is
//! tagged with a campaign generation so that messages from an abandoned campaign are ignored.
//!
//! Doubt is not loss: while renewals fail but etcd has not said the lease is gone,
//! [`Leadership`] reports the leader in doubt past the lease's sure end; heartbeats are then
//! answered without a lease on open streams. The fence (this member's election key) is watched,
//! so a key deleted or overwritten behind this member's back ends leading within milliseconds,
//! not at the next write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};

use crate::actors::cluster_view::{
    load_cordons, load_registered_nodes, CloseAllSessions, ClusterView, Cordon, RegisteredNode,
    ResetView,
};
use crate::catalog::{StandbyCatalog, TableManager};
use crate::election::{not_leader, Leadership, LeadershipState, MemberInfo};
use crate::store::fenced::{Fence, FencedStore};

// ---- Messages -------------------------------------------------------------------------------

/// Gives up leadership at once (graceful shutdown): the lease is revoked so another member
/// takes over without waiting for the TTL.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resign;

/// An operator asks the leader to hand leadership over (`POST /v1/leader/resign`): it steps
/// down and campaigns again behind the members already waiting (etcd grants the election in
/// campaign order), so another member leads if there is one. Answers whether it was leading
/// (`Err` with why not).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct HandOver;

/// A campaign won: `leader_key` is this member's key inside the store prefix.
#[derive(Message)]
#[rtype(result = "()")]
struct Elected {
    generation: u64,
    leader_key: Vec<u8>,
}

/// The lease of a campaign could not be kept alive.
#[derive(Message)]
#[rtype(result = "()")]
struct LeaseLost {
    generation: u64,
    reason: String,
}

/// The catalog reload after winning finished.
#[derive(Message)]
#[rtype(result = "()")]
struct StateLoaded {
    generation: u64,
    result: Result<LoadedState, String>,
}

/// What a term reads besides the catalog before it serves.
struct LoadedState {
    /// The persisted cordons: the view knows them before this term places a region.
    cordons: Vec<Cordon>,
    /// The registered datanodes: the view knows them before the first stream opens, so the
    /// thousands that reconnect at once after a takeover find their registration unchanged
    /// and write nothing (each used to write it again, racing the Scheduler's seeding).
    registered: Vec<RegisteredNode>,
}

/// This member's election key is gone or holds another value: it leads no more.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FenceLost {
    pub generation: u64,
    pub reason: String,
}

/// A write found the fence `leader_key` lost (see [`FencedStore::on_fence_lost`]).
#[derive(Message)]
#[rtype(result = "()")]
struct WriteFenced {
    leader_key: Vec<u8>,
}

/// etcd's election says who leads now.
#[derive(Message)]
#[rtype(result = "()")]
struct LeaderObserved {
    leader: Option<MemberInfo>,
}

// ---- The actor ------------------------------------------------------------------------------

/// How to campaign on etcd.
#[derive(Clone)]
pub struct EtcdElection {
    pub client: Client,
    /// The store's key prefix (`{key_prefix}/{cluster_id}/`); the election lives under it.
    pub prefix: Vec<u8>,
    pub lease_ttl: Duration,
}

impl EtcdElection {
    fn name(&self) -> Vec<u8> {
        let mut name = self.prefix.clone();
        name.extend_from_slice(ELECTION_NAME);
        name
    }
}

/// The election name inside the store prefix; candidates' keys live under it.
pub const ELECTION_NAME: &[u8] = b"__election/metasrv";

pub struct ElectionActor {
    me: MemberInfo,
    me_json: Vec<u8>,
    leadership: Arc<Leadership>,
    fenced: Arc<FencedStore>,
    tables: Arc<TableManager>,
    cluster_view: Addr<ClusterView>,
    etcd: Option<EtcdElection>,
    generation: u64,
    term: u64,
    lease_id: Option<i64>,
    keepalive: Option<tokio::task::JoinHandle<()>>,
    /// Watches this term's election key (see [`guard_fence`]); aborted on step-down.
    fence_guard: Option<tokio::task::JoinHandle<()>>,
    /// This term's leader key (the fence), relative to the store prefix.
    fence_key: Option<Vec<u8>>,
    /// Where the catalog load runs: not this actor's thread, which keeps the election lease
    /// alive and must never wait behind seconds of loading and decoding.
    background: tokio::runtime::Handle,
    /// The catalog load in progress: aborted when its campaign is abandoned, so that a late
    /// load of an earlier term never replaces a newer catalog (or a running failover's fence).
    loading: Option<tokio::task::AbortHandle>,
    /// The copy of the catalog kept while this member does not lead (etcd only), handed to
    /// the catalog load when it wins (see `catalog::standby`).
    standby: Option<StandbyCatalog>,
}

impl ElectionActor {
    pub fn new(
        me: MemberInfo,
        leadership: Arc<Leadership>,
        fenced: Arc<FencedStore>,
        tables: Arc<TableManager>,
        cluster_view: Addr<ClusterView>,
        etcd: Option<EtcdElection>,
        background: tokio::runtime::Handle,
    ) -> Self {
        let me_json = serde_json::to_vec(&me).unwrap_or_default();
        Self {
            me,
            me_json,
            leadership,
            fenced,
            tables,
            cluster_view,
            etcd,
            generation: 0,
            term: 0,
            lease_id: None,
            keepalive: None,
            fence_guard: None,
            fence_key: None,
            background,
            loading: None,
            standby: None,
        }
    }

    /// Keeps a copy of the catalog while this member does not lead, if none is kept yet.
    fn stand_by(&mut self) {
        if self.etcd.is_some() && self.standby.is_none() {
            self.standby = StandbyCatalog::start(self.tables.store().clone(), &self.background);
        }
    }

    fn set_state(&self, serving: bool, leader: Option<MemberInfo>) {
        self.leadership.set(LeadershipState {
            serving,
            leader,
            term: self.term,
        });
    }

    /// Starts a campaign with a fresh lease.
    fn campaign(&mut self, ctx: &mut Context<Self>, delay: Duration) {
        let Some(etcd) = self.etcd.clone() else {
            return;
        };
        self.generation += 1;
        let generation = self.generation;
        let me = ctx.address();
        let value = self.me_json.clone();
        let leadership = self.leadership.clone();
        let fut = async move {
            tokio::time::sleep(delay).await;
            let ttl = etcd.lease_ttl.as_secs().max(1) as i64;
            let (lease, granted_at) = loop {
                let sent_at = Instant::now();
                match etcd.client.lease_client().grant(ttl, None).await {
                    Ok(lease) => {
                        leadership.begin_lease(lease.id(), lease_valid_until(sent_at, lease.ttl()));
                        break (lease.id(), sent_at);
                    }
                    Err(e) => {
                        tracing::warn!("cannot get an election lease from etcd: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            let keepalive = tokio::spawn(keep_alive(
                etcd.client.clone(),
                KeptLease {
                    id: lease,
                    ttl: etcd.lease_ttl,
                    granted_at,
                },
                generation,
                me.clone(),
                leadership,
            ));
            let name = etcd.name();
            loop {
                // etcd answers when we lead; the client's request timeout may cut a long wait,
                // and campaigning again with the same lease resumes the same candidacy.
                match etcd
                    .client
                    .election_client()
                    .campaign(name.clone(), value.clone(), lease)
                    .await
                {
                    Ok(mut response) => {
                        if let Some(key) = response.take_leader() {
                            let key = key.key().to_vec();
                            let relative = key
                                .strip_prefix(etcd.prefix.as_slice())
                                .map(<[u8]>::to_vec)
                                .unwrap_or(key);
                            me.do_send(Elected {
                                generation,
                                leader_key: relative,
                            });
                            return (lease, keepalive);
                        }
                    }
                    Err(e) => tracing::debug!("campaign interrupted: {e}; campaigning again"),
                }
                if keepalive.is_finished() {
                    // The lease is gone: LeaseLost is on its way and starts a new campaign.
                    return (lease, keepalive);
                }
            }
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |(lease, keepalive), actor, _| {
                    if actor.generation == generation {
                        actor.lease_id = Some(lease);
                        if let Some(old) = actor.keepalive.replace(keepalive) {
                            old.abort();
                        }
                    } else {
                        keepalive.abort();
                    }
                }),
        );
    }

    /// Stops leading (if it did) and campaigns again. `new_leader`, when known, is named in the
    /// redirect that closes the heartbeat streams, so datanodes go straight to it.
    fn step_down(&mut self, reason: &str, new_leader: Option<MemberInfo>, ctx: &mut Context<Self>) {
        // The state, not `is_serving_leader`: a lapsed lease still has sessions to close.
        let was_serving = self.leadership.state().serving;
        // Writes first: from here on nothing this member writes can land.
        self.fenced.set_follower();
        self.fence_key = None;
        let new_leader = new_leader.filter(|leader| leader.id != self.me.id);
        self.set_state(false, new_leader.clone());
        if was_serving {
            tracing::warn!(member = self.me.id, %reason, "lost leadership");
            let mut status = not_leader(new_leader.as_ref(), &self.me);
            if new_leader.is_none() {
                status = tonic::Status::unavailable(format!(
                    "metasrv {} is no longer the leader ({reason}); ask any member for the new one",
                    self.me.id
                ));
            }
            self.cluster_view.do_send(CloseAllSessions { status });
            self.cluster_view.do_send(ResetView {
                term: 0,
                cordons: Vec::new(),
                registered: Vec::new(),
            });
        }
        if let Some(keepalive) = self.keepalive.take() {
            keepalive.abort();
        }
        if let Some(guard) = self.fence_guard.take() {
            guard.abort();
        }
        if let Some(loading) = self.loading.take() {
            loading.abort();
        }
        self.revoke_lease();
        self.stand_by();
        self.campaign(ctx, Duration::from_millis(100));
    }

    /// Revokes the current lease in the background (its keys, our candidacy, vanish at once).
    fn revoke_lease(&mut self) {
        if let (Some(lease), Some(etcd)) = (self.lease_id.take(), self.etcd.clone()) {
            tokio::spawn(async move {
                let _ = etcd.client.lease_client().revoke(lease).await;
            });
        }
    }

    fn load_state(&mut self, generation: u64, ctx: &mut Context<Self>) {
        let tables = self.tables.clone();
        let me = ctx.address();
        let standby = self.standby.take();
        let load = self.background.spawn(async move {
            let store = tables.store().clone();
            // The nodes are read beside the catalog, in a task of their own (installing the
            // catalog holds its thread for a while): neither needs the other.
            let nodes = tokio::spawn(async move {
                let started = Instant::now();
                let cordons = load_cordons(store.as_ref())
                    .await
                    .map_err(|e| format!("cannot read the cordoned nodes: {e}"))?;
                let registered = load_registered_nodes(store.as_ref())
                    .await
                    .map_err(|e| format!("cannot read the registered nodes: {e}"))?;
                tracing::info!(
                    nodes = registered.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "registered nodes read"
                );
                Ok::<_, String>((cordons, registered))
            });
            let mut nodes = AbortOnDrop(nodes);
            tables
                .become_leader(standby)
                .await
                .map_err(|e| e.to_string())?;
            let (cordons, registered) = (&mut nodes.0)
                .await
                .map_err(|e| format!("reading the nodes failed: {e}"))??;
            Ok(LoadedState {
                cordons,
                registered,
            })
        });
        if let Some(earlier) = self.loading.replace(load.abort_handle()) {
            earlier.abort();
        }
        ctx.spawn(
            async move {
                let result = load
                    .await
                    .unwrap_or_else(|e| Err(format!("the catalog load task failed: {e}")));
                me.do_send(StateLoaded { generation, result });
            }
            .into_actor(self),
        );
    }
}

/// Aborts a task when dropped: the node reads of a load that is itself aborted stop with it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Until when a lease of `ttl_secs` renewed (or granted) by a request sent at `sent_at` surely
/// still holds: etcd starts the TTL when it handles the request, which is after `sent_at`. A
/// sixth of the TTL is kept in hand for the clock-rate difference between machines.
fn lease_valid_until(sent_at: Instant, ttl_secs: i64) -> Instant {
    let ttl = Duration::from_secs(ttl_secs.max(0) as u64);
    sent_at + ttl - ttl / 6
}

/// The election lease a [`keep_alive`] task renews.
struct KeptLease {
    id: i64,
    ttl: Duration,
    /// When the grant request was sent: the lease surely holds until a TTL after it.
    granted_at: Instant,
}

/// Keeps the lease alive at a third of its TTL. A failed renewal is retried every
/// [`DOUBT_RETRY`] (the leader is in doubt once its sure end passes, see [`Leadership`]), and
/// leading ends (`LeaseLost`) only when etcd answers that the lease is gone, or when etcd has not
/// confirmed it for 4/3 of its TTL: past that this member is cut off from etcd, another member
/// may lead, and its datanodes must go there before their region leases lapse. So an etcd
/// outage shorter than the TTL (an etcd leader change) closes no heartbeat stream.
async fn keep_alive(
    client: Client,
    lease: KeptLease,
    generation: u64,
    actor: Addr<ElectionActor>,
    leadership: Arc<Leadership>,
) {
    let period = lease.ttl / 3;
    // A renewal is a round trip of milliseconds; one that hangs (its etcd member is gone) is
    // given up soon so the next attempt can reach another member.
    let attempt_timeout = (period / 2).min(Duration::from_millis(500));
    // Past this a new leader may have been elected for a third of a TTL: its datanodes must
    // get there before their leases lapse, so they are redirected now.
    let give_up_after = lease.ttl + lease.ttl / 3;
    let mut last_renewal_sent = lease.granted_at;
    let mut next_attempt = tokio::time::Instant::now() + period;
    let mut channel: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let reason = loop {
        tokio::time::sleep_until(next_attempt).await;
        if channel.is_none() {
            let mut leases = client.lease_client();
            let opened = tokio::time::timeout(attempt_timeout, leases.keep_alive(lease.id)).await;
            channel = opened.ok().and_then(Result::ok);
        }
        let sent_at = Instant::now();
        let answer = match channel.as_mut() {
            Some((keeper, stream)) => {
                let attempt = async {
                    keeper.keep_alive().await?;
                    stream.message().await
                };
                tokio::time::timeout(attempt_timeout, attempt).await.ok()
            }
            None => None,
        };
        match answer {
            Some(Ok(Some(response))) if response.ttl() > 0 => {
                leadership.extend_lease(lease.id, lease_valid_until(sent_at, response.ttl()));
                last_renewal_sent = sent_at;
                next_attempt = tokio::time::Instant::from_std(sent_at) + period;
            }
            Some(Ok(Some(_))) => break "etcd says the election lease expired".to_owned(),
            // etcd-client reports a lease etcd no longer knows as this error.
            Some(Err(etcd_client::Error::LeaseKeepAliveError(reason)))
                if reason.contains("lease not found") =>
            {
                break format!("etcd says the election lease is gone ({reason})");
            }
            _ => {
                channel = None;
                let unconfirmed = last_renewal_sent.elapsed();
                if unconfirmed >= give_up_after {
                    break format!(
                        "etcd has not confirmed the election lease for {unconfirmed:?} (over 4/3 \
                         of its TTL): this member is cut off from etcd"
                    );
                }
                tracing::warn!(
                    ?unconfirmed,
                    "cannot renew the election lease; retrying (heartbeats get no region lease \
                     while it is unconfirmed)"
                );
                next_attempt = tokio::time::Instant::now() + DOUBT_RETRY;
            }
        }
    };
    actor.do_send(LeaseLost { generation, reason });
}

/// How soon a failed renewal is tried again: often, since no region lease is granted once the
/// lease's sure end passes.
const DOUBT_RETRY: Duration = Duration::from_millis(100);

/// Watches this member's election key (the fence) for its term: if it is deleted or comes to
/// hold another value (an operator's `etcdctl del`, a restored backup, a bug elsewhere), this
/// member leads no more, even though its lease lives on. Leading ends at once in [`Leadership`];
/// the actor then steps down. A failed watch is re-established from a fresh read, so no change
/// goes unseen.
async fn guard_fence(
    client: Client,
    key: Vec<u8>,
    value: Vec<u8>,
    term: u64,
    generation: u64,
    actor: Addr<ElectionActor>,
    leadership: Arc<Leadership>,
) {
    const RETRY: Duration = Duration::from_millis(200);
    let lost = |kv: Option<&etcd_client::KeyValue>| match kv {
        None => Some("its election key is gone".to_owned()),
        Some(kv) if kv.value() != value.as_slice() => {
            Some("its election key holds another value".to_owned())
        }
        Some(_) => None,
    };
    let reason = 'guard: loop {
        let read = match client.kv_client().get(key.clone(), None).await {
            Ok(read) => read,
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if let Some(reason) = lost(read.kvs().first()) {
            break reason;
        }
        let from = read.header().map(|h| h.revision() + 1).unwrap_or(0);
        let options = etcd_client::WatchOptions::new().with_start_revision(from);
        if let Ok(mut stream) = client
            .watch_client()
            .watch(key.clone(), Some(options))
            .await
        {
            while let Ok(Some(response)) = stream.message().await {
                for event in response.events() {
                    let kv = match event.event_type() {
                        etcd_client::EventType::Delete => None,
                        etcd_client::EventType::Put => event.kv(),
                    };
                    if let Some(reason) = lost(kv) {
                        break 'guard reason;
                    }
                }
                if response.canceled() {
                    break;
                }
            }
        }
        tokio::time::sleep(RETRY).await;
    };
    tracing::error!(term, %reason, "the fence is lost: leading ends now");
    leadership.depose(term);
    actor.do_send(FenceLost { generation, reason });
}

/// Follows etcd's view of the leader and reports each change. The observe stream is restarted
/// every few seconds (and the leader queried afresh), so a stream that silently stalls across an
/// etcd outage cannot leave this member with a stale view.
async fn observe(etcd: EtcdElection, actor: Addr<ElectionActor>) {
    const REFRESH: Duration = Duration::from_secs(3);
    let name = etcd.name();
    let parse = |value: &[u8]| serde_json::from_slice::<MemberInfo>(value).ok();
    loop {
        let mut client = etcd.client.election_client();
        if let Ok(Ok(response)) = tokio::time::timeout(REFRESH, client.leader(name.clone())).await {
            actor.do_send(LeaderObserved {
                leader: response.kv().and_then(|kv| parse(kv.value())),
            });
        }
        if let Ok(Ok(mut stream)) =
            tokio::time::timeout(REFRESH, client.observe(name.clone())).await
        {
            let restart_at = tokio::time::Instant::now() + REFRESH;
            while let Ok(Ok(Some(response))) =
                tokio::time::timeout_at(restart_at, stream.message()).await
            {
                actor.do_send(LeaderObserved {
                    leader: response.kv().and_then(|kv| parse(kv.value())),
                });
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Actor for ElectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (me, leadership) = (ctx.address(), self.leadership.clone());
        self.fenced.on_fence_lost(move |fence| {
            leadership.depose(leadership.state().term);
            me.do_send(WriteFenced {
                leader_key: fence.key.clone(),
            });
        });
        match self.etcd.clone() {
            None => {
                // A single replica on the embedded store: always the leader.
                self.generation = 1;
                self.term = 1;
                self.set_state(false, Some(self.me.clone()));
                self.load_state(1, ctx);
            }
            Some(etcd) => {
                self.set_state(false, None);
                self.stand_by();
                ctx.spawn(observe(etcd, ctx.address()).into_actor(self));
                self.campaign(ctx, Duration::ZERO);
            }
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(keepalive) = self.keepalive.take() {
            keepalive.abort();
        }
        if let Some(guard) = self.fence_guard.take() {
            guard.abort();
        }
    }
}

impl Handler<Elected> for ElectionActor {
    type Result = ();

    fn handle(&mut self, msg: Elected, ctx: &mut Self::Context) {
        if msg.generation != self.generation {
            return;
        }
        self.term += 1;
        tracing::info!(
            member = self.me.id,
            term = self.term,
            "won the election; loading state"
        );
        if let Some(etcd) = &self.etcd {
            let mut full_key = etcd.prefix.clone();
            full_key.extend_from_slice(&msg.leader_key);
            let guard = tokio::spawn(guard_fence(
                etcd.client.clone(),
                full_key,
                self.me_json.clone(),
                self.term,
                msg.generation,
                ctx.address(),
                self.leadership.clone(),
            ));
            if let Some(earlier) = self.fence_guard.replace(guard) {
                earlier.abort();
            }
        }
        self.fence_key = Some(msg.leader_key.clone());
        self.fenced.set_leader(Fence {
            key: msg.leader_key,
            value: self.me_json.clone(),
        });
        self.set_state(false, Some(self.me.clone()));
        self.load_state(msg.generation, ctx);
    }
}

impl Handler<StateLoaded> for ElectionActor {
    type Result = ();

    fn handle(&mut self, msg: StateLoaded, ctx: &mut Self::Context) {
        if msg.generation != self.generation {
            return;
        }
        match msg.result {
            Ok(LoadedState {
                cordons,
                registered,
            }) => {
                // A clean view of the registered nodes, each heard from by its stream again.
                self.cluster_view.do_send(ResetView {
                    term: self.term,
                    cordons,
                    registered,
                });
                self.set_state(true, Some(self.me.clone()));
                tracing::info!(member = self.me.id, term = self.term, "serving as leader");
            }
            Err(e) => {
                tracing::error!(member = self.me.id, "cannot load state as leader: {e}");
                if self.etcd.is_some() {
                    self.step_down(&format!("loading state failed: {e}"), None, ctx);
                } else {
                    // Single replica: try again shortly.
                    let generation = msg.generation;
                    ctx.run_later(Duration::from_millis(500), move |actor, ctx| {
                        actor.load_state(generation, ctx)
                    });
                }
            }
        }
    }
}

impl Handler<LeaseLost> for ElectionActor {
    type Result = ();

    fn handle(&mut self, msg: LeaseLost, ctx: &mut Self::Context) {
        if msg.generation != self.generation {
            return;
        }
        self.step_down(&msg.reason, None, ctx);
    }
}

impl Handler<FenceLost> for ElectionActor {
    type Result = ();

    fn handle(&mut self, msg: FenceLost, ctx: &mut Self::Context) {
        if msg.generation != self.generation {
            return;
        }
        self.step_down(&format!("the fence is lost: {}", msg.reason), None, ctx);
    }
}

impl Handler<WriteFenced> for ElectionActor {
    type Result = ();

    fn handle(&mut self, msg: WriteFenced, ctx: &mut Self::Context) {
        if self.fence_key.as_deref() == Some(msg.leader_key.as_slice()) {
            self.step_down("a write found the fence lost", None, ctx);
        }
    }
}

impl Handler<LeaderObserved> for ElectionActor {
    type Result = ();

    fn handle(&mut self, msg: LeaderObserved, ctx: &mut Self::Context) {
        let state = self.leadership.state();
        match &msg.leader {
            Some(leader) if leader.id == self.me.id => {}
            Some(other) if state.serving || state.leader.as_ref() == Some(&self.me) => {
                let reason = format!("member {} leads now", other.id);
                self.step_down(&reason, Some(other.clone()), ctx);
            }
            _ => {
                if !state.serving && state.leader.as_ref() != Some(&self.me) {
                    self.set_state(false, msg.leader);
                }
            }
        }
    }
}

impl Handler<HandOver> for ElectionActor {
    type Result = Result<(), String>;

    fn handle(&mut self, _msg: HandOver, ctx: &mut Self::Context) -> Self::Result {
        if self.etcd.is_none() {
            return Err(
                "a standalone metasrv is the only member: there is no one to hand over to".into(),
            );
        }
        if !self.leadership.state().serving {
            return Err(format!("metasrv {} is not the leader", self.me.id));
        }
        self.step_down("an operator asked it to resign", None, ctx);
        Ok(())
    }
}

impl Handler<Resign> for ElectionActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Resign, _ctx: &mut Self::Context) -> Self::Result {
        let Some(etcd) = self.etcd.clone() else {
            return Box::pin(async {});
        };
        self.generation += 1; // abandon every campaign in flight
        self.fenced.set_follower();
        self.set_state(false, None);
        if let Some(keepalive) = self.keepalive.take() {
            keepalive.abort();
        }
        if let Some(guard) = self.fence_guard.take() {
            guard.abort();
        }
        tracing::info!(member = self.me.id, "resigning");
        let lease = self.lease_id.take();
        Box::pin(async move {
            if let Some(lease) = lease {
                let mut leases = etcd.client.lease_client();
                let _ = tokio::time::timeout(Duration::from_secs(1), leases.revoke(lease)).await;
            }
        })
    }
}
