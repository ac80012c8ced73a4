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
        // ... and states by their names (`SUCCEEDED`), not their numbers: `crate::names`.
        // Every enum field of the package is listed here; `names` has a test that checks it.
        .field_attribute(
            ".deploy.v1.Build.state",
            "#[serde(with = \"crate::names::build_state\")]",
        )
        .field_attribute(
            ".deploy.v1.RegionReplication.state",
            "#[serde(with = \"crate::names::replication_state\")]",
        )
        .field_attribute(
            ".deploy.v1.BuildTransition.state",
            "#[serde(with = \"crate::names::build_state\")]",
        )
        .field_attribute(
            ".deploy.v1.ListBuildsRequest.state",
            "#[serde(with = \"crate::names::build_state\")]",
        )
        .field_attribute(
            ".deploy.v1.CompleteBuildReply.state",
            "#[serde(with = \"crate::names::build_state\")]",
        )
        .field_attribute(
            ".deploy.v1.MemberStatus.role",
            "#[serde(with = \"crate::names::role\")]",
        )
        .field_attribute(
            ".deploy.v1.NodeStatusReply.role",
            "#[serde(with = \"crate::names::role\")]",
        )
        .field_attribute(
            ".deploy.v1.RegionRelease.state",
            "#[serde(with = \"crate::names::release_state\")]",
        )
        .field_attribute(
            ".deploy.v1.ReportRegionRequest.state",
            "#[serde(with = \"crate::names::release_state\")]",
        )
        .field_attribute(
            ".deploy.v1.Release.state",
            "#[serde(with = \"crate::names::release_state\")]",
        )
        .field_attribute(
            ".deploy.v1.RegionRollout.state",
            "#[serde(with = \"crate::names::release_state\")]",
        )
        .field_attribute(
            ".deploy.v1.ListReleasesRequest.state",
            "#[serde(with = \"crate::names::release_state\")]",
        )
        .field_attribute(
            ".deploy.v1.HostService.state",
            "#[serde(with = \"crate::names::service_state\")]",
        )
        .field_attribute(
            ".deploy.v1.ServiceReport.state",
            "#[serde(with = \"crate::names::service_state\")]",
        )
        .compile_fds(fds)?;
    Ok(())
}
