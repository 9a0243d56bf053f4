//! Network namespaces and links, made with iproute2 (`ip`), the tool people use to look
//! at them too.

use std::path::Path;
use std::process::Command;

use crate::Error;

/// Runs `ip <args>` and returns its stdout.
pub fn ip(args: &[&str]) -> Result<String, Error> {
    let mut command = Command::new("ip");
    command.args(args);
    run(command)
}

/// Runs `ip -n <netns> <args>`: the same, inside a named network namespace.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<String, Error> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(mut command: Command) -> Result<String, Error> {
    let line = command_line(&command);
    let output = command.output().map_err(|source| Error::Spawn {
        program: line.clone(),
        source,
    })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: line,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// True when a named network namespace exists (`ip netns list` shows it).
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Creates a named network namespace and brings its loopback up.
pub fn add_netns(name: &str) -> Result<(), Error> {
    ip(&["netns", "add", name])?;
    ip_in(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a named network namespace if it exists. Links inside it go with it; a veth
/// inside takes its peer in the other namespace along.
pub fn delete_netns(name: &str) -> Result<(), Error> {
    if netns_exists(name) {
        ip(&["netns", "delete", name])?;
    }
    Ok(())
}

/// True when a link of this name exists in the root namespace.
pub fn root_link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Deletes a link in the root namespace if it exists.
pub fn delete_root_link(name: &str) -> Result<(), Error> {
    if root_link_exists(name) {
        ip(&["link", "delete", name])?;
    }
    Ok(())
}

/// Sets a sysctl inside a network namespace (`net.*` sysctls are per namespace).
pub fn sysctl_in(netns: &str, key: &str, value: &str) -> Result<(), Error> {
    let mut command = Command::new("ip");
    command.args([
        "netns",
        "exec",
        netns,
        "sysctl",
        "-q",
        "-w",
        &format!("{key}={value}"),
    ]);
    run(command).map(drop)
}

/// The command as a person would type it, for error messages.
pub fn command_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
