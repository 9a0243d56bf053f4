//! Calling CNI plugins as a container runtime does: the first network configuration of the
//! configuration directory in lexical order, its plugins chained in order on ADD (each gets
//! the previous one's result as `prevResult`) and in reverse order on DEL.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tracing::{debug, warn};

/// What can go wrong reading a network configuration or calling a plugin.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// There is no network configuration.
    #[error("no CNI network configuration in {0}")]
    NoConfig(PathBuf),
    /// The configuration file is not a valid network configuration.
    #[error("CNI configuration {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The plugin binary is not in the plugin directory.
    #[error("CNI plugin {plugin:?} not found in {dir}; install it there")]
    PluginMissing {
        /// The plugin's `type`.
        plugin: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// The plugin could not be run.
    #[error("CNI plugin {plugin} could not be run: {source}")]
    Exec {
        /// The plugin's `type`.
        plugin: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The plugin ran and reported an error.
    #[error("plugin type={plugin:?} failed ({command}): {message}")]
    Plugin {
        /// The plugin's `type`.
        plugin: String,
        /// ADD or DEL.
        command: &'static str,
        /// The error code of the plugin's error JSON, when it printed one.
        code: Option<u64>,
        /// The plugin's `msg` and `details`, or its raw output.
        message: String,
    },
}

/// A network configuration list (a `.conflist`, or a single `.conf` seen as a list of one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkList {
    /// The file it was read from.
    pub source: PathBuf,
    /// The network's name, given to every plugin.
    pub name: String,
    /// The CNI version, given to every plugin.
    pub cni_version: String,
    /// The plugins' configurations, in chain order.
    pub plugins: Vec<Map<String, Value>>,
}

/// One port mapping for plugins with the `portMappings` capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The node's port.
    pub host_port: i32,
    /// The pod's port.
    pub container_port: i32,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The node address to bind, when not all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// The parameters of one plugin call (the `CNI_*` environment).
#[derive(Clone, Debug)]
pub struct Invocation {
    /// `CNI_CONTAINERID`: the sandbox's ID.
    pub container_id: String,
    /// `CNI_NETNS`: the path of the pod's network namespace.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// `CNI_PATH`: where plugins are.
    pub bin_dir: PathBuf,
}

/// True for the file names a container runtime reads as network configurations.
pub fn is_config_file(name: &str) -> bool {
    [".conflist", ".conf", ".json"]
        .iter()
        .any(|extension| name.ends_with(extension))
}

/// The first network configuration of `dir` in lexical order of file names.
pub fn first_config(dir: &Path) -> Result<NetworkList, CniError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|_| CniError::NoConfig(dir.to_path_buf()))?
        .flatten()
        .filter(|entry| entry.path().is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| is_config_file(name))
        .collect();
    names.sort();
    let name = names
        .first()
        .ok_or_else(|| CniError::NoConfig(dir.to_path_buf()))?;
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|error| CniError::Config {
        path: path.clone(),
        message: error.to_string(),
    })?;
    parse_config(&path, &text)
}

/// Parses a `.conflist` (has `plugins`) or a single-plugin `.conf`.
pub fn parse_config(path: &Path, text: &str) -> Result<NetworkList, CniError> {
    let invalid = |message: String| CniError::Config {
        path: path.to_path_buf(),
        message,
    };
    let value: Value = serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let object = value
        .as_object()
        .ok_or_else(|| invalid("the top level must be a JSON object".into()))?;
    let field = |key: &str| {
        object
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| invalid(format!("field `{key}` is missing or not a string")))
    };
    let name = field("name")?;
    let cni_version = field("cniVersion")?;
    let plugins = match object.get("plugins") {
        Some(Value::Array(plugins)) => plugins
            .iter()
            .enumerate()
            .map(|(index, plugin)| {
                let plugin = plugin
                    .as_object()
                    .ok_or_else(|| invalid(format!("plugins[{index}] must be an object")))?;
                if !plugin.get("type").is_some_and(Value::is_string) {
                    return Err(invalid(format!("plugins[{index}].type is missing")));
                }
                Ok(plugin.clone())
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(invalid("field `plugins` must be a list".into())),
        None => {
            field("type")?;
            vec![object.clone()]
        }
    };
    if plugins.is_empty() {
        return Err(invalid(
            "field `plugins` is empty; it needs at least one plugin".into(),
        ));
    }
    Ok(NetworkList {
        source: path.to_path_buf(),
        name,
        cni_version,
        plugins,
    })
}

/// `CNI_ARGS` as the kubelet's runtimes pass them.
pub fn cni_args(namespace: &str, pod: &str, sandbox: &str, uid: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};\
         K8S_POD_INFRA_CONTAINER_ID={sandbox};K8S_POD_UID={uid}"
    )
}

/// What one plugin of the chain reads on stdin: its own configuration with the network's
/// `name` and `cniVersion`, the previous result (if any) and the runtime configuration for
/// the capabilities it declares.
pub fn plugin_stdin(
    list: &NetworkList,
    index: usize,
    prev_result: Option<&Value>,
    port_mappings: &[PortMapping],
) -> Value {
    let mut config = list.plugins[index].clone();
    config.insert("name".into(), json!(list.name));
    config.insert("cniVersion".into(), json!(list.cni_version));
    if let Some(result) = prev_result {
        config.insert("prevResult".into(), result.clone());
    }
    let wants_ports = config
        .get("capabilities")
        .and_then(|capabilities| capabilities.get("portMappings"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if wants_ports && !port_mappings.is_empty() {
        config.insert(
            "runtimeConfig".into(),
            json!({ "portMappings": port_mappings }),
        );
    }
    Value::Object(config)
}

/// Runs ADD through the chain; returns the last plugin's result.
pub async fn add(
    list: &NetworkList,
    invocation: &Invocation,
    port_mappings: &[PortMapping],
) -> Result<Value, CniError> {
    let mut result: Option<Value> = None;
    for index in 0..list.plugins.len() {
        let stdin = plugin_stdin(list, index, result.as_ref(), port_mappings);
        result = Some(exec(&list.plugins[index], "ADD", invocation, &stdin).await?);
    }
    Ok(result.unwrap_or(Value::Null))
}

/// Runs DEL through the chain in reverse order, with the ADD result as `prevResult` when the
/// version has it. Every plugin is called even after one fails; the first error is returned.
pub async fn del(
    list: &NetworkList,
    invocation: &Invocation,
    add_result: Option<&Value>,
    port_mappings: &[PortMapping],
) -> Result<(), CniError> {
    let prev = add_result.filter(|_| has_prev_result_on_del(&list.cni_version));
    let mut first_error = None;
    for index in (0..list.plugins.len()).rev() {
        let stdin = plugin_stdin(list, index, prev, port_mappings);
        if let Err(error) = exec(&list.plugins[index], "DEL", invocation, &stdin).await {
            warn!(%error, sandbox = %invocation.container_id, "CNI DEL failed");
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The addresses of a result (`ips` from 0.3.0 on, `ip4`/`ip6` before), without prefix.
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    let strip = |text: &str| text.split('/').next().and_then(|ip| ip.parse().ok());
    let mut ips: Vec<IpAddr> = result
        .get("ips")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str).and_then(strip))
                .collect()
        })
        .unwrap_or_default();
    for legacy in ["ip4", "ip6"] {
        if let Some(ip) = result
            .get(legacy)
            .and_then(|ip| ip.get("ip"))
            .and_then(Value::as_str)
            .and_then(strip)
        {
            ips.push(ip);
        }
    }
    ips
}

/// DEL carries `prevResult` from spec 0.4.0 on.
fn has_prev_result_on_del(version: &str) -> bool {
    !["0.1.", "0.2.", "0.3."]
        .iter()
        .any(|old| version.starts_with(old))
}

async fn exec(
    plugin: &Map<String, Value>,
    command: &'static str,
    invocation: &Invocation,
    stdin: &Value,
) -> Result<Value, CniError> {
    let kind = plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let binary = invocation.bin_dir.join(&kind);
    if kind.is_empty() || kind.contains('/') || !binary.is_file() {
        return Err(CniError::PluginMissing {
            plugin: kind,
            dir: invocation.bin_dir.clone(),
        });
    }
    debug!(plugin = %kind, command, sandbox = %invocation.container_id, "calling CNI plugin");
    let mut child = tokio::process::Command::new(&binary)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &invocation.container_id)
        .env("CNI_NETNS", &invocation.netns)
        .env("CNI_IFNAME", &invocation.ifname)
        .env("CNI_ARGS", &invocation.args)
        .env("CNI_PATH", &invocation.bin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CniError::Exec {
            plugin: kind.clone(),
            source,
        })?;
    let bytes = serde_json::to_vec(stdin).expect("a JSON value serialises");
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin that exits without reading its stdin is reported by its exit status.
        let _ = pipe.write_all(&bytes).await;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|source| CniError::Exec {
            plugin: kind.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.success() {
        if stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        return serde_json::from_str(&stdout).map_err(|error| CniError::Plugin {
            plugin: kind,
            command,
            code: None,
            message: format!("its result is not JSON ({error}): {stdout}"),
        });
    }
    let (code, message) = plugin_error(&stdout, &String::from_utf8_lossy(&output.stderr));
    Err(CniError::Plugin {
        plugin: kind,
        command,
        code,
        message,
    })
}

/// The code and message of a plugin's error JSON, or its raw output when it printed none.
fn plugin_error(stdout: &str, stderr: &str) -> (Option<u64>, String) {
    match serde_json::from_str::<Value>(stdout) {
        Ok(error) => {
            let code = error.get("code").and_then(Value::as_u64);
            let msg = error.get("msg").and_then(Value::as_str).unwrap_or_default();
            let details = error
                .get("details")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let message = match (msg, details) {
                ("", "") => stdout.trim().to_string(),
                (msg, "") => msg.to_string(),
                (msg, details) => format!("{msg}: {details}"),
            };
            (code, message)
        }
        Err(_) => (
            None,
            format!("{} {}", stdout.trim(), stderr.trim())
                .trim()
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [
            {"type": "ptp", "ipam": {"type": "host-local"}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "tuning"}
        ]
    }"#;

    #[test]
    fn a_conflist_and_a_single_conf_are_read_alike() {
        let list = parse_config(Path::new("10.conflist"), LIST).expect("a valid list");
        assert_eq!(list.name, "pods");
        assert_eq!(list.plugins.len(), 3);

        let single = r#"{"cniVersion": "0.3.1", "name": "one", "type": "bridge"}"#;
        let one = parse_config(Path::new("10.conf"), single).expect("a valid conf");
        assert_eq!(one.plugins.len(), 1);
        assert_eq!(one.plugins[0]["type"], "bridge");
    }

    #[test]
    fn bad_configurations_name_the_file_and_field() {
        for (text, needle) in [
            ("[]", "top level"),
            (r#"{"name": "x", "plugins": []}"#, "cniVersion"),
            (
                r#"{"name": "x", "cniVersion": "1.0.0", "plugins": []}"#,
                "empty",
            ),
            (
                r#"{"name": "x", "cniVersion": "1.0.0", "plugins": [{}]}"#,
                "plugins[0].type",
            ),
        ] {
            let error = parse_config(Path::new("/etc/cni/net.d/bad.conflist"), text)
                .expect_err(text)
                .to_string();
            assert!(
                error.contains("bad.conflist") && error.contains(needle),
                "{error}"
            );
        }
    }

    #[test]
    fn each_plugin_gets_name_version_previous_result_and_its_capabilities() {
        let list = parse_config(Path::new("10.conflist"), LIST).expect("a valid list");
        let ports = [PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: None,
        }];
        let first = plugin_stdin(&list, 0, None, &ports);
        assert_eq!(first["name"], "pods");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("prevResult").is_none());
        assert!(
            first.get("runtimeConfig").is_none(),
            "ptp has no portMappings capability"
        );

        let previous = json!({"ips": [{"address": "10.88.0.5/24"}]});
        let second = plugin_stdin(&list, 1, Some(&previous), &ports);
        assert_eq!(second["prevResult"], previous);
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert_eq!(
            second["runtimeConfig"]["portMappings"][0]["containerPort"],
            80
        );

        let no_ports = plugin_stdin(&list, 1, Some(&previous), &[]);
        assert!(no_ports.get("runtimeConfig").is_none());
    }

    #[test]
    fn result_addresses_are_read_from_every_result_version() {
        let current = json!({"ips": [
            {"address": "10.88.0.5/24", "gateway": "10.88.0.1"},
            {"address": "fd00::5/64"},
        ]});
        assert_eq!(
            result_ips(&current),
            vec![
                "10.88.0.5".parse::<IpAddr>().expect("valid"),
                "fd00::5".parse().expect("valid")
            ]
        );
        let legacy = json!({"ip4": {"ip": "10.1.2.3/16"}});
        assert_eq!(
            result_ips(&legacy),
            vec!["10.1.2.3".parse::<IpAddr>().expect("valid")]
        );
    }

    #[test]
    fn cni_args_carry_the_pod_identity() {
        assert_eq!(
            cni_args("ns", "web-1", "abc", "u-1"),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-1;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
        );
        assert!(has_prev_result_on_del("1.0.0") && has_prev_result_on_del("0.4.0"));
        assert!(!has_prev_result_on_del("0.3.1"));
    }

    #[test]
    fn plugin_errors_keep_the_plugins_message() {
        let (code, message) = plugin_error(
            r#"{"code": 11, "msg": "no IP addresses available", "details": "range full"}"#,
            "",
        );
        assert_eq!(code, Some(11));
        assert_eq!(message, "no IP addresses available: range full");
        let (code, message) = plugin_error("", "panic: oops");
        assert_eq!((code, message.as_str()), (None, "panic: oops"));
    }
}
