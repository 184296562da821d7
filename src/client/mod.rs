//! The library that datanodes, frontends and tools use to talk to metasrv: connection helpers
//! and the frontend's [`MetaClient`] (leader discovery, route cache, row splitting).

pub mod heartbeat;
pub mod meta_client;

pub use heartbeat::{ChannelPool, HeartbeatLink, LinkEvent, MetasrvTarget};
pub use meta_client::{
    find_leader, select_endpoints, CachedRoute, ClientError, EndpointBatch, MetaClient,
    ReadPriority, RegionBatch,
};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::v1::store_client::StoreClient;
use crate::proto::v1::RequestHeader;

/// How a client reaches a metasrv that serves TLS or authenticates callers (see
/// `src/security/`): the CA that signed its certificate, this client's own certificate when it
/// requires one, and a bearer token for callers identified by token instead (it goes on every
/// call; see [`BearerToken`]).
#[derive(Clone, Default)]
pub struct ClientSecurity {
    /// PEM CA of the server's certificate; set, connections use TLS (`https://`).
    pub ca: Option<std::path::PathBuf>,
    /// PEM certificate and key this client presents.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    /// The name to check the server's certificate against. Default: the endpoint's host.
    pub domain: Option<String>,
    /// A bearer token sent on every call (`authorization: Bearer <token>`).
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("domain", &self.domain)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ClientSecurity {
    /// What goes on every call: the token, if any.
    pub fn bearer(&self) -> Result<BearerToken, ConnectError> {
        match &self.token {
            Some(token) => BearerToken::new(token),
            None => Ok(BearerToken(None)),
        }
    }

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

/// [`connect`], over TLS when `security` names a CA. The channel carries no token: wrap the
/// clients made on it with `security.bearer()?` (as [`authed`] does).
pub async fn connect_with(addr: &str, security: &ClientSecurity) -> Result<Channel, ConnectError> {
    security.bearer()?;
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

/// A channel whose every call carries the caller's token (if it has one).
pub type AuthedChannel = tonic::service::interceptor::InterceptedService<Channel, BearerToken>;

/// `channel` with `bearer` on every call: `RouterClient::new(authed(channel, bearer))`.
pub fn authed(channel: Channel, bearer: BearerToken) -> AuthedChannel {
    tonic::service::interceptor::InterceptedService::new(channel, bearer)
}

/// Puts `authorization: Bearer <token>` on every call of a client:
/// `RouterClient::with_interceptor(channel, BearerToken::new(token)?)`. Without a token
/// ([`ClientSecurity::bearer`] of settings with none) it adds nothing.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerToken {
    pub fn new(token: &str) -> Result<Self, ConnectError> {
        format!("Bearer {token}")
            .parse()
            .map(|value| Self(Some(value)))
            .map_err(|_| ConnectError::Settings("a token must be printable ASCII".into()))
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
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
