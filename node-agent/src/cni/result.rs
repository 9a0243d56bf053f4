//! The result of ADD, in one model written out in each spec version's format.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::error::{CniError, ErrorCode};
use super::version::SpecVersion;

/// What ADD made: interfaces, addresses, routes and DNS.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct CniResult {
    /// The interfaces created, host side first.
    pub interfaces: Vec<Interface>,
    /// The addresses assigned.
    pub ips: Vec<IpConfig>,
    /// The routes installed in the pod.
    pub routes: Vec<Route>,
    /// DNS settings for the pod.
    pub dns: Dns,
}

/// One interface in a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Interface {
    /// The interface's name.
    pub name: String,
    /// Its MAC address, `aa:bb:...`.
    pub mac: Option<String>,
    /// Its MTU (written from 1.1.0 on).
    pub mtu: Option<u32>,
    /// The network namespace path for interfaces inside the pod; absent on the host.
    pub sandbox: Option<String>,
    /// A vhost-user socket path (written from 1.1.0 on).
    pub socket_path: Option<String>,
    /// A PCI device ID (written from 1.1.0 on).
    #[serde(rename = "pciID")]
    pub pci_id: Option<String>,
}

/// One address in a result.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct IpConfig {
    /// Index into `interfaces` of the interface holding the address.
    #[serde(default)]
    pub interface: Option<usize>,
    /// The address with its prefix length, e.g. `10.244.1.5/32`.
    pub address: IpNet,
    /// The next hop the pod uses.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

/// One route in a result.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Destination prefix.
    pub dst: IpNet,
    /// Next hop; the default gateway when absent.
    #[serde(default)]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0).
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default)]
    pub advmss: Option<u32>,
    /// Route metric (1.1.0).
    #[serde(default)]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default)]
    pub table: Option<u32>,
    /// Route scope (1.1.0).
    #[serde(default)]
    pub scope: Option<u8>,
}

/// DNS settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dns {
    /// Name servers, in priority order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when nothing is set, so the result can omit `dns`.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl CniResult {
    /// Reads a result in any supported version's format (IPAM answers, `prevResult`).
    pub fn from_json(value: &Value) -> Result<Self, CniError> {
        serde_json::from_value(value.clone()).map_err(|error| {
            CniError::new(ErrorCode::Decode, "result JSON has an unexpected shape")
                .with_details(error.to_string())
        })
    }

    /// Writes the result in `version`'s exact format.
    pub fn to_json(&self, version: SpecVersion) -> Value {
        let mut result = Map::new();
        result.insert("cniVersion".into(), json!(version.as_str()));

        if !self.interfaces.is_empty() {
            let interfaces: Vec<Value> = self
                .interfaces
                .iter()
                .map(|interface| interface_json(interface, version))
                .collect();
            result.insert("interfaces".into(), Value::Array(interfaces));
        }

        if !self.ips.is_empty() {
            let ips: Vec<Value> = self.ips.iter().map(|ip| ip_json(ip, version)).collect();
            result.insert("ips".into(), Value::Array(ips));
        }

        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|route| route_json(route, version))
                .collect();
            result.insert("routes".into(), Value::Array(routes));
        }

        if !self.dns.is_empty() {
            result.insert("dns".into(), json!(self.dns));
        }

        Value::Object(result)
    }
}

fn interface_json(interface: &Interface, version: SpecVersion) -> Value {
    let mut entry = Map::new();
    entry.insert("name".into(), json!(interface.name));
    if let Some(mac) = &interface.mac {
        entry.insert("mac".into(), json!(mac));
    }
    if version.has_status_and_gc() {
        if let Some(mtu) = interface.mtu {
            entry.insert("mtu".into(), json!(mtu));
        }
        if let Some(socket_path) = &interface.socket_path {
            entry.insert("socketPath".into(), json!(socket_path));
        }
        if let Some(pci_id) = &interface.pci_id {
            entry.insert("pciID".into(), json!(pci_id));
        }
    }
    if let Some(sandbox) = &interface.sandbox {
        entry.insert("sandbox".into(), json!(sandbox));
    }
    Value::Object(entry)
}

fn ip_json(ip: &IpConfig, version: SpecVersion) -> Value {
    let mut entry = Map::new();
    if version.ip_entries_carry_version() {
        let family = if ip.address.addr().is_ipv4() {
            "4"
        } else {
            "6"
        };
        entry.insert("version".into(), json!(family));
    }
    if let Some(interface) = ip.interface {
        entry.insert("interface".into(), json!(interface));
    }
    entry.insert("address".into(), json!(ip.address.to_string()));
    if let Some(gateway) = ip.gateway {
        entry.insert("gateway".into(), json!(gateway.to_string()));
    }
    Value::Object(entry)
}

fn route_json(route: &Route, version: SpecVersion) -> Value {
    let mut entry = Map::new();
    entry.insert("dst".into(), json!(route.dst.to_string()));
    if let Some(gw) = route.gw {
        entry.insert("gw".into(), json!(gw.to_string()));
    }
    if version.has_status_and_gc() {
        let extras = [
            ("mtu", route.mtu),
            ("advmss", route.advmss),
            ("priority", route.priority),
            ("table", route.table),
            ("scope", route.scope.map(u32::from)),
        ];
        for (key, value) in extras {
            if let Some(value) = value {
                entry.insert(key.into(), json!(value));
            }
        }
    }
    Value::Object(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::version::SUPPORTED_VERSIONS;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "cali0123456789a".into(),
                    mac: Some("ee:ee:ee:ee:ee:ee".into()),
                    mtu: Some(1440),
                    ..Interface::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("02:00:00:00:00:01".into()),
                    mtu: Some(1440),
                    sandbox: Some("/var/run/netns/pod".into()),
                    ..Interface::default()
                },
            ],
            ips: vec![IpConfig {
                interface: Some(1),
                address: "10.244.1.5/32".parse().expect("literal"),
                gateway: Some("169.254.1.1".parse().expect("literal")),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().expect("literal"),
                gw: Some("169.254.1.1".parse().expect("literal")),
                mtu: None,
                advmss: None,
                priority: None,
                table: None,
                scope: None,
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_tag_ips_with_their_family() {
        for version in [
            SpecVersion::V0_3_0,
            SpecVersion::V0_3_1,
            SpecVersion::V0_4_0,
        ] {
            let json = sample().to_json(version);
            assert_eq!(json["ips"][0]["version"], "4");
            assert!(json["interfaces"][0].get("mtu").is_none());
        }
    }

    #[test]
    fn new_versions_do_not_tag_ips() {
        for version in [SpecVersion::V1_0_0, SpecVersion::V1_1_0] {
            let json = sample().to_json(version);
            assert!(json["ips"][0].get("version").is_none());
            assert_eq!(json["ips"][0]["interface"], 1);
            assert_eq!(json["interfaces"][1]["sandbox"], "/var/run/netns/pod");
        }
        assert_eq!(
            sample().to_json(SpecVersion::V1_1_0)["interfaces"][0]["mtu"],
            1440
        );
        assert!(
            sample().to_json(SpecVersion::V1_0_0)["interfaces"][0]
                .get("mtu")
                .is_none()
        );
    }

    #[test]
    fn every_version_round_trips_and_omits_empty_dns() {
        for version in SUPPORTED_VERSIONS {
            let json = sample().to_json(version);
            assert_eq!(json["cniVersion"], version.as_str());
            assert!(json.get("dns").is_none());
            let mut back = CniResult::from_json(&json).expect("own output parses");
            if !version.has_status_and_gc() {
                for interface in &mut back.interfaces {
                    interface.mtu = Some(1440);
                }
            }
            assert_eq!(back, sample());
        }
    }

    #[test]
    fn reads_host_local_output() {
        let json: Value = serde_json::from_str(
            r#"{"cniVersion":"0.3.0","ips":[{"version":"4","address":"10.244.1.2/24","gateway":"10.244.1.1"}],"dns":{}}"#,
        )
        .expect("literal");
        let result = CniResult::from_json(&json).expect("host-local output parses");
        assert_eq!(result.ips[0].address.to_string(), "10.244.1.2/24");
        assert!(result.dns.is_empty());
    }
}
