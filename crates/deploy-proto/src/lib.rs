//! Generated gRPC code for the `deploy.v1` protobuf package under `proto/`.
//!
//! Nothing but generated code and the descriptor set lives here, so every crate that speaks the
//! wire protocol shares one copy. It must not depend on any other crate of this workspace.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("deploy.v1");

    /// The encoded `FileDescriptorSet` of the package, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/deploy_v1_descriptor.bin"));
}
