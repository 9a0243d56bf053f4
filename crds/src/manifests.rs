//! The CustomResourceDefinitions Tortie installs, in the order they are written out.
//!
//! `crdgen` writes each to `crds/manifests/<name>.yaml`; a test fails when the committed
//! files differ from what the types generate. Adding a kind is one line in [`all`].

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::bgp::{BGPConfiguration, BGPPeer};
use crate::cluster_info::ClusterInformation;
use crate::felix::FelixConfiguration;
use crate::ippool::IPPool;
use crate::node_network_config::NodeNetworkConfig;

/// Every CRD Tortie installs.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        IPPool::crd(),
        BGPConfiguration::crd(),
        BGPPeer::crd(),
        FelixConfiguration::crd(),
        ClusterInformation::crd(),
        NodeNetworkConfig::crd(),
    ];
    crds.extend(crate::ipam::crds());
    crds.extend(crate::policy::crds());
    crds.into_iter().map(unwrap_descriptions).collect()
}

/// The CRD with every description's lines joined into paragraphs. Doc comments wrap at
/// the source's line width, and `kubectl explain` would print those breaks mid-sentence.
fn unwrap_descriptions(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD serialises to JSON");
    unwrap_in(&mut value);
    serde_json::from_value(value).expect("only description texts changed, so it is still a CRD")
}

fn unwrap_in(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = unwrap_text(text);
                    }
                    _ => unwrap_in(child),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_in),
        _ => {}
    }
}

/// Joins wrapped lines with spaces; blank lines (paragraphs) and lines that start a list
/// item keep their break.
fn unwrap_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut previous_blank = true;
    for line in text.lines() {
        let trimmed = line.trim();
        let list_item = trimmed.starts_with("- ") || trimmed.starts_with("* ");
        if trimmed.is_empty() {
            out.push_str("\n\n");
            previous_blank = true;
            continue;
        }
        if !previous_blank {
            out.push(if list_item { '\n' } else { ' ' });
        }
        out.push_str(trimmed);
        previous_blank = false;
    }
    out.trim_end().to_owned()
}

/// The file a CRD is written to: its name (`<plural>.<group>`) with `.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    let name = crd
        .metadata
        .name
        .as_deref()
        .expect("a derived CRD always has a name");
    format!("{name}.yaml")
}

/// A CRD as the YAML `crdgen` writes.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string(crd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_lines_join_but_paragraphs_and_list_items_stay() {
        let text = "A pool's range, for\nexample 10.0.0.0/8.\n\nModes:\n- Always\n- Never";
        assert_eq!(
            unwrap_text(text),
            "A pool's range, for example 10.0.0.0/8.\n\nModes:\n- Always\n- Never"
        );
    }
}
