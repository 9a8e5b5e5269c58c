//! Compiles proto/ with protox (pure Rust, no system protoc) and tonic-prost-build; writes the
//! encoded file descriptor set to OUT_DIR for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        root.join("qattn/v1/qattn.proto"),
        root.join("kserve/grpc_predict_v2.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    {
        use prost::Message;
        std::fs::write(out.join("qattn_descriptor.bin"), fds.encode_to_vec())?;
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
