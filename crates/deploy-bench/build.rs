//! Generates a client for the few etcd v3 calls the write benchmark makes, with protox (pure
//! Rust), as `deploy-proto` does for our own API.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // At run time, not `env!`: the compiled script may be reused from another clone.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
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
