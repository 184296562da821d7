//! Persisted procedures: multi-step decisions of the leader (region failover, region migration,
//! leader transfer, node drain) recorded in
//! the KV under `__meta/procedure/{id}` as they progress, so that a new leader can find the
//! unfinished ones and resume them, and operators can see them (`GET /v1/procedures`). Each
//! step is idempotent (a resumed failover only moves regions the dead node still leads).

use crate::clock::unix_ms;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::store::scan::PrefixScan;
use crate::store::{KeyValue, KvBackend, StoreResult};

pub const PROCEDURE_PREFIX: &str = "__meta/procedure/";
/// Finished procedures kept for `/v1/procedures`.
const KEEP_FINISHED: usize = 100;
/// Step lines kept per procedure: a failover or drain of 10,000 regions must not write a
/// record past etcd's request limit (1.5 MiB), so older steps are counted, not kept.
pub const MAX_STEPS: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcedureState {
    Running,
    Done,
    Failed,
}

/// One procedure and its history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Procedure {
    pub id: String,
    /// What it does: `region_failover`, `migrate_region`, `transfer_leader`, `drain_node` or
    /// `repair_replicas`.
    pub kind: String,
    /// The node a failover or a drain is for; the leader a migration started from.
    pub node_id: u64,
    /// The region a migration or a leader transfer moves (0 for the others).
    #[serde(default)]
    pub region_id: u64,
    /// The node a migration or a leader transfer moves the region to (0 for the others).
    #[serde(default)]
    pub target_node: u64,
    /// How far a drain (or a replica repair) has come.
    #[serde(default)]
    pub progress: Progress,
    /// How many times the reconciler started it (a failover retried after a failure keeps
    /// its record).
    #[serde(default)]
    pub attempts: u32,
    pub state: ProcedureState,
    /// The latest step lines (at most [`MAX_STEPS`]), oldest first.
    pub steps: Vec<String>,
    /// Step lines dropped from the front of `steps`.
    #[serde(default)]
    pub steps_omitted: u64,
    pub started_at_unix_ms: u64,
    pub updated_at_unix_ms: u64,
}

/// Region copies a drain has to move, has moved, and gave up on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub total: u64,
    pub moved: u64,
    pub failed: u64,
}

pub const REGION_FAILOVER: &str = "region_failover";
pub const MIGRATE_REGION: &str = "migrate_region";
pub const TRANSFER_LEADER: &str = "transfer_leader";
pub const DRAIN_NODE: &str = "drain_node";
pub const REPAIR_REPLICAS: &str = "repair_replicas";

impl Procedure {
    fn new(kind: &str, node_id: u64) -> Self {
        let now = unix_ms();
        Self {
            // Time-ordered ids list procedures in start order.
            id: format!("{now:016}-{}", uuid::Uuid::new_v4().simple()),
            kind: kind.into(),
            node_id,
            region_id: 0,
            target_node: 0,
            progress: Progress::default(),
            attempts: 1,
            state: ProcedureState::Running,
            steps: Vec::new(),
            steps_omitted: 0,
            started_at_unix_ms: now,
            updated_at_unix_ms: now,
        }
    }

    pub fn region_failover(node_id: u64) -> Self {
        Self::new(REGION_FAILOVER, node_id)
    }

    /// Moves `region_id` from its leader `from` to `to`; with `keep_old_copy` the old leader
    /// stays a follower (a leader transfer), otherwise its copy is closed.
    pub fn region_migration(region_id: u64, from: u64, to: u64, keep_old_copy: bool) -> Self {
        let kind = if keep_old_copy {
            TRANSFER_LEADER
        } else {
            MIGRATE_REGION
        };
        Self {
            region_id,
            target_node: to,
            ..Self::new(kind, from)
        }
    }

    pub fn drain(node_id: u64) -> Self {
        Self::new(DRAIN_NODE, node_id)
    }

    /// One pass of re-replication (`planner::replicas`): copies made again across nodes.
    pub fn replica_repair() -> Self {
        Self::new(REPAIR_REPLICAS, 0)
    }

    pub fn is_running(&self) -> bool {
        self.state == ProcedureState::Running
    }

    pub fn step(&mut self, step: impl Into<String>) {
        if self.steps.len() >= MAX_STEPS {
            let excess = self.steps.len() + 1 - MAX_STEPS;
            self.steps.drain(..excess);
            self.steps_omitted += excess as u64;
        }
        self.steps.push(step.into());
        self.updated_at_unix_ms = unix_ms();
    }

    pub fn finish(&mut self, state: ProcedureState, step: impl Into<String>) {
        self.state = state;
        self.step(step);
    }
}

/// Reads and writes procedures (through the leader's fenced store).
#[derive(Clone)]
pub struct ProcedureStore {
    store: Arc<dyn KvBackend>,
}

impl ProcedureStore {
    pub fn new(store: Arc<dyn KvBackend>) -> Self {
        Self { store }
    }

    pub fn store(&self) -> Arc<dyn KvBackend> {
        self.store.clone()
    }

    /// One procedure by id (`None` if there is none, or it cannot be read).
    pub async fn get(&self, id: &str) -> StoreResult<Option<Procedure>> {
        let key = format!("{PROCEDURE_PREFIX}{id}").into_bytes();
        let kv = self.store.batch_get(vec![key]).await?.into_iter().next();
        Ok(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    pub async fn save(&self, procedure: &Procedure) -> StoreResult<()> {
        let value = serde_json::to_vec(procedure)
            .map_err(|e| crate::store::StoreError::Internal(e.to_string()))?;
        let key = format!("{PROCEDURE_PREFIX}{}", procedure.id).into_bytes();
        self.store.put(KeyValue::new(key, value)).await?;
        Ok(())
    }

    /// Every procedure, oldest first, read in byte-bounded pages (a long history of long
    /// procedures does not fit one response). Unreadable records are skipped and logged.
    pub async fn list(&self) -> StoreResult<Vec<Procedure>> {
        // A compaction under the scan's revision: read again, at a newer one.
        let mut attempt = 0;
        loop {
            match self.list_at_one_revision().await {
                Err(crate::store::StoreError::Compacted(_)) if attempt < 3 => attempt += 1,
                listed => return listed,
            }
        }
    }

    async fn list_at_one_revision(&self) -> StoreResult<Vec<Procedure>> {
        let mut scan = PrefixScan::new(self.store.as_ref(), PROCEDURE_PREFIX.as_bytes());
        let mut procedures = Vec::new();
        while let Some(page) = scan.next_page().await? {
            for kv in page {
                match serde_json::from_slice(&kv.value) {
                    Ok(procedure) => procedures.push(procedure),
                    Err(e) => tracing::warn!(
                        key = %String::from_utf8_lossy(&kv.key),
                        "unreadable procedure record skipped: {e}"
                    ),
                }
            }
        }
        Ok(procedures)
    }

    /// Deletes the oldest finished procedures beyond the ones kept.
    pub async fn prune(&self) -> StoreResult<()> {
        let finished: Vec<Procedure> = self
            .list()
            .await?
            .into_iter()
            .filter(|p| p.state != ProcedureState::Running)
            .collect();
        if finished.len() <= KEEP_FINISHED {
            return Ok(());
        }
        let doomed: Vec<Vec<u8>> = finished[..finished.len() - KEEP_FINISHED]
            .iter()
            .map(|p| format!("{PROCEDURE_PREFIX}{}", p.id).into_bytes())
            .collect();
        for chunk in doomed.chunks(100) {
            self.store.batch_delete(chunk.to_vec()).await?;
        }
        Ok(())
    }
}

/// Maintenance mode: while on, the Scheduler fails nothing over. Persisted under
/// `__meta/maintenance` so that it survives leader changes.
pub const MAINTENANCE_KEY: &str = "__meta/maintenance";

pub async fn load_maintenance(store: &dyn KvBackend) -> StoreResult<bool> {
    Ok(store
        .batch_get(vec![MAINTENANCE_KEY.as_bytes().to_vec()])
        .await?
        .first()
        .is_some_and(|kv| kv.value == b"on"))
}

pub async fn save_maintenance(store: &dyn KvBackend, on: bool) -> StoreResult<()> {
    let key = MAINTENANCE_KEY.as_bytes().to_vec();
    if on {
        store.put(KeyValue::new(key, b"on".to_vec())).await?;
    } else {
        store.batch_delete(vec![key]).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_procedure_keeps_its_latest_steps_and_counts_the_rest() {
        let mut procedure = Procedure::drain(7);
        for i in 0..(MAX_STEPS + 50) {
            procedure.step(format!("step {i}"));
        }
        assert_eq!(procedure.steps.len(), MAX_STEPS);
        assert_eq!(procedure.steps_omitted, 50);
        assert_eq!(procedure.steps.first().map(String::as_str), Some("step 50"));
        assert_eq!(
            procedure.steps.last().map(String::as_str),
            Some(format!("step {}", MAX_STEPS + 49).as_str())
        );
    }

    #[test]
    fn records_of_earlier_versions_still_load() {
        let old = r#"{"id":"1","kind":"region_failover","node_id":3,"state":"done",
            "steps":["a"],"started_at_unix_ms":1,"updated_at_unix_ms":2}"#;
        let procedure: Procedure = serde_json::from_str(old).expect("an old record loads");
        assert_eq!(procedure.node_id, 3);
        assert_eq!(procedure.region_id, 0);
        assert_eq!(procedure.progress, Progress::default());
    }
}
