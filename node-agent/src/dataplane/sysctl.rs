//! Kernel settings the data path needs, written through `/proc/sys`.
//!
//! `/proc/sys/net` shows the network namespace of the thread that opens the file, so the
//! values land in the agent's own namespace.

use std::path::PathBuf;

use super::DataplaneSpec;

/// One setting: a path under `/proc/sys` and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    /// Path relative to `/proc/sys`, with `/` separators (`net/ipv4/ip_forward`).
    pub key: String,
    /// The value to write.
    pub value: &'static str,
}

/// Errors writing a setting.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot set /proc/sys/{key} to {value}: {source}; the agent needs a writable /proc/sys \
     in the node's network namespace (host network and NET_ADMIN)"
)]
pub struct SysctlError {
    /// The setting.
    pub key: String,
    /// The wanted value.
    pub value: &'static str,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

/// Settings that do not depend on any device existing.
pub fn desired_sysctls(_spec: &DataplaneSpec) -> Vec<Sysctl> {
    // Pods' packets are routed through the node.
    vec![Sysctl {
        key: "net/ipv4/ip_forward".into(),
        value: "1",
    }]
}

/// Settings of the tunnel devices; written after the devices exist.
pub fn desired_device_sysctls(spec: &DataplaneSpec) -> Vec<Sysctl> {
    let devices = spec
        .vxlan
        .iter()
        .map(|v| v.device.as_str())
        .chain(spec.ipip.iter().map(|i| i.device.as_str()));
    devices
        .flat_map(|device| {
            [
                // Set per device too: `ip_forward` only sets it on devices that exist at the
                // time and on the default, and a device recreated after someone lowered
                // the default would otherwise not forward decapsulated packets.
                Sysctl {
                    key: format!("net/ipv4/conf/{device}/forwarding"),
                    value: "1",
                },
                // Loose reverse-path filtering: while a pool changes encapsulation, replies
                // may arrive through the tunnel before the route back points into it.
                Sysctl {
                    key: format!("net/ipv4/conf/{device}/rp_filter"),
                    value: "2",
                },
            ]
        })
        .collect()
}

/// Writes each setting whose current value differs.
///
/// Plain blocking file I/O on purpose: procfs answers at once, and it keeps the writes on
/// the calling thread, whose network namespace decides what `/proc/sys/net` shows.
pub fn apply(settings: &[Sysctl]) -> Result<(), SysctlError> {
    for setting in settings {
        let path = PathBuf::from("/proc/sys").join(&setting.key);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current.trim() == setting.value {
            continue;
        }
        std::fs::write(&path, setting.value).map_err(|source| SysctlError {
            key: setting.key.clone(),
            value: setting.value,
            source,
        })?;
        tracing::debug!(key = %setting.key, value = setting.value, "Sysctl set");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{IpipSpec, VxlanSpec};

    #[test]
    fn device_settings_follow_configured_devices() {
        let mut spec = DataplaneSpec::new("a");
        assert!(desired_device_sysctls(&spec).is_empty());
        spec.vxlan = Some(VxlanSpec::for_node(
            "a",
            "198.18.0.1".parse().expect("test address"),
            "10.244.0.1".parse().expect("test address"),
        ));
        spec.ipip = Some(IpipSpec::default());
        let keys: Vec<_> = desired_device_sysctls(&spec)
            .into_iter()
            .map(|s| s.key)
            .collect();
        assert_eq!(
            keys,
            [
                "net/ipv4/conf/vxlan.calico/forwarding",
                "net/ipv4/conf/vxlan.calico/rp_filter",
                "net/ipv4/conf/tunl0/forwarding",
                "net/ipv4/conf/tunl0/rp_filter",
            ]
        );
    }
}
