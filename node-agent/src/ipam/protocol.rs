//! The IPAM protocol between the plugins on a node and its agent: JSON over HTTP/1.1 on
//! a unix socket that only root can open.
//!
//! Every path starts with the protocol version (`/v1/...`), so a newer agent can serve
//! older plugins side by side with newer ones during an upgrade. Bodies are small JSON
//! objects; unknown fields are refused rather than ignored, so a plugin that speaks a
//! different dialect learns it at once instead of getting a half-understood answer.
//! A failure is an HTTP error status with an [`ErrorBody`] that carries the CNI error
//! code the plugin passes on to the runtime unchanged.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tortie_crds::validation::{FieldPath, ValidationErrors};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/tortie/ipam.sock";

/// The protocol version this build speaks; the first segment of every path.
pub const VERSION: &str = "v1";

/// `POST`: allocate addresses for a pod interface ([`AllocateRequest`]).
pub const PATH_ALLOCATE: &str = "/v1/allocate";
/// `POST`: release every address of a handle ([`ReleaseRequest`]).
pub const PATH_RELEASE: &str = "/v1/release";
/// `POST`: report the addresses a handle holds ([`CheckRequest`]).
pub const PATH_CHECK: &str = "/v1/check";
/// `GET`: whether the agent can allocate now ([`StatusResponse`]).
pub const PATH_STATUS: &str = "/v1/status";

/// Largest request body the agent reads. Real requests are a few hundred bytes; the
/// bound keeps a broken or hostile client from making the agent buffer without end.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Largest response body the plugin reads.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Longest handle ID: it becomes an object name, which the API server caps at 253.
pub const MAX_HANDLE_ID_LEN: usize = 253;

/// Most pools one request may name per family.
pub const MAX_POOLS: usize = 32;

/// Longest pool entry (a pool name or a CIDR).
pub const MAX_POOL_ENTRY_LEN: usize = 253;

/// The CNI error code the agent uses when no pool has a free address.
pub const CODE_EXHAUSTED: u32 = 105;

/// The CNI error code the agent uses when the API server refuses a call or an IPAM
/// object is in a state that cannot be used (a person has to look).
pub const CODE_IPAM_STATE: u32 = 106;

/// The CNI error code for a request the agent cannot decode (the spec's "decoding
/// failure").
pub const CODE_DECODE: u32 = 6;

/// The CNI error code for a request that decodes but breaks a rule (the spec's
/// "invalid network config").
pub const CODE_INVALID: u32 = 7;

/// The CNI error code for "try again later".
pub const CODE_TRY_AGAIN: u32 = 11;

/// Ask for addresses for one pod interface.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllocateRequest {
    /// Who will hold the addresses: `k8s-pod-network.<container ID>`. Asking again with
    /// a handle that already holds addresses returns those addresses.
    pub handle_id: String,
    /// The pod's namespace (`K8S_POD_NAMESPACE`); absent outside Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod's name (`K8S_POD_NAME`); absent outside Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The node the plugin runs on; when given it must be the agent's own node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The interface inside the pod (`CNI_IFNAME`), recorded for people reading blocks.
    pub interface: String,
    /// Which address families to allocate, one address each.
    pub families: Families,
    /// IPv4 pools (names or CIDRs) from the CNI configuration, used when neither the
    /// pod nor its namespace names pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv4_pools: Vec<String>,
    /// IPv6 pools (names or CIDRs) from the CNI configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6_pools: Vec<String>,
}

/// The address families of a request.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Families {
    /// One IPv4 address.
    pub ipv4: bool,
    /// One IPv6 address.
    pub ipv6: bool,
}

/// The addresses handed out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllocateResponse {
    /// One entry per family asked for, IPv4 first.
    pub addresses: Vec<AllocatedAddress>,
}

/// One address handed out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllocatedAddress {
    /// The address as a host prefix (`/32` or `/128`), as pods get it.
    pub address: IpNet,
    /// The block it came from.
    pub block: IpNet,
    /// The pool the block belongs to (the IPPool's name).
    pub pool: String,
}

/// Give back every address a handle holds. Releasing a handle that holds nothing (or
/// does not exist) succeeds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The handle, as in [`AllocateRequest::handle_id`].
    pub handle_id: String,
}

/// What a release freed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseResponse {
    /// The addresses freed now; empty when the handle held nothing.
    pub released: Vec<IpAddr>,
}

/// Ask which addresses a handle holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckRequest {
    /// The handle, as in [`AllocateRequest::handle_id`].
    pub handle_id: String,
}

/// The addresses a handle holds, read from the blocks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckResponse {
    /// In address order; empty when the handle holds nothing.
    pub addresses: Vec<IpAddr>,
}

/// Whether the agent can allocate now.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusResponse {
    /// True when the API server answers and at least one pool is enabled.
    pub ready: bool,
    /// The node this agent serves.
    pub node: String,
    /// Why it is not ready, or a short summary when it is.
    pub message: String,
}

/// The body of every failed request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ErrorBody {
    /// The CNI error code the plugin reports (11 means try again later).
    pub code: u32,
    /// One line naming the object and the problem.
    pub msg: String,
    /// More context, may be empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl AllocateRequest {
    /// Checks the request's fields; every broken rule is reported, named by field.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        check_handle_id(&self.handle_id, &FieldPath::new("handleId"), &mut errors);
        for (field, value) in [
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("node", &self.node),
        ] {
            if let Some(value) = value {
                check_object_name(value, &FieldPath::new(field), &mut errors);
            }
        }
        check_interface(&self.interface, &FieldPath::new("interface"), &mut errors);
        if !self.families.ipv4 && !self.families.ipv6 {
            errors.push(
                &FieldPath::new("families"),
                "asks for no address family; set ipv4, ipv6 or both to true",
            );
        }
        check_pools(&self.ipv4_pools, &FieldPath::new("ipv4Pools"), &mut errors);
        check_pools(&self.ipv6_pools, &FieldPath::new("ipv6Pools"), &mut errors);
        errors.into_result()
    }
}

impl ReleaseRequest {
    /// Checks the handle ID.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        check_handle_id(&self.handle_id, &FieldPath::new("handleId"), &mut errors);
        errors.into_result()
    }
}

impl CheckRequest {
    /// Checks the handle ID.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        check_handle_id(&self.handle_id, &FieldPath::new("handleId"), &mut errors);
        errors.into_result()
    }
}

/// A handle ID becomes the IPAMHandle's name in lower case, so it must make a valid
/// object name: letters, digits, `-` and `.`, starting and ending with a letter or digit.
fn check_handle_id(value: &str, path: &FieldPath, errors: &mut ValidationErrors) {
    let lower = value.to_ascii_lowercase();
    if !is_dns_subdomain(&lower) {
        errors.push(
            path,
            format!(
                "{value:?} is not a valid handle ID: use at most {MAX_HANDLE_ID_LEN} letters, \
                 digits, '-' and '.', starting and ending with a letter or digit, such as \
                 k8s-pod-network.<container ID>"
            ),
        );
    }
}

/// Namespaces, pods and nodes are named as DNS subdomains.
fn check_object_name(value: &str, path: &FieldPath, errors: &mut ValidationErrors) {
    if !is_dns_subdomain(value) {
        errors.push(
            path,
            format!(
                "{value:?} is not a Kubernetes object name (lower-case letters, digits, '-' \
                 and '.', at most 253 characters)"
            ),
        );
    }
}

fn check_interface(value: &str, path: &FieldPath, errors: &mut ValidationErrors) {
    let bad_char = value
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if value.is_empty() || value.len() > 15 || bad_char || value == "." || value == ".." {
        errors.push(
            path,
            format!("{value:?} is not an interface name (1 to 15 bytes, no '/', ':' or spaces)"),
        );
    }
}

fn check_pools(pools: &[String], path: &FieldPath, errors: &mut ValidationErrors) {
    if pools.len() > MAX_POOLS {
        errors.push(
            path,
            format!(
                "names {} pools; at most {MAX_POOLS} are allowed",
                pools.len()
            ),
        );
        return;
    }
    for (i, pool) in pools.iter().enumerate() {
        let ok = !pool.is_empty()
            && pool.len() <= MAX_POOL_ENTRY_LEN
            && pool.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            errors.push(
                &path.index(i),
                format!("{pool:?} is not a pool name or CIDR"),
            );
        }
    }
}

/// Lower-case letters, digits, `-` and `.`; alphanumeric at both ends; at most 253.
fn is_dns_subdomain(value: &str) -> bool {
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    value.len() <= MAX_HANDLE_ID_LEN
        && edge_ok(value.bytes().next())
        && edge_ok(value.bytes().last())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AllocateRequest {
        AllocateRequest {
            handle_id: "k8s-pod-network.0123abcdef".into(),
            namespace: Some("default".into()),
            pod: Some("web-0".into()),
            node: Some("worker-1".into()),
            interface: "eth0".into(),
            families: Families {
                ipv4: true,
                ipv6: false,
            },
            ipv4_pools: vec!["default-ipv4-ippool".into(), "10.244.0.0/16".into()],
            ipv6_pools: Vec::new(),
        }
    }

    #[test]
    fn a_plugin_request_is_valid_and_round_trips() {
        let request = request();
        request.validate().expect("a plugin's request is valid");
        let json = serde_json::to_value(&request).expect("serializes");
        assert_eq!(json["handleId"], "k8s-pod-network.0123abcdef");
        assert_eq!(json["families"]["ipv4"], true);
        assert!(json.get("ipv6Pools").is_none());
        let back: AllocateRequest = serde_json::from_value(json).expect("parses");
        assert_eq!(back, request);
    }

    #[test]
    fn upper_case_container_ids_make_valid_handles() {
        let mut request = request();
        request.handle_id = "k8s-pod-network.ABCdef".into();
        assert!(request.validate().is_ok());
    }

    #[test]
    fn every_broken_rule_is_named() {
        let mut request = request();
        request.handle_id = "k8s-pod-network.a_b".into();
        request.pod = Some("Web".into());
        request.interface = "a/b".into();
        request.families = Families {
            ipv4: false,
            ipv6: false,
        };
        request.ipv4_pools = vec![String::new()];
        let text = request.validate().expect_err("broken").to_string();
        for field in ["handleId", "pod", "interface", "families", "ipv4Pools[0]"] {
            assert!(text.contains(&format!("{field}:")), "{field} in {text}");
        }
    }

    #[test]
    fn too_many_pools_or_too_long_a_handle_are_refused() {
        let mut request = request();
        request.ipv6_pools = vec!["p".into(); MAX_POOLS + 1];
        assert!(request.validate().is_err());
        let mut request = self::tests::request();
        request.handle_id = "a".repeat(MAX_HANDLE_ID_LEN + 1);
        assert!(request.validate().is_err());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        let unknown = r#"{"handleId":"h","interface":"eth0","families":{"ipv4":true,"ipv6":false},"extra":1}"#;
        assert!(serde_json::from_str::<AllocateRequest>(unknown).is_err());
        let wrong = r#"{"handleId":7,"interface":"eth0","families":{"ipv4":true,"ipv6":false}}"#;
        assert!(serde_json::from_str::<AllocateRequest>(wrong).is_err());
        let truncated = r#"{"handleId":"h","interface":"eth0","fam"#;
        assert!(serde_json::from_str::<AllocateRequest>(truncated).is_err());
    }

    #[test]
    fn release_and_check_validate_the_handle() {
        assert!(
            ReleaseRequest {
                handle_id: "k8s-pod-network.x".into()
            }
            .validate()
            .is_ok()
        );
        assert!(
            CheckRequest {
                handle_id: "-bad".into()
            }
            .validate()
            .is_err()
        );
    }
}
