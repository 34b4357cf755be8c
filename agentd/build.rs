//! Builds the eBPF programs (`sensor-ebpf`) for the BPF target with aya-build and leaves the
//! object in `OUT_DIR/sensor`, where `sensor::load` embeds it; generates the gRPC code of the
//! API from `proto/custos/v1/custos.proto` (protox parses it: no system protoc needed).
//!
//! Needs the nightly toolchain with `rust-src` and `bpf-linker`: `cargo xtask setup` installs
//! both. `AYA_BUILD_SKIP=1` skips the eBPF build for lint-only runs.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    proto()?;
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|package| package.name.as_str() == "sensor-ebpf")
        .ok_or_else(|| anyhow!("sensor-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("sensor-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        // The machines carry one nightly (see KERNEL_AND_TOOLCHAIN.md); `cargo xtask setup`
        // checks that it links the LLVM bpf-linker was built against.
        Toolchain::default(),
    )
    .context(
        "building the eBPF programs (run `cargo xtask setup` if rust-src or bpf-linker is missing)",
    )
}

/// Generates the API's messages, server and client into `OUT_DIR/custos.v1.rs`.
fn proto() -> anyhow::Result<()> {
    const PROTO: &str = "proto/custos/v1/custos.proto";
    println!("cargo:rerun-if-changed={PROTO}");
    let files = protox::compile([PROTO], ["proto"]).context("parsing the API's .proto")?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // A record goes to every subscriber: shared bytes, not one copy each.
        .bytes(".custos.v1.Event.record")
        .compile_fds(files)
        .context("generating the API's gRPC code")
}
