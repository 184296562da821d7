//! The metadata key-value store: one async trait, [`KvBackend`], and its two implementations.
//!
//! - [`embedded::EmbeddedStore`]: a durable single-file store (redb) for a single machine. The
//!   default. Every acknowledged write is fsynced before the call returns.
//! - [`etcd::EtcdStore`]: etcd through etcd-client, every key under a per-cluster prefix.
//!
//! Both pass the same conformance suite (`tests/it/store_conformance.rs`). Range semantics follow
//! etcd (see [`KeyRange`]). Every multi-key write is atomic: a batch that fails writes nothing.

pub mod embedded;
pub mod etcd;
pub mod fenced;
pub mod scan;

use std::fmt;

use async_trait::async_trait;

/// A key and its value. Keys are arbitrary non-empty bytes; values may be empty.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl KeyValue {
    pub fn new(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={}",
            String::from_utf8_lossy(&self.key),
            String::from_utf8_lossy(&self.value)
        )
    }
}

/// Errors of a [`KvBackend`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request itself is wrong; retrying it will not help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The backend cannot be reached or has no quorum; the request may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend failed in a way the caller cannot fix (disk error, corrupt file...).
    #[error("store failure: {0}")]
    Internal(String),
    /// A leader's write was refused because its leader key is no longer its own: it has lost
    /// leadership (see [`fenced::FencedStore`]).
    #[error("write refused: {0}")]
    Fenced(String),
    /// A read at a revision the store has compacted away: read again at a newer one (a paged
    /// read restarts from its first page).
    #[error("revision compacted: {0}")]
    Compacted(String),
    /// A request over the store's size limit (etcd: `--max-request-bytes`, 1.5 MiB by default,
    /// or 128 operations per transaction): split it.
    #[error("request too large for the store: {0}")]
    TooLarge(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A key range with etcd's semantics.
///
/// - `range_end` empty: the single key `key`;
/// - `range_end == [0]`: every key >= `key` (with an empty `key` too: every key);
/// - otherwise the half-open interval `[key, range_end)`, which must not be inverted.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct KeyRange {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

/// Where a [`KeyRange`] ends.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeEnd<'a> {
    /// Only the start key.
    Single,
    /// No upper bound.
    Unbounded,
    /// Exclusive upper bound.
    Before(&'a [u8]),
}

impl KeyRange {
    pub fn single(key: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            range_end: Vec::new(),
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        let key = prefix.into();
        let range_end = prefix_end(&key);
        Self { key, range_end }
    }

    /// Every key >= `key`.
    pub fn from_key(key: impl Into<Vec<u8>>) -> Self {
        Self {
            key: key.into(),
            range_end: vec![0],
        }
    }

    /// Checks the range and says how it ends. An empty start key is only allowed for an
    /// unbounded range ("every key"), as in etcd.
    pub fn end(&self) -> StoreResult<RangeEnd<'_>> {
        if self.range_end.is_empty() {
            if self.key.is_empty() {
                return Err(StoreError::InvalidArgument("key is empty".into()));
            }
            return Ok(RangeEnd::Single);
        }
        if self.range_end == [0] {
            return Ok(RangeEnd::Unbounded);
        }
        if self.range_end.as_slice() <= self.key.as_slice() {
            return Err(StoreError::InvalidArgument(format!(
                "range_end {:?} is not after key {:?}: the range is inverted or empty",
                String::from_utf8_lossy(&self.range_end),
                String::from_utf8_lossy(&self.key)
            )));
        }
        Ok(RangeEnd::Before(&self.range_end))
    }

    /// Whether `key` falls in the range (the range must be valid).
    pub fn contains(&self, key: &[u8]) -> bool {
        match self.end() {
            Ok(RangeEnd::Single) => key == self.key.as_slice(),
            Ok(RangeEnd::Unbounded) => key >= self.key.as_slice(),
            Ok(RangeEnd::Before(end)) => key >= self.key.as_slice() && key < end,
            Err(_) => false,
        }
    }
}

/// Keys that start with this belong to metasrv itself (`__meta/`: catalog, routes, nodes,
/// procedures; `__election/`: its own and the datanodes' elections). The public Store API may
/// read them but never write or delete them: one `DeleteRange` over every key would otherwise
/// erase the durable catalog.
pub const INTERNAL_KEY_PREFIX: &[u8] = b"__";

/// Whether `key` is one of metasrv's own keys.
pub fn is_internal_key(key: &[u8]) -> bool {
    key.starts_with(INTERNAL_KEY_PREFIX)
}

impl KeyRange {
    /// Whether the range holds any of metasrv's own keys. An invalid range holds none (the
    /// backend refuses it with its own reason).
    pub fn touches_internal_keys(&self) -> bool {
        let internal_end = prefix_end(INTERNAL_KEY_PREFIX);
        match self.end() {
            Ok(RangeEnd::Single) => is_internal_key(&self.key),
            Ok(RangeEnd::Unbounded) => self.key < internal_end,
            Ok(RangeEnd::Before(end)) => self.key < internal_end && end > INTERNAL_KEY_PREFIX,
            Err(_) => false,
        }
    }
}

/// The smallest key greater than every key that starts with `prefix`, as etcd's `WithPrefix`
/// computes it; `[0]` (unbounded) when no such key exists (an empty or all-0xff prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A range read.
#[derive(Clone, Debug, Default)]
pub struct RangeRequest {
    pub range: KeyRange,
    /// At most this many pairs; 0 means no limit.
    pub limit: u64,
    /// Return keys with empty values.
    pub keys_only: bool,
    /// Read the store as of this revision (etcd); 0 means the latest. Paged scans pass the
    /// revision of their first page so that every page shows one consistent state. The
    /// embedded store has no history and reads the latest state.
    pub revision: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// The pairs in key order.
    pub kvs: Vec<KeyValue>,
    /// More pairs exist in the range past the limit.
    pub more: bool,
    /// The store revision the read saw (etcd); 0 on the embedded store.
    pub revision: i64,
}

/// The outcome of a compare-and-put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompareAndPutResponse {
    pub success: bool,
    /// The pair before the call, if the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// A condition of a [`Txn`], checked on a key's current value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key exists with exactly this value.
    ValueEquals { key: Vec<u8>, value: Vec<u8> },
    /// The key does not exist.
    Absent { key: Vec<u8> },
    /// The key exists and has not been written since the store's `revision` (etcd: its mod
    /// revision is at most `revision`): it still holds what a read or write at that revision
    /// saw. A few bytes where [`Compare::ValueEquals`] would send a large value (a table's
    /// route) a second time. etcd only: the embedded store keeps no revisions and refuses it.
    UnchangedSince { key: Vec<u8>, revision: i64 },
}

/// One operation of a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Get { key: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// The result of one [`TxnOp`], in the order of the ops that ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResult {
    /// A put, with the pair it replaced.
    Put { prev_kv: Option<KeyValue> },
    /// A get: the pair, if the key exists.
    Get { kv: Option<KeyValue> },
    /// A delete, with the pair it removed.
    Delete { prev_kv: Option<KeyValue> },
}

/// An atomic transaction: if every compare holds, run `success`, else run `failure`.
/// It is the one primitive that later layers (table creation, fencing of a leader) build on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every compare held (and so `success` ran).
    pub succeeded: bool,
    pub results: Vec<TxnOpResult>,
    /// The store's revision once the transaction ran (etcd: the revision its writes landed
    /// at, for a later [`Compare::UnchangedSince`]); 0 on the embedded store.
    pub revision: i64,
}

/// The metadata store. Implementations must make every acknowledged write durable and every
/// multi-key write atomic.
#[async_trait]
pub trait KvBackend: Send + Sync + 'static {
    /// A short name for logs and metrics ("embedded", "etcd").
    fn name(&self) -> &'static str;

    /// The etcd backend behind this store, if any: leader election and leases need etcd's own
    /// APIs, which the KV abstraction does not cover.
    fn as_etcd(&self) -> Option<&etcd::EtcdStore> {
        None
    }

    async fn range(&self, req: RangeRequest) -> StoreResult<RangeResponse>;

    /// Writes one pair and returns the previous one if it existed.
    async fn put(&self, kv: KeyValue) -> StoreResult<Option<KeyValue>>;

    /// The pairs that exist among `keys`, in the order of `keys`.
    async fn batch_get(&self, keys: Vec<Vec<u8>>) -> StoreResult<Vec<KeyValue>>;

    /// Writes every pair atomically; returns the previous pairs of the keys that existed.
    async fn batch_put(&self, kvs: Vec<KeyValue>) -> StoreResult<Vec<KeyValue>>;

    /// Deletes every key atomically; returns the pairs that existed.
    async fn batch_delete(&self, keys: Vec<Vec<u8>>) -> StoreResult<Vec<KeyValue>>;

    /// Writes `value` only if the current value equals `expect` (`None`: the key must be absent).
    async fn compare_and_put(
        &self,
        key: Vec<u8>,
        expect: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> StoreResult<CompareAndPutResponse>;

    /// Deletes every key in the range atomically; returns the deleted pairs.
    async fn delete_range(&self, range: KeyRange) -> StoreResult<Vec<KeyValue>>;

    /// Runs a transaction atomically.
    async fn txn(&self, txn: Txn) -> StoreResult<TxnResponse>;
}

/// Checks what every backend must refuse the same way: empty keys and a key given twice in one
/// atomic batch (etcd refuses duplicate keys in a transaction, so the embedded store does too).
pub(crate) fn validate_batch_keys<'a>(
    keys: impl IntoIterator<Item = &'a [u8]>,
    allow_duplicates: bool,
) -> StoreResult<()> {
    let mut seen = std::collections::HashSet::new();
    for key in keys {
        if key.is_empty() {
            return Err(StoreError::InvalidArgument("key is empty".into()));
        }
        if !allow_duplicates && !seen.insert(key) {
            return Err(StoreError::InvalidArgument(format!(
                "key {:?} appears twice in one batch",
                String::from_utf8_lossy(key)
            )));
        }
    }
    Ok(())
}

pub(crate) fn validate_key(key: &[u8]) -> StoreResult<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidArgument("key is empty".into()));
    }
    Ok(())
}

/// Checks a transaction's keys: none empty, and no key written twice in the same branch.
pub(crate) fn validate_txn(txn: &Txn) -> StoreResult<()> {
    for compare in &txn.compare {
        match compare {
            Compare::ValueEquals { key, .. }
            | Compare::Absent { key }
            | Compare::UnchangedSince { key, .. } => validate_key(key)?,
        }
    }
    for branch in [&txn.success, &txn.failure] {
        let written = branch.iter().filter_map(|op| match op {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => Some(key.as_slice()),
            TxnOp::Get { .. } => None,
        });
        validate_batch_keys(written, false)?;
        for op in branch.iter() {
            if let TxnOp::Get { key } = op {
                validate_key(key)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_keys_are_found_in_every_range_shape() {
        let touches = |key: &[u8], end: &[u8]| {
            KeyRange {
                key: key.to_vec(),
                range_end: end.to_vec(),
            }
            .touches_internal_keys()
        };
        assert!(touches(b"__meta/table/1", b""));
        assert!(!touches(b"_meta", b""));
        assert!(!touches(b"user/a", b""));
        // Every key, and every key from below or inside the internal prefix.
        assert!(touches(b"\0", &[0]));
        assert!(touches(b"", &[0]));
        assert!(touches(b"__z", &[0]));
        assert!(!touches(b"a", &[0]));
        // Bounded ranges that cross, contain or stop short of it.
        assert!(touches(b"A", b"a"));
        assert!(touches(b"__meta/", b"__meta0"));
        assert!(!touches(b"A", b"__"));
        assert!(touches(b"A", b"__\0"));
        assert!(!touches(b"_`", b"z"));
        assert!(touches(b"__\xff", b"z"));
        // Invalid ranges are the backend's to refuse.
        assert!(!touches(b"z", b"a"));
    }

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn key_range_rejects_inverted_and_empty_ranges() {
        assert!(KeyRange {
            key: b"b".to_vec(),
            range_end: b"a".to_vec()
        }
        .end()
        .is_err());
        assert!(KeyRange {
            key: b"a".to_vec(),
            range_end: b"a".to_vec()
        }
        .end()
        .is_err());
        assert!(KeyRange::single(Vec::new()).end().is_err());
        assert_eq!(
            KeyRange::from_key(Vec::new()).end().ok(),
            Some(RangeEnd::Unbounded)
        );
    }

    #[test]
    fn key_range_contains_follows_etcd_semantics() {
        let range = KeyRange::prefix(b"ab".to_vec());
        assert!(range.contains(b"ab"));
        assert!(range.contains(b"abz"));
        assert!(!range.contains(b"ac"));
        assert!(!range.contains(b"aa"));
        assert!(KeyRange::single(b"k".to_vec()).contains(b"k"));
        assert!(!KeyRange::single(b"k".to_vec()).contains(b"k2"));
        assert!(KeyRange::from_key(b"m".to_vec()).contains(b"zz"));
    }

    #[test]
    fn txn_validation_refuses_a_key_written_twice() {
        let txn = Txn {
            compare: vec![],
            success: vec![
                TxnOp::Put {
                    key: b"k".to_vec(),
                    value: b"1".to_vec(),
                },
                TxnOp::Delete { key: b"k".to_vec() },
            ],
            failure: vec![],
        };
        assert!(matches!(
            validate_txn(&txn),
            Err(StoreError::InvalidArgument(_))
        ));
    }
}
