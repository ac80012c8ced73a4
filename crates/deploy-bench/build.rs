//! Generates a client for the few etcd v3 calls the write benchmark makes, with protox (pure
//! Rust), as `deploy-proto` does for our own API.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    println!(
        "cargo:rerun-if-changed={}",
        root.join("etcd.proto").display()
    );
    let fds = protox::compile(["etcd.proto"], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
