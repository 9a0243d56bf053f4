//! Which pools an allocation may use, in Calico's order of precedence:
//!
//! 1. the pod's `cni.projectcalico.org/ipv4pools` / `ipv6pools` annotation,
//! 2. the same annotation on the pod's namespace,
//! 3. the pools named in the CNI configuration (`ipam.ipv4_pools` / `ipv6_pools`),
//! 4. every enabled pool of the family whose `nodeSelector` matches the node.
//!
//! The first of 1-3 that names any pool decides, and the pools it names are used even
//! when their node selector does not match the node: a person asked for them. A disabled
//! pool is never used, and asking for one is an error that names it.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use tortie_crds::ippool::{AllowedUse, AssignmentMode, EncapsulationMode, IPPool};
use tortie_crds::selector::{Scoped, Selector};

/// Annotation (on a pod or a namespace) naming the IPv4 pools to use, as a JSON list.
pub const ANNOTATION_IPV4_POOLS: &str = "cni.projectcalico.org/ipv4pools";
/// Annotation (on a pod or a namespace) naming the IPv6 pools to use, as a JSON list.
pub const ANNOTATION_IPV6_POOLS: &str = "cni.projectcalico.org/ipv6pools";

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Where the list of pools for an allocation came from; named in errors so a person
/// knows what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolSource {
    /// The pod's annotation.
    Pod {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
    },
    /// The namespace's annotation.
    Namespace {
        /// The namespace's name.
        namespace: String,
    },
    /// The CNI network configuration.
    CniConfig,
    /// No one named pools: every enabled pool whose node selector matches the node.
    Automatic {
        /// The node the selectors were matched against.
        node: String,
    },
    /// The node's VXLAN device: the pools [`vxlan_tunnel_pools`] picks for the node.
    VxlanTunnel {
        /// The node whose device it is.
        node: String,
    },
}

/// Why no pool list could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// An annotation is not a JSON list of strings.
    #[error(
        "{annotation} is not a JSON list of pool names or CIDRs such as [\"default-ipv4-ippool\"]: {reason}"
    )]
    BadAnnotation {
        /// Which annotation of which object.
        annotation: AnnotationSource,
        /// What the JSON parser said.
        reason: String,
    },
    /// A named pool does not exist.
    #[error(
        "IPPool {entry:?} (named by {named_by}) does not exist: name an existing IPPool or its CIDR"
    )]
    Unknown {
        /// The entry as written.
        entry: String,
        /// Who named it.
        named_by: PoolSource,
    },
    /// A named pool is disabled.
    #[error(
        "IPPool {pool:?} (named by {named_by}) is disabled (spec.disabled: true), so no address \
         is allocated from it: enable the pool or name another one"
    )]
    Disabled {
        /// The pool's name.
        pool: String,
        /// Who named it.
        named_by: PoolSource,
    },
    /// A named pool is of the other address family.
    #[error(
        "IPPool {pool:?} ({cidr}, named by {named_by}) is not an {family} pool: list it under the {other} pools instead"
    )]
    WrongFamily {
        /// The pool's name.
        pool: String,
        /// Its CIDR.
        cidr: String,
        /// The family asked for.
        family: Family,
        /// The list it belongs in.
        other: &'static str,
        /// Who named it.
        named_by: PoolSource,
    },
    /// A named pool does not allow pod addresses.
    #[error(
        "IPPool {pool:?} (named by {named_by}) does not allow Workload in spec.allowedUses, so \
         pods get no address from it: add Workload or name another pool"
    )]
    NotForWorkloads {
        /// The pool's name.
        pool: String,
        /// Who named it.
        named_by: PoolSource,
    },
    /// A named pool's CIDR cannot be read.
    #[error("IPPool {pool:?} (named by {named_by}) has an invalid spec.cidr {cidr:?}")]
    BadPool {
        /// The pool's name.
        pool: String,
        /// The CIDR as stored.
        cidr: String,
        /// Who named it.
        named_by: PoolSource,
    },
    /// No pool is available for the family.
    #[error(
        "no enabled {family} IPPool selects node {node:?} (spec.nodeSelector) for namespace \
         {namespace}: create one, widen a pool's nodeSelector, or name a pool in the \
         cni.projectcalico.org/{annotation} annotation"
    )]
    NoneSelected {
        /// The family asked for.
        family: Family,
        /// The node.
        node: String,
        /// The pod's namespace, as text for the message.
        namespace: String,
        /// The annotation that would name pools for this family.
        annotation: &'static str,
    },
}

/// An annotation of a pod or namespace, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationSource {
    /// `pod default/web-0` or `namespace default`.
    pub object: String,
    /// The annotation key.
    pub key: &'static str,
}

/// A pool that may be used, with what the allocator needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolChoice {
    /// The IPPool's name.
    pub name: String,
    /// Its range.
    pub cidr: IpNet,
    /// The prefix length of its blocks.
    pub block_size: u8,
}

/// The pools of one family, in the order they are tried, and who chose them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChosenPools {
    /// At least one pool.
    pub pools: Vec<PoolChoice>,
    /// Where the list came from.
    pub source: PoolSource,
}

/// What is known about the pod asking, for choosing its pools.
#[derive(Debug, Clone, Default)]
pub struct PodContext {
    /// The pod's namespace and name, when the request came from Kubernetes.
    pub pod: Option<(String, String)>,
    /// The pod's annotations (empty when the pod is unknown).
    pub pod_annotations: BTreeMap<String, String>,
    /// The namespace's labels, for pools' `namespaceSelector`.
    pub namespace_labels: Option<BTreeMap<String, String>>,
    /// The namespace's annotations.
    pub namespace_annotations: BTreeMap<String, String>,
    /// The pools of this family from the CNI configuration.
    pub config_pools_v4: Vec<String>,
    /// IPv6 pools from the CNI configuration.
    pub config_pools_v6: Vec<String>,
}

impl Family {
    /// The annotation naming this family's pools.
    pub fn annotation(self) -> &'static str {
        match self {
            Self::V4 => ANNOTATION_IPV4_POOLS,
            Self::V6 => ANNOTATION_IPV6_POOLS,
        }
    }

    /// The family of a network.
    pub fn of(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Self::V4,
            IpNet::V6(_) => Self::V6,
        }
    }

    /// `4` or `6`, as Calico's `ip-version` label writes it.
    pub fn label_value(self) -> &'static str {
        match self {
            Self::V4 => "4",
            Self::V6 => "6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

impl fmt::Display for PoolSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod { namespace, pod } => {
                write!(f, "the annotation of pod {namespace}/{pod}")
            }
            Self::Namespace { namespace } => {
                write!(f, "the annotation of namespace {namespace}")
            }
            Self::CniConfig => f.write_str("the CNI configuration (ipam.ipv4_pools/ipv6_pools)"),
            Self::Automatic { node } => write!(f, "the nodeSelector matching node {node}"),
            Self::VxlanTunnel { node } => write!(
                f,
                "the IPv4 pools with vxlanMode Always or CrossSubnet, Tunnel in allowedUses \
                 and a nodeSelector matching node {node}"
            ),
        }
    }
}

impl fmt::Display for AnnotationSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "annotation {} of {}", self.key, self.object)
    }
}

/// Reads a pools annotation: a JSON list of pool names or CIDRs. An empty list counts as
/// not set, as in Calico.
pub fn parse_pool_annotation(
    value: &str,
    source: &AnnotationSource,
) -> Result<Vec<String>, PoolError> {
    let entries: Vec<String> =
        serde_json::from_str(value).map_err(|error| PoolError::BadAnnotation {
            annotation: source.clone(),
            reason: error.to_string(),
        })?;
    let entries: Vec<String> = entries
        .into_iter()
        .map(|entry| entry.trim().to_owned())
        .collect();
    if let Some(blank) = entries.iter().position(String::is_empty) {
        return Err(PoolError::BadAnnotation {
            annotation: source.clone(),
            reason: format!("entry {blank} is empty"),
        });
    }
    Ok(entries)
}

/// The pools named for `family` and who named them: the pod's annotation, else the
/// namespace's, else the CNI configuration's; `None` when nobody named any.
pub fn requested_pools(
    family: Family,
    context: &PodContext,
) -> Result<Option<(PoolSource, Vec<String>)>, PoolError> {
    let key = family.annotation();
    if let Some((namespace, pod)) = &context.pod {
        if let Some(value) = context.pod_annotations.get(key) {
            let source = AnnotationSource {
                object: format!("pod {namespace}/{pod}"),
                key,
            };
            let entries = parse_pool_annotation(value, &source)?;
            if !entries.is_empty() {
                let source = PoolSource::Pod {
                    namespace: namespace.clone(),
                    pod: pod.clone(),
                };
                return Ok(Some((source, entries)));
            }
        }
        if let Some(value) = context.namespace_annotations.get(key) {
            let source = AnnotationSource {
                object: format!("namespace {namespace}"),
                key,
            };
            let entries = parse_pool_annotation(value, &source)?;
            if !entries.is_empty() {
                let source = PoolSource::Namespace {
                    namespace: namespace.clone(),
                };
                return Ok(Some((source, entries)));
            }
        }
    }
    let config = match family {
        Family::V4 => &context.config_pools_v4,
        Family::V6 => &context.config_pools_v6,
    };
    if config.is_empty() {
        return Ok(None);
    }
    Ok(Some((PoolSource::CniConfig, config.clone())))
}

/// Chooses the pools of `family` for a pod on a node with `node_labels`.
pub fn choose_pools(
    family: Family,
    context: &PodContext,
    pools: &[IPPool],
    node: &str,
    node_labels: &BTreeMap<String, String>,
) -> Result<ChosenPools, PoolError> {
    if let Some((source, entries)) = requested_pools(family, context)? {
        let pools = resolve_requested(family, &source, &entries, pools)?;
        return Ok(ChosenPools { pools, source });
    }

    let pools = automatic_pools(
        family,
        pools,
        node_labels,
        context.namespace_labels.as_ref(),
    );
    if pools.is_empty() {
        return Err(PoolError::NoneSelected {
            family,
            node: node.to_owned(),
            namespace: context
                .pod
                .as_ref()
                .map(|(namespace, _)| namespace.clone())
                .unwrap_or_else(|| "(none)".to_owned()),
            annotation: match family {
                Family::V4 => "ipv4pools",
                Family::V6 => "ipv6pools",
            },
        });
    }
    Ok(ChosenPools {
        pools,
        source: PoolSource::Automatic {
            node: node.to_owned(),
        },
    })
}

/// The named pools, in the order named, each once. Every entry must name (or be the
/// CIDR of) an enabled pool of the family that allows pod addresses.
pub fn resolve_requested(
    family: Family,
    source: &PoolSource,
    entries: &[String],
    pools: &[IPPool],
) -> Result<Vec<PoolChoice>, PoolError> {
    let mut chosen: Vec<PoolChoice> = Vec::new();
    for entry in entries {
        let by_name = pools
            .iter()
            .find(|pool| pool.metadata.name.as_deref() == Some(entry.as_str()));
        let by_cidr = || {
            let wanted: IpNet = entry.parse().ok()?;
            pools.iter().find(|pool| {
                pool.spec
                    .cidr
                    .parse::<IpNet>()
                    .is_ok_and(|cidr| cidr.trunc() == wanted.trunc())
            })
        };
        let pool = by_name.or_else(by_cidr).ok_or_else(|| PoolError::Unknown {
            entry: entry.clone(),
            named_by: source.clone(),
        })?;
        let name = pool.metadata.name.clone().unwrap_or_default();
        let Some(choice) = usable(pool) else {
            return Err(PoolError::BadPool {
                pool: name,
                cidr: pool.spec.cidr.clone(),
                named_by: source.clone(),
            });
        };
        if Family::of(&choice.cidr) != family {
            return Err(PoolError::WrongFamily {
                pool: name,
                cidr: pool.spec.cidr.clone(),
                family,
                other: match family {
                    Family::V4 => "IPv6",
                    Family::V6 => "IPv4",
                },
                named_by: source.clone(),
            });
        }
        if pool.spec.disabled {
            return Err(PoolError::Disabled {
                pool: name,
                named_by: source.clone(),
            });
        }
        if !pool
            .spec
            .effective_allowed_uses()
            .contains(&AllowedUse::Workload)
        {
            return Err(PoolError::NotForWorkloads {
                pool: name,
                named_by: source.clone(),
            });
        }
        if !chosen.contains(&choice) {
            chosen.push(choice);
        }
    }
    Ok(chosen)
}

/// Every pool of `family` that hands out pod addresses on its own: enabled, for
/// workloads, automatic assignment, its node selector matching the node and its
/// namespace selector (if any) the namespace. Sorted by name, so every agent tries them
/// in the same order. Pools with a selector that does not parse are skipped; the
/// operator reports those in the pool's status.
pub fn automatic_pools(
    family: Family,
    pools: &[IPPool],
    node_labels: &BTreeMap<String, String>,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Vec<PoolChoice> {
    let node = Scoped {
        labels: node_labels,
        global: true,
    };
    let mut chosen: Vec<PoolChoice> = pools
        .iter()
        .filter(|pool| !pool.spec.disabled)
        .filter(|pool| pool.spec.assignment_mode == AssignmentMode::Automatic)
        .filter(|pool| {
            pool.spec
                .effective_allowed_uses()
                .contains(&AllowedUse::Workload)
        })
        .filter(|pool| {
            Selector::parse(&pool.spec.node_selector).is_ok_and(|selector| selector.matches(&node))
        })
        .filter(|pool| {
            let Some(text) = pool.spec.namespace_selector.as_deref() else {
                return true;
            };
            let Ok(selector) = Selector::parse(text) else {
                return false;
            };
            if selector.is_all() {
                return true;
            }
            namespace_labels.is_some_and(|labels| {
                selector.matches(&Scoped {
                    labels,
                    global: true,
                })
            })
        })
        .filter_map(usable)
        .filter(|choice| Family::of(&choice.cidr) == family)
        .collect();
    chosen.sort_by(|a, b| a.name.cmp(&b.name));
    chosen
}

/// The pools a node's VXLAN device may take its address from: enabled IPv4 pools with
/// `vxlanMode` Always or CrossSubnet, `Tunnel` among their uses and a node selector that
/// matches the node. Sorted by name, so the choice does not depend on listing order.
pub fn vxlan_tunnel_pools(
    pools: &[IPPool],
    node_labels: &BTreeMap<String, String>,
) -> Vec<PoolChoice> {
    let node = Scoped {
        labels: node_labels,
        global: true,
    };
    let mut chosen: Vec<PoolChoice> = pools
        .iter()
        .filter(|pool| !pool.spec.disabled)
        .filter(|pool| pool.spec.vxlan_mode != EncapsulationMode::Never)
        .filter(|pool| {
            pool.spec
                .effective_allowed_uses()
                .contains(&AllowedUse::Tunnel)
        })
        .filter(|pool| {
            Selector::parse(&pool.spec.node_selector).is_ok_and(|selector| selector.matches(&node))
        })
        .filter_map(usable)
        .filter(|choice| Family::of(&choice.cidr) == Family::V4)
        .collect();
    chosen.sort_by(|a, b| a.name.cmp(&b.name));
    chosen
}

/// The pool's name, CIDR and block size, when its CIDR parses and its block size fits.
fn usable(pool: &IPPool) -> Option<PoolChoice> {
    let cidr: IpNet = pool.spec.cidr.parse().ok()?;
    let block_size = pool.spec.effective_block_size();
    if block_size < cidr.prefix_len() || block_size > cidr.max_prefix_len() {
        return None;
    }
    Some(PoolChoice {
        name: pool.metadata.name.clone()?,
        cidr: cidr.trunc(),
        block_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use tortie_crds::ippool::IPPoolSpec;

    fn pool(name: &str, cidr: &str, selector: &str) -> IPPool {
        let mut spec = IPPoolSpec::new(cidr);
        spec.node_selector = selector.to_owned();
        IPPool {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }

    fn pools() -> Vec<IPPool> {
        let mut disabled = pool("off", "10.251.0.0/16", "all()");
        disabled.spec.disabled = true;
        let mut manual = pool("manual", "10.253.0.0/16", "all()");
        manual.spec.assignment_mode = AssignmentMode::Manual;
        vec![
            pool("main", "10.244.0.0/16", "all()"),
            pool("rack-b", "10.245.0.0/16", "rack == 'b'"),
            disabled,
            manual,
            pool("special", "10.252.0.0/24", "never == 'x'"),
            pool("v6", "fd00:10:244::/64", "all()"),
            pool("broken", "10.254.0.0/16", "this is not a selector (("),
        ]
    }

    fn names(chosen: &ChosenPools) -> Vec<&str> {
        chosen.pools.iter().map(|p| p.name.as_str()).collect()
    }

    fn context() -> PodContext {
        PodContext {
            pod: Some(("default".into(), "web-0".into())),
            ..PodContext::default()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn automatic_choice_follows_node_selectors_and_skips_disabled_manual_and_broken() {
        let chosen = choose_pools(Family::V4, &context(), &pools(), "n1", &labels(&[]))
            .expect("a pool selects every node");
        assert_eq!(names(&chosen), ["main"]);
        assert_eq!(chosen.pools[0].block_size, 26);

        let chosen = choose_pools(
            Family::V4,
            &context(),
            &pools(),
            "n1",
            &labels(&[("rack", "b")]),
        )
        .expect("two pools select a rack-b node");
        assert_eq!(names(&chosen), ["main", "rack-b"]);

        let chosen = choose_pools(Family::V6, &context(), &pools(), "n1", &labels(&[]))
            .expect("the v6 pool selects every node");
        assert_eq!(names(&chosen), ["v6"]);
        assert_eq!(chosen.pools[0].block_size, 122);
    }

    #[test]
    fn pod_annotation_beats_namespace_beats_config() {
        let mut context = context();
        context.config_pools_v4 = vec!["rack-b".into()];
        let chosen =
            choose_pools(Family::V4, &context, &pools(), "n1", &labels(&[])).expect("config pool");
        assert_eq!(names(&chosen), ["rack-b"]);
        assert_eq!(chosen.source, PoolSource::CniConfig);

        context
            .namespace_annotations
            .insert(ANNOTATION_IPV4_POOLS.into(), r#"["10.244.0.0/16"]"#.into());
        let chosen = choose_pools(Family::V4, &context, &pools(), "n1", &labels(&[]))
            .expect("namespace pool");
        assert_eq!(names(&chosen), ["main"]);
        assert!(matches!(chosen.source, PoolSource::Namespace { .. }));

        context
            .pod_annotations
            .insert(ANNOTATION_IPV4_POOLS.into(), r#"["special","main"]"#.into());
        let chosen =
            choose_pools(Family::V4, &context, &pools(), "n1", &labels(&[])).expect("pod pools");
        assert_eq!(
            names(&chosen),
            ["special", "main"],
            "a named pool is used even though its node selector does not match"
        );
        assert!(matches!(chosen.source, PoolSource::Pod { .. }));

        // The IPv6 choice is independent of the IPv4 annotations.
        let chosen =
            choose_pools(Family::V6, &context, &pools(), "n1", &labels(&[])).expect("automatic v6");
        assert_eq!(names(&chosen), ["v6"]);
    }

    #[test]
    fn an_empty_annotation_counts_as_unset() {
        let mut context = context();
        context
            .pod_annotations
            .insert(ANNOTATION_IPV4_POOLS.into(), "[]".into());
        let chosen =
            choose_pools(Family::V4, &context, &pools(), "n1", &labels(&[])).expect("automatic");
        assert!(matches!(chosen.source, PoolSource::Automatic { .. }));
    }

    #[test]
    fn annotations_of_a_request_without_a_pod_are_not_read() {
        let mut context = PodContext::default();
        context
            .pod_annotations
            .insert(ANNOTATION_IPV4_POOLS.into(), r#"["special"]"#.into());
        let chosen =
            choose_pools(Family::V4, &context, &pools(), "n1", &labels(&[])).expect("automatic");
        assert_eq!(names(&chosen), ["main"]);
    }

    #[test]
    fn naming_a_disabled_pool_fails_naming_it_and_its_source() {
        let mut context = context();
        context
            .pod_annotations
            .insert(ANNOTATION_IPV4_POOLS.into(), r#"["main","off"]"#.into());
        let error = choose_pools(Family::V4, &context, &pools(), "n1", &labels(&[]))
            .expect_err("disabled pool");
        let text = error.to_string();
        assert!(matches!(error, PoolError::Disabled { .. }));
        assert!(text.contains("\"off\""), "{text}");
        assert!(text.contains("pod default/web-0"), "{text}");
        assert!(text.contains("spec.disabled"), "{text}");
    }

    #[test]
    fn unknown_wrong_family_and_malformed_entries_are_named() {
        let mut context = context();
        context.config_pools_v4 = vec!["nope".into()];
        let text = choose_pools(Family::V4, &context, &pools(), "n1", &labels(&[]))
            .expect_err("unknown")
            .to_string();
        assert!(text.contains("\"nope\""), "{text}");
        assert!(text.contains("CNI configuration"), "{text}");

        context.config_pools_v4 = vec!["v6".into()];
        let error = choose_pools(Family::V4, &context, &pools(), "n1", &labels(&[]))
            .expect_err("wrong family");
        assert!(matches!(error, PoolError::WrongFamily { .. }), "{error}");

        for bad in ["not json", r#"{"a":1}"#, r#"["ok", ""]"#, r#"[1]"#] {
            let mut context = self::tests::context();
            context
                .namespace_annotations
                .insert(ANNOTATION_IPV4_POOLS.into(), bad.into());
            let error = choose_pools(Family::V4, &context, &pools(), "n1", &labels(&[]))
                .expect_err("malformed annotation");
            let text = error.to_string();
            assert!(
                text.contains("cni.projectcalico.org/ipv4pools of namespace default"),
                "{text}"
            );
        }
    }

    #[test]
    fn no_matching_pool_is_a_clear_error() {
        let only_rack_b = vec![pool("rack-b", "10.245.0.0/16", "rack == 'b'")];
        let text = choose_pools(Family::V4, &context(), &only_rack_b, "n1", &labels(&[]))
            .expect_err("none selects n1")
            .to_string();
        assert!(text.contains("node \"n1\""), "{text}");
        assert!(text.contains("nodeSelector"), "{text}");
    }

    #[test]
    fn namespace_selectors_need_the_namespace_to_match() {
        let mut scoped = pool("team-a", "10.246.0.0/16", "all()");
        scoped.spec.namespace_selector = Some("team == 'a'".into());
        let pools = vec![scoped];
        assert!(automatic_pools(Family::V4, &pools, &labels(&[]), None).is_empty());
        let team_a = labels(&[("team", "a")]);
        assert_eq!(
            automatic_pools(Family::V4, &pools, &labels(&[]), Some(&team_a)).len(),
            1
        );
    }

    #[test]
    fn a_pool_named_twice_is_used_once() {
        let chosen = resolve_requested(
            Family::V4,
            &PoolSource::CniConfig,
            &["main".into(), "10.244.0.0/16".into()],
            &pools(),
        )
        .expect("valid");
        assert_eq!(chosen.len(), 1);
    }

    #[test]
    fn vxlan_tunnel_pools_need_vxlan_tunnel_use_ipv4_and_a_matching_selector() {
        let vxlan = |name: &str, cidr: &str, mode: EncapsulationMode| {
            let mut p = pool(name, cidr, "all()");
            p.spec.vxlan_mode = mode;
            p
        };
        let mut workload_only = vxlan("workload-only", "10.246.0.0/16", EncapsulationMode::Always);
        workload_only.spec.allowed_uses = vec![AllowedUse::Workload];
        let mut disabled = vxlan("disabled", "10.247.0.0/16", EncapsulationMode::Always);
        disabled.spec.disabled = true;
        let mut elsewhere = vxlan("elsewhere", "10.248.0.0/16", EncapsulationMode::Always);
        elsewhere.spec.node_selector = "rack == 'z'".to_owned();
        let mut tunnel_only = vxlan("tunnel-only", "10.249.0.0/16", EncapsulationMode::Always);
        tunnel_only.spec.allowed_uses = vec![AllowedUse::Tunnel];
        let all = vec![
            vxlan("z-cross", "10.244.0.0/16", EncapsulationMode::CrossSubnet),
            vxlan("plain", "10.245.0.0/16", EncapsulationMode::Never),
            workload_only,
            disabled,
            elsewhere,
            tunnel_only,
            vxlan("v6", "fd00:10::/48", EncapsulationMode::Always),
        ];
        let labels = BTreeMap::from([("rack".to_owned(), "a".to_owned())]);
        let names: Vec<String> = vxlan_tunnel_pools(&all, &labels)
            .into_iter()
            .map(|choice| choice.name)
            .collect();
        assert_eq!(names, ["tunnel-only", "z-cross"]);
        assert!(vxlan_tunnel_pools(&pools(), &labels).is_empty());
    }
}
