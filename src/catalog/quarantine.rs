//! `Quarantine`: metadata records the leader could not decode when it loaded the catalog. One
//! bad record must never stop a member from leading (every candidate would fail the same load
//! and the cluster would have no leader at all), so the load sets it aside here instead: the
//! table it belongs to is not served, its regions are not scheduled, and operators see it in
//! `/health`, in `metasrv_quarantined_records` and in the log until it is repaired or deleted.

use parking_lot::RwLock;
use serde::Serialize;

/// One record set aside, with why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuarantinedRecord {
    /// The KV key (lossy UTF-8).
    pub key: String,
    pub reason: String,
}

/// The records set aside by the last catalog load (replaced by every load).
#[derive(Default)]
pub struct Quarantine {
    records: RwLock<Vec<QuarantinedRecord>>,
}

impl Quarantine {
    pub fn replace(&self, records: Vec<QuarantinedRecord>) {
        for record in &records {
            tracing::error!(key = %record.key, reason = %record.reason, "metadata record quarantined");
        }
        *self.records.write() = records;
    }

    pub fn records(&self) -> Vec<QuarantinedRecord> {
        self.records.read().clone()
    }

    pub fn len(&self) -> usize {
        self.records.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.read().is_empty()
    }
}
