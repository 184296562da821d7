//! A leader takes over a catalog larger than one etcd response can carry (thousands of tables
//! with wide schemas: over 4 MiB under one prefix), with bad records among them: it loads the
//! rest, serves every readable table's route, quarantines the bad records (named in `/health`
//! and `metasrv_quarantined_records`), and leads.

use std::sync::Arc;

use metasrv::catalog::manager::keys;
use metasrv::catalog::model::{
    region_id, ColumnDef, ColumnType, PartitionRule, Peer, RegionRoute, TableInfo, TableName,
    TableRoute, TableSchema,
};
use metasrv::client::MetaClient;
use metasrv::store::{KeyValue, KvBackend};

use crate::harness::{http_get, EtcdProcess, TestServer};
use crate::router::{cluster_config, CLUSTER};

const TABLES: u64 = 1_200;
const COLUMNS: usize = 120;
const REGIONS: u32 = 4;
const FIRST_ID: u64 = 5_000;

fn wide_table(id: u64) -> (TableInfo, TableRoute) {
    let mut columns = vec![
        ColumnDef {
            name: "host".into(),
            data_type: ColumnType::String,
            nullable: false,
        },
        ColumnDef {
            name: "ts".into(),
            data_type: ColumnType::Timestamp,
            nullable: false,
        },
    ];
    columns.extend((2..COLUMNS).map(|i| ColumnDef {
        name: format!("field_with_a_realistic_name_{i:03}"),
        data_type: ColumnType::Float64,
        nullable: true,
    }));
    let info = TableInfo {
        id,
        name: TableName::new("greptime", "public", &format!("metric_{id}")),
        schema: TableSchema {
            columns,
            time_index: "ts".into(),
            primary_key: vec!["host".into()],
            options: Default::default(),
        },
        partition: PartitionRule::Hash {
            columns: vec!["host".into()],
            partitions: REGIONS,
        },
        replicas: 1,
        created_at_unix_ms: 1,
    };
    let route = TableRoute {
        table_id: id,
        version: 1,
        regions: (0..REGIONS)
            .map(|n| RegionRoute {
                region_id: region_id(id, n),
                region_number: n,
                leader: Peer {
                    id: u64::from(n % 3) + 1,
                    addr: format!("127.0.0.1:{}", 4001 + n % 3),
                },
                followers: vec![],
            })
            .collect(),
    };
    (info, route)
}

fn table_kvs(info: &TableInfo, route: &TableRoute) -> [KeyValue; 3] {
    [
        KeyValue::new(keys::table_name(&info.name), info.id.to_string()),
        KeyValue::new(
            keys::table(info.id),
            serde_json::to_vec(info).expect("serializable"),
        ),
        KeyValue::new(
            keys::table_route(info.id),
            serde_json::to_vec(route).expect("serializable"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_loads_a_catalog_over_4_mib_and_quarantines_bad_records() {
    let etcd = EtcdProcess::start();
    let store: Arc<dyn KvBackend> = etcd.store("/large_catalog", CLUSTER).await;

    // Written straight into etcd, as a previous leader would have left it; in batches within
    // etcd's default 128 operations per transaction.
    let mut table_bytes = 0;
    let mut kvs = Vec::new();
    for id in FIRST_ID..FIRST_ID + TABLES {
        let (info, route) = wide_table(id);
        let [name, info, route] = table_kvs(&info, &route);
        table_bytes += info.value.len();
        kvs.extend([name, info, route]);
    }
    assert!(
        table_bytes > 4 * 1024 * 1024,
        "the table infos alone ({table_bytes} bytes) exceed a default gRPC response"
    );
    // Three kinds of bad record: an info that does not decode, a route that does not decode,
    // and a name whose table has neither.
    let bad_info = FIRST_ID + 7;
    let bad_route = FIRST_ID + 8;
    let dangling = TableName::new("greptime", "public", "dangling");
    for kv in &mut kvs {
        if kv.key == keys::table(bad_info) || kv.key == keys::table_route(bad_route) {
            kv.value = b"{\"not\": \"a record".to_vec();
        }
    }
    kvs.push(KeyValue::new(keys::table_name(&dangling), "999999"));
    for chunk in kvs.chunks(120) {
        store.batch_put(chunk.to_vec()).await.expect("seed batch");
    }

    let server = TestServer::start(store.clone(), cluster_config()).await;

    let meta = MetaClient::connect(&[server.grpc_addr.to_string()], CLUSTER, 0)
        .await
        .expect("meta client");
    let good: Vec<TableName> = (FIRST_ID..FIRST_ID + TABLES)
        .filter(|id| *id != bad_info && *id != bad_route)
        .map(|id| TableName::new("greptime", "public", &format!("metric_{id}")))
        .collect();
    let mut served = 0;
    for chunk in good.chunks(100) {
        let routes = meta.routes(chunk).await.expect("routes of readable tables");
        for (name, route) in chunk.iter().zip(&routes) {
            assert_eq!(&route.info.name, name);
            assert_eq!(route.info.schema.columns.len(), COLUMNS);
            assert_eq!(route.route.regions.len(), REGIONS as usize);
        }
        served += routes.len();
    }
    assert_eq!(served as u64, TABLES - 2);
    for id in [bad_info, bad_route] {
        let name = TableName::new("greptime", "public", &format!("metric_{id}"));
        let err = meta.route(&name).await.expect_err("a quarantined table");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    let (code, health) = http_get(server.http_addr, "/health").await;
    assert_eq!(code, 200, "the member serves: {health}");
    let health: serde_json::Value = serde_json::from_str(&health).expect("health is JSON");
    let quarantined: Vec<String> = health["quarantined"]
        .as_array()
        .expect("a quarantine list")
        .iter()
        .map(|r| r["key"].as_str().unwrap_or_default().to_owned())
        .collect();
    let expected = |key: Vec<u8>| String::from_utf8(key).expect("utf-8 key");
    for key in [
        expected(keys::table(bad_info)),
        expected(keys::table_route(bad_route)),
        expected(keys::table_name(&dangling)),
    ] {
        assert!(quarantined.contains(&key), "{key} in {health}");
    }
    let (_, metrics) = http_get(server.http_addr, "/metrics").await;
    // The two undecodable records, the dangling name, and the two names left without a
    // readable record.
    let line = metrics
        .lines()
        .find(|l| l.starts_with("metasrv_quarantined_records "))
        .expect("the quarantine gauge");
    assert_eq!(line, "metasrv_quarantined_records 5", "{health}");
    let (_, leader) = http_get(server.http_addr, "/v1/leader").await;
    assert!(leader.contains("\"is_leader\":true"), "{leader}");
    server.stop().await;
}

/// The etcd store, except that the first read at a fixed revision finds that revision
/// compacted: etcd moves on and compacts right before it, as a compaction running during a
/// new leader's catalog load does.
struct CompactsUnderTheFirstPagedRead {
    inner: Arc<dyn KvBackend>,
    endpoint: String,
    compacted: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl KvBackend for CompactsUnderTheFirstPagedRead {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn as_etcd(&self) -> Option<&metasrv::store::etcd::EtcdStore> {
        self.inner.as_etcd()
    }
    async fn range(
        &self,
        req: metasrv::store::RangeRequest,
    ) -> metasrv::store::StoreResult<metasrv::store::RangeResponse> {
        if req.revision > 0
            && !self
                .compacted
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let mut client = etcd_client::Client::connect([self.endpoint.as_str()], None)
                .await
                .expect("a raw etcd client");
            let put = client
                .put("compaction-marker", "moves the revision on", None)
                .await
                .expect("a write past the read's revision");
            let revision = put.header().expect("a header").revision();
            client
                .compact(revision, None)
                .await
                .expect("compact up to the latest revision");
        }
        self.inner.range(req).await
    }
    async fn put(&self, kv: KeyValue) -> metasrv::store::StoreResult<Option<KeyValue>> {
        self.inner.put(kv).await
    }
    async fn batch_get(&self, keys: Vec<Vec<u8>>) -> metasrv::store::StoreResult<Vec<KeyValue>> {
        self.inner.batch_get(keys).await
    }
    async fn batch_put(&self, kvs: Vec<KeyValue>) -> metasrv::store::StoreResult<Vec<KeyValue>> {
        self.inner.batch_put(kvs).await
    }
    async fn batch_delete(&self, keys: Vec<Vec<u8>>) -> metasrv::store::StoreResult<Vec<KeyValue>> {
        self.inner.batch_delete(keys).await
    }
    async fn compare_and_put(
        &self,
        key: Vec<u8>,
        expect: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> metasrv::store::StoreResult<metasrv::store::CompareAndPutResponse> {
        self.inner.compare_and_put(key, expect, value).await
    }
    async fn delete_range(
        &self,
        range: metasrv::store::KeyRange,
    ) -> metasrv::store::StoreResult<Vec<KeyValue>> {
        self.inner.delete_range(range).await
    }
    async fn txn(
        &self,
        txn: metasrv::store::Txn,
    ) -> metasrv::store::StoreResult<metasrv::store::TxnResponse> {
        self.inner.txn(txn).await
    }
}

/// A compaction under the revision a new leader loads its catalog at: the load starts again at
/// a newer revision, in the same term (it used to fail the load, step down and campaign again).
/// etcd's refusals come back typed: a compacted revision and a request over its size limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_during_the_catalog_load_costs_a_reload_not_the_term() {
    use metasrv::store::{KeyRange, RangeRequest, StoreError};
    let etcd = EtcdProcess::start();
    let store: Arc<dyn KvBackend> = etcd.store("/compaction", CLUSTER).await;
    // More table names than a first page holds (64), so the load reads at a fixed revision.
    let tables = 100;
    let mut kvs = Vec::new();
    for id in FIRST_ID..FIRST_ID + tables {
        let (info, route) = wide_table(id);
        kvs.extend(table_kvs(&info, &route));
    }
    for chunk in kvs.chunks(120) {
        store.batch_put(chunk.to_vec()).await.expect("seed batch");
    }

    // Typed errors first, on the plain store.
    let revision = store
        .range(RangeRequest {
            range: KeyRange::prefix(b"__meta/".to_vec()),
            limit: 1,
            keys_only: true,
            revision: 0,
        })
        .await
        .expect("a read")
        .revision;
    store
        .put(KeyValue::new("user/after", "x"))
        .await
        .expect("a write");
    let mut client = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
        .await
        .expect("a raw etcd client");
    client.compact(revision + 1, None).await.expect("compact");
    let old = store
        .range(RangeRequest {
            range: KeyRange::prefix(b"__meta/".to_vec()),
            limit: 1,
            keys_only: true,
            revision,
        })
        .await
        .expect_err("a compacted revision");
    assert!(matches!(old, StoreError::Compacted(_)), "{old:?}");
    let huge = store
        .put(KeyValue::new("user/huge", vec![b'x'; 2 * 1024 * 1024]))
        .await
        .expect_err("over etcd's request limit");
    assert!(matches!(huge, StoreError::TooLarge(_)), "{huge:?}");

    let wrapped: Arc<dyn KvBackend> = Arc::new(CompactsUnderTheFirstPagedRead {
        inner: store,
        endpoint: etcd.endpoint.clone(),
        compacted: std::sync::atomic::AtomicBool::new(false),
    });
    let server = TestServer::start(wrapped, cluster_config()).await;
    assert_eq!(
        server.leadership.state().term,
        1,
        "the member kept its first term through the compaction"
    );
    let meta = MetaClient::connect(&[server.grpc_addr.to_string()], CLUSTER, 0)
        .await
        .expect("meta client");
    let names: Vec<TableName> = (FIRST_ID..FIRST_ID + tables)
        .map(|id| TableName::new("greptime", "public", &format!("metric_{id}")))
        .collect();
    let routes = meta.routes(&names).await.expect("every table served");
    assert_eq!(routes.len(), tables as usize);
    server.stop().await;
}
