//! Checking an object given as JSON: deserialising it (type errors are reported with the
//! path of the field) and then applying the kind's [`Validate`] rules. Tests use this to
//! run shared cases, and tools can use it to check a manifest before applying it.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::bgp::{BGPConfigurationSpec, BGPPeerSpec, NodeSpec};
use crate::felix::FelixConfigurationSpec;
use crate::ippool::{IPPool, IPPoolSpec};
use crate::validation::{FieldPath, Validate, ValidationErrors};

/// Checks `value` as the kind named `kind`, or returns `None` for a kind this module does
/// not know. `IPPool` takes a whole object (with `metadata` and `spec`) or just its spec;
/// the `...Spec` kinds and `NodeSpec` take the spec. Fields are named from `spec`.
pub fn validate_value(kind: &str, value: &Value) -> Option<Result<(), ValidationErrors>> {
    let spec = FieldPath::new("spec");
    let result = match kind {
        "IPPool" if is_whole_object(value) => check::<IPPool>(value, &FieldPath::root()),
        "IPPool" | "IPPoolSpec" => check::<IPPoolSpec>(value, &spec),
        "BGPPeerSpec" => check::<BGPPeerSpec>(value, &spec),
        "BGPConfigurationSpec" => check::<BGPConfigurationSpec>(value, &spec),
        "FelixConfigurationSpec" => check::<FelixConfigurationSpec>(value, &spec),
        "NodeSpec" => check::<NodeSpec>(value, &spec),
        _ => return None,
    };
    Some(result)
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
        assert!(validate_value("NetworkPolicy", &json!({})).is_none());
    }
}
