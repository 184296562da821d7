//! Control-plane safety: metasrv's own metadata is out of reach of the public Store and Election
//! APIs, whatever a client sends.

use std::sync::Arc;
use std::time::Duration;

use metasrv::actors::cluster_view::NodeStatus;
use metasrv::sim::{SimDatanode, SimDatanodeConfig};

use metasrv::client::{header, store_client};
use metasrv::proto::v1 as pb;
use metasrv::proto::v1::election_client::ElectionClient;
use metasrv::proto::v1::router_client::RouterClient;
use metasrv::store::embedded::EmbeddedStore;
use metasrv::store::KvBackend;
use metasrv::Config;
use tonic::Code;

use crate::harness::{wait_for, wait_status, EtcdProcess, TestServer};

const CLUSTER: u64 = 13;

fn config() -> Config {
    Config {
        cluster_id: CLUSTER,
        ..Config::default()
    }
}

fn assert_denied<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
            assert!(
                status.message().contains("metasrv's own")
                    || status.message().contains("not granted")
                    || status.message().contains("not a candidacy"),
                "{what}: the reason should say whose key it is: {status:?}"
            );
        }
        Ok(answer) => panic!("{what} should be refused, got {answer:?}"),
    }
}

fn table_name() -> pb::TableName {
    pb::TableName {
        catalog_name: "greptime".into(),
        schema_name: "public".into(),
        table_name: "guarded".into(),
    }
}

async fn route_of_guarded_table(server: &TestServer) -> Result<pb::RouteResponse, tonic::Status> {
    RouterClient::new(server.channel().await)
        .route(pb::RouteRequest {
            header: header(CLUSTER, 0),
            table_names: vec![table_name()],
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn one_live_datanode(server: &TestServer) -> SimDatanode {
    let datanode =
        SimDatanode::start_serving(server.channel().await, SimDatanodeConfig::new(CLUSTER, 1))
            .await
            .expect("a simulated datanode starts");
    wait_status(server, 1, NodeStatus::Alive, Duration::from_secs(10)).await;
    datanode
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_writes_and_deletes_of_internal_keys_are_refused_and_the_catalog_survives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn KvBackend> =
        Arc::new(EmbeddedStore::open(dir.path()).expect("open the embedded store"));
    let server = TestServer::start(store, config()).await;
    let datanode = one_live_datanode(&server).await;
    RouterClient::new(server.channel().await)
        .create_table(pb::CreateTableRequest {
            header: header(CLUSTER, 0),
            table_name: Some(table_name()),
            schema: Some(crate::router::schema()),
            partition_rule: crate::router::hash_rule(4),
            if_not_exists: false,
            replicas: 1,
        })
        .await
        .expect("create a table");
    let mut client = store_client(server.channel().await);

    let put = |key: &[u8]| pb::PutRequest {
        header: header(CLUSTER, 0),
        key: key.to_vec(),
        value: b"x".to_vec(),
        prev_kv: false,
    };
    let delete_range = |key: &[u8], range_end: &[u8]| pb::DeleteRangeRequest {
        header: header(CLUSTER, 0),
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        prev_kv: false,
    };
    assert_denied(client.put(put(b"__meta/table/1")).await, "Put __meta/");
    assert_denied(
        client.put(put(b"__election/metasrv/1")).await,
        "Put __election/",
    );
    assert_denied(
        client
            .batch_put(pb::BatchPutRequest {
                header: header(CLUSTER, 0),
                kvs: vec![
                    pb::KeyValue {
                        key: b"user/a".to_vec(),
                        value: b"1".to_vec(),
                    },
                    pb::KeyValue {
                        key: b"__meta/maintenance".to_vec(),
                        value: b"true".to_vec(),
                    },
                ],
                prev_kv: false,
            })
            .await,
        "BatchPut with one internal key",
    );
    assert_denied(
        client
            .batch_delete(pb::BatchDeleteRequest {
                header: header(CLUSTER, 0),
                keys: vec![b"__meta/table_route/1".to_vec()],
                prev_kv: false,
            })
            .await,
        "BatchDelete",
    );
    assert_denied(
        client
            .compare_and_put(pb::CompareAndPutRequest {
                header: header(CLUSTER, 0),
                key: b"__meta/id/table".to_vec(),
                expect: Vec::new(),
                value: b"0".to_vec(),
            })
            .await,
        "CompareAndPut",
    );
    // Every key, every key from below the prefix, and a range that crosses it.
    assert_denied(
        client.delete_range(delete_range(b"\0", b"\0")).await,
        "DeleteRange of every key",
    );
    assert_denied(
        client.delete_range(delete_range(b"", b"\0")).await,
        "DeleteRange from the empty key",
    );
    assert_denied(
        client.delete_range(delete_range(b"A", b"z")).await,
        "DeleteRange across the prefix",
    );
    assert_denied(
        client.delete_range(delete_range(b"__meta/", b"")).await,
        "DeleteRange of one internal key",
    );

    // The user key space still works, including a delete that stops short of the prefix.
    client.put(put(b"user/a")).await.expect("a user put");
    let deleted = client
        .delete_range(delete_range(b"user/", b"user0"))
        .await
        .expect("a user delete")
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    // Reads of internal keys are allowed (operators inspect them).
    let routes = client
        .range(pb::RangeRequest {
            header: header(CLUSTER, 0),
            key: b"__meta/table_route/".to_vec(),
            range_end: b"__meta/table_route0".to_vec(),
            limit: 0,
            keys_only: true,
        })
        .await
        .expect("read internal keys")
        .into_inner();
    assert_eq!(routes.kvs.len(), 1, "one table route: {routes:?}");

    // A restart loads the catalog intact.
    datanode.kill();
    server.stop().await;
    // The stopped server's last tasks release the file shortly after it stops.
    let store: Arc<dyn KvBackend> = Arc::new(
        wait_for(
            "the stopped server to release the embedded store",
            Duration::from_secs(10),
            || async { EmbeddedStore::open(dir.path()).ok() },
        )
        .await,
    );
    let server = TestServer::start(store, config()).await;
    let route = route_of_guarded_table(&server)
        .await
        .expect("the table survives the refused deletes and a restart");
    assert_eq!(route.routes[0].regions.len(), 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_clients_cannot_touch_metasrvs_own_election() {
    let etcd = EtcdProcess::start();
    let store = etcd.store("/security/election", CLUSTER).await;
    let prefix = store.as_etcd().expect("an etcd store").prefix().to_vec();
    let server = TestServer::start(store, config()).await;
    let mut client = store_client(server.channel().await);
    // What any client can read: metasrv's own candidacy.
    let own = client
        .range(pb::RangeRequest {
            header: header(CLUSTER, 0),
            key: b"__election/metasrv".to_vec(),
            range_end: b"__election/metasrv0".to_vec(),
            limit: 0,
            keys_only: false,
        })
        .await
        .expect("range")
        .into_inner();
    let relative = own.kvs.first().expect("metasrv's election key").key.clone();
    let lease_hex = String::from_utf8_lossy(&relative)
        .rsplit('/')
        .next()
        .map(str::to_owned)
        .expect("a lease suffix");
    let lease = i64::from_str_radix(&lease_hex, 16).expect("the key ends in the lease id");
    let mut full_key = prefix.clone();
    full_key.extend_from_slice(&relative);
    let mut metasrv_rev = 0;
    {
        // The revision a Resign would need, as a client could find it with etcd's own API.
        let mut raw = etcd_client::Client::connect([etcd.config("").endpoints[0].clone()], None)
            .await
            .expect("connect to etcd");
        if let Some(kv) = raw
            .get(full_key.clone(), None)
            .await
            .expect("get")
            .kvs()
            .first()
        {
            metasrv_rev = kv.create_revision();
        }
    }
    assert!(metasrv_rev > 0, "metasrv's election key exists");

    let mut election = ElectionClient::new(server.channel().await);
    let stolen = pb::LeaderKey {
        name: "metasrv".into(),
        key: full_key.clone(),
        lease,
        rev: metasrv_rev,
    };
    assert_denied(
        election
            .resign(pb::ResignRequest {
                header: header(CLUSTER, 0),
                leader: Some(stolen.clone()),
            })
            .await,
        "Resign of metasrv's key",
    );
    assert_denied(
        election
            .proclaim(pb::ProclaimRequest {
                header: header(CLUSTER, 0),
                leader: Some(stolen),
                value: b"evil".to_vec(),
            })
            .await,
        "Proclaim on metasrv's key",
    );
    assert_denied(
        election
            .keep_alive(pb::KeepAliveRequest {
                header: header(CLUSTER, 0),
                lease,
            })
            .await,
        "KeepAlive of metasrv's lease",
    );
    assert_denied(
        election
            .campaign(pb::CampaignRequest {
                header: header(CLUSTER, 0),
                name: "squatter".into(),
                value: b"x".to_vec(),
                ttl_millis: 0,
                lease,
            })
            .await,
        "Campaign on metasrv's lease",
    );

    // Nothing moved: the member still leads and its key is intact.
    assert!(route_of_guarded_table(&server)
        .await
        .is_err_and(|s| s.code() == Code::NotFound));
    let after = client
        .range(pb::RangeRequest {
            header: header(CLUSTER, 0),
            key: relative.clone(),
            range_end: Vec::new(),
            limit: 0,
            keys_only: false,
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(
        after.kvs.first().map(|kv| kv.value.clone()),
        own.kvs.first().map(|kv| kv.value.clone()),
        "metasrv's candidacy is untouched"
    );
    // A datanode's own lease and candidacy still work through the same calls.
    let granted = election
        .campaign(pb::CampaignRequest {
            header: header(CLUSTER, 0),
            name: "writers".into(),
            value: b"dn-1".to_vec(),
            ttl_millis: 5_000,
            lease: 0,
        })
        .await
        .expect("a datanode campaign")
        .into_inner()
        .leader
        .expect("a leader key");
    let ttl = election
        .keep_alive(pb::KeepAliveRequest {
            header: header(CLUSTER, 0),
            lease: granted.lease,
        })
        .await
        .expect("keep alive its own lease")
        .into_inner();
    assert!(ttl.ttl_millis > 0);
    election
        .resign(pb::ResignRequest {
            header: header(CLUSTER, 0),
            leader: Some(granted),
        })
        .await
        .expect("resign its own candidacy");
    server.stop().await;
}

// ---- TLS and authentication ---------------------------------------------------------------

pub(crate) mod pki {
    //! A test CA, a server certificate and client certificates, as PEM files in a temp dir.
    use std::path::PathBuf;

    use rcgen::{
        BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, SanType,
    };

    pub struct Pki {
        pub dir: tempfile::TempDir,
        ca: (Certificate, KeyPair),
        other_ca: (Certificate, KeyPair),
    }

    fn make_ca(name: &str) -> (Certificate, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        (params.self_signed(&key).expect("CA"), key)
    }

    impl Pki {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let ca = make_ca("metasrv test CA");
            let other_ca = make_ca("someone else's CA");
            std::fs::write(dir.path().join("ca.pem"), ca.0.pem()).expect("write");
            let pki = Self { dir, ca, other_ca };
            let key = KeyPair::generate().expect("key");
            let mut server = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
            server
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
            server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let cert = server
                .signed_by(&key, &pki.ca.0, &pki.ca.1)
                .expect("server cert");
            pki.write("server", &cert.pem(), &key.serialize_pem());
            pki
        }

        fn write(&self, name: &str, cert: &str, key: &str) -> (PathBuf, PathBuf) {
            let cert_path = self.dir.path().join(format!("{name}.pem"));
            let key_path = self.dir.path().join(format!("{name}.key"));
            std::fs::write(&cert_path, cert).expect("write");
            std::fs::write(&key_path, key).expect("write");
            (cert_path, key_path)
        }

        pub fn path(&self, file: &str) -> PathBuf {
            self.dir.path().join(file)
        }

        /// A client certificate for DNS name `name`, from the test CA (or another CA).
        pub fn client(&self, name: &str, trusted: bool) -> (PathBuf, PathBuf) {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let (issuer, issuer_key) = if trusted { &self.ca } else { &self.other_ca };
            let cert = params
                .signed_by(&key, issuer, issuer_key)
                .expect("client cert");
            let file = if trusted {
                name.to_owned()
            } else {
                format!("untrusted-{name}")
            };
            self.write(&file, &cert.pem(), &key.serialize_pem())
        }
    }
}

use metasrv::client::{connect_with, BearerToken, ClientSecurity};
use metasrv::proto::v1::admin_client::AdminClient;
use metasrv::proto::v1::heartbeat_client::HeartbeatClient;
use metasrv::security::{hash_token, Role, SecurityConfig, TokenEntry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const OPS_TOKEN: &str = "ops-secret-token";

pub(crate) fn secure_config(pki: &pki::Pki) -> Config {
    Config {
        cluster_id: CLUSTER,
        security: SecurityConfig {
            tls_cert: Some(pki.path("server.pem")),
            tls_key: Some(pki.path("server.key")),
            tls_client_ca: Some(pki.path("ca.pem")),
            cert_roles: [
                ("dn-1".to_owned(), vec![Role::Datanode]),
                ("fe-1".to_owned(), vec![Role::Frontend]),
            ]
            .into(),
            tokens: vec![TokenEntry {
                name: "ops".into(),
                sha256: hash_token(OPS_TOKEN),
                roles: vec![Role::Operator],
            }],
        },
        ..Config::default()
    }
}

fn as_client(pki: &pki::Pki, name: &str, trusted: bool) -> ClientSecurity {
    let (cert, key) = pki.client(name, trusted);
    ClientSecurity {
        ca: Some(pki.path("ca.pem")),
        cert: Some(cert),
        key: Some(key),
        domain: Some("localhost".into()),
        token: None,
    }
}

async fn ask_leader(server: &TestServer, security: &ClientSecurity) -> Result<(), String> {
    let channel = connect_with(&server.grpc_addr.to_string(), security)
        .await
        .map_err(|e| e.to_string())?;
    HeartbeatClient::new(channel)
        .ask_leader(pb::AskLeaderRequest {
            header: header(CLUSTER, 0),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

/// One HTTP/1.0 request over TLS as `security`'s client; the status code and body.
async fn https(
    addr: std::net::SocketAddr,
    security: &ClientSecurity,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let read =
        |p: &Option<std::path::PathBuf>| std::fs::read(p.as_ref().expect("path")).expect("read");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(&security.ca)) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&security.cert))
        .map(|c| c.expect("pem"))
        .collect();
    let key = PrivateKeyDer::from_pem_slice(&read(&security.key)).expect("key");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .expect("client cert");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    tls.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {text:?}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((code, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_refuses_plaintext_and_certificates_it_does_not_trust() {
    let pki = pki::Pki::new();
    let (_fixture, store) = crate::store_conformance::embedded();
    let server = TestServer::start(store, secure_config(&pki)).await;

    let plaintext = ask_leader(&server, &ClientSecurity::default()).await;
    assert!(
        plaintext.is_err(),
        "plaintext gRPC was served: {plaintext:?}"
    );
    let untrusted = ask_leader(&server, &as_client(&pki, "fe-1", false)).await;
    assert!(untrusted.is_err(), "an untrusted certificate was accepted");
    let without_cert = ClientSecurity {
        cert: None,
        key: None,
        ..as_client(&pki, "fe-1", true)
    };
    let anonymous = ask_leader(&server, &without_cert).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was accepted"
    );
    ask_leader(&server, &as_client(&pki, "fe-1", true))
        .await
        .expect("a trusted frontend certificate is served");

    // HTTP: plaintext gets no HTTP answer; TLS with a trusted certificate does.
    let mut raw = tokio::net::TcpStream::connect(server.http_addr)
        .await
        .expect("connect");
    raw.write_all(b"GET /health HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/1"),
        "plaintext HTTP was served: {:?}",
        String::from_utf8_lossy(&answer)
    );
    let (code, body) = https(
        server.http_addr,
        &as_client(&pki, "fe-1", true),
        "GET",
        "/health",
        None,
    )
    .await
    .expect("HTTPS");
    assert_eq!(code, 200, "{body}");
    assert!(
        https(
            server.http_addr,
            &as_client(&pki, "fe-1", false),
            "GET",
            "/health",
            None
        )
        .await
        .is_err(),
        "HTTPS with an untrusted certificate was served"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_refused_what_it_may_not_do() {
    let pki = pki::Pki::new();
    let (_fixture, store) = crate::store_conformance::embedded();
    let server = TestServer::start(store, secure_config(&pki)).await;
    let addr = server.grpc_addr.to_string();
    let code_of = |result: Result<(), tonic::Status>| result.err().map(|s| s.code());
    let put = |key: &str| pb::PutRequest {
        header: header(CLUSTER, 0),
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        prev_kv: false,
    };
    let range = |key: &str| pb::RangeRequest {
        header: header(CLUSTER, 0),
        key: key.as_bytes().to_vec(),
        range_end: vec![0],
        limit: 0,
        keys_only: true,
    };
    let create = pb::CreateTableRequest {
        header: header(CLUSTER, 0),
        table_name: Some(table_name()),
        schema: Some(crate::router::schema()),
        partition_rule: crate::router::hash_rule(1),
        if_not_exists: false,
        replicas: 1,
    };

    // A datanode heartbeats, and may neither create tables nor write the Store.
    let datanode = connect_with(&addr, &as_client(&pki, "dn-1", true))
        .await
        .expect("connect");
    let mut stream = HeartbeatClient::new(datanode.clone())
        .heartbeat(tokio_stream::iter([crate::harness::raw_heartbeat(
            CLUSTER, 1,
        )]))
        .await
        .expect("a datanode may heartbeat")
        .into_inner();
    assert!(stream.message().await.expect("answer").is_some());
    let refused = RouterClient::new(datanode.clone())
        .create_table(create.clone())
        .await
        .expect_err("a datanode may not create tables");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("dn-1"),
        "names the caller: {refused:?}"
    );
    assert_eq!(
        code_of(store_client(datanode).put(put("user/a")).await.map(|_| ())),
        Some(Code::PermissionDenied)
    );

    // A frontend routes and reads user keys; not internal keys, writes or heartbeats.
    let frontend = connect_with(&addr, &as_client(&pki, "fe-1", true))
        .await
        .expect("connect");
    assert_eq!(
        code_of(route_with(frontend.clone()).await),
        Some(Code::NotFound),
        "a frontend reaches Route (the table does not exist)"
    );
    let mut frontend_store = store_client(frontend.clone());
    frontend_store
        .range(range("user/"))
        .await
        .expect("a frontend reads user keys");
    assert_eq!(
        code_of(frontend_store.range(range("__meta/")).await.map(|_| ())),
        Some(Code::PermissionDenied)
    );
    assert_eq!(
        code_of(frontend_store.put(put("user/a")).await.map(|_| ())),
        Some(Code::PermissionDenied)
    );
    let heartbeat = HeartbeatClient::new(frontend)
        .heartbeat(tokio_stream::iter(Vec::<pb::HeartbeatRequest>::new()))
        .await;
    assert_eq!(
        heartbeat.err().map(|s| s.code()),
        Some(Code::PermissionDenied)
    );

    // An operator (a certificate with no role of its own, plus the token) may do anything.
    let tool = as_client(&pki, "tool-1", true);
    let tool_channel = connect_with(&addr, &tool).await.expect("connect");
    let token = BearerToken::new(OPS_TOKEN).expect("token");
    let mut operator_store = metasrv::proto::v1::store_client::StoreClient::with_interceptor(
        tool_channel.clone(),
        token.clone(),
    );
    operator_store
        .put(put("user/a"))
        .await
        .expect("an operator writes");
    operator_store
        .range(range("__meta/"))
        .await
        .expect("an operator reads internal keys");
    let missing = AdminClient::with_interceptor(tool_channel.clone(), token)
        .get_procedure(pb::GetProcedureRequest {
            header: header(CLUSTER, 0),
            procedure_id: "none".into(),
        })
        .await
        .expect_err("no such procedure");
    assert_eq!(
        missing.code(),
        Code::NotFound,
        "reached the Admin service: {missing:?}"
    );
    // Without the token that certificate is nobody; a wrong token is refused.
    assert_eq!(
        code_of(route_with(tool_channel.clone()).await),
        Some(Code::Unauthenticated)
    );
    let wrong =
        RouterClient::with_interceptor(tool_channel, BearerToken::new("guess").expect("token"))
            .route(pb::RouteRequest {
                header: header(CLUSTER, 0),
                table_names: vec![table_name()],
            })
            .await
            .expect_err("a wrong token");
    assert_eq!(wrong.code(), Code::Unauthenticated);

    // HTTP: reads need an identity; turning failover off needs an operator.
    let (code, _) = https(server.http_addr, &tool, "GET", "/v1/nodes", None)
        .await
        .expect("HTTPS");
    assert_eq!(code, 401);
    let frontend_cert = as_client(&pki, "fe-1", true);
    let (code, body) = https(server.http_addr, &frontend_cert, "GET", "/v1/nodes", None)
        .await
        .expect("HTTPS");
    assert_eq!(code, 200, "{body}");
    let (code, body) = https(
        server.http_addr,
        &frontend_cert,
        "PUT",
        "/v1/maintenance?enabled=true",
        None,
    )
    .await
    .expect("HTTPS");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("operator"), "{body}");
    let (code, body) = https(
        server.http_addr,
        &tool,
        "PUT",
        "/v1/maintenance?enabled=false",
        Some(OPS_TOKEN),
    )
    .await
    .expect("HTTPS");
    assert_eq!(code, 200, "{body}");
    server.stop().await;
}

async fn route_with(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    RouterClient::new(channel)
        .route(pb::RouteRequest {
            header: header(CLUSTER, 0),
            table_names: vec![table_name()],
        })
        .await
        .map(|_| ())
}

/// Tokens reach metasrv from every client of the library: the frontend's MetaClient, the
/// datanode's heartbeat link (the simulated datanode's), each with only its role's rights; a
/// client without credentials gets a prompt, clear refusal instead of retrying for a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_clients_present_their_tokens_on_every_call() {
    use metasrv::catalog::model::TableName;
    use metasrv::client::{ClientError, MetaClient, MetasrvTarget};
    use metasrv::sim::SimEvent;

    let token = |name: &str, role: Role| TokenEntry {
        name: name.into(),
        sha256: hash_token(&format!("{name}-secret")),
        roles: vec![role],
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(
        Arc::new(EmbeddedStore::open(dir.path()).expect("open the embedded store")),
        Config {
            security: SecurityConfig {
                tokens: vec![
                    token("dn", Role::Datanode),
                    token("fe", Role::Frontend),
                    token("ops", Role::Operator),
                ],
                ..SecurityConfig::default()
            },
            ..config()
        },
    )
    .await;
    let endpoints = vec![server.grpc_addr.to_string()];
    let with_token = |name: Option<&str>| ClientSecurity {
        token: name.map(|name| format!("{name}-secret")),
        ..ClientSecurity::default()
    };

    let datanode = SimDatanode::start_on(
        MetasrvTarget::SecureCluster(endpoints.clone(), with_token(Some("dn"))),
        SimDatanodeConfig::new(CLUSTER, 1),
    );
    wait_status(&server, 1, NodeStatus::Alive, Duration::from_secs(10)).await;
    let anonymous = SimDatanode::start_on(
        MetasrvTarget::SecureCluster(endpoints.clone(), with_token(None)),
        SimDatanodeConfig::new(CLUSTER, 2),
    );
    let refusal = wait_for(
        "the datanode without a token told why",
        Duration::from_secs(10),
        || {
            let events = anonymous.events();
            async move {
                events.into_iter().find_map(|event| match event {
                    SimEvent::Disconnected {
                        reason: Some(status),
                    } => Some(status),
                    _ => None,
                })
            }
        },
    )
    .await;
    assert_eq!(refusal.code(), Code::Unauthenticated, "{refusal:?}");
    assert!(refusal.message().contains("token"), "{refusal:?}");

    let table = TableName::new("greptime", "public", "tokens");
    let operator = MetaClient::connect_with(&endpoints, CLUSTER, 0, with_token(Some("ops")))
        .await
        .expect("an operator connects");
    operator
        .create_table(crate::router::create_request(&table, 1, 1))
        .await
        .expect("an operator creates a table");
    let frontend = MetaClient::connect_with(&endpoints, CLUSTER, 0, with_token(Some("fe")))
        .await
        .expect("a frontend connects");
    let route = frontend
        .route(&table)
        .await
        .expect("a frontend reads routes");
    assert_eq!(route.route.regions[0].leader.id, 1);
    let refused = frontend
        .create_table(crate::router::create_request(
            &TableName::new("greptime", "public", "nope"),
            1,
            1,
        ))
        .await
        .expect_err("a frontend may not create tables");
    assert!(
        matches!(&refused, ClientError::Status(s) if s.code() == Code::PermissionDenied),
        "{refused:?}"
    );

    let started = std::time::Instant::now();
    let nobody = MetaClient::connect_with(&endpoints, CLUSTER, 0, with_token(None))
        .await
        .err()
        .expect("no credentials, no client");
    assert!(
        matches!(&nobody, ClientError::Status(s) if s.code() == Code::Unauthenticated),
        "{nobody:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refusal is final, not retried for {:?}",
        started.elapsed()
    );
    drop((datanode, anonymous));
    server.stop().await;
}
