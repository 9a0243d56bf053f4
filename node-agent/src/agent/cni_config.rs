//! The files the agent puts on the host for the container runtime: the CNI conflist that
//! names Tortie's plugin, and the plugin binaries themselves.
//!
//! Every file is written beside its final name and renamed over it, so a runtime reading
//! the directory sees the old file or the new one, never half of one.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::cni::config::{AGENT_IPAM_TYPE, DEFAULT_LOG_FILE};

/// The conflist's file name; `10-` sorts it before the usual `99-loopback` and after
/// nothing a distribution ships, so runtimes pick it.
pub const CONFLIST_NAME: &str = "10-tortie.conflist";

/// The network name Calico's conflist uses; kept so tooling that looks for it finds it.
pub const NETWORK_NAME: &str = "k8s-pod-network";

/// The CNI spec version written; `tortie-cni` supports 1.1.0 (STATUS and GC).
pub const CNI_VERSION: &str = "1.1.0";

/// The plugin binaries `install-cni` copies, found next to the agent's own executable.
pub const PLUGIN_BINARIES: [&str; 2] = ["tortie-cni", "tortie-ipam"];

/// The chained plugin that maps host ports, used when its binary is installed.
pub const PORTMAP_PLUGIN: &str = "portmap";

/// What the conflist says, apart from fixed fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflistSettings {
    /// MTU of pod interfaces; absent leaves the kernel's default.
    pub mtu: Option<u32>,
    /// The agent's IPAM socket, which the plugin calls.
    pub ipam_socket: PathBuf,
    /// Where the plugin logs.
    pub log_file: PathBuf,
    /// Whether to chain `portmap` (only when its binary is in the CNI bin directory).
    pub portmap: bool,
}

impl ConflistSettings {
    /// The settings for a node whose CNI binaries are in `bin_dir`.
    pub fn new(mtu: Option<u32>, ipam_socket: &Path, bin_dir: &Path) -> Self {
        Self {
            mtu,
            ipam_socket: ipam_socket.to_owned(),
            log_file: PathBuf::from(DEFAULT_LOG_FILE),
            portmap: bin_dir.join(PORTMAP_PLUGIN).is_file(),
        }
    }
}

/// Why a file could not be put in place.
#[derive(Debug, thiserror::Error)]
#[error("{path}: could not {step}: {source}")]
pub struct FileError {
    /// The file or directory involved.
    pub path: PathBuf,
    /// What was being done.
    pub step: &'static str,
    /// The system's error.
    #[source]
    pub source: std::io::Error,
}

/// The conflist text for `settings`, ending in a newline.
pub fn render(settings: &ConflistSettings) -> String {
    let mut plugin = json!({
        "type": "tortie-cni",
        "log_file": settings.log_file,
        "log_level": "info",
        "ipam": {
            "type": AGENT_IPAM_TYPE,
            "socket": settings.ipam_socket,
        },
    });
    if let Some(mtu) = settings.mtu {
        plugin["mtu"] = json!(mtu);
    }
    let mut plugins = vec![plugin];
    if settings.portmap {
        plugins.push(json!({
            "type": PORTMAP_PLUGIN,
            "snat": true,
            "capabilities": { "portMappings": true },
        }));
    }
    let conflist: Value = json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": plugins,
    });
    let mut text = serde_json::to_string_pretty(&conflist)
        .expect("a JSON value built in memory always serialises");
    text.push('\n');
    text
}

/// Writes `text` as the conflist in `conf_dir` unless the file already says exactly that.
/// Returns whether the file was written.
pub fn write_conflist(conf_dir: &Path, text: &str) -> Result<bool, FileError> {
    let path = conf_dir.join(CONFLIST_NAME);
    if std::fs::read_to_string(&path).is_ok_and(|current| current == text) {
        return Ok(false);
    }
    std::fs::create_dir_all(conf_dir).map_err(|source| FileError {
        path: conf_dir.to_owned(),
        step: "create the directory",
        source,
    })?;
    write_atomically(&path, text.as_bytes(), 0o644)?;
    Ok(true)
}

/// Removes the conflist from `conf_dir`; a missing file is fine. Returns whether one was
/// removed.
pub fn remove_conflist(conf_dir: &Path) -> Result<bool, FileError> {
    let path = conf_dir.join(CONFLIST_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(FileError {
            path,
            step: "remove it",
            source,
        }),
    }
}

/// Copies each of [`PLUGIN_BINARIES`] from `from_dir` into `bin_dir` with mode 0755.
pub fn install_binaries(from_dir: &Path, bin_dir: &Path) -> Result<Vec<PathBuf>, FileError> {
    std::fs::create_dir_all(bin_dir).map_err(|source| FileError {
        path: bin_dir.to_owned(),
        step: "create the directory",
        source,
    })?;
    let mut installed = Vec::new();
    for name in PLUGIN_BINARIES {
        let source_path = from_dir.join(name);
        let bytes = std::fs::read(&source_path).map_err(|source| FileError {
            path: source_path.clone(),
            step: "read the plugin binary (it belongs next to tortie-agent)",
            source,
        })?;
        let target = bin_dir.join(name);
        write_atomically(&target, &bytes, 0o755)?;
        installed.push(target);
    }
    Ok(installed)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let fail = |step: &'static str| {
        let path = temporary.clone();
        move |source| FileError { path, step, source }
    };
    let written = (|| {
        let mut file = std::fs::File::create(&temporary).map_err(fail("create"))?;
        file.write_all(bytes).map_err(fail("write"))?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(fail("set the mode of"))?;
        file.sync_all().map_err(fail("sync"))?;
        std::fs::rename(&temporary, path).map_err(|source| FileError {
            path: path.to_owned(),
            step: "rename the new file over",
            source,
        })
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::config;

    fn settings(portmap: bool) -> ConflistSettings {
        ConflistSettings {
            mtu: Some(1450),
            ipam_socket: PathBuf::from("/var/run/tortie/ipam.sock"),
            log_file: PathBuf::from(DEFAULT_LOG_FILE),
            portmap,
        }
    }

    #[test]
    fn renders_the_plugin_with_agent_ipam() {
        let value: Value = serde_json::from_str(&render(&settings(false))).expect("JSON");
        assert_eq!(
            value,
            json!({
                "cniVersion": "1.1.0",
                "name": "k8s-pod-network",
                "plugins": [{
                    "type": "tortie-cni",
                    "mtu": 1450,
                    "log_file": "/var/log/tortie/cni.log",
                    "log_level": "info",
                    "ipam": {"type": "tortie-ipam", "socket": "/var/run/tortie/ipam.sock"},
                }],
            })
        );
    }

    #[test]
    fn portmap_is_chained_only_when_asked() {
        let value: Value = serde_json::from_str(&render(&settings(true))).expect("JSON");
        let plugins = value["plugins"].as_array().expect("plugins list");
        assert_eq!(plugins.len(), 2);
        assert_eq!(plugins[1]["type"], "portmap");
        assert_eq!(plugins[1]["capabilities"]["portMappings"], true);

        let mut no_mtu = settings(false);
        no_mtu.mtu = None;
        let value: Value = serde_json::from_str(&render(&no_mtu)).expect("JSON");
        assert!(value["plugins"][0].get("mtu").is_none());
    }

    #[test]
    fn the_plugin_accepts_its_entry() {
        // What a runtime hands the plugin: the conflist's top fields plus one plugin entry.
        let value: Value = serde_json::from_str(&render(&settings(true))).expect("JSON");
        let mut entry = value["plugins"][0].clone();
        entry["cniVersion"] = value["cniVersion"].clone();
        entry["name"] = value["name"].clone();
        let parsed = config::parse(serde_json::to_vec(&entry).expect("JSON")).expect("accepted");
        assert_eq!(parsed.config.mtu, Some(1450));
        let ipam = parsed.config.require_ipam().expect("ipam section");
        assert_eq!(ipam.plugin_type, AGENT_IPAM_TYPE);
        assert_eq!(
            ipam.socket.as_deref(),
            Some(Path::new("/var/run/tortie/ipam.sock"))
        );
    }

    #[test]
    fn portmap_follows_the_bin_dir() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = Path::new("/run/x.sock");
        assert!(!ConflistSettings::new(None, socket, dir.path()).portmap);
        std::fs::write(dir.path().join("portmap"), b"").expect("write");
        assert!(ConflistSettings::new(None, socket, dir.path()).portmap);
    }

    #[test]
    fn writes_only_on_change_and_removes_idempotently() {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf_dir = dir.path().join("net.d");
        let text = render(&settings(false));
        assert!(write_conflist(&conf_dir, &text).expect("first write"));
        assert!(!write_conflist(&conf_dir, &text).expect("same text"));
        assert!(write_conflist(&conf_dir, &render(&settings(true))).expect("new text"));
        let entries: Vec<_> = std::fs::read_dir(&conf_dir)
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(entries, vec![CONFLIST_NAME], "no temporary file is left");

        assert!(remove_conflist(&conf_dir).expect("remove"));
        assert!(!remove_conflist(&conf_dir).expect("already gone"));
    }

    #[test]
    fn installs_binaries_executable() {
        let from = tempfile::tempdir().expect("temp dir");
        let to = tempfile::tempdir().expect("temp dir");
        for name in PLUGIN_BINARIES {
            std::fs::write(from.path().join(name), name).expect("write");
        }
        let installed = install_binaries(from.path(), to.path()).expect("install");
        assert_eq!(installed.len(), 2);
        for path in installed {
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o755, "{}", path.display());
        }

        std::fs::remove_file(from.path().join("tortie-ipam")).expect("remove");
        let error = install_binaries(from.path(), to.path()).expect_err("missing binary");
        assert!(error.to_string().contains("tortie-ipam"), "{error}");
    }
}
