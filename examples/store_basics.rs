//! Starts a standalone metasrv in-process (embedded store in a temp dir, port 0), then uses the
//! Store service the way a tool would: put, range by prefix, compare-and-put as a lock, and a
//! refused request. Run: `cargo run --example store_basics`.

use anyhow::Context;
use metasrv::client::{connect, header, store_client};
use metasrv::proto::v1 as pb;
use metasrv::{Config, Listeners};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.store.data_dir = dir.path().join("data");
    config.grpc_addr = "127.0.0.1:0".parse()?;
    config.http_addr = "127.0.0.1:0".parse()?;
    let store = metasrv::open_store(&config).await?;
    let listeners = Listeners::bind(&config).await?;
    let addr = listeners.grpc.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(metasrv::run(config, store, listeners, async {
        let _ = stopped.await;
    }));
    println!("metasrv listening on {addr}");

    let mut client = store_client(connect(&addr.to_string()).await?);
    for (key, value) in [("node/1", "10.0.0.1:4001"), ("node/2", "10.0.0.2:4001")] {
        client
            .put(pb::PutRequest {
                header: header(0, 0),
                key: key.into(),
                value: value.into(),
                prev_kv: false,
            })
            .await?;
        println!("put {key} = {value}");
    }
    let nodes = client
        .range(pb::RangeRequest {
            header: header(0, 0),
            key: b"node/".to_vec(),
            range_end: b"node0".to_vec(),
            ..Default::default()
        })
        .await?
        .into_inner();
    for kv in &nodes.kvs {
        println!(
            "range node/: {} = {}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value)
        );
    }
    for holder in ["tool-a", "tool-b"] {
        let cas = client
            .compare_and_put(pb::CompareAndPutRequest {
                header: header(0, 0),
                key: b"lock/rebalance".to_vec(),
                expect: Vec::new(), // empty: the key must not exist yet
                value: holder.into(),
            })
            .await?
            .into_inner();
        println!("{holder} takes lock/rebalance: {}", cas.success);
    }
    let refused = client
        .put(pb::PutRequest {
            header: header(7, 0),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            prev_kv: false,
        })
        .await
        .expect_err("a request for another cluster is refused");
    println!(
        "wrong cluster -> {:?}: {}",
        refused.code(),
        refused.message()
    );

    let _ = stop.send(());
    server.await.context("server task")??;
    Ok(())
}
