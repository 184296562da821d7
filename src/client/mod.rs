//! The library that datanodes, frontends and tools use to talk to metasrv: connection helpers
//! and the frontend's [`MetaClient`] (leader discovery, route cache, row splitting).

pub mod heartbeat;
pub mod meta_client;

pub use heartbeat::{HeartbeatLink, LinkEvent, MetasrvTarget};
pub use meta_client::{
    find_leader, select_endpoints, CachedRoute, ClientError, EndpointBatch, MetaClient,
    ReadPriority, RegionBatch,
};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::v1::store_client::StoreClient;
use crate::proto::v1::RequestHeader;

/// How a client reaches a metasrv that serves TLS (see `src/security/`): the CA that signed
/// its certificate, and this client's own certificate when it requires one. A client's
/// identity comes from its certificate; a bearer token goes on each call (see
/// [`BearerToken`]).
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    /// PEM CA of the server's certificate; set, connections use TLS (`https://`).
    pub ca: Option<std::path::PathBuf>,
    /// PEM certificate and key this client presents.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    /// The name to check the server's certificate against. Default: the endpoint's host.
    pub domain: Option<String>,
}

impl ClientSecurity {
    fn tls(&self) -> Result<Option<ClientTlsConfig>, ConnectError> {
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| ConnectError::Settings(format!("{}: {e}", path.display())))
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(ConnectError::Settings(
                    "a client certificate and its key go together".into(),
                ))
            }
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        Ok(Some(tls))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// A TLS file that cannot be read, a certificate without its key, a token that cannot go
    /// in a header.
    #[error("invalid client settings: {0}")]
    Settings(String),
}

/// Opens a channel to a metasrv at `addr` (`host:port` or a full `http://` URI).
pub async fn connect(addr: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(uri_of(addr, false))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .tcp_nodelay(true)
        .connect()
        .await
}

/// [`connect`], over TLS when `security` names a CA.
pub async fn connect_with(addr: &str, security: &ClientSecurity) -> Result<Channel, ConnectError> {
    let tls = security.tls()?;
    let mut endpoint = Endpoint::from_shared(uri_of(addr, tls.is_some()))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .tcp_nodelay(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect().await?)
}

fn uri_of(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

/// Puts `authorization: Bearer <token>` on every call of a client:
/// `RouterClient::with_interceptor(channel, BearerToken::new(token)?)`.
#[derive(Clone)]
pub struct BearerToken(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl BearerToken {
    pub fn new(token: &str) -> Result<Self, ConnectError> {
        format!("Bearer {token}")
            .parse()
            .map(Self)
            .map_err(|_| ConnectError::Settings("a token must be printable ASCII".into()))
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A Store client on `channel`.
pub fn store_client(channel: Channel) -> StoreClient<Channel> {
    StoreClient::new(channel)
}

/// The header to put on every request to a metasrv of `cluster_id`.
pub fn header(cluster_id: u64, member_id: u64) -> Option<RequestHeader> {
    Some(RequestHeader {
        cluster_id,
        member_id,
    })
}
