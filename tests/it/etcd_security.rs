//! The etcd backend against a secured etcd: one that requires a user and password, and one that
//! serves only TLS and requires a client certificate. A real metasrv process runs on each (the
//! election included) and serves a write and a read; wrong credentials stop it at startup with
//! an error that says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use metasrv::client::header;
use metasrv::proto::v1 as pb;
use metasrv::proto::v1::store_client::StoreClient;
use metasrv::store::etcd::{EtcdConfig, EtcdStore};
use metasrv::store::StoreError;

use crate::harness::{wait_for, EtcdProcess, EtcdTls, MetasrvProcess};

const CLUSTER: u64 = 4;

fn etcd_args(endpoint: &str) -> Vec<String> {
    [
        "--backend",
        "etcd",
        "--etcd-endpoints",
        endpoint,
        "--cluster-id",
        "4",
        "--election-lease-ttl",
        "2s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The member becomes leader, and a Store write through it can be read back.
async fn serves_a_write(member: &MetasrvProcess) {
    member.wait_until_leader().await;
    let mut store = StoreClient::new(
        metasrv::client::connect(&member.grpc_addr.to_string())
            .await
            .expect("connect"),
    );
    store
        .put(pb::PutRequest {
            header: header(CLUSTER, 0),
            key: b"secured".to_vec(),
            value: b"yes".to_vec(),
            prev_kv: false,
        })
        .await
        .expect("put through metasrv");
    let got = store
        .range(pb::RangeRequest {
            header: header(CLUSTER, 0),
            key: b"secured".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range through metasrv")
        .into_inner();
    assert_eq!(got.kvs.len(), 1, "{got:?}");
    assert_eq!(got.kvs[0].value, b"yes");
}

/// Runs `metasrv start` expecting it to fail; returns its stderr (bounded wait).
async fn failed_start(dir: &Path, args: &[String], env: &[(&str, &str)]) -> String {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_metasrv"))
        .current_dir(dir)
        .arg("start")
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run metasrv");
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("metasrv exits when etcd refuses it")
        .expect("wait");
    assert!(!output.status.success(), "metasrv started anyway");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_user_and_password() {
    let etcd = EtcdProcess::start();
    let mut admin = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .expect("etcd");
    admin.role_add("root").await.expect("root role");
    admin
        .user_add("root", "root-secret", None)
        .await
        .expect("root user");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    admin.auth_enable().await.expect("enable auth");

    let dir = tempfile::tempdir().expect("temp dir");
    let args = etcd_args(&etcd.endpoint);
    let member = MetasrvProcess::start(
        dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[
            ("METASRV_ETCD_USERNAME", "root"),
            ("METASRV_ETCD_PASSWORD", "root-secret"),
        ],
    );
    serves_a_write(&member).await;
    drop(member);

    let stderr = failed_start(
        dir.path(),
        &args,
        &[
            ("METASRV_ETCD_USERNAME", "root"),
            ("METASRV_ETCD_PASSWORD", "wrong"),
        ],
    )
    .await;
    assert!(
        stderr.contains("refused to authenticate user \"root\""),
        "{stderr}"
    );

    // Without credentials the store connects (etcd cannot tell before a request) but every
    // request is refused with etcd's reason.
    let anonymous = EtcdStore::connect(&etcd.config("/anonymous"), CLUSTER)
        .await
        .expect("connects");
    let refused = metasrv::store::KvBackend::batch_get(&anonymous, vec![b"k".to_vec()])
        .await
        .expect_err("an anonymous read is refused");
    assert!(
        matches!(refused, StoreError::InvalidArgument(_)),
        "{refused:?}"
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, in `dir`.
fn certificates(dir: &Path) -> (EtcdTls, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        SanType,
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "metasrv test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA");

    let server_key = KeyPair::generate().expect("key");
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    server
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server_cert = server
        .signed_by(&server_key, &ca_cert, &ca_key)
        .expect("server cert");

    let client_key = KeyPair::generate().expect("key");
    let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
    client
        .distinguished_name
        .push(DnType::CommonName, "metasrv");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client
        .signed_by(&client_key, &ca_cert, &ca_key)
        .expect("client cert");

    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write pem");
        path
    };
    let tls = EtcdTls {
        ca: write("ca.pem", ca_cert.pem()),
        server_cert: write("server.pem", server_cert.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
    };
    let client_cert = write("client.pem", client_cert.pem());
    let client_key = write("client.key", client_key.serialize_pem());
    (tls, client_cert, client_key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (tls, client_cert, client_key) = certificates(certs.path());
    let etcd = EtcdProcess::start_tls(&tls);
    let secure = EtcdConfig {
        tls_ca: Some(tls.ca.clone()),
        tls_cert: Some(client_cert.clone()),
        tls_key: Some(client_key.clone()),
        ..etcd.config("/tls")
    };
    // The port is open; wait (bounded) until etcd answers over TLS.
    wait_for("etcd to answer over TLS", Duration::from_secs(20), || {
        let secure = secure.clone();
        async move {
            let store = EtcdStore::connect(&secure, CLUSTER).await.ok()?;
            metasrv::store::KvBackend::batch_get(&store, vec![b"k".to_vec()])
                .await
                .ok()
        }
    })
    .await;

    let dir = tempfile::tempdir().expect("temp dir");
    let args = etcd_args(&etcd.endpoint);
    let ca = tls.ca.display().to_string();
    let cert = client_cert.display().to_string();
    let key = client_key.display().to_string();
    let member = MetasrvProcess::start(
        dir.path(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[
            ("METASRV_ETCD_TLS_CA", ca.as_str()),
            ("METASRV_ETCD_TLS_CERT", cert.as_str()),
            ("METASRV_ETCD_TLS_KEY", key.as_str()),
        ],
    );
    serves_a_write(&member).await;
    drop(member);

    // Without a client certificate etcd refuses the TLS session.
    let no_client_cert = EtcdConfig {
        tls_cert: None,
        tls_key: None,
        request_timeout: Duration::from_secs(2),
        ..secure.clone()
    };
    let refused = match EtcdStore::connect(&no_client_cert, CLUSTER).await {
        Err(e) => e,
        Ok(store) => metasrv::store::KvBackend::batch_get(&store, vec![b"k".to_vec()])
            .await
            .expect_err("a session without a client certificate is refused"),
    };
    assert!(matches!(refused, StoreError::Unavailable(_)), "{refused:?}");
    // A certificate without its key is a configuration error, said before connecting.
    let half = EtcdConfig {
        tls_key: None,
        ..secure
    };
    match EtcdStore::connect(&half, CLUSTER).await {
        Err(StoreError::InvalidArgument(reason)) => {
            assert!(reason.contains("tls_cert and tls_key"), "{reason}")
        }
        Err(other) => panic!("expected InvalidArgument, got {other:?}"),
        Ok(_) => panic!("a certificate without its key was accepted"),
    }
}
