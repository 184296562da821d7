//! Registered datanodes, persisted under `__meta/node/` so that a new leader watches nodes it
//! has not heard from yet (a node that died just before the leader change is failed over too).

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

/// The KV key under which a registered datanode is persisted.
pub fn node_key(node_id: u64) -> Vec<u8> {
    format!("{NODE_PREFIX}{node_id}").into_bytes()
}
