//! Prometheus metrics, all named `metasrv_*`. One [`Metrics`] per server instance (not a global
//! registry), so that several in-process servers in one test do not mix their counts.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// gRPC requests served, by service, method and status code.
    pub grpc_requests: IntCounterVec,
    /// gRPC request latency, by service and method.
    pub grpc_latency: HistogramVec,
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
        registry
            .register(Box::new(grpc_requests.clone()))
            .expect("metric registered once");
        registry
            .register(Box::new(grpc_latency.clone()))
            .expect("metric registered once");
        Self {
            registry,
            grpc_requests,
            grpc_latency,
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
