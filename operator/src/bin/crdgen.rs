//! Writes the CRDs into the Helm chart: `cargo run -p aegis-seal-operator --bin crdgen [DIR]`.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(aegis_seal_operator::crdgen::CRD_DIR)
        });
    aegis_seal_operator::crdgen::write_crds(&dir)?;
    println!("wrote CRDs to {}", dir.display());
    Ok(())
}
