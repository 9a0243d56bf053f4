//! Checking an object given as JSON: deserialising it (type errors are reported with the
//! path of the field) and then applying the kind's [`Validate`] rules. Tests use this to
//! run shared cases, and tools can use it to check a manifest before applying it.

use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::bgp::{BGPConfigurationSpec, BGPPeerSpec, NodeSpec};
use crate::felix::FelixConfigurationSpec;
use crate::ipam::{BlockAffinitySpec, IPAMBlockSpec, IPAMConfig, IPAMConfigSpec, IPAMHandleSpec};
use crate::ippool::{IPPool, IPPoolSpec};
use crate::node_network_config::NodeNetworkConfigSpec;
use crate::validation::{FieldPath, Validate, ValidationErrors};

/// Checks `value` as the kind named `kind`, or returns `None` for a kind Tortie does not
/// know. `IPPool` takes a whole object (with `metadata` and `spec`) or just its spec; the
/// `...Spec` kinds and `NodeSpec` take the spec (`IPAMConfig` also a whole object, whose
/// name is checked), and the parts of a policy (`Rule`,
/// `EntityRule`, `ICMPFields`, `Protocol`) take that part. Fields are named from `spec`.
pub fn validate_value(kind: &str, value: &Value) -> Option<Result<(), ValidationErrors>> {
    if let Some(result) = crate::policy::validate_value(kind, value) {
        return Some(result);
    }
    let spec = FieldPath::new("spec");
    let result = match kind {
        "IPPool" if is_whole_object(value) => check::<IPPool>(value, &FieldPath::root()),
        "IPPool" | "IPPoolSpec" => check::<IPPoolSpec>(value, &spec),
        "BGPPeerSpec" => check::<BGPPeerSpec>(value, &spec),
        "BGPConfigurationSpec" => check::<BGPConfigurationSpec>(value, &spec),
        "FelixConfigurationSpec" => check::<FelixConfigurationSpec>(value, &spec),
        "NodeSpec" => check::<NodeSpec>(value, &spec),
        "IPAMBlockSpec" => check::<IPAMBlockSpec>(value, &spec),
        "BlockAffinitySpec" => check::<BlockAffinitySpec>(value, &spec),
        "IPAMHandleSpec" => check::<IPAMHandleSpec>(value, &spec),
        "IPAMConfig" if is_whole_object(value) => check::<IPAMConfig>(value, &FieldPath::root()),
        "IPAMConfig" | "IPAMConfigSpec" => check::<IPAMConfigSpec>(value, &spec),
        "NodeNetworkConfigSpec" => check::<NodeNetworkConfigSpec>(value, &spec),
        _ => return None,
    };
    Some(result)
}

/// The directory of the shared test cases (`selectors.json`, `validation.json`):
/// `$TORTIE_CASES_DIR` when set, else the first `shared/cases` found beside the workspace
/// or one of its parents (a checkout sits next to its `shared/` folder).
pub fn shared_cases_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("TORTIE_CASES_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    crate_dir
        .ancestors()
        .skip(1)
        .map(|dir| dir.join("shared").join("cases"))
        .find(|dir| dir.join("validation.json").is_file())
        .ok_or_else(|| {
            format!(
                "no shared/cases directory beside {} or its parents; set TORTIE_CASES_DIR to \
                 the directory holding validation.json and selectors.json",
                crate_dir.display()
            )
        })
}

/// The shared case file `name` (for example `validation.json`) as JSON.
pub fn load_shared_cases(name: &str) -> Result<Value, String> {
    let path = shared_cases_dir()?.join(name);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the shared cases at {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// Whether `value` is a whole object rather than a spec.
fn is_whole_object(value: &Value) -> bool {
    value.get("metadata").is_some() && value.get("spec").is_some()
}

/// Deserialises `value` as `T` (a type error becomes a field error at the failing field's
/// path below `path`) and applies `T`'s rules.
fn check<T: DeserializeOwned + Validate>(
    value: &Value,
    path: &FieldPath,
) -> Result<(), ValidationErrors> {
    let typed: T = match serde_path_to_error::deserialize(value) {
        Ok(typed) => typed,
        Err(e) => {
            let mut errors = ValidationErrors::default();
            errors.push(&path_below(path, e.path()), e.inner().to_string());
            return Err(errors);
        }
    };
    let mut errors = ValidationErrors::default();
    typed.validate_at(path, &mut errors);
    errors.into_result()
}

/// The serde path `inner` (as `a.b[0].c`) placed below `path`.
fn path_below(path: &FieldPath, inner: &serde_path_to_error::Path) -> FieldPath {
    use serde_path_to_error::Segment;
    let mut at = path.clone();
    for segment in inner.iter() {
        at = match segment {
            Segment::Seq { index } => at.index(*index),
            Segment::Map { key } => at.child(key),
            Segment::Enum { variant } => at.child(variant),
            Segment::Unknown => at,
        };
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bad_enum_value_names_its_field() {
        let result = validate_value(
            "IPPoolSpec",
            &json!({"cidr": "10.0.0.0/16", "ipipMode": "x"}),
        )
        .expect("IPPoolSpec is a known kind");
        let errors = result.expect_err("x is not an IPIP mode");
        assert_eq!(errors.0[0].field.as_str(), "spec.ipipMode", "{errors}");
    }

    #[test]
    fn a_bad_nested_type_names_the_full_path() {
        let value = json!({"failsafeInboundHostPorts": [{"port": 22}, {"port": "ssh"}]});
        let errors = validate_value("FelixConfigurationSpec", &value)
            .expect("known kind")
            .expect_err("a port is a number");
        assert_eq!(
            errors.0[0].field.as_str(),
            "spec.failsafeInboundHostPorts[1].port"
        );
    }

    #[test]
    fn unknown_kinds_are_not_ours() {
        assert!(validate_value("KubeControllersConfiguration", &json!({})).is_none());
    }

    #[test]
    fn policy_kinds_are_checked_too() {
        let rule = json!({"action": "Allow", "destination": {"ports": [80]}});
        assert!(
            validate_value("Rule", &rule)
                .expect("a known kind")
                .is_err()
        );
    }
}
