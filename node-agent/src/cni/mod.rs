//! `tortie-cni`: the CNI plugin that wires a pod into the node's routed network.
//!
//! The runtime runs the plugin with `CNI_*` variables and the network configuration on
//! stdin; the plugin answers on stdout with a result or an error JSON and exits.
//! Addresses come from an [`ipam::Ipam`] backend; today that is the IPAM plugin named in
//! `ipam.type`, run as a delegate.

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
                format!("tortie-cni hit an internal error: {what}"),
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

fn execute(
    env: &HashMap<String, String>,
    stdin: &mut dyn Read,
    version: &mut SpecVersion,
) -> Result<Option<Value>, CniError> {
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
        return Ok(Some(commands::version()));
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
