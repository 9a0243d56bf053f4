//! IPAM garbage collection: gives back what pods and nodes that are gone still hold.
//!
//! Four kinds of leak are found, each by a pure look at a snapshot ([`leaks`]):
//!
//! - an allocation whose pod (namespace and name from the block's attributes) does not
//!   exist, or a non-pod allocation (a tunnel address) of a node that does not exist;
//! - an IPAMHandle with no allocation in any block;
//! - an empty block whose affinity names a node that does not exist, released with its
//!   BlockAffinity so the addresses return to the pool;
//! - a BlockAffinity of a node that does not exist whose block is gone or owned by
//!   another node.
//!
//! Something is only a leak once it has looked like one on every pass for the grace
//! period, which covers the watch caches lagging behind and the moment between an agent
//! counting an address in its handle and writing it into the block. Before each write the
//! pod or node is read again, the object is read fresh, and the write is a compare-and-swap
//! on the `resourceVersion` just read: a conflict means reading again, never writing what
//! a stale read suggested.
//!
//! Known limitation: allocations record the pod's namespace and name but not its UID, so a
//! pod re-created under the same name (a StatefulSet's) keeps its predecessor's leaked
//! address alive until the new pod is gone too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::core::DeserializeGuard;
use kube::{Api, Client, Resource, ResourceExt};
use tortie_crds::ipam::names::{affinity_name, block_name, handle_name};
use tortie_crds::ipam::{
    AFFINITY_TYPE_HOST, ATTRIBUTE_NAMESPACE, ATTRIBUTE_NODE, ATTRIBUTE_POD, AllocationAttribute,
    BlockAffinity, IPAMBlock, IPAMHandle, Release, WINDOWS_RESERVED_HANDLE,
};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::world::{Kind, World};

/// Most leaks acted on in one pass, so that a thousand deleted nodes make many short
/// passes instead of one long one; the rest wait for the next pass.
pub const MAX_LEAKS_PER_PASS: usize = 200;

/// How often a compare-and-swap is retried after a conflict before leaving the object to
/// the next pass.
const MAX_CAS_ATTEMPTS: u32 = 5;

/// Shortest wait between passes, however soon a suspicion matures.
const MIN_WAIT: Duration = Duration::from_millis(500);

/// How often garbage collection runs and how long a leak must look like one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcSettings {
    /// Time between passes when nothing is about to mature.
    pub interval: Duration,
    /// How long something must look leaked, pass after pass, before it is released.
    pub grace: Duration,
}

/// Who an allocation belongs to, as the block's attributes record it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owner {
    /// A pod's address.
    Pod {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
    },
    /// An address that is no pod's (a tunnel address) of a node.
    Node(String),
}

/// Something IPAM holds that nobody uses any more.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Leak {
    /// Addresses of one handle in one block whose owner is gone.
    Allocation {
        /// The block's object name.
        block: String,
        /// The block's CIDR.
        cidr: IpNet,
        /// The handle holding the addresses.
        handle_id: String,
        /// The owner the attributes name.
        owner: Owner,
        /// The addresses held.
        addresses: Vec<IpAddr>,
    },
    /// A handle that holds no address in any block.
    Handle {
        /// The handle's object name.
        name: String,
        /// The version read; a handle that changes is suspected afresh.
        resource_version: Option<String>,
    },
    /// An empty block of a node that is gone.
    Block {
        /// The block's object name.
        name: String,
        /// The block's CIDR.
        cidr: IpNet,
        /// The node its affinity names.
        node: String,
    },
    /// An affinity of a node that is gone, with no block of that node behind it.
    Affinity {
        /// The affinity's object name.
        name: String,
        /// The node it names.
        node: String,
        /// The block CIDR it names.
        cidr: IpNet,
    },
}

impl Leak {
    /// What identifies the suspicion across passes.
    pub fn key(&self) -> String {
        match self {
            Leak::Allocation {
                block,
                handle_id,
                owner,
                ..
            } => format!("allocation/{block}/{handle_id}/{owner:?}"),
            Leak::Handle {
                name,
                resource_version,
            } => format!(
                "handle/{name}@{}",
                resource_version.as_deref().unwrap_or("")
            ),
            Leak::Block { name, .. } => format!("block/{name}"),
            Leak::Affinity { name, .. } => format!("affinity/{name}"),
        }
    }
}

/// What one pass of garbage collection looks at.
#[derive(Clone, Debug, Default)]
pub struct GcSnapshot {
    /// Every well-formed block.
    pub blocks: Vec<Arc<IPAMBlock>>,
    /// Every well-formed affinity.
    pub affinities: Vec<Arc<BlockAffinity>>,
    /// Every well-formed handle.
    pub handles: Vec<IPAMHandle>,
    /// Names of the nodes that exist.
    pub nodes: BTreeSet<String>,
    /// Namespace and name of every pod that exists.
    pub pods: BTreeSet<(String, String)>,
    /// Since when each suspicion (by [`Leak::key`]) has held without a break.
    pub suspected_since: BTreeMap<String, Instant>,
    /// How long a suspicion must hold to be a leak.
    pub grace: Duration,
}

/// Everything that looks leaked now, whether or not for long enough: allocations first,
/// then handles, blocks and affinities, so that freeing a block's last address comes
/// before releasing the block.
pub fn suspects(snapshot: &GcSnapshot) -> Vec<Leak> {
    let mut found = Vec::new();
    // Handles (by object name) that hold an address somewhere, and blocks whose contents
    // cannot be trusted: handles naming those are never called empty.
    let mut holding: BTreeSet<String> = BTreeSet::new();
    let mut unreadable: BTreeSet<String> = BTreeSet::new();

    for block in &snapshot.blocks {
        let name = block.name_any();
        if let Err(error) = block.check() {
            tracing::warn!(block = %name, %error, "Skipping inconsistent IPAM block");
            unreadable.insert(block.cidr().to_string());
            continue;
        }
        let mut by_owner: BTreeMap<(String, Owner), Vec<IpAddr>> = BTreeMap::new();
        for (address, attribute) in block.allocations() {
            let Some(handle) = attribute.handle() else {
                continue;
            };
            holding.insert(handle_name(handle));
            if block.spec.deleted || handle.eq_ignore_ascii_case(WINDOWS_RESERVED_HANDLE) {
                continue;
            }
            if let Some(owner) = gone_owner(snapshot, block, attribute) {
                by_owner
                    .entry((handle.to_owned(), owner))
                    .or_default()
                    .push(address);
            }
        }
        for ((handle_id, owner), addresses) in by_owner {
            found.push(Leak::Allocation {
                block: name.clone(),
                cidr: block.cidr(),
                handle_id,
                owner,
                addresses,
            });
        }
    }

    for handle in &snapshot.handles {
        let name = handle.name_any();
        let names_unreadable = handle.spec.block.keys().any(|k| unreadable.contains(k));
        if !holding.contains(&name) && !names_unreadable {
            found.push(Leak::Handle {
                name,
                resource_version: handle.resource_version(),
            });
        }
    }

    let mut released_blocks: BTreeSet<(String, IpNet)> = BTreeSet::new();
    for block in &snapshot.blocks {
        let Some(node) = block.node() else {
            continue;
        };
        if snapshot.nodes.contains(node) {
            continue;
        }
        released_blocks.insert((node.to_owned(), block.cidr()));
        let only_reserved = block.check().is_ok()
            && block.allocations().all(|(_, a)| {
                a.handle()
                    .is_some_and(|h| h.eq_ignore_ascii_case(WINDOWS_RESERVED_HANDLE))
            });
        if only_reserved {
            found.push(Leak::Block {
                name: block.name_any(),
                cidr: block.cidr(),
                node: node.to_owned(),
            });
        }
    }

    for affinity in &snapshot.affinities {
        let spec = &affinity.spec;
        if spec.affinity_type() != AFFINITY_TYPE_HOST
            || snapshot.nodes.contains(&spec.node)
            || released_blocks.contains(&(spec.node.clone(), spec.cidr))
        {
            continue;
        }
        found.push(Leak::Affinity {
            name: affinity.name_any(),
            node: spec.node.clone(),
            cidr: spec.cidr,
        });
    }
    found
}

/// The suspects that have held for the grace period at `now`, in the order of
/// [`suspects`]. A suspect not yet in `suspected_since` has only just been seen.
pub fn leaks(snapshot: &GcSnapshot, now: Instant) -> Vec<Leak> {
    matured(
        suspects(snapshot),
        &snapshot.suspected_since,
        snapshot.grace,
        now,
    )
}

/// The suspects whose suspicion started at least `grace` before `now`.
fn matured(
    suspects: Vec<Leak>,
    suspected_since: &BTreeMap<String, Instant>,
    grace: Duration,
    now: Instant,
) -> Vec<Leak> {
    suspects
        .into_iter()
        .filter(|leak| {
            suspected_since
                .get(&leak.key())
                .is_some_and(|since| now.saturating_duration_since(*since) >= grace)
        })
        .collect()
}

/// Keeps the start of every suspicion that still holds, starts new ones at `now` and
/// forgets those that no longer hold.
pub fn observe(suspected_since: &mut BTreeMap<String, Instant>, suspects: &[Leak], now: Instant) {
    let current: BTreeSet<String> = suspects.iter().map(Leak::key).collect();
    suspected_since.retain(|key, _| current.contains(key));
    for key in current {
        suspected_since.entry(key).or_insert(now);
    }
}

/// The owner of `attribute` if it is gone: a pod that does not exist, or for an address
/// that is no pod's, a node that does not exist.
fn gone_owner(
    snapshot: &GcSnapshot,
    block: &IPAMBlock,
    attribute: &AllocationAttribute,
) -> Option<Owner> {
    let secondary = &attribute.secondary;
    match (
        secondary.get(ATTRIBUTE_NAMESPACE),
        secondary.get(ATTRIBUTE_POD),
    ) {
        (Some(namespace), Some(pod)) => {
            let key = (namespace.clone(), pod.clone());
            (!snapshot.pods.contains(&key)).then(|| Owner::Pod {
                namespace: namespace.clone(),
                name: pod.clone(),
            })
        }
        _ => {
            let node = secondary
                .get(ATTRIBUTE_NODE)
                .map(String::as_str)
                .or_else(|| block.node())?;
            (!snapshot.nodes.contains(node)).then(|| Owner::Node(node.to_owned()))
        }
    }
}

/// What the collector needs.
pub struct GcContext {
    /// The API client.
    pub client: Client,
    /// The watched caches (blocks, affinities, nodes, IPAMConfig).
    pub world: Arc<World>,
    /// Where releases are counted.
    pub metrics: Arc<Metrics>,
    /// Interval and grace.
    pub settings: GcSettings,
}

/// Runs passes every interval, soon after a Node is deleted, and when a suspicion is
/// about to mature, until `stop` resolves.
pub async fn run(ctx: Arc<GcContext>, stop: impl std::future::Future<Output = ()>) {
    let mut stop = std::pin::pin!(stop);
    let mut node_changes = std::pin::pin!(ctx.world.changes(&[Kind::Node]));
    let mut suspected_since = BTreeMap::new();
    let mut known_nodes: BTreeSet<String> = ctx.world.nodes.entries().into_keys().collect();
    tracing::info!(
        interval = ?ctx.settings.interval,
        grace = ?ctx.settings.grace,
        "Starting IPAM garbage collection"
    );
    loop {
        if let Err(error) = pass(&ctx, &mut suspected_since).await {
            tracing::warn!(%error, "IPAM garbage collection pass failed; trying again later");
        }
        let wait = next_wait(&suspected_since, &ctx.settings, Instant::now());
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep_until(deadline) => break,
                changed = node_changes.next() => {
                    if changed.is_none() {
                        return;
                    }
                    let nodes: BTreeSet<String> =
                        ctx.world.nodes.entries().into_keys().collect();
                    let removed = known_nodes.difference(&nodes).next().is_some();
                    known_nodes = nodes;
                    if removed {
                        tracing::debug!("A Node was deleted; collecting IPAM garbage now");
                        break;
                    }
                }
            }
        }
    }
}

/// How long to wait before the next pass: the interval, or less when a suspicion
/// matures sooner.
fn next_wait(
    suspected_since: &BTreeMap<String, Instant>,
    settings: &GcSettings,
    now: Instant,
) -> Duration {
    suspected_since
        .values()
        .map(|since| (*since + settings.grace).saturating_duration_since(now))
        .min()
        .map_or(settings.interval, |due| due.min(settings.interval))
        .max(MIN_WAIT)
}

/// One pass: read, find the leaks, release up to [`MAX_LEAKS_PER_PASS`] of them. A leak
/// that cannot be released is logged and skipped.
async fn pass(ctx: &GcContext, suspected_since: &mut BTreeMap<String, Instant>) -> Result<()> {
    let world = ctx.world.snapshot();
    let pods = Api::<Pod>::all(ctx.client.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|pod| Some((pod.metadata.namespace?, pod.metadata.name?)))
        .collect();
    let handles = Api::<DeserializeGuard<IPAMHandle>>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|guard| match guard.0 {
            Ok(handle) => Some(handle),
            Err(invalid) => {
                tracing::warn!(
                    handle = %invalid.metadata.name.unwrap_or_default(),
                    error = %invalid.error,
                    "Skipping malformed IPAMHandle; fix it or delete it"
                );
                None
            }
        })
        .collect();
    let snapshot = GcSnapshot {
        blocks: world.blocks.clone(),
        affinities: world.affinities.clone(),
        handles,
        nodes: world.nodes.keys().cloned().collect(),
        pods,
        suspected_since: BTreeMap::new(),
        grace: ctx.settings.grace,
    };
    let now = Instant::now();
    let suspected = suspects(&snapshot);
    observe(suspected_since, &suspected, now);
    let found = matured(suspected, suspected_since, ctx.settings.grace, now);
    if found.len() > MAX_LEAKS_PER_PASS {
        tracing::info!(
            leaks = found.len(),
            now = MAX_LEAKS_PER_PASS,
            "More IPAM leaks than one pass takes; the rest follow in the next passes"
        );
    }

    let release = release_mode(world.ipam_config.as_deref());
    for leak in found.into_iter().take(MAX_LEAKS_PER_PASS) {
        let key = leak.key();
        let result = match &leak {
            Leak::Allocation {
                block,
                cidr,
                handle_id,
                owner,
                ..
            } => release_allocation(ctx, block, *cidr, handle_id, owner, &release).await,
            Leak::Handle {
                name,
                resource_version,
            } => delete_empty_handle(ctx, name, resource_version.as_deref()).await,
            Leak::Block { name, cidr, node } => {
                release_block(ctx, name, *cidr, node, cooldown(&world)).await
            }
            Leak::Affinity { name, node, cidr } => {
                delete_affinity_of_gone_node(ctx, name, node, *cidr).await
            }
        };
        match result {
            Ok(true) => {
                suspected_since.remove(&key);
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(leak = %key, %error, "Could not release leaked IPAM state; skipping it this pass");
            }
        }
    }
    Ok(())
}

fn cooldown(world: &crate::world::Snapshot) -> u32 {
    world
        .ipam_config
        .as_ref()
        .map_or(0, |c| c.spec.cooldown_seconds())
}

/// Immediate, or through the IPAMConfig's cooldown, as the agents release.
fn release_mode(config: Option<&tortie_crds::ipam::IPAMConfig>) -> Release {
    match config.map_or(0, |c| c.spec.cooldown_seconds()) {
        0 => Release::Immediate,
        cooldown_seconds => Release::Cooldown {
            now: Time(Timestamp::now()),
            cooldown_seconds,
        },
    }
}

/// Whether `owner` still exists, read fresh from the API server.
async fn owner_exists(client: &Client, owner: &Owner) -> Result<bool> {
    Ok(match owner {
        Owner::Pod { namespace, name } => Api::<Pod>::namespaced(client.clone(), namespace)
            .get_metadata_opt(name)
            .await?
            .is_some(),
        Owner::Node(node) => node_exists(client, node).await?,
    })
}

async fn node_exists(client: &Client, node: &str) -> Result<bool> {
    Ok(Api::<Node>::all(client.clone())
        .get_metadata_opt(node)
        .await?
        .is_some())
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Deletes `object` if it is still at the version read; gone already counts as done,
/// a conflict as not done.
async fn delete_at_version<K>(api: &Api<K>, object: &K) -> Result<bool>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: object.meta().resource_version.clone(),
            uid: object.meta().uid.clone(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&object.name_any(), &params).await {
        Ok(_) => Ok(true),
        Err(error) if is_not_found(&error) => Ok(true),
        Err(error) if is_conflict(&error) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Releases `handle_id`'s addresses in the block if their owner is still gone, then takes
/// them off the handle.
async fn release_allocation(
    ctx: &GcContext,
    block_name: &str,
    cidr: IpNet,
    handle_id: &str,
    owner: &Owner,
    release: &Release,
) -> Result<bool> {
    let blocks = Api::<IPAMBlock>::all(ctx.client.clone());
    let mut freed = Vec::new();
    for _ in 0..MAX_CAS_ATTEMPTS {
        if owner_exists(&ctx.client, owner).await? {
            tracing::debug!(?owner, handle = %handle_id, "Owner exists again; keeping its addresses");
            return Ok(false);
        }
        let Some(mut block) = blocks.get_opt(block_name).await? else {
            return Ok(false);
        };
        if block.spec.deleted {
            return Ok(false);
        }
        let still_owned = block.allocations().any(|(_, a)| {
            a.handle() == Some(handle_id) && owner_of(&block, a).as_ref() == Some(owner)
        });
        if !still_owned {
            return Ok(false);
        }
        freed = block
            .release_handle(handle_id, release)
            .map_err(|error| Error::Malformed {
                kind: "IPAMBlock",
                name: block_name.to_owned(),
                message: error.to_string(),
            })?;
        block.note_write();
        match blocks
            .replace(block_name, &PostParams::default(), &block)
            .await
        {
            Ok(_) => break,
            Err(error) if is_conflict(&error) => {
                freed.clear();
                continue;
            }
            Err(error) => return Err(error.into()),
        }
    }
    if freed.is_empty() {
        return Ok(false);
    }

    let count = u64::try_from(freed.len()).unwrap_or(u64::MAX);
    ctx.metrics.gc_released_addresses(count);
    match owner {
        Owner::Pod { namespace, name } => tracing::info!(
            %namespace, pod = %name, handle = %handle_id, block = %cidr, addresses = ?freed,
            "Released addresses of a pod that is gone"
        ),
        Owner::Node(node) => tracing::info!(
            %node, handle = %handle_id, block = %cidr, addresses = ?freed,
            "Released addresses of a node that is gone"
        ),
    }
    take_off_handle(ctx, handle_id, cidr, count).await?;
    Ok(true)
}

/// The owner an attribute names, whether or not it exists.
fn owner_of(block: &IPAMBlock, attribute: &AllocationAttribute) -> Option<Owner> {
    let secondary = &attribute.secondary;
    match (
        secondary.get(ATTRIBUTE_NAMESPACE),
        secondary.get(ATTRIBUTE_POD),
    ) {
        (Some(namespace), Some(pod)) => Some(Owner::Pod {
            namespace: namespace.clone(),
            name: pod.clone(),
        }),
        _ => secondary
            .get(ATTRIBUTE_NODE)
            .map(String::as_str)
            .or_else(|| block.node())
            .map(|node| Owner::Node(node.to_owned())),
    }
}

/// Takes `count` addresses in `cidr` off the handle, deleting it when it holds nothing.
async fn take_off_handle(ctx: &GcContext, handle_id: &str, cidr: IpNet, count: u64) -> Result<()> {
    let handles = Api::<IPAMHandle>::all(ctx.client.clone());
    let name = handle_name(handle_id);
    for _ in 0..MAX_CAS_ATTEMPTS {
        let Some(mut handle) = handles.get_opt(&name).await? else {
            return Ok(());
        };
        handle.spec.remove(&cidr, count);
        if handle.spec.is_empty() {
            if delete_at_version(&handles, &handle).await? {
                ctx.metrics.gc_deleted_handle();
                tracing::info!(handle = %handle_id, "Deleted the handle of released addresses");
                return Ok(());
            }
            continue;
        }
        match handles
            .replace(&name, &PostParams::default(), &handle)
            .await
        {
            Ok(_) => return Ok(()),
            Err(error) if is_conflict(&error) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    tracing::warn!(handle = %name, "IPAMHandle kept changing; it is left to the next pass");
    Ok(())
}

/// Deletes a handle that is still at the suspected version and still holds nothing in
/// the blocks it names.
async fn delete_empty_handle(
    ctx: &GcContext,
    name: &str,
    resource_version: Option<&str>,
) -> Result<bool> {
    let handles = Api::<IPAMHandle>::all(ctx.client.clone());
    let Some(handle) = handles.get_opt(name).await? else {
        return Ok(false);
    };
    if handle.resource_version().as_deref() != resource_version {
        return Ok(false);
    }
    let blocks = Api::<IPAMBlock>::all(ctx.client.clone());
    for key in handle.spec.block.keys() {
        let Ok(cidr) = key.parse::<IpNet>() else {
            continue;
        };
        if let Some(block) = blocks.get_opt(&block_name(&cidr)).await?
            && block
                .allocations()
                .any(|(_, a)| a.handle().map(handle_name).as_deref() == Some(name))
        {
            return Ok(false);
        }
    }
    if !delete_at_version(&handles, &handle).await? {
        return Ok(false);
    }
    ctx.metrics.gc_deleted_handle();
    tracing::info!(handle = %handle.spec.handle_id, "Deleted an IPAM handle that holds no address");
    Ok(true)
}

/// Releases an empty block of a node that is gone, and the node's affinity for it.
async fn release_block(
    ctx: &GcContext,
    name: &str,
    cidr: IpNet,
    node: &str,
    cooldown_seconds: u32,
) -> Result<bool> {
    if node_exists(&ctx.client, node).await? {
        return Ok(false);
    }
    let blocks = Api::<IPAMBlock>::all(ctx.client.clone());
    let Some(mut block) = blocks.get_opt(name).await? else {
        return delete_affinity(ctx, node, cidr).await;
    };
    if block.node() != Some(node) {
        return Ok(false);
    }
    block
        .finish_cooldowns(&Time(Timestamp::now()), cooldown_seconds)
        .map_err(|error| Error::Malformed {
            kind: "IPAMBlock",
            name: name.to_owned(),
            message: error.to_string(),
        })?;
    if !block.is_empty() {
        tracing::debug!(block = %name, %node, "Block of a gone node is not empty yet");
        return Ok(false);
    }

    // Marking the block deleted first makes any writer holding an older copy conflict
    // instead of bringing it back.
    block.spec.deleted = true;
    block.note_write();
    let marked = match blocks.replace(name, &PostParams::default(), &block).await {
        Ok(marked) => marked,
        Err(error) if is_conflict(&error) => return Ok(false),
        Err(error) => return Err(error.into()),
    };
    if !delete_at_version(&blocks, &marked).await? {
        return Ok(false);
    }
    ctx.metrics.gc_released_block();
    tracing::info!(%node, block = %cidr, "Released the empty block of a node that is gone");
    delete_affinity(ctx, node, cidr).await?;
    Ok(true)
}

/// Deletes `node`'s affinity for `cidr`, if there is one.
async fn delete_affinity(ctx: &GcContext, node: &str, cidr: IpNet) -> Result<bool> {
    let affinities = Api::<BlockAffinity>::all(ctx.client.clone());
    let Some(affinity) = affinities.get_opt(&affinity_name(node, &cidr)).await? else {
        return Ok(true);
    };
    if affinity.spec.node != node {
        return Ok(false);
    }
    let deleted = delete_at_version(&affinities, &affinity).await?;
    if deleted {
        tracing::info!(%node, block = %cidr, "Deleted the block affinity of a node that is gone");
    }
    Ok(deleted)
}

/// Deletes an affinity of a gone node that has no block of that node behind it.
async fn delete_affinity_of_gone_node(
    ctx: &GcContext,
    name: &str,
    node: &str,
    cidr: IpNet,
) -> Result<bool> {
    if node_exists(&ctx.client, node).await? {
        return Ok(false);
    }
    let block = Api::<IPAMBlock>::all(ctx.client.clone())
        .get_opt(&block_name(&cidr))
        .await?;
    if block.is_some_and(|b| b.node() == Some(node)) {
        // The block goes first, and its affinity with it.
        return Ok(false);
    }
    let affinities = Api::<BlockAffinity>::all(ctx.client.clone());
    let Some(affinity) = affinities.get_opt(name).await? else {
        return Ok(false);
    };
    if affinity.spec.node != node {
        return Ok(false);
    }
    let deleted = delete_at_version(&affinities, &affinity).await?;
    if deleted {
        tracing::info!(%node, block = %cidr, "Deleted the block affinity of a node that is gone");
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tortie_crds::ipam::AffinityState;

    const GRACE: Duration = Duration::from_secs(60);

    fn pod_owner(handle: &str, node: &str, namespace: &str, pod: &str) -> AllocationAttribute {
        AllocationAttribute::for_pod(handle, node, namespace, pod, "t")
    }

    fn block(cidr: &str, node: &str, owners: &[AllocationAttribute]) -> Arc<IPAMBlock> {
        let mut block = IPAMBlock::new_empty(cidr.parse().expect("test CIDR"), Some(node), 1)
            .expect("test block is valid");
        for owner in owners {
            block.allocate(1, owner).expect("test block has room");
        }
        Arc::new(block)
    }

    fn handle(id: &str, cidr: &str, count: u64) -> IPAMHandle {
        let mut handle = IPAMHandle::new_empty(id);
        handle.metadata.resource_version = Some("7".into());
        handle.spec.add(&cidr.parse().expect("test CIDR"), count);
        handle
    }

    fn snapshot() -> GcSnapshot {
        let cidr = "10.244.1.0/26";
        GcSnapshot {
            blocks: vec![block(
                cidr,
                "node-2",
                &[
                    pod_owner("k8s-pod-network.gone", "node-2", "default", "gone"),
                    pod_owner("k8s-pod-network.live", "node-2", "default", "live"),
                ],
            )],
            affinities: vec![Arc::new(BlockAffinity::for_node(
                "node-2",
                cidr.parse().expect("test CIDR"),
                AffinityState::Confirmed,
            ))],
            handles: vec![
                handle("k8s-pod-network.gone", cidr, 1),
                handle("k8s-pod-network.live", cidr, 1),
                handle("k8s-pod-network.orphan", cidr, 1),
            ],
            nodes: BTreeSet::from(["node-1".to_owned(), "node-2".to_owned()]),
            pods: BTreeSet::from([("default".to_owned(), "live".to_owned())]),
            suspected_since: BTreeMap::new(),
            grace: GRACE,
        }
    }

    /// Observes the snapshot at `start` and asks for leaks at `at`.
    fn leaks_after(snapshot: &mut GcSnapshot, start: Instant, at: Instant) -> Vec<Leak> {
        let mut since = BTreeMap::new();
        observe(&mut since, &suspects(snapshot), start);
        snapshot.suspected_since = since;
        leaks(snapshot, at)
    }

    #[test]
    fn gone_pods_and_empty_handles_are_leaks_after_the_grace() {
        let start = Instant::now();
        let mut snap = snapshot();
        assert!(
            leaks_after(&mut snap, start, start + GRACE / 2).is_empty(),
            "nothing before the grace has passed"
        );
        let found = leaks_after(&mut snap, start, start + GRACE);
        assert_eq!(
            found,
            vec![
                Leak::Allocation {
                    block: "10-244-1-0-26".into(),
                    cidr: "10.244.1.0/26".parse().expect("test CIDR"),
                    handle_id: "k8s-pod-network.gone".into(),
                    owner: Owner::Pod {
                        namespace: "default".into(),
                        name: "gone".into()
                    },
                    addresses: vec!["10.244.1.0".parse().expect("test address")],
                },
                Leak::Handle {
                    name: "k8s-pod-network.orphan".into(),
                    resource_version: Some("7".into()),
                },
            ]
        );
    }

    #[test]
    fn a_suspicion_that_breaks_starts_over() {
        let start = Instant::now();
        let mut since = BTreeMap::new();
        let mut snap = snapshot();
        observe(&mut since, &suspects(&snap), start);

        // The pod shows up (the cache was behind): the suspicion ends.
        snap.pods.insert(("default".into(), "gone".into()));
        observe(&mut since, &suspects(&snap), start + GRACE / 2);
        snap.pods.remove(&("default".to_owned(), "gone".to_owned()));
        observe(&mut since, &suspects(&snap), start + GRACE);
        snap.suspected_since = since;
        let found = leaks(&snap, start + GRACE);
        assert!(
            found.iter().all(|l| !matches!(l, Leak::Allocation { .. })),
            "{found:?}"
        );
        assert!(
            found.iter().any(|l| matches!(l, Leak::Handle { .. })),
            "the handle's suspicion was unbroken"
        );

        // A handle that changes is suspected afresh.
        let mut changed = snapshot();
        changed.handles[2].metadata.resource_version = Some("8".into());
        let mut since = snap.suspected_since.clone();
        observe(&mut since, &suspects(&changed), start + GRACE);
        changed.suspected_since = since;
        assert!(
            leaks(&changed, start + GRACE)
                .iter()
                .all(|l| !matches!(l, Leak::Handle { .. }))
        );
    }

    #[test]
    fn blocks_of_gone_nodes_are_released_only_when_empty() {
        let start = Instant::now();
        let mut snap = snapshot();
        snap.nodes.remove("node-2");
        let found = leaks_after(&mut snap, start, start + GRACE);
        assert!(
            !found.iter().any(|l| matches!(l, Leak::Block { .. })),
            "the live pod keeps the block: {found:?}"
        );
        assert!(
            !found.iter().any(|l| matches!(l, Leak::Affinity { .. })),
            "the affinity goes with its block, not before: {found:?}"
        );
        assert!(
            !found.iter().any(|l| matches!(
                l,
                Leak::Allocation { owner: Owner::Pod { name, .. }, .. } if name == "live"
            )),
            "a live pod's address on a gone node is kept: {found:?}"
        );

        let mut empty = snapshot();
        empty.nodes.remove("node-2");
        empty.blocks = vec![block("10.244.1.0/26", "node-2", &[])];
        empty.handles.clear();
        let found = leaks_after(&mut empty, start, start + GRACE);
        assert_eq!(
            found,
            vec![Leak::Block {
                name: "10-244-1-0-26".into(),
                cidr: "10.244.1.0/26".parse().expect("test CIDR"),
                node: "node-2".into(),
            }]
        );

        // A node re-created under the same name keeps its empty block.
        empty.nodes.insert("node-2".into());
        assert!(leaks_after(&mut empty, start, start + GRACE).is_empty());
    }

    #[test]
    fn affinities_without_their_block_and_tunnel_addresses_of_gone_nodes() {
        let start = Instant::now();
        let tunnel = AllocationAttribute::new(
            "ipip-tunnel-addr-node-3",
            BTreeMap::from([
                (ATTRIBUTE_NODE.to_owned(), "node-3".to_owned()),
                ("type".to_owned(), "ipipTunnelAddress".to_owned()),
            ]),
        );
        let mut snap = GcSnapshot {
            blocks: vec![block("10.244.2.0/26", "node-1", &[tunnel])],
            affinities: vec![Arc::new(BlockAffinity::for_node(
                "node-3",
                "10.244.3.0/26".parse().expect("test CIDR"),
                AffinityState::Pending,
            ))],
            nodes: BTreeSet::from(["node-1".to_owned()]),
            grace: GRACE,
            ..GcSnapshot::default()
        };
        let found = leaks_after(&mut snap, start, start + GRACE);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(matches!(
            &found[0],
            Leak::Allocation { owner: Owner::Node(node), .. } if node == "node-3"
        ));
        assert!(matches!(
            &found[1],
            Leak::Affinity { node, .. } if node == "node-3"
        ));
    }

    #[test]
    fn an_inconsistent_block_is_skipped_and_protects_its_handles() {
        let start = Instant::now();
        let mut snap = snapshot();
        let mut broken = (*snap.blocks[0]).clone();
        broken.spec.allocations.pop();
        snap.blocks = vec![Arc::new(broken)];
        let found = leaks_after(&mut snap, start, start + GRACE);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn the_wait_shrinks_to_the_next_maturing_suspicion() {
        let settings = GcSettings {
            interval: Duration::from_secs(30),
            grace: Duration::from_secs(5),
        };
        let now = Instant::now();
        assert_eq!(
            next_wait(&BTreeMap::new(), &settings, now),
            settings.interval
        );
        let since = BTreeMap::from([("x".to_owned(), now)]);
        assert_eq!(next_wait(&since, &settings, now), Duration::from_secs(5));
        assert_eq!(
            next_wait(&since, &settings, now + Duration::from_secs(10)),
            MIN_WAIT
        );
    }
}
