//! Compiles `proto/wharf/v1/wharf.proto` (and the test service
//! `proto/wharf/testing/v1/echo.proto`) with protox (pure Rust: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/wharf/v1/wharf.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        // Malformed requests must be INVALID_ARGUMENT (tonic's prost codec says INTERNAL).
        .codec_path("crate::codec::WharfCodec")
        .bytes(".wharf.v1")
        // The publish path's messages are written by hand (src/publish.rs).
        .extern_path(".wharf.v1.PublishRequest", "crate::publish::PublishRequest")
        .extern_path(".wharf.v1.PublishMessage", "crate::publish::PublishMessage")
        .extern_path(
            ".wharf.v1.PublishResponse",
            "crate::publish::PublishResponse",
        )
        .compile_fds(fds)?;
    // The test service, with tonic's own codec.
    let echo = "proto/wharf/testing/v1/echo.proto";
    println!("cargo:rerun-if-changed={echo}");
    let fds = protox::compile([echo], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(true)
        .compile_fds(fds)?;
    Ok(())
}
