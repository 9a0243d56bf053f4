//! The `CNI_*` environment a runtime sets when it runs the plugin.

use std::collections::HashMap;
use std::path::PathBuf;

use super::error::{CniError, ErrorCode};

/// The operation the runtime asks for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Wire a container into the network.
    Add,
    /// Undo ADD; must succeed when there is nothing left.
    Del,
    /// Verify that ADD's work is still in place.
    Check,
    /// Report the supported spec versions.
    Version,
    /// Report whether the plugin can serve ADD (1.1.0).
    Status,
    /// Remove leftovers of attachments the runtime no longer knows (1.1.0).
    Gc,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ADD" => Some(Self::Add),
            "DEL" => Some(Self::Del),
            "CHECK" => Some(Self::Check),
            "VERSION" => Some(Self::Version),
            "STATUS" => Some(Self::Status),
            "GC" => Some(Self::Gc),
            _ => None,
        }
    }

    /// The command as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Status => "STATUS",
            Self::Gc => "GC",
        }
    }
}

/// The Kubernetes identity of the pod, from `CNI_ARGS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodArgs {
    /// `K8S_POD_NAMESPACE`.
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub name: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    pub infra_container_id: Option<String>,
}

/// Everything the runtime said through the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`; required for ADD, DEL and CHECK.
    pub container_id: String,
    /// `CNI_NETNS`; may be empty on DEL.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`, the interface to make inside the pod.
    pub ifname: String,
    /// The parsed `CNI_ARGS`.
    pub pod: PodArgs,
    /// `CNI_PATH`, where delegate plugins are looked up, in order.
    pub cni_path: Vec<PathBuf>,
}

impl Invocation {
    /// Reads and checks the variables `command` needs, from `env`.
    pub fn from_env(command: Command, env: &HashMap<String, String>) -> Result<Self, CniError> {
        let get = |name: &str| env.get(name).map(String::as_str).filter(|v| !v.is_empty());
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);

        let container_id = match get("CNI_CONTAINERID") {
            Some(id) => {
                validate_container_id(id)?;
                id.to_owned()
            }
            None if per_container => return Err(missing("CNI_CONTAINERID")),
            None => String::new(),
        };

        let netns = get("CNI_NETNS").map(PathBuf::from);
        if netns.is_none() && matches!(command, Command::Add | Command::Check) {
            return Err(missing("CNI_NETNS"));
        }

        let ifname = match get("CNI_IFNAME") {
            Some(name) => {
                validate_ifname(name)?;
                name.to_owned()
            }
            None if per_container => return Err(missing("CNI_IFNAME")),
            None => String::new(),
        };

        let pod = parse_cni_args(get("CNI_ARGS").unwrap_or(""))?;

        let cni_path: Vec<PathBuf> = get("CNI_PATH")
            .unwrap_or("")
            .split(':')
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .collect();
        if cni_path.is_empty() && command != Command::Version {
            return Err(missing("CNI_PATH"));
        }

        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            pod,
            cni_path,
        })
    }
}

/// Parses `K=V;K=V` pairs; unknown keys are an error unless `IgnoreUnknown` is set.
pub fn parse_cni_args(text: &str) -> Result<PodArgs, CniError> {
    let mut pod = PodArgs::default();
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;

    for pair in text.split(';').filter(|pair| !pair.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"),
            ));
        };
        match key {
            "K8S_POD_NAMESPACE" => pod.namespace = Some(value.to_owned()),
            "K8S_POD_NAME" => pod.name = Some(value.to_owned()),
            "K8S_POD_INFRA_CONTAINER_ID" => pod.infra_container_id = Some(value.to_owned()),
            "IgnoreUnknown" => {
                ignore_unknown = matches!(value.to_ascii_lowercase().as_str(), "1" | "true")
            }
            other => unknown.push(other.to_owned()),
        }
    }

    if !unknown.is_empty() && !ignore_unknown {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "CNI_ARGS has unknown keys {}; add IgnoreUnknown=1 to pass them through",
                unknown.join(", ")
            ),
        ));
    }
    Ok(pod)
}

fn missing(name: &str) -> CniError {
    CniError::new(
        ErrorCode::InvalidEnvironment,
        format!("environment variable {name} is missing or empty"),
    )
}

/// The spec allows letters, digits and `_.-`, starting with a letter or digit.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let first_ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "CNI_CONTAINERID {id:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
            ),
        ))
    }
}

/// Linux interface names: at most 15 bytes, no '/', ':' or whitespace, not "." or "..".
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let bad_char = name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if name.len() > 15 || bad_char || name == "." || name == ".." {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "CNI_IFNAME {name:?} is not a valid interface name (at most 15 bytes, no '/', ':' or spaces)"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn add_reads_every_variable() {
        let env = env(&[
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/pod"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc123;FOO=bar",
            ),
            ("CNI_PATH", "/opt/cni/bin::/usr/lib/cni"),
        ]);
        let invocation = Invocation::from_env(Command::Add, &env).expect("valid environment");
        assert_eq!(invocation.pod.namespace.as_deref(), Some("default"));
        assert_eq!(invocation.pod.name.as_deref(), Some("web-0"));
        assert_eq!(invocation.cni_path.len(), 2);
        assert_eq!(invocation.ifname, "eth0");
    }

    #[test]
    fn add_without_netns_is_invalid_environment() {
        let env = env(&[
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]);
        let error = Invocation::from_env(Command::Add, &env).expect_err("netns is required");
        assert_eq!(error.code, ErrorCode::InvalidEnvironment);
        assert!(error.msg.contains("CNI_NETNS"));
        assert!(Invocation::from_env(Command::Del, &env).is_ok());
    }

    #[test]
    fn unknown_args_need_ignore_unknown() {
        let error = parse_cni_args("FOO=bar").expect_err("unknown key");
        assert!(error.msg.contains("FOO"));
        assert!(parse_cni_args("IgnoreUnknown=true;FOO=bar").is_ok());
        assert!(parse_cni_args("novalue").is_err());
    }

    #[test]
    fn rejects_bad_ids_and_names() {
        assert!(validate_container_id("-abc").is_err());
        assert!(validate_container_id("abc/def").is_err());
        assert!(validate_container_id("abc_1.2-3").is_ok());
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("a/b").is_err());
        assert!(validate_ifname("sixteen-chars-xx").is_err());
    }
}
