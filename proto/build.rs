//! Compiles `proto/` with protox (pure Rust: no protoc on any machine) and
//! generates messages, clients and servers with tonic-prost-build. The encoded
//! descriptor set is kept for server reflection.

use std::path::PathBuf;

use prost::Message;

const FILES: [&str; 5] = [
    "switchyard/metering/v1/metering.proto",
    "switchyard/collector/v1/collector.proto",
    "switchyard/alarms/v1/alarms.proto",
    "switchyard/messaging/v1/messages.proto",
    "switchyard/echo/v1/echo.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(FILES, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("switchyard_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
