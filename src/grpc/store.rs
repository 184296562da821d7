//! The `Store` gRPC service over a [`KvBackend`].

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use super::{instrumented, RequestLimits};
use crate::election::Leadership;
use crate::metrics::Metrics;
use crate::proto::v1::{self as pb, store_server::Store};
use crate::security::Identity;
use crate::store::{is_internal_key, KeyRange, KvBackend, RangeRequest, INTERNAL_KEY_PREFIX};

pub use crate::proto::v1::store_server::StoreServer;

const SERVICE: &str = "Store";

pub struct StoreService {
    store: Arc<dyn KvBackend>,
    leadership: Arc<Leadership>,
    limits: RequestLimits,
    metrics: Arc<Metrics>,
}

impl StoreService {
    pub fn new(
        store: Arc<dyn KvBackend>,
        leadership: Arc<Leadership>,
        limits: RequestLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            leadership,
            limits,
            metrics,
        }
    }

    /// The checks every write goes through: those of a read, and leadership.
    fn admit_write<M: Message>(
        &self,
        request: &M,
        header: Option<&pb::RequestHeader>,
    ) -> Result<(), Status> {
        self.admit(request, header)?;
        self.leadership.require_leader()
    }

    /// The checks every Store request goes through: header and size.
    fn admit<M: Message>(
        &self,
        request: &M,
        header: Option<&pb::RequestHeader>,
    ) -> Result<(), Status> {
        self.limits.check_header(header)?;
        self.limits.check_size(request.encoded_len())
    }
}

/// Refuses a write to one of metasrv's own keys: the Store API serves the user key space.
fn user_key(key: &[u8]) -> Result<(), Status> {
    if is_internal_key(key) {
        return Err(internal_key_refused(&format!(
            "key {:?} is",
            String::from_utf8_lossy(key)
        )));
    }
    Ok(())
}

fn user_keys<'a>(keys: impl IntoIterator<Item = &'a [u8]>) -> Result<(), Status> {
    keys.into_iter().try_for_each(user_key)
}

fn internal_key_refused(what: &str) -> Status {
    Status::permission_denied(format!(
        "{what} metasrv's own metadata (keys starting with {:?}); the Store API writes and \
         deletes only user keys",
        String::from_utf8_lossy(INTERNAL_KEY_PREFIX)
    ))
}

/// Metasrv's own keys are for operators to read: refused to other callers once callers
/// authenticate (with no authentication configured everyone is [`Identity::Open`]).
fn may_read(identity: Option<&Identity>, touches_internal: bool) -> Result<(), Status> {
    let allowed = identity.is_none_or(Identity::reads_internal_keys);
    if touches_internal && !allowed {
        return Err(Status::permission_denied(format!(
            "only operators may read metasrv's own metadata (keys starting with {:?})",
            String::from_utf8_lossy(INTERNAL_KEY_PREFIX)
        )));
    }
    Ok(())
}

fn non_empty_key(key: &[u8]) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("key is empty"));
    }
    Ok(())
}

#[tonic::async_trait]
impl Store for StoreService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let identity = request.extensions().get::<Identity>().cloned();
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "Range", async {
            self.admit(&req, req.header.as_ref())?;
            let range = KeyRange {
                key: req.key,
                range_end: req.range_end,
            };
            may_read(identity.as_ref(), range.touches_internal_keys())?;
            let limit = u64::try_from(req.limit).map_err(|_| {
                Status::invalid_argument(format!("limit {} is negative", req.limit))
            })?;
            let response = self
                .store
                .range(RangeRequest {
                    range,
                    limit,
                    keys_only: req.keys_only,
                    revision: 0,
                })
                .await?;
            Ok(pb::RangeResponse {
                header: self.limits.response_header(),
                kvs: response.kvs.into_iter().map(Into::into).collect(),
                more: response.more,
            })
        })
        .await
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "Put", async {
            self.admit_write(&req, req.header.as_ref())?;
            non_empty_key(&req.key)?;
            user_key(&req.key)?;
            let prev = self
                .store
                .put(crate::store::KeyValue::new(req.key, req.value))
                .await?;
            Ok(pb::PutResponse {
                header: self.limits.response_header(),
                prev_kv: if req.prev_kv {
                    prev.map(Into::into)
                } else {
                    None
                },
            })
        })
        .await
    }

    async fn batch_get(
        &self,
        request: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        let identity = request.extensions().get::<Identity>().cloned();
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "BatchGet", async {
            self.admit(&req, req.header.as_ref())?;
            may_read(
                identity.as_ref(),
                req.keys.iter().any(|key| is_internal_key(key)),
            )?;
            self.limits.check_batch(req.keys.len())?;
            let kvs = self.store.batch_get(req.keys).await?;
            Ok(pb::BatchGetResponse {
                header: self.limits.response_header(),
                kvs: kvs.into_iter().map(Into::into).collect(),
            })
        })
        .await
    }

    async fn batch_put(
        &self,
        request: Request<pb::BatchPutRequest>,
    ) -> Result<Response<pb::BatchPutResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "BatchPut", async {
            self.admit_write(&req, req.header.as_ref())?;
            self.limits.check_batch(req.kvs.len())?;
            user_keys(req.kvs.iter().map(|kv| kv.key.as_slice()))?;
            let prev = self
                .store
                .batch_put(req.kvs.into_iter().map(Into::into).collect())
                .await?;
            Ok(pb::BatchPutResponse {
                header: self.limits.response_header(),
                prev_kvs: if req.prev_kv {
                    prev.into_iter().map(Into::into).collect()
                } else {
                    Vec::new()
                },
            })
        })
        .await
    }

    async fn batch_delete(
        &self,
        request: Request<pb::BatchDeleteRequest>,
    ) -> Result<Response<pb::BatchDeleteResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "BatchDelete", async {
            self.admit_write(&req, req.header.as_ref())?;
            self.limits.check_batch(req.keys.len())?;
            user_keys(req.keys.iter().map(Vec::as_slice))?;
            let prev = self.store.batch_delete(req.keys).await?;
            Ok(pb::BatchDeleteResponse {
                header: self.limits.response_header(),
                prev_kvs: if req.prev_kv {
                    prev.into_iter().map(Into::into).collect()
                } else {
                    Vec::new()
                },
            })
        })
        .await
    }

    async fn compare_and_put(
        &self,
        request: Request<pb::CompareAndPutRequest>,
    ) -> Result<Response<pb::CompareAndPutResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "CompareAndPut", async {
            self.admit_write(&req, req.header.as_ref())?;
            non_empty_key(&req.key)?;
            user_key(&req.key)?;
            // An empty `expect` means "the key must not exist" (see store.proto).
            let expect = (!req.expect.is_empty()).then_some(req.expect);
            let response = self
                .store
                .compare_and_put(req.key, expect, req.value)
                .await?;
            Ok(pb::CompareAndPutResponse {
                header: self.limits.response_header(),
                success: response.success,
                prev_kv: response.prev_kv.map(Into::into),
            })
        })
        .await
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let req = request.into_inner();
        instrumented(&self.metrics, SERVICE, "DeleteRange", async {
            self.admit_write(&req, req.header.as_ref())?;
            let range = KeyRange {
                key: req.key,
                range_end: req.range_end,
            };
            if range.touches_internal_keys() {
                return Err(internal_key_refused("the range covers"));
            }
            let deleted = self.store.delete_range(range).await?;
            Ok(pb::DeleteRangeResponse {
                header: self.limits.response_header(),
                deleted: deleted.len() as i64,
                prev_kvs: if req.prev_kv {
                    deleted.into_iter().map(Into::into).collect()
                } else {
                    Vec::new()
                },
            })
        })
        .await
    }
}
