//! TLS for both listeners, from PEM files: tonic's own TLS for gRPC, and a rustls acceptor in
//! front of axum for HTTP ([`TlsListener`]). With `tls_client_ca` set, both require a client
//! certificate that chains to it; its DNS names become the caller's identity.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::SecurityConfig;

/// TLS handshakes the HTTP listener runs at once, in all and per client address.
const MAX_CONCURRENT_HANDSHAKES: usize = 512;
const MAX_HANDSHAKES_PER_ADDRESS: usize = 16;

/// Handshakes in progress, in all and per client address.
#[derive(Default)]
struct HandshakeLimits {
    by_address: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One admitted handshake; its count goes when it is dropped.
struct HandshakePermit {
    limits: Arc<HandshakeLimits>,
    address: std::net::IpAddr,
}

impl HandshakeLimits {
    fn admit(self: &Arc<Self>, address: std::net::IpAddr) -> Option<HandshakePermit> {
        let mut by_address = self.by_address.lock();
        let total: usize = by_address.values().sum();
        let mine = by_address.entry(address).or_default();
        if total >= MAX_CONCURRENT_HANDSHAKES || *mine >= MAX_HANDSHAKES_PER_ADDRESS {
            if *mine == 0 {
                by_address.remove(&address);
            }
            return None;
        }
        *mine += 1;
        Some(HandshakePermit {
            limits: self.clone(),
            address,
        })
    }
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let mut by_address = self.limits.by_address.lock();
        if let Some(count) = by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the HTTP server to take them.
const ACCEPT_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("bad TLS settings: {0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.display().to_string(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|_| TlsError::Empty {
        path: path.display().to_string(),
        what: "PEM private key",
    })
}

/// tonic's server TLS settings, or None for plaintext.
pub fn grpc_tls(
    config: &SecurityConfig,
) -> Result<Option<tonic::transport::ServerTlsConfig>, TlsError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    // Read through rustls first so a bad file is named here, not deep inside tonic.
    certificates(cert)?;
    private_key(key)?;
    let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
    let mut tls = tonic::transport::ServerTlsConfig::new()
        .identity(identity)
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(ca) = &config.tls_client_ca {
        certificates(ca)?;
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// The HTTP listener's TLS acceptor, or None for plaintext.
pub fn http_tls(config: &SecurityConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &config.tls_client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Config(format!("client CA: {e}")))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsError::Config(format!("client CA: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(certificates(cert)?, private_key(key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// The DNS names of a verified peer certificate chain's end entity.
pub fn peer_names(certs: &[CertificateDer<'_>]) -> Vec<String> {
    let Some(end_entity) = certs.first() else {
        return Vec::new();
    };
    match webpki::EndEntityCert::try_from(end_entity) {
        Ok(cert) => cert.valid_dns_names().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

/// A TCP listener whose connections are TLS-handshaken in their own tasks (a slow or hostile
/// client cannot stall accepting others) before axum takes them.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(ACCEPT_QUEUE);
        let handshakes = Arc::new(HandshakeLimits::default());
        tokio::spawn(async move {
            loop {
                // Ends with the listener (axum drops it at shutdown): the port is released.
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!("HTTP accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Handshakes cost CPU and memory: a bounded number at once, and a bounded
                // share per client address, so that one client holding connections open
                // cannot shut out the others. Over either limit the connection is dropped.
                let Some(permit) = handshakes.admit(peer.ip()) else {
                    tracing::debug!(%peer, "too many TLS handshakes at once; connection dropped");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, handshaken) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    // Counted while handshaking only, not while waiting for axum to take it.
                    drop(permit);
                    match handshake {
                        Ok(Ok(tls)) => {
                            let _ = handshaken.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "HTTP TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "HTTP TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local_addr, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// The verified client-certificate names of an HTTP connection (none over plaintext).
#[derive(Clone, Debug, Default)]
pub struct PeerNames(pub Vec<String>);

impl Connected<IncomingStream<'_, TlsListener>> for PeerNames {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, session) = stream.io().get_ref();
        PeerNames(
            session
                .peer_certificates()
                .map(peer_names)
                .unwrap_or_default(),
        )
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for PeerNames {
    fn connect_info(_stream: IncomingStream<'_, TcpListener>) -> Self {
        PeerNames::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_are_bounded_per_address_and_in_all() {
        let limits = Arc::new(HandshakeLimits::default());
        let one: std::net::IpAddr = [10, 0, 0, 1].into();
        let held: Vec<_> = (0..MAX_HANDSHAKES_PER_ADDRESS)
            .map(|_| limits.admit(one).expect("under the per-address limit"))
            .collect();
        assert!(limits.admit(one).is_none(), "one address's share is full");
        let other: std::net::IpAddr = [10, 0, 0, 2].into();
        assert!(
            limits.admit(other).is_some(),
            "another address still gets in"
        );
        drop(held);
        assert!(
            limits.by_address.lock().is_empty(),
            "every count went with its permit"
        );
        let many: Vec<_> = (0..MAX_CONCURRENT_HANDSHAKES)
            .map(|i| {
                let address: std::net::IpAddr = [10, 1, (i / 256) as u8, (i % 256) as u8].into();
                limits.admit(address).expect("under the total limit")
            })
            .collect();
        assert!(limits.admit(other).is_none(), "the total is full");
        drop(many);
        assert!(limits.admit(other).is_some());
    }
}
