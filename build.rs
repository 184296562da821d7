//! Generates the gRPC code for `proto/metasrv/v1/*.proto` with the vendored protoc, plus a file
//! descriptor set for server reflection.

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
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("metasrv_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
