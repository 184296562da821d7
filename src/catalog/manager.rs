//! `TableManager`: DDL and route lookups on the leader. It keeps every catalog, schema, table and
//! route in memory (loaded at start, written through after each committed change) so that Route
//! lookups never touch the KV, and runs CREATE/DROP TABLE:
//!
//! 1. validate the definition and plan its regions from the partition rule;
//! 2. allocate a table id (ids are never reused; a failed create burns its id and leaves nothing
//!    that refers to it);
//! 3. ask the `Scheduler` to place each region's copies on live datanodes;
//! 4. send `OpenRegion` to each datanode through the `Mailbox` and wait for every
//!    confirmation (or close what was opened and fail);
//! 5. commit name, table info and route in ONE transaction guarded by "the name is absent", so
//!    two concurrent creates of a name cannot both win and a crash never leaves half a table.

mod route_writes;

use crate::clock::unix_ms;
use route_writes::{RouteMove, ROUTE_LOCK_STRIPES};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use futures::future::join_all;
use parking_lot::RwLock;

use super::model::{
    region_id, validate_name, PartitionRule, Peer, RegionRoute, TableInfo, TableName, TableRoute,
    TableSchema,
};
use super::ownership::RegionOwnership;
use super::partition::validate_table;
use super::quarantine::Quarantine;
use super::standby::{CatalogLoad, LoadSource, StandbyCatalog};
use crate::actors::cluster_view::{Instruction, Mailbox};
use crate::actors::scheduler::{AllocateRegions, Scheduler, SchedulerError};
use crate::proto::v1 as pb;
use crate::selector::Placement;
use crate::stats::RegionRole;
use crate::store::{Compare, KeyValue, KvBackend, StoreError, Txn, TxnOp, TxnOpResult};

/// The catalog and schema every cluster starts with.
pub const DEFAULT_CATALOG: &str = "greptime";
pub const DEFAULT_SCHEMA: &str = "public";
/// Table ids below this are reserved.
const FIRST_TABLE_ID: u64 = 1024;
/// Table ids taken from the KV sequence at once.
const ID_BATCH: u64 = 100;
/// The most copies of a region.
const MAX_REPLICAS: u32 = 16;
/// How long a new leader waits for its standby copy to reach its hand-over marker before it
/// loads the catalog cold instead: a copy that keeps up answers within a round trip.
const HAND_OVER_PATIENCE: Duration = Duration::from_secs(1);

pub mod keys {
    //! The KV layout of the catalog (see ARCHITECTURE.md).
    pub const CATALOG_PREFIX: &str = "__meta/catalog/";
    pub const SCHEMA_PREFIX: &str = "__meta/schema/";
    pub const TABLE_NAME_PREFIX: &str = "__meta/table_name/";
    pub const TABLE_PREFIX: &str = "__meta/table/";
    pub const TABLE_ROUTE_PREFIX: &str = "__meta/table_route/";
    pub const TABLE_ID_SEQUENCE: &str = "__meta/id/table";

    pub fn catalog(name: &str) -> Vec<u8> {
        format!("{CATALOG_PREFIX}{name}").into_bytes()
    }
    pub fn schema(catalog: &str, schema: &str) -> Vec<u8> {
        format!("{SCHEMA_PREFIX}{catalog}/{schema}").into_bytes()
    }
    pub fn table_name(name: &super::TableName) -> Vec<u8> {
        format!(
            "{TABLE_NAME_PREFIX}{}/{}/{}",
            name.catalog, name.schema, name.table
        )
        .into_bytes()
    }
    pub fn table(id: u64) -> Vec<u8> {
        format!("{TABLE_PREFIX}{id}").into_bytes()
    }
    pub fn table_route(id: u64) -> Vec<u8> {
        format!("{TABLE_ROUTE_PREFIX}{id}").into_bytes()
    }
    /// A table id written as decimal text (the value of a table name, the id sequence, the
    /// tail of a table or route key).
    pub fn parse_id(bytes: &[u8]) -> Option<u64> {
        std::str::from_utf8(bytes).ok()?.parse().ok()
    }
}

/// Errors of DDL and route lookups; mapped to gRPC statuses in `src/grpc/mod.rs`.
#[derive(Debug, thiserror::Error)]
pub enum DdlError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    /// The cluster cannot satisfy the request now (e.g. too few live datanodes).
    #[error("{0}")]
    NoCapacity(String),
    /// Datanodes did not confirm in time; nothing was committed.
    #[error("{0}")]
    NotConfirmed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
}

/// A table and its route, as served to frontends.
#[derive(Clone, Debug, PartialEq)]
pub struct TableEntry {
    pub info: TableInfo,
    pub route: TableRoute,
    /// A store revision at which the stored route was `route` (etcd), so that the next route
    /// write compares a revision rather than the whole route (`Compare::UnchangedSince`); 0 if
    /// none is known (the embedded store keeps none, or the route was read without one): that
    /// write then compares the stored value.
    pub route_revision: i64,
}

/// What CreateTable asks for.
#[derive(Clone, Debug)]
pub struct CreateTable {
    pub name: TableName,
    pub schema: TableSchema,
    pub partition: PartitionRule,
    pub if_not_exists: bool,
    /// Copies per region; 0 means 1.
    pub replicas: u32,
}

/// The first route of a new table: region `n` of the rule at the `n`th placement.
pub(crate) fn new_route(table_id: u64, placements: Vec<Placement>) -> TableRoute {
    TableRoute {
        table_id,
        version: 1,
        regions: placements
            .into_iter()
            .enumerate()
            .map(|(number, placement)| RegionRoute {
                region_id: region_id(table_id, number as u32),
                region_number: number as u32,
                leader: placement.leader,
                followers: placement.followers,
            })
            .collect(),
    }
}

/// The three records that make a table, written in one transaction: name -> id, info, route.
/// The catalog load reads them back (`load::CatalogAssembler`).
pub(crate) fn table_records(entry: &TableEntry) -> Result<[KeyValue; 3], DdlError> {
    let id = entry.info.id;
    let encode_error = |e: serde_json::Error| DdlError::Corrupt(e.to_string());
    Ok([
        KeyValue::new(keys::table_name(&entry.info.name), id.to_string()),
        KeyValue::new(
            keys::table(id),
            serde_json::to_vec(&entry.info).map_err(encode_error)?,
        ),
        KeyValue::new(
            keys::table_route(id),
            serde_json::to_vec(&entry.route).map_err(encode_error)?,
        ),
    ])
}

impl CreateTable {
    /// The request as the Router receives it; what cannot be converted is an invalid argument.
    /// The definition itself is checked by `create_table` (`partition::validate_table`).
    pub fn from_pb(request: pb::CreateTableRequest) -> Result<Self, String> {
        let name: TableName = request.table_name.ok_or("table_name is missing")?.into();
        let schema: TableSchema = request.schema.ok_or("schema is missing")?.try_into()?;
        Ok(CreateTable {
            name,
            schema,
            partition: request.partition_rule.into(),
            if_not_exists: request.if_not_exists,
            replicas: request.replicas,
        })
    }
}

#[derive(Clone, Debug)]
pub struct DdlConfig {
    /// The most regions a partition rule may give.
    pub max_regions_per_table: u32,
    /// How long datanodes have to confirm OpenRegion.
    pub open_region_timeout: Duration,
    /// The first lease given with OpenRegion.
    pub region_lease: Duration,
}

#[derive(Default)]
pub(crate) struct Cache {
    pub(super) catalogs: BTreeSet<String>,
    pub(super) schemas: BTreeMap<String, BTreeSet<String>>,
    tables: HashMap<TableName, Arc<TableEntry>>,
    /// Table id -> name, kept with `tables` by `put_table` / `remove_table`.
    names_by_id: HashMap<u64, TableName>,
}

impl Cache {
    /// Every table served, by name.
    pub(crate) fn served_tables(&self) -> impl Iterator<Item = (&TableName, &TableEntry)> {
        self.tables
            .iter()
            .map(|(name, entry)| (name, entry.as_ref()))
    }

    /// The name a table id is served under.
    pub(crate) fn name_of(&self, table_id: u64) -> Option<&TableName> {
        self.names_by_id.get(&table_id)
    }

    pub(super) fn put_table(&mut self, entry: Arc<TableEntry>) {
        let (id, name) = (entry.info.id, entry.info.name.clone());
        if let Some(old) = self.tables.insert(name.clone(), entry) {
            // The name now belongs to another id (dropped and created again).
            if old.info.id != id {
                self.names_by_id.remove(&old.info.id);
            }
        }
        self.names_by_id.insert(id, name);
    }

    fn remove_table(&mut self, name: &TableName) {
        if let Some(old) = self.tables.remove(name) {
            self.names_by_id.remove(&old.info.id);
        }
    }
}

pub struct TableManager {
    store: Arc<dyn KvBackend>,
    ownership: Arc<RegionOwnership>,
    scheduler: Addr<Scheduler>,
    /// OpenRegion and CloseRegion of creates and drops go straight to the node's stream.
    mailbox: Arc<Mailbox>,
    config: DdlConfig,
    cache: RwLock<Cache>,
    /// The unused part of the last id batch: [next, end).
    ids: tokio::sync::Mutex<(u64, u64)>,
    /// Regions a procedure is changing now: DDL on their tables waits for it to finish.
    locked_regions: parking_lot::Mutex<std::collections::HashSet<u64>>,
    /// Records the last load set aside.
    quarantine: Arc<Quarantine>,
    /// How the catalog was last loaded as leader.
    last_load: parking_lot::Mutex<Option<CatalogLoad>>,
    /// Serializes route changes per table (striped by table id: bounded, no per-table state),
    /// holding when the stripe's last write of moves ended.
    route_locks: Vec<tokio::sync::Mutex<Option<std::time::Instant>>>,
    /// Route moves waiting for their stripe's lock; its holder writes them all.
    route_queues: Vec<parking_lot::Mutex<Vec<RouteMove>>>,
}

/// A region of `route` by id: at the index of its number (routes keep regions in number order),
/// or by a search if the route is ordered otherwise.
fn find_region(route: &TableRoute, region_id: u64) -> Option<&RegionRoute> {
    let number = (region_id & 0xffff_ffff) as usize;
    match route.regions.get(number) {
        Some(region) if region.region_id == region_id => Some(region),
        _ => route.regions.iter().find(|r| r.region_id == region_id),
    }
}

/// One region's leadership move, as [`TableManager::move_region_leaders`] takes it: from
/// `from` to `leader`, with `followers` as the region's followers afterwards.
#[derive(Clone, Debug)]
pub struct LeaderMove {
    pub region_id: u64,
    pub from: u64,
    pub leader: Peer,
    pub followers: Vec<Peer>,
}

/// Holds region locks until dropped (see [`TableManager::lock_regions`]).
pub struct RegionLocks<'a> {
    manager: &'a TableManager,
    regions: Vec<u64>,
}

impl Drop for RegionLocks<'_> {
    fn drop(&mut self) {
        let mut locked = self.manager.locked_regions.lock();
        for region in &self.regions {
            locked.remove(region);
        }
    }
}

fn corrupt(key: &[u8], e: impl std::fmt::Display) -> DdlError {
    DdlError::Corrupt(format!("{}: {e}", String::from_utf8_lossy(key)))
}

impl TableManager {
    /// A manager with an empty cache; [`TableManager::become_leader`] fills it.
    pub fn new(
        store: Arc<dyn KvBackend>,
        ownership: Arc<RegionOwnership>,
        scheduler: Addr<Scheduler>,
        mailbox: Arc<Mailbox>,
        config: DdlConfig,
    ) -> Self {
        Self {
            store,
            ownership,
            scheduler,
            mailbox,
            config,
            cache: RwLock::new(Cache::default()),
            ids: tokio::sync::Mutex::new((0, 0)),
            locked_regions: parking_lot::Mutex::new(std::collections::HashSet::new()),
            quarantine: Arc::new(Quarantine::default()),
            last_load: parking_lot::Mutex::new(None),
            route_locks: (0..ROUTE_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            route_queues: (0..ROUTE_LOCK_STRIPES)
                .map(|_| parking_lot::Mutex::new(Vec::new()))
                .collect(),
        }
    }

    /// Whether a procedure holds `region_id` now.
    pub fn is_locked(&self, region_id: u64) -> bool {
        self.locked_regions.lock().contains(&region_id)
    }

    /// Locks `regions` for a procedure; `None` if another procedure holds any of them.
    pub fn lock_regions(&self, regions: &[u64]) -> Option<RegionLocks<'_>> {
        let mut locked = self.locked_regions.lock();
        if regions.iter().any(|r| locked.contains(r)) {
            return None;
        }
        locked.extend(regions.iter().copied());
        Some(RegionLocks {
            manager: self,
            regions: regions.to_vec(),
        })
    }

    /// Called when this member becomes leader: takes the catalog over from `standby`, the copy
    /// it kept while it stood by, if that can be handed over (see `super::standby`), else loads
    /// it from the KV (a previous leader may have changed it); forgets id batches of earlier
    /// terms, and creates the default catalog and schema if missing.
    pub async fn become_leader(&self, standby: Option<StandbyCatalog>) -> Result<(), DdlError> {
        *self.ids.lock().await = (0, 0);
        // Moves queued by an earlier term's operations are not this term's to write.
        for queue in &self.route_queues {
            queue.lock().clear();
        }
        let started = std::time::Instant::now();
        let handed_over = match standby {
            Some(standby) => standby
                .hand_over(self.store.as_ref(), HAND_OVER_PATIENCE)
                .await
                .map_err(|reason| {
                    tracing::warn!("the standby copy of the catalog is not used ({reason}); loading the catalog from the store");
                })
                .ok(),
            None => None,
        };
        let (loaded, source) = match handed_over {
            Some(loaded) => (loaded, LoadSource::Standby),
            None => (
                super::load::load_catalog(self.store.as_ref()).await?,
                LoadSource::Store,
            ),
        };
        let tables = loaded.cache.tables.len();
        let installing = std::time::Instant::now();
        self.install(loaded);
        let install_ms = installing.elapsed().as_millis() as u64;
        let load = CatalogLoad {
            source,
            tables,
            elapsed_ms: started.elapsed().as_millis() as u64,
            at_unix_ms: unix_ms(),
        };
        tracing::info!(
            tables,
            elapsed_ms = load.elapsed_ms,
            install_ms,
            ?source,
            "catalog loaded"
        );
        *self.last_load.lock() = Some(load);
        self.create_catalog(DEFAULT_CATALOG, true).await?;
        self.create_schema(DEFAULT_CATALOG, DEFAULT_SCHEMA, true)
            .await?;
        Ok(())
    }

    /// Routes read from the KV, for a follower (its cache is not kept up to date).
    pub async fn routes_from_store(
        &self,
        names: &[TableName],
    ) -> Result<Vec<Arc<TableEntry>>, DdlError> {
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            entries.push(self.read_entry(name).await?);
        }
        Ok(entries)
    }

    /// Rebuilds the in-memory catalog from the KV (see `load.rs`): records that cannot be
    /// read are quarantined, never fatal.
    pub async fn reload(&self) -> Result<(), DdlError> {
        let loaded = super::load::load_catalog(self.store.as_ref()).await?;
        self.install(loaded);
        Ok(())
    }

    /// Serves `loaded` from now on.
    fn install(&self, loaded: super::load::LoadedCatalog) {
        self.ownership
            .rebuild(loaded.cache.tables.values().map(|entry| &entry.route));
        self.ownership.withhold_tables(loaded.withheld);
        *self.cache.write() = loaded.cache;
        self.quarantine.replace(loaded.quarantined);
    }

    /// The store the catalog lives in (this member's fenced view of it).
    pub fn store(&self) -> &Arc<dyn KvBackend> {
        &self.store
    }

    /// How the catalog was last loaded as leader (`None` before the first time).
    pub fn last_load(&self) -> Option<CatalogLoad> {
        self.last_load.lock().clone()
    }

    /// The records the last catalog load could not read.
    pub fn quarantine(&self) -> &Arc<Quarantine> {
        &self.quarantine
    }

    pub async fn create_catalog(&self, name: &str, if_not_exists: bool) -> Result<bool, DdlError> {
        validate_name("catalog", name).map_err(DdlError::InvalidArgument)?;
        let value = serde_json::json!({ "created_at_unix_ms": unix_ms() }).to_string();
        let created = self
            .store
            .compare_and_put(keys::catalog(name), None, value.into_bytes())
            .await?
            .success;
        self.cache.write().catalogs.insert(name.to_owned());
        if !created && !if_not_exists {
            return Err(DdlError::AlreadyExists(format!(
                "catalog {name:?} already exists"
            )));
        }
        Ok(created)
    }

    pub fn list_catalogs(&self) -> Vec<String> {
        self.cache.read().catalogs.iter().cloned().collect()
    }

    pub async fn create_schema(
        &self,
        catalog: &str,
        name: &str,
        if_not_exists: bool,
    ) -> Result<bool, DdlError> {
        validate_name("schema", name).map_err(DdlError::InvalidArgument)?;
        self.require_catalog(catalog)?;
        let value = serde_json::json!({ "created_at_unix_ms": unix_ms() }).to_string();
        let created = self
            .store
            .compare_and_put(keys::schema(catalog, name), None, value.into_bytes())
            .await?
            .success;
        self.cache
            .write()
            .schemas
            .entry(catalog.to_owned())
            .or_default()
            .insert(name.to_owned());
        if !created && !if_not_exists {
            return Err(DdlError::AlreadyExists(format!(
                "schema {catalog}.{name} already exists"
            )));
        }
        Ok(created)
    }

    pub fn list_schemas(&self, catalog: &str) -> Result<Vec<String>, DdlError> {
        self.require_catalog(catalog)?;
        Ok(self
            .cache
            .read()
            .schemas
            .get(catalog)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }

    fn require_catalog(&self, catalog: &str) -> Result<(), DdlError> {
        if self.cache.read().catalogs.contains(catalog) {
            Ok(())
        } else {
            Err(DdlError::NotFound(format!(
                "catalog {catalog:?} does not exist"
            )))
        }
    }

    /// The routes of `names`, in order; NotFound names the first missing table.
    pub fn routes(&self, names: &[TableName]) -> Result<Vec<Arc<TableEntry>>, DdlError> {
        let cache = self.cache.read();
        names
            .iter()
            .map(|name| {
                cache
                    .tables
                    .get(name)
                    .cloned()
                    .ok_or_else(|| DdlError::NotFound(format!("table {name} does not exist")))
            })
            .collect()
    }

    /// Every table (for tools and for failover, which needs the regions of a node).
    pub fn tables(&self) -> Vec<Arc<TableEntry>> {
        self.cache.read().tables.values().cloned().collect()
    }

    async fn allocate_table_id(&self) -> Result<u64, DdlError> {
        let mut ids = self.ids.lock().await;
        if ids.0 == ids.1 {
            loop {
                let current = self
                    .store
                    .batch_get(vec![keys::TABLE_ID_SEQUENCE.as_bytes().to_vec()])
                    .await?
                    .into_iter()
                    .next();
                let start = match &current {
                    Some(kv) => {
                        keys::parse_id(&kv.value).ok_or_else(|| corrupt(&kv.key, "not a number"))?
                    }
                    None => FIRST_TABLE_ID,
                };
                let end = start + ID_BATCH;
                let swapped = self
                    .store
                    .compare_and_put(
                        keys::TABLE_ID_SEQUENCE.as_bytes().to_vec(),
                        current.map(|kv| kv.value),
                        end.to_string().into_bytes(),
                    )
                    .await?;
                if swapped.success {
                    *ids = (start, end);
                    break;
                }
            }
        }
        let id = ids.0;
        ids.0 += 1;
        Ok(id)
    }

    /// How many regions each node holds according to the routes (O(nodes), not O(regions):
    /// every create asks).
    fn routed_regions(&self) -> HashMap<u64, u64> {
        self.ownership.region_counts()
    }

    /// Creates a table; returns whether it was created (false: it existed and if_not_exists).
    pub async fn create_table(
        &self,
        request: CreateTable,
    ) -> Result<(bool, Arc<TableEntry>), DdlError> {
        let regions = validate_table(
            &request.name,
            &request.schema,
            &request.partition,
            self.config.max_regions_per_table,
        )
        .map_err(DdlError::InvalidArgument)?;
        let replicas = request.replicas.max(1);
        if replicas > MAX_REPLICAS {
            return Err(DdlError::InvalidArgument(format!(
                "{replicas} replicas is over the limit of {MAX_REPLICAS}"
            )));
        }
        let name = request.name.clone();
        {
            let cache = self.cache.read();
            if !cache.catalogs.contains(&name.catalog) {
                return Err(DdlError::NotFound(format!(
                    "catalog {:?} does not exist",
                    name.catalog
                )));
            }
            if !cache
                .schemas
                .get(&name.catalog)
                .is_some_and(|s| s.contains(&name.schema))
            {
                return Err(DdlError::NotFound(format!(
                    "schema {}.{} does not exist",
                    name.catalog, name.schema
                )));
            }
            if let Some(existing) = cache.tables.get(&name) {
                return self.exists(&name, existing.clone(), request.if_not_exists);
            }
        }

        let started = std::time::Instant::now();
        let table_id = self.allocate_table_id().await?;
        let allocated = started.elapsed();
        let placements = self
            .scheduler
            .send(AllocateRegions {
                regions,
                replicas,
                routed_regions: self.routed_regions(),
            })
            .await
            .map_err(|e| DdlError::NoCapacity(format!("scheduler unavailable: {e}")))?
            .map_err(|e| match e {
                SchedulerError::NoCapacity(m) => DdlError::NoCapacity(m),
                other => DdlError::NoCapacity(other.to_string()),
            })?;
        let route = new_route(table_id, placements);
        let info = TableInfo {
            id: table_id,
            name: name.clone(),
            schema: request.schema,
            partition: request.partition,
            replicas,
            created_at_unix_ms: unix_ms(),
        };
        tracing::info!(table = %name, table_id, regions, replicas, "creating table: opening regions");

        let placed = started.elapsed();
        self.open_regions(&name, &route).await?;
        let opened = started.elapsed();
        let mut entry = TableEntry {
            info,
            route,
            route_revision: 0,
        };
        let committed = self.commit_create(&entry).await;
        tracing::debug!(
            table = %name,
            ?allocated,
            place = ?placed - allocated,
            open = ?opened - placed,
            commit = ?started.elapsed() - opened,
            "create_table phases"
        );
        match committed {
            Ok(Some(revision)) => {
                entry.route_revision = revision;
                let entry = Arc::new(entry);
                self.ownership.add_route(&entry.route);
                self.cache.write().put_table(entry.clone());
                tracing::info!(table = %name, table_id, "table created");
                Ok((true, entry))
            }
            Ok(None) => {
                // A concurrent create of the same name won: our regions are nobody's.
                self.close_regions_in_background(&entry.route);
                let existing = self.load_entry(&name).await?;
                self.exists(&name, existing, request.if_not_exists)
            }
            Err(e) => Err(e),
        }
    }

    fn exists(
        &self,
        name: &TableName,
        existing: Arc<TableEntry>,
        if_not_exists: bool,
    ) -> Result<(bool, Arc<TableEntry>), DdlError> {
        if if_not_exists {
            Ok((false, existing))
        } else {
            Err(DdlError::AlreadyExists(format!(
                "table {name} already exists"
            )))
        }
    }

    /// Sends OpenRegion for every copy and waits for all; on any failure closes what opened.
    async fn open_regions(&self, name: &TableName, route: &TableRoute) -> Result<(), DdlError> {
        let table: crate::proto::v1::TableName = name.into();
        let copies: Vec<(Peer, u64, RegionRole)> = route
            .regions
            .iter()
            .flat_map(|r| {
                std::iter::once((r.leader.clone(), r.region_id, RegionRole::Leader)).chain(
                    r.followers
                        .iter()
                        .map(|f| (f.clone(), r.region_id, RegionRole::Follower)),
                )
            })
            .collect();
        let timeout = self.config.open_region_timeout;
        let outcomes = join_all(copies.iter().map(|(peer, region_id, role)| {
            self.mailbox.send(
                peer.id,
                Instruction::OpenRegion {
                    region_id: *region_id,
                    table: table.clone(),
                    role: *role,
                    lease_millis: self.config.region_lease.as_millis() as u64,
                },
                timeout,
            )
        }))
        .await;
        let mut failures = Vec::new();
        for ((peer, region_id, _), outcome) in copies.iter().zip(outcomes) {
            match outcome {
                Ok(result) if result.success => {}
                Ok(result) => failures.push(format!(
                    "datanode {} refused to open region {region_id}: {}",
                    peer.id,
                    result.error.unwrap_or_default()
                )),
                Err(e) => failures.push(format!("region {region_id}: {e}")),
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        self.close_regions_in_background(route);
        // The message travels in a gRPC header: name a few failures, count the rest.
        const NAMED: usize = 5;
        let mut reasons = failures[..failures.len().min(NAMED)].join("; ");
        if failures.len() > NAMED {
            reasons.push_str(&format!("; and {} more", failures.len() - NAMED));
        }
        Err(DdlError::NotConfirmed(format!(
            "table {name} was not created ({} of {} region copies failed; opened ones are being closed): {reasons}",
            failures.len(),
            copies.len(),
        )))
    }

    /// Commits name, info and route in one transaction if the name is still free. Returns the
    /// revision the records landed at (0 if unknown), or `None` if another create took the name
    /// first.
    async fn commit_create(&self, entry: &TableEntry) -> Result<Option<i64>, DdlError> {
        let name_key = keys::table_name(&entry.info.name);
        let txn = Txn {
            compare: vec![Compare::Absent {
                key: name_key.clone(),
            }],
            success: table_records(entry)?
                .into_iter()
                .map(|kv| TxnOp::Put {
                    key: kv.key,
                    value: kv.value,
                })
                .collect(),
            failure: vec![],
        };
        match self.store.txn(txn).await {
            Ok(response) => Ok(response.succeeded.then_some(response.revision)),
            Err(StoreError::Unavailable(reason)) => {
                // The commit may or may not have landed: look before deciding. If we cannot
                // look either, leave the opened regions alone (closing a committed table's
                // regions would be worse than an orphan region, which leases clean up).
                let landed = self
                    .store
                    .batch_get(vec![name_key])
                    .await
                    .map_err(|_| {
                        DdlError::Store(StoreError::Unavailable(format!(
                            "{reason}; the outcome of creating {} is unknown, retry with if_not_exists",
                            entry.info.name
                        )))
                    })?
                    .into_iter()
                    .next()
                    .map(|kv| kv.value == entry.info.id.to_string().into_bytes());
                match landed {
                    Some(true) => Ok(Some(0)),
                    Some(false) => Ok(None),
                    None => {
                        self.close_regions_in_background(&entry.route);
                        Err(DdlError::Store(StoreError::Unavailable(reason)))
                    }
                }
            }
            Err(e) => {
                self.close_regions_in_background(&entry.route);
                Err(e.into())
            }
        }
    }

    /// The committed entry of `name`, from the cache or else the KV.
    async fn load_entry(&self, name: &TableName) -> Result<Arc<TableEntry>, DdlError> {
        if let Some(entry) = self.cache.read().tables.get(name) {
            return Ok(entry.clone());
        }
        let entry = self.read_entry(name).await?;
        self.ownership.add_route(&entry.route);
        self.cache.write().put_table(entry.clone());
        Ok(entry)
    }

    /// The committed entry of `name`, read from the KV.
    async fn read_entry(&self, name: &TableName) -> Result<Arc<TableEntry>, DdlError> {
        let id_kv = self
            .store
            .batch_get(vec![keys::table_name(name)])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| DdlError::NotFound(format!("table {name} does not exist")))?;
        let id =
            keys::parse_id(&id_kv.value).ok_or_else(|| corrupt(&id_kv.key, "not a table id"))?;
        let kvs = self
            .store
            .batch_get(vec![keys::table(id), keys::table_route(id)])
            .await?;
        let [info_kv, route_kv] = kvs.as_slice() else {
            return Err(DdlError::Corrupt(format!(
                "table {id} has no info or route"
            )));
        };
        let mut route: TableRoute =
            serde_json::from_slice(&route_kv.value).map_err(|e| corrupt(&route_kv.key, e))?;
        super::model::drop_bad_followers(&mut route);
        let entry = Arc::new(TableEntry {
            info: serde_json::from_slice(&info_kv.value).map_err(|e| corrupt(&info_kv.key, e))?,
            route,
            route_revision: 0,
        });
        // What the catalog load would quarantine is not served this way either.
        if entry.info.name != *name {
            return Err(corrupt(
                &id_kv.key,
                format!("its info names {}", entry.info.name),
            ));
        }
        super::model::check_route(&entry.info, &entry.route)
            .map_err(|reason| corrupt(&route_kv.key, reason))?;
        // Not cached here: the cache and the ownership index go together (`load_entry`).
        Ok(entry)
    }

    /// Drops a table; returns whether it existed.
    pub async fn drop_table(&self, name: &TableName, if_exists: bool) -> Result<bool, DdlError> {
        let entry = self.cache.read().tables.get(name).cloned();
        let Some(entry) = entry else {
            if if_exists {
                return Ok(false);
            }
            return Err(DdlError::NotFound(format!("table {name} does not exist")));
        };
        let id = entry.info.id;
        let region_ids: Vec<u64> = entry.route.regions.iter().map(|r| r.region_id).collect();
        let Some(_locks) = self.lock_regions(&region_ids) else {
            return Err(DdlError::NotConfirmed(format!(
                "a failover is moving regions of {name}; retry shortly"
            )));
        };
        let name_key = keys::table_name(name);
        let response = self
            .store
            .txn(Txn {
                compare: vec![Compare::ValueEquals {
                    key: name_key.clone(),
                    value: id.to_string().into_bytes(),
                }],
                success: vec![
                    TxnOp::Delete { key: name_key },
                    TxnOp::Delete {
                        key: keys::table(id),
                    },
                    TxnOp::Delete {
                        key: keys::table_route(id),
                    },
                ],
                failure: vec![],
            })
            .await?;
        {
            let mut cache = self.cache.write();
            if cache.tables.get(name).is_some_and(|e| e.info.id == id) {
                cache.remove_table(name);
                self.ownership.remove_route(&entry.route);
            }
        }
        if !response.succeeded {
            if if_exists {
                return Ok(false);
            }
            return Err(DdlError::NotFound(format!("table {name} does not exist")));
        }
        debug_assert!(response
            .results
            .iter()
            .all(|r| matches!(r, TxnOpResult::Delete { .. })));
        tracing::info!(table = %name, table_id = id, "table dropped");
        self.close_regions_in_background(&entry.route);
        Ok(true)
    }

    /// Which regions the routes give each node.
    pub fn ownership(&self) -> &Arc<RegionOwnership> {
        &self.ownership
    }

    /// The regions `node_id` leads, with their tables, by region id.
    pub fn regions_led_by(&self, node_id: u64) -> Vec<(Arc<TableEntry>, RegionRoute)> {
        self.regions_of(node_id, |role| role == RegionRole::Leader)
    }

    /// The regions `node_id` holds a copy of (as leader or follower), with their tables.
    pub fn regions_on(&self, node_id: u64) -> Vec<(Arc<TableEntry>, RegionRoute)> {
        self.regions_of(node_id, |_| true)
    }

    /// The node's regions in the roles `keep` selects: O(the node's regions), from the
    /// ownership index, not a scan of every table (a million regions at scale).
    fn regions_of(
        &self,
        node_id: u64,
        keep: impl Fn(RegionRole) -> bool,
    ) -> Vec<(Arc<TableEntry>, RegionRoute)> {
        let owned = self.ownership.regions_of(node_id);
        let cache = self.cache.read();
        owned
            .into_iter()
            .filter(|(_, role)| keep(*role))
            .filter_map(|(region_id, _)| {
                let name = cache
                    .names_by_id
                    .get(&super::model::table_of_region(region_id))?;
                let entry = cache.tables.get(name)?;
                let region = find_region(&entry.route, region_id)?;
                Some((entry.clone(), region.clone()))
            })
            .collect()
    }

    /// The current route of one region, with its table (`None` if no table routes it).
    pub fn region_route(&self, region_id: u64) -> Option<(Arc<TableEntry>, RegionRoute)> {
        let entry = self.entry_by_id(super::model::table_of_region(region_id))?;
        let region = find_region(&entry.route, region_id)?.clone();
        Some((entry, region))
    }

    /// The current entry of a table by id (after concurrent moves).
    pub fn entry_by_id(&self, table_id: u64) -> Option<Arc<TableEntry>> {
        let cache = self.cache.read();
        let name = cache.names_by_id.get(&table_id)?;
        cache.tables.get(name).cloned()
    }

    /// Tells every holder of the route's regions to close them; best effort, not awaited
    /// (a node that misses it keeps an unrouted region until its lease lapses).
    fn close_regions_in_background(&self, route: &TableRoute) {
        let timeout = self.config.open_region_timeout;
        let sends: Vec<_> = route
            .regions
            .iter()
            .flat_map(|r| {
                std::iter::once(&r.leader)
                    .chain(&r.followers)
                    .map(move |peer| (peer.id, r.region_id))
            })
            .map(|(node_id, region_id)| {
                self.mailbox
                    .send(node_id, Instruction::CloseRegion { region_id }, timeout)
            })
            .collect();
        tokio::spawn(async move {
            for outcome in join_all(sends).await {
                if let Err(e) = outcome {
                    tracing::debug!("closing a region failed: {e}");
                }
            }
        });
    }
}
