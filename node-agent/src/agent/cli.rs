//! The agent binary's subcommands: `run` (the default), and the two one-shot jobs the
//! DaemonSet runs around it, `install-cni` (init container) and `remove-cni-config`
//! (preStop hook).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::Args;
use super::cni_config::{self, FileError};
use crate::dataplane::sysctl::{self, Sysctl, SysctlError};

/// The agent's command line.
#[derive(Parser, Debug)]
#[command(name = "tortie-agent", version, about = "Tortie's per-node agent")]
pub struct Cli {
    /// What to do; `run` when no subcommand is given.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve IPAM, program the node from its NodeNetworkConfig and report back, until
    /// SIGTERM.
    Run(Args),
    /// Copy the CNI plugin binaries into the CNI bin directory and set the host sysctls
    /// the data path needs, then exit.
    InstallCni(InstallCniArgs),
    /// Remove Tortie's CNI conflist so the runtime stops sending pods to this node's
    /// plugin, then exit.
    RemoveCniConfig(RemoveCniConfigArgs),
}

/// Flags of `install-cni`.
#[derive(clap::Args, Debug, Clone)]
pub struct InstallCniArgs {
    /// Where the plugin binaries go.
    #[arg(long, env = "TORTIE_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
}

/// Flags of `remove-cni-config`.
#[derive(clap::Args, Debug, Clone)]
pub struct RemoveCniConfigArgs {
    /// Where the conflist is.
    #[arg(long, env = "TORTIE_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
}

/// Why a one-shot subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum OneShotError {
    /// The agent's own path could not be found.
    #[error("cannot find the tortie-agent executable's directory: {0}")]
    OwnPath(#[source] std::io::Error),
    /// A file could not be put in place or removed.
    #[error(transparent)]
    File(#[from] FileError),
    /// A sysctl could not be set.
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
}

/// The argument list with `run` inserted when no subcommand is named, so `tortie-agent`
/// and `tortie-agent --node-name x` keep working.
pub fn with_default_subcommand(args: Vec<OsString>) -> Vec<OsString> {
    let names = ["run", "install-cni", "remove-cni-config", "help"];
    let top_level_flags = ["-h", "--help", "-V", "--version"];
    let first = args.get(1).and_then(|arg| arg.to_str());
    let named = first.is_some_and(|arg| names.contains(&arg) || top_level_flags.contains(&arg));
    if named {
        return args;
    }
    let mut with_run = args;
    let at = with_run.len().min(1);
    with_run.insert(at, OsString::from("run"));
    with_run
}

/// `install-cni`: copies the plugins from the agent's own directory into `bin_dir`, and
/// turns on forwarding (IPv6 too when the kernel has it).
pub fn install_cni(args: &InstallCniArgs) -> Result<(), OneShotError> {
    let own = std::env::current_exe().map_err(OneShotError::OwnPath)?;
    let from = own.parent().ok_or_else(|| {
        OneShotError::OwnPath(std::io::Error::other(format!(
            "{} has no parent directory",
            own.display()
        )))
    })?;
    for path in cni_config::install_binaries(from, &args.cni_bin_dir)? {
        tracing::info!(path = %path.display(), "CNI plugin installed");
    }
    sysctl::apply(&forwarding_sysctls(
        PathBuf::from("/proc/sys/net/ipv6").exists(),
    ))?;
    tracing::info!("Forwarding enabled");
    Ok(())
}

/// `remove-cni-config`: removes the conflist; nothing to remove is fine.
pub fn remove_cni_config(args: &RemoveCniConfigArgs) -> Result<(), OneShotError> {
    let dir = &args.cni_conf_dir;
    if cni_config::remove_conflist(dir)? {
        tracing::info!(dir = %dir.display(), "CNI conflist removed");
    } else {
        tracing::info!(dir = %dir.display(), "No CNI conflist to remove");
    }
    Ok(())
}

/// The sysctls pods' traffic needs on the host.
pub fn forwarding_sysctls(ipv6: bool) -> Vec<Sysctl> {
    let mut settings = vec![Sysctl {
        key: "net/ipv4/ip_forward".into(),
        value: "1",
    }];
    if ipv6 {
        settings.push(Sysctl {
            key: "net/ipv6/conf/all/forwarding".into(),
            value: "1",
        });
    }
    settings
}

/// The log filter: `TORTIE_LOG_LEVEL` (Felix's level names are accepted too) wins over
/// `RUST_LOG`; `info` when neither is set. Levels below `info` apply to Tortie's own code
/// only: the HTTP and TLS libraries would otherwise bury it.
pub fn log_filter(tortie_level: Option<&str>, rust_log: Option<&str>) -> String {
    if let Some(level) = tortie_level
        .map(str::trim)
        .filter(|level| !level.is_empty())
    {
        return match level.to_ascii_lowercase().as_str() {
            "warning" => "warn".to_owned(),
            "fatal" | "panic" => "error".to_owned(),
            verbose @ ("debug" | "trace") => format!("info,tortie_node_agent={verbose}"),
            other => other.to_owned(),
        };
    }
    rust_log
        .filter(|filter| !filter.trim().is_empty())
        .unwrap_or("info")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn run_is_the_default_subcommand() {
        assert_eq!(
            with_default_subcommand(args(&["tortie-agent"])),
            args(&["tortie-agent", "run"])
        );
        assert_eq!(
            with_default_subcommand(args(&["tortie-agent", "--node-name", "a"])),
            args(&["tortie-agent", "run", "--node-name", "a"])
        );
        assert_eq!(
            with_default_subcommand(args(&["tortie-agent", "install-cni"])),
            args(&["tortie-agent", "install-cni"])
        );
        assert_eq!(
            with_default_subcommand(args(&["tortie-agent", "--help"])),
            args(&["tortie-agent", "--help"])
        );
    }

    #[test]
    fn subcommands_parse() {
        let cli =
            Cli::try_parse_from(["tortie-agent", "run", "--node-name", "worker-1"]).expect("run");
        let Command::Run(run) = cli.command else {
            panic!("expected run");
        };
        assert_eq!(run.node_name, "worker-1");

        let cli = Cli::try_parse_from(["tortie-agent", "remove-cni-config"]).expect("remove");
        let Command::RemoveCniConfig(remove) = cli.command else {
            panic!("expected remove-cni-config");
        };
        assert_eq!(remove.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));

        let cli = Cli::try_parse_from(["tortie-agent", "install-cni", "--cni-bin-dir", "/x"])
            .expect("install");
        let Command::InstallCni(install) = cli.command else {
            panic!("expected install-cni");
        };
        assert_eq!(install.cni_bin_dir, PathBuf::from("/x"));
    }

    #[test]
    fn ipv6_forwarding_only_when_the_kernel_has_ipv6() {
        assert_eq!(forwarding_sysctls(false).len(), 1);
        let keys: Vec<_> = forwarding_sysctls(true)
            .into_iter()
            .map(|s| s.key)
            .collect();
        assert_eq!(
            keys,
            ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"]
        );
    }

    #[test]
    fn log_levels() {
        assert_eq!(log_filter(Some("Warning"), Some("debug")), "warn");
        assert_eq!(log_filter(Some("Info"), None), "info");
        assert_eq!(
            log_filter(Some("Debug"), None),
            "info,tortie_node_agent=debug"
        );
        assert_eq!(log_filter(Some("Fatal"), None), "error");
        assert_eq!(log_filter(None, Some("tortie=debug")), "tortie=debug");
        assert_eq!(log_filter(Some(" "), None), "info");
    }
}
