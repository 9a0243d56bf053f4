//! `tortie-cni`: the CNI plugin that wires a pod into the node's routed network.
//!
//! The runtime runs the plugin with `CNI_*` variables and the network configuration on
//! stdin; the plugin answers on stdout with a result or an error JSON and exits.
//! Addresses come from an [`ipam::Ipam`] backend: the node agent over its socket
//! ([`agent_ipam::AgentIpam`]) when `ipam.type` is `tortie-ipam` or the `ipam` section is
//! absent, otherwise the IPAM plugin named in `ipam.type`, run as a delegate.
//!
//! [`run_ipam`] is the same agent IPAM as a standalone IPAM plugin (`tortie-ipam`), for
//! other main plugins to chain.

pub mod agent_ipam;
pub mod commands;
pub mod config;
pub mod error;
pub mod invocation;
pub mod ipam;
pub mod log;
pub mod netlink;
pub mod result;
pub mod version;
pub mod wiring;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde_json::Value;

use error::{CniError, ErrorCode};
use invocation::{Command, Invocation};
use version::SpecVersion;

/// Runs one CNI invocation and returns the process exit code (0 on success).
///
/// Everything the runtime reads goes to `stdout`; a panic anywhere becomes error 104.
pub fn run(env: &HashMap<String, String>, stdin: &mut dyn Read, stdout: &mut dyn Write) -> u8 {
    run_with(env, stdin, stdout, "tortie-cni", execute)
}

/// Runs one invocation of the IPAM plugin `tortie-ipam` and returns the exit code: ADD
/// answers with the addresses only, the other commands as the spec says for IPAM.
pub fn run_ipam(env: &HashMap<String, String>, stdin: &mut dyn Read, stdout: &mut dyn Write) -> u8 {
    run_with(env, stdin, stdout, "tortie-ipam", execute_ipam)
}

/// How one plugin turns an invocation into an answer.
type Executor = fn(
    &HashMap<String, String>,
    &mut dyn Read,
    &mut SpecVersion,
) -> Result<Option<Value>, CniError>;

fn run_with(
    env: &HashMap<String, String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    plugin: &str,
    execute: Executor,
) -> u8 {
    let mut version = SpecVersion::LATEST;
    let outcome = catch_unwind(AssertUnwindSafe(|| execute(env, stdin, &mut version)))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            Err(CniError::new(
                ErrorCode::Internal,
                format!("{plugin} hit an internal error: {what}"),
            ))
        });

    let (answer, code) = match outcome {
        Ok(Some(answer)) => (Some(answer), 0),
        Ok(None) => (None, 0),
        Err(error) => {
            tracing::error!(code = error.code.number(), error = %error.msg, details = %error.details, "CNI operation failed");
            (Some(error.to_json(version)), 1)
        }
    };
    if let Some(answer) = answer {
        let written = serde_json::to_writer(&mut *stdout, &answer)
            .map_err(std::io::Error::from)
            .and_then(|()| stdout.write_all(b"\n"))
            .and_then(|()| stdout.flush());
        if written.is_err() {
            return 5;
        }
    }
    code
}

/// Reads `CNI_COMMAND`, the configuration and the environment; `None` for VERSION,
/// which needs neither.
fn prepare(
    env: &HashMap<String, String>,
    stdin: &mut dyn Read,
    version: &mut SpecVersion,
) -> Result<Option<(Command, config::ParsedConfig, Invocation)>, CniError> {
    let command_text = env.get("CNI_COMMAND").map(String::as_str).unwrap_or("");
    let command = Command::parse(command_text).ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "CNI_COMMAND {command_text:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
            ),
        )
    })?;
    if command == Command::Version {
        return Ok(None);
    }

    let mut raw = Vec::new();
    stdin.read_to_end(&mut raw).map_err(|error| {
        CniError::new(
            ErrorCode::Io,
            "could not read the network configuration from stdin",
        )
        .with_details(error.to_string())
    })?;
    let config = config::parse(raw)?;
    *version = config.version;
    log::init(&config.config);

    let invocation = Invocation::from_env(command, env)?;
    tracing::debug!(command = command.as_str(), container = %invocation.container_id, network = %config.config.name, "invoked");
    Ok(Some((command, config, invocation)))
}

fn execute(
    env: &HashMap<String, String>,
    stdin: &mut dyn Read,
    version: &mut SpecVersion,
) -> Result<Option<Value>, CniError> {
    let Some((command, config, invocation)) = prepare(env, stdin, version)? else {
        return Ok(Some(commands::version()));
    };

    match command {
        Command::Add => {
            let result = commands::add(&invocation, &config)?;
            Ok(Some(result.to_json(config.version)))
        }
        Command::Del => commands::del(&invocation, &config).map(|()| None),
        Command::Check => commands::check(&invocation, &config).map(|()| None),
        Command::Status => commands::status(&invocation, &config).map(|()| None),
        Command::Gc => commands::gc(&invocation, &config).map(|()| None),
        Command::Version => Ok(Some(commands::version())),
    }
}

fn execute_ipam(
    env: &HashMap<String, String>,
    stdin: &mut dyn Read,
    version: &mut SpecVersion,
) -> Result<Option<Value>, CniError> {
    let Some((command, config, invocation)) = prepare(env, stdin, version)? else {
        return Ok(Some(commands::version()));
    };
    let ipam = agent_ipam::AgentIpam::from_config(config.config.ipam.as_ref());
    let request = ipam::IpamRequest {
        invocation: &invocation,
        config: &config,
    };

    use ipam::Ipam as _;
    match command {
        Command::Add => Ok(Some(ipam.add(request)?.to_json(config.version))),
        Command::Del => ipam.del(request).map(|()| None),
        Command::Check => ipam.check(request).map(|()| None),
        Command::Status => ipam.status(request).map(|()| None),
        Command::Gc => ipam.gc(request).map(|()| None),
        Command::Version => Ok(Some(commands::version())),
    }
}
