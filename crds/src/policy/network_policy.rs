//! NetworkPolicy (one namespace) and GlobalNetworkPolicy (the whole cluster, host
//! endpoints included), and the status the operator writes on both.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    MAX_RULES_PER_DIRECTION, MAX_SELECTOR_LEN, NAME_PATTERN, check_object_name, check_selector,
    is_dns_subdomain,
};
use crate::validation::{FieldPath, Validate, ValidationErrors};

/// Which direction of traffic a policy applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PolicyType {
    /// Traffic into the selected endpoints.
    Ingress,
    /// Traffic out of the selected endpoints.
    Egress,
}

/// A hint about how a policy is used, so the data path can prepare for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PerformanceHint {
    /// The policy is expected to select endpoints on every node: program it everywhere
    /// up front instead of when the first matching endpoint appears.
    AssumeNeededOnEveryNode,
}

/// CEL on a GlobalNetworkPolicy spec: preDNAT and doNotTrack are exclusive.
pub const PREDNAT_DO_NOT_TRACK_RULE: &str =
    "!(has(self.preDNAT) && self.preDNAT && has(self.doNotTrack) && self.doNotTrack)";
/// CEL: doNotTrack needs applyOnForward.
pub const DO_NOT_TRACK_FORWARD_RULE: &str = "!has(self.doNotTrack) || !self.doNotTrack || \
     (has(self.applyOnForward) && self.applyOnForward)";
/// CEL: preDNAT needs applyOnForward.
pub const PREDNAT_FORWARD_RULE: &str = "!has(self.preDNAT) || !self.preDNAT || \
     (has(self.applyOnForward) && self.applyOnForward)";
/// CEL: a preDNAT policy has no egress rules.
pub const PREDNAT_EGRESS_RULE: &str =
    "!has(self.preDNAT) || !self.preDNAT || !has(self.egress) || size(self.egress) == 0";
/// CEL: a preDNAT policy applies to ingress only.
pub const PREDNAT_TYPES_RULE: &str =
    "!has(self.preDNAT) || !self.preDNAT || !has(self.types) || !('Egress' in self.types)";

const PREDNAT_DO_NOT_TRACK_MESSAGE: &str = "preDNAT and doNotTrack cannot both be true: \
     untracked traffic never reaches the pre-DNAT stage; choose one";
const DO_NOT_TRACK_FORWARD_MESSAGE: &str =
    "doNotTrack: true needs applyOnForward: true; set applyOnForward";
const PREDNAT_FORWARD_MESSAGE: &str =
    "preDNAT: true needs applyOnForward: true; set applyOnForward";
const PREDNAT_EGRESS_MESSAGE: &str =
    "egress must be empty when preDNAT is true: pre-DNAT policy only sees incoming traffic";
const PREDNAT_TYPES_MESSAGE: &str = "types must not contain Egress when preDNAT is true: pre-DNAT policy only sees incoming traffic";

/// Ordered rules for the pods of one namespace.
///
/// Known limitation: each direction holds at most 256 rules, so the API server's cost
/// estimate for the CEL rules stays within its budget.
// kube takes one printcolumn(...) per column, so `type_` repeats by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    kind = "NetworkPolicy",
    plural = "networkpolicies",
    singular = "networkpolicy",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    doc = "Calico NetworkPolicy: ordered rules that allow, deny, pass or log traffic of \
           the pods of one namespace.",
    printcolumn(name = "Order", type_ = "number", json_path = ".spec.order"),
    printcolumn(name = "Selector", type_ = "string", json_path = ".spec.selector"),
    printcolumn(
        name = "Programmed",
        type_ = "integer",
        json_path = ".status.nodesProgrammed",
        description = "How many nodes enforce the current generation"
    ),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.summary"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// The tier the policy belongs to; tiers are evaluated in their own order before
    /// the policies inside them. Unset means the `default` tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = NAME_PATTERN))]
    pub tier: Option<String>,

    /// Where the policy sits among the others of its tier: lower orders are applied first.
    /// Unset orders come after every set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,

    /// The pods the policy applies to, as a selector (`app == 'web'`). Unset or `all()`
    /// selects every pod of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_SELECTOR_LEN))]
    pub selector: Option<String>,

    /// Which directions the policy governs. Unset means Ingress, plus Egress when there
    /// are egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub types: Vec<PolicyType>,

    /// Rules for traffic into the selected pods, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_RULES_PER_DIRECTION))]
    pub ingress: Vec<crate::policy::Rule>,

    /// Rules for traffic out of the selected pods, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_RULES_PER_DIRECTION))]
    pub egress: Vec<crate::policy::Rule>,

    /// Also require the pod's service account to match this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_SELECTOR_LEN))]
    pub service_account_selector: Option<String>,

    /// Hints about how the policy is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1))]
    pub performance_hints: Vec<PerformanceHint>,
}

/// Ordered rules for the whole cluster: pods of every namespace and host endpoints.
///
/// Known limitation: each direction holds at most 256 rules, so the API server's cost
/// estimate for the CEL rules stays within its budget.
// kube takes one printcolumn(...) per column, so `type_` repeats by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    kind = "GlobalNetworkPolicy",
    plural = "globalnetworkpolicies",
    singular = "globalnetworkpolicy",
    status = "PolicyStatus",
    derive = "PartialEq",
    doc = "Calico GlobalNetworkPolicy: ordered rules that allow, deny, pass or log traffic \
           of pods in every namespace and of host endpoints.",
    printcolumn(name = "Order", type_ = "number", json_path = ".spec.order"),
    printcolumn(name = "Selector", type_ = "string", json_path = ".spec.selector"),
    printcolumn(
        name = "Programmed",
        type_ = "integer",
        json_path = ".status.nodesProgrammed",
        description = "How many nodes enforce the current generation"
    ),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.summary"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(PREDNAT_DO_NOT_TRACK_RULE)
        .message(PREDNAT_DO_NOT_TRACK_MESSAGE)
        .field_path(".preDNAT"),
    validation = Rule::new(DO_NOT_TRACK_FORWARD_RULE)
        .message(DO_NOT_TRACK_FORWARD_MESSAGE)
        .field_path(".doNotTrack"),
    validation = Rule::new(PREDNAT_FORWARD_RULE)
        .message(PREDNAT_FORWARD_MESSAGE)
        .field_path(".preDNAT"),
    validation = Rule::new(PREDNAT_EGRESS_RULE)
        .message(PREDNAT_EGRESS_MESSAGE)
        .field_path(".egress"),
    validation = Rule::new(PREDNAT_TYPES_RULE)
        .message(PREDNAT_TYPES_MESSAGE)
        .field_path(".types"),
)]
pub struct GlobalNetworkPolicySpec {
    /// The tier the policy belongs to; tiers are evaluated in their own order before
    /// the policies inside them. Unset means the `default` tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = NAME_PATTERN))]
    pub tier: Option<String>,

    /// Where the policy sits among the others of its tier: lower orders are applied first.
    /// Unset orders come after every set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,

    /// The endpoints (pods and host endpoints) the policy applies to, as a selector.
    /// Unset or `all()` selects every endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_SELECTOR_LEN))]
    pub selector: Option<String>,

    /// Which directions the policy governs. Unset means Ingress, plus Egress when there
    /// are egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub types: Vec<PolicyType>,

    /// Rules for traffic into the selected endpoints, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_RULES_PER_DIRECTION))]
    pub ingress: Vec<crate::policy::Rule>,

    /// Rules for traffic out of the selected endpoints, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_RULES_PER_DIRECTION))]
    pub egress: Vec<crate::policy::Rule>,

    /// Apply the rules before connection tracking, to host endpoints only, and skip
    /// tracking for what they allow. Needs applyOnForward; excludes preDNAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_not_track: Option<bool>,

    /// Apply the ingress rules to host endpoints before DNAT, so they see the original
    /// destination (a node port, say). Needs applyOnForward; no egress rules.
    #[serde(default, rename = "preDNAT", skip_serializing_if = "Option::is_none")]
    pub pre_dnat: Option<bool>,

    /// Also apply the policy to traffic a host endpoint forwards, not only to traffic
    /// from and to the host itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_on_forward: Option<bool>,

    /// Also require the pod's service account to match this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_SELECTOR_LEN))]
    pub service_account_selector: Option<String>,

    /// Also require the pod's namespace to match this selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_SELECTOR_LEN))]
    pub namespace_selector: Option<String>,

    /// Hints about how the policy is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1))]
    pub performance_hints: Vec<PerformanceHint>,
}

/// What the operator found and how far the policy is programmed; written by the
/// operator, never by people.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The latest observations: `Valid`, `Programmed`, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// How many nodes enforce the observed generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_programmed: Option<i32>,

    /// Things that are allowed but probably not meant, such as a selector no endpoint
    /// matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,

    /// One line for `kubectl get`: `Programmed`, `Invalid: ...`, `Pending 3/5`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

fn check_tier(tier: Option<&str>, path: &FieldPath, errors: &mut ValidationErrors) {
    if let Some(tier) = tier
        && !is_dns_subdomain(tier)
    {
        errors.push(
            path,
            format!(
                "tier {tier:?} is not a valid tier name: use at most 253 lowercase letters, \
                 digits, '-' and '.', starting and ending with a letter or digit"
            ),
        );
    }
}

fn check_rules(rules: &[crate::policy::Rule], path: &FieldPath, errors: &mut ValidationErrors) {
    if rules.len() > MAX_RULES_PER_DIRECTION {
        errors.push(
            path,
            format!("at most {MAX_RULES_PER_DIRECTION} rules per direction; split the policy"),
        );
    }
    for (i, rule) in rules.iter().enumerate() {
        rule.validate_at(&path.index(i), errors);
    }
}

fn check_types(types: &[PolicyType], path: &FieldPath, errors: &mut ValidationErrors) {
    if types.len() == 2 && types[0] == types[1] {
        errors.push(path, "types must not list a direction twice");
    }
}

impl Validate for NetworkPolicySpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        check_tier(self.tier.as_deref(), &path.child("tier"), errors);
        check_selector(self.selector.as_deref(), &path.child("selector"), errors);
        check_selector(
            self.service_account_selector.as_deref(),
            &path.child("serviceAccountSelector"),
            errors,
        );
        check_types(&self.types, &path.child("types"), errors);
        check_rules(&self.ingress, &path.child("ingress"), errors);
        check_rules(&self.egress, &path.child("egress"), errors);
    }
}

impl Validate for GlobalNetworkPolicySpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        check_tier(self.tier.as_deref(), &path.child("tier"), errors);
        check_selector(self.selector.as_deref(), &path.child("selector"), errors);
        check_selector(
            self.service_account_selector.as_deref(),
            &path.child("serviceAccountSelector"),
            errors,
        );
        check_selector(
            self.namespace_selector.as_deref(),
            &path.child("namespaceSelector"),
            errors,
        );
        check_types(&self.types, &path.child("types"), errors);
        check_rules(&self.ingress, &path.child("ingress"), errors);
        check_rules(&self.egress, &path.child("egress"), errors);

        let pre_dnat = self.pre_dnat.unwrap_or(false);
        let do_not_track = self.do_not_track.unwrap_or(false);
        let apply_on_forward = self.apply_on_forward.unwrap_or(false);
        if pre_dnat && do_not_track {
            errors.push(&path.child("preDNAT"), PREDNAT_DO_NOT_TRACK_MESSAGE);
        }
        if do_not_track && !apply_on_forward {
            errors.push(&path.child("doNotTrack"), DO_NOT_TRACK_FORWARD_MESSAGE);
        }
        if pre_dnat && !apply_on_forward {
            errors.push(&path.child("preDNAT"), PREDNAT_FORWARD_MESSAGE);
        }
        if pre_dnat && !self.egress.is_empty() {
            errors.push(&path.child("egress"), PREDNAT_EGRESS_MESSAGE);
        }
        if pre_dnat && self.types.contains(&PolicyType::Egress) {
            errors.push(&path.child("types"), PREDNAT_TYPES_MESSAGE);
        }
    }
}

impl Validate for NetworkPolicy {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        check_object_name(&self.metadata, "NetworkPolicy", path, errors);
        self.spec.validate_at(&path.child("spec"), errors);
    }
}

impl Validate for GlobalNetworkPolicy {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        check_object_name(&self.metadata, "GlobalNetworkPolicy", path, errors);
        self.spec.validate_at(&path.child("spec"), errors);
    }
}
