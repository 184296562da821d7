//! The table scenarios, benchmarks and examples drive: hosts writing timestamps, hash
//! partitioned by host.

use crate::catalog::model::{TableName, Value};
use crate::catalog::partition::Row;
use crate::client::header;
use crate::proto::v1 as pb;

/// CREATE TABLE `table` (host STRING, ts TIMESTAMP, PRIMARY KEY host, TIME INDEX ts) with
/// `partitions` hash partitions by host and `replicas` copies of each region.
pub fn host_table(
    cluster_id: u64,
    table: &TableName,
    partitions: u32,
    replicas: u32,
) -> pb::CreateTableRequest {
    let column = |n: &str, t: pb::ColumnType| pb::ColumnDef {
        name: n.into(),
        data_type: t as i32,
        nullable: false,
    };
    pb::CreateTableRequest {
        header: header(cluster_id, 0),
        table_name: Some(table.into()),
        schema: Some(pb::TableSchema {
            columns: vec![
                column("host", pb::ColumnType::String),
                column("ts", pb::ColumnType::Timestamp),
            ],
            time_index: "ts".into(),
            primary_key: vec!["host".into()],
            options: Default::default(),
        }),
        partition_rule: Some(pb::PartitionRule {
            rule: Some(pb::partition_rule::Rule::Hash(pb::HashPartitioning {
                columns: vec!["host".into()],
                partitions,
            })),
        }),
        if_not_exists: false,
        replicas,
    }
}

/// `count` rows of [`host_table`], one per host (`h0`, `h1`, ...).
pub fn host_rows(table: &TableName, count: usize) -> Vec<(TableName, Row)> {
    (0..count)
        .map(|i| {
            let row = Row::from([
                ("host".to_string(), Value::String(format!("h{i}"))),
                ("ts".to_string(), Value::Int64(i as i64)),
            ]);
            (table.clone(), row)
        })
        .collect()
}
