//! Address management: the backend trait, and a delegated IPAM plugin as one backend
//! (the node agent is the other, in [`super::agent_ipam`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use super::config::ParsedConfig;
use super::error::{CniError, ErrorCode};
use super::invocation::{Command, Invocation};
use super::result::CniResult;
use super::version::SpecVersion;

/// What an IPAM backend needs to know about one request.
#[derive(Clone, Copy, Debug)]
pub struct IpamRequest<'a> {
    /// The runtime's environment.
    pub invocation: &'a Invocation,
    /// The network configuration, parsed and raw.
    pub config: &'a ParsedConfig,
}

/// An address allocator the plugin can ask for, release and verify addresses.
pub trait Ipam {
    /// Allocates addresses for the attachment.
    fn add(&self, request: IpamRequest<'_>) -> Result<CniResult, CniError>;
    /// Releases the attachment's addresses; succeeds when there are none.
    fn del(&self, request: IpamRequest<'_>) -> Result<(), CniError>;
    /// Verifies the attachment's addresses are still allocated to it.
    fn check(&self, request: IpamRequest<'_>) -> Result<(), CniError>;
    /// Reports whether addresses can be allocated now.
    fn status(&self, request: IpamRequest<'_>) -> Result<(), CniError>;
    /// Releases addresses of attachments not in the request's valid list.
    fn gc(&self, request: IpamRequest<'_>) -> Result<(), CniError>;
}

/// IPAM by running the plugin named in `ipam.type` from `CNI_PATH`, as the spec describes:
/// same environment, the same configuration on stdin, its result on stdout.
#[derive(Clone, Debug)]
pub struct Delegate {
    plugin: PathBuf,
}

impl Delegate {
    /// Finds `plugin_type` in the search path; code 7 naming the directories if absent.
    pub fn find(plugin_type: &str, cni_path: &[PathBuf]) -> Result<Self, CniError> {
        cni_path
            .iter()
            .map(|dir| dir.join(plugin_type))
            .find(|candidate| candidate.is_file())
            .map(|plugin| Self { plugin })
            .ok_or_else(|| {
                let dirs: Vec<String> = cni_path.iter().map(|d| d.display().to_string()).collect();
                CniError::new(
                    ErrorCode::InvalidNetworkConfig,
                    format!(
                        "IPAM plugin {plugin_type:?} (field ipam.type) was not found in CNI_PATH ({}); install it there or fix ipam.type",
                        dirs.join(":")
                    ),
                )
            })
    }

    /// The plugin binary this delegate runs.
    pub fn plugin(&self) -> &Path {
        &self.plugin
    }

    /// Runs the plugin; returns its stdout on success, its error (passed through) otherwise.
    ///
    /// Delegates older than 1.1.0 reject a 1.1.0 configuration although ADD, DEL and
    /// CHECK did not change in 1.1.0, so such a rejection is retried once as 1.0.0.
    fn exec(&self, command: Command, config: &ParsedConfig) -> Result<Vec<u8>, CniError> {
        match self.exec_raw(command, &config.raw) {
            Err(error)
                if error.code == ErrorCode::IncompatibleVersion
                    && config.version == SpecVersion::V1_1_0
                    && matches!(command, Command::Add | Command::Del | Command::Check) =>
            {
                tracing::debug!(plugin = %self.plugin.display(), "IPAM delegate predates 1.1.0, retrying as 1.0.0");
                let downgraded = with_version(&config.raw, SpecVersion::V1_0_0)?;
                self.exec_raw(command, &downgraded)
            }
            other => other,
        }
    }

    fn exec_raw(&self, command: Command, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
        let plugin = self.plugin.display();
        let mut child = Process::new(&self.plugin)
            .env("CNI_COMMAND", command.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| {
                CniError::new(
                    ErrorCode::IpamDelegate,
                    format!("could not run IPAM plugin {plugin}"),
                )
                .with_details(error.to_string())
            })?;

        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(stdin).map_err(|error| {
                CniError::new(
                    ErrorCode::Io,
                    format!("could not write the configuration to IPAM plugin {plugin}"),
                )
                .with_details(error.to_string())
            })?;
        }
        let output = child.wait_with_output().map_err(|error| {
            CniError::new(
                ErrorCode::Io,
                format!("could not read the answer of IPAM plugin {plugin}"),
            )
            .with_details(error.to_string())
        })?;

        let stderr = String::from_utf8_lossy(&output.stderr);
        if !stderr.trim().is_empty() {
            tracing::debug!(plugin = %plugin, command = command.as_str(), stderr = %stderr.trim(), "IPAM plugin wrote to stderr");
        }
        if output.status.success() {
            return Ok(output.stdout);
        }
        Err(delegate_error(
            &plugin.to_string(),
            command,
            &output.stdout,
            &stderr,
        ))
    }

    fn supports(&self, version: SpecVersion) -> Result<bool, CniError> {
        let stdout = self.exec_raw(Command::Version, br#"{"cniVersion":"1.1.0"}"#)?;
        let answer: Value = serde_json::from_slice(&stdout).map_err(|error| {
            CniError::new(
                ErrorCode::IpamDelegate,
                format!(
                    "IPAM plugin {} answered VERSION with invalid JSON",
                    self.plugin.display()
                ),
            )
            .with_details(error.to_string())
        })?;
        let supported = answer["supportedVersions"]
            .as_array()
            .is_some_and(|list| list.iter().any(|v| v.as_str() == Some(version.as_str())));
        Ok(supported)
    }
}

impl Ipam for Delegate {
    fn add(&self, request: IpamRequest<'_>) -> Result<CniResult, CniError> {
        let stdout = self.exec(Command::Add, request.config)?;
        let value: Value = serde_json::from_slice(&stdout).map_err(|error| {
            CniError::new(
                ErrorCode::IpamDelegate,
                format!(
                    "IPAM plugin {} answered ADD with invalid JSON",
                    self.plugin.display()
                ),
            )
            .with_details(error.to_string())
        })?;
        let result = CniResult::from_json(&value)?;
        if result.ips.is_empty() {
            return Err(CniError::new(
                ErrorCode::IpamDelegate,
                format!("IPAM plugin {} assigned no address", self.plugin.display()),
            ));
        }
        Ok(result)
    }

    fn del(&self, request: IpamRequest<'_>) -> Result<(), CniError> {
        self.exec(Command::Del, request.config).map(drop)
    }

    fn check(&self, request: IpamRequest<'_>) -> Result<(), CniError> {
        self.exec(Command::Check, request.config).map(drop)
    }

    fn status(&self, request: IpamRequest<'_>) -> Result<(), CniError> {
        if self.supports(SpecVersion::V1_1_0)? {
            return self.exec(Command::Status, request.config).map(drop);
        }
        // The binary was found and answered VERSION: for a pre-1.1 plugin that is all
        // there is to know.
        Ok(())
    }

    fn gc(&self, request: IpamRequest<'_>) -> Result<(), CniError> {
        if self.supports(SpecVersion::V1_1_0)? {
            return self.exec(Command::Gc, request.config).map(drop);
        }
        // Known limitation: a pre-1.1 IPAM plugin has no GC; the runtime's synthesized
        // DELs for stale attachments are what releases its addresses.
        tracing::info!(plugin = %self.plugin.display(), "IPAM plugin predates 1.1.0; skipping its GC");
        Ok(())
    }
}

/// Turns a failed delegate's stdout into our error, keeping its code and message.
fn delegate_error(plugin: &str, command: Command, stdout: &[u8], stderr: &str) -> CniError {
    let parsed: Option<Value> = serde_json::from_slice(stdout).ok();
    let code = parsed
        .as_ref()
        .and_then(|v| v["code"].as_u64())
        .and_then(|code| u32::try_from(code).ok());
    match (parsed.as_ref(), code) {
        (Some(error), Some(code)) => {
            let msg = error["msg"].as_str().unwrap_or("no message");
            let details = error["details"].as_str().unwrap_or("");
            CniError::new(
                ErrorCode::from_number(code),
                format!("IPAM plugin {plugin} failed {}: {msg}", command.as_str()),
            )
            .with_details(details)
        }
        _ => CniError::new(
            ErrorCode::IpamDelegate,
            format!(
                "IPAM plugin {plugin} failed {} without an error JSON",
                command.as_str()
            ),
        )
        .with_details(format!(
            "stdout: {} stderr: {}",
            String::from_utf8_lossy(stdout).trim(),
            stderr.trim()
        )),
    }
}

/// The configuration with its `cniVersion` replaced.
fn with_version(raw: &[u8], version: SpecVersion) -> Result<Vec<u8>, CniError> {
    let mut value: Value = serde_json::from_slice(raw).map_err(|error| {
        CniError::new(ErrorCode::Decode, "network configuration is not valid JSON")
            .with_details(error.to_string())
    })?;
    value["cniVersion"] = Value::String(version.as_str().into());
    if let Some(prev) = value.get_mut("prevResult")
        && prev.is_object()
    {
        prev["cniVersion"] = Value::String(version.as_str().into());
    }
    serde_json::to_vec(&value).map_err(|error| {
        CniError::new(ErrorCode::Internal, "could not re-encode the configuration")
            .with_details(error.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_through_the_delegates_code_and_message() {
        let error = delegate_error(
            "/usr/lib/cni/host-local",
            Command::Add,
            br#"{"code": 999, "msg": "no IP addresses available in range set"}"#,
            "",
        );
        assert_eq!(error.code.number(), 999);
        assert!(error.msg.contains("no IP addresses available"));
        assert!(error.msg.contains("host-local"));
    }

    #[test]
    fn garbage_from_a_delegate_is_our_own_code() {
        let error = delegate_error("x", Command::Del, b"segfault", "boom");
        assert_eq!(error.code, ErrorCode::IpamDelegate);
        assert!(error.details.contains("boom"));
    }

    #[test]
    fn downgrade_rewrites_both_versions() {
        let raw = br#"{"cniVersion":"1.1.0","name":"n","prevResult":{"cniVersion":"1.1.0"}}"#;
        let value: Value =
            serde_json::from_slice(&with_version(raw, SpecVersion::V1_0_0).expect("valid"))
                .expect("valid");
        assert_eq!(value["cniVersion"], "1.0.0");
        assert_eq!(value["prevResult"]["cniVersion"], "1.0.0");
    }

    #[test]
    fn missing_plugin_names_the_search_path() {
        let error = Delegate::find("no-such-ipam", &[PathBuf::from("/nonexistent")])
            .expect_err("absent plugin");
        assert!(error.msg.contains("/nonexistent"));
        assert!(error.msg.contains("ipam.type"));
    }
}
