//! Who may call what. TLS on both listeners (see [`tls`]), and, when any identity is
//! configured, authentication and authorization of every gRPC call ([`layer`]) and HTTP request
//! (`http.rs`): callers are datanodes, frontends or operators.
//!
//! An identity comes from the client certificate (its DNS subject alternative names, looked up in
//! `security.cert_roles`; the certificate is verified against `security.tls_client_ca` first) or
//! from a bearer token (`authorization: Bearer <token>`, whose SHA-256 is looked up in
//! `security.tokens`; tokens are never stored in clear). With neither configured the server is
//! open, as a standalone metasrv with no setup must be, and it says so at startup.
//!
//! The permission table is [`required_roles`]: a pure function of the method, unit-tested.

pub mod layer;
pub mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tonic::Status;

/// A kind of caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Heartbeat streams and the datanode Election service; reads routes and the Store.
    Datanode,
    /// Routes, catalog lists and Store reads.
    Frontend,
    /// Everything: DDL, admin operations, maintenance, Store writes, internal keys.
    Operator,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Datanode => "datanode",
            Role::Frontend => "frontend",
            Role::Operator => "operator",
        })
    }
}

/// A bearer token a caller may present, stored as its SHA-256.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who holds it (named in logs and refusals).
    pub name: String,
    /// Lowercase hex SHA-256 of the token (`metasrv hash-token <token>` prints it).
    pub sha256: String,
    pub roles: Vec<Role>,
}

/// The `[security]` section.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// PEM certificate chain of this server; with `tls_key`, both listeners serve TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA that client certificates must chain to; set, every client must present one.
    pub tls_client_ca: Option<PathBuf>,
    /// Client-certificate DNS names and their roles.
    pub cert_roles: BTreeMap<String, Vec<Role>>,
    /// Bearer tokens and their roles.
    pub tokens: Vec<TokenEntry>,
}

impl SecurityConfig {
    /// Whether callers must identify themselves.
    pub fn authenticates(&self) -> bool {
        !self.cert_roles.is_empty() || !self.tokens.is_empty()
    }

    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// Checks that the settings hang together (files are read when the server starts).
    pub fn validate(&self) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("security.tls_cert and security.tls_key go together".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err("security.tls_client_ca needs security.tls_cert and tls_key".into());
        }
        if !self.cert_roles.is_empty() && self.tls_client_ca.is_none() {
            return Err(
                "security.cert_roles needs security.tls_client_ca (client certificates are \
                 verified against it)"
                    .into(),
            );
        }
        for token in &self.tokens {
            let valid = token.sha256.len() == 64
                && token
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !valid {
                return Err(format!(
                    "security.tokens: the sha256 of {:?} must be 64 lowercase hex digits \
                     (`metasrv hash-token <token>` prints it)",
                    token.name
                ));
            }
        }
        Ok(())
    }

    /// One line for the startup log: how this server is exposed.
    pub fn describe(&self) -> String {
        let transport = match (&self.tls_cert, &self.tls_client_ca) {
            (None, _) => "plaintext",
            (Some(_), None) => "TLS",
            (Some(_), Some(_)) => "TLS with client certificates",
        };
        if self.authenticates() {
            format!(
                "{transport}; callers authenticate ({} certificate names, {} tokens)",
                self.cert_roles.len(),
                self.tokens.len()
            )
        } else {
            format!(
                "{transport}; OPEN: no authentication is configured, anyone who reaches the \
                 ports may call every API (set [security] to restrict)"
            )
        }
    }
}

/// The lowercase hex SHA-256 of `token`, as `security.tokens` stores it.
pub fn hash_token(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Who is calling, as far as the server could tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// No authentication configured: everything is allowed.
    Open,
    /// Nothing presented (or nothing recognised).
    Anonymous,
    Known {
        name: String,
        roles: Vec<Role>,
    },
}

impl Identity {
    pub fn has(&self, role: Role) -> bool {
        match self {
            Identity::Open => true,
            Identity::Anonymous => false,
            Identity::Known { roles, .. } => roles.contains(&role),
        }
    }

    /// May read metasrv's own keys through the Store API.
    pub fn reads_internal_keys(&self) -> bool {
        self.has(Role::Operator)
    }
}

/// Resolves identities from what a caller presents.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    enabled: bool,
    cert_roles: BTreeMap<String, Vec<Role>>,
    /// By SHA-256 hex.
    tokens: BTreeMap<String, (String, Vec<Role>)>,
}

impl Authenticator {
    pub fn new(config: &SecurityConfig) -> Self {
        Self {
            enabled: config.authenticates(),
            cert_roles: config.cert_roles.clone(),
            tokens: config
                .tokens
                .iter()
                .map(|t| (t.sha256.clone(), (t.name.clone(), t.roles.clone())))
                .collect(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The identity behind a verified client certificate's DNS names and an `authorization`
    /// header value; a token that matches nothing is refused rather than ignored.
    pub fn identify(
        &self,
        cert_names: &[String],
        authorization: Option<&str>,
    ) -> Result<Identity, Status> {
        if !self.enabled {
            return Ok(Identity::Open);
        }
        let mut name = None;
        let mut roles: Vec<Role> = Vec::new();
        for cert_name in cert_names {
            if let Some(granted) = self.cert_roles.get(cert_name) {
                name.get_or_insert_with(|| cert_name.clone());
                roles.extend(granted);
            }
        }
        if let Some(value) = authorization {
            let token = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated("the authorization header must be `Bearer <token>`")
                })?;
            match self.tokens.get(&hash_token(token.trim())) {
                Some((holder, granted)) => {
                    name.get_or_insert_with(|| holder.clone());
                    roles.extend(granted);
                }
                None => return Err(Status::unauthenticated("the bearer token is not known")),
            }
        }
        roles.sort();
        roles.dedup();
        Ok(match name {
            Some(name) => Identity::Known { name, roles },
            None => Identity::Anonymous,
        })
    }
}

/// The roles any one of which may call the gRPC method at `path` (`/package.Service/Method`);
/// `None`: anyone, even unauthenticated (health checks and reflection, for probes and tools).
/// Operators may call everything.
pub fn required_roles(path: &str) -> Option<&'static [Role]> {
    use Role::*;
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    if service.starts_with("grpc.health.") || service.starts_with("grpc.reflection.") {
        return None;
    }
    Some(match (service, method) {
        ("metasrv.v1.Heartbeat", "Heartbeat") => &[Datanode, Operator],
        ("metasrv.v1.Heartbeat", "AskLeader") => &[Datanode, Frontend, Operator],
        ("metasrv.v1.Router", "Route" | "ListCatalogs" | "ListSchemas") => {
            &[Frontend, Datanode, Operator]
        }
        ("metasrv.v1.Store", "Range" | "BatchGet") => &[Frontend, Datanode, Operator],
        ("metasrv.v1.Election", _) => &[Datanode, Operator],
        // DDL, Store writes, Admin, and anything not listed.
        _ => &[Operator],
    })
}

/// Whether `identity` may call `path`: `UNAUTHENTICATED` with what to present, or
/// `PERMISSION_DENIED` naming the roles needed.
pub fn authorize(path: &str, identity: &Identity) -> Result<(), Status> {
    let Some(roles) = required_roles(path) else {
        return Ok(());
    };
    check_roles(path, roles, identity)
}

/// The HTTP counterpart: `/health` and `/metrics` are open to probes; other reads need any
/// identity; anything that changes state needs an operator.
/// What HTTP serves to anyone: probes (`/health`, `/metrics`), and the dashboard's page, its
/// assets and the API description, which hold no cluster data (a browser cannot put a token
/// on a page load; the page asks for one and sends it with every API call it makes).
pub fn is_open_http_path(method: &axum::http::Method, path: &str) -> bool {
    path == "/health"
        || path == "/metrics"
        || (method == axum::http::Method::GET
            && (path == "/dashboard"
                || path.starts_with("/dashboard/")
                || path == "/v1/openapi.json"))
}

pub fn authorize_http(
    method: &axum::http::Method,
    path: &str,
    identity: &Identity,
) -> Result<(), Status> {
    use Role::*;
    if is_open_http_path(method, path) {
        return Ok(());
    }
    let roles: &[Role] = if method == axum::http::Method::GET || method == axum::http::Method::HEAD
    {
        &[Datanode, Frontend, Operator]
    } else {
        &[Operator]
    };
    check_roles(&format!("{method} {path}"), roles, identity)
}

fn check_roles(what: &str, roles: &[Role], identity: &Identity) -> Result<(), Status> {
    match identity {
        Identity::Open => Ok(()),
        Identity::Anonymous => Err(Status::unauthenticated(format!(
            "{what} needs a caller identity: present a client certificate or an \
             `authorization: Bearer <token>` header"
        ))),
        Identity::Known { .. } if roles.iter().any(|r| identity.has(*r)) => Ok(()),
        Identity::Known { name, roles: held } => Err(Status::permission_denied(format!(
            "{name} (roles: {}) may not call {what}: it needs one of {}",
            list(held),
            list(roles)
        ))),
    }
}

fn list(roles: &[Role]) -> String {
    if roles.is_empty() {
        return "none".into();
    }
    roles
        .iter()
        .map(Role::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(roles: &[Role]) -> Identity {
        Identity::Known {
            name: "caller".into(),
            roles: roles.to_vec(),
        }
    }

    #[test]
    fn each_role_reaches_exactly_its_methods() {
        use Role::*;
        let cases = [
            ("/metasrv.v1.Heartbeat/Heartbeat", [true, false, true]),
            ("/metasrv.v1.Heartbeat/AskLeader", [true, true, true]),
            ("/metasrv.v1.Router/Route", [true, true, true]),
            ("/metasrv.v1.Router/CreateTable", [false, false, true]),
            ("/metasrv.v1.Router/DropTable", [false, false, true]),
            ("/metasrv.v1.Store/Range", [true, true, true]),
            ("/metasrv.v1.Store/Put", [false, false, true]),
            ("/metasrv.v1.Store/DeleteRange", [false, false, true]),
            ("/metasrv.v1.Election/Campaign", [true, false, true]),
            ("/metasrv.v1.Admin/MigrateRegion", [false, false, true]),
            ("/metasrv.v1.Unknown/Anything", [false, false, true]),
        ];
        for (path, allowed) in cases {
            for (role, allowed) in [Datanode, Frontend, Operator].into_iter().zip(allowed) {
                let result = authorize(path, &known(&[role]));
                assert_eq!(result.is_ok(), allowed, "{role} on {path}: {result:?}");
                if let Err(status) = result {
                    assert_eq!(status.code(), tonic::Code::PermissionDenied);
                    assert!(status.message().contains("needs one of"), "{status:?}");
                }
            }
        }
        let anonymous =
            authorize("/metasrv.v1.Router/Route", &Identity::Anonymous).expect_err("anonymous");
        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
        assert!(authorize("/grpc.health.v1.Health/Check", &Identity::Anonymous).is_ok());
        assert!(authorize(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            &Identity::Anonymous
        )
        .is_ok());
        assert!(authorize("/metasrv.v1.Admin/DrainNode", &Identity::Open).is_ok());
    }

    #[test]
    fn http_reads_need_an_identity_and_changes_an_operator() {
        let get = axum::http::Method::GET;
        let put = axum::http::Method::PUT;
        assert!(authorize_http(&get, "/health", &Identity::Anonymous).is_ok());
        assert!(authorize_http(&get, "/metrics", &Identity::Anonymous).is_ok());
        assert!(authorize_http(&get, "/v1/nodes", &Identity::Anonymous).is_err());
        assert!(authorize_http(&get, "/v1/nodes", &known(&[Role::Frontend])).is_ok());
        let refused = authorize_http(&put, "/v1/maintenance", &known(&[Role::Datanode]))
            .expect_err("a datanode may not turn failover off");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(authorize_http(&put, "/v1/maintenance", &known(&[Role::Operator])).is_ok());
    }

    #[test]
    fn identities_come_from_certificate_names_and_tokens() {
        let config = SecurityConfig {
            cert_roles: BTreeMap::from([("dn-1.cluster".to_owned(), vec![Role::Datanode])]),
            tokens: vec![TokenEntry {
                name: "ops".into(),
                sha256: hash_token("s3cret"),
                roles: vec![Role::Operator],
            }],
            ..SecurityConfig::default()
        };
        let auth = Authenticator::new(&config);
        assert_eq!(
            auth.identify(&["dn-1.cluster".into()], None).expect("cert"),
            known(&[Role::Datanode]).renamed("dn-1.cluster")
        );
        assert_eq!(
            auth.identify(&[], Some("Bearer s3cret")).expect("token"),
            known(&[Role::Operator]).renamed("ops")
        );
        assert_eq!(
            auth.identify(&["stranger".into()], None)
                .expect("unknown cert"),
            Identity::Anonymous
        );
        let wrong = auth
            .identify(&[], Some("Bearer guess"))
            .expect_err("unknown token");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let malformed = auth
            .identify(&[], Some("Basic abc"))
            .expect_err("not bearer");
        assert_eq!(malformed.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            Authenticator::new(&SecurityConfig::default())
                .identify(&[], None)
                .expect("open"),
            Identity::Open
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let only_cert = SecurityConfig {
            tls_cert: Some("c.pem".into()),
            ..SecurityConfig::default()
        };
        assert!(only_cert.validate().is_err());
        let names_without_ca = SecurityConfig {
            cert_roles: BTreeMap::from([("x".to_owned(), vec![Role::Frontend])]),
            ..SecurityConfig::default()
        };
        assert!(names_without_ca.validate().is_err());
        let bad_hash = SecurityConfig {
            tokens: vec![TokenEntry {
                name: "t".into(),
                sha256: "s3cret".into(),
                roles: vec![],
            }],
            ..SecurityConfig::default()
        };
        assert!(bad_hash
            .validate()
            .expect_err("clear text")
            .contains("hash-token"));
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    impl Identity {
        fn renamed(self, name: &str) -> Self {
            match self {
                Identity::Known { roles, .. } => Identity::Known {
                    name: name.into(),
                    roles,
                },
                other => other,
            }
        }
    }
}
