//! Every class of untrusted input metasrv decodes, one entry point each, for the fuzzer
//! (`fuzz/`, `tools/fuzz`) and for the regression test that replays its corpus
//! (`tests/it/fuzz_inputs.rs`). Each entry takes raw bytes and runs the very code metasrv runs
//! on them (not a copy), then asserts what must hold of any input it accepts: an assertion
//! that fails is a bug the fuzzer found, like a panic inside.
//!
//! - `heartbeat`: a datanode's HeartbeatRequest, as the stream decodes it, through
//!   `stats::validate`.
//! - `create_table`: a CreateTableRequest through `CreateTable::from_pb` and
//!   `partition::validate_table`; an accepted table is built as CreateTable builds it, stored as
//!   it is stored, and must load back whole (nothing quarantined) and route the same way.
//! - `partition_rule`: rows against an accepted table's partition rule
//!   (`partition::region_number_of`, which frontends use to split writes).
//! - `catalog_records`: any set of catalog records through the catalog load
//!   (`load::CatalogAssembler`): whatever is served must be consistent.
//! - `kv_values`: each JSON record metasrv stores, decoded as a new leader decodes it; what
//!   decodes must encode and decode back to itself.

use std::collections::HashSet;

use prost::Message;

use crate::catalog::load::CatalogAssembler;
use crate::catalog::manager::{keys, new_route, table_records, CreateTable, TableEntry};
use crate::catalog::model::{
    check_route, route_from_pb, route_to_pb, ColumnType, PartitionRule, Peer, TableInfo,
    TableRoute, Value,
};
use crate::catalog::partition::{region_number_of, validate_table, Row};
use crate::election::MemberInfo;
use crate::procedure::Procedure;
use crate::proto::v1 as pb;
use crate::selector::Placement;
use crate::stats::{self, MAX_REGIONS_PER_HEARTBEAT};
use crate::store::KeyValue;

/// The cluster id heartbeats must carry to be accepted here.
pub const CLUSTER_ID: u64 = 1;
/// The region limit of a table (the default `max_regions_per_table`).
pub const MAX_REGIONS: u32 = 1024;

/// The fuzz targets, by name (each has `fuzz/fuzz_targets/<name>.rs` and a corpus directory).
pub const TARGETS: [&str; 5] = [
    "heartbeat",
    "create_table",
    "partition_rule",
    "catalog_records",
    "kv_values",
];

/// Runs the entry point of `target` on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "heartbeat" => heartbeat(data),
        "create_table" => create_table(data),
        "partition_rule" => partition_rule(data),
        "catalog_records" => catalog_records(data),
        "kv_values" => kv_values(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

/// A heartbeat request: either refused with a reason or converted with every count bounded.
pub fn heartbeat(data: &[u8]) {
    let Ok(request) = pb::HeartbeatRequest::decode(data) else {
        return;
    };
    match stats::validate(request, CLUSTER_ID) {
        Err(reason) => assert!(!reason.is_empty(), "a refusal must say why"),
        Ok(heartbeat) => {
            assert_ne!(heartbeat.node_id, 0);
            if let Some(report) = heartbeat.report {
                assert!(report.regions.len() <= MAX_REGIONS_PER_HEARTBEAT);
                let mut seen = HashSet::new();
                for region in &report.regions {
                    assert_ne!(region.region_id, 0);
                    assert!(seen.insert(region.region_id), "a region reported twice");
                }
                assert!(report.node.cpu_usage.is_finite() && report.node.load.is_finite());
            }
        }
    }
}

/// The table CreateTable would store for `request`, or `None` when it refuses the request.
fn accepted_table(request: pb::CreateTableRequest, table_id: u64) -> Option<(TableEntry, u32)> {
    let request = CreateTable::from_pb(request).ok()?;
    let regions = match validate_table(
        &request.name,
        &request.schema,
        &request.partition,
        MAX_REGIONS,
    ) {
        Ok(regions) => regions,
        Err(reason) => {
            assert!(!reason.is_empty(), "a refusal must say why");
            return None;
        }
    };
    assert!((1..=MAX_REGIONS).contains(&regions));
    let replicas = request.replicas.clamp(1, 3);
    let node = |id: u64| Peer {
        id,
        addr: format!("10.0.0.{id}:4001"),
    };
    let placements = (0..u64::from(regions))
        .map(|n| Placement {
            leader: node(1 + n % 3),
            followers: (1..u64::from(replicas))
                .map(|k| node(1 + (n + k) % 3))
                .collect(),
        })
        .collect();
    let info = TableInfo {
        id: table_id,
        name: request.name,
        schema: request.schema,
        partition: request.partition,
        replicas,
        created_at_unix_ms: 0,
    };
    let route = new_route(table_id, placements);
    let entry = TableEntry {
        info,
        route,
        route_revision: 0,
    };
    Some((entry, regions))
}

/// A CreateTable request: refused with a reason, or stored so that it loads back whole.
pub fn create_table(data: &[u8]) {
    let Ok(request) = pb::CreateTableRequest::decode(data) else {
        return;
    };
    let Some((entry, _)) = accepted_table(request, 1024) else {
        return;
    };
    check_route(&entry.info, &entry.route).expect("a route CreateTable builds is consistent");

    // Stored as CreateTable commits it, loaded as a new leader loads it.
    let mut assembler = CatalogAssembler::default();
    assembler.catalog(KeyValue::new(
        keys::catalog(&entry.info.name.catalog),
        b"{}",
    ));
    let schema_key = keys::schema(&entry.info.name.catalog, &entry.info.name.schema);
    assembler.schema(KeyValue::new(schema_key, b"{}"));
    let [name, info, route] = table_records(&entry).expect("a table's records encode");
    assembler.name(name);
    assembler.info(info);
    assembler.route(route);
    let loaded = assembler.finish();
    assert_eq!(
        loaded.quarantined,
        vec![],
        "a table CreateTable accepts must load back"
    );
    let served: Vec<_> = loaded.cache.served_tables().collect();
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].1, &entry, "the table loads back as it was stored");

    // What frontends receive describes the same table.
    let (client_info, client_route) =
        route_from_pb(route_to_pb(&entry.info, &entry.route)).expect("a served route decodes");
    assert_eq!(client_info.name, entry.info.name);
    assert_eq!(client_info.schema, entry.info.schema);
    assert_eq!(client_info.partition, entry.info.partition);
    assert_eq!(client_route, entry.route);
}

/// Reads a row for `info`'s columns from `data`: per column a tag (absent, a value of the
/// column's type, or a value of another type) and the value's bytes.
fn read_row(info: &TableInfo, data: &mut &[u8]) -> Option<Row> {
    let mut row = Row::new();
    for column in &info.schema.columns {
        let tag = take(data, 1)?[0];
        let data_type = match tag % 3 {
            0 => continue,
            1 => column.data_type,
            _ => [
                ColumnType::String,
                ColumnType::Int64,
                ColumnType::Uint64,
                ColumnType::Float64,
                ColumnType::Boolean,
            ][usize::from(tag / 3) % 5],
        };
        let value = match data_type {
            ColumnType::Int64 | ColumnType::Timestamp => {
                Value::Int64(i64::from_be_bytes(take(data, 8)?.try_into().ok()?))
            }
            ColumnType::Uint64 => {
                Value::Uint64(u64::from_be_bytes(take(data, 8)?.try_into().ok()?))
            }
            ColumnType::Float64 => {
                Value::Float64(f64::from_be_bytes(take(data, 8)?.try_into().ok()?))
            }
            ColumnType::Boolean => Value::Boolean(take(data, 1)?[0] & 1 == 1),
            ColumnType::String => {
                let len = usize::from(take(data, 1)?[0]);
                Value::String(String::from_utf8_lossy(take(data, len)?).into_owned())
            }
        };
        row.insert(column.name.clone(), value);
    }
    Some(row)
}

/// Rows against an accepted table: each maps to one of its regions, the one whose range holds
/// it, or is refused with a reason.
pub fn partition_rule(data: &[u8]) {
    let mut data = data;
    let Some(len) = take(&mut data, 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return;
    };
    let Some(definition) = take(&mut data, len) else {
        return;
    };
    let Ok(request) = pb::CreateTableRequest::decode(definition) else {
        return;
    };
    let Some((entry, regions)) = accepted_table(request, 7) else {
        return;
    };
    let rule = &entry.info.partition;
    while let Some(row) = read_row(&entry.info, &mut data) {
        match region_number_of(rule, &row) {
            Err(reason) => assert!(!reason.is_empty(), "a refusal must say why"),
            Ok(number) => {
                assert!(number < regions, "region {number} of {regions}");
                assert_eq!(
                    region_number_of(rule, &row),
                    Ok(number),
                    "not deterministic"
                );
                assert!(
                    entry
                        .route
                        .regions
                        .iter()
                        .any(|r| r.region_number == number),
                    "the route has no region {number}"
                );
                if let PartitionRule::Range { column, partitions } = rule {
                    let value = &row[column];
                    let bound = &partitions[number as usize];
                    if let Some(lower) = &bound.lower {
                        assert_ne!(lower.compare(value), Some(std::cmp::Ordering::Greater));
                    }
                    if let Some(upper) = &bound.upper {
                        assert_eq!(upper.compare(value), Some(std::cmp::Ordering::Greater));
                    }
                }
            }
        }
    }
}

/// Catalog records as a leader finds them in the KV: `[kind][key len][key][value len: 2][value]`
/// repeated, the key after its kind's prefix. What is served must be consistent.
pub fn catalog_records(data: &[u8]) {
    let mut data = data;
    let mut assembler = CatalogAssembler::default();
    let mut records = 0usize;
    while let Some(kind) = take(&mut data, 1).map(|b| b[0] % 5) {
        let Some(key_len) = take(&mut data, 1).map(|b| usize::from(b[0])) else {
            break;
        };
        let Some(key) = take(&mut data, key_len) else {
            break;
        };
        let Some(value_len) =
            take(&mut data, 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            break;
        };
        let Some(value) = take(&mut data, value_len) else {
            break;
        };
        let prefix = [
            keys::CATALOG_PREFIX,
            keys::SCHEMA_PREFIX,
            keys::TABLE_PREFIX,
            keys::TABLE_ROUTE_PREFIX,
            keys::TABLE_NAME_PREFIX,
        ][usize::from(kind)];
        let kv = KeyValue::new([prefix.as_bytes(), key].concat(), value);
        match kind {
            0 => assembler.catalog(kv),
            1 => assembler.schema(kv),
            2 => assembler.info(kv),
            3 => assembler.route(kv),
            _ => assembler.name(kv),
        }
        records += 1;
    }
    let loaded = assembler.finish();
    let mut regions = HashSet::new();
    let mut served = 0;
    for (name, entry) in loaded.cache.served_tables() {
        served += 1;
        assert_eq!(name, &entry.info.name);
        assert_eq!(loaded.cache.name_of(entry.info.id), Some(name));
        check_route(&entry.info, &entry.route).expect("a served route is consistent");
        for region in &entry.route.regions {
            assert!(
                regions.insert(region.region_id),
                "two tables share a region"
            );
        }
    }
    assert!(served + loaded.quarantined.len() <= records);
}

/// A stored JSON record of each kind metasrv reads back: `[kind][value]`.
pub fn kv_values(data: &[u8]) {
    let Some((kind, value)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => round_trip::<TableInfo>(value),
        1 => round_trip::<TableRoute>(value),
        2 => round_trip::<Procedure>(value),
        _ => round_trip::<MemberInfo>(value),
    }
}

fn round_trip<T>(value: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(decoded) = serde_json::from_slice::<T>(value) else {
        return;
    };
    let encoded = serde_json::to_vec(&decoded).expect("a decoded record encodes");
    let again: T = serde_json::from_slice(&encoded).expect("an encoded record decodes");
    assert_eq!(again, decoded, "a record must read back as it was written");
}

fn take<'a>(data: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    if data.len() < len {
        return None;
    }
    let (head, rest) = data.split_at(len);
    *data = rest;
    Some(head)
}

/// The committed seed corpus (`fuzz/corpus/<target>/<name>`): valid inputs of every shape, from
/// which the fuzzer mutates. `tests/it/fuzz_inputs.rs` checks the committed files match.
pub fn seed_corpus() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (name, request) in seed_heartbeats() {
        seeds.push(("heartbeat", name.to_owned(), request.encode_to_vec()));
    }
    for (name, request) in seed_tables() {
        let encoded = request.encode_to_vec();
        seeds.push(("create_table", name.to_owned(), encoded.clone()));
        // The same table with rows: each column present with its type, absent, and mistyped.
        let mut with_rows = (encoded.len() as u16).to_be_bytes().to_vec();
        with_rows.extend_from_slice(&encoded);
        if let Some((entry, _)) = accepted_table(request, 7) {
            for (i, tag) in [1u8, 1, 0, 2].into_iter().enumerate() {
                for column in &entry.info.schema.columns {
                    with_rows.push(tag);
                    let data_type = if tag == 2 {
                        ColumnType::String
                    } else {
                        column.data_type
                    };
                    match (tag, data_type) {
                        (0, _) => {}
                        (_, ColumnType::String) => {
                            let text = format!("host-{i}");
                            with_rows.push(text.len() as u8);
                            with_rows.extend_from_slice(text.as_bytes());
                        }
                        (_, ColumnType::Boolean) => with_rows.push(1),
                        _ => with_rows.extend_from_slice(&(i as i64 * 1000).to_be_bytes()),
                    }
                }
            }
            seeds.push(("partition_rule", name.to_owned(), with_rows));
            let mut records = Vec::new();
            let record = |kind: u8, prefix: &str, key: &[u8], value: &[u8]| {
                let mut out = vec![kind];
                let key = &key[prefix.len()..];
                out.push(key.len() as u8);
                out.extend_from_slice(key);
                out.extend_from_slice(&(value.len() as u16).to_be_bytes());
                out.extend_from_slice(value);
                out
            };
            let name_key = keys::catalog(&entry.info.name.catalog);
            records.extend(record(0, keys::CATALOG_PREFIX, &name_key, b"{}"));
            let schema_key = keys::schema(&entry.info.name.catalog, &entry.info.name.schema);
            records.extend(record(1, keys::SCHEMA_PREFIX, &schema_key, b"{}"));
            let [name_kv, info_kv, route_kv] = table_records(&entry).expect("seed tables encode");
            records.extend(record(2, keys::TABLE_PREFIX, &info_kv.key, &info_kv.value));
            records.extend(record(
                3,
                keys::TABLE_ROUTE_PREFIX,
                &route_kv.key,
                &route_kv.value,
            ));
            records.extend(record(
                4,
                keys::TABLE_NAME_PREFIX,
                &name_kv.key,
                &name_kv.value,
            ));
            seeds.push(("catalog_records", name.to_owned(), records));
            seeds.push((
                "kv_values",
                format!("info_{name}"),
                [&[0u8][..], &info_kv.value].concat(),
            ));
            seeds.push((
                "kv_values",
                format!("route_{name}"),
                [&[1u8][..], &route_kv.value].concat(),
            ));
        }
    }
    // Fixed id and times: the committed seed must not change from run to run.
    let mut procedure = Procedure::region_migration((7 << 32) | 1, 1, 2, false);
    procedure.id = "00000000-0000-4000-8000-000000000001".into();
    procedure.step("opened the candidate as follower");
    (procedure.started_at_unix_ms, procedure.updated_at_unix_ms) = (1_000, 2_000);
    let procedure = serde_json::to_vec(&procedure).expect("a procedure encodes");
    seeds.push((
        "kv_values",
        "procedure".into(),
        [&[2u8][..], &procedure].concat(),
    ));
    let member = serde_json::to_vec(&MemberInfo {
        id: 1,
        name: "metasrv-1".into(),
        grpc_addr: "127.0.0.1:3002".into(),
        http_addr: "127.0.0.1:4000".into(),
    })
    .expect("a member encodes");
    seeds.push(("kv_values", "member".into(), [&[3u8][..], &member].concat()));
    seeds
}

fn seed_heartbeats() -> Vec<(&'static str, pb::HeartbeatRequest)> {
    let base = pb::HeartbeatRequest {
        header: Some(pb::RequestHeader {
            cluster_id: CLUSTER_ID,
            member_id: 3,
        }),
        peer: Some(pb::Peer {
            id: 3,
            addr: "10.0.0.3:4001".into(),
        }),
        instance_id: "5b1c6a0e-93c2-4d6f-8d0e-1f2a3b4c5d6e".into(),
        ..Default::default()
    };
    let full = pb::HeartbeatRequest {
        report_interval: Some(pb::TimeInterval {
            start_timestamp_millis: 1_000,
            end_timestamp_millis: 2_000,
        }),
        node_stat: Some(pb::NodeStat {
            rcus: 10,
            wcus: 20,
            table_num: 1,
            region_num: 2,
            cpu_usage: 0.5,
            load: 1.25,
            read_io_rate: 100.0,
            write_io_rate: 200.0,
            ..Default::default()
        }),
        region_stats: (1..=2)
            .map(|n| pb::RegionStat {
                region_id: (7 << 32) | n,
                table_name: Some(Box::new(pb::TableName {
                    catalog_name: "greptime".into(),
                    schema_name: "public".into(),
                    table_name: "cpu".into(),
                })),
                rcus: 5,
                wcus: 10,
                approximate_size: 1 << 20,
                approximate_rows: 1000,
                role: if n == 1 {
                    pb::RegionRole::Leader
                } else {
                    pb::RegionRole::Follower
                } as i32,
                ..Default::default()
            })
            .collect(),
        replica_stats: vec![pb::ReplicaStat {
            peer: Some(pb::Peer {
                id: 4,
                addr: "10.0.0.4:4001".into(),
            }),
            in_sync: true,
            ..Default::default()
        }],
        instruction_results: vec![pb::InstructionResult {
            instruction_id: 9,
            success: false,
            error: "region not found".into(),
        }],
        ..base.clone()
    };
    vec![("results_only", base), ("full_report", full)]
}

fn seed_tables() -> Vec<(&'static str, pb::CreateTableRequest)> {
    let column = |name: &str, data_type: pb::ColumnType, nullable| pb::ColumnDef {
        name: name.into(),
        data_type: data_type as i32,
        nullable,
    };
    let table = |name: &str, rule: Option<pb::PartitionRule>, replicas| pb::CreateTableRequest {
        header: None,
        table_name: Some(pb::TableName {
            catalog_name: "greptime".into(),
            schema_name: "public".into(),
            table_name: name.into(),
        }),
        schema: Some(pb::TableSchema {
            columns: vec![
                column("host", pb::ColumnType::String, false),
                column("ts", pb::ColumnType::Timestamp, false),
                column("usage", pb::ColumnType::Float64, true),
                column("cores", pb::ColumnType::Int64, true),
                column("up", pb::ColumnType::Boolean, true),
            ],
            time_index: "ts".into(),
            primary_key: vec!["host".into()],
            options: [("ttl".to_owned(), "7d".to_owned())].into_iter().collect(),
        }),
        partition_rule: rule,
        if_not_exists: false,
        replicas,
    };
    let string = |s: &str| pb::Value {
        value: Some(pb::value::Value::StringValue(s.into())),
    };
    let range = pb::PartitionRule {
        rule: Some(pb::partition_rule::Rule::Range(pb::RangePartitioning {
            column: "host".into(),
            partitions: vec![
                pb::RangeBound {
                    lower: None,
                    upper: Some(string("host-1")),
                },
                pb::RangeBound {
                    lower: Some(string("host-1")),
                    upper: Some(string("host-3")),
                },
                pb::RangeBound {
                    lower: Some(string("host-3")),
                    upper: None,
                },
            ],
        })),
    };
    let hash = pb::PartitionRule {
        rule: Some(pb::partition_rule::Rule::Hash(pb::HashPartitioning {
            columns: vec!["host".into(), "cores".into()],
            partitions: 8,
        })),
    };
    vec![
        ("single", table("cpu", None, 1)),
        ("range", table("disk", Some(range), 3)),
        ("hash", table("mem", Some(hash), 2)),
    ]
}
