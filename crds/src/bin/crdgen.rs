//! Writes every CRD Tortie installs to `crds/manifests/<name>.yaml`, replacing what is
//! there and removing YAML files no CRD produces any more.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tortie_crds::manifests;

fn main() -> ExitCode {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests");
    match write_all(&dir) {
        Ok(count) => {
            println!("wrote {count} CRDs to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_all(dir: &Path) -> Result<usize, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;

    let crds = manifests::all();
    let mut written = Vec::new();
    for crd in &crds {
        let name = manifests::file_name(crd);
        let yaml = manifests::to_yaml(crd).map_err(|e| format!("serialising {name}: {e}"))?;
        let path = dir.join(&name);
        std::fs::write(&path, yaml).map_err(|e| format!("writing {}: {e}", path.display()))?;
        written.push(name);
    }

    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".yaml") && !written.iter().any(|w| w == name) {
            std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
            println!("removed stale {}", path.display());
        }
    }
    Ok(crds.len())
}
