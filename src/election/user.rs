//! Leader election offered to datanodes (the `Election` gRPC service): one trait,
//! [`UserElection`], with etcd's election API behind it on the etcd backend and an in-process
//! equivalent ([`LocalElection`]) on the embedded backend. A candidacy lives as long as its
//! lease; the first live candidate (by creation order) leads.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;

/// Identifies a candidacy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderKey {
    pub name: String,
    pub key: Vec<u8>,
    pub lease: i64,
    pub rev: i64,
}

/// A leader and the value it published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    pub key: LeaderKey,
    pub value: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("lease {0} does not exist or has expired")]
    LeaseNotFound(i64),
    #[error("{0}")]
    NotLeader(String),
    #[error("election backend unavailable: {0}")]
    Unavailable(String),
    /// A key or lease outside the datanode election namespace (metasrv's own, say).
    #[error("{0}")]
    PermissionDenied(String),
}

pub type ElectionResult<T> = Result<T, ElectionError>;

#[async_trait]
pub trait UserElection: Send + Sync + 'static {
    async fn grant(&self, ttl: Duration) -> ElectionResult<i64>;
    /// Renews a lease; the remaining TTL, zero if the lease is gone.
    async fn keep_alive(&self, lease: i64) -> ElectionResult<Duration>;
    /// Waits until the candidacy of `lease` leads `name`.
    async fn campaign(&self, name: &str, value: Vec<u8>, lease: i64) -> ElectionResult<LeaderKey>;
    async fn proclaim(&self, leader: &LeaderKey, value: Vec<u8>) -> ElectionResult<()>;
    async fn leader(&self, name: &str) -> ElectionResult<Option<LeaderInfo>>;
    /// The leader now and at every change (`None`: nobody leads).
    async fn observe(
        &self,
        name: &str,
    ) -> ElectionResult<BoxStream<'static, ElectionResult<Option<LeaderInfo>>>>;
    async fn resign(&self, leader: &LeaderKey) -> ElectionResult<()>;
}

// ---- etcd -------------------------------------------------------------------------------------

/// Datanode elections on etcd, under `{store prefix}__election/user/{name}`. Callers reach only
/// that namespace: a leader key must lie under its election's name, and a lease must have been
/// granted through this API (marked by a key under `__election/user_lease/` bound to it), so no
/// caller can resign, proclaim on or keep alive metasrv's own election.
pub struct EtcdUserElection {
    client: etcd_client::Client,
    prefix: Vec<u8>,
    lease_prefix: Vec<u8>,
}

impl EtcdUserElection {
    pub fn new(client: etcd_client::Client, store_prefix: &[u8]) -> Self {
        let mut prefix = store_prefix.to_vec();
        prefix.extend_from_slice(b"__election/user/");
        let mut lease_prefix = store_prefix.to_vec();
        lease_prefix.extend_from_slice(b"__election/user_lease/");
        Self {
            client,
            prefix,
            lease_prefix,
        }
    }

    fn full_name(&self, name: &str) -> Vec<u8> {
        let mut full = self.prefix.clone();
        full.extend_from_slice(name.as_bytes());
        full
    }

    fn lease_marker(&self, lease: i64) -> Vec<u8> {
        let mut key = self.lease_prefix.clone();
        key.extend_from_slice(format!("{lease:016x}").as_bytes());
        key
    }

    /// `Ok` if `lease` was granted through this API and is alive; `LeaseNotFound` if it is gone;
    /// `PermissionDenied` if it is alive but someone else's (metasrv's election lease, say).
    async fn check_own_lease(&self, lease: i64) -> ElectionResult<()> {
        let marker = self
            .client
            .kv_client()
            .get(self.lease_marker(lease), None)
            .await
            .map_err(unavailable)?;
        if !marker.kvs().is_empty() {
            return Ok(());
        }
        let alive = self
            .client
            .lease_client()
            .time_to_live(lease, None)
            .await
            .map(|ttl| ttl.ttl() > 0)
            .unwrap_or(false);
        if alive {
            return Err(ElectionError::PermissionDenied(format!(
                "lease {lease} was not granted through the Election API"
            )));
        }
        Err(ElectionError::LeaseNotFound(lease))
    }

    /// The etcd form of a caller's leader key, refused unless it lies under its election.
    fn etcd_key(&self, leader: &LeaderKey) -> ElectionResult<etcd_client::LeaderKey> {
        let mut under = self.full_name(&leader.name);
        under.push(b'/');
        if !leader.key.starts_with(&under) {
            return Err(ElectionError::PermissionDenied(format!(
                "leader key {:?} is not a candidacy of election {:?}",
                String::from_utf8_lossy(&leader.key),
                leader.name
            )));
        }
        Ok(etcd_client::LeaderKey::new()
            .with_name(self.full_name(&leader.name))
            .with_key(leader.key.clone())
            .with_rev(leader.rev)
            .with_lease(leader.lease))
    }

    fn info(&self, name: &str, kv: &etcd_client::KeyValue) -> LeaderInfo {
        LeaderInfo {
            key: LeaderKey {
                name: name.to_owned(),
                key: kv.key().to_vec(),
                lease: kv.lease(),
                rev: kv.create_revision(),
            },
            value: kv.value().to_vec(),
        }
    }
}

fn unavailable(e: etcd_client::Error) -> ElectionError {
    match e {
        etcd_client::Error::GRpcStatus(status)
            if status.code() == tonic::Code::FailedPrecondition
                || status.message().contains("not leader") =>
        {
            ElectionError::NotLeader(status.message().to_owned())
        }
        etcd_client::Error::GRpcStatus(status) if status.message().contains("lease not found") => {
            ElectionError::LeaseNotFound(0)
        }
        other => ElectionError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl UserElection for EtcdUserElection {
    async fn grant(&self, ttl: Duration) -> ElectionResult<i64> {
        let seconds = ttl.as_secs().max(1) as i64;
        let lease = self
            .client
            .lease_client()
            .grant(seconds, None)
            .await
            .map_err(unavailable)?
            .id();
        let marked = self
            .client
            .kv_client()
            .put(
                self.lease_marker(lease),
                Vec::new(),
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await;
        if let Err(e) = marked {
            let _ = self.client.lease_client().revoke(lease).await;
            return Err(unavailable(e));
        }
        Ok(lease)
    }

    async fn keep_alive(&self, lease: i64) -> ElectionResult<Duration> {
        match self.check_own_lease(lease).await {
            Ok(()) => {}
            Err(ElectionError::LeaseNotFound(_)) => return Ok(Duration::ZERO),
            Err(e) => return Err(e),
        }
        let (mut keeper, mut stream) = self
            .client
            .lease_client()
            .keep_alive(lease)
            .await
            .map_err(unavailable)?;
        keeper.keep_alive().await.map_err(unavailable)?;
        let ttl = match stream.message().await.map_err(unavailable)? {
            Some(response) => response.ttl().max(0) as u64,
            None => 0,
        };
        Ok(Duration::from_secs(ttl))
    }

    async fn campaign(&self, name: &str, value: Vec<u8>, lease: i64) -> ElectionResult<LeaderKey> {
        self.check_own_lease(lease).await?;
        let mut response = self
            .client
            .election_client()
            .campaign(self.full_name(name), value, lease)
            .await
            .map_err(|e| match unavailable(e) {
                ElectionError::LeaseNotFound(_) => ElectionError::LeaseNotFound(lease),
                other => other,
            })?;
        let key = response
            .take_leader()
            .ok_or_else(|| ElectionError::Unavailable("etcd returned no leader key".into()))?;
        Ok(LeaderKey {
            name: name.to_owned(),
            key: key.key().to_vec(),
            lease: key.lease(),
            rev: key.rev(),
        })
    }

    async fn proclaim(&self, leader: &LeaderKey, value: Vec<u8>) -> ElectionResult<()> {
        // etcd rewrites the key under the caller's lease: it must be one granted here.
        let key = self.etcd_key(leader)?;
        self.check_own_lease(leader.lease).await?;
        let options = etcd_client::ProclaimOptions::new().with_leader(key);
        self.client
            .election_client()
            .proclaim(value, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn leader(&self, name: &str) -> ElectionResult<Option<LeaderInfo>> {
        match self
            .client
            .election_client()
            .leader(self.full_name(name))
            .await
        {
            Ok(response) => Ok(response.kv().map(|kv| self.info(name, kv))),
            // etcd answers "no leader" as an error.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.message().contains("no leader") =>
            {
                Ok(None)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn observe(
        &self,
        name: &str,
    ) -> ElectionResult<BoxStream<'static, ElectionResult<Option<LeaderInfo>>>> {
        let mut stream = self
            .client
            .election_client()
            .observe(self.full_name(name))
            .await
            .map_err(unavailable)?;
        let name = name.to_owned();
        let this = Self {
            client: self.client.clone(),
            prefix: self.prefix.clone(),
            lease_prefix: self.lease_prefix.clone(),
        };
        Ok(async_stream(move |tx| async move {
            loop {
                match stream.message().await {
                    Ok(Some(response)) => {
                        let info = response.kv().map(|kv| this.info(&name, kv));
                        if tx.send(Ok(info)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(unavailable(e))).await;
                        return;
                    }
                }
            }
        }))
    }

    async fn resign(&self, leader: &LeaderKey) -> ElectionResult<()> {
        let key = self.etcd_key(leader)?;
        match self.check_own_lease(leader.lease).await {
            // A candidacy whose lease expired is already gone: resigning it changes nothing.
            Ok(()) | Err(ElectionError::LeaseNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let options = etcd_client::ResignOptions::new().with_leader(key);
        self.client
            .election_client()
            .resign(Some(options))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// A stream fed by a task through a channel.
fn async_stream<T, F, Fut>(produce: F) -> BoxStream<'static, T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(produce(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

// ---- in-process -------------------------------------------------------------------------------

struct Candidate {
    key: Vec<u8>,
    lease: i64,
    rev: i64,
    value: Vec<u8>,
}

struct Contest {
    candidates: Vec<Candidate>,
    leader: watch::Sender<Option<LeaderInfo>>,
}

#[derive(Default)]
struct LocalState {
    next_id: i64,
    leases: HashMap<i64, (Instant, Duration)>,
    contests: HashMap<String, Contest>,
}

impl LocalState {
    fn contest(&mut self, name: &str) -> &mut Contest {
        self.contests
            .entry(name.to_owned())
            .or_insert_with(|| Contest {
                candidates: Vec::new(),
                leader: watch::channel(None).0,
            })
    }

    /// Drops expired leases and their candidacies; publishes changed leaders.
    fn expire(&mut self, now: Instant) {
        let expired: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return;
        }
        for id in &expired {
            self.leases.remove(id);
        }
        for (name, contest) in &mut self.contests {
            contest.candidates.retain(|c| !expired.contains(&c.lease));
            publish(name, contest);
        }
    }
}

fn leader_of(name: &str, contest: &Contest) -> Option<LeaderInfo> {
    contest.candidates.first().map(|c| LeaderInfo {
        key: LeaderKey {
            name: name.to_owned(),
            key: c.key.clone(),
            lease: c.lease,
            rev: c.rev,
        },
        value: c.value.clone(),
    })
}

fn publish(name: &str, contest: &Contest) {
    let leader = leader_of(name, contest);
    contest.leader.send_if_modified(|current| {
        if *current != leader {
            *current = leader;
            true
        } else {
            false
        }
    });
}

/// The embedded backend's election: same semantics as etcd's, in memory (a single metasrv
/// replica, so nothing to replicate; candidacies do not survive a restart, like leases).
pub struct LocalElection {
    state: Arc<Mutex<LocalState>>,
}

impl LocalElection {
    /// Creates the election and starts its lease-expiry task (which ends with the election);
    /// needs a tokio runtime.
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(LocalState {
            next_id: 1,
            ..LocalState::default()
        }));
        let weak: Weak<Mutex<LocalState>> = Arc::downgrade(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { return };
                state.lock().expire(Instant::now());
            }
        });
        Self { state }
    }
}

#[async_trait]
impl UserElection for LocalElection {
    async fn grant(&self, ttl: Duration) -> ElectionResult<i64> {
        let mut state = self.state.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.leases.insert(id, (Instant::now() + ttl, ttl));
        Ok(id)
    }

    async fn keep_alive(&self, lease: i64) -> ElectionResult<Duration> {
        let mut state = self.state.lock();
        let now = Instant::now();
        state.expire(now);
        match state.leases.get_mut(&lease) {
            Some((deadline, ttl)) => {
                *deadline = now + *ttl;
                Ok(*ttl)
            }
            None => Ok(Duration::ZERO),
        }
    }

    async fn campaign(&self, name: &str, value: Vec<u8>, lease: i64) -> ElectionResult<LeaderKey> {
        let (mut leader, key) = {
            let mut state = self.state.lock();
            state.expire(Instant::now());
            if !state.leases.contains_key(&lease) {
                return Err(ElectionError::LeaseNotFound(lease));
            }
            let rev = state.next_id;
            state.next_id += 1;
            let contest = state.contest(name);
            let key = format!("{name}/{lease:x}").into_bytes();
            if !contest.candidates.iter().any(|c| c.key == key) {
                contest.candidates.push(Candidate {
                    key: key.clone(),
                    lease,
                    rev,
                    value,
                });
            }
            publish(name, contest);
            (contest.leader.subscribe(), key)
        };
        loop {
            let current = leader.borrow_and_update().clone();
            match current {
                Some(info) if info.key.key == key => return Ok(info.key),
                _ => {}
            }
            // Our candidacy may have expired while waiting.
            if !self.state.lock().leases.contains_key(&lease) {
                return Err(ElectionError::LeaseNotFound(lease));
            }
            if leader.changed().await.is_err() {
                return Err(ElectionError::Unavailable(
                    "the election was dropped".into(),
                ));
            }
        }
    }

    async fn proclaim(&self, leader: &LeaderKey, value: Vec<u8>) -> ElectionResult<()> {
        let mut state = self.state.lock();
        state.expire(Instant::now());
        let contest = state.contest(&leader.name);
        match contest.candidates.first_mut() {
            Some(first) if first.key == leader.key => {
                first.value = value;
                publish(&leader.name, contest);
                Ok(())
            }
            _ => Err(ElectionError::NotLeader(format!(
                "this candidacy does not lead {:?}",
                leader.name
            ))),
        }
    }

    async fn leader(&self, name: &str) -> ElectionResult<Option<LeaderInfo>> {
        let mut state = self.state.lock();
        state.expire(Instant::now());
        Ok(state.contests.get(name).and_then(|c| leader_of(name, c)))
    }

    async fn observe(
        &self,
        name: &str,
    ) -> ElectionResult<BoxStream<'static, ElectionResult<Option<LeaderInfo>>>> {
        let receiver = self.state.lock().contest(name).leader.subscribe();
        Ok(tokio_stream::wrappers::WatchStream::new(receiver)
            .map(Ok)
            .boxed())
    }

    async fn resign(&self, leader: &LeaderKey) -> ElectionResult<()> {
        let mut state = self.state.lock();
        let contest = state.contest(&leader.name);
        contest.candidates.retain(|c| c.key != leader.key);
        publish(&leader.name, contest);
        Ok(())
    }
}
