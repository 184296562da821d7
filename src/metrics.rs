//! Prometheus metrics, all named `metasrv_*`. One [`Metrics`] per server instance (not a global
//! registry), so that several in-process servers in one test do not mix their counts.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// gRPC requests served, by service, method and status code.
    pub grpc_requests: IntCounterVec,
    /// gRPC request latency, by service and method.
    pub grpc_latency: HistogramVec,
    /// Heartbeats received, by outcome (`ok`, `invalid`).
    pub heartbeats: IntCounterVec,
    /// Time to handle one heartbeat in its session, from receipt to the queued response.
    pub heartbeat_handle_seconds: Histogram,
    /// Open heartbeat streams.
    pub heartbeat_sessions: IntGauge,
    /// Known datanodes by liveness status.
    pub nodes: IntGaugeVec,
    /// Instructions by kind and outcome (`success`, `failure`, `timeout`, `not_connected`,
    /// `stream_ended`).
    pub instructions: IntCounterVec,
    /// Region failovers by outcome (`done`, `failed`, `interrupted`).
    pub region_failovers: IntCounterVec,
    /// Time from the start of a failover (node declared dead) to its end.
    pub region_failover_seconds: Histogram,
    /// Region migrations (manual, transfers and drains) by outcome (`cooperative`,
    /// `lease_wait`, `already_there`, `failed`).
    pub region_migrations: IntCounterVec,
    /// 1 while this member is the serving leader (set when scraped).
    pub is_leader: IntGauge,
    /// The leadership term this member last won (set when scraped).
    pub leader_term: IntGauge,
    /// 1 while maintenance mode suspends automatic failover (set when scraped).
    pub maintenance: IntGauge,
    /// Metadata records the last catalog load set aside (set when scraped).
    pub quarantined_records: IntGauge,
    /// Regions whose stats history the leader keeps (routed regions only).
    pub region_histories: IntGauge,
    /// How long the last report ClusterView took had waited for it, in milliseconds.
    pub cluster_view_lag_ms: IntGauge,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once");
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let grpc_requests = IntCounterVec::new(
            Opts::new("metasrv_grpc_requests_total", "gRPC requests served"),
            &["service", "method", "code"],
        )
        .expect("static metric definition is valid");
        let grpc_latency = HistogramVec::new(
            HistogramOpts::new(
                "metasrv_grpc_request_duration_seconds",
                "gRPC request latency",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ]),
            &["service", "method"],
        )
        .expect("static metric definition is valid");
        let grpc_requests = register(&registry, grpc_requests);
        let grpc_latency = register(&registry, grpc_latency);
        let heartbeats = register(
            &registry,
            IntCounterVec::new(
                Opts::new("metasrv_heartbeats_total", "Heartbeats received"),
                &["outcome"],
            )
            .expect("static metric definition is valid"),
        );
        let heartbeat_handle_seconds = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "metasrv_heartbeat_handle_seconds",
                    "Time from receiving a heartbeat to queueing its response",
                )
                .buckets(vec![
                    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05,
                ]),
            )
            .expect("static metric definition is valid"),
        );
        let heartbeat_sessions = register(
            &registry,
            IntGauge::new("metasrv_heartbeat_sessions", "Open heartbeat streams")
                .expect("static metric definition is valid"),
        );
        let nodes = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("metasrv_nodes", "Known datanodes by liveness status"),
                &["status"],
            )
            .expect("static metric definition is valid"),
        );
        let instructions = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "metasrv_instructions_total",
                    "Instructions sent to datanodes",
                ),
                &["kind", "outcome"],
            )
            .expect("static metric definition is valid"),
        );
        let region_failovers = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "metasrv_region_failovers_total",
                    "Region failovers of dead datanodes, by outcome",
                ),
                &["outcome"],
            )
            .expect("static metric definition is valid"),
        );
        let region_migrations = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "metasrv_region_migrations_total",
                    "Region migrations and leader transfers, by outcome",
                ),
                &["outcome"],
            )
            .expect("static metric definition is valid"),
        );
        let region_failover_seconds = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "metasrv_region_failover_duration_seconds",
                    "Time from a datanode declared dead to its regions moved",
                )
                .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0]),
            )
            .expect("static metric definition is valid"),
        );
        let gauge = |name: &str, help: &str| {
            register(
                &registry,
                IntGauge::new(name, help).expect("static metric definition is valid"),
            )
        };
        let is_leader = gauge(
            "metasrv_is_leader",
            "1 while this member is the serving leader",
        );
        let leader_term = gauge(
            "metasrv_leader_term",
            "The leadership term this member last won",
        );
        let maintenance = gauge(
            "metasrv_maintenance_mode",
            "1 while maintenance mode suspends automatic failover",
        );
        let quarantined_records = gauge(
            "metasrv_quarantined_records",
            "Metadata records the last catalog load could not read (see /health)",
        );
        let region_histories = gauge(
            "metasrv_region_histories",
            "Regions whose stats history the leader keeps (routed regions only)",
        );
        let cluster_view_lag_ms = gauge(
            "metasrv_cluster_view_lag_milliseconds",
            "How long the last heartbeat report the cluster view took had waited in its mailbox",
        );
        Self {
            region_histories,
            cluster_view_lag_ms,
            quarantined_records,
            region_failovers,
            region_failover_seconds,
            region_migrations,
            is_leader,
            leader_term,
            maintenance,
            registry,
            grpc_requests,
            grpc_latency,
            heartbeats,
            heartbeat_handle_seconds,
            heartbeat_sessions,
            nodes,
            instructions,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
