//! Compiles `proto/missive/v1/*.proto` with the pure-Rust `protox` compiler,
//! so no system `protoc` is needed, and writes the file descriptor set the
//! server serves through gRPC reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "missive/v1/keys.proto",
    "missive/v1/account.proto",
    "missive/v1/prekeys.proto",
    "missive/v1/messages.proto",
    "missive/v1/reports.proto",
    "missive/v1/content.proto",
    "missive/v1/attachments.proto",
    "missive/v1/link.proto",
    "missive/v1/groups.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    for file in PROTOS {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }

    let descriptors = protox::compile(PROTOS, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("missive_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // Small initial buffers: an idle receive stream kept tonic's 8 KiB.
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
