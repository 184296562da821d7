//! Loading the catalog when a member becomes leader: every catalog, schema, table and route,
//! read in byte-bounded pages at one revision (`store::scan`), decoded off the async threads
//! (JSON of a million regions takes seconds of CPU), and tolerant of bad records: a record that
//! cannot be decoded, or a table name whose info or route is missing or unreadable, is
//! quarantined and reported, and the rest of the catalog loads. A member that failed its whole
//! load on one bad record would step down, and so would every other member after it: one bad
//! byte would leave the cluster without a leader.

use std::collections::{BTreeMap, HashMap};
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
///
/// Records are kept by key until `finish`, and a key may be written again or removed
/// (`apply`): a follower's standby copy (`super::standby`) follows the KV's changes through the
/// same code a cold load runs.
#[derive(Default)]
pub(crate) struct CatalogAssembler {
    cache: Cache,
    /// Table name key -> its value (a table id, resolved in `finish`).
    names: BTreeMap<Vec<u8>, Vec<u8>>,
    infos: HashMap<u64, TableInfo>,
    routes: HashMap<u64, TableRoute>,
    /// Records set aside as they were read, by key: why, and the table their key names (its
    /// regions are then left alone).
    set_aside: BTreeMap<Vec<u8>, (String, Option<u64>)>,
    /// The store revision every record was read at (0 on the embedded store): the routes'
    /// `route_revision`.
    revision: i64,
}

impl CatalogAssembler {
    /// A key under `keys::CATALOG_PREFIX`.
    pub(crate) fn catalog(&mut self, kv: KeyValue) {
        let Some(name) = kv.key.strip_prefix(keys::CATALOG_PREFIX.as_bytes()) else {
            return self.set_aside(kv.key, "not a catalog key".into(), None);
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
            None => self.set_aside(kv.key, "no catalog/schema separator".into(), None),
        }
    }

    /// A table info record (under `keys::TABLE_PREFIX`).
    pub(crate) fn info(&mut self, kv: KeyValue) {
        let info_id: fn(&TableInfo) -> u64 = |info| info.id;
        let decoded = self.decode(keys::TABLE_PREFIX, kv, info_id);
        keep(&mut self.infos, decoded);
    }

    /// A table route record (under `keys::TABLE_ROUTE_PREFIX`).
    pub(crate) fn route(&mut self, kv: KeyValue) {
        let route_id: fn(&TableRoute) -> u64 = |route| route.table_id;
        let decoded = self.decode(keys::TABLE_ROUTE_PREFIX, kv, route_id);
        keep(&mut self.routes, decoded);
    }

    /// A table name record (under `keys::TABLE_NAME_PREFIX`); resolved in `finish`.
    pub(crate) fn name(&mut self, kv: KeyValue) {
        self.names.insert(kv.key, kv.value);
    }

    /// A change to a table record (name, info or route) after the load: `Some` value written,
    /// `None` deleted. Keys outside those three prefixes are ignored.
    pub(crate) fn apply(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let prefixes: [(&str, AddRecord); 3] = [
            (keys::TABLE_NAME_PREFIX, CatalogAssembler::name),
            (keys::TABLE_ROUTE_PREFIX, CatalogAssembler::route),
            (keys::TABLE_PREFIX, CatalogAssembler::info),
        ];
        let Some((prefix, add)) = prefixes
            .into_iter()
            .find(|(prefix, _)| key.starts_with(prefix.as_bytes()))
        else {
            return;
        };
        match value {
            Some(value) => add(self, KeyValue::new(key, value)),
            None => {
                let id = key.strip_prefix(prefix.as_bytes()).and_then(canonical_id);
                match prefix {
                    keys::TABLE_NAME_PREFIX => {
                        self.names.remove(&key);
                    }
                    keys::TABLE_ROUTE_PREFIX => {
                        id.map(|id| self.routes.remove(&id));
                    }
                    _ => {
                        id.map(|id| self.infos.remove(&id));
                    }
                }
                self.set_aside.remove(&key);
            }
        }
    }

    /// The store revision the records are as of.
    pub(crate) fn set_revision(&mut self, revision: i64) {
        self.revision = revision;
    }

    pub(crate) fn revision(&self) -> i64 {
        self.revision
    }

    /// How many table records (names, infos, routes) are held.
    pub(crate) fn table_records(&self) -> usize {
        self.names.len() + self.infos.len() + self.routes.len()
    }

    fn set_aside(&mut self, key: Vec<u8>, reason: String, table_id: Option<u64>) {
        self.set_aside.insert(key, (reason, table_id));
    }

    /// Decodes a record keyed by the id that follows `prefix`: the id its key names, and the
    /// record if it decodes and its key names the id `id_of` finds inside. What does not is
    /// set aside (and a good record read earlier under that key is dropped).
    fn decode<T: DeserializeOwned>(
        &mut self,
        prefix: &str,
        kv: KeyValue,
        id_of: fn(&T) -> u64,
    ) -> (Option<u64>, Option<T>) {
        let key_id = kv
            .key
            .strip_prefix(prefix.as_bytes())
            .and_then(canonical_id);
        let reason = match (key_id, serde_json::from_slice::<T>(&kv.value)) {
            (None, _) => "its key does not end in a table id".to_owned(),
            (Some(id), Ok(value)) if id_of(&value) == id => {
                self.set_aside.remove(&kv.key);
                return (key_id, Some(value));
            }
            (Some(_), Ok(value)) => format!("the record is for table {}", id_of(&value)),
            (Some(_), Err(e)) => format!("cannot decode: {e}"),
        };
        self.set_aside(kv.key, reason, key_id);
        (key_id, None)
    }

    /// Joins names with their info and route; what is left over or does not fit is
    /// quarantined.
    pub(crate) fn finish(mut self) -> LoadedCatalog {
        let mut quarantined: Vec<QuarantinedRecord> = Vec::new();
        let mut withheld = std::collections::HashSet::new();
        for (key, (reason, table_id)) in std::mem::take(&mut self.set_aside) {
            quarantined.push(QuarantinedRecord {
                key: lossy(&key),
                reason,
            });
            // The table its key names is withheld (its regions are left alone).
            withheld.extend(table_id);
        }
        let mut quarantine = |key: &[u8], reason: String| {
            quarantined.push(QuarantinedRecord {
                key: lossy(key),
                reason,
            })
        };
        for (key, value) in std::mem::take(&mut self.names) {
            let Some(id) = keys::parse_id(&value) else {
                quarantine(&key, "the value is not a table id".into());
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
                    quarantine(&key, reason);
                    withheld.insert(id);
                    continue;
                }
            };
            if keys::table_name(&info.name) != key {
                let reason = format!("table {id} is not served: its info names it {}", info.name);
                quarantine(&key, reason);
                withheld.insert(id);
                continue;
            }
            let mut route = route;
            let dropped = drop_bad_followers(&mut route);
            if dropped > 0 {
                tracing::warn!(table_id = id, dropped, "dropped followers that repeat a region's leader or another follower from a stored route");
            }
            if let Err(reason) = check_route(&info, &route) {
                quarantine(&key, format!("table {id} is not served: {reason}"));
                withheld.insert(id);
                continue;
            }
            self.cache.put_table(Arc::new(TableEntry {
                info,
                route,
                route_revision: self.revision,
            }));
        }
        // Info or route that no name refers to: a table half-deleted by hand, say. Not served.
        for id in self.infos.keys() {
            quarantine(&keys::table(*id), "no table name refers to it".into());
        }
        for id in self.routes.keys() {
            quarantine(&keys::table_route(*id), "no table name refers to it".into());
        }
        withheld.extend(self.infos.keys().chain(self.routes.keys()).copied());
        quarantined.sort_by(|a, b| a.key.cmp(&b.key));
        // A served table is never withheld (a stray record with its id was set aside alone).
        for (_, entry) in self.cache.served_tables() {
            withheld.remove(&entry.info.id);
        }
        LoadedCatalog {
            cache: self.cache,
            quarantined,
            withheld,
        }
    }
}

/// The table id a key ends in, spelled as metasrv writes it (decimal, no sign or leading
/// zero): `07` would name table 7 a second time, and which of two such keys wins would depend
/// on the order they were read or changed in.
fn canonical_id(suffix: &[u8]) -> Option<u64> {
    let id = keys::parse_id(suffix)?;
    (id.to_string().as_bytes() == suffix).then_some(id)
}

/// Keeps a decoded record under the id its key names, or drops what that key held if the
/// record was set aside.
fn keep<T>(records: &mut HashMap<u64, T>, (key_id, record): (Option<u64>, Option<T>)) {
    match (key_id, record) {
        (Some(id), Some(record)) => {
            records.insert(id, record);
        }
        (Some(id), None) => {
            records.remove(&id);
        }
        (None, _) => {}
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
    let assembler = read_table_records(store).await?;
    let assembler = read_catalogs_and_schemas(store, assembler).await?;
    finish_off_thread(assembler).await
}

/// Reads every table record (names, infos, routes) at one revision, the one the first scan
/// read at (the assembler's revision from then on).
pub(super) async fn read_table_records(
    store: &dyn KvBackend,
) -> Result<CatalogAssembler, StoreError> {
    let mut assembler = CatalogAssembler::default();
    let mut scan = PrefixScan::new(store, keys::TABLE_NAME_PREFIX.as_bytes());
    while let Some(page) = scan.next_page().await? {
        page.into_iter().for_each(|kv| assembler.name(kv));
    }
    assembler.set_revision(scan.revision());
    let steps = [
        (keys::TABLE_PREFIX, CatalogAssembler::info as AddRecord),
        (keys::TABLE_ROUTE_PREFIX, CatalogAssembler::route),
    ];
    feed_prefixes(store, assembler, steps).await
}

/// Reads every catalog and schema record at the assembler's revision.
pub(super) async fn read_catalogs_and_schemas(
    store: &dyn KvBackend,
    assembler: CatalogAssembler,
) -> Result<CatalogAssembler, StoreError> {
    let steps = [
        (keys::CATALOG_PREFIX, CatalogAssembler::catalog as AddRecord),
        (keys::SCHEMA_PREFIX, CatalogAssembler::schema),
    ];
    feed_prefixes(store, assembler, steps).await
}

/// Feeds every value under each prefix, in turn, to its record method, at the assembler's
/// revision.
async fn feed_prefixes(
    store: &dyn KvBackend,
    mut assembler: CatalogAssembler,
    steps: [(&str, AddRecord); 2],
) -> Result<CatalogAssembler, StoreError> {
    let revision = assembler.revision;
    for (prefix, add) in steps {
        assembler = feed_pages(store, prefix, revision, assembler, add).await?;
    }
    Ok(assembler)
}

/// [`CatalogAssembler::finish`] on the blocking pool (it walks every region).
pub(super) async fn finish_off_thread(
    assembler: CatalogAssembler,
) -> Result<LoadedCatalog, StoreError> {
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
            let [name, info, route] = records(entry);
            assembler.name(KeyValue::new(name_key.clone(), name.value));
            assembler.info(info);
            assembler.route(route);
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

    /// A table's three records, as its creation writes them.
    fn records(entry: &TableEntry) -> [KeyValue; 3] {
        let id = entry.info.id;
        [
            KeyValue::new(keys::table_name(&entry.info.name), id.to_string()),
            KeyValue::new(
                keys::table(id),
                serde_json::to_vec(&entry.info).expect("encodes"),
            ),
            KeyValue::new(
                keys::table_route(id),
                serde_json::to_vec(&entry.route).expect("encodes"),
            ),
        ]
    }

    /// What a load serves and sets aside: each table's id and route, the quarantined keys
    /// and reasons, and the withheld tables.
    type Served = (Vec<(u64, TableRoute)>, Vec<(String, String)>, Vec<u64>);

    fn served(loaded: LoadedCatalog) -> Served {
        let mut tables: Vec<(u64, TableRoute)> = loaded
            .cache
            .served_tables()
            .map(|(_, entry)| (entry.info.id, entry.route.clone()))
            .collect();
        tables.sort_by_key(|(id, _)| *id);
        let quarantined = loaded
            .quarantined
            .into_iter()
            .map(|r| (r.key, r.reason))
            .collect();
        let mut withheld: Vec<u64> = loaded.withheld.into_iter().collect();
        withheld.sort();
        (tables, quarantined, withheld)
    }

    /// A standby copy: loaded, then changed key by key as a watch delivers the changes
    /// (tables created, dropped, moved; records corrupted and repaired). It must serve and
    /// set aside exactly what a cold load of the resulting records does.
    #[test]
    fn changes_applied_after_a_load_give_what_a_load_of_the_result_gives() {
        let mut copy = CatalogAssembler::default();
        for id in [7, 8, 9, 11] {
            let [name, info, route] = records(&table(id, 3));
            copy.name(name);
            copy.info(info);
            copy.route(route);
        }
        let put = |copy: &mut CatalogAssembler, kv: KeyValue| copy.apply(kv.key, Some(kv.value));
        // Table 8 dropped: its three keys deleted.
        for kv in records(&table(8, 3)) {
            copy.apply(kv.key, None);
        }
        // Table 7's regions moved to node 3.
        let mut moved = table(7, 3);
        for region in &mut moved.route.regions {
            region.leader = Peer {
                id: 3,
                addr: "n3:4001".into(),
            };
        }
        moved.route.version = 2;
        put(&mut copy, records(&moved)[2].clone());
        // Table 10 created.
        for kv in records(&table(10, 2)) {
            put(&mut copy, kv);
        }
        // Table 9's route overwritten with something unreadable; table 11's info too, then
        // repaired.
        put(
            &mut copy,
            KeyValue::new(keys::table_route(9), b"{broken".to_vec()),
        );
        put(
            &mut copy,
            KeyValue::new(keys::table(11), b"{broken".to_vec()),
        );
        put(&mut copy, records(&table(11, 3))[1].clone());
        // Keys outside the table records (the hand-over marker) are not records.
        copy.apply(b"__meta/table_handover".to_vec(), Some(b"{}".to_vec()));

        let mut cold = CatalogAssembler::default();
        for entry in [moved.clone(), table(10, 2), table(11, 3)] {
            let [name, info, route] = records(&entry);
            cold.name(name);
            cold.info(info);
            cold.route(route);
        }
        let [name, info, _] = records(&table(9, 3));
        cold.name(name);
        cold.info(info);
        cold.route(KeyValue::new(keys::table_route(9), b"{broken".to_vec()));

        let (copy, cold) = (served(copy.finish()), served(cold.finish()));
        assert_eq!(copy, cold);
        let (tables, quarantined, withheld) = copy;
        let ids: Vec<u64> = tables.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![7, 10, 11]);
        assert_eq!(tables[0].1, moved.route, "the move is served");
        let keys: Vec<&str> = quarantined.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "__meta/table_name/greptime/public/t9",
                "__meta/table_route/9"
            ]
        );
        assert_eq!(
            withheld,
            vec![9],
            "the unreadable table's regions are left alone"
        );
    }

    #[test]
    fn a_key_that_spells_an_id_otherwise_is_set_aside_and_touches_no_table() {
        let mut copy = CatalogAssembler::default();
        let [name, info, route] = records(&table(7, 2));
        copy.name(name);
        copy.info(info.clone());
        copy.route(route);
        // `07` and `+7` parse as 7: neither may replace or delete table 7's record.
        copy.apply(b"__meta/table/07".to_vec(), Some(info.value.clone()));
        copy.apply(b"__meta/table/07".to_vec(), None);
        copy.apply(b"__meta/table/+7".to_vec(), Some(b"{broken".to_vec()));
        let (tables, quarantined, withheld) = served(copy.finish());
        assert_eq!(tables.len(), 1, "table 7 is served");
        assert_eq!(
            quarantined,
            vec![(
                "__meta/table/+7".to_owned(),
                "its key does not end in a table id".to_owned()
            )]
        );
        assert!(withheld.is_empty());
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
