//! The `metasrv` binary as an operator runs it: durability across SIGKILL, graceful SIGTERM,
//! configuration layering (file < environment < flags), and clear start-up failures.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metasrv::client::{connect, header, store_client};
use metasrv::proto::v1 as pb;
use parking_lot::Mutex;

use crate::harness::{http_get, wait_for, EtcdProcess, MetasrvProcess};

/// Writers keep putting while the process is SIGKILLed; after a restart on the same data dir,
/// every write that was acknowledged before the kill is there with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut metasrv = MetasrvProcess::start(dir.path(), &["--data-dir", "data"], &[]);
    let channel = connect(&metasrv.grpc_addr.to_string())
        .await
        .expect("connect");

    let acked = Arc::new(Mutex::new(BTreeMap::<String, String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut client = store_client(channel.clone());
            let acked = acked.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("durable/{w}/{i:06}");
                    let value = format!("value-{w}-{i}");
                    let request = pb::PutRequest {
                        header: header(0, 0),
                        key: key.clone().into_bytes(),
                        value: value.clone().into_bytes(),
                        prev_kv: false,
                    };
                    match client.put(request).await {
                        Ok(_) => {
                            acked.lock().insert(key, value);
                        }
                        // The kill cuts the connection: from here nothing more is acknowledged.
                        Err(_) => break,
                    }
                    i += 1;
                }
            })
        })
        .collect();

    // Kill once enough writes are acknowledged, with writers still in flight.
    wait_for("200 acknowledged writes", Duration::from_secs(60), || {
        let enough = acked.lock().len() >= 200;
        async move { enough.then_some(()) }
    })
    .await;
    let status = metasrv.signal_and_wait("KILL");
    assert!(!status.success(), "SIGKILL ends the process abnormally");
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer task");
    }
    let acked = acked.lock().clone();
    drop(metasrv);

    let restarted = MetasrvProcess::start(dir.path(), &["--data-dir", "data"], &[]);
    let mut client = store_client(
        connect(&restarted.grpc_addr.to_string())
            .await
            .expect("connect"),
    );
    let stored = client
        .range(pb::RangeRequest {
            header: header(0, 0),
            key: b"durable/".to_vec(),
            range_end: b"durable0".to_vec(),
            limit: 0,
            keys_only: false,
        })
        .await
        .expect("range after restart")
        .into_inner();
    let stored: BTreeMap<String, String> = stored
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(key, value)| stored.get(*key) != Some(value))
        .map(|(key, _)| key.clone())
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost after SIGKILL, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

/// SIGTERM stops the server gracefully: exit code 0 and a "stopped" log line.
#[tokio::test]
async fn sigterm_shuts_down_gracefully() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut metasrv = MetasrvProcess::start(dir.path(), &[], &[]);
    let (code, _) = http_get(metasrv.http_addr, "/health").await;
    assert_eq!(code, 200);
    let status = metasrv.signal_and_wait("TERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        metasrv.log()
    );
    assert!(
        metasrv.log().contains("metasrv stopped"),
        "{}",
        metasrv.log()
    );
    // With no arguments the embedded store lives under ./data of the working directory.
    assert!(dir.path().join("data").join("metasrv.redb").exists());
}

async fn cluster_id_of(metasrv: &MetasrvProcess) -> u64 {
    let (code, body) = http_get(metasrv.http_addr, "/health").await;
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    health["cluster_id"]
        .as_u64()
        .expect("cluster_id is a number")
}

/// The config file is overridden by METASRV_* variables, which flags override in turn.
#[tokio::test]
async fn configuration_layers_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("metasrv.toml");
    std::fs::write(
        &file,
        "cluster_id = 5\nmember_name = \"from-file\"\n[store]\ndata_dir = \"file-data\"\n",
    )
    .expect("write config");
    let file = file.to_string_lossy().into_owned();

    let from_file = MetasrvProcess::start(dir.path(), &["--config", &file], &[]);
    assert_eq!(cluster_id_of(&from_file).await, 5);
    drop(from_file);
    assert!(dir.path().join("file-data/metasrv.redb").exists());

    let env = [("METASRV_CLUSTER_ID", "6")];
    let from_env = MetasrvProcess::start(dir.path(), &["--config", &file], &env);
    assert_eq!(cluster_id_of(&from_env).await, 6);
    drop(from_env);

    let from_flag =
        MetasrvProcess::start(dir.path(), &["--config", &file, "--cluster-id", "7"], &env);
    assert_eq!(cluster_id_of(&from_flag).await, 7);
}

/// Start-up mistakes end the process with a message that names the problem.
#[test]
fn bad_configuration_fails_fast_with_a_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_metasrv"))
            .current_dir(dir.path())
            .arg("start")
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run metasrv");
        assert!(!output.status.success(), "metasrv {args:?} should fail");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let missing = run(&["--config", "nope.toml"], &[]);
    assert!(missing.contains("nope.toml"), "{missing}");
    std::fs::write(dir.path().join("bad.toml"), "grpc_adr = 1\n").expect("write");
    let typo = run(&["--config", "bad.toml"], &[]);
    assert!(typo.contains("grpc_adr"), "{typo}");
    let env = run(&[], &[("METASRV_HEARTBEAT_INTERVAL", "soon")]);
    assert!(env.contains("METASRV_HEARTBEAT_INTERVAL"), "{env}");
}

/// A second metasrv on the same embedded data dir is refused, not allowed to corrupt it.
#[test]
fn a_second_process_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _first = MetasrvProcess::start(dir.path(), &[], &[]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_metasrv"))
        .current_dir(dir.path())
        .args([
            "start",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run metasrv");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("metadata store"), "{stderr}");
}

/// `metasrv start --backend etcd` serves the Store from etcd, and the data outlives the process.
#[tokio::test]
async fn the_binary_runs_on_etcd() {
    let etcd = EtcdProcess::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let args = [
        "--backend",
        "etcd",
        "--etcd-endpoints",
        etcd.endpoint.as_str(),
        "--etcd-key-prefix",
        "/binary",
    ];
    let metasrv = MetasrvProcess::start(dir.path(), &args, &[]);
    metasrv.wait_until_leader().await;
    let mut client = store_client(
        connect(&metasrv.grpc_addr.to_string())
            .await
            .expect("connect"),
    );
    client
        .put(pb::PutRequest {
            header: header(0, 0),
            key: b"on-etcd".to_vec(),
            value: b"yes".to_vec(),
            prev_kv: false,
        })
        .await
        .expect("put");
    drop(metasrv);
    let again = MetasrvProcess::start(dir.path(), &args, &[]);
    again.wait_until_leader().await;
    let mut client = store_client(
        connect(&again.grpc_addr.to_string())
            .await
            .expect("connect"),
    );
    let got = client
        .range(pb::RangeRequest {
            header: header(0, 0),
            key: b"on-etcd".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(
        got.kvs.first().map(|kv| kv.value.clone()),
        Some(b"yes".to_vec())
    );
    assert!(
        !dir.path().join("data").exists(),
        "the etcd backend writes no local data"
    );
    drop(etcd);
}
