//! Persisted procedures: multi-step decisions of the leader (region failover today) recorded in
//! the KV under `__meta/procedure/{id}` as they progress, so that a new leader can find the
//! unfinished ones and resume them, and operators can see them (`GET /v1/procedures`). Each
//! step is idempotent (a resumed failover only moves regions the dead node still leads).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::store::scan::PrefixScan;
use crate::store::{KeyValue, KvBackend, StoreResult};

pub const PROCEDURE_PREFIX: &str = "__meta/procedure/";
/// Finished procedures kept for `/v1/procedures`.
const KEEP_FINISHED: usize = 100;

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
    /// What it does, e.g. `region_failover`.
    pub kind: String,
    /// The node a failover is for.
    pub node_id: u64,
    pub state: ProcedureState,
    /// One line per step taken, oldest first.
    pub steps: Vec<String>,
    pub started_at_unix_ms: u64,
    pub updated_at_unix_ms: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Procedure {
    pub fn region_failover(node_id: u64) -> Self {
        let now = unix_ms();
        Self {
            // Time-ordered ids list procedures in start order.
            id: format!("{now:016}-{}", uuid::Uuid::new_v4().simple()),
            kind: "region_failover".into(),
            node_id,
            state: ProcedureState::Running,
            steps: Vec::new(),
            started_at_unix_ms: now,
            updated_at_unix_ms: now,
        }
    }

    pub fn step(&mut self, step: impl Into<String>) {
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
