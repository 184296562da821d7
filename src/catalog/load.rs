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
use super::model::{check_route, drop_bad_followers, TableInfo, TableRoute};
use super::quarantine::QuarantinedRecord;
use crate::store::scan::PrefixScan;
use crate::store::{KeyValue, KvBackend, StoreError};

/// A loaded catalog and the records it set aside.
pub(crate) struct LoadedCatalog {
    pub(crate) cache: Cache,
    pub(crate) quarantined: Vec<QuarantinedRecord>,
    /// Tables a quarantined record belongs to: not served, and their regions left alone on
    /// the datanodes (not closed as orphans) until the records are repaired.
    pub(crate) withheld: std::collections::HashSet<u64>,
}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Builds a catalog from records as the loader reads them: pure, so that the fuzzer runs the
/// very code a leader runs on what it finds in the KV (`crate::inputs::catalog_records`). Every
/// record that cannot be decoded or does not fit the others is quarantined; nothing is fatal.
#[derive(Default)]
pub(crate) struct CatalogAssembler {
    cache: Cache,
    quarantined: Vec<QuarantinedRecord>,
    names: Vec<KeyValue>,
    infos: HashMap<u64, TableInfo>,
    routes: HashMap<u64, TableRoute>,
    withheld: std::collections::HashSet<u64>,
    /// The store revision every record was read at (0 on the embedded store): the routes'
    /// `route_revision`.
    revision: i64,
}

impl CatalogAssembler {
    /// A key under `keys::CATALOG_PREFIX`.
    pub(crate) fn catalog(&mut self, kv: KeyValue) {
        let Some(name) = kv.key.strip_prefix(keys::CATALOG_PREFIX.as_bytes()) else {
            return self.quarantine(&kv.key, "not a catalog key");
        };
        self.cache.catalogs.insert(lossy(name));
    }

    /// A key under `keys::SCHEMA_PREFIX`.
    pub(crate) fn schema(&mut self, kv: KeyValue) {
        let rest = kv
            .key
            .strip_prefix(keys::SCHEMA_PREFIX.as_bytes())
            .map(lossy)
            .unwrap_or_default();
        match rest.split_once('/') {
            Some((catalog, schema)) => {
                self.cache
                    .schemas
                    .entry(catalog.to_owned())
                    .or_default()
                    .insert(schema.to_owned());
            }
            None => self.quarantine(&kv.key, "no catalog/schema separator"),
        }
    }

    /// A table info record (under `keys::TABLE_PREFIX`).
    pub(crate) fn info(&mut self, kv: KeyValue) {
        let info_id: fn(&TableInfo) -> u64 = |info| info.id;
        if let Some((id, info)) = self.decode(keys::TABLE_PREFIX, kv, info_id) {
            self.infos.insert(id, info);
        }
    }

    /// A table route record (under `keys::TABLE_ROUTE_PREFIX`).
    pub(crate) fn route(&mut self, kv: KeyValue) {
        let route_id: fn(&TableRoute) -> u64 = |route| route.table_id;
        if let Some((id, route)) = self.decode(keys::TABLE_ROUTE_PREFIX, kv, route_id) {
            self.routes.insert(id, route);
        }
    }

    /// A table name record (under `keys::TABLE_NAME_PREFIX`); resolved in `finish`.
    pub(crate) fn name(&mut self, kv: KeyValue) {
        self.names.push(kv);
    }

    fn quarantine(&mut self, key: &[u8], reason: impl Into<String>) {
        self.quarantined.push(QuarantinedRecord {
            key: lossy(key),
            reason: reason.into(),
        });
    }

    /// Decodes a record keyed by the id that follows `prefix`; what does not decode, or whose
    /// key names another id than `id_of` finds inside, is quarantined.
    fn decode<T: DeserializeOwned>(
        &mut self,
        prefix: &str,
        kv: KeyValue,
        id_of: fn(&T) -> u64,
    ) -> Option<(u64, T)> {
        let key_id = kv
            .key
            .strip_prefix(prefix.as_bytes())
            .and_then(keys::parse_id);
        let reason = match (serde_json::from_slice::<T>(&kv.value), key_id) {
            (Ok(value), Some(id)) if id_of(&value) == id => return Some((id, value)),
            (Ok(value), _) => format!("the record is for table {}", id_of(&value)),
            (Err(e), _) => format!("cannot decode: {e}"),
        };
        self.quarantine(&kv.key, reason);
        // The table its key names is withheld (its regions are left alone).
        self.withheld.extend(key_id);
        None
    }

    /// Joins names with their info and route; what is left over or does not fit is
    /// quarantined.
    pub(crate) fn finish(mut self) -> LoadedCatalog {
        for kv in std::mem::take(&mut self.names) {
            let Some(id) = keys::parse_id(&kv.value) else {
                self.quarantine(&kv.key, "the value is not a table id");
                continue;
            };
            // Name, info and route are committed in one transaction: all three exist or none,
            // so a missing one was lost or could not be read (and is quarantined already).
            let (info, route) = match (self.infos.remove(&id), self.routes.remove(&id)) {
                (Some(info), Some(route)) => (info, route),
                (info, route) => {
                    let missing = match (info.is_none(), route.is_none()) {
                        (true, true) => "info and route are",
                        (true, false) => "info is",
                        _ => "route is",
                    };
                    let reason =
                        format!("table {id} is not served: its {missing} unreadable or missing");
                    self.quarantine(&kv.key, reason);
                    self.withheld.insert(id);
                    continue;
                }
            };
            if keys::table_name(&info.name) != kv.key {
                let reason = format!("table {id} is not served: its info names it {}", info.name);
                self.quarantine(&kv.key, reason);
                self.withheld.insert(id);
                continue;
            }
            let mut route = route;
            let dropped = drop_bad_followers(&mut route);
            if dropped > 0 {
                tracing::warn!(table_id = id, dropped, "dropped followers that repeat a region's leader or another follower from a stored route");
            }
            if let Err(reason) = check_route(&info, &route) {
                self.quarantine(&kv.key, format!("table {id} is not served: {reason}"));
                self.withheld.insert(id);
                continue;
            }
            self.cache.put_table(Arc::new(TableEntry {
                info,
                route,
                route_revision: self.revision,
            }));
        }
        // Info or route that no name refers to: a table half-deleted by hand, say. Not served.
        let orphans: Vec<Vec<u8>> = (self.infos.keys().map(|id| keys::table(*id)))
            .chain(self.routes.keys().map(|id| keys::table_route(*id)))
            .collect();
        let orphan_ids: Vec<u64> = self
            .infos
            .keys()
            .chain(self.routes.keys())
            .copied()
            .collect();
        self.withheld.extend(orphan_ids);
        for key in orphans {
            self.quarantine(&key, "no table name refers to it");
        }
        self.quarantined.sort_by(|a, b| a.key.cmp(&b.key));
        // A served table is never withheld (a stray record with its id was set aside alone).
        let served: Vec<u64> = self.cache.served_tables().map(|(_, e)| e.info.id).collect();
        for id in served {
            self.withheld.remove(&id);
        }
        LoadedCatalog {
            cache: self.cache,
            quarantined: self.quarantined,
            withheld: self.withheld,
        }
    }
}

/// One of `CatalogAssembler`'s record methods.
type AddRecord = fn(&mut CatalogAssembler, KeyValue);

/// Feeds every value under `prefix` at `revision` to `add`, page by page on the blocking pool
/// (JSON of a million regions takes seconds of CPU). Returns the assembler back.
async fn feed_pages(
    store: &dyn KvBackend,
    prefix: &str,
    revision: i64,
    mut assembler: CatalogAssembler,
    add: AddRecord,
) -> Result<CatalogAssembler, StoreError> {
    let mut scan = PrefixScan::at_revision(store, prefix.as_bytes(), revision);
    let mut page = scan.next_page().await?;
    while let Some(current) = page {
        // The next page is read while this one decodes: etcd serves one as the other core
        // parses (a million regions are about 60 MB of routes).
        let decoded = tokio::task::spawn_blocking(move || {
            for kv in current {
                add(&mut assembler, kv);
            }
            assembler
        });
        let (decoded, next) = tokio::join!(decoded, scan.next_page());
        assembler = decoded
            .map_err(|e| StoreError::Internal(format!("decoding a catalog page failed: {e}")))?;
        page = next?;
    }
    Ok(assembler)
}

/// Times a load starts again when etcd compacts the revision it reads at (each pass reads at
/// a newer one; compactions are minutes apart, a load seconds).
const COMPACTED_RETRIES: u32 = 3;

/// Loads the whole catalog from `store`, all of it at one revision.
pub(super) async fn load_catalog(store: &dyn KvBackend) -> Result<LoadedCatalog, StoreError> {
    let mut attempt = 0;
    loop {
        match load_at_one_revision(store).await {
            Err(StoreError::Compacted(reason)) if attempt < COMPACTED_RETRIES => {
                attempt += 1;
                tracing::warn!(
                    attempt,
                    "the catalog load's revision was compacted ({reason}); loading again"
                );
            }
            loaded => return loaded,
        }
    }
}

async fn load_at_one_revision(store: &dyn KvBackend) -> Result<LoadedCatalog, StoreError> {
    let mut assembler = CatalogAssembler::default();
    // The first scan fixes the revision every later one reads at.
    let mut scan = PrefixScan::new(store, keys::TABLE_NAME_PREFIX.as_bytes());
    while let Some(page) = scan.next_page().await? {
        page.into_iter().for_each(|kv| assembler.name(kv));
    }
    let revision = scan.revision();
    assembler.revision = revision;
    let steps: [(&str, AddRecord); 4] = [
        (keys::CATALOG_PREFIX, CatalogAssembler::catalog),
        (keys::SCHEMA_PREFIX, CatalogAssembler::schema),
        (keys::TABLE_PREFIX, CatalogAssembler::info),
        (keys::TABLE_ROUTE_PREFIX, CatalogAssembler::route),
    ];
    for (prefix, add) in steps {
        assembler = feed_pages(store, prefix, revision, assembler, add).await?;
    }
    tokio::task::spawn_blocking(move || assembler.finish())
        .await
        .map_err(|e| StoreError::Internal(format!("assembling the catalog failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::model::{
        ColumnDef, ColumnType, PartitionRule, Peer, RegionRoute, TableName, TableSchema,
    };

    fn table(id: u64, regions: u32) -> TableEntry {
        let peer = |id: u64| Peer {
            id,
            addr: format!("n{id}:4001"),
        };
        TableEntry {
            info: TableInfo {
                id,
                name: TableName::new("greptime", "public", &format!("t{id}")),
                schema: TableSchema {
                    columns: vec![
                        ColumnDef {
                            name: "host".into(),
                            data_type: ColumnType::String,
                            nullable: false,
                        },
                        ColumnDef {
                            name: "ts".into(),
                            data_type: ColumnType::Timestamp,
                            nullable: false,
                        },
                    ],
                    time_index: "ts".into(),
                    primary_key: vec!["host".into()],
                    options: Default::default(),
                },
                partition: PartitionRule::Hash {
                    columns: vec!["host".into()],
                    partitions: regions,
                },
                replicas: 2,
                created_at_unix_ms: 0,
            },
            route: TableRoute {
                table_id: id,
                version: 1,
                regions: (0..regions)
                    .map(|n| RegionRoute {
                        region_id: crate::catalog::model::region_id(id, n),
                        region_number: n,
                        leader: peer(1),
                        followers: vec![peer(2)],
                    })
                    .collect(),
            },
            route_revision: 0,
        }
    }

    /// Feeds a table's three records (name under `name_key`), returns the tables served and
    /// the quarantine reasons.
    fn load(entries: &[(Vec<u8>, TableEntry)]) -> (Vec<u64>, Vec<String>) {
        let mut assembler = CatalogAssembler::default();
        for (name_key, entry) in entries {
            let id = entry.info.id;
            assembler.name(KeyValue::new(name_key.clone(), id.to_string()));
            let info = serde_json::to_vec(&entry.info).expect("encodes");
            assembler.info(KeyValue::new(keys::table(id), info));
            let route = serde_json::to_vec(&entry.route).expect("encodes");
            assembler.route(KeyValue::new(keys::table_route(id), route));
        }
        let loaded = assembler.finish();
        let mut served: Vec<u64> = loaded
            .cache
            .served_tables()
            .map(|(_, entry)| entry.info.id)
            .collect();
        served.sort();
        let reasons = loaded.quarantined.into_iter().map(|r| r.reason).collect();
        (served, reasons)
    }

    fn named(entry: TableEntry) -> (Vec<u8>, TableEntry) {
        (keys::table_name(&entry.info.name), entry)
    }

    #[test]
    fn consistent_tables_are_served() {
        assert_eq!(
            load(&[named(table(7, 4)), named(table(8, 1))]),
            (vec![7, 8], vec![])
        );
    }

    #[test]
    fn a_route_that_does_not_fit_its_table_is_quarantined() {
        type Damage = fn(&mut TableEntry);
        let damage: [(&str, Damage); 6] = [
            ("gives 4 regions but the route has 3", |e| {
                e.route.regions.pop();
            }),
            ("out of range or given twice", |e| {
                e.route.regions[1].region_number = 0;
            }),
            ("but the id of another region", |e| {
                e.route.regions[2].region_id = crate::catalog::model::region_id(9, 2);
            }),
            ("has no leader", |e| e.route.regions[0].leader.id = 0),
            ("outside 1..=4294967295", |e| {
                e.info.id += 1 << 32;
                e.route.table_id = e.info.id;
            }),
            ("has no time index", |e| e.info.schema.time_index.clear()),
        ];
        for (needle, damage) in damage {
            let mut entry = table(7, 4);
            damage(&mut entry);
            let (served, reasons) = load(&[named(table(8, 1)), named(entry)]);
            assert_eq!(served, vec![8], "{needle}");
            assert_eq!(reasons.len(), 1, "{needle}: {reasons:?}");
            assert!(reasons[0].contains(needle), "{needle}: {reasons:?}");
        }
    }

    #[test]
    fn followers_that_repeat_a_copy_are_dropped_not_the_table() {
        let mut entry = table(7, 2);
        entry.route.regions[0].followers = vec![
            entry.route.regions[0].leader.clone(),
            entry.route.regions[0].followers[0].clone(),
            entry.route.regions[0].followers[0].clone(),
        ];
        let (served, reasons) = load(&[named(entry)]);
        assert_eq!((served, reasons), (vec![7], vec![]));
        let mut assembler = CatalogAssembler::default();
        let mut entry = table(7, 1);
        let leader = entry.route.regions[0].leader.clone();
        entry.route.regions[0].followers.push(leader);
        assembler.name(KeyValue::new(keys::table_name(&entry.info.name), "7"));
        assembler.info(KeyValue::new(
            keys::table(7),
            serde_json::to_vec(&entry.info).expect("info"),
        ));
        assembler.route(KeyValue::new(
            keys::table_route(7),
            serde_json::to_vec(&entry.route).expect("route"),
        ));
        let loaded = assembler.finish();
        let (_, served) = loaded.cache.served_tables().next().expect("served");
        assert_eq!(
            served.route.regions[0].followers.len(),
            1,
            "the leader is no follower"
        );
    }

    #[test]
    fn a_name_whose_info_names_another_table_is_quarantined() {
        let entry = table(7, 1);
        let other_name = keys::table_name(&TableName::new("greptime", "public", "other"));
        let (served, reasons) = load(&[(other_name, entry)]);
        assert_eq!(served, Vec::<u64>::new());
        assert_eq!(
            reasons,
            vec!["table 7 is not served: its info names it greptime.public.t7".to_owned()]
        );
    }

    #[test]
    fn undecodable_and_orphaned_records_are_quarantined() {
        let mut assembler = CatalogAssembler::default();
        assembler.info(KeyValue::new(keys::table(3), "{not json"));
        assembler.route(KeyValue::new(keys::table_route(4), "{}"));
        let info = serde_json::to_vec(&table(5, 1).info).expect("encodes");
        assembler.info(KeyValue::new(keys::table(6), info.clone()));
        assembler.info(KeyValue::new(keys::table(5), info));
        assembler.name(KeyValue::new(b"__meta/table_name/a/b/c".to_vec(), "x"));
        assembler.schema(KeyValue::new(b"__meta/schema/no-separator".to_vec(), "{}"));
        let loaded = assembler.finish();
        let mut withheld: Vec<u64> = loaded.withheld.iter().copied().collect();
        withheld.sort();
        assert_eq!(withheld, vec![3, 4, 5, 6], "their regions are left alone");
        let quarantined: Vec<(String, String)> = loaded
            .quarantined
            .into_iter()
            .map(|r| (r.key, r.reason.split(':').next().unwrap_or("").to_owned()))
            .collect();
        assert_eq!(
            quarantined,
            vec![
                (
                    "__meta/schema/no-separator".into(),
                    "no catalog/schema separator".into()
                ),
                ("__meta/table/3".into(), "cannot decode".into()),
                ("__meta/table/5".into(), "no table name refers to it".into()),
                ("__meta/table/6".into(), "the record is for table 5".into()),
                (
                    "__meta/table_name/a/b/c".into(),
                    "the value is not a table id".into()
                ),
                ("__meta/table_route/4".into(), "cannot decode".into()),
            ]
        );
    }
}
