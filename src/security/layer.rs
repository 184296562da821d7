//! The gRPC side of authentication: a tower layer in front of every service that resolves the
//! caller's [`Identity`] (client certificate names, bearer token), refuses what its roles may
//! not call ([`super::authorize`]) and leaves the identity in the request's extensions for the
//! handlers that refine it (the Store service's internal keys).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::tls::peer_names;
use super::{authorize, Authenticator, Identity};

#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

/// The verified client-certificate names of the connection a request came on.
fn cert_names<B>(request: &http::Request<B>) -> Vec<String> {
    request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .map(|certs| peer_names(&certs))
        .unwrap_or_default()
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let identity = if self.authenticator.enabled() {
            let authorization = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            self.authenticator
                .identify(&cert_names(&request), authorization)
                .and_then(|identity| authorize(request.uri().path(), &identity).map(|()| identity))
        } else {
            Ok(Identity::Open)
        };
        match identity {
            Ok(identity) => {
                request.extensions_mut().insert(identity);
                // The clone that was polled ready serves this request (tower's rule).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(status) => {
                tracing::info!(path = request.uri().path(), %status, "refused a gRPC call");
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
