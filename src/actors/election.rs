//! `ElectionActor`: decides whether this member leads, and is the only writer of [`Leadership`]
//! and of the [`FencedStore`]'s fence. On the etcd backend it campaigns through etcd's election
//! API with a lease of `election.lease_ttl`, kept alive at a third of the TTL; on the embedded
//! backend the single replica is leader at once.
//!
//! Becoming leader: set the fence (the leader key), reload the catalog, reset the ClusterView,
//! then serve. Losing leadership (lease not renewed in time, another leader observed, resign):
//! refuse writes first (fence off), stop serving, close every heartbeat stream, then campaign
//! again with a new lease. Every step is tagged with a campaign generation so that messages from
//! an abandoned campaign are ignored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};

use crate::actors::cluster_view::{CloseAllSessions, ClusterView, ResetView};
use crate::catalog::TableManager;
use crate::election::{not_leader, Leadership, LeadershipState, MemberInfo};
use crate::store::fenced::{Fence, FencedStore};

// ---- Messages -------------------------------------------------------------------------------

/// Gives up leadership at once (graceful shutdown): the lease is revoked so another member
/// takes over without waiting for the TTL.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resign;

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
    result: Result<(), String>,
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
    /// Where the catalog load runs: not this actor's thread, which keeps the election lease
    /// alive and must never wait behind seconds of loading and decoding.
    background: tokio::runtime::Handle,
    /// The catalog load in progress: aborted when its campaign is abandoned, so that a late
    /// load of an earlier term never replaces a newer catalog (or a running failover's fence).
    loading: Option<tokio::task::AbortHandle>,
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
            background,
            loading: None,
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
            let lease = loop {
                let sent_at = Instant::now();
                match etcd.client.lease_client().grant(ttl, None).await {
                    Ok(lease) => {
                        leadership.begin_lease(lease.id(), lease_valid_until(sent_at, lease.ttl()));
                        break lease.id();
                    }
                    Err(e) => {
                        tracing::warn!("cannot get an election lease from etcd: {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            };
            let keepalive = tokio::spawn(keep_alive(
                etcd.client.clone(),
                lease,
                etcd.lease_ttl,
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
            self.cluster_view.do_send(ResetView { term: 0 });
        }
        if let Some(keepalive) = self.keepalive.take() {
            keepalive.abort();
        }
        if let Some(loading) = self.loading.take() {
            loading.abort();
        }
        self.revoke_lease();
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
        let load = self
            .background
            .spawn(async move { tables.become_leader().await.map_err(|e| e.to_string()) });
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

/// Until when a lease of `ttl_secs` renewed (or granted) by a request sent at `sent_at` surely
/// still holds: etcd starts the TTL when it handles the request, which is after `sent_at`. A
/// sixth of the TTL is kept in hand for the clock-rate difference between machines.
fn lease_valid_until(sent_at: Instant, ttl_secs: i64) -> Instant {
    let ttl = Duration::from_secs(ttl_secs.max(0) as u64);
    sent_at + ttl - ttl / 6
}

/// Keeps `lease` alive at a third of its TTL; reports `LeaseLost` once it cannot be sure the
/// lease still holds (before the TTL runs out, so leadership ends before the key vanishes).
async fn keep_alive(
    client: Client,
    lease: i64,
    ttl: Duration,
    generation: u64,
    actor: Addr<ElectionActor>,
    leadership: Arc<Leadership>,
) {
    let period = ttl / 3;
    let mut last_renewal = Instant::now();
    let mut channel: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let reason = loop {
        tokio::time::sleep(period).await;
        if channel.is_none() {
            channel = client.lease_client().keep_alive(lease).await.ok();
        }
        let renewed = match channel.as_mut() {
            Some((keeper, stream)) => {
                let sent_at = Instant::now();
                let attempt = async {
                    keeper.keep_alive().await?;
                    stream.message().await
                };
                match tokio::time::timeout(period, attempt).await {
                    Ok(Ok(Some(response))) if response.ttl() > 0 => {
                        leadership.extend_lease(lease, lease_valid_until(sent_at, response.ttl()));
                        true
                    }
                    Ok(Ok(Some(_))) => break "the election lease expired".to_owned(),
                    _ => {
                        channel = None;
                        false
                    }
                }
            }
            None => false,
        };
        if renewed {
            last_renewal = Instant::now();
        } else if last_renewal.elapsed() + period >= ttl {
            break format!(
                "the election lease was not renewed for {:?}",
                last_renewal.elapsed()
            );
        }
    };
    actor.do_send(LeaseLost { generation, reason });
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
                ctx.spawn(observe(etcd, ctx.address()).into_actor(self));
                self.campaign(ctx, Duration::ZERO);
            }
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(keepalive) = self.keepalive.take() {
            keepalive.abort();
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
            Ok(()) => {
                // A clean view: nodes register again as their streams reconnect here.
                self.cluster_view.do_send(ResetView { term: self.term });
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
