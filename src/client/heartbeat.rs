//! `HeartbeatLink`: the datanode side of the heartbeat stream. The datanode sends requests and
//! reads events; the link keeps one stream open to the current metasrv leader, finds the new
//! leader by itself (AskLeader on the known members, or the redirect's hint) when the stream is
//! redirected or cut, reconnecting with backoff, and tells the datanode when it (re)connected so
//! that it can send a full report at once. The datanode's code sees at most a short gap.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::proto::v1 as pb;
use crate::proto::v1::heartbeat_client::HeartbeatClient;

/// Where a datanode sends its heartbeats.
#[derive(Clone)]
pub enum MetasrvTarget {
    /// One fixed channel (a single metasrv).
    Channel(Channel),
    /// A metasrv cluster: the link asks these members who leads and follows the leader.
    Cluster(Vec<String>),
    /// A metasrv cluster served over TLS (see [`super::ClientSecurity`]).
    SecureCluster(Vec<String>, super::ClientSecurity),
    /// A metasrv cluster reached over a pool's shared connections (simulated datanodes by the
    /// thousand; see [`ChannelPool`]).
    Pooled(Arc<ChannelPool>),
}

/// Connections to a metasrv cluster shared by many heartbeat links: a load generator's
/// simulated datanodes (10,000 of them beside metasrv on one machine) multiplex their streams
/// over `per_member` HTTP/2 connections per member instead of opening one each, which would
/// cost two descriptors and a port per node, twice during a leader change. metasrv sees one
/// stream per node either way. Channels connect lazily and reconnect by themselves, so a member
/// that restarts is reached again through the same pool.
pub struct ChannelPool {
    endpoints: Vec<String>,
    per_member: usize,
    channels: parking_lot::Mutex<std::collections::HashMap<String, Vec<Channel>>>,
}

impl ChannelPool {
    pub fn new(endpoints: Vec<String>, per_member: usize) -> Arc<Self> {
        Arc::new(Self {
            endpoints,
            per_member: per_member.max(1),
            channels: Default::default(),
        })
    }

    /// The shared channel of `node_id` to the member at `addr`.
    fn channel(&self, addr: &str, node_id: u64) -> Result<Channel, String> {
        let mut channels = self.channels.lock();
        if !channels.contains_key(addr) {
            let made = (0..self.per_member)
                .map(|_| {
                    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                        .map(|endpoint| {
                            endpoint
                                .connect_timeout(Duration::from_secs(3))
                                .tcp_nodelay(true)
                                .connect_lazy()
                        })
                        .map_err(|e| format!("{addr}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            channels.insert(addr.to_owned(), made);
        }
        let shared = &channels[addr];
        Ok(shared[node_id as usize % shared.len()].clone())
    }
}

/// What happened on the link.
#[derive(Debug)]
pub enum LinkEvent {
    /// A stream to the leader is open: send a full report now.
    Connected,
    /// A response on the current stream. For an acknowledgement (a response without
    /// instructions) `request_sent_at` is when the datanode sent the request it answers: region
    /// leases count from there.
    Response {
        response: pb::HeartbeatResponse,
        request_sent_at: Option<std::time::Instant>,
    },
    /// The stream ended; `reason` is the status metasrv closed it with, if any. The link is
    /// already reconnecting.
    Disconnected { reason: Option<tonic::Status> },
    /// metasrv refused this datanode for good (bad data, or a newer stream of the same node
    /// took over): the link stopped.
    GaveUp { reason: tonic::Status },
}

/// The longest pause between reconnection attempts. It bounds how late a datanode finds a
/// new leader after an election (the region leases it holds run out meanwhile): 500 ms keeps
/// that well inside a 3 s lease, and 10,000 nodes asking twice a second who leads cost a
/// member little (the answer is in memory).
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// How long a request may wait for its acknowledgement before the link gives the stream up and
/// looks for the leader again: a metasrv that hangs (paused, partitioned behind an open socket)
/// must not hold the datanode. Twice the heartbeat interval metasrv announces, and never less
/// than this (the opening of a stream has [`OPENING_TIMEOUT`]).
const MIN_ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// Before metasrv has announced its interval.
const INITIAL_ACK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long opening a stream (and the acknowledgements of the requests written before the
/// first acknowledgement) may take at least: longer than a steady acknowledgement, since a new
/// leader opens every datanode's stream at once.
/// A member that hangs holds the link this long; it loses its leadership sooner (the election
/// lease is 3 s by default), and its streams close with it.
const OPENING_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HeartbeatLink {
    requests: mpsc::Sender<(std::time::Instant, pb::HeartbeatRequest)>,
    events: mpsc::Receiver<LinkEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl HeartbeatLink {
    /// Starts the link for datanode `node_id` of `cluster_id`.
    pub fn start(target: MetasrvTarget, cluster_id: u64, node_id: u64) -> Self {
        let (requests, requests_rx) = mpsc::channel(64);
        let (events_tx, events) = mpsc::channel(64);
        let task = tokio::spawn(run(target, cluster_id, node_id, requests_rx, events_tx));
        Self {
            requests,
            events,
            task,
        }
    }

    /// Queues a request for the current stream. Requests sent while disconnected are dropped
    /// (a fresh report follows `Connected`). Errs once the link has stopped.
    pub async fn send(&self, request: pb::HeartbeatRequest) -> Result<(), LinkClosed> {
        self.requests
            .send((std::time::Instant::now(), request))
            .await
            .map_err(|_| LinkClosed)
    }

    /// The next event; `None` once the link has stopped and every event was read.
    pub async fn next_event(&mut self) -> Option<LinkEvent> {
        self.events.recv().await
    }
}

impl Drop for HeartbeatLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the heartbeat link has stopped")]
pub struct LinkClosed;

/// Whether a stream that ended (or did not open) with `status` lost its leader: the connection
/// broke or was refused (a local transport error), the leader did not answer in time, or the
/// stream just ended. Not a status metasrv sent: a member that answers is reachable, and a
/// redirect names the next leader itself.
fn is_unreachable(status: Option<&tonic::Status>) -> bool {
    status.is_none_or(|status| {
        std::error::Error::source(status).is_some()
            || status.code() == tonic::Code::DeadlineExceeded
    })
}

/// A request that only names the node (header, peer, instance): it opens a stream and
/// registers the session without reporting anything (and so is granted nothing).
fn greeting_of(request: &pb::HeartbeatRequest) -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        header: request.header,
        peer: request.peer.clone(),
        instance_id: request.instance_id.clone(),
        ..Default::default()
    }
}

/// The channel to stream on now, with the leader's address: the fixed one (no address), or the
/// leader's (found with backoff). `unreachable`: the leader just lost (see
/// [`super::meta_client::find_leader_via`]).
async fn leader_channel(
    target: &MetasrvTarget,
    cluster_id: u64,
    node_id: u64,
    hint: Option<String>,
    unreachable: Option<String>,
) -> Result<(Option<String>, Channel), tonic::Status> {
    let plaintext = super::ClientSecurity::default();
    let (endpoints, security) = match target {
        MetasrvTarget::Channel(channel) => return Ok((None, channel.clone())),
        MetasrvTarget::Cluster(endpoints) => (endpoints, &plaintext),
        MetasrvTarget::SecureCluster(endpoints, security) => (endpoints, security),
        MetasrvTarget::Pooled(pool) => (&pool.endpoints, &plaintext),
    };
    let mut candidates: Vec<String> = hint.into_iter().collect();
    candidates.extend(endpoints.iter().cloned());
    let mut backoff = Duration::from_millis(50);
    loop {
        let found = match target {
            MetasrvTarget::Pooled(pool) => {
                let connect = |addr: &str| std::future::ready(pool.channel(addr, node_id));
                super::meta_client::find_leader_via(
                    &candidates,
                    cluster_id,
                    node_id,
                    security,
                    connect,
                    unreachable.as_deref(),
                )
                .await
            }
            _ => {
                super::meta_client::find_leader_after(
                    &candidates,
                    cluster_id,
                    node_id,
                    security,
                    unreachable.as_deref(),
                )
                .await
            }
        };
        match found {
            Ok((leader, channel)) => return Ok((Some(leader.addr), channel)),
            Err(super::ClientError::Status(refused)) => return Err(refused),
            Err(e) => tracing::debug!(node_id, ?backoff, "no metasrv leader yet: {e}"),
        }
        // No member knows a leader (an election is under way) or none answered: ask again,
        // still asking the members to wait for the change (`unreachable` is kept). Polling
        // instead had 10,000 datanodes ask twice a second, and open streams the next leader
        // refuses while it loads, on the member that was winning the election meanwhile.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn run(
    target: MetasrvTarget,
    cluster_id: u64,
    node_id: u64,
    mut requests: mpsc::Receiver<(std::time::Instant, pb::HeartbeatRequest)>,
    events: mpsc::Sender<LinkEvent>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut hint: Option<String> = None;
    let mut ack_timeout = INITIAL_ACK_TIMEOUT;
    let mut greeting: Option<pb::HeartbeatRequest> = None;
    // The leader whose stream broke or would not open without naming another: the searches
    // until a stream opens again ask the other members to answer only once the leadership
    // changed (see `find_leader_via`). It stays through refusals: a member that won the
    // election names itself before it serves, and refuses streams until it does; asked again
    // to wait, it answers the moment it serves, where polling it had every datanode open
    // streams it refused.
    let mut unreachable: Option<String> = None;
    let bearer = match &target {
        MetasrvTarget::SecureCluster(_, security) => security.bearer(),
        _ => Ok(super::BearerToken(None)),
    };
    let bearer = match bearer {
        Ok(bearer) => bearer,
        Err(e) => {
            // Settings no retry can fix: say why and stop (the link reports closed).
            let reason = Some(tonic::Status::invalid_argument(e.to_string()));
            let _ = events.send(LinkEvent::Disconnected { reason }).await;
            return;
        }
    };
    loop {
        let found = leader_channel(
            &target,
            cluster_id,
            node_id,
            hint.take(),
            unreachable.clone(),
        );
        let (leader_addr, channel) = match found.await {
            Ok(found) => found,
            Err(refused) => {
                // The credentials may be fixed on the server's side: say why, and keep trying.
                tracing::warn!(
                    node_id,
                    "metasrv refuses this datanode: {}",
                    refused.message()
                );
                let reason = Some(refused);
                if events
                    .send(LinkEvent::Disconnected { reason })
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(MAX_BACKOFF).await;
                continue;
            }
        };
        // The stream opens with a request, so that the session registers at once: a greeting
        // that names the node and reports nothing, and the datanode sends its full report on
        // `Connected`. Requests it queued while no leader could be found are stale (and
        // opening with one of them would make two full reports per reconnection, 10,000 of
        // them twice over after a takeover). Waiting for the datanode's next request instead
        // would add up to a heartbeat interval to every attempt, and a leader change takes
        // several. Before the datanode's first request there is nothing to greet with: the
        // stream opens with that request (the newest, if several are queued).
        let (first_sent_at, first) = match &greeting {
            Some(greeting) => {
                while requests.try_recv().is_ok() {}
                (std::time::Instant::now(), greeting.clone())
            }
            None => {
                let mut queued = match requests.recv().await {
                    Some(queued) => queued,
                    None => return,
                };
                while let Ok(newer) = requests.try_recv() {
                    queued = newer;
                }
                greeting = Some(greeting_of(&queued.1));
                queued
            }
        };
        // When each request on this stream was sent, oldest first, to pair with its ack, and
        // until when its acknowledgement may take (counted from when it was written to this
        // stream). The first has the opening's allowance: a new leader takes thousands of
        // streams at once, and a stream given up there only comes back to the same queue.
        let opening_timeout = ack_timeout.max(OPENING_TIMEOUT);
        let mut in_flight = std::collections::VecDeque::from([(
            first_sent_at,
            std::time::Instant::now() + opening_timeout,
        )]);
        let (stream_tx, stream_rx) = mpsc::channel(16);
        if stream_tx.send(first).await.is_err() {
            return;
        }
        let opened = tokio::time::timeout(
            opening_timeout,
            HeartbeatClient::new(super::authed(channel, bearer.clone()))
                .heartbeat(ReceiverStream::new(stream_rx)),
        )
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "metasrv did not open the heartbeat stream within {opening_timeout:?}"
            )))
        });
        let mut responses = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::debug!(
                    node_id,
                    ?backoff,
                    "opening a heartbeat stream failed: {status}"
                );
                hint = crate::election::redirect_target(&status);
                if hint.is_some() {
                    // The refusal names the leader: ask it first, as the one that serves.
                    unreachable = None;
                } else if let Some(lost) = leader_addr.filter(|_| is_unreachable(Some(&status))) {
                    unreachable = Some(lost);
                }
                if events
                    .send(LinkEvent::Disconnected {
                        reason: Some(status),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        if events.send(LinkEvent::Connected).await.is_err() {
            return;
        }
        let reason = loop {
            let ack_deadline = in_flight
                .front()
                .map(|(_, deadline)| tokio::time::Instant::from_std(*deadline));
            tokio::select! {
                _ = tokio::time::sleep_until(ack_deadline.unwrap_or_else(tokio::time::Instant::now)),
                    if ack_deadline.is_some() => {
                    tracing::warn!(node_id, ?ack_timeout, ?opening_timeout, "metasrv does not acknowledge heartbeats; looking for the leader again");
                    break Some(tonic::Status::deadline_exceeded(format!(
                        "metasrv did not acknowledge a heartbeat in time ({ack_timeout:?}, \
                         {opening_timeout:?} for the stream's first)"
                    )));
                }
                request = requests.recv() => match request {
                    Some((sent_at, request)) => {
                        // Acknowledgements come in order: no deadline before the one ahead
                        // (the full report right after a greeting shares its allowance).
                        let deadline = in_flight.back().map_or_else(
                            || std::time::Instant::now() + ack_timeout,
                            |(_, ahead)| (std::time::Instant::now() + ack_timeout).max(*ahead),
                        );
                        in_flight.push_back((sent_at, deadline));
                        if stream_tx.send(request).await.is_err() {
                            break None;
                        }
                    }
                    None => return,
                },
                response = responses.next() => match response {
                    Some(Ok(response)) => {
                        if response.heartbeat_interval_millis > 0 {
                            ack_timeout = (Duration::from_millis(response.heartbeat_interval_millis) * 2)
                                .max(MIN_ACK_TIMEOUT);
                        }
                        // Acknowledgements come one per request, in order; instructions come
                        // in responses of their own.
                        let request_sent_at = if response.instructions.is_empty() {
                            in_flight.pop_front().map(|(sent_at, _)| sent_at)
                        } else {
                            None
                        };
                        let event = LinkEvent::Response {
                            response,
                            request_sent_at,
                        };
                        if events.send(event).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(status)) => break Some(status),
                    None => break None,
                },
            }
        };
        tracing::debug!(node_id, ?backoff, ?reason, "heartbeat stream ended");
        hint = reason.as_ref().and_then(crate::election::redirect_target);
        unreachable = leader_addr.filter(|_| is_unreachable(reason.as_ref()));
        // Refused data or a newer stream for this node id: retrying would only repeat it.
        if let Some(status) = reason.as_ref().filter(|s| {
            matches!(
                s.code(),
                tonic::Code::InvalidArgument | tonic::Code::Aborted
            )
        }) {
            let _ = events
                .send(LinkEvent::GaveUp {
                    reason: status.clone(),
                })
                .await;
            return;
        }
        if events
            .send(LinkEvent::Disconnected { reason })
            .await
            .is_err()
        {
            return;
        }
        // Requests queued for the dead stream are stale; the datanode re-reports on Connected.
        while requests.try_recv().is_ok() {}
        tokio::time::sleep(backoff).await;
    }
}
