//! The embedded backend: one redb file, for a single machine with no setup.
//!
//! redb commits with `Durability::Immediate`, so a write is fsynced before it is acknowledged and
//! survives `kill -9` and power loss. redb serialises write transactions, which makes every batch
//! and transaction atomic and isolated. Calls run on tokio's blocking pool so that disk I/O never
//! stalls the async workers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};

use super::{
    validate_batch_keys, validate_key, validate_txn, Compare, CompareAndPutResponse, KeyRange,
    KeyValue, KvBackend, RangeEnd, RangeRequest, RangeResponse, StoreError, StoreResult, Txn,
    TxnOp, TxnOpResult, TxnResponse,
};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

/// The file name inside the data directory.
pub const FILE_NAME: &str = "metasrv.redb";

pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
}

fn storage_error(context: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(format!("{context}: {error}"))
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `data_dir`, creating the directory if needed.
    pub fn open(data_dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            storage_error(&format!("cannot create data dir {}", data_dir.display()), e)
        })?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path)
            .map_err(|e| storage_error(&format!("cannot open {}", path.display()), e))?;
        // Create the table up front so that readers never meet a missing table.
        let txn = db
            .begin_write()
            .map_err(|e| storage_error("begin write", e))?;
        txn.open_table(KV)
            .map_err(|e| storage_error("open table", e))?;
        txn.commit().map_err(|e| storage_error("commit", e))?;
        Ok(Self {
            db: Arc::new(db),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one write transaction on the blocking pool; commits only if `f` succeeds, so a
    /// failed batch writes nothing.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Table<'_, &'static [u8], &'static [u8]>) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db
                .begin_write()
                .map_err(|e| storage_error("begin write", e))?;
            let result = {
                let mut table = txn
                    .open_table(KV)
                    .map_err(|e| storage_error("open table", e))?;
                f(&mut table)?
            };
            txn.commit().map_err(|e| storage_error("commit", e))?;
            Ok(result)
        })
        .await
        .map_err(|e| storage_error("blocking task failed", e))?
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> StoreResult<T>
            + Send
            + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db
                .begin_read()
                .map_err(|e| storage_error("begin read", e))?;
            let table = txn
                .open_table(KV)
                .map_err(|e| storage_error("open table", e))?;
            f(&table)
        })
        .await
        .map_err(|e| storage_error("blocking task failed", e))?
    }
}

fn get_kv(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> StoreResult<Option<KeyValue>> {
    Ok(table
        .get(key)
        .map_err(|e| storage_error("get", e))?
        .map(|value| KeyValue::new(key.to_vec(), value.value().to_vec())))
}

fn put_kv(
    table: &mut Table<'_, &'static [u8], &'static [u8]>,
    key: &[u8],
    value: &[u8],
) -> StoreResult<Option<KeyValue>> {
    Ok(table
        .insert(key, value)
        .map_err(|e| storage_error("insert", e))?
        .map(|prev| KeyValue::new(key.to_vec(), prev.value().to_vec())))
}

fn delete_kv(
    table: &mut Table<'_, &'static [u8], &'static [u8]>,
    key: &[u8],
) -> StoreResult<Option<KeyValue>> {
    Ok(table
        .remove(key)
        .map_err(|e| storage_error("remove", e))?
        .map(|prev| KeyValue::new(key.to_vec(), prev.value().to_vec())))
}

/// Collects the pairs of a range, at most `limit` of them (0: all), and whether more exist.
fn scan(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    range: &KeyRange,
    limit: u64,
    keys_only: bool,
) -> StoreResult<(Vec<KeyValue>, bool)> {
    let iter = match range.end()? {
        RangeEnd::Single => {
            let kv = get_kv(table, &range.key)?;
            return Ok((
                kv.into_iter().map(|kv| strip(kv, keys_only)).collect(),
                false,
            ));
        }
        RangeEnd::Unbounded => table.range::<&[u8]>(range.key.as_slice()..),
        RangeEnd::Before(end) => table.range::<&[u8]>(range.key.as_slice()..end),
    }
    .map_err(|e| storage_error("range", e))?;
    let mut kvs = Vec::new();
    for entry in iter {
        let (key, value) = entry.map_err(|e| storage_error("range", e))?;
        if limit > 0 && kvs.len() as u64 == limit {
            return Ok((kvs, true));
        }
        let value = if keys_only {
            Vec::new()
        } else {
            value.value().to_vec()
        };
        kvs.push(KeyValue::new(key.value().to_vec(), value));
    }
    Ok((kvs, false))
}

fn strip(kv: KeyValue, keys_only: bool) -> KeyValue {
    if keys_only {
        KeyValue::new(kv.key, Vec::new())
    } else {
        kv
    }
}

fn holds(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    compare: &Compare,
) -> StoreResult<bool> {
    Ok(match compare {
        Compare::ValueEquals { key, value } => {
            get_kv(table, key)?.is_some_and(|kv| &kv.value == value)
        }
        Compare::Absent { key } => get_kv(table, key)?.is_none(),
        Compare::UnchangedSince { .. } => {
            return Err(StoreError::InvalidArgument(
                "the embedded store keeps no revisions: compare the value instead".into(),
            ))
        }
    })
}

#[async_trait]
impl KvBackend for EmbeddedStore {
    fn name(&self) -> &'static str {
        "embedded"
    }

    async fn range(&self, req: RangeRequest) -> StoreResult<RangeResponse> {
        req.range.end()?;
        self.read(move |table| {
            let (kvs, more) = scan(table, &req.range, req.limit, req.keys_only)?;
            Ok(RangeResponse {
                kvs,
                more,
                revision: 0,
            })
        })
        .await
    }

    async fn put(&self, kv: KeyValue) -> StoreResult<Option<KeyValue>> {
        validate_key(&kv.key)?;
        self.write(move |table| put_kv(table, &kv.key, &kv.value))
            .await
    }

    async fn batch_get(&self, keys: Vec<Vec<u8>>) -> StoreResult<Vec<KeyValue>> {
        validate_batch_keys(keys.iter().map(Vec::as_slice), true)?;
        self.read(move |table| {
            let mut kvs = Vec::with_capacity(keys.len());
            for key in &keys {
                kvs.extend(get_kv(table, key)?);
            }
            Ok(kvs)
        })
        .await
    }

    async fn batch_put(&self, kvs: Vec<KeyValue>) -> StoreResult<Vec<KeyValue>> {
        validate_batch_keys(kvs.iter().map(|kv| kv.key.as_slice()), false)?;
        self.write(move |table| {
            let mut prev = Vec::new();
            for kv in &kvs {
                prev.extend(put_kv(table, &kv.key, &kv.value)?);
            }
            Ok(prev)
        })
        .await
    }

    async fn batch_delete(&self, keys: Vec<Vec<u8>>) -> StoreResult<Vec<KeyValue>> {
        validate_batch_keys(keys.iter().map(Vec::as_slice), false)?;
        self.write(move |table| {
            let mut prev = Vec::new();
            for key in &keys {
                prev.extend(delete_kv(table, key)?);
            }
            Ok(prev)
        })
        .await
    }

    async fn compare_and_put(
        &self,
        key: Vec<u8>,
        expect: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> StoreResult<CompareAndPutResponse> {
        validate_key(&key)?;
        self.write(move |table| {
            let prev_kv = get_kv(table, &key)?;
            let success = match (&prev_kv, &expect) {
                (None, None) => true,
                (Some(prev), Some(expect)) => &prev.value == expect,
                _ => false,
            };
            if success {
                put_kv(table, &key, &value)?;
            }
            Ok(CompareAndPutResponse { success, prev_kv })
        })
        .await
    }

    async fn delete_range(&self, range: KeyRange) -> StoreResult<Vec<KeyValue>> {
        range.end()?;
        self.write(move |table| {
            let (doomed, _) = scan(table, &range, 0, false)?;
            for kv in &doomed {
                delete_kv(table, &kv.key)?;
            }
            Ok(doomed)
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> StoreResult<TxnResponse> {
        validate_txn(&txn)?;
        self.write(move |table| {
            let mut succeeded = true;
            for compare in &txn.compare {
                if !holds(table, compare)? {
                    succeeded = false;
                    break;
                }
            }
            let ops = if succeeded {
                &txn.success
            } else {
                &txn.failure
            };
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                results.push(match op {
                    TxnOp::Put { key, value } => TxnOpResult::Put {
                        prev_kv: put_kv(table, key, value)?,
                    },
                    TxnOp::Get { key } => TxnOpResult::Get {
                        kv: get_kv(table, key)?,
                    },
                    TxnOp::Delete { key } => TxnOpResult::Delete {
                        prev_kv: delete_kv(table, key)?,
                    },
                });
            }
            Ok(TxnResponse {
                succeeded,
                results,
                revision: 0,
            })
        })
        .await
    }
}
