//! Registered datanodes, persisted under `__meta/node/` so that a new leader watches nodes it
//! has not heard from yet (a node that died just before the leader change is failed over too);
//! and cordoned ones, under `__meta/cordon/`, so that a node drained for decommissioning stays
//! out of placement and rebalancing across leader changes until an operator uncordons it.

use serde::{Deserialize, Serialize};

use super::RegisteredNode;
use crate::store::scan::PrefixScan;
use crate::store::{KvBackend, StoreResult};

/// Where registered datanodes are persisted.
pub const NODE_PREFIX: &str = "__meta/node/";

/// A datanode's registration as persisted under [`node_key`].
#[derive(Serialize, Deserialize)]
pub(super) struct Registration {
    pub id: u64,
    pub addr: String,
    #[serde(default)]
    pub instance_id: String,
    #[serde(default)]
    pub registered_at_unix_ms: u64,
}

/// Every registered datanode, read in pages; unreadable records are skipped (their nodes
/// register again when they connect).
pub async fn load_registered_nodes(store: &dyn KvBackend) -> StoreResult<Vec<RegisteredNode>> {
    let mut scan = PrefixScan::new(store, NODE_PREFIX.as_bytes());
    let mut nodes = Vec::new();
    while let Some(page) = scan.next_page().await? {
        nodes.extend(page.iter().filter_map(|kv| {
            let registration: Registration = serde_json::from_slice(&kv.value).ok()?;
            Some(RegisteredNode {
                id: registration.id,
                addr: registration.addr,
                instance_id: registration.instance_id,
            })
        }));
    }
    Ok(nodes)
}

/// Where cordoned datanodes are persisted.
pub const CORDON_PREFIX: &str = "__meta/cordon/";

/// A cordoned datanode: it takes no new region (placement, failover, migration, the CNS) until
/// uncordoned. Its own regions stay unless a drain moves them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cordon {
    pub node_id: u64,
    /// Who cordoned it and why ("drained by procedure ...", "operator").
    pub reason: String,
    pub since_unix_ms: u64,
}

/// Every cordon, read in pages; an unreadable record is skipped (with a log line: the node is
/// then schedulable, as if uncordoned).
pub async fn load_cordons(store: &dyn KvBackend) -> StoreResult<Vec<Cordon>> {
    let mut scan = PrefixScan::new(store, CORDON_PREFIX.as_bytes());
    let mut cordons = Vec::new();
    while let Some(page) = scan.next_page().await? {
        for kv in page {
            match serde_json::from_slice::<Cordon>(&kv.value) {
                Ok(cordon) => cordons.push(cordon),
                Err(e) => tracing::error!(
                    key = %String::from_utf8_lossy(&kv.key),
                    "an unreadable cordon record is ignored: {e}"
                ),
            }
        }
    }
    Ok(cordons)
}

/// Cordons `node_id` (with `reason`) or uncordons it (`None`): persisted first, then told to
/// the ClusterView. Whether the node was cordoned before.
pub async fn set_cordon(
    store: &dyn KvBackend,
    view: &actix::Addr<super::ClusterView>,
    node_id: u64,
    reason: Option<String>,
) -> StoreResult<bool> {
    // One change at a time, write and message together: two racing changes (an operator's
    // uncordon and a drain's cordon) would otherwise reach the view in the other order than
    // the store's, and the view would contradict the store for the rest of the term.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let existed = match &reason {
        Some(reason) => {
            let cordon = Cordon {
                node_id,
                reason: reason.clone(),
                since_unix_ms: crate::clock::unix_ms(),
            };
            let value = serde_json::to_vec(&cordon).map_err(|e| {
                crate::store::StoreError::Internal(format!("encoding a cordon: {e}"))
            })?;
            store
                .put(crate::store::KeyValue::new(cordon_key(node_id), value))
                .await?
                .is_some()
        }
        None => !store
            .batch_delete(vec![cordon_key(node_id)])
            .await?
            .is_empty(),
    };
    view.do_send(super::SetCordon { node_id, reason });
    Ok(existed)
}

fn cordon_key(node_id: u64) -> Vec<u8> {
    format!("{CORDON_PREFIX}{node_id}").into_bytes()
}

/// The KV key under which a registered datanode is persisted.
pub fn node_key(node_id: u64) -> Vec<u8> {
    format!("{NODE_PREFIX}{node_id}").into_bytes()
}
