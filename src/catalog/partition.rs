//! Validation of a table definition and the partition rule's mapping of rows to regions. Pure;
//! shared by metasrv (at CreateTable) and the frontend client (to split writes), so both always
//! agree on which region a row belongs to.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};

use super::model::{validate_name, ColumnType, PartitionRule, TableName, TableSchema, Value};

/// A row: column name to value (absent columns are null).
pub type Row = BTreeMap<String, Value>;

/// Checks a table definition; returns the number of regions its partition rule gives.
pub fn validate_table(
    name: &TableName,
    schema: &TableSchema,
    rule: &PartitionRule,
    max_regions: u32,
) -> Result<u32, String> {
    validate_name("catalog", &name.catalog)?;
    validate_name("schema", &name.schema)?;
    validate_name("table", &name.table)?;
    if schema.columns.is_empty() {
        return Err("the table has no columns".into());
    }
    let mut seen = HashSet::new();
    for column in &schema.columns {
        validate_name("column", &column.name)?;
        if !seen.insert(column.name.as_str()) {
            return Err(format!("column {:?} is defined twice", column.name));
        }
    }
    if schema.time_index.is_empty() {
        return Err(
            "the table has no time index: set schema.time_index to a TIMESTAMP column".into(),
        );
    }
    match schema.column(&schema.time_index) {
        None => {
            return Err(format!(
                "time index {:?} is not a column",
                schema.time_index
            ))
        }
        Some(c) if c.data_type != ColumnType::Timestamp => {
            return Err(format!(
                "time index {:?} must be a TIMESTAMP column, not {:?}",
                c.name, c.data_type
            ))
        }
        Some(c) if c.nullable => {
            return Err(format!("time index {:?} must not be nullable", c.name))
        }
        Some(_) => {}
    }
    let mut keys = HashSet::new();
    for key in &schema.primary_key {
        if schema.column(key).is_none() {
            return Err(format!("primary key column {key:?} is not a column"));
        }
        if !keys.insert(key) {
            return Err(format!("primary key column {key:?} is listed twice"));
        }
    }
    let regions = match rule {
        PartitionRule::Single => 1,
        PartitionRule::Hash {
            columns,
            partitions,
        } => {
            if columns.is_empty() {
                return Err("hash partitioning needs at least one column".into());
            }
            let mut seen = HashSet::new();
            for column in columns {
                if schema.column(column).is_none() {
                    return Err(format!("partition column {column:?} is not a column"));
                }
                if !seen.insert(column) {
                    return Err(format!("partition column {column:?} is listed twice"));
                }
            }
            *partitions
        }
        PartitionRule::Range { column, partitions } => {
            validate_ranges(schema, column, partitions)?;
            u32::try_from(partitions.len()).unwrap_or(u32::MAX)
        }
    };
    if regions == 0 {
        return Err("the partition rule gives zero regions".into());
    }
    if regions > max_regions {
        return Err(format!(
            "the partition rule gives {regions} regions, over the limit of {max_regions} (max_regions_per_table)"
        ));
    }
    Ok(regions)
}

fn validate_ranges(
    schema: &TableSchema,
    column: &str,
    partitions: &[super::model::RangeBound],
) -> Result<(), String> {
    let def = schema
        .column(column)
        .ok_or_else(|| format!("partition column {column:?} is not a column"))?;
    if matches!(def.data_type, ColumnType::Float64 | ColumnType::Boolean) {
        return Err(format!(
            "range partitioning needs an integer, timestamp or string column; {column:?} is {:?}",
            def.data_type
        ));
    }
    let Some(last) = partitions.len().checked_sub(1) else {
        return Err("the partition rule gives zero regions".into());
    };
    for (i, bound) in partitions.iter().enumerate() {
        for value in [&bound.lower, &bound.upper].into_iter().flatten() {
            if !value.fits(def.data_type) {
                return Err(format!(
                    "partition {i}: bound {value:?} does not fit column {column:?} of type {:?}",
                    def.data_type
                ));
            }
        }
        if i == 0 && bound.lower.is_some() {
            return Err(
                "the partitions do not cover the key space: partition 0 must have no lower bound"
                    .into(),
            );
        }
        if i == last && bound.upper.is_some() {
            return Err(format!(
                "the partitions do not cover the key space: partition {last} must have no upper bound"
            ));
        }
        if i > 0 && bound.lower.is_none() {
            return Err(format!(
                "partitions {} and {i} overlap: partition {i} has no lower bound",
                i - 1
            ));
        }
        if i < last && bound.upper.is_none() {
            return Err(format!(
                "partitions {i} and {} overlap: partition {i} has no upper bound",
                i + 1
            ));
        }
        if let (Some(lower), Some(upper)) = (&bound.lower, &bound.upper) {
            if lower.compare(upper) != Some(Ordering::Less) {
                return Err(format!(
                    "partition {i} is empty: lower {lower:?} is not below upper {upper:?}"
                ));
            }
        }
        if i > 0 {
            let (Some(previous_upper), Some(lower)) = (&partitions[i - 1].upper, &bound.lower)
            else {
                continue;
            };
            match previous_upper.compare(lower) {
                Some(Ordering::Equal) => {}
                Some(Ordering::Greater) => {
                    return Err(format!("partitions {} and {i} overlap", i - 1))
                }
                _ => {
                    return Err(format!(
                        "the partitions do not cover the key space: a gap between partitions {} and {i}",
                        i - 1
                    ))
                }
            }
        }
    }
    Ok(())
}

/// 64-bit FNV-1a: small, stable across platforms and releases, good enough to spread keys.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The region number (index in the rule) that `row` belongs to.
pub fn region_number_of(rule: &PartitionRule, row: &Row) -> Result<u32, String> {
    match rule {
        PartitionRule::Single => Ok(0),
        PartitionRule::Hash {
            columns,
            partitions,
        } => {
            let mut key = Vec::with_capacity(32);
            for column in columns {
                match row.get(column) {
                    Some(value) => value.encode_into(&mut key),
                    None => key.push(0),
                }
            }
            Ok((fnv1a(&key) % u64::from((*partitions).max(1))) as u32)
        }
        PartitionRule::Range { column, partitions } => {
            let value = row
                .get(column)
                .ok_or_else(|| format!("the row has no value for partition column {column:?}"))?;
            // The partitions are sorted and contiguous: the first whose upper bound is above the
            // value holds it.
            let index = partitions.partition_point(|bound| match &bound.upper {
                Some(upper) => upper.compare(value) != Some(Ordering::Greater),
                None => false,
            });
            if index >= partitions.len() {
                return Err(format!("no partition holds {value:?}"));
            }
            if let Some(lower) = &partitions[index].lower {
                if lower.compare(value).is_none() {
                    return Err(format!(
                        "value {value:?} of column {column:?} has the wrong type"
                    ));
                }
            }
            Ok(index as u32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{ColumnDef, RangeBound};
    use super::*;

    fn schema() -> TableSchema {
        TableSchema {
            columns: vec![
                ColumnDef {
                    name: "host".into(),
                    data_type: ColumnType::String,
                    nullable: true,
                },
                ColumnDef {
                    name: "ts".into(),
                    data_type: ColumnType::Timestamp,
                    nullable: false,
                },
                ColumnDef {
                    name: "cpu".into(),
                    data_type: ColumnType::Float64,
                    nullable: true,
                },
            ],
            time_index: "ts".into(),
            primary_key: vec!["host".into()],
            options: Default::default(),
        }
    }

    fn name() -> TableName {
        TableName::new("greptime", "public", "cpu")
    }

    fn s(v: &str) -> Option<Value> {
        Some(Value::String(v.into()))
    }

    fn ranges(bounds: &[(Option<&str>, Option<&str>)]) -> PartitionRule {
        PartitionRule::Range {
            column: "host".into(),
            partitions: bounds
                .iter()
                .map(|(l, u)| RangeBound {
                    lower: l.and_then(s),
                    upper: u.and_then(s),
                })
                .collect(),
        }
    }

    #[test]
    fn valid_rules_give_their_region_count() {
        assert_eq!(
            validate_table(&name(), &schema(), &PartitionRule::Single, 16),
            Ok(1)
        );
        let hash = PartitionRule::Hash {
            columns: vec!["host".into()],
            partitions: 8,
        };
        assert_eq!(validate_table(&name(), &schema(), &hash, 16), Ok(8));
        let range = ranges(&[(None, Some("h")), (Some("h"), Some("p")), (Some("p"), None)]);
        assert_eq!(validate_table(&name(), &schema(), &range, 16), Ok(3));
    }

    #[test]
    fn invalid_definitions_are_refused_with_the_reason() {
        let check = |schema: TableSchema, rule: PartitionRule, needle: &str| {
            let err = validate_table(&name(), &schema, &rule, 16).expect_err(needle);
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        };
        let mut no_ti = schema();
        no_ti.time_index.clear();
        check(no_ti, PartitionRule::Single, "no time index");
        let mut wrong_ti = schema();
        wrong_ti.time_index = "cpu".into();
        check(wrong_ti, PartitionRule::Single, "TIMESTAMP");
        let mut bad_col = schema();
        bad_col.columns[0].name = "1host".into();
        check(bad_col, PartitionRule::Single, "may only use");
        let mut dup = schema();
        dup.columns.push(dup.columns[0].clone());
        check(dup, PartitionRule::Single, "twice");
        check(
            schema(),
            PartitionRule::Hash {
                columns: vec!["host".into()],
                partitions: 0,
            },
            "zero regions",
        );
        check(
            schema(),
            PartitionRule::Hash {
                columns: vec!["host".into()],
                partitions: 17,
            },
            "over the limit",
        );
        check(schema(), ranges(&[]), "zero regions");
        check(
            schema(),
            ranges(&[(Some("a"), Some("h")), (Some("h"), None)]),
            "cover the key space",
        );
        check(
            schema(),
            ranges(&[(None, Some("h")), (Some("h"), Some("p"))]),
            "cover the key space",
        );
        check(
            schema(),
            ranges(&[(None, Some("p")), (Some("h"), None)]),
            "overlap",
        );
        check(
            schema(),
            ranges(&[(None, Some("h")), (Some("p"), None)]),
            "gap",
        );
        check(
            schema(),
            PartitionRule::Range {
                column: "cpu".into(),
                partitions: vec![RangeBound {
                    lower: None,
                    upper: None,
                }],
            },
            "range partitioning needs",
        );
        check(
            schema(),
            PartitionRule::Range {
                column: "host".into(),
                partitions: vec![
                    RangeBound {
                        lower: None,
                        upper: Some(Value::Int64(5)),
                    },
                    RangeBound {
                        lower: Some(Value::Int64(5)),
                        upper: None,
                    },
                ],
            },
            "does not fit",
        );
        let bad_table = TableName::new("greptime", "public", "");
        let err =
            validate_table(&bad_table, &schema(), &PartitionRule::Single, 16).expect_err("empty");
        assert!(err.contains("table name is empty"), "{err}");
    }

    #[test]
    fn rows_map_to_their_range_partition() {
        let rule = ranges(&[(None, Some("h")), (Some("h"), Some("p")), (Some("p"), None)]);
        let row = |host: &str| Row::from([("host".to_string(), Value::String(host.into()))]);
        assert_eq!(region_number_of(&rule, &row("a")), Ok(0));
        assert_eq!(region_number_of(&rule, &row("h")), Ok(1));
        assert_eq!(region_number_of(&rule, &row("o")), Ok(1));
        assert_eq!(region_number_of(&rule, &row("p")), Ok(2));
        assert_eq!(region_number_of(&rule, &row("zzz")), Ok(2));
        assert!(region_number_of(&rule, &Row::new()).is_err());
    }

    #[test]
    fn hash_partitioning_is_stable_and_spreads() {
        let rule = PartitionRule::Hash {
            columns: vec!["host".into()],
            partitions: 8,
        };
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            let row = Row::from([("host".to_string(), Value::String(format!("host-{i}")))]);
            let region = region_number_of(&rule, &row).expect("hash");
            counts[region as usize] += 1;
            assert_eq!(region_number_of(&rule, &row), Ok(region), "stable");
        }
        assert!(counts.iter().all(|&c| c > 700), "spread: {counts:?}");
        // A fixed value always lands in the same region, across releases.
        let row = Row::from([("host".to_string(), Value::String("host-1".into()))]);
        assert_eq!(
            region_number_of(&rule, &row),
            region_number_of(&rule, &row.clone())
        );
    }
}
