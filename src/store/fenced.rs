//! `FencedStore`: the leader's view of the KV. Every write is a transaction that also checks that
//! the leader key is still this member's (its value unchanged), so a deposed leader (paused past
//! its lease, partitioned) can never write, whatever it believes about itself. Reads pass through.
//! With no fence set (the embedded backend, where the single replica is always leader) writes go
//! straight to the inner store.

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;

use super::{
    validate_batch_keys, validate_key, Compare, CompareAndPutResponse, KeyRange, KeyValue,
    KvBackend, RangeRequest, RangeResponse, StoreError, StoreResult, Txn, TxnOp, TxnOpResult,
    TxnResponse,
};

/// The condition under which this member may write: its leader key holds its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// What the fence says right now.
#[derive(Clone, Debug, PartialEq, Eq)]
enum FenceState {
    /// No fencing: a single-replica deployment.
    Unfenced,
    /// Writes are allowed while the fence holds.
    Leader(Fence),
    /// This member is not the leader: every write is refused locally.
    Follower,
}

/// Called when a write finds the current fence lost.
type FenceLostHook = Box<dyn Fn(&Fence) + Send + Sync>;

pub struct FencedStore {
    inner: Arc<dyn KvBackend>,
    state: RwLock<FenceState>,
    fence_lost: parking_lot::Mutex<Option<FenceLostHook>>,
}

impl FencedStore {
    /// A store that fences nothing (single replica, always leader).
    pub fn unfenced(inner: Arc<dyn KvBackend>) -> Self {
        Self {
            inner,
            state: RwLock::new(FenceState::Unfenced),
            fence_lost: parking_lot::Mutex::new(None),
        }
    }

    /// A store that refuses writes until [`FencedStore::set_leader`].
    pub fn follower(inner: Arc<dyn KvBackend>) -> Self {
        Self {
            inner,
            state: RwLock::new(FenceState::Follower),
            fence_lost: parking_lot::Mutex::new(None),
        }
    }

    /// Writes are allowed while `fence` holds in the store.
    pub fn set_leader(&self, fence: Fence) {
        *self.state.write() = FenceState::Leader(fence);
    }

    /// `hook` runs whenever a write finds the current fence lost: leadership must end then,
    /// not when the election next notices.
    pub fn on_fence_lost(&self, hook: impl Fn(&Fence) + Send + Sync + 'static) {
        *self.fence_lost.lock() = Some(Box::new(hook));
    }

    /// Refuses every write from now on.
    pub fn set_follower(&self) {
        *self.state.write() = FenceState::Follower;
    }

    pub fn inner(&self) -> &Arc<dyn KvBackend> {
        &self.inner
    }

    /// The fence to add to a write, `Ok(None)` when unfenced, or the refusal of a follower.
    fn fence(&self) -> StoreResult<Option<Fence>> {
        match &*self.state.read() {
            FenceState::Unfenced => Ok(None),
            FenceState::Leader(fence) => Ok(Some(fence.clone())),
            FenceState::Follower => {
                Err(StoreError::Fenced("this metasrv is not the leader".into()))
            }
        }
    }

    /// Runs `ops` under the fence; returns their results, or `Fenced` if the fence failed.
    async fn fenced_ops(&self, fence: Fence, ops: Vec<TxnOp>) -> StoreResult<Vec<TxnOpResult>> {
        let response = self
            .inner
            .txn(Txn {
                compare: vec![Compare::ValueEquals {
                    key: fence.key.clone(),
                    value: fence.value.clone(),
                }],
                success: ops,
                failure: vec![],
            })
            .await?;
        if !response.succeeded {
            return Err(self.lost(&fence));
        }
        Ok(response.results)
    }

    /// Marks this member a follower after `fence` failed (if it is still the current fence: a
    /// late failure of an earlier term's write must not fence the next term off), tells the
    /// election (see [`FencedStore::on_fence_lost`]) and says so.
    fn lost(&self, fence: &Fence) -> StoreError {
        let current = {
            let mut state = self.state.write();
            let current = matches!(&*state, FenceState::Leader(held) if held == fence);
            if current {
                *state = FenceState::Follower;
            }
            current
        };
        if current {
            if let Some(hook) = self.fence_lost.lock().as_ref() {
                hook(fence);
            }
        }
        StoreError::Fenced(
            "this metasrv's leader key is gone: it lost leadership and may not write".into(),
        )
    }
}

fn prev_kvs(results: Vec<TxnOpResult>) -> Vec<KeyValue> {
    results
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResult::Put { prev_kv } | TxnOpResult::Delete { prev_kv } => prev_kv,
            TxnOpResult::Get { kv } => kv,
        })
        .collect()
}

#[async_trait]
impl KvBackend for FencedStore {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn as_etcd(&self) -> Option<&super::etcd::EtcdStore> {
        self.inner.as_etcd()
    }

    async fn range(&self, req: RangeRequest) -> StoreResult<RangeResponse> {
        self.inner.range(req).await
    }

    async fn put(&self, kv: KeyValue) -> StoreResult<Option<KeyValue>> {
        let Some(fence) = self.fence()? else {
            return self.inner.put(kv).await;
        };
        validate_key(&kv.key)?;
        let ops = vec![TxnOp::Put {
            key: kv.key,
            value: kv.value,
        }];
        Ok(prev_kvs(self.fenced_ops(fence, ops).await?)
            .into_iter()
            .next())
    }

    async fn batch_get(&self, keys: Vec<Vec<u8>>) -> StoreResult<Vec<KeyValue>> {
        self.inner.batch_get(keys).await
    }

    async fn batch_put(&self, kvs: Vec<KeyValue>) -> StoreResult<Vec<KeyValue>> {
        let Some(fence) = self.fence()? else {
            return self.inner.batch_put(kvs).await;
        };
        validate_batch_keys(kvs.iter().map(|kv| kv.key.as_slice()), false)?;
        let ops = kvs
            .into_iter()
            .map(|kv| TxnOp::Put {
                key: kv.key,
                value: kv.value,
            })
            .collect();
        Ok(prev_kvs(self.fenced_ops(fence, ops).await?))
    }

    async fn batch_delete(&self, keys: Vec<Vec<u8>>) -> StoreResult<Vec<KeyValue>> {
        let Some(fence) = self.fence()? else {
            return self.inner.batch_delete(keys).await;
        };
        validate_batch_keys(keys.iter().map(Vec::as_slice), false)?;
        let ops = keys.into_iter().map(|key| TxnOp::Delete { key }).collect();
        Ok(prev_kvs(self.fenced_ops(fence, ops).await?))
    }

    async fn compare_and_put(
        &self,
        key: Vec<u8>,
        expect: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> StoreResult<CompareAndPutResponse> {
        let Some(fence) = self.fence()? else {
            return self.inner.compare_and_put(key, expect, value).await;
        };
        validate_key(&key)?;
        let condition = match expect {
            Some(value) => Compare::ValueEquals {
                key: key.clone(),
                value,
            },
            None => Compare::Absent { key: key.clone() },
        };
        let response = self
            .inner
            .txn(Txn {
                compare: vec![
                    Compare::ValueEquals {
                        key: fence.key.clone(),
                        value: fence.value.clone(),
                    },
                    condition,
                ],
                success: vec![TxnOp::Put {
                    key: key.clone(),
                    value,
                }],
                // Tell a lost fence from a failed comparison.
                failure: vec![
                    TxnOp::Get {
                        key: fence.key.clone(),
                    },
                    TxnOp::Get { key },
                ],
            })
            .await?;
        let mut results = response.results.into_iter();
        if response.succeeded {
            let prev_kv = match results.next() {
                Some(TxnOpResult::Put { prev_kv }) => prev_kv,
                _ => None,
            };
            return Ok(CompareAndPutResponse {
                success: true,
                prev_kv,
            });
        }
        let fence_holds = matches!(
            results.next(),
            Some(TxnOpResult::Get { kv: Some(kv) }) if kv.value == fence.value
        );
        if !fence_holds {
            return Err(self.lost(&fence));
        }
        let prev_kv = match results.next() {
            Some(TxnOpResult::Get { kv }) => kv,
            _ => None,
        };
        Ok(CompareAndPutResponse {
            success: false,
            prev_kv,
        })
    }

    async fn delete_range(&self, range: KeyRange) -> StoreResult<Vec<KeyValue>> {
        let Some(fence) = self.fence()? else {
            return self.inner.delete_range(range).await;
        };
        // Read the keys, then delete exactly those under the fence. (Only the leader writes
        // metadata, so no key can slip into the range between the two steps.)
        let existing = self
            .inner
            .range(RangeRequest {
                range,
                limit: 0,
                keys_only: true,
                revision: 0,
            })
            .await?
            .kvs;
        if existing.is_empty() {
            return Ok(Vec::new());
        }
        let ops = existing
            .into_iter()
            .map(|kv| TxnOp::Delete { key: kv.key })
            .collect();
        Ok(prev_kvs(self.fenced_ops(fence, ops).await?))
    }

    async fn txn(&self, mut txn: Txn) -> StoreResult<TxnResponse> {
        let Some(fence) = self.fence()? else {
            return self.inner.txn(txn).await;
        };
        // The fence goes first; on failure the fence key is read to tell "lost leadership" from
        // "the caller's comparison failed". The caller's failure branch then runs as a second
        // step, which is only sound for reads: a failure branch that writes is refused.
        if txn
            .failure
            .iter()
            .any(|op| !matches!(op, TxnOp::Get { .. }))
        {
            return Err(StoreError::InvalidArgument(
                "a fenced transaction's failure branch may only read".into(),
            ));
        }
        txn.compare.insert(
            0,
            Compare::ValueEquals {
                key: fence.key.clone(),
                value: fence.value.clone(),
            },
        );
        let caller_failure = std::mem::replace(
            &mut txn.failure,
            vec![TxnOp::Get {
                key: fence.key.clone(),
            }],
        );
        let response = self.inner.txn(txn).await?;
        if response.succeeded {
            return Ok(response);
        }
        let fence_holds = matches!(
            response.results.first(),
            Some(TxnOpResult::Get { kv: Some(kv) }) if kv.value == fence.value
        );
        if !fence_holds {
            return Err(self.lost(&fence));
        }
        // The caller's own comparison failed: its failure branch (reads only) runs now.
        if caller_failure.is_empty() {
            return Ok(TxnResponse {
                succeeded: false,
                results: Vec::new(),
                revision: response.revision,
            });
        }
        let reads = self
            .inner
            .txn(Txn {
                compare: vec![],
                success: caller_failure,
                failure: vec![],
            })
            .await?;
        Ok(TxnResponse {
            succeeded: false,
            ..reads
        })
    }
}
