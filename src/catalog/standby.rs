//! A follower's standby copy of the catalog's table records, so that taking over does not
//! start with reading and decoding every route (a million regions are about a second of it).
//!
//! On etcd, a member that does not lead reads the table records (names, infos, routes) once,
//! as a cold load does, then follows every change under `__meta/table` through a watch, applied
//! with the same code (`CatalogAssembler::apply`). A copy that falls behind a compaction is read
//! again; a watch that ends is resumed from the last revision applied.
//!
//! Handing over is what makes the copy safe to lead with: the new leader, its fence set, writes
//! a marker of its own under the watched prefix and takes the copy only once the marker arrives.
//! The watch delivers a prefix's changes in revision order, and every write of an earlier leader
//! landed before the marker (the fence guards each of them), so the copy then holds every record
//! as of the last revision it applied, the marker's or later (etcd never splits a revision
//! across responses). Catalogs and schemas (a few keys) are read at that revision. A
//! copy that is still loading, broken, or slower than `patience` is not used: the leader loads
//! cold, as it did before this existed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::load::{self, CatalogAssembler, LoadedCatalog};
use crate::store::etcd::{EtcdStore, ETCD_DECODE_LIMIT};
use crate::store::{KeyValue, KvBackend};

/// The prefix the copy follows: table names, infos and routes, and the hand-over marker.
const FOLLOWED_PREFIX: &str = "__meta/table";
/// The key a new leader writes to learn when its copy holds every change before its term:
/// under the followed prefix, outside the three record prefixes (`__meta/table/`,
/// `__meta/table_name/`, `__meta/table_route/`), so no load reads it as a record.
pub(crate) const HAND_OVER_MARKER: &str = "__meta/table_handover";
/// How long a copy that could not be read or followed waits before it tries again.
const RETRY: Duration = Duration::from_secs(1);

/// Where a member's catalog came from when it last became leader (in `/health`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadSource {
    /// Its standby copy, handed over.
    Standby,
    /// Read from the store (no copy, or one that could not be handed over).
    Store,
}

/// How a member's catalog was last loaded.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CatalogLoad {
    pub source: LoadSource,
    /// Tables served.
    pub tables: usize,
    pub elapsed_ms: u64,
    pub at_unix_ms: u64,
}

/// A new leader's request for the copy as of its marker.
struct HandOverRequest {
    marker: Vec<u8>,
    reply: oneshot::Sender<CatalogAssembler>,
}

/// The copy, kept by a background task while this member stands by; dropping it stops the task.
pub struct StandbyCatalog {
    requests: mpsc::Sender<HandOverRequest>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StandbyCatalog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StandbyCatalog {
    /// Starts keeping a copy of `store`'s catalog on `runtime`; `None` on a store that cannot
    /// be watched (the embedded store, which has no followers).
    pub fn start(store: Arc<dyn KvBackend>, runtime: &tokio::runtime::Handle) -> Option<Self> {
        store.as_etcd()?;
        let (requests, received) = mpsc::channel(1);
        let task = runtime.spawn(keep_copy(store, received));
        Some(Self { requests, task })
    }

    /// The catalog as of a marker written through `store` (the new leader's fenced store):
    /// every change before this term is in it. `Err` says why the copy cannot be used; the
    /// caller then loads the catalog cold.
    pub(crate) async fn hand_over(
        self,
        store: &dyn KvBackend,
        patience: Duration,
    ) -> Result<LoadedCatalog, String> {
        let marker = serde_json::json!({
            "nonce": uuid::Uuid::new_v4().to_string(),
            "at_unix_ms": crate::clock::unix_ms(),
        })
        .to_string()
        .into_bytes();
        let (reply, answer) = oneshot::channel();
        let request = HandOverRequest {
            marker: marker.clone(),
            reply,
        };
        let started = std::time::Instant::now();
        if self.requests.send(request).await.is_err() {
            return Err("the standby copy stopped".into());
        }
        store
            .put(KeyValue::new(HAND_OVER_MARKER, marker))
            .await
            .map_err(|e| format!("cannot write the hand-over marker: {e}"))?;
        let assembler = match tokio::time::timeout(patience, answer).await {
            Ok(Ok(assembler)) => assembler,
            Ok(Err(_)) => return Err("the standby copy was being read (at start, or again)".into()),
            Err(_) => {
                return Err(format!(
                    "the standby copy did not reach the marker within {patience:?}"
                ))
            }
        };
        let marker_ms = started.elapsed().as_millis() as u64;
        let assembler = load::read_catalogs_and_schemas(store, assembler)
            .await
            .map_err(|e| format!("cannot read the catalogs and schemas: {e}"))?;
        let read_ms = started.elapsed().as_millis() as u64;
        let loaded = load::finish_off_thread(assembler)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            marker_ms,
            read_ms,
            assembled_ms = started.elapsed().as_millis() as u64,
            "the standby copy of the catalog is handed over"
        );
        Ok(loaded)
    }
}

/// Why following stopped.
enum Stop {
    /// The copy was handed over, or nobody can ask for it any more.
    Done,
    /// Read it again from scratch.
    Reload(String),
}

/// Reads the table records, then follows them until handed over. A request that comes while
/// the copy is being read is refused (its reply dropped): the leader loads cold rather than
/// wait.
async fn keep_copy(store: Arc<dyn KvBackend>, mut requests: mpsc::Receiver<HandOverRequest>) {
    let Some(etcd) = store.as_etcd() else {
        return;
    };
    loop {
        let read = tokio::select! {
            read = load::read_table_records(store.as_ref()) => read,
            _ = requests.recv() => return,
        };
        let reason = match read {
            Ok(assembler) => {
                tracing::info!(
                    records = assembler.table_records(),
                    revision = assembler.revision(),
                    "standing by with a copy of the catalog"
                );
                match follow(etcd, assembler, &mut requests).await {
                    Stop::Done => return,
                    Stop::Reload(reason) => reason,
                }
            }
            Err(e) => format!("cannot read the catalog: {e}"),
        };
        tracing::warn!("the standby copy of the catalog is read again: {reason}");
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = requests.recv() => return,
        }
    }
}

/// Applies every change after the assembler's revision until a hand-over request's marker
/// arrives. A watch that ends is opened again from the last revision applied; one that keeps
/// ending without bringing anything new (a response too large to decode, a permission
/// withdrawn) makes the copy be read again rather than spin.
async fn follow(
    etcd: &EtcdStore,
    mut assembler: CatalogAssembler,
    requests: &mut mpsc::Receiver<HandOverRequest>,
) -> Stop {
    let mut watched = etcd.prefix().to_vec();
    watched.extend_from_slice(FOLLOWED_PREFIX.as_bytes());
    let mut applied = assembler.revision();
    let mut pending: Option<HandOverRequest> = None;
    // The last marker seen: the request may be read after its marker.
    let mut last_marker: Option<Vec<u8>> = None;
    let mut fruitless_watches = 0;
    loop {
        let opened_at = applied;
        let options = etcd_client::WatchOptions::new()
            .with_prefix()
            .with_start_revision(applied + 1);
        let opened = etcd
            .client()
            .watch_client()
            .max_decoding_message_size(ETCD_DECODE_LIMIT)
            .watch(watched.clone(), Some(options))
            .await;
        let ended = match opened {
            Ok(mut stream) => loop {
                tokio::select! {
                    request = requests.recv(), if pending.is_none() => match request {
                        Some(request) => pending = Some(request),
                        None => return Stop::Done,
                    },
                    message = stream.message() => match message {
                        Ok(Some(response)) => {
                            if response.canceled() {
                                if response.compact_revision() > 0 {
                                    return Stop::Reload(format!(
                                        "the changes after revision {applied} were compacted"
                                    ));
                                }
                                break format!("etcd cancelled it: {}", response.cancel_reason());
                            }
                            let changes = changes_of(etcd.prefix(), &response, &mut last_marker);
                            applied = applied.max(changes.revision);
                            assembler = match apply_off_thread_if_large(assembler, changes).await {
                                Some(assembler) => assembler,
                                None => return Stop::Reload("applying changes failed".into()),
                            };
                        }
                        Ok(None) => break "the stream ended".to_owned(),
                        Err(e) => break e.to_string(),
                    },
                }
                let handed_over = matches!(
                    (&pending, &last_marker),
                    (Some(request), Some(marker)) if *marker == request.marker
                );
                if handed_over {
                    // Every change up to `applied` is in (etcd never splits a revision across
                    // responses), the marker's among them: one exact state of the KV.
                    assembler.set_revision(applied);
                    if let Some(request) = pending.take() {
                        let _ = request.reply.send(assembler);
                    }
                    return Stop::Done;
                }
            },
            Err(e) => format!("cannot open it: {e}"),
        };
        fruitless_watches = if applied > opened_at {
            0
        } else {
            fruitless_watches + 1
        };
        if fruitless_watches >= MAX_FRUITLESS_WATCHES {
            return Stop::Reload(format!(
                "the watch of the catalog ended {fruitless_watches} times with nothing new: {ended}"
            ));
        }
        tracing::debug!(
            applied,
            "the catalog watch ended ({ended}); opening it again"
        );
        if fruitless_watches > 0 {
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Watches opened in a row that bring nothing new before the copy is read again.
const MAX_FRUITLESS_WATCHES: u32 = 3;

/// Changes applied on the blocking pool from this many bytes of values (a route of a
/// thousand regions is about 60 KB of JSON; the async threads must not decode seconds of it).
const LARGE_CHANGES: usize = 256 * 1024;

/// The record changes of one watch response, in order, and the highest revision among them.
struct Changes {
    records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    bytes: usize,
    revision: i64,
}

/// The changes of `response` (keys relative to `prefix`); a hand-over marker among them is
/// kept in `last_marker` instead.
fn changes_of(
    prefix: &[u8],
    response: &etcd_client::WatchResponse,
    last_marker: &mut Option<Vec<u8>>,
) -> Changes {
    let mut changes = Changes {
        records: Vec::with_capacity(response.events().len()),
        bytes: 0,
        revision: 0,
    };
    for event in response.events() {
        let Some(kv) = event.kv() else { continue };
        changes.revision = changes.revision.max(kv.mod_revision());
        let key = kv.key().strip_prefix(prefix).unwrap_or(kv.key());
        if key == HAND_OVER_MARKER.as_bytes() {
            *last_marker = Some(kv.value().to_vec());
            continue;
        }
        let value =
            (event.event_type() == etcd_client::EventType::Put).then(|| kv.value().to_vec());
        changes.bytes += key.len() + value.as_ref().map_or(0, Vec::len);
        changes.records.push((key.to_vec(), value));
    }
    changes
}

/// Applies `changes` to the copy, on the blocking pool if they are large; `None` if that task
/// failed (the copy went with it).
async fn apply_off_thread_if_large(
    mut assembler: CatalogAssembler,
    changes: Changes,
) -> Option<CatalogAssembler> {
    let apply = move || {
        for (key, value) in changes.records {
            assembler.apply(key, value);
        }
        assembler
    };
    if changes.bytes < LARGE_CHANGES {
        return Some(apply());
    }
    tokio::task::spawn_blocking(apply).await.ok()
}
