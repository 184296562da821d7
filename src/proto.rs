//! Code generated from `proto/metasrv/v1/*.proto` by `build.rs`.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("metasrv.v1");
}

/// The raw echo service that benchmarks use as their baseline.
#[allow(clippy::all, clippy::pedantic)]
pub mod bench {
    include!(concat!(env!("OUT_DIR"), "/bench/metasrv.bench.rs"));
}

/// The data plane of the simulated datanode (writes and reads per region).
#[allow(clippy::all, clippy::pedantic)]
pub mod sim {
    include!(concat!(env!("OUT_DIR"), "/bench/metasrv.sim.rs"));
}

/// The encoded descriptors of our protos, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("metasrv_descriptor");

impl From<crate::store::KeyValue> for v1::KeyValue {
    fn from(kv: crate::store::KeyValue) -> Self {
        Self {
            key: kv.key,
            value: kv.value,
        }
    }
}

impl From<v1::KeyValue> for crate::store::KeyValue {
    fn from(kv: v1::KeyValue) -> Self {
        Self {
            key: kv.key,
            value: kv.value,
        }
    }
}
