//! Route writes of region moves (failovers, migrations, drains): queued per table and group
//! committed, several tables to an etcd transaction, under striped per-table locks; a write
//! whose outcome is unknown is settled before its callers are answered.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::keys;
use super::{DdlError, LeaderMove, TableEntry, TableManager};
use crate::catalog::model::{Peer, RegionRoute, TableRoute};
use crate::store::{Compare, KeyRange, RangeRequest, StoreError, Txn, TxnOp};

/// A table's route as read from the store.
struct StoredRoute {
    /// The bytes stored.
    raw: Vec<u8>,
    /// As this leader reads them (repaired as the catalog load repairs them).
    route: TableRoute,
    /// The revision of the read (0 on the embedded store).
    revision: i64,
}

impl StoredRoute {
    /// The compare that the stored route is still this one: by revision where the store has
    /// them, else by value.
    fn unchanged(&self, key: Vec<u8>) -> Compare {
        if self.revision > 0 {
            Compare::UnchangedSince {
                key,
                revision: self.revision,
            }
        } else {
            Compare::ValueEquals {
                key,
                value: self.raw.clone(),
            }
        }
    }
}

/// The most table routes one transaction writes. etcd allows 128 compares in a transaction; a
/// route's "unchanged since" is two of them on etcd (the key exists, its mod revision is not
/// newer) and the leader's fence one more.
const ROUTES_PER_TXN: usize = 60;
// Its compares and the fence: 2 x 60 + 1.
const _: () = assert!(2 * ROUTES_PER_TXN < crate::store::etcd::MAX_TXN_OPS);
/// The most route bytes one transaction carries (etcd refuses requests over 1.5 MiB).
const ROUTE_TXN_BYTES: usize = 1024 * 1024;

/// A table's route with queued moves applied, to be written; the replies of those moves.
struct PreparedRoute {
    entry: Arc<TableEntry>,
    route: TableRoute,
    replies: Vec<tokio::sync::oneshot::Sender<Result<Arc<TableEntry>, DdlError>>>,
}

/// Never store a route the load would refuse to serve: the reason, if `route` (the moved route
/// of `entry`'s table) is one.
fn check_moved_route(entry: &TableEntry, route: &TableRoute) -> Result<(), String> {
    crate::catalog::model::check_route(&entry.info, route)
        .map_err(|reason| format!("not moving regions of {}: {reason}", entry.info.name))
}

impl PreparedRoute {
    /// Answers every move of this route with the write's outcome.
    fn answer(self, written: Result<Arc<TableEntry>, String>) {
        for reply in self.replies {
            let _ = reply.send(
                written
                    .clone()
                    .map_err(|reason| DdlError::NotConfirmed(reason.clone())),
            );
        }
    }
}

/// One region's leadership move, queued for its table's next route write.
pub(super) struct RouteMove {
    table_id: u64,
    region_id: u64,
    from: u64,
    leader: Peer,
    followers: Vec<Peer>,
    reply: tokio::sync::oneshot::Sender<Result<Arc<TableEntry>, DdlError>>,
}

/// Stripes of the per-table route lock.
pub(super) const ROUTE_LOCK_STRIPES: usize = 64;
/// How long a move waits for others when its stripe is in a burst of moves (see
/// `move_region_leaders`), unless [`BURST_BATCH`] are queued already.
const BURST_LINGER: std::time::Duration = std::time::Duration::from_millis(10);
const BURST_BATCH: usize = 16;

impl TableManager {
    /// Moves the leadership of one region from `from` to `leader` (with `followers`), in the
    /// table's current route, with a higher version. Route changes of one table are serialized
    /// here, so that failovers of two nodes moving regions of the same table both land instead
    /// of one losing a compare-and-put on a route the other just changed; and they are group
    /// committed: moves of a table that queue while its route is being written go out
    /// together in the next write (a failover of a node leading 1,000 regions of a table
    /// writes its route a few times, not 1,000). Refused if the region is no longer led by
    /// `from`, or if the move would give the region a repeated or missing copy.
    pub async fn move_region_leader(
        &self,
        region_id: u64,
        from: u64,
        leader: Peer,
        followers: Vec<Peer>,
    ) -> Result<Arc<TableEntry>, DdlError> {
        let moved = self
            .move_region_leaders(vec![LeaderMove {
                region_id,
                from,
                leader,
                followers,
            }])
            .await;
        moved.into_iter().next().unwrap_or_else(|| {
            Err(DdlError::NotConfirmed(format!(
                "the move of region {region_id} got no answer"
            )))
        })
    }

    /// [`Self::move_region_leader`] for many regions at once, answered in order: every move is
    /// queued before any write starts, so the moves of one table go out in one write (a
    /// failover that collects its acknowledged moves writes each table's route once per
    /// collection, not once per acknowledgement that arrived while the previous write was
    /// under way: at 1,000 regions a route is about 110 KB).
    pub async fn move_region_leaders(
        &self,
        moves: Vec<LeaderMove>,
    ) -> Vec<Result<Arc<TableEntry>, DdlError>> {
        let mut answers = Vec::with_capacity(moves.len());
        let mut stripes = Vec::new();
        for LeaderMove {
            region_id,
            from,
            leader,
            followers,
        } in moves
        {
            let table_id = crate::catalog::model::table_of_region(region_id);
            let stripe = (table_id % ROUTE_LOCK_STRIPES as u64) as usize;
            let (reply, answer) = tokio::sync::oneshot::channel();
            self.route_queues[stripe].lock().push(RouteMove {
                table_id,
                region_id,
                from,
                leader,
                followers,
                reply,
            });
            answers.push((region_id, answer));
            if !stripes.contains(&stripe) {
                stripes.push(stripe);
            }
        }
        // Every caller locks its stripes in ascending order, so no two wait on each other; the
        // holder writes every move queued in them by then (its own, unless an earlier holder
        // took them along), the tables of all its stripes together: a failover's collection of
        // moves in 300 tables goes out in a few transactions, not 300.
        stripes.sort_unstable();
        let mut held = Vec::with_capacity(stripes.len());
        for &stripe in &stripes {
            held.push(self.route_locks[stripe].lock().await);
        }
        // In a burst of moves (a drain, a failover: a stripe wrote moments ago), a lone move
        // waits a little for others: each write carries a whole route (about 110 KB at 1,000
        // regions), and moves confirmed a few milliseconds apart would each write it. A move
        // outside a burst goes at once.
        let queued: usize = stripes
            .iter()
            .map(|&stripe| self.route_queues[stripe].lock().len())
            .sum();
        let in_burst = held
            .iter()
            .any(|last_write| last_write.is_some_and(|at| at.elapsed() < BURST_LINGER * 4));
        if queued > 0 && queued < BURST_BATCH && in_burst {
            tokio::time::sleep(BURST_LINGER).await;
        }
        // Moves queued in other stripes whose locks are free go along too (try_lock: never a
        // wait, so the order above still holds): a failover's 32 batches each write their
        // tables, and whichever writes first takes what the others queued meanwhile.
        let own = stripes.clone();
        for stripe in 0..ROUTE_LOCK_STRIPES {
            if own.binary_search(&stripe).is_err() && !self.route_queues[stripe].lock().is_empty() {
                if let Ok(guard) = self.route_locks[stripe].try_lock() {
                    held.push(guard);
                    stripes.push(stripe);
                }
            }
        }
        let batch: Vec<RouteMove> = stripes
            .iter()
            .flat_map(|&stripe| std::mem::take(&mut *self.route_queues[stripe].lock()))
            .collect();
        if !batch.is_empty() {
            self.write_route_moves(batch).await;
            let now = std::time::Instant::now();
            for last_write in &mut held {
                **last_write = Some(now);
            }
        }
        drop(held);
        let mut results = Vec::with_capacity(answers.len());
        for (region_id, answer) in answers {
            results.push(answer.await.unwrap_or_else(|_| {
                Err(DdlError::NotConfirmed(format!(
                    "the write carrying the move of region {region_id} was abandoned; read \
                     the route to learn whether it landed"
                )))
            }));
        }
        results
    }

    /// Applies `batch` to the current routes and answers each move: one route write per
    /// table, several tables to a transaction (up to [`ROUTES_PER_TXN`] and
    /// [`ROUTE_TXN_BYTES`]; each table's compare holds on its own). The transactions go out at
    /// once: they are of different keys, and the stripes' locks, held by the caller, keep
    /// every other writer of these tables waiting.
    async fn write_route_moves(&self, batch: Vec<RouteMove>) {
        let mut by_table: BTreeMap<u64, Vec<RouteMove>> = BTreeMap::new();
        // A move whose caller is gone (its operation was cancelled: the term ended, say) is
        // dropped: it no longer holds its region's lock nor waits out any lease.
        for queued in batch.into_iter().filter(|m| !m.reply.is_closed()) {
            by_table.entry(queued.table_id).or_default().push(queued);
        }
        let prepared = by_table
            .into_iter()
            .filter_map(|(table_id, moves)| self.prepare_route_moves(table_id, moves));
        let mut alone = Vec::new();
        let mut chunks: Vec<Vec<(PreparedRoute, Vec<u8>)>> = Vec::new();
        let mut chunk_bytes = 0;
        for prepared in prepared {
            // A route whose stored revision is unknown (the embedded store) is compared by
            // value, the whole route once more: it goes alone, as does one that fails to
            // encode or fit (compare_and_put_route reports why).
            let encoded = (prepared.entry.route_revision > 0)
                .then(|| serde_json::to_vec(&prepared.route).ok())
                .flatten()
                .filter(|bytes| bytes.len() <= ROUTE_TXN_BYTES);
            let Some(bytes) = encoded else {
                alone.push(prepared);
                continue;
            };
            let full = chunks.last().is_none_or(|chunk| {
                chunk.len() >= ROUTES_PER_TXN || chunk_bytes + bytes.len() > ROUTE_TXN_BYTES
            });
            if full {
                chunks.push(Vec::new());
                chunk_bytes = 0;
            }
            chunk_bytes += bytes.len();
            if let Some(chunk) = chunks.last_mut() {
                chunk.push((prepared, bytes));
            }
        }
        let alone = alone
            .into_iter()
            .map(|prepared| futures::future::Either::Left(self.write_prepared_route(prepared)));
        let chunks = chunks
            .into_iter()
            .map(|chunk| futures::future::Either::Right(self.write_route_chunk(chunk)));
        futures::future::join_all(alone.chain(chunks)).await;
    }

    /// Writes `chunk`'s routes in one transaction, each under its own compare. If one
    /// compare fails (something outside this leader changed that route) or the store finds
    /// the transaction too large, each route is written on its own; if the outcome is
    /// unknown, each is settled on its own (the transaction landed whole or not at all).
    async fn write_route_chunk(&self, chunk: Vec<(PreparedRoute, Vec<u8>)>) {
        if chunk.len() == 1 {
            // A lone route takes the single-table path (which checks it too).
            for (prepared, _) in chunk {
                self.write_prepared_route(prepared).await;
            }
            return;
        }
        let mut writable = Vec::with_capacity(chunk.len());
        for (prepared, bytes) in chunk {
            match check_moved_route(&prepared.entry, &prepared.route) {
                Ok(()) => writable.push((prepared, bytes)),
                Err(reason) => prepared.answer(Err(reason)),
            }
        }
        if writable.len() <= 1 {
            for (prepared, _) in writable {
                self.write_prepared_route(prepared).await;
            }
            return;
        }
        let mut compare = Vec::with_capacity(writable.len());
        let mut success = Vec::with_capacity(writable.len());
        for (prepared, bytes) in &mut writable {
            let key = keys::table_route(prepared.entry.info.id);
            compare.push(Compare::UnchangedSince {
                key: key.clone(),
                revision: prepared.entry.route_revision,
            });
            success.push(TxnOp::Put {
                key,
                value: std::mem::take(bytes),
            });
        }
        let written = self
            .store
            .txn(Txn {
                compare,
                success,
                failure: vec![],
            })
            .await;
        let routes = writable.into_iter().map(|(prepared, _)| prepared);
        match written {
            Ok(response) if response.succeeded => {
                for prepared in routes {
                    let updated = self.install_route(
                        &prepared.entry,
                        prepared.route.clone(),
                        response.revision,
                    );
                    prepared.answer(Ok(updated));
                }
            }
            Ok(_) | Err(StoreError::TooLarge(_)) => {
                if let Err(StoreError::TooLarge(reason)) = &written {
                    tracing::warn!(
                        tables = routes.len(),
                        "a transaction of routes was too large for the store, writing each on its own: {reason}"
                    );
                }
                futures::future::join_all(
                    routes.map(|prepared| self.write_prepared_route(prepared)),
                )
                .await;
            }
            Err(error) => {
                let error = &error;
                futures::future::join_all(routes.map(|prepared| async move {
                    let settled = self
                        .settle_unknown_write(&prepared.entry, prepared.route.clone(), error)
                        .await;
                    prepared.answer(settled);
                }))
                .await;
            }
        }
    }

    /// Writes one prepared route on its own and answers its moves.
    async fn write_prepared_route(&self, prepared: PreparedRoute) {
        let written = self
            .compare_and_put_route(&prepared.entry, prepared.route.clone())
            .await;
        prepared.answer(written);
    }

    /// Applies `moves` (all of table `table_id`) to its current route; `None` if none applies
    /// (each refused move is answered here).
    fn prepare_route_moves(&self, table_id: u64, moves: Vec<RouteMove>) -> Option<PreparedRoute> {
        let Some(entry) = self.entry_by_id(table_id) else {
            for queued in moves {
                let _ = queued.reply.send(Err(DdlError::NotFound(format!(
                    "table {table_id} of region {} is gone",
                    queued.region_id
                ))));
            }
            return None;
        };
        let mut route = entry.route.clone();
        let mut applied = Vec::with_capacity(moves.len());
        for queued in moves {
            let Some(region) = route
                .regions
                .iter_mut()
                .find(|r| r.region_id == queued.region_id)
            else {
                let _ = queued.reply.send(Err(DdlError::NotFound(format!(
                    "region {} is not in the route",
                    queued.region_id
                ))));
                continue;
            };
            if region.leader.id != queued.from {
                let _ = queued.reply.send(Err(DdlError::NotConfirmed(format!(
                    "region {} is now led by node {}, not {}",
                    queued.region_id, region.leader.id, queued.from
                ))));
                continue;
            }
            let moved = RegionRoute {
                leader: queued.leader,
                followers: queued.followers,
                ..region.clone()
            };
            // Never store a route a new leader would refuse to serve (a planner's stale
            // choice: a follower that is the leader too, say); the caller undoes its move.
            if let Err(reason) = crate::catalog::model::check_region_copies(&moved) {
                let _ = queued.reply.send(Err(DdlError::NotConfirmed(format!(
                    "not moving region {}: {reason}",
                    queued.region_id
                ))));
                continue;
            }
            *region = moved;
            applied.push(queued.reply);
        }
        if applied.is_empty() {
            return None;
        }
        route.version += 1;
        Some(PreparedRoute {
            entry,
            route,
            replies: applied,
        })
    }

    /// Writes `route` over `entry`'s if the stored one is still `entry`'s, and updates the
    /// cache and the ownership; the reason otherwise (the cache then follows the store).
    async fn compare_and_put_route(
        &self,
        entry: &TableEntry,
        route: TableRoute,
    ) -> Result<Arc<TableEntry>, String> {
        check_moved_route(entry, &route)?;
        let key = keys::table_route(entry.info.id);
        let new = serde_json::to_vec(&route).map_err(|e| e.to_string())?;
        // Under the table's lock, the cached route is the stored one unless something outside
        // this leader changed the KV: then refuse rather than overwrite it. On etcd that is
        // checked by revision, so a route of 1,000 regions is not sent twice in one request.
        let mut unchanged = if entry.route_revision > 0 {
            Compare::UnchangedSince {
                key: key.clone(),
                revision: entry.route_revision,
            }
        } else {
            Compare::ValueEquals {
                key: key.clone(),
                value: serde_json::to_vec(&entry.route).map_err(|e| e.to_string())?,
            }
        };
        let mut reread = false;
        loop {
            match self.put_route_if(unchanged, &key, new.clone()).await {
                Ok(Some(revision)) => return Ok(self.install_route(entry, route, revision)),
                Ok(None) => match self.stored_route(entry).await {
                    // The same route, spelled otherwise (one repaired on load) or written again
                    // unchanged: still ours.
                    Ok(Some(stored)) if !reread && stored.route == entry.route => {
                        unchanged = stored.unchanged(key.clone());
                        reread = true;
                    }
                    _ => {
                        self.refresh_route(entry).await;
                        return Err(format!(
                            "the stored route of {} is not the one this leader holds; not \
                             moving its regions",
                            entry.info.name
                        ));
                    }
                },
                Err(e) => return self.settle_unknown_write(entry, route, &e).await,
            }
        }
    }

    /// Writes a route if `unchanged` holds: the revision it landed at (0 on the embedded
    /// store), or `None` if the compare failed.
    async fn put_route_if(
        &self,
        unchanged: Compare,
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<Option<i64>, StoreError> {
        let response = self
            .store
            .txn(Txn {
                compare: vec![unchanged],
                success: vec![TxnOp::Put {
                    key: key.to_vec(),
                    value,
                }],
                failure: vec![],
            })
            .await?;
        Ok(response.succeeded.then_some(response.revision))
    }

    /// After a route write whose outcome is unknown: learns whether it landed, and makes sure
    /// that what is reported stays true. Callers undo their move unless told it landed, so a
    /// write that arrives late must not land after all: if the stored route is still the old
    /// one, its version is bumped with a compare on it (a late write then fails its compare).
    /// Retried, under the table's lock, for a few seconds.
    async fn settle_unknown_write(
        &self,
        entry: &TableEntry,
        route: TableRoute,
        error: &StoreError,
    ) -> Result<Arc<TableEntry>, String> {
        let key = keys::table_route(entry.info.id);
        let mut wait = std::time::Duration::from_millis(100);
        for _ in 0..6 {
            match self.stored_route(entry).await {
                Ok(Some(stored)) if stored.route == route => {
                    return Ok(self.install_route(entry, route, stored.revision));
                }
                Ok(Some(stored)) if stored.route == entry.route => {
                    let unchanged = stored.unchanged(key.clone());
                    let mut fenced = stored.route;
                    fenced.version = route.version;
                    let fenced_bytes = serde_json::to_vec(&fenced).map_err(|e| e.to_string())?;
                    if let Ok(Some(revision)) =
                        self.put_route_if(unchanged, &key, fenced_bytes).await
                    {
                        self.install_route(entry, fenced, revision);
                        return Err(format!(
                            "the route write of {} failed ({error}) and did not land",
                            entry.info.name
                        ));
                    }
                    // The late write may have landed meanwhile, or the store is away: look again.
                }
                Ok(_) => {
                    self.refresh_route(entry).await;
                    return Err(format!(
                        "the route write of {} failed ({error}); the stored route is another",
                        entry.info.name
                    ));
                }
                Err(e) => tracing::warn!(table = %entry.info.name, "cannot re-read a route: {e}"),
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
        Err(format!(
            "the route write of {} failed ({error}); whether it landed is unknown",
            entry.info.name
        ))
    }

    /// The stored route of `entry`'s table as this leader reads it (repaired as the load
    /// repairs it); `None` if there is none or it cannot be decoded.
    async fn stored_route(&self, entry: &TableEntry) -> Result<Option<StoredRoute>, StoreError> {
        // A range rather than a get: its response names the revision it read at.
        let read = self
            .store
            .range(RangeRequest {
                range: KeyRange::single(keys::table_route(entry.info.id)),
                ..Default::default()
            })
            .await?;
        let revision = read.revision;
        Ok(read.kvs.into_iter().next().and_then(|kv| {
            let mut route = serde_json::from_slice::<TableRoute>(&kv.value).ok()?;
            crate::catalog::model::drop_bad_followers(&mut route);
            Some(StoredRoute {
                raw: kv.value,
                route,
                revision,
            })
        }))
    }

    /// Makes `route`, stored at `revision`, the cached route of `entry`'s table, in the cache
    /// and the ownership.
    fn install_route(
        &self,
        entry: &TableEntry,
        route: TableRoute,
        revision: i64,
    ) -> Arc<TableEntry> {
        let updated = Arc::new(TableEntry {
            info: entry.info.clone(),
            route,
            route_revision: revision,
        });
        self.ownership.remove_route(&entry.route);
        self.ownership.add_route(&updated.route);
        self.cache.write().put_table(updated.clone());
        updated
    }

    /// Re-reads the stored route of `entry`'s table into the cache and the ownership (after a
    /// route write that found another route stored). Best effort: if the store cannot be read,
    /// the cache stays and the next attempt refreshes again. Whether the store could be read.
    async fn refresh_route(&self, entry: &TableEntry) -> bool {
        let stored = match self.stored_route(entry).await {
            Ok(Some(stored)) => stored,
            Ok(None) => return true,
            Err(e) => {
                tracing::warn!(table = %entry.info.name, "cannot re-read a route: {e}");
                return false;
            }
        };
        // What the load would not serve is not served from here either.
        if let Err(reason) = crate::catalog::model::check_route(&entry.info, &stored.route) {
            tracing::error!(table = %entry.info.name, "the stored route does not fit its table: {reason}");
            return true;
        }
        let mut cache = self.cache.write();
        let Some(current) = cache.tables.get(&entry.info.name).cloned() else {
            return true;
        };
        if current.info.id != entry.info.id || current.route == stored.route {
            return true;
        }
        self.ownership.remove_route(&current.route);
        self.ownership.add_route(&stored.route);
        cache.put_table(Arc::new(TableEntry {
            info: current.info.clone(),
            route: stored.route,
            route_revision: stored.revision,
        }));
        true
    }
}
