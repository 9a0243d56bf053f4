//! The network configuration the runtime writes to the plugin's stdin.

use std::path::PathBuf;

use serde::Deserialize;

use super::error::{CniError, ErrorCode};
use super::result::Dns;
use super::version::SpecVersion;

/// Where logs go when the configuration does not say.
pub const DEFAULT_LOG_FILE: &str = "/var/log/tortie/cni.log";

/// One plugin's configuration, as the runtime passes it (from a conflist entry).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    /// The spec version the runtime speaks; results are written in its format.
    pub cni_version: String,
    /// The network's name, unique on the node.
    pub name: String,
    /// The plugin binary's name (`tortie-cni`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// MTU for both ends of the veth; the kernel's default when absent.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// How addresses are assigned.
    #[serde(default)]
    pub ipam: Option<IpamConfig>,
    /// DNS settings to report when IPAM reports none.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// The previous plugin's result (CHECK and DEL carry ours).
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// Capability arguments from the runtime; none are used yet.
    #[serde(default)]
    pub runtime_config: Option<serde_json::Value>,
    /// Log file path; [`DEFAULT_LOG_FILE`] when absent.
    #[serde(default, rename = "log_file")]
    pub log_file: Option<PathBuf>,
    /// `error`, `warn`, `info`, `debug` or `trace`; `info` when absent.
    #[serde(default, rename = "log_level")]
    pub log_level: Option<String>,
    /// GC: the attachments the runtime still knows about.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The `ipam` section. `type` names the IPAM plugin: `tortie-ipam` (the node agent,
/// also used when the section is absent) or any other plugin, run as a delegate.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct IpamConfig {
    /// The IPAM plugin binary looked up in `CNI_PATH`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// IPv4 pools (by name or CIDR) the node agent should allocate from.
    #[serde(default)]
    pub ipv4_pools: Vec<String>,
    /// IPv6 pools (by name or CIDR) the node agent should allocate from.
    #[serde(default)]
    pub ipv6_pools: Vec<String>,
    /// Whether to allocate an IPv4 address; `true` when absent. Calico writes this as
    /// the string `"true"` or `"false"`; a JSON boolean is read too.
    #[serde(default, deserialize_with = "flexible_bool")]
    pub assign_ipv4: Option<bool>,
    /// Whether to allocate an IPv6 address; `false` when absent.
    #[serde(default, deserialize_with = "flexible_bool")]
    pub assign_ipv6: Option<bool>,
    /// The node agent's IPAM socket; `/var/run/tortie/ipam.sock` when absent.
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// The IPAM type served by the node agent.
pub const AGENT_IPAM_TYPE: &str = "tortie-ipam";

/// Reads `true`, `false`, `"true"` or `"false"` (any case).
fn flexible_bool<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flexible {
        Bool(bool),
        Text(String),
    }
    match Option::<Flexible>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Flexible::Bool(value)) => Ok(Some(value)),
        Some(Flexible::Text(text)) => match text.to_ascii_lowercase().as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not \"true\" or \"false\""
            ))),
        },
    }
}

/// One attachment named in a GC request.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// The container the attachment belongs to.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name inside it.
    pub ifname: String,
}

/// A parsed configuration together with the bytes it came from (delegates get those).
#[derive(Clone, Debug)]
pub struct ParsedConfig {
    /// The version the runtime speaks.
    pub version: SpecVersion,
    /// The decoded fields.
    pub config: NetworkConfig,
    /// stdin, unchanged.
    pub raw: Vec<u8>,
}

/// Decodes stdin: not JSON is code 6, an unknown version code 1, a broken rule code 7.
pub fn parse(raw: Vec<u8>) -> Result<ParsedConfig, CniError> {
    let value: serde_json::Value = serde_json::from_slice(&raw).map_err(|error| {
        CniError::new(
            ErrorCode::Decode,
            "network configuration on stdin is not valid JSON",
        )
        .with_details(error.to_string())
    })?;

    let version_text = value
        .get("cniVersion")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidNetworkConfig,
                "network configuration has no cniVersion string",
            )
        })?;
    let version = SpecVersion::parse(version_text).ok_or_else(|| {
        CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("cniVersion {version_text:?} is not supported by tortie-cni"),
        )
        .with_details(format!(
            "supported versions: {}",
            SpecVersion::supported_list()
        ))
    })?;

    let config: NetworkConfig = serde_json::from_value(value).map_err(|error| {
        CniError::new(
            ErrorCode::InvalidNetworkConfig,
            format!("network configuration is invalid: {error}"),
        )
    })?;
    check_rules(&config)?;

    Ok(ParsedConfig {
        version,
        config,
        raw,
    })
}

fn check_rules(config: &NetworkConfig) -> Result<(), CniError> {
    let invalid = |msg: String| Err(CniError::new(ErrorCode::InvalidNetworkConfig, msg));
    if config.name.is_empty() {
        return invalid("network configuration field name must not be empty".into());
    }
    if let Some(mtu) = config.mtu
        && !(68..=65535).contains(&mtu)
    {
        return invalid(format!(
            "network {:?}: field mtu is {mtu}; it must be between 68 and 65535",
            config.name
        ));
    }
    if let Some(ipam) = &config.ipam {
        let bad = ipam.plugin_type.is_empty()
            || ipam.plugin_type.contains('/')
            || ipam.plugin_type.contains('\\')
            || ipam.plugin_type.starts_with('.');
        if bad {
            return invalid(format!(
                "network {:?}: field ipam.type {:?} must be a plugin file name in CNI_PATH, without '/'",
                config.name, ipam.plugin_type
            ));
        }
    }
    if let Some(level) = &config.log_level
        && level.parse::<tracing::Level>().is_err()
    {
        return invalid(format!(
            "network {:?}: field log_level {level:?} must be one of error, warn, info, debug, trace",
            config.name
        ));
    }
    Ok(())
}

impl NetworkConfig {
    /// The `ipam` section, which ADD, DEL, CHECK, STATUS and GC all need.
    pub fn require_ipam(&self) -> Result<&IpamConfig, CniError> {
        self.ipam.as_ref().ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidNetworkConfig,
                format!(
                    "network {:?} has no ipam section; set ipam.type to an IPAM plugin such as host-local",
                    self.name
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<ParsedConfig, CniError> {
        parse(text.as_bytes().to_vec())
    }

    #[test]
    fn parses_a_full_config() {
        let parsed = parse_str(
            r#"{"cniVersion":"0.4.0","name":"k8s-pod-network","type":"tortie-cni","mtu":1440,
                "log_file":"/tmp/x.log","log_level":"debug",
                "ipam":{"type":"host-local","ipv4_pools":["default-ipv4-ippool"],"ranges":[]},
                "runtimeConfig":{"portMappings":[]}}"#,
        )
        .expect("valid config");
        assert_eq!(parsed.version, SpecVersion::V0_4_0);
        assert_eq!(parsed.config.mtu, Some(1440));
        let ipam = parsed.config.require_ipam().expect("ipam present");
        assert_eq!(ipam.plugin_type, "host-local");
        assert_eq!(ipam.ipv4_pools, vec!["default-ipv4-ippool"]);
    }

    #[test]
    fn agent_ipam_fields_read_calico_spellings() {
        let parsed = parse_str(
            r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"tortie-cni",
                "ipam":{"type":"tortie-ipam","assign_ipv4":"false","assign_ipv6":true,
                        "socket":"/tmp/ipam.sock"}}"#,
        )
        .expect("valid config");
        let ipam = parsed.config.require_ipam().expect("ipam present");
        assert_eq!(ipam.assign_ipv4, Some(false));
        assert_eq!(ipam.assign_ipv6, Some(true));
        assert_eq!(ipam.socket, Some(PathBuf::from("/tmp/ipam.sock")));

        let error = parse_str(
            r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"tortie-ipam","assign_ipv6":"yes"}}"#,
        )
        .expect_err("not a boolean");
        assert!(error.msg.contains("yes"), "{}", error.msg);
    }

    #[test]
    fn truncated_json_is_a_decode_error() {
        let error = parse_str(r#"{"cniVersion":"1.0.0","na"#).expect_err("truncated");
        assert_eq!(error.code, ErrorCode::Decode);
    }

    #[test]
    fn unknown_version_lists_supported_ones() {
        let error = parse_str(r#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#)
            .expect_err("unsupported version");
        assert_eq!(error.code, ErrorCode::IncompatibleVersion);
        assert!(error.msg.contains("9.9.9"));
        assert!(error.details.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"));
    }

    #[test]
    fn rule_violations_name_the_field() {
        let error = parse_str(r#"{"cniVersion":"1.0.0","name":"n","type":"t","mtu":10}"#)
            .expect_err("mtu too small");
        assert_eq!(error.code, ErrorCode::InvalidNetworkConfig);
        assert!(error.msg.contains("mtu"));

        let error =
            parse_str(r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"../x"}}"#)
                .expect_err("path in ipam type");
        assert!(error.msg.contains("ipam.type"));

        let error = parse_str(r#"{"cniVersion":"1.0.0","name":"n"}"#).expect_err("no type");
        assert_eq!(error.code, ErrorCode::InvalidNetworkConfig);
    }

    #[test]
    fn gc_attachments_parse() {
        let parsed = parse_str(
            r#"{"cniVersion":"1.1.0","name":"n","type":"t",
                "cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"}]}"#,
        )
        .expect("valid GC config");
        assert_eq!(
            parsed.config.valid_attachments,
            Some(vec![Attachment {
                container_id: "abc".into(),
                ifname: "eth0".into()
            }])
        );
    }
}
