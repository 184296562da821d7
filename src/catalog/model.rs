//! The metadata model: tables, their schema and partition rule, and their versioned routes, as
//! domain types (serde, stored as JSON in the KV) with conversions to and from protobuf.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::proto::v1 as pb;

/// The longest catalog, schema, table or column name.
pub const MAX_NAME_LEN: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableName {
    pub catalog: String,
    pub schema: String,
    pub table: String,
}

impl TableName {
    pub fn new(catalog: &str, schema: &str, table: &str) -> Self {
        Self {
            catalog: catalog.into(),
            schema: schema.into(),
            table: table.into(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.catalog, self.schema, self.table)
    }
}

impl From<pb::TableName> for TableName {
    fn from(t: pb::TableName) -> Self {
        Self {
            catalog: t.catalog_name,
            schema: t.schema_name,
            table: t.table_name,
        }
    }
}

impl From<&TableName> for pb::TableName {
    fn from(t: &TableName) -> Self {
        Self {
            catalog_name: t.catalog.clone(),
            schema_name: t.schema.clone(),
            table_name: t.table.clone(),
        }
    }
}

/// Checks a catalog, schema, table or column name: 1-128 characters, ASCII letters, digits and
/// `_`, `-`, not starting with a digit or `-`.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{kind} name {name:?} is longer than {MAX_NAME_LEN} characters"
        ));
    }
    let first = name.chars().next().unwrap_or('_');
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !name.chars().all(allowed) || first.is_ascii_digit() || first == '-' {
        return Err(format!(
            "{kind} name {name:?} may only use letters, digits, '_' and '-', and must start with a letter or '_'"
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Int64,
    Uint64,
    Float64,
    Boolean,
    Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    pub data_type: ColumnType,
    pub nullable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    pub columns: Vec<ColumnDef>,
    pub time_index: String,
    pub primary_key: Vec<String>,
    pub options: BTreeMap<String, String>,
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A value of a row or a partition bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Value {
    Int64(i64),
    Uint64(u64),
    String(String),
    Float64(f64),
    Boolean(bool),
}

impl Value {
    /// Orders two values of the same kind; `None` across kinds (or NaN).
    pub fn compare(&self, other: &Value) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Value::Int64(a), Value::Int64(b)) => Some(a.cmp(b)),
            (Value::Uint64(a), Value::Uint64(b)) => Some(a.cmp(b)),
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            (Value::Float64(a), Value::Float64(b)) => a.partial_cmp(b),
            (Value::Boolean(a), Value::Boolean(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// Whether the value can live in a column of `data_type`.
    pub fn fits(&self, data_type: ColumnType) -> bool {
        matches!(
            (self, data_type),
            (Value::Int64(_), ColumnType::Int64 | ColumnType::Timestamp)
                | (Value::Uint64(_), ColumnType::Uint64)
                | (Value::String(_), ColumnType::String)
                | (Value::Float64(_), ColumnType::Float64)
                | (Value::Boolean(_), ColumnType::Boolean)
        )
    }

    /// A stable byte encoding for hashing (type tag + big-endian or UTF-8 bytes).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int64(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Value::Uint64(v) => {
                out.push(2);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Value::String(v) => {
                out.push(3);
                out.extend_from_slice(&(v.len() as u64).to_be_bytes());
                out.extend_from_slice(v.as_bytes());
            }
            Value::Float64(v) => {
                out.push(4);
                out.extend_from_slice(&v.to_bits().to_be_bytes());
            }
            Value::Boolean(v) => {
                out.push(5);
                out.push(u8::from(*v));
            }
        }
    }
}

/// Range partitions: sorted, contiguous, covering everything; `None` bounds are unbounded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RangeBound {
    pub lower: Option<Value>,
    pub upper: Option<Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionRule {
    /// One region for the whole table.
    Single,
    Range {
        column: String,
        partitions: Vec<RangeBound>,
    },
    Hash {
        columns: Vec<String>,
        partitions: u32,
    },
}

/// Everything metasrv keeps about a table except where it lives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableInfo {
    pub id: u64,
    pub name: TableName,
    pub schema: TableSchema,
    pub partition: PartitionRule,
    pub replicas: u32,
    pub created_at_unix_ms: u64,
}

/// A cluster member as routes name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    pub id: u64,
    pub addr: String,
}

impl From<&Peer> for pb::Peer {
    fn from(p: &Peer) -> Self {
        pb::Peer {
            id: p.id,
            addr: p.addr.clone(),
        }
    }
}

impl From<pb::Peer> for Peer {
    fn from(p: pb::Peer) -> Self {
        Peer {
            id: p.id,
            addr: p.addr,
        }
    }
}

/// Where one region lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRoute {
    pub region_id: u64,
    pub region_number: u32,
    pub leader: Peer,
    pub followers: Vec<Peer>,
}

/// The route of a table: every region, versioned. Versions only grow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRoute {
    pub table_id: u64,
    pub version: u64,
    pub regions: Vec<RegionRoute>,
}

/// Region ids are stable: the table id in the high 32 bits, the region number in the low.
pub fn region_id(table_id: u64, region_number: u32) -> u64 {
    (table_id << 32) | u64::from(region_number)
}

/// The table id of a region id.
pub fn table_of_region(region_id: u64) -> u64 {
    region_id >> 32
}

/// The largest table id: region ids keep the table id in their high 32 bits.
pub const MAX_TABLE_ID: u64 = u32::MAX as u64;

/// More copies of a region than any table may ask for (metasrv allows 16): only a damaged
/// record has them.
const FEW_COPIES: usize = 64;

/// Drops followers a route should not have (node 0, the region's leader, a node named twice)
/// and returns how many it dropped. Such a follower only ever stood for a copy that is there
/// anyway (or nowhere), so a route an older version stored with one is repaired on load rather
/// than refused: refusing would stop serving the whole table.
pub fn drop_bad_followers(route: &mut TableRoute) -> usize {
    let mut dropped = 0;
    for region in &mut route.regions {
        // A region has a handful of copies: comparing with the ones kept so far allocates
        // nothing (a new leader checks a million regions before it serves).
        let leader = region.leader.id;
        let before = region.followers.len();
        if before > FEW_COPIES {
            // Only a damaged record has this many: pairwise would be quadratic.
            let mut seen = std::collections::HashSet::with_capacity(before + 1);
            seen.insert(leader);
            region.followers.retain(|f| f.id != 0 && seen.insert(f.id));
            dropped += before - region.followers.len();
            continue;
        }
        let mut kept = 0;
        for index in 0..before {
            let id = region.followers[index].id;
            let repeated = region.followers[..kept].iter().any(|f| f.id == id);
            if id != 0 && id != leader && !repeated {
                region.followers.swap(kept, index);
                kept += 1;
            }
        }
        region.followers.truncate(kept);
        dropped += before - kept;
    }
    dropped
}

/// Checks that a route fits its table: the same id (one region ids can hold), one region per
/// region number the partition rule gives, each region's id derived from the table and its
/// number, a real leader, and followers that are distinct and not the leader. Metasrv only
/// writes routes that pass; a stored one that does not was damaged or written by hand, and
/// serving it would schedule regions of one table as another's, or route rows nowhere.
pub fn check_route(info: &TableInfo, route: &TableRoute) -> Result<(), String> {
    if info.id != route.table_id {
        return Err(format!(
            "the route is for table {} but the info for table {}",
            route.table_id, info.id
        ));
    }
    if info.id == 0 || info.id > MAX_TABLE_ID {
        return Err(format!(
            "table id {} is outside 1..={MAX_TABLE_ID}",
            info.id
        ));
    }
    let expected =
        super::partition::validate_table(&info.name, &info.schema, &info.partition, u32::MAX)?;
    if route.regions.len() as u64 != u64::from(expected) {
        return Err(format!(
            "the partition rule gives {expected} regions but the route has {}",
            route.regions.len()
        ));
    }
    // Numbers are below `expected`, which is the route's length: one flag each (a new
    // leader checks a million regions before it serves).
    let mut seen = vec![false; route.regions.len()];
    for region in &route.regions {
        let number = region.region_number;
        if number >= expected || std::mem::replace(&mut seen[number as usize], true) {
            return Err(format!(
                "region number {} is out of range or given twice",
                region.region_number
            ));
        }
        if region.region_id != region_id(info.id, region.region_number) {
            return Err(format!(
                "region {} has number {} but the id of another region",
                region.region_id, region.region_number
            ));
        }
        check_region_copies(region)?;
    }
    Ok(())
}

/// A region's copies: a real leader, followers that are distinct and not the leader.
pub fn check_region_copies(region: &RegionRoute) -> Result<(), String> {
    if region.leader.id == 0 {
        return Err(format!("region {} has no leader", region.region_id));
    }
    if region.followers.len() > FEW_COPIES {
        return Err(format!(
            "region {} has {} followers",
            region.region_id,
            region.followers.len()
        ));
    }
    // A handful of copies: compared pairwise, nothing allocated.
    for (index, follower) in region.followers.iter().enumerate() {
        let repeated = follower.id == region.leader.id
            || region.followers[..index]
                .iter()
                .any(|f| f.id == follower.id);
        if follower.id == 0 || repeated {
            return Err(format!(
                "region {} names node {} twice or as 0",
                region.region_id, follower.id
            ));
        }
    }
    Ok(())
}

// ---- protobuf conversions -----------------------------------------------------------------------

fn column_type_from_pb(value: i32) -> Result<ColumnType, String> {
    Ok(match pb::ColumnType::try_from(value) {
        Ok(pb::ColumnType::String) => ColumnType::String,
        Ok(pb::ColumnType::Int64) => ColumnType::Int64,
        Ok(pb::ColumnType::Uint64) => ColumnType::Uint64,
        Ok(pb::ColumnType::Float64) => ColumnType::Float64,
        Ok(pb::ColumnType::Boolean) => ColumnType::Boolean,
        Ok(pb::ColumnType::Timestamp) => ColumnType::Timestamp,
        _ => return Err(format!("unknown column type {value}")),
    })
}

fn column_type_to_pb(t: ColumnType) -> pb::ColumnType {
    match t {
        ColumnType::String => pb::ColumnType::String,
        ColumnType::Int64 => pb::ColumnType::Int64,
        ColumnType::Uint64 => pb::ColumnType::Uint64,
        ColumnType::Float64 => pb::ColumnType::Float64,
        ColumnType::Boolean => pb::ColumnType::Boolean,
        ColumnType::Timestamp => pb::ColumnType::Timestamp,
    }
}

impl TryFrom<pb::TableSchema> for TableSchema {
    type Error = String;

    fn try_from(s: pb::TableSchema) -> Result<Self, String> {
        let columns = s
            .columns
            .into_iter()
            .map(|c| {
                Ok(ColumnDef {
                    data_type: column_type_from_pb(c.data_type)
                        .map_err(|e| format!("column {:?}: {e}", c.name))?,
                    name: c.name,
                    nullable: c.nullable,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(TableSchema {
            columns,
            time_index: s.time_index,
            primary_key: s.primary_key,
            options: s.options.into_iter().collect(),
        })
    }
}

impl From<&TableSchema> for pb::TableSchema {
    fn from(s: &TableSchema) -> Self {
        pb::TableSchema {
            columns: s
                .columns
                .iter()
                .map(|c| pb::ColumnDef {
                    name: c.name.clone(),
                    data_type: column_type_to_pb(c.data_type) as i32,
                    nullable: c.nullable,
                })
                .collect(),
            time_index: s.time_index.clone(),
            primary_key: s.primary_key.clone(),
            options: s.options.clone().into_iter().collect(),
        }
    }
}

impl From<pb::Value> for Option<Value> {
    fn from(v: pb::Value) -> Self {
        use pb::value::Value as V;
        Some(match v.value? {
            V::Int64Value(v) => Value::Int64(v),
            V::Uint64Value(v) => Value::Uint64(v),
            V::StringValue(v) => Value::String(v),
            V::Float64Value(v) => Value::Float64(v),
            V::BoolValue(v) => Value::Boolean(v),
        })
    }
}

impl From<&Value> for pb::Value {
    fn from(v: &Value) -> Self {
        use pb::value::Value as V;
        pb::Value {
            value: Some(match v.clone() {
                Value::Int64(v) => V::Int64Value(v),
                Value::Uint64(v) => V::Uint64Value(v),
                Value::String(v) => V::StringValue(v),
                Value::Float64(v) => V::Float64Value(v),
                Value::Boolean(v) => V::BoolValue(v),
            }),
        }
    }
}

impl From<Option<pb::PartitionRule>> for PartitionRule {
    fn from(rule: Option<pb::PartitionRule>) -> Self {
        use pb::partition_rule::Rule;
        match rule.and_then(|r| r.rule) {
            None => PartitionRule::Single,
            Some(Rule::Range(range)) => PartitionRule::Range {
                column: range.column,
                partitions: range
                    .partitions
                    .into_iter()
                    .map(|b| RangeBound {
                        lower: b.lower.and_then(Into::into),
                        upper: b.upper.and_then(Into::into),
                    })
                    .collect(),
            },
            Some(Rule::Hash(hash)) => PartitionRule::Hash {
                columns: hash.columns,
                partitions: hash.partitions,
            },
        }
    }
}

impl From<&PartitionRule> for Option<pb::PartitionRule> {
    fn from(rule: &PartitionRule) -> Self {
        use pb::partition_rule::Rule;
        let rule = match rule {
            PartitionRule::Single => return None,
            PartitionRule::Range { column, partitions } => Rule::Range(pb::RangePartitioning {
                column: column.clone(),
                partitions: partitions
                    .iter()
                    .map(|b| pb::RangeBound {
                        lower: b.lower.as_ref().map(Into::into),
                        upper: b.upper.as_ref().map(Into::into),
                    })
                    .collect(),
            }),
            PartitionRule::Hash {
                columns,
                partitions,
            } => Rule::Hash(pb::HashPartitioning {
                columns: columns.clone(),
                partitions: *partitions,
            }),
        };
        Some(pb::PartitionRule { rule: Some(rule) })
    }
}

/// The protobuf route of a table, as the Router serves it.
pub fn route_to_pb(info: &TableInfo, route: &TableRoute) -> pb::TableRoute {
    pb::TableRoute {
        table_name: Some((&info.name).into()),
        table_id: info.id,
        schema: Some((&info.schema).into()),
        partition_rule: (&info.partition).into(),
        version: route.version,
        regions: route
            .regions
            .iter()
            .map(|r| pb::RegionRoute {
                region_id: r.region_id,
                region_number: r.region_number,
                mutate_endpoint: Some((&r.leader).into()),
                select_endpoints: std::iter::once(&r.leader)
                    .chain(&r.followers)
                    .map(Into::into)
                    .collect(),
            })
            .collect(),
    }
}

/// The domain route and table info of a protobuf route (the client side).
pub fn route_from_pb(route: pb::TableRoute) -> Result<(TableInfo, TableRoute), String> {
    let name: TableName = route.table_name.ok_or("route has no table name")?.into();
    let schema = route.schema.ok_or("route has no schema")?.try_into()?;
    let regions = route
        .regions
        .into_iter()
        .map(|r| {
            let leader: Peer = r
                .mutate_endpoint
                .ok_or_else(|| format!("region {} has no mutate endpoint", r.region_id))?
                .into();
            let followers = r
                .select_endpoints
                .into_iter()
                .map(Peer::from)
                .filter(|p| *p != leader)
                .collect();
            Ok(RegionRoute {
                region_id: r.region_id,
                region_number: r.region_number,
                leader,
                followers,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let info = TableInfo {
        id: route.table_id,
        name,
        schema,
        partition: route.partition_rule.into(),
        replicas: 0,
        created_at_unix_ms: 0,
    };
    Ok((
        info,
        TableRoute {
            table_id: route.table_id,
            version: route.version,
            regions,
        },
    ))
}
