//! One conformance suite for every `KvBackend`: each case runs against the embedded store (temp
//! dir) and against a real etcd server started for the test.

use std::collections::HashSet;
use std::sync::Arc;

use metasrv::store::embedded::EmbeddedStore;
use metasrv::store::{
    Compare, KeyRange, KeyValue, KvBackend, RangeRequest, StoreError, Txn, TxnOp, TxnOpResult,
};

use crate::harness::EtcdProcess;

/// Keeps alive whatever the store lives on (a temp dir, an etcd process).
pub struct Fixture {
    _guard: Box<dyn std::any::Any + Send>,
}

pub fn embedded() -> (Fixture, Arc<dyn KvBackend>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("open embedded store");
    (
        Fixture {
            _guard: Box::new(dir),
        },
        Arc::new(store),
    )
}

/// An etcd store behind a `FencedStore` whose fence holds: every write is a fenced transaction.
pub async fn fenced_etcd(test_name: &str) -> (Fixture, Arc<dyn KvBackend>) {
    use metasrv::store::fenced::{Fence, FencedStore};
    let etcd = EtcdProcess::start();
    let inner = etcd.store(&format!("/fenced/{test_name}"), 1).await;
    // The fence lives outside the keys the cases touch (they never range over "~").
    inner
        .put(kv("~leader", "member-1"))
        .await
        .expect("put the leader key");
    let fenced = FencedStore::follower(inner);
    fenced.set_leader(Fence {
        key: b"~leader".to_vec(),
        value: b"member-1".to_vec(),
    });
    (
        Fixture {
            _guard: Box::new(etcd),
        },
        Arc::new(fenced),
    )
}

pub async fn etcd(test_name: &str) -> (Fixture, Arc<dyn KvBackend>) {
    let etcd = EtcdProcess::start();
    let store = etcd.store(&format!("/test/{test_name}"), 1).await;
    (
        Fixture {
            _guard: Box::new(etcd),
        },
        store,
    )
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue::new(key.as_bytes().to_vec(), value.as_bytes().to_vec())
}

fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// The keys a case wrote: without the fenced fixture's leader key (which sorts last, under "~").
fn case_keys(kvs: &[KeyValue]) -> Vec<String> {
    keys(kvs)
        .into_iter()
        .filter(|k| !k.starts_with('~'))
        .collect()
}

async fn range(store: &Arc<dyn KvBackend>, range: KeyRange) -> Vec<KeyValue> {
    store
        .range(RangeRequest {
            range,
            limit: 0,
            keys_only: false,
            revision: 0,
        })
        .await
        .expect("range")
        .kvs
}

async fn put_all(store: &Arc<dyn KvBackend>, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        store.put(kv(k, v)).await.expect("put");
    }
}

fn assert_invalid<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::InvalidArgument(_)) => {}
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    }
}

pub mod cases {
    use super::*;

    pub async fn put_returns_the_previous_pair(store: Arc<dyn KvBackend>) {
        assert_eq!(store.put(kv("a", "1")).await.expect("put"), None);
        assert_eq!(
            store.put(kv("a", "2")).await.expect("put"),
            Some(kv("a", "1"))
        );
        assert_eq!(
            range(&store, KeyRange::single("a")).await,
            vec![kv("a", "2")]
        );
        // Empty values are values.
        store.put(kv("empty", "")).await.expect("put empty value");
        assert_eq!(
            range(&store, KeyRange::single("empty")).await,
            vec![kv("empty", "")]
        );
    }

    pub async fn ranges_follow_etcd_semantics(store: Arc<dyn KvBackend>) {
        put_all(
            &store,
            &[
                ("a", "1"),
                ("b/1", "2"),
                ("b/2", "3"),
                ("b0", "4"),
                ("c", "5"),
            ],
        )
        .await;
        assert_eq!(keys(&range(&store, KeyRange::single("b/1")).await), ["b/1"]);
        assert!(range(&store, KeyRange::single("nope")).await.is_empty());
        assert_eq!(
            keys(&range(&store, KeyRange::prefix("b/")).await),
            ["b/1", "b/2"]
        );
        assert_eq!(
            case_keys(&range(&store, KeyRange::from_key("b0")).await),
            ["b0", "c"]
        );
        assert_eq!(
            keys(
                &range(
                    &store,
                    KeyRange {
                        key: b"a".to_vec(),
                        range_end: b"b0".to_vec()
                    }
                )
                .await
            ),
            ["a", "b/1", "b/2"]
        );
        // An empty key with an unbounded end is "every key".
        assert_eq!(
            case_keys(&range(&store, KeyRange::from_key(Vec::new())).await).len(),
            5
        );
    }

    pub async fn limit_sets_more_and_keys_only_drops_values(store: Arc<dyn KvBackend>) {
        put_all(&store, &[("k1", "v1"), ("k2", "v2"), ("k3", "v3")]).await;
        let page = store
            .range(RangeRequest {
                range: KeyRange::prefix("k"),
                limit: 2,
                keys_only: false,
                revision: 0,
            })
            .await
            .expect("range");
        assert_eq!(keys(&page.kvs), ["k1", "k2"]);
        assert!(page.more, "a third key exists past the limit");
        let all = store
            .range(RangeRequest {
                range: KeyRange::prefix("k"),
                limit: 3,
                keys_only: true,
                revision: 0,
            })
            .await
            .expect("range");
        assert_eq!(keys(&all.kvs), ["k1", "k2", "k3"]);
        assert!(!all.more, "nothing past the limit");
        assert!(all.kvs.iter().all(|kv| kv.value.is_empty()), "keys only");
    }

    pub async fn bad_keys_and_ranges_are_invalid_arguments(store: Arc<dyn KvBackend>) {
        assert_invalid(store.put(kv("", "v")).await, "put with empty key");
        assert_invalid(
            store
                .range(RangeRequest {
                    range: KeyRange::single(Vec::new()),
                    ..Default::default()
                })
                .await,
            "range of the empty key",
        );
        let inverted = KeyRange {
            key: b"z".to_vec(),
            range_end: b"a".to_vec(),
        };
        assert_invalid(
            store
                .range(RangeRequest {
                    range: inverted.clone(),
                    ..Default::default()
                })
                .await,
            "inverted range",
        );
        assert_invalid(store.delete_range(inverted).await, "inverted delete range");
        assert_invalid(
            store.compare_and_put(Vec::new(), None, b"v".to_vec()).await,
            "compare-and-put on the empty key",
        );
        assert_invalid(
            store.batch_get(vec![Vec::new()]).await,
            "batch get of the empty key",
        );
    }

    pub async fn batch_get_returns_existing_pairs_in_request_order(store: Arc<dyn KvBackend>) {
        put_all(&store, &[("x", "1"), ("y", "2"), ("z", "3")]).await;
        let got = store
            .batch_get(vec![b"z".to_vec(), b"missing".to_vec(), b"x".to_vec()])
            .await
            .expect("batch get");
        assert_eq!(got, vec![kv("z", "3"), kv("x", "1")]);
        assert!(store
            .batch_get(Vec::new())
            .await
            .expect("empty batch")
            .is_empty());
    }

    pub async fn batch_put_is_atomic(store: Arc<dyn KvBackend>) {
        put_all(&store, &[("p1", "old")]).await;
        let prev = store
            .batch_put(vec![kv("p1", "new"), kv("p2", "new")])
            .await
            .expect("batch put");
        assert_eq!(prev, vec![kv("p1", "old")]);
        // A batch that fails writes nothing: a duplicate key and an empty key are refused whole.
        assert_invalid(
            store
                .batch_put(vec![kv("q1", "v"), kv("q2", "v"), kv("q1", "w")])
                .await,
            "duplicate key in a batch",
        );
        assert_invalid(
            store.batch_put(vec![kv("q3", "v"), kv("", "v")]).await,
            "empty key in a batch",
        );
        assert!(range(&store, KeyRange::prefix("q")).await.is_empty());
        assert_eq!(
            range(&store, KeyRange::prefix("p")).await,
            vec![kv("p1", "new"), kv("p2", "new")]
        );
    }

    pub async fn batch_delete_returns_what_it_removed(store: Arc<dyn KvBackend>) {
        put_all(&store, &[("d1", "1"), ("d2", "2"), ("d3", "3")]).await;
        let removed = store
            .batch_delete(vec![b"d1".to_vec(), b"d3".to_vec(), b"none".to_vec()])
            .await
            .expect("batch delete");
        assert_eq!(removed, vec![kv("d1", "1"), kv("d3", "3")]);
        assert_eq!(
            range(&store, KeyRange::prefix("d")).await,
            vec![kv("d2", "2")]
        );
        assert_invalid(
            store.batch_delete(vec![b"d2".to_vec(), b"".to_vec()]).await,
            "empty key in a delete batch",
        );
        assert_eq!(
            range(&store, KeyRange::prefix("d")).await,
            vec![kv("d2", "2")]
        );
    }

    pub async fn compare_and_put_checks_the_current_value(store: Arc<dyn KvBackend>) {
        let created = store
            .compare_and_put(b"c".to_vec(), None, b"1".to_vec())
            .await
            .expect("cas");
        assert!(created.success);
        assert_eq!(created.prev_kv, None);
        let again = store
            .compare_and_put(b"c".to_vec(), None, b"x".to_vec())
            .await
            .expect("cas");
        assert!(!again.success, "the key exists now");
        assert_eq!(again.prev_kv, Some(kv("c", "1")));
        let wrong = store
            .compare_and_put(b"c".to_vec(), Some(b"2".to_vec()), b"x".to_vec())
            .await
            .expect("cas");
        assert!(!wrong.success);
        assert_eq!(wrong.prev_kv, Some(kv("c", "1")));
        let right = store
            .compare_and_put(b"c".to_vec(), Some(b"1".to_vec()), b"2".to_vec())
            .await
            .expect("cas");
        assert!(right.success);
        assert_eq!(right.prev_kv, Some(kv("c", "1")));
        assert_eq!(
            range(&store, KeyRange::single("c")).await,
            vec![kv("c", "2")]
        );
        let absent = store
            .compare_and_put(b"nope".to_vec(), Some(b"1".to_vec()), b"2".to_vec())
            .await
            .expect("cas");
        assert!(!absent.success, "an absent key never equals a value");
        assert_eq!(absent.prev_kv, None);
    }

    pub async fn concurrent_compare_and_put_has_one_winner(store: Arc<dyn KvBackend>) {
        let contenders: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .compare_and_put(b"lock".to_vec(), None, format!("{i}").into_bytes())
                        .await
                        .expect("cas")
                        .success
                })
            })
            .collect();
        let mut winners = 0;
        for contender in contenders {
            if contender.await.expect("task") {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "exactly one create-if-absent may win");
    }

    pub async fn delete_range_removes_only_the_range(store: Arc<dyn KvBackend>) {
        put_all(
            &store,
            &[("r/1", "1"), ("r/2", "2"), ("r0", "x"), ("s", "y")],
        )
        .await;
        let deleted = store
            .delete_range(KeyRange::prefix("r/"))
            .await
            .expect("delete range");
        assert_eq!(deleted, vec![kv("r/1", "1"), kv("r/2", "2")]);
        assert_eq!(
            case_keys(&range(&store, KeyRange::from_key(Vec::new())).await),
            ["r0", "s"]
        );
        let single = store
            .delete_range(KeyRange::single("s"))
            .await
            .expect("delete");
        assert_eq!(single, vec![kv("s", "y")]);
        assert!(store
            .delete_range(KeyRange::single("s"))
            .await
            .expect("delete")
            .is_empty());
    }

    pub async fn txn_runs_one_branch_atomically(store: Arc<dyn KvBackend>) {
        put_all(&store, &[("leader", "me"), ("t/a", "1")]).await;
        let fenced = |holder: &str| Txn {
            compare: vec![
                Compare::ValueEquals {
                    key: b"leader".to_vec(),
                    value: holder.as_bytes().to_vec(),
                },
                Compare::Absent {
                    key: b"t/new".to_vec(),
                },
            ],
            success: vec![
                TxnOp::Put {
                    key: b"t/new".to_vec(),
                    value: b"v".to_vec(),
                },
                TxnOp::Delete {
                    key: b"t/a".to_vec(),
                },
                TxnOp::Get {
                    key: b"leader".to_vec(),
                },
            ],
            failure: vec![TxnOp::Get {
                key: b"leader".to_vec(),
            }],
        };
        let lost = store.txn(fenced("someone-else")).await.expect("txn");
        assert!(!lost.succeeded);
        assert_eq!(
            lost.results,
            vec![TxnOpResult::Get {
                kv: Some(kv("leader", "me"))
            }]
        );
        assert_eq!(keys(&range(&store, KeyRange::prefix("t/")).await), ["t/a"]);
        let won = store.txn(fenced("me")).await.expect("txn");
        assert!(won.succeeded);
        assert_eq!(
            won.results,
            vec![
                TxnOpResult::Put { prev_kv: None },
                TxnOpResult::Delete {
                    prev_kv: Some(kv("t/a", "1"))
                },
                TxnOpResult::Get {
                    kv: Some(kv("leader", "me"))
                },
            ]
        );
        assert_eq!(
            keys(&range(&store, KeyRange::prefix("t/")).await),
            ["t/new"]
        );
    }

    pub async fn binary_keys_and_ff_prefixes_work(store: Arc<dyn KvBackend>) {
        let k1 = vec![0x01, 0xff, 0x00];
        let k2 = vec![0x01, 0xff, 0xff];
        let k3 = vec![0x02];
        for key in [&k1, &k2, &k3] {
            store
                .put(KeyValue::new(key.clone(), vec![0xde, 0xad]))
                .await
                .expect("put");
        }
        let got = range(&store, KeyRange::prefix(vec![0x01, 0xff])).await;
        let got: HashSet<_> = got.into_iter().map(|kv| kv.key).collect();
        assert_eq!(got, HashSet::from([k1, k2]));
    }
}

/// `Compare::UnchangedSince` on etcd, plain and fenced: it holds while the key was not written
/// after the revision (other keys' writes do not matter), fails once it was or if the key is
/// missing, and every successful write names the revision it landed at.
async fn unchanged_since_compares_the_mod_revision(store: Arc<dyn KvBackend>) {
    let put_if = |compare: Vec<Compare>, value: &str| Txn {
        compare,
        success: vec![TxnOp::Put {
            key: b"route".to_vec(),
            value: value.as_bytes().to_vec(),
        }],
        failure: vec![],
    };
    let unchanged = |revision: i64| {
        vec![Compare::UnchangedSince {
            key: b"route".to_vec(),
            revision,
        }]
    };
    let missing = store
        .txn(put_if(unchanged(i64::MAX), "v0"))
        .await
        .expect("txn");
    assert!(!missing.succeeded, "a missing key is not unchanged");

    let first = store.txn(put_if(vec![], "v1")).await.expect("put");
    assert!(first.succeeded && first.revision > 0, "{first:?}");
    // Another key's write moves the store's revision, not the route's.
    let other = store.txn(Txn {
        compare: vec![],
        success: vec![TxnOp::Put {
            key: b"other".to_vec(),
            value: b"x".to_vec(),
        }],
        failure: vec![],
    });
    let other = other.await.expect("put other");
    assert!(other.revision > first.revision);
    let second = store
        .txn(put_if(unchanged(first.revision), "v2"))
        .await
        .expect("txn");
    assert!(
        second.succeeded,
        "unchanged since its own write: {second:?}"
    );
    assert!(second.revision > other.revision);
    // A writer that read before v2 landed loses.
    let stale = store
        .txn(put_if(unchanged(other.revision), "stale"))
        .await
        .expect("txn");
    assert!(
        !stale.succeeded,
        "the route was written after that revision"
    );
    let read = store
        .range(RangeRequest {
            range: KeyRange::single("route"),
            ..Default::default()
        })
        .await
        .expect("range");
    assert_eq!(read.kvs, vec![kv("route", "v2")]);
    // A read's revision is as good as a write's.
    let third = store
        .txn(put_if(unchanged(read.revision), "v3"))
        .await
        .expect("txn");
    assert!(third.succeeded, "{third:?}");
}

#[tokio::test]
async fn unchanged_since_on_etcd() {
    let (_fixture, store) = etcd("unchanged_since").await;
    unchanged_since_compares_the_mod_revision(store).await;
}

#[tokio::test]
async fn unchanged_since_on_fenced_etcd() {
    let (_fixture, store) = fenced_etcd("unchanged_since").await;
    unchanged_since_compares_the_mod_revision(store).await;
}

/// The embedded store keeps no revisions: it refuses the compare rather than guess.
#[tokio::test]
async fn unchanged_since_is_refused_by_the_embedded_store() {
    let (_fixture, store) = embedded();
    store.put(kv("route", "v1")).await.expect("put");
    let result = store
        .txn(Txn {
            compare: vec![Compare::UnchangedSince {
                key: b"route".to_vec(),
                revision: 1,
            }],
            success: vec![],
            failure: vec![],
        })
        .await;
    assert_invalid(result, "UnchangedSince on the embedded store");
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded_backend {
            $(
                #[tokio::test]
                async fn $case() {
                    let (_fixture, store) = super::embedded();
                    super::cases::$case(store).await;
                }
            )*
        }
        mod etcd_backend {
            $(
                #[tokio::test]
                async fn $case() {
                    let (_fixture, store) = super::etcd(stringify!($case)).await;
                    super::cases::$case(store).await;
                }
            )*
        }
        mod fenced_etcd_backend {
            $(
                #[tokio::test]
                async fn $case() {
                    let (_fixture, store) = super::fenced_etcd(stringify!($case)).await;
                    super::cases::$case(store).await;
                }
            )*
        }
    };
}

conformance!(
    put_returns_the_previous_pair,
    ranges_follow_etcd_semantics,
    limit_sets_more_and_keys_only_drops_values,
    bad_keys_and_ranges_are_invalid_arguments,
    batch_get_returns_existing_pairs_in_request_order,
    batch_put_is_atomic,
    batch_delete_returns_what_it_removed,
    compare_and_put_checks_the_current_value,
    concurrent_compare_and_put_has_one_winner,
    delete_range_removes_only_the_range,
    txn_runs_one_branch_atomically,
    binary_keys_and_ff_prefixes_work,
);

/// Two clusters on one etcd never see each other's keys, even with "every key" ranges.
#[tokio::test]
async fn etcd_clusters_are_isolated_by_prefix() {
    let etcd = EtcdProcess::start();
    let one = etcd.store("/iso", 1).await;
    let two = etcd.store("/iso", 2).await;
    one.put(kv("k", "one")).await.expect("put");
    two.put(kv("k", "two")).await.expect("put");
    two.put(kv("only-two", "x")).await.expect("put");
    assert_eq!(
        range(&one, KeyRange::from_key(Vec::new())).await,
        vec![kv("k", "one")]
    );
    let deleted = one
        .delete_range(KeyRange::from_key(Vec::new()))
        .await
        .expect("delete all of cluster 1");
    assert_eq!(deleted.len(), 1);
    assert_eq!(range(&two, KeyRange::from_key(Vec::new())).await.len(), 2);
}

/// A stopped etcd is reported as Unavailable, not as a bad request or a panic.
#[tokio::test]
async fn etcd_down_is_unavailable() {
    let etcd = EtcdProcess::start();
    let mut config = etcd.config("/down");
    config.request_timeout = std::time::Duration::from_secs(1);
    let store = metasrv::store::etcd::EtcdStore::connect(&config, 1)
        .await
        .expect("connect");
    store.put(kv("k", "v")).await.expect("put while up");
    drop(etcd);
    match store.put(kv("k", "w")).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable with etcd stopped, got {other:?}"),
    }
}

/// Once the leader key is no longer this member's, no write of any kind lands, and the store
/// turns itself into a follower.
#[tokio::test]
async fn a_lost_fence_refuses_every_write() {
    use metasrv::store::fenced::{Fence, FencedStore};
    let etcd = EtcdProcess::start();
    let inner = etcd.store("/fence-lost", 1).await;
    inner.put(kv("~leader", "member-1")).await.expect("put");
    let fenced = FencedStore::follower(inner.clone());
    fenced.set_leader(Fence {
        key: b"~leader".to_vec(),
        value: b"member-1".to_vec(),
    });
    fenced
        .put(kv("before", "1"))
        .await
        .expect("a write while the fence holds");
    // Another member takes over.
    inner.put(kv("~leader", "member-2")).await.expect("put");
    let refused = |r: Result<(), StoreError>, what: &str| match r {
        Err(StoreError::Fenced(_)) => {}
        other => panic!("{what}: expected Fenced, got {other:?}"),
    };
    refused(fenced.put(kv("after", "1")).await.map(drop), "put");
    refused(
        fenced.batch_put(vec![kv("after2", "1")]).await.map(drop),
        "batch put",
    );
    refused(
        fenced
            .compare_and_put(b"after3".to_vec(), None, b"1".to_vec())
            .await
            .map(drop),
        "compare and put",
    );
    refused(
        fenced
            .batch_delete(vec![b"before".to_vec()])
            .await
            .map(drop),
        "batch delete",
    );
    refused(
        fenced
            .delete_range(KeyRange::single("before"))
            .await
            .map(drop),
        "delete range",
    );
    let everything: Vec<String> = keys(&range(&inner, KeyRange::from_key(Vec::new())).await);
    assert_eq!(
        everything,
        ["before", "~leader"],
        "nothing written after the fence was lost"
    );
    // Reads still work.
    let fenced: Arc<dyn KvBackend> = Arc::new(fenced);
    assert_eq!(range(&fenced, KeyRange::single("before")).await.len(), 1);
}
