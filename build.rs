//! Generates the gRPC code for `proto/metasrv/v1/*.proto` with the vendored protoc, plus a file
//! descriptor set for server reflection, and the benchmark echo service and the simulated datanode's data plane apart from it (so
//! that reflection never lists a service metasrv does not serve).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `.cargo/config.toml` sets PROTOC for every build script; when this crate is built from
    // elsewhere (as a dependency), fall back to the vendored binary directly.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/metasrv/v1/common.proto",
        "proto/metasrv/v1/store.proto",
        "proto/metasrv/v1/heartbeat.proto",
        "proto/metasrv/v1/router.proto",
        "proto/metasrv/v1/election.proto",
        "proto/metasrv/v1/admin.proto",
        "proto/metasrv/v1/autoadmin.proto",
    ];
    tonic_prost_build::configure()
        // Small per-stream buffers: see src/grpc/codec.rs.
        .codec_path("crate::grpc::codec::CompactCodec")
        // A heartbeat decodes one RegionStat per region (100 a node, 10,000 nodes a second):
        // an empty BTreeMap costs nothing to make where a HashMap seeds its hasher, and a
        // boxed table name keeps the struct at half its size (it is moved into its Vec).
        // metasrv reads neither field.
        .btree_map(".metasrv.v1.RegionStat.attrs")
        .boxed(".metasrv.v1.RegionStat.table_name")
        .file_descriptor_set_path(out_dir.join("metasrv_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    // A separate directory: this run would otherwise overwrite metasrv.v1.rs with an empty file.
    let bench_dir = out_dir.join("bench");
    std::fs::create_dir_all(&bench_dir)?;
    tonic_prost_build::configure()
        .out_dir(&bench_dir)
        .extern_path(".metasrv.v1", "crate::proto::v1")
        .compile_protos(
            &["proto/bench/echo.proto", "proto/sim/datanode.proto"],
            &["proto"],
        )?;
    for proto in protos
        .iter()
        .chain(&["proto/bench/echo.proto", "proto/sim/datanode.proto"])
    {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
