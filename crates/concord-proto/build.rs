//! Generates the Rust code for every contract under `proto/` with the pure-Rust `protox`
//! compiler, so a fresh machine needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "concord/type/v1/types.proto",
        "concord/registry/v1/resources.proto",
        "concord/registry/v1/registry.proto",
        "concord/facilities/v1/resources.proto",
        "concord/facilities/v1/facilities.proto",
        "concord/requests/v1/resources.proto",
        "concord/requests/v1/requests.proto",
        "concord/gateway/v1/gateway.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by server reflection (v1 and v1alpha) so grpcurl needs no proto files.
    std::fs::write(out.join("concord_descriptor.bin"), fds.encode_to_vec())?;
    // google.rpc error details for reflection only (tonic-types provides the Rust types).
    let third_party = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("third_party");
    let details = protox::compile(["google/rpc/error_details.proto"], [&third_party])?;
    std::fs::write(out.join("error_details_descriptor.bin"), details.encode_to_vec())?;
    println!("cargo:rerun-if-changed={}", third_party.display());
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
