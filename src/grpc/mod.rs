//! gRPC adapters, one file per service. They are thin: check the request header, translate
//! protobuf to domain types, call the domain layer, and map its typed errors to `tonic::Status`
//! here, in one place.

pub mod admin;
pub mod autoadmin;
pub mod codec;
pub mod election;
pub mod heartbeat;
pub mod router;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tonic::{Response, Status};

use crate::metrics::Metrics;
use crate::proto::v1::{RequestHeader, ResponseHeader};
use crate::store::StoreError;

/// What every service checks before serving a request.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    pub cluster_id: u64,
    pub max_request_bytes: usize,
    pub max_batch_ops: usize,
}

impl RequestLimits {
    /// Refuses a request with no header or for another cluster.
    pub fn check_header(&self, header: Option<&RequestHeader>) -> Result<(), Status> {
        let header = header.ok_or_else(|| {
            Status::invalid_argument("request has no header: set header.cluster_id")
        })?;
        if header.cluster_id != self.cluster_id {
            return Err(Status::invalid_argument(format!(
                "request is for cluster {} but this metasrv serves cluster {}",
                header.cluster_id, self.cluster_id
            )));
        }
        Ok(())
    }

    /// Refuses a request larger than the configured limit.
    pub fn check_size(&self, encoded_len: usize) -> Result<(), Status> {
        if encoded_len > self.max_request_bytes {
            return Err(Status::invalid_argument(format!(
                "request is {encoded_len} bytes, over the limit of {} bytes (max_request_bytes)",
                self.max_request_bytes
            )));
        }
        Ok(())
    }

    /// Refuses a batch with more operations than the configured limit.
    pub fn check_batch(&self, ops: usize) -> Result<(), Status> {
        if ops > self.max_batch_ops {
            return Err(Status::invalid_argument(format!(
                "batch has {ops} operations, over the limit of {} (max_batch_ops)",
                self.max_batch_ops
            )));
        }
        Ok(())
    }

    pub fn response_header(&self) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.cluster_id,
            error: None,
        })
    }
}

impl From<crate::catalog::DdlError> for Status {
    fn from(error: crate::catalog::DdlError) -> Self {
        use crate::catalog::DdlError as E;
        match error {
            E::InvalidArgument(m) => Status::invalid_argument(m),
            E::AlreadyExists(m) => Status::already_exists(m),
            E::NotFound(m) => Status::not_found(m),
            E::NoCapacity(m) => Status::failed_precondition(m),
            E::NotConfirmed(m) => Status::unavailable(m),
            E::Store(e) => e.into(),
            E::Corrupt(m) => Status::internal(format!("corrupt metadata: {m}")),
        }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::InvalidArgument(message) => Status::invalid_argument(message),
            StoreError::Unavailable(message) => Status::unavailable(message),
            StoreError::Internal(message) => Status::internal(message),
            StoreError::Fenced(message) => Status::unavailable(message),
            // Store API reads carry no revision: a compaction under one is a race to retry.
            StoreError::Compacted(message) => Status::aborted(message),
            StoreError::TooLarge(message) => Status::invalid_argument(format!(
                "the request is larger than the metadata store accepts ({message}); split it"
            )),
        }
    }
}

/// Runs one request handler, counting it and timing it under `service`/`method`.
pub(crate) async fn instrumented<T>(
    metrics: &Arc<Metrics>,
    service: &str,
    method: &str,
    handler: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = handler.await;
    metrics
        .grpc_latency
        .with_label_values(&[service, method])
        .observe(started.elapsed().as_secs_f64());
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    metrics
        .grpc_requests
        .with_label_values(&[service, method, &format!("{code:?}")])
        .inc();
    if let Err(status) = &result {
        tracing::debug!(service, method, code = ?status.code(), message = status.message(), "request refused");
    }
    result.map(Response::new)
}
