//! Paged reads of a key prefix that stay within a byte budget per response and see one state of
//! the store. A large catalog (thousands of wide tables) does not fit one etcd response, nor a
//! fixed count of pairs per page (one page of 1,000 wide tables is over 8 MiB): each page asks
//! for as many pairs as the budget holds at the size of the largest pair of the page before.
//! Every page after the first reads at the first page's revision (etcd), so pages written
//! between two reads cannot mix two states.

use super::{KeyRange, KeyValue, KvBackend, RangeRequest, StoreResult};

/// The target size of one page's response.
pub const PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Pairs asked for in a first page, before any size is known.
const FIRST_PAGE_PAIRS: u64 = 64;
/// The most pairs one page asks for, however small they are.
const MAX_PAGE_PAIRS: u64 = 10_000;

/// A scan of every pair under a prefix, page by page.
pub struct PrefixScan<'a> {
    store: &'a dyn KvBackend,
    next_key: Vec<u8>,
    end: Vec<u8>,
    revision: i64,
    limit: u64,
    done: bool,
}

impl<'a> PrefixScan<'a> {
    /// A scan of `prefix` at the latest revision (fixed by its first page).
    pub fn new(store: &'a dyn KvBackend, prefix: &[u8]) -> Self {
        Self::at_revision(store, prefix, 0)
    }

    /// A scan of `prefix` as of `revision` (0: the latest, fixed by the first page). Several
    /// scans of one revision read one consistent state of the store.
    pub fn at_revision(store: &'a dyn KvBackend, prefix: &[u8], revision: i64) -> Self {
        Self {
            store,
            next_key: prefix.to_vec(),
            end: super::prefix_end(prefix),
            revision,
            limit: FIRST_PAGE_PAIRS,
            done: false,
        }
    }

    /// The revision the scan reads at (0 until the first page on the embedded store, which
    /// has no revisions).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The next page, or `None` once the prefix is exhausted.
    pub async fn next_page(&mut self) -> StoreResult<Option<Vec<KeyValue>>> {
        if self.done {
            return Ok(None);
        }
        let page = loop {
            let read = self
                .store
                .range(RangeRequest {
                    range: KeyRange {
                        key: self.next_key.clone(),
                        range_end: self.end.clone(),
                    },
                    limit: self.limit,
                    keys_only: false,
                    revision: self.revision,
                })
                .await;
            match read {
                Ok(page) => break page,
                // The pairs grew wider than the last page's: the response was over what the
                // client decodes. Fewer at a time (never fewer than one).
                Err(e) if self.limit > 1 && is_too_large(&e) => {
                    self.limit /= 2;
                    tracing::debug!(
                        limit = self.limit,
                        "a page was too large; asking for fewer pairs"
                    );
                }
                Err(e) => return Err(e),
            }
        };
        if self.revision == 0 {
            self.revision = page.revision;
        }
        self.limit = next_limit(&page.kvs, self.limit);
        match page.kvs.last() {
            Some(last) => {
                self.next_key = last.key.clone();
                self.next_key.push(0);
            }
            None => self.done = true,
        }
        if !page.more {
            self.done = true;
        }
        Ok(Some(page.kvs))
    }

    /// Every remaining pair, in key order.
    pub async fn collect(mut self) -> StoreResult<Vec<KeyValue>> {
        let mut all = Vec::new();
        while let Some(page) = self.next_page().await? {
            all.extend(page);
        }
        Ok(all)
    }
}

/// How many pairs the next page asks for: as many of the largest pair of `page` as fit the
/// budget (at least one, so a scan always progresses), growing at most twofold a page so that
/// a run of small pairs does not make the page after it huge when wide ones follow.
fn next_limit(page: &[KeyValue], current: u64) -> u64 {
    match page.iter().map(|kv| kv.key.len() + kv.value.len()).max() {
        Some(largest) => ((PAGE_BYTES / largest.max(1)) as u64)
            .min(current.saturating_mul(2))
            .clamp(1, MAX_PAGE_PAIRS),
        None => current,
    }
}

/// Whether a read failed because its response was larger than the client decodes (tonic's
/// "decoded message length too large", which the etcd backend reports as a refused request).
fn is_too_large(error: &super::StoreError) -> bool {
    error.to_string().contains("too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(n: usize, size: usize) -> Vec<KeyValue> {
        (0..n)
            .map(|i| KeyValue::new(format!("k{i}"), vec![0u8; size]))
            .collect()
    }

    #[test]
    fn the_page_size_follows_the_largest_pair() {
        // 8 KiB tables: 2 MiB holds 255 of them (key bytes included).
        assert_eq!(next_limit(&pairs(3, 8 * 1024), 512), 255);
        // Tiny pairs: twice the last page at most, and capped.
        assert_eq!(next_limit(&pairs(3, 10), 64), 128);
        assert_eq!(next_limit(&pairs(3, 10), 8_000), MAX_PAGE_PAIRS);
        // A pair larger than the budget: one at a time, never zero.
        assert_eq!(next_limit(&pairs(1, 3 * 1024 * 1024), 64), 1);
        // An empty page keeps the limit.
        assert_eq!(next_limit(&[], 64), 64);
    }
}
