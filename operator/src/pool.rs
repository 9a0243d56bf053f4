//! IPPool reconciliation: what the API server's schema cannot check, how full the pool is,
//! and holding its deletion while addresses are still allocated from it.
//!
//! Conditions, each with a reason:
//!
//! - `Ready`: the pool is valid and can be used as configured. False with `Invalid` (a rule
//!   only the Rust validation checks, such as the selector language), `Overlapping` (it
//!   overlaps an older pool), `ForeignBlocks` (blocks of another size lie in its range)
//!   or `Deleting` (its deletion waits for allocations to be released).
//! - `Allocatable`: new addresses may be handed out from it. False for any reason `Ready`
//!   is, and with `Disabled` when `spec.disabled` is set.
//! - `Overlapping`: True, naming the other pools, when its range overlaps another pool's.
//!   Of two overlapping pools the older (by creation time, then name) keeps the range and
//!   stays allocatable; the newer one is not allocatable until the overlap is resolved.
//! - `Disabled`: mirrors `spec.disabled`.
//!
//! Deleting a pool waits (finalizer `tortie.dev/allocations`) until no address of its
//! range is allocated; the status then says how many addresses on which nodes hold it,
//! and an Event says so once.

// Known limitation: the empty blocks and affinities a deleted pool leaves behind are not
// removed here; that is IPAM garbage collection's work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tortie_crds::ipam::{ATTRIBUTE_NODE, IPAMBlock};
use tortie_crds::ippool::{IPPool, IPPoolStatus};
use tortie_crds::validation::Validate;

use crate::error::{Error, Result};
use crate::health::FirstPass;
use crate::metrics::Metrics;
use crate::run::{Backoffs, FIELD_MANAGER};
use crate::world::{Kind, Snapshot, World, pool_age_order};

/// Finalizer that holds a pool's deletion while addresses are allocated from it.
pub const ALLOCATIONS_FINALIZER: &str = "tortie.dev/allocations";

/// Condition types.
pub const READY: &str = "Ready";
/// Condition type: new addresses may be handed out.
pub const ALLOCATABLE: &str = "Allocatable";
/// Condition type: the range overlaps another pool's.
pub const OVERLAPPING: &str = "Overlapping";
/// Condition type: `spec.disabled`.
pub const DISABLED: &str = "Disabled";

/// How often every pool is looked at even when no watch said so.
const RESYNC: Duration = Duration::from_secs(600);

/// What the addresses of a pool are doing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Addresses allocated from the pool's blocks.
    pub allocated: u64,
    /// Blocks of the pool that a node owns.
    pub blocks_in_use: u64,
    /// Blocks in the range whose size is not the pool's block size.
    pub foreign_blocks: Vec<IpNet>,
    /// Allocated addresses by the node they are on.
    pub by_node: BTreeMap<String, u64>,
}

/// The outcome of looking at a pool: its status and the Events its changes call for.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolReport {
    /// The status to write.
    pub status: IPPoolStatus,
    /// Usage, for metrics and the deletion decision.
    pub usage: PoolUsage,
    /// The pool's range, when it parses.
    pub cidr: Option<IpNet>,
}

/// What the pool controller shares between reconciles.
pub struct PoolContext {
    /// The API client.
    pub client: Client,
    /// The caches.
    pub world: Arc<World>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where Events go.
    pub recorder: Recorder,
    /// Per-pool retry state.
    pub backoffs: Backoffs,
    /// The first pass over the pools known at start.
    pub first_pass: Arc<FirstPass>,
}

/// The pools in `others` (by name, not `pool` itself) whose range overlaps `cidr`.
pub fn overlapping_pools<'a>(
    pool: &IPPool,
    cidr: &IpNet,
    others: &'a [Arc<IPPool>],
) -> Vec<&'a IPPool> {
    others
        .iter()
        .filter(|other| other.name_any() != pool.name_any())
        .filter(|other| {
            other
                .spec
                .cidr
                .parse::<IpNet>()
                .is_ok_and(|o| overlaps(cidr, &o.trunc()))
        })
        .map(|other| other.as_ref())
        .collect()
}

/// Whether two ranges share an address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Addresses in `cidr` as a decimal string; an IPv6 range can hold more than 64 bits.
pub fn capacity(cidr: &IpNet) -> u128 {
    let host_bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

/// What the blocks inside `cidr` hold, for a pool with blocks of `/block_size`.
pub fn pool_usage(cidr: &IpNet, block_size: u8, blocks: &[Arc<IPAMBlock>]) -> PoolUsage {
    let mut usage = PoolUsage::default();
    for block in blocks {
        let block_cidr = block.cidr();
        if block_cidr.addr().is_ipv4() != cidr.addr().is_ipv4() || !overlaps(cidr, &block_cidr) {
            continue;
        }
        if block_cidr.prefix_len() != block_size || !cidr.contains(&block_cidr) {
            usage.foreign_blocks.push(block_cidr);
        }
        if block.node().is_some() {
            usage.blocks_in_use += 1;
        }
        for (_, owner) in block.allocations() {
            usage.allocated += 1;
            let node = owner
                .secondary
                .get(ATTRIBUTE_NODE)
                .map(String::as_str)
                .or(block.node())
                .unwrap_or("an unknown node");
            *usage.by_node.entry(node.to_owned()).or_default() += 1;
        }
    }
    usage.foreign_blocks.sort();
    usage
}

/// The status of `pool` given the rest of the cluster in `snapshot`, keeping the
/// transition times of conditions whose status did not change. Pure.
pub fn pool_report(pool: &IPPool, snapshot: &Snapshot, now: Timestamp) -> PoolReport {
    let spec = &pool.spec;
    let generation = pool.metadata.generation;
    let block_size = spec.effective_block_size();
    let cidr = spec.cidr.parse::<IpNet>().ok().map(|c| c.trunc());
    let invalid = pool.validate().err();
    let deleting = pool.metadata.deletion_timestamp.is_some();

    let usage = cidr
        .map(|c| pool_usage(&c, block_size, &snapshot.blocks))
        .unwrap_or_default();
    let overlapping = cidr
        .map(|c| overlapping_pools(pool, &c, &snapshot.pools))
        .unwrap_or_default();
    let older = overlapping
        .iter()
        .find(|other| pool_age_order(other, pool).is_lt());

    let overlap_text = overlapping
        .iter()
        .map(|o| format!("pool {} ({})", o.name_any(), o.spec.cidr))
        .collect::<Vec<_>>()
        .join(", ");

    // The first problem found decides Ready and Allocatable.
    let problem: Option<(&str, String)> = if let Some(errors) = &invalid {
        Some(("Invalid", format!("IPPool {}: {errors}", pool.name_any())))
    } else if let Some(older) = older {
        Some((
            "Overlapping",
            format!(
                "cidr {} overlaps {overlap_text}; the older pool {} keeps the shared range. \
                 Change this pool's cidr (delete and re-create it) to a free range",
                spec.cidr,
                older.name_any()
            ),
        ))
    } else if !usage.foreign_blocks.is_empty() {
        Some((
            "ForeignBlocks",
            format!(
                "{} block(s) in {} are not /{block_size} (first: {}), left by an earlier pool \
                 with another block size; allocation resumes once they are released",
                usage.foreign_blocks.len(),
                spec.cidr,
                usage.foreign_blocks[0]
            ),
        ))
    } else if deleting {
        Some(("Deleting", deletion_message(&usage)))
    } else {
        None
    };

    let old = pool.status.clone().unwrap_or_default();
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" }.to_owned();
        let since = old
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(Timestamp::from_second(now.as_second()).unwrap_or(now)));
        Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message,
            last_transition_time: since,
            observed_generation: generation,
        }
    };

    let ready = match &problem {
        Some((reason, message)) => condition(READY, false, reason, message.clone()),
        None => condition(
            READY,
            true,
            "Valid",
            format!("pool {} is valid and in use", spec.cidr),
        ),
    };
    let allocatable = match &problem {
        Some((reason, message)) => condition(ALLOCATABLE, false, reason, message.clone()),
        None if spec.disabled => condition(
            ALLOCATABLE,
            false,
            "Disabled",
            "spec.disabled is true: no new addresses are handed out; existing ones stay".into(),
        ),
        None => condition(
            ALLOCATABLE,
            true,
            "Allocatable",
            format!("new addresses are handed out from {}", spec.cidr),
        ),
    };
    let overlapping_condition = if overlapping.is_empty() {
        condition(
            OVERLAPPING,
            false,
            "NoOverlap",
            "no other pool overlaps this one".into(),
        )
    } else if older.is_some() {
        condition(
            OVERLAPPING,
            true,
            "Overlapping",
            format!("cidr {} overlaps {overlap_text}", spec.cidr),
        )
    } else {
        condition(
            OVERLAPPING,
            true,
            "Overlapping",
            format!(
                "cidr {} overlaps {overlap_text}; this pool is older and keeps the shared range",
                spec.cidr
            ),
        )
    };
    let disabled = if spec.disabled {
        condition(DISABLED, true, "Disabled", "spec.disabled is true".into())
    } else {
        condition(DISABLED, false, "Enabled", "spec.disabled is false".into())
    };

    let capacity = cidr.map(|c| capacity(&c));
    let status = IPPoolStatus {
        observed_generation: generation,
        conditions: vec![ready, allocatable, overlapping_condition, disabled],
        block_size: Some(i32::from(block_size)),
        encapsulation: Some(spec.encapsulation_label().to_owned()),
        capacity: capacity.map(|c| c.to_string()),
        allocated: cidr.map(|_| usage.allocated),
        blocks_in_use: cidr.map(|_| usage.blocks_in_use),
        used: capacity.map(|c| format!("{}/{c}", usage.allocated)),
    };
    PoolReport {
        status,
        usage,
        cidr,
    }
}

/// Why a pool's deletion waits: how many addresses on which nodes.
pub fn deletion_message(usage: &PoolUsage) -> String {
    let nodes = usage
        .by_node
        .iter()
        .map(|(node, count)| format!("{count} on {node}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "deletion waits for {} allocated address(es) to be released ({nodes}); delete the pods \
         using them or move them to another pool",
        usage.allocated
    )
}

/// The Events a status change calls for: a warning each time Ready turns False for a new
/// reason, and each time Overlapping turns True.
pub fn transition_events(old: Option<&IPPoolStatus>, new: &IPPoolStatus) -> Vec<(String, String)> {
    let find = |status: Option<&IPPoolStatus>, type_: &str| {
        status.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_).cloned())
    };
    let mut events = Vec::new();
    if let Some(ready) = find(Some(new), READY)
        && ready.status == "False"
    {
        let before = find(old, READY);
        if before.is_none_or(|b| b.status != "False" || b.reason != ready.reason) {
            let reason = if ready.reason == "Deleting" {
                "DeletionBlocked".to_owned()
            } else {
                ready.reason.clone()
            };
            events.push((reason, ready.message.clone()));
        }
    }
    if let Some(overlap) = find(Some(new), OVERLAPPING)
        && overlap.status == "True"
        && find(old, OVERLAPPING).is_none_or(|b| b.status != "True")
        && !events.iter().any(|(reason, _)| reason == "Overlapping")
    {
        events.push(("Overlapping".into(), overlap.message.clone()));
    }
    events
}

/// Runs the pool controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<PoolContext>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let pools = Api::<DeserializeGuard<IPPool>>::all(ctx.client.clone());
    let related = ctx.world.changes(&[Kind::IPPool, Kind::IPAMBlock]);
    Controller::new(pools, watcher::Config::default())
        .reconcile_all_on(related)
        .with_config(
            kube::runtime::controller::Config::default().debounce(Duration::from_millis(200)),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

async fn reconcile(pool: Arc<DeserializeGuard<IPPool>>, ctx: Arc<PoolContext>) -> Result<Action> {
    let started = Instant::now();
    let name = pool.name_any();
    let result = reconcile_pool(&pool, &ctx).await;
    ctx.metrics
        .reconciled(Kind::IPPool.as_str(), started.elapsed(), result.is_err());
    match &result {
        Ok(_) => {
            ctx.backoffs.reset(&name);
            ctx.first_pass.done(&name);
        }
        Err(error) if error.is_permanent() => ctx.first_pass.done(&name),
        Err(_) => {}
    }
    result
}

async fn reconcile_pool(pool: &DeserializeGuard<IPPool>, ctx: &PoolContext) -> Result<Action> {
    let pool = match &pool.0 {
        Ok(pool) => pool,
        Err(invalid) => {
            return Err(Error::Malformed {
                kind: "IPPool",
                name: invalid.metadata.name.clone().unwrap_or_default(),
                message: invalid.error.clone(),
            });
        }
    };
    let name = pool.name_any();
    let api = Api::<IPPool>::all(ctx.client.clone());
    let snapshot = ctx.world.snapshot();
    let report = pool_report(pool, &snapshot, Timestamp::now());
    let deleting = pool.metadata.deletion_timestamp.is_some();
    let has_finalizer = pool.finalizers().iter().any(|f| f == ALLOCATIONS_FINALIZER);

    if deleting && report.usage.allocated == 0 {
        if has_finalizer {
            set_finalizer(&api, pool, false).await?;
            tracing::info!(pool = %name, "No addresses left in the pool; letting its deletion finish");
        }
        ctx.metrics.remove_pool(&name);
        return Ok(Action::await_change());
    }
    if !deleting && !has_finalizer {
        set_finalizer(&api, pool, true).await?;
    }

    if pool.status.as_ref() != Some(&report.status) {
        let patch = serde_json::json!({
            "apiVersion": IPPool::api_version(&()),
            "kind": IPPool::kind(&()),
            "status": report.status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        tracing::debug!(pool = %name, used = ?report.status.used, "Wrote pool status");
        for (reason, note) in transition_events(pool.status.as_ref(), &report.status) {
            tracing::warn!(pool = %name, %reason, message = %note, "Pool needs attention");
            let event = Event {
                type_: EventType::Warning,
                reason,
                note: Some(note),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(error) = ctx.recorder.publish(&event, &pool.object_ref(&())).await {
                tracing::warn!(pool = %name, %error, "Could not record an Event");
            }
        }
    }

    if let Some(cidr) = report.cidr {
        ctx.metrics.set_pool_usage(
            &name,
            report.usage.allocated,
            capacity(&cidr) as f64,
            report.usage.blocks_in_use,
        );
    }
    Ok(Action::requeue(RESYNC))
}

/// Adds or removes the allocations finalizer, guarded by the resource version so a
/// concurrent change of the list is retried instead of overwritten.
async fn set_finalizer(api: &Api<IPPool>, pool: &IPPool, present: bool) -> Result<()> {
    let mut finalizers: Vec<String> = pool
        .finalizers()
        .iter()
        .filter(|f| *f != ALLOCATIONS_FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(ALLOCATIONS_FINALIZER.to_owned());
    }
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": pool.resource_version(),
        }
    });
    api.patch(
        &pool.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

fn error_policy(
    pool: Arc<DeserializeGuard<IPPool>>,
    error: &Error,
    ctx: Arc<PoolContext>,
) -> Action {
    ctx.backoffs.after_error("pool", &pool.name_any(), error)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use tortie_crds::ipam::AllocationAttribute;
    use tortie_crds::ippool::{EncapsulationMode, IPPoolSpec};

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR parses")
    }

    fn pool(name: &str, cidr: &str, created_second: i64) -> Arc<IPPool> {
        let mut pool = IPPool::new(name, IPPoolSpec::new(cidr));
        pool.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(created_second).expect("test time is valid"),
        ));
        pool.metadata.generation = Some(1);
        Arc::new(pool)
    }

    fn block(cidr: &str, node: &str, pods: &[&str]) -> Arc<IPAMBlock> {
        let mut block =
            IPAMBlock::new_empty(net(cidr), Some(node), 1).expect("test block is valid");
        for pod in pods {
            let owner = AllocationAttribute::for_pod(format!("h.{pod}"), node, "default", pod, "t");
            block.allocate(1, &owner).expect("test block has room");
        }
        Arc::new(block)
    }

    fn snapshot(pools: Vec<Arc<IPPool>>, blocks: Vec<Arc<IPAMBlock>>) -> Snapshot {
        let mut pools = pools;
        pools.sort_by(|a, b| pool_age_order(a, b));
        Snapshot {
            pools,
            blocks,
            ..Snapshot::default()
        }
    }

    fn condition<'a>(status: &'a IPPoolStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("every condition type is written")
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).expect("test time is valid")
    }

    #[test]
    fn overlap_is_symmetric_and_ignores_neighbours() {
        assert!(overlaps(&net("10.0.0.0/16"), &net("10.0.128.0/17")));
        assert!(overlaps(&net("10.0.128.0/17"), &net("10.0.0.0/16")));
        assert!(!overlaps(&net("10.0.0.0/17"), &net("10.0.128.0/17")));
        assert!(!overlaps(&net("10.0.0.0/8"), &net("fd00::/8")));

        let a = pool("a", "10.0.0.0/16", 1);
        let pools = vec![
            a.clone(),
            pool("b", "10.0.128.0/17", 2),
            pool("c", "10.1.0.0/16", 3),
        ];
        let found: Vec<String> = overlapping_pools(&a, &net("10.0.0.0/16"), &pools)
            .iter()
            .map(|p| p.name_any())
            .collect();
        assert_eq!(found, ["b"]);
    }

    #[test]
    fn fresh_pool_is_ready_and_reports_usage() {
        let classic = {
            let mut spec = IPPoolSpec::new("10.244.0.0/16");
            spec.ipip_mode = EncapsulationMode::Always;
            spec.nat_outgoing = true;
            Arc::new(IPPool::new("classic", spec))
        };
        let blocks = vec![
            block("10.244.0.0/26", "node-1", &["a", "b", "c"]),
            block("10.244.0.64/26", "node-2", &[]),
            block("10.250.0.0/26", "node-3", &["elsewhere"]),
        ];
        let report = pool_report(&classic, &snapshot(vec![classic.clone()], blocks), now());
        let status = &report.status;
        assert_eq!(status.used.as_deref(), Some("3/65536"));
        assert_eq!(status.capacity.as_deref(), Some("65536"));
        assert_eq!(status.allocated, Some(3));
        assert_eq!(status.blocks_in_use, Some(2));
        assert_eq!(status.block_size, Some(26));
        assert_eq!(status.encapsulation.as_deref(), Some("IPIP"));
        assert_eq!(condition(status, READY).status, "True");
        assert_eq!(condition(status, ALLOCATABLE).status, "True");
        assert_eq!(condition(status, OVERLAPPING).status, "False");
        assert_eq!(condition(status, DISABLED).status, "False");
        assert_eq!(report.usage.by_node.get("node-1"), Some(&3));
    }

    #[test]
    fn encapsulation_labels() {
        let label = |ipip, vxlan| {
            let mut spec = IPPoolSpec::new("10.0.0.0/16");
            spec.ipip_mode = ipip;
            spec.vxlan_mode = vxlan;
            spec.encapsulation_label()
        };
        use EncapsulationMode::{Always, CrossSubnet, Never};
        assert_eq!(label(Always, Never), "IPIP");
        assert_eq!(label(CrossSubnet, Never), "IPIPCrossSubnet");
        assert_eq!(label(Never, Always), "VXLAN");
        assert_eq!(label(Never, CrossSubnet), "VXLANCrossSubnet");
        assert_eq!(label(Never, Never), "None");
    }

    #[test]
    fn newer_overlapping_pool_is_not_allocatable_and_names_the_older() {
        let first = pool("first", "10.244.0.0/16", 1);
        let second = pool("second", "10.244.128.0/17", 2);
        let world = snapshot(vec![first.clone(), second.clone()], vec![]);

        let newer = pool_report(&second, &world, now()).status;
        let overlap = condition(&newer, OVERLAPPING);
        assert_eq!(overlap.status, "True");
        assert!(
            overlap.message.contains("pool first (10.244.0.0/16)"),
            "{}",
            overlap.message
        );
        assert_eq!(condition(&newer, ALLOCATABLE).status, "False");
        assert_eq!(condition(&newer, ALLOCATABLE).reason, "Overlapping");
        assert_eq!(condition(&newer, READY).reason, "Overlapping");

        let older = pool_report(&first, &world, now()).status;
        assert_eq!(condition(&older, OVERLAPPING).status, "True");
        assert!(condition(&older, OVERLAPPING).message.contains("second"));
        assert_eq!(condition(&older, ALLOCATABLE).status, "True");

        let events = transition_events(None, &newer);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].0, "Overlapping");
        assert!(
            transition_events(Some(&newer), &newer).is_empty(),
            "no Event without a transition"
        );
    }

    #[test]
    fn bad_selector_is_invalid() {
        let mut spec = IPPoolSpec::new("10.0.0.0/16");
        spec.node_selector = "role == ".into();
        let bad = Arc::new(IPPool::new("bad", spec));
        let status = pool_report(&bad, &snapshot(vec![bad.clone()], vec![]), now()).status;
        let ready = condition(&status, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Invalid")
        );
        assert!(
            ready.message.contains("spec.nodeSelector"),
            "{}",
            ready.message
        );
        assert_eq!(condition(&status, ALLOCATABLE).reason, "Invalid");
    }

    #[test]
    fn blocks_of_another_size_stop_allocation() {
        let p = pool("p", "10.0.0.0/16", 1);
        let blocks = vec![
            block("10.0.4.0/24", "node-1", &[]),
            block("10.0.0.0/26", "node-1", &[]),
        ];
        let status = pool_report(&p, &snapshot(vec![p.clone()], blocks), now()).status;
        let allocatable = condition(&status, ALLOCATABLE);
        assert_eq!(allocatable.status, "False");
        assert_eq!(allocatable.reason, "ForeignBlocks");
        assert!(
            allocatable.message.contains("10.0.4.0/24"),
            "{}",
            allocatable.message
        );
    }

    #[test]
    fn disabled_pool_is_ready_but_not_allocatable() {
        let mut spec = IPPoolSpec::new("10.0.0.0/16");
        spec.disabled = true;
        let p = Arc::new(IPPool::new("off", spec));
        let status = pool_report(&p, &snapshot(vec![p.clone()], vec![]), now()).status;
        assert_eq!(condition(&status, READY).status, "True");
        assert_eq!(condition(&status, DISABLED).status, "True");
        assert_eq!(condition(&status, ALLOCATABLE).reason, "Disabled");
    }

    #[test]
    fn deleting_pool_names_nodes_holding_addresses() {
        let mut p = IPPool::new("going", IPPoolSpec::new("10.0.0.0/16"));
        p.metadata.deletion_timestamp = Some(Time(now()));
        let p = Arc::new(p);
        let blocks = vec![
            block("10.0.0.0/26", "node-1", &["a", "b"]),
            block("10.0.0.64/26", "node-2", &["c"]),
        ];
        let report = pool_report(&p, &snapshot(vec![p.clone()], blocks), now());
        let ready = condition(&report.status, READY);
        assert_eq!(ready.reason, "Deleting");
        assert!(ready.message.contains("3 allocated"), "{}", ready.message);
        assert!(
            ready.message.contains("2 on node-1, 1 on node-2"),
            "{}",
            ready.message
        );
        let events = transition_events(None, &report.status);
        assert_eq!(events[0].0, "DeletionBlocked");
    }

    #[test]
    fn transition_times_are_kept_while_status_holds() {
        let p = pool("p", "10.0.0.0/16", 1);
        let world = snapshot(vec![p.clone()], vec![]);
        let first = pool_report(&p, &world, now()).status;

        let mut written = (*p).clone();
        written.status = Some(first.clone());
        let later = Timestamp::from_second(2_000_000).expect("test time is valid");
        let second = pool_report(&written, &world, later).status;
        assert_eq!(first, second, "nothing changed, so nothing is written");
    }

    #[test]
    fn ipv6_capacity_does_not_overflow() {
        assert_eq!(capacity(&net("fd00::/64")), 1u128 << 64);
        assert_eq!(capacity(&net("10.0.0.0/16")), 65536);
        assert_eq!(capacity(&net("::/0")), u128::MAX);
    }
}
