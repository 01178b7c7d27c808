//! Generates the tonic/prost code for every `*.proto` in `proto/pgwarden/v1`
//! at the workspace root. The files are compiled by `protox` (pure Rust), so no
//! system `protoc` is needed.

use std::error::Error;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let include = manifest_dir.join("../../proto").canonicalize()?;
    let contracts = include.join("pgwarden/v1");
    // A directory here makes cargo rerun the script when any file in it is
    // added, removed or changed (e.g. when watchdog.proto appears).
    println!("cargo:rerun-if-changed={}", contracts.display());

    let protos = proto_files(&contracts)?;
    if protos.is_empty() {
        return Err(format!("no .proto files in {}", contracts.display()).into());
    }
    let descriptors = protox::compile(&protos, [&include])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

/// The `*.proto` files directly in `dir`, sorted so the output is stable.
fn proto_files(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
