//! Code generated from the contracts under `proto/`, and their file descriptor set.
//!
//! This is the only crate that is generated; nothing in it is written by hand beyond this
//! module tree. Services import message and service types from here and convert them to their
//! domain types in their `grpc` module.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Encoded `FileDescriptorSet` of every Concord contract, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/concord_descriptor.bin"));

/// Encoded `FileDescriptorSet` of the google.rpc error details Concord sends (ErrorInfo,
/// BadRequest, RetryInfo), so reflection clients can print them.
pub const ERROR_DETAILS_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/error_details_descriptor.bin"));

/// Shared types: `concord.type.v1`.
pub mod r#type {
    /// `concord.type.v1`
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/concord.r#type.v1.rs"));
    }
}

/// The facilities contract: `concord.facilities.v1`.
pub mod facilities {
    /// `concord.facilities.v1`
    pub mod v1 {
        tonic::include_proto!("concord.facilities.v1");
    }
}

/// The gateway's own contract: `concord.gateway.v1`.
pub mod gateway {
    /// `concord.gateway.v1`
    pub mod v1 {
        tonic::include_proto!("concord.gateway.v1");
    }
}

/// The diplomatic requests contract: `concord.requests.v1`.
pub mod requests {
    /// `concord.requests.v1`
    pub mod v1 {
        tonic::include_proto!("concord.requests.v1");
    }
}

/// The registry contract: `concord.registry.v1`.
pub mod registry {
    /// `concord.registry.v1`
    pub mod v1 {
        tonic::include_proto!("concord.registry.v1");
    }
}
