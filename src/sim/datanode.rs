//! A simulated datanode: streams realistic heartbeats to metasrv at a configurable rate, obeys
//! (or, for tests, ignores) instructions, and reconnects with backoff when the stream breaks.
//! Tests, examples and benchmarks use it in place of a real datanode.

use crate::clock::unix_ms;
use crate::ids::IdMap;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::load::Workload;
pub use crate::client::heartbeat::MetasrvTarget;
use crate::client::heartbeat::{HeartbeatLink, LinkEvent};
use crate::proto::sim as sim_pb;
use crate::proto::v1 as pb;
use crate::stats::RegionRole;

/// How a simulated node behaves.
#[derive(Clone, Debug)]
pub struct SimDatanodeConfig {
    pub cluster_id: u64,
    pub node_id: u64,
    /// The address the node claims to serve on.
    pub addr: String,
    /// Time between heartbeats.
    pub interval: Duration,
    /// Regions held (as leader) at start.
    pub regions: Vec<u64>,
    /// Whether to carry out instructions and report results; `false` simulates a node that
    /// never answers.
    pub obey_instructions: bool,
    /// Seed of the stats generator, so runs are reproducible.
    pub seed: u64,
    /// The load of the regions it leads; `None`: random load (reproducible by `seed`).
    pub workload: Option<Arc<dyn Workload>>,
    /// Cores, and how fast they are (0.5: every region takes twice the CPU time): with a
    /// workload, the node's CPU usage is its regions' CPU time over these.
    pub cpu_cores: f64,
    pub cpu_speed: f64,
    /// Simulated seconds per real second (a compressed clock for scenarios): a report covers
    /// its real period times this, and says so in its `report_interval`.
    pub time_scale: f64,
}

impl SimDatanodeConfig {
    pub fn new(cluster_id: u64, node_id: u64) -> Self {
        Self {
            cluster_id,
            node_id,
            addr: format!("127.0.0.1:{}", 14000 + node_id % 50000),
            interval: Duration::from_secs(1),
            regions: Vec::new(),
            obey_instructions: true,
            seed: node_id,
            workload: None,
            cpu_cores: 4.0,
            cpu_speed: 1.0,
            time_scale: 1.0,
        }
    }
}

/// Something the simulated node saw, in order.
#[derive(Clone, Debug)]
pub enum SimEvent {
    /// The heartbeat stream is open.
    Connected,
    /// The stream ended; `reason` is the status metasrv closed it with, if any.
    Disconnected { reason: Option<tonic::Status> },
    /// An instruction arrived (and was carried out if the node obeys).
    Instruction(pb::Instruction),
}

/// See [`SimDatanode::write_log`].
#[derive(Clone)]
pub struct WriteLog {
    shared: Arc<Mutex<Shared>>,
}

impl WriteLog {
    pub fn accepted_writes(&self) -> Vec<AcceptedWrite> {
        self.shared.lock().accepted.clone()
    }

    /// Until when this node could have accepted writes for `region_id`: the furthest end of a
    /// lease it held while leading the region. Two nodes never write a region at once if each
    /// new leader's `leading_since` comes after every earlier leader's horizon.
    pub fn write_horizon(&self, region_id: u64) -> Option<Instant> {
        self.shared.lock().write_horizon.get(&region_id).copied()
    }

    /// When this node last became the leader of `region_id` (opened or promoted).
    pub fn leading_since(&self, region_id: u64) -> Option<Instant> {
        self.shared.lock().leading_since.get(&region_id).copied()
    }

    /// Every period in which this node led a region and could write it: (region, from, until),
    /// where `until` is the furthest lease end of the period, cut at the node's death (a killed
    /// node writes nothing). Two nodes never write a region at once if no two periods of
    /// different nodes overlap.
    pub fn leader_periods(&self) -> Vec<(u64, Instant, Instant)> {
        let shared = self.shared.lock();
        shared
            .periods
            .iter()
            .map(|&(region_id, from, until)| {
                let until = shared.died_at.map_or(until, |died| until.min(died));
                (region_id, from, until.max(from))
            })
            .collect()
    }
}

/// A write the node accepted on its data plane.
#[derive(Clone, Debug)]
pub struct AcceptedWrite {
    pub region_id: u64,
    pub rows: u32,
    pub at: Instant,
}

#[derive(Default)]
struct Shared {
    events: Vec<SimEvent>,
    regions: BTreeMap<u64, RegionRole>,
    heartbeats_sent: u64,
    responses: u64,
    rows: BTreeMap<u64, u64>,
    accepted: Vec<AcceptedWrite>,
    /// Until when each region's lease lasts (this node's monotonic clock): reads.
    leases: IdMap<Instant>,
    /// Until when the node may write each region: only leader grants, a leader OpenRegion and
    /// an UpgradeRegion extend it (a follower grant does not, whatever role the node thinks
    /// it has).
    write_leases: IdMap<Instant>,
    /// See [`WriteLog::write_horizon`] and [`WriteLog::leading_since`].
    write_horizon: IdMap<Instant>,
    leading_since: IdMap<Instant>,
    /// How many times the node became the leader of a region (see [`SimDatanode::promotions`]).
    promotions: u64,
    /// See [`WriteLog::leader_periods`]; the last period of a region is its current one.
    periods: Vec<(u64, Instant, Instant)>,
    /// Where each region's last period is in `periods` (every lease renewal extends it: a
    /// search from the end would cost a pass over the node's periods per region renewed).
    last_period: IdMap<usize>,
    died_at: Option<Instant>,
    /// Renewals that found the lease of a region the node holds already lapsed.
    lease_lapses: u64,
    /// Replica states to report (as the leader of their regions).
    replica_stats: Vec<pb::ReplicaStat>,
    /// Instructions are received but neither carried out nor answered (see
    /// [`SimDatanode::ignore_instructions`]).
    ignoring_instructions: bool,
    /// Killed: the data plane answers nothing useful any more (connections that outlive the
    /// server task get UNAVAILABLE, as from a process that is gone).
    dead: bool,
    /// When the last acknowledgement that granted leases arrived.
    last_grant_at: Option<Instant>,
    /// When the link last opened a stream to a leader.
    last_connected_at: Option<Instant>,
    /// Round trips of acknowledged reports, in microseconds, until a reader takes them
    /// (bounded: the oldest are kept, later ones dropped, if nobody reads).
    round_trips_us: Vec<u32>,
}

/// Round trips a node keeps until [`SimDatanode::take_round_trips`] reads them.
const MAX_KEPT_ROUND_TRIPS: usize = 4096;

impl Shared {
    /// Extends (never shortens) the lease of `region_id` to `until` (at `now`).
    fn extend_lease(&mut self, region_id: u64, until: Instant, write: bool, now: Instant) {
        // One lookup of the role for both uses: this runs for every region of every grant
        // (a million a second in the scale benchmark).
        let role = self.regions.get(&region_id).copied();
        let lease = self.leases.entry(region_id).or_insert(until);
        if *lease < now && role.is_some() {
            // The node held the region without a lease for a while: it stopped serving it.
            self.lease_lapses += 1;
        }
        *lease = (*lease).max(until);
        if write {
            let lease = self.write_leases.entry(region_id).or_insert(until);
            *lease = (*lease).max(until);
            let lease = *lease;
            if role == Some(RegionRole::Leader) {
                self.extend_write_horizon(region_id, lease);
            }
        }
    }

    fn note_write_horizon(&mut self, region_id: u64, until: Instant) {
        if self.regions.get(&region_id) == Some(&RegionRole::Leader) {
            self.extend_write_horizon(region_id, until);
        }
    }

    /// Of a region the node leads.
    fn extend_write_horizon(&mut self, region_id: u64, until: Instant) {
        let horizon = self.write_horizon.entry(region_id).or_insert(until);
        *horizon = (*horizon).max(until);
        if let Some(period) = self.last_period_of(region_id) {
            period.2 = period.2.max(until);
        }
    }

    fn became_leader(&mut self, region_id: u64) {
        let now = Instant::now();
        self.leading_since.insert(region_id, now);
        self.promotions += 1;
        self.last_period.insert(region_id, self.periods.len());
        self.periods.push((region_id, now, now));
        if let Some(lease) = self.write_leases.get(&region_id).copied() {
            self.note_write_horizon(region_id, lease);
        }
    }

    /// The node stopped writing `region_id` now (a downgrade): its leader period and write
    /// horizon end here, whatever lease it still holds (that lease now only serves reads).
    fn stopped_leading(&mut self, region_id: u64) {
        let now = Instant::now();
        self.write_leases.remove(&region_id);
        // The horizon only comes closer: a lease that lapsed before now ended the writes then.
        if let Some(horizon) = self.write_horizon.get_mut(&region_id) {
            *horizon = (*horizon).min(now);
        }
        if let Some(period) = self.last_period_of(region_id) {
            period.2 = period.2.min(now);
        }
    }

    fn last_period_of(&mut self, region_id: u64) -> Option<&mut (u64, Instant, Instant)> {
        let index = *self.last_period.get(&region_id)?;
        self.periods.get_mut(index)
    }

    fn leased(&self, region_id: u64) -> bool {
        self.leases
            .get(&region_id)
            .is_some_and(|until| *until > Instant::now())
    }

    fn write_leased(&self, region_id: u64) -> bool {
        self.write_leases
            .get(&region_id)
            .is_some_and(|until| *until > Instant::now())
    }
}

/// The error metadata that marks a datanode's InvalidRoute answer.
pub const ERROR_KIND_KEY: &str = "x-error-kind";
pub const INVALID_ROUTE: &str = "invalid-route";

fn invalid_route(message: String) -> tonic::Status {
    let mut status = tonic::Status::failed_precondition(format!("invalid route: {message}"));
    status.metadata_mut().insert(
        ERROR_KIND_KEY,
        tonic::metadata::MetadataValue::from_static(INVALID_ROUTE),
    );
    status
}

/// The data plane: accepts writes only for regions this node leads, reads for regions it holds.
struct DataPlane {
    node_id: u64,
    shared: Arc<Mutex<Shared>>,
}

#[tonic::async_trait]
impl sim_pb::datanode_server::Datanode for DataPlane {
    async fn write(
        &self,
        request: tonic::Request<sim_pb::WriteRequest>,
    ) -> Result<tonic::Response<sim_pb::WriteResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut shared = self.shared.lock();
        if shared.dead {
            return Err(tonic::Status::unavailable("the datanode is down"));
        }
        if shared.regions.contains_key(&req.region_id) && !shared.write_leased(req.region_id) {
            return Err(invalid_route(format!(
                "node {} has no lease for region {}",
                self.node_id, req.region_id
            )));
        }
        match shared.regions.get(&req.region_id) {
            Some(RegionRole::Leader) => {}
            Some(RegionRole::Follower) => {
                return Err(invalid_route(format!(
                    "node {} is a follower of region {}",
                    self.node_id, req.region_id
                )))
            }
            None => {
                return Err(invalid_route(format!(
                    "node {} does not serve region {}",
                    self.node_id, req.region_id
                )))
            }
        }
        *shared.rows.entry(req.region_id).or_insert(0) += u64::from(req.rows);
        shared.accepted.push(AcceptedWrite {
            region_id: req.region_id,
            rows: req.rows,
            at: Instant::now(),
        });
        Ok(tonic::Response::new(sim_pb::WriteResponse {
            accepted_rows: u64::from(req.rows),
        }))
    }

    async fn read(
        &self,
        request: tonic::Request<sim_pb::ReadRequest>,
    ) -> Result<tonic::Response<sim_pb::ReadResponse>, tonic::Status> {
        let req = request.into_inner();
        let shared = self.shared.lock();
        if shared.dead {
            return Err(tonic::Status::unavailable("the datanode is down"));
        }
        let Some(role) = shared.regions.get(&req.region_id) else {
            return Err(invalid_route(format!(
                "node {} does not serve region {}",
                self.node_id, req.region_id
            )));
        };
        if !shared.leased(req.region_id) {
            return Err(invalid_route(format!(
                "node {} has no lease for region {}",
                self.node_id, req.region_id
            )));
        }
        Ok(tonic::Response::new(sim_pb::ReadResponse {
            rows: shared.rows.get(&req.region_id).copied().unwrap_or(0),
            is_leader: *role == RegionRole::Leader,
        }))
    }
}

/// A running simulated datanode. Dropping the handle (or `kill`) stops it abruptly, as a crash
/// would: the stream is cut with no goodbye.
pub struct SimDatanode {
    config: SimDatanodeConfig,
    instance_id: String,
    shared: Arc<Mutex<Shared>>,
    changed: watch::Receiver<u64>,
    notify: Arc<watch::Sender<u64>>,
    target: MetasrvTarget,
    task: tokio::task::JoinHandle<()>,
    data_plane: Option<tokio::task::JoinHandle<()>>,
}

impl SimDatanode {
    /// Starts the node against the metasrv at `addr`.
    pub async fn connect(
        addr: &str,
        config: SimDatanodeConfig,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = crate::client::connect(addr).await?;
        Ok(Self::start(channel, config))
    }

    /// Starts the node with a data plane (a `metasrv.sim.Datanode` gRPC server on a free
    /// loopback port, which becomes the node's address).
    pub async fn start_serving(
        channel: Channel,
        config: SimDatanodeConfig,
    ) -> std::io::Result<Self> {
        Self::start_serving_on(MetasrvTarget::Channel(channel), config).await
    }

    /// [`SimDatanode::start_serving`] against any target (e.g. a metasrv cluster).
    pub async fn start_serving_on(
        target: MetasrvTarget,
        config: SimDatanodeConfig,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::serve_on(target, config, listener)
    }

    /// Restarts the node as a process restart would: it dies now, and after `downtime` a new
    /// instance starts with the same id and address, holding no regions (what it held is gone
    /// with the old process).
    pub async fn restart(self, downtime: Duration) -> std::io::Result<Self> {
        let target = self.target.clone();
        let mut config = self.config.clone();
        config.regions.clear();
        let serving = self.data_plane.is_some();
        drop(self);
        tokio::time::sleep(downtime).await;
        if !serving {
            return Ok(Self::start_on(target, config));
        }
        // The old data plane's listener closes as its aborted task is dropped: rebind the same
        // port, for a bounded time.
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match tokio::net::TcpListener::bind(&config.addr).await {
                Ok(listener) => break listener,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        Self::serve_on(target, config, listener)
    }

    fn serve_on(
        target: MetasrvTarget,
        mut config: SimDatanodeConfig,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<Self> {
        config.addr = listener.local_addr()?.to_string();
        let mut node = Self::start_on(target, config);
        let plane = DataPlane {
            node_id: node.config.node_id,
            shared: node.shared.clone(),
        };
        node.data_plane = Some(tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(sim_pb::datanode_server::DatanodeServer::new(plane))
                .serve_with_incoming(crate::server::nodelay_incoming(listener))
                .await;
            if let Err(e) = served {
                tracing::warn!("simulated data plane stopped: {e}");
            }
        }));
        Ok(node)
    }

    /// The address the node claims (and, with a data plane, serves on).
    pub fn addr(&self) -> &str {
        &self.config.addr
    }

    /// A handle on the node's log of accepted writes that outlives the node (to inspect what a
    /// killed node accepted).
    pub fn write_log(&self) -> WriteLog {
        WriteLog {
            shared: self.shared.clone(),
        }
    }

    /// Reports, from now on, that `follower`'s copy of `region_id` is (or is not) in sync.
    pub fn report_replica(&self, region_id: u64, follower: u64, in_sync: bool) {
        let mut shared = self.shared.lock();
        shared.replica_stats.retain(|r| {
            !(r.region_id == region_id && r.peer.as_ref().is_some_and(|p| p.id == follower))
        });
        shared.replica_stats.push(pb::ReplicaStat {
            peer: Some(pb::Peer {
                id: follower,
                addr: String::new(),
            }),
            in_sync,
            is_learner: false,
            region_id,
        });
    }

    /// How many times a region this node holds was renewed only after its lease had lapsed
    /// (it stopped serving it meanwhile). Zero while metasrv keeps every lease alive.
    pub fn lease_lapses(&self) -> u64 {
        self.shared.lock().lease_lapses
    }

    /// When the node last received a lease grant (an acknowledgement of a full report).
    pub fn last_grant_at(&self) -> Option<Instant> {
        self.shared.lock().last_grant_at
    }

    /// When the link last opened a stream to a metasrv leader.
    pub fn last_connected_at(&self) -> Option<Instant> {
        self.shared.lock().last_connected_at
    }

    /// The round trips (request sent to acknowledgement received) since the last call.
    pub fn take_round_trips(&self) -> Vec<Duration> {
        let taken = std::mem::take(&mut self.shared.lock().round_trips_us);
        taken
            .into_iter()
            .map(|us| Duration::from_micros(us.into()))
            .collect()
    }

    /// How many times the node has become the leader of a region (opened as leader, or
    /// promoted), its starting regions included: a cheap way to wait for a failover's
    /// promotions without asking metasrv for routes.
    pub fn promotions(&self) -> u64 {
        self.shared.lock().promotions
    }

    /// The role in which the node holds `region_id`, if it does.
    pub fn role_of(&self, region_id: u64) -> Option<RegionRole> {
        self.shared.lock().regions.get(&region_id).copied()
    }

    /// Regions whose lease is valid now.
    pub fn leased_regions(&self) -> Vec<u64> {
        let shared = self.shared.lock();
        let mut leased: Vec<u64> = shared
            .leases
            .keys()
            .copied()
            .filter(|id| shared.leased(*id))
            .collect();
        leased.sort_unstable();
        leased
    }

    /// Writes the node accepted, in order.
    pub fn accepted_writes(&self) -> Vec<AcceptedWrite> {
        self.shared.lock().accepted.clone()
    }

    /// Starts the node on an existing channel (benchmarks share one channel among many nodes).
    pub fn start(channel: Channel, config: SimDatanodeConfig) -> Self {
        Self::start_on(MetasrvTarget::Channel(channel), config)
    }

    /// Starts the node against `target`.
    pub fn start_on(target: MetasrvTarget, config: SimDatanodeConfig) -> Self {
        let instance_id = uuid::Uuid::new_v4().to_string();
        let shared = Arc::new(Mutex::new(Shared {
            regions: config
                .regions
                .iter()
                .map(|&id| (id, RegionRole::Leader))
                .collect(),
            ..Shared::default()
        }));
        let (notify, changed) = watch::channel(0u64);
        let notify = Arc::new(notify);
        let task = tokio::spawn(run(
            target.clone(),
            config.clone(),
            instance_id.clone(),
            shared.clone(),
            notify.clone(),
        ));
        Self {
            config,
            instance_id,
            shared,
            changed,
            notify,
            target,
            task,
            data_plane: None,
        }
    }

    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Cuts the node off from metasrv (its heartbeats stop) while its data plane keeps serving,
    /// as in a network partition: only its region leases stop it from accepting writes.
    pub fn stop_heartbeats(&self) {
        self.task.abort();
    }

    /// Ends the partition of [`Self::stop_heartbeats`]: the node (same instance, same regions)
    /// streams heartbeats again.
    pub fn resume_heartbeats(&mut self) {
        self.task.abort();
        self.task = tokio::spawn(run(
            self.target.clone(),
            self.config.clone(),
            self.instance_id.clone(),
            self.shared.clone(),
            self.notify.clone(),
        ));
    }

    /// From now on the node receives instructions but neither carries them out nor answers
    /// (a hung process whose heartbeat thread still runs), or again obeys them.
    pub fn ignore_instructions(&self, ignore: bool) {
        self.shared.lock().ignoring_instructions = ignore;
    }

    /// Stops the node abruptly (its stream is cut, its data plane stops).
    pub fn kill(self) {
        drop(self);
    }

    pub fn events(&self) -> Vec<SimEvent> {
        self.shared.lock().events.clone()
    }

    /// Regions the node holds now, with their roles.
    pub fn regions(&self) -> BTreeMap<u64, RegionRole> {
        self.shared.lock().regions.clone()
    }

    /// Heartbeats sent and responses received so far.
    pub fn counts(&self) -> (u64, u64) {
        let shared = self.shared.lock();
        (shared.heartbeats_sent, shared.responses)
    }

    /// Waits until `check` holds on the event log, or fails with `what` after `deadline`.
    pub async fn wait_for_event(
        &self,
        what: &str,
        deadline: Duration,
        check: impl Fn(&[SimEvent]) -> bool,
    ) -> Result<(), String> {
        let mut changed = self.changed.clone();
        let started = Instant::now();
        loop {
            if check(&self.shared.lock().events) {
                return Ok(());
            }
            let left = deadline.saturating_sub(started.elapsed());
            if left.is_zero() || tokio::time::timeout(left, changed.changed()).await.is_err() {
                return Err(format!(
                    "node {}: timed out after {deadline:?} waiting for {what}; events: {:?}",
                    self.config.node_id,
                    self.events()
                ));
            }
        }
    }
}

impl Drop for SimDatanode {
    fn drop(&mut self) {
        {
            let mut shared = self.shared.lock();
            shared.dead = true;
            shared.died_at.get_or_insert_with(Instant::now);
        }
        self.task.abort();
        if let Some(plane) = &self.data_plane {
            plane.abort();
        }
    }
}

/// A tiny deterministic generator (xorshift64*), enough for plausible stats and for picking
/// faults reproducibly in tests. Seed it with a non-zero value.
pub struct Rng(pub u64);

impl Rng {
    /// A generator for any seed (zero included).
    pub fn seeded(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Reporter {
    config: SimDatanodeConfig,
    instance_id: String,
    rng: Rng,
    last_report_ms: u64,
    region_sizes: IdMap<u64>,
}

impl Reporter {
    fn results_only(&self, results: Vec<pb::InstructionResult>) -> pb::HeartbeatRequest {
        pb::HeartbeatRequest {
            header: Some(pb::RequestHeader {
                cluster_id: self.config.cluster_id,
                member_id: self.config.node_id,
            }),
            peer: Some(pb::Peer {
                id: self.config.node_id,
                addr: self.config.addr.clone(),
            }),
            instance_id: self.instance_id.clone(),
            instruction_results: results,
            ..Default::default()
        }
    }

    fn request(
        &mut self,
        regions: &BTreeMap<u64, RegionRole>,
        results: Vec<pb::InstructionResult>,
    ) -> pb::HeartbeatRequest {
        let now = unix_ms();
        let real_period_ms = now.saturating_sub(self.last_report_ms).max(1);
        self.last_report_ms = now;
        let scale = if self.config.time_scale > 0.0 {
            self.config.time_scale
        } else {
            1.0
        };
        let period_ms = ((real_period_ms as f64 * scale) as u64).max(1);
        let mut region_stats = Vec::with_capacity(regions.len());
        let (mut rcus, mut wcus, mut cpu_ms) = (0, 0, 0.0);
        for (&region_id, &role) in regions {
            let (region_rcus, region_wcus, region_cpu_ms, scanned) = match &self.config.workload {
                // A follower serves nothing in the simulation: load follows leadership.
                Some(_) if role == RegionRole::Follower => (0, 0, 0, 0),
                Some(workload) => {
                    let seconds = period_ms as f64 / 1000.0;
                    let demand = workload.demand(region_id).scaled(seconds);
                    let speed = self.config.cpu_speed.max(0.01);
                    (
                        demand.rcus as u64,
                        demand.wcus as u64,
                        (demand.cpu_ms / speed) as u64,
                        demand.scanned_bytes as u64,
                    )
                }
                None => (
                    (self.rng.unit() * 200.0) as u64,
                    (self.rng.unit() * 500.0) as u64,
                    0,
                    0,
                ),
            };
            rcus += region_rcus;
            wcus += region_wcus;
            // Besides its queries' CPU, the node spends 3 ms of CPU per request unit of I/O
            // (the unit's own price): so its CPU follows its RU whatever the mix, and the
            // capacity metasrv learns is its cores, as for a real node with honest prices.
            let io_units =
                (region_rcus as f64 * 4.0).max(scanned as f64 / 1024.0) / 64.0 + region_wcus as f64;
            cpu_ms += region_cpu_ms as f64 + 3.0 * io_units;
            let size = self.region_sizes.entry(region_id).or_insert(64 << 20);
            *size += region_wcus * 1024;
            region_stats.push(pb::RegionStat {
                region_id,
                // metasrv names a region's table by its id: a string per region per report
                // would be the largest cost of simulating a million regions.
                table_name: None,
                rcus: region_rcus,
                wcus: region_wcus,
                approximate_size: *size,
                approximate_rows: *size / 64,
                role: match role {
                    RegionRole::Leader => pb::RegionRole::Leader,
                    RegionRole::Follower => pb::RegionRole::Follower,
                } as i32,
                cpu_time_millis: region_cpu_ms,
                scanned_bytes: scanned,
                attrs: Default::default(),
            });
        }
        let cores = self.config.cpu_cores.max(0.0);
        let cpu_usage = if self.config.workload.is_some() {
            // The regions' CPU over the period, plus 1% of one core of upkeep.
            (cpu_ms / period_ms as f64 * 100.0 + 1.0).min(100.0 * cores.max(1.0))
        } else {
            10.0 + self.rng.unit() * 70.0
        };
        pb::HeartbeatRequest {
            header: Some(pb::RequestHeader {
                cluster_id: self.config.cluster_id,
                member_id: self.config.node_id,
            }),
            peer: Some(pb::Peer {
                id: self.config.node_id,
                addr: self.config.addr.clone(),
            }),
            is_leader: true,
            report_interval: Some(pb::TimeInterval {
                start_timestamp_millis: now - period_ms,
                end_timestamp_millis: now,
            }),
            node_stat: Some(pb::NodeStat {
                rcus,
                wcus,
                table_num: regions.len().div_ceil(4) as u64,
                region_num: regions.len() as u64,
                cpu_usage,
                load: self.rng.unit() * 4.0,
                read_io_rate: rcus as f64 * 4096.0,
                write_io_rate: wcus as f64 * 1024.0,
                cpu_cores: cores,
                attrs: Default::default(),
            }),
            region_stats,
            replica_stats: Vec::new(),
            instance_id: self.instance_id.clone(),
            instruction_results: results,
        }
    }
}

/// One realistic heartbeat request of the node described by `config` (its regions as leader),
/// for load generators that drive streams themselves.
pub fn sample_request(config: &SimDatanodeConfig, instance_id: &str) -> pb::HeartbeatRequest {
    let mut reporter = Reporter {
        rng: Rng::seeded(config.seed),
        config: config.clone(),
        instance_id: instance_id.to_owned(),
        last_report_ms: unix_ms().saturating_sub(config.interval.as_millis() as u64),
        region_sizes: IdMap::default(),
    };
    let regions = config
        .regions
        .iter()
        .map(|&id| (id, RegionRole::Leader))
        .collect();
    reporter.request(&regions, Vec::new())
}

/// Carries out an instruction on the node's regions; returns its result.
fn apply(instruction: &pb::Instruction, shared: &mut Shared) -> pb::InstructionResult {
    use pb::instruction::Kind;
    let outcome: Result<(), String> = match &instruction.kind {
        Some(Kind::OpenRegion(open)) => {
            let role = if open.role == pb::RegionRole::Follower as i32 {
                RegionRole::Follower
            } else {
                RegionRole::Leader
            };
            shared.regions.insert(open.region_id, role);
            if role == RegionRole::Leader {
                shared.became_leader(open.region_id);
            }
            // The first lease counts from receipt (see the contract in heartbeat.proto).
            let now = Instant::now();
            let until = now + Duration::from_millis(open.lease_millis);
            shared.extend_lease(open.region_id, until, role == RegionRole::Leader, now);
            Ok(())
        }
        Some(Kind::CloseRegion(close)) => {
            if shared.regions.get(&close.region_id) == Some(&RegionRole::Leader) {
                shared.stopped_leading(close.region_id);
            }
            shared.regions.remove(&close.region_id);
            shared.leases.remove(&close.region_id);
            shared.write_leases.remove(&close.region_id);
            Ok(())
        }
        Some(Kind::PromoteToLeader(p)) => match shared.regions.get_mut(&p.region_id) {
            Some(role) => {
                *role = RegionRole::Leader;
                shared.became_leader(p.region_id);
                Ok(())
            }
            None => Err(format!("region {} is not open here", p.region_id)),
        },
        Some(Kind::DemoteToFollower(d)) => match shared.regions.get_mut(&d.region_id) {
            Some(role) => {
                let was_leader = *role == RegionRole::Leader;
                *role = RegionRole::Follower;
                if was_leader {
                    shared.stopped_leading(d.region_id);
                }
                Ok(())
            }
            None => Err(format!("region {} is not open here", d.region_id)),
        },
        Some(Kind::DowngradeRegion(d)) => {
            if shared.regions.get(&d.region_id) == Some(&RegionRole::Leader) {
                shared.regions.insert(d.region_id, RegionRole::Follower);
                shared.stopped_leading(d.region_id);
            }
            Ok(())
        }
        Some(Kind::UpgradeRegion(u)) => match shared.regions.get_mut(&u.region_id) {
            Some(role) => {
                let was_leader = *role == RegionRole::Leader;
                *role = RegionRole::Leader;
                if !was_leader {
                    shared.became_leader(u.region_id);
                }
                let now = Instant::now();
                let until = now + Duration::from_millis(u.lease_millis);
                shared.extend_lease(u.region_id, until, true, now);
                Ok(())
            }
            None => Err(format!("region {} is not open here", u.region_id)),
        },
        Some(Kind::InvalidateRouteCache(_)) => Ok(()),
        None => Err("instruction has no kind".into()),
    };
    pb::InstructionResult {
        instruction_id: instruction.id,
        success: outcome.is_ok(),
        error: outcome.err().unwrap_or_default(),
    }
}

/// Sends a full report of the node's regions and replicas; false once the link has stopped.
async fn send_report(
    link: &HeartbeatLink,
    reporter: &mut Reporter,
    shared: &Mutex<Shared>,
) -> bool {
    // Built under the node's own lock rather than from a copy of its regions: 10,000 nodes
    // share the benchmark's cores with metasrv.
    let report = {
        let shared = shared.lock();
        let mut report = reporter.request(&shared.regions, Vec::new());
        report.replica_stats = shared.replica_stats.clone();
        report
    };
    if link.send(report).await.is_err() {
        return false;
    }
    shared.lock().heartbeats_sent += 1;
    true
}

async fn run(
    target: MetasrvTarget,
    config: SimDatanodeConfig,
    instance_id: String,
    shared: Arc<Mutex<Shared>>,
    notify: Arc<watch::Sender<u64>>,
) {
    let mut reporter = Reporter {
        rng: Rng::seeded(config.seed),
        config: config.clone(),
        instance_id,
        last_report_ms: unix_ms(),
        region_sizes: IdMap::default(),
    };
    let record = |event: SimEvent| {
        shared.lock().events.push(event);
        notify.send_modify(|n| *n += 1);
    };
    let mut link = HeartbeatLink::start(target, config.cluster_id, config.node_id);
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Once a stream has opened, reports are built only while one is open: the link drops
    // what was queued before a stream reopens (it greets, and the full report follows
    // Connected), so building them through an election only took the cores 10,000 simulated
    // nodes share with the new leader's catalog load. Before the first stream the link opens
    // with the node's first request, so that one is sent.
    let (mut connected, mut opened_once) = (false, false);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if (connected || !opened_once)
                    && !send_report(&link, &mut reporter, &shared).await
                {
                    return;
                }
            }
            event = link.next_event() => match event {
                Some(LinkEvent::Connected) => {
                    (connected, opened_once) = (true, true);
                    shared.lock().last_connected_at = Some(Instant::now());
                    record(SimEvent::Connected);
                    // A fresh, full report right away on the new stream; it is this
                    // interval's, so the next comes a whole interval later (10,000 nodes that
                    // reconnect at once after a takeover would otherwise report twice within
                    // a second, on the cores the new leader needs).
                    if !send_report(&link, &mut reporter, &shared).await {
                        return;
                    }
                    ticker.reset();
                }
                Some(LinkEvent::Response { response, request_sent_at }) => {
                    shared.lock().responses += 1;
                    if let (Some(lease), Some(sent_at)) = (&response.region_lease, request_sent_at) {
                        // Extend (never shorten) the granted regions' leases, counted from when
                        // the request was sent.
                        let until = sent_at + Duration::from_millis(lease.duration_millis);
                        let mut shared = shared.lock();
                        let now = Instant::now();
                        shared.last_grant_at = Some(now);
                        if shared.round_trips_us.len() < MAX_KEPT_ROUND_TRIPS {
                            let micros = now.saturating_duration_since(sent_at).as_micros();
                            shared.round_trips_us.push(micros.min(u32::MAX as u128) as u32);
                        }
                        for id in &lease.leader_region_ids {
                            shared.extend_lease(*id, until, true, now);
                        }
                        for id in &lease.follower_region_ids {
                            shared.extend_lease(*id, until, false, now);
                        }
                    }
                    if response.instructions.is_empty() {
                        continue;
                    }
                    let mut results = Vec::new();
                    let obey = config.obey_instructions && !shared.lock().ignoring_instructions;
                    for instruction in response.instructions {
                        if obey {
                            results.push(apply(&instruction, &mut shared.lock()));
                        }
                        record(SimEvent::Instruction(instruction));
                    }
                    if !results.is_empty() {
                        // Answer at once rather than at the next tick, with the results
                        // alone: the next periodic report carries the new stats.
                        if link.send(reporter.results_only(results)).await.is_err() {
                            return;
                        }
                        shared.lock().heartbeats_sent += 1;
                    }
                }
                Some(LinkEvent::Disconnected { reason }) => {
                    connected = false;
                    record(SimEvent::Disconnected { reason });
                }
                Some(LinkEvent::GaveUp { reason }) => {
                    record(SimEvent::Disconnected { reason: Some(reason) });
                    return;
                }
                None => return,
            },
        }
    }
}
