//! The CLI's HTTP client: one request per connection (a CLI makes a handful), plaintext or TLS
//! with the same CA, client certificate and token settings as the gRPC client library, and
//! leader following: calls that need the leader go to whoever the members name.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use super::CtlError;
use crate::client::ClientSecurity;

/// How long one HTTP exchange may take (connect, TLS, request, answer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read (a catalog of a million regions is far smaller in `/v1/tables`).
const MAX_ANSWER_BYTES: usize = 256 << 20;

/// An answer: the status code and the JSON body (`Value::Null` when the body was not JSON).
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The error message metasrv put in the body, or the status line.
    pub fn message(&self) -> String {
        self.body["error"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {}", self.status))
    }
}

pub struct HttpClient {
    security: ClientSecurity,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl HttpClient {
    pub fn new(security: ClientSecurity) -> Result<Self, CtlError> {
        let tls = match &security.ca {
            Some(ca) => Some(tls_connector(ca, &security)?),
            None => None,
        };
        Ok(Self { security, tls })
    }

    pub fn security(&self) -> &ClientSecurity {
        &self.security
    }

    /// Sends one request to `addr` (`host:port`); `body` goes as JSON.
    pub async fn request(
        &self,
        method: &str,
        addr: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CtlError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, addr, path, body))
            .await
            .unwrap_or_else(|_| {
                Err(CtlError::Unreachable(format!(
                    "{addr} did not answer within {REQUEST_TIMEOUT:?}"
                )))
            })
    }

    async fn exchange(
        &self,
        method: &str,
        addr: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, CtlError> {
        let unreachable = |e: &dyn std::fmt::Display| CtlError::Unreachable(format!("{addr}: {e}"));
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(&e))?;
        let _ = tcp.set_nodelay(true);
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        // `[::1]:4002` names the host `::1` (a TLS name cannot have brackets).
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr)
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(token) = &self.security.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let payload = match body {
            Some(body) => {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| CtlError::Usage(format!("bad request: {e}")))?;
        let response = match &self.tls {
            Some(connector) => {
                let name = self
                    .security
                    .domain
                    .clone()
                    .unwrap_or_else(|| host.to_owned());
                let server_name = rustls::pki_types::ServerName::try_from(name.clone())
                    .map_err(|_| CtlError::Usage(format!("{name:?} is not a valid TLS name")))?;
                let stream = connector
                    .connect(server_name, tcp)
                    .await
                    .map_err(|e| unreachable(&format!("TLS: {e}")))?;
                send(TokioIo::new(stream), request).await
            }
            None => send(TokioIo::new(tcp), request).await,
        }
        .map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| unreachable(&format!("reading the answer: {e}")))?
            .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }
}

async fn send<IO>(
    io: IO,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    sender.send_request(request).await
}

fn tls_connector(
    ca: &std::path::Path,
    security: &ClientSecurity,
) -> Result<tokio_rustls::TlsConnector, CtlError> {
    use crate::security::tls::{certificates, private_key};
    // The same PEM reading as the server's (a file that holds none is named).
    let usage = |e: crate::security::tls::TlsError| CtlError::Usage(e.to_string());
    let bad = |path: &std::path::Path, e: &dyn std::fmt::Display| {
        CtlError::Usage(format!("{}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca).map_err(usage)? {
        roots.add(cert).map_err(|e| bad(ca, &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CtlError::Usage(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let mut config = match (&security.cert, &security.key) {
        (Some(cert), Some(key)) => {
            let key = private_key(key).map_err(usage)?;
            builder
                .with_client_auth_cert(certificates(cert).map_err(usage)?, key)
                .map_err(|e| bad(cert, &e))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(CtlError::Usage("--cert and --key go together".into())),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
