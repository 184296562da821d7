//! Loading the catalog when a member becomes leader: every catalog, schema, table and route,
//! read in byte-bounded pages at one revision (`store::scan`), decoded off the async threads
//! (JSON of a million regions takes seconds of CPU), and tolerant of bad records: a record that
//! cannot be decoded, or a table name whose info or route is missing or unreadable, is
//! quarantined and reported, and the rest of the catalog loads. A member that failed its whole
//! load on one bad record would step down, and so would every other member after it: one bad
//! byte would leave the cluster without a leader.

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::manager::{keys, Cache, TableEntry};
use super::model::{TableInfo, TableRoute};
use super::quarantine::QuarantinedRecord;
use crate::store::scan::PrefixScan;
use crate::store::{KeyValue, KvBackend, StoreError};

/// A loaded catalog and the records it set aside.
pub(super) struct LoadedCatalog {
    pub cache: Cache,
    pub quarantined: Vec<QuarantinedRecord>,
}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Decodes every value of `page` on the blocking pool.
async fn decode_page<T: DeserializeOwned + Send + 'static>(
    page: Vec<KeyValue>,
) -> Result<Vec<(Vec<u8>, Result<T, String>)>, StoreError> {
    tokio::task::spawn_blocking(move || {
        page.into_iter()
            .map(|kv| {
                let decoded = serde_json::from_slice(&kv.value).map_err(|e| e.to_string());
                (kv.key, decoded)
            })
            .collect()
    })
    .await
    .map_err(|e| StoreError::Internal(format!("decoding a catalog page failed: {e}")))
}

/// Reads every value under `prefix` at `revision`, decoded as `T` and keyed by the id that
/// follows the prefix in the key; what does not decode, or whose key names another id than
/// `id_of` finds inside, is quarantined. Returns the revision read at.
async fn load_by_id<T: DeserializeOwned + Send + 'static>(
    store: &dyn KvBackend,
    prefix: &str,
    revision: i64,
    id_of: fn(&T) -> u64,
    out: &mut HashMap<u64, T>,
    quarantined: &mut Vec<QuarantinedRecord>,
) -> Result<i64, StoreError> {
    let mut scan = PrefixScan::at_revision(store, prefix.as_bytes(), revision);
    while let Some(page) = scan.next_page().await? {
        for (key, decoded) in decode_page::<T>(page).await? {
            let key_id = keys::parse_id(&key[prefix.len()..]);
            match (decoded, key_id) {
                (Ok(value), Some(id)) if id_of(&value) == id => {
                    out.insert(id, value);
                }
                (Ok(value), _) => quarantined.push(QuarantinedRecord {
                    key: lossy(&key),
                    reason: format!("the record is for table {}", id_of(&value)),
                }),
                (Err(reason), _) => quarantined.push(QuarantinedRecord {
                    key: lossy(&key),
                    reason: format!("cannot decode: {reason}"),
                }),
            }
        }
    }
    Ok(scan.revision())
}

/// Loads the whole catalog from `store`.
pub(super) async fn load_catalog(store: &dyn KvBackend) -> Result<LoadedCatalog, StoreError> {
    let mut cache = Cache::default();
    let mut quarantined = Vec::new();

    // The first scan fixes the revision every later one reads at.
    let mut scan = PrefixScan::new(store, keys::TABLE_NAME_PREFIX.as_bytes());
    let mut names: Vec<KeyValue> = Vec::new();
    while let Some(page) = scan.next_page().await? {
        names.extend(page);
    }
    let revision = scan.revision();

    for kv in PrefixScan::at_revision(store, keys::CATALOG_PREFIX.as_bytes(), revision)
        .collect()
        .await?
    {
        cache
            .catalogs
            .insert(lossy(&kv.key[keys::CATALOG_PREFIX.len()..]));
    }
    for kv in PrefixScan::at_revision(store, keys::SCHEMA_PREFIX.as_bytes(), revision)
        .collect()
        .await?
    {
        let rest = lossy(&kv.key[keys::SCHEMA_PREFIX.len()..]);
        match rest.split_once('/') {
            Some((catalog, schema)) => {
                cache
                    .schemas
                    .entry(catalog.to_owned())
                    .or_default()
                    .insert(schema.to_owned());
            }
            None => quarantined.push(QuarantinedRecord {
                key: lossy(&kv.key),
                reason: "no catalog/schema separator".into(),
            }),
        }
    }

    let mut infos: HashMap<u64, TableInfo> = HashMap::new();
    let info_id: fn(&TableInfo) -> u64 = |info| info.id;
    load_by_id(
        store,
        keys::TABLE_PREFIX,
        revision,
        info_id,
        &mut infos,
        &mut quarantined,
    )
    .await?;
    let mut routes: HashMap<u64, TableRoute> = HashMap::new();
    let route_id: fn(&TableRoute) -> u64 = |route| route.table_id;
    load_by_id(
        store,
        keys::TABLE_ROUTE_PREFIX,
        revision,
        route_id,
        &mut routes,
        &mut quarantined,
    )
    .await?;

    for kv in names {
        let Some(id) = keys::parse_id(&kv.value) else {
            quarantined.push(QuarantinedRecord {
                key: lossy(&kv.key),
                reason: "the value is not a table id".into(),
            });
            continue;
        };
        // Name, info and route are committed in one transaction: all three exist or none, so
        // a missing one was lost or could not be read (and is quarantined above).
        match (infos.remove(&id), routes.remove(&id)) {
            (Some(info), Some(route)) => cache.put_table(Arc::new(TableEntry { info, route })),
            (info, route) => quarantined.push(QuarantinedRecord {
                key: lossy(&kv.key),
                reason: format!(
                    "table {id} is not served: its {} unreadable or missing",
                    match (info.is_none(), route.is_none()) {
                        (true, true) => "info and route are",
                        (true, false) => "info is",
                        _ => "route is",
                    }
                ),
            }),
        }
    }
    // Info or route that no name refers to: a table half-deleted by hand, say. Not served.
    for id in infos.keys() {
        quarantined.push(QuarantinedRecord {
            key: lossy(&keys::table(*id)),
            reason: "no table name refers to it".into(),
        });
    }
    for id in routes.keys() {
        quarantined.push(QuarantinedRecord {
            key: lossy(&keys::table_route(*id)),
            reason: "no table name refers to it".into(),
        });
    }
    quarantined.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(LoadedCatalog { cache, quarantined })
}
