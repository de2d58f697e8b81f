//! The tenantmeter gRPC contract, generated from `proto/tenantmeter/v1/`.
//!
//! Start reading at the `.proto` files: they are the documentation of every
//! message and RPC. This crate only exposes what code generation produced, plus
//! the encoded descriptor set that servers hand to gRPC reflection so that
//! grpcurl works without proto files.

/// Messages, clients (`*_client`) and servers (`*_server`) of package `tenantmeter.v1`.
pub mod v1 {
    #![allow(
        missing_docs,
        unreachable_pub,
        unused_qualifications,
        clippy::all,
        clippy::pedantic,
        clippy::wildcard_enum_match_arm,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    tonic::include_proto!("tenantmeter.v1");
}

/// Encoded `FileDescriptorSet` of every tenantmeter proto and its imports, for
/// `tonic_reflection` (both v1 and v1alpha).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("tenantmeter_descriptor");
