//! Generates the deploy.v1 code with protox (a pure-Rust protobuf compiler), so building needs
//! no `protoc`. The encoded descriptor set is kept for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with `env!`: a build script compiled in one clone may be reused by
    // another clone sharing the target directory, and must look at its own sources.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "deploy/v1/raft.proto",
        "deploy/v1/cluster.proto",
        "deploy/v1/build.proto",
        "deploy/v1/worker.proto",
        "deploy/v1/artifact.proto",
        "deploy/v1/release.proto",
        "deploy/v1/region.proto",
        "deploy/v1/token.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("deploy_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // JSON output of the CLI uses the proto field names exactly (snake_case).
        .type_attribute(
            ".deploy.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .compile_fds(fds)?;
    Ok(())
}
