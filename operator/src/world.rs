//! The operator's view of the cluster: one watch per kind feeding an in-memory cache, and
//! consistent snapshots of all caches for the pure computations.
//!
//! Every replica watches, leader or not, so a standby is warm when it takes over and
//! `/readyz` can say when the caches are. A malformed object (one that does not
//! deserialize as its kind) is logged with its name and skipped; the cache keeps the last
//! well-formed version, if any, so one bad write never empties a pool's routes or stalls
//! a watch.

// Known limitation: the pool and node-config controllers keep kube's own caches of IPPools,
// Nodes and NodeNetworkConfigs beside these, so those kinds are watched and held twice.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, StreamExt};
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tortie_crds::cluster_info::ClusterInformation;
use tortie_crds::felix::FelixConfiguration;
use tortie_crds::ipam::{BlockAffinity, IPAMBlock, IPAMConfig};
use tortie_crds::ippool::IPPool;
use tortie_crds::node_network_config::{NodeNetworkConfig, NodeNetworkConfigSpec};

use crate::metrics::Metrics;
use crate::node_config::NodeFacts;

/// How many change notices a slow subscriber may fall behind before it is told to
/// re-read everything.
const CHANGE_BUFFER: usize = 1024;

/// The kinds the operator watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `crd.projectcalico.org/v1` IPPool.
    IPPool,
    /// `crd.projectcalico.org/v1` IPAMBlock.
    IPAMBlock,
    /// `crd.projectcalico.org/v1` BlockAffinity.
    BlockAffinity,
    /// Kubernetes Node.
    Node,
    /// `crd.projectcalico.org/v1` FelixConfiguration.
    FelixConfiguration,
    /// `crd.projectcalico.org/v1` IPAMConfig.
    IPAMConfig,
    /// `crd.projectcalico.org/v1` ClusterInformation.
    ClusterInformation,
    /// `tortie.dev/v1alpha1` NodeNetworkConfig.
    NodeNetworkConfig,
}

impl Kind {
    /// The kind's name, as in `kind:` of a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::IPPool => "IPPool",
            Kind::IPAMBlock => "IPAMBlock",
            Kind::BlockAffinity => "BlockAffinity",
            Kind::Node => "Node",
            Kind::FelixConfiguration => "FelixConfiguration",
            Kind::IPAMConfig => "IPAMConfig",
            Kind::ClusterInformation => "ClusterInformation",
            Kind::NodeNetworkConfig => "NodeNetworkConfig",
        }
    }
}

/// The cached objects of one kind, by name (every watched kind is cluster-scoped).
pub struct Cache<T> {
    kind: Kind,
    objects: RwLock<BTreeMap<String, Arc<T>>>,
    synced: AtomicBool,
}

/// What the operator keeps of a NodeNetworkConfig: the spec and the owning Node's UID, so
/// it can tell whether a write would change anything.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfigFacts {
    /// The stored spec.
    pub spec: NodeNetworkConfigSpec,
    /// UID of the Node named as controller owner, if any.
    pub owner_uid: Option<String>,
}

/// Every cache, the change notices and the snapshot built from them.
pub struct World {
    /// IPPools.
    pub pools: Arc<Cache<IPPool>>,
    /// IPAMBlocks.
    pub blocks: Arc<Cache<IPAMBlock>>,
    /// BlockAffinities.
    pub affinities: Arc<Cache<BlockAffinity>>,
    /// What the operator needs of each Node.
    pub nodes: Arc<Cache<NodeFacts>>,
    /// FelixConfigurations.
    pub felix: Arc<Cache<FelixConfiguration>>,
    /// IPAMConfigs.
    pub ipam_configs: Arc<Cache<IPAMConfig>>,
    /// ClusterInformations.
    pub cluster_infos: Arc<Cache<ClusterInformation>>,
    /// What the operator needs of each NodeNetworkConfig.
    pub node_configs: Arc<Cache<NodeConfigFacts>>,
    changes: broadcast::Sender<Kind>,
    synced_tx: watch::Sender<()>,
    version: AtomicU64,
    snapshot: Mutex<Option<(u64, Arc<Snapshot>)>>,
}

/// A consistent picture of the objects the pure computations read.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Every well-formed pool, oldest first (creation time, then name), so the pool that
    /// keeps an overlapping range comes first.
    pub pools: Vec<Arc<IPPool>>,
    /// Every well-formed block.
    pub blocks: Vec<Arc<IPAMBlock>>,
    /// Every well-formed block affinity.
    pub affinities: Vec<Arc<BlockAffinity>>,
    /// Every node, by name.
    pub nodes: BTreeMap<String, Arc<NodeFacts>>,
    /// FelixConfigurations by name (`default`, `node.<name>`).
    pub felix: BTreeMap<String, Arc<FelixConfiguration>>,
    /// The IPAMConfig named `default`, if any.
    pub ipam_config: Option<Arc<IPAMConfig>>,
}

impl<T> Cache<T> {
    fn new(kind: Kind) -> Arc<Self> {
        Arc::new(Self {
            kind,
            objects: RwLock::new(BTreeMap::new()),
            synced: AtomicBool::new(false),
        })
    }

    /// The kind cached.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The object named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<T>> {
        self.read().get(name).cloned()
    }

    /// Every object, by name.
    pub fn list(&self) -> Vec<Arc<T>> {
        self.read().values().cloned().collect()
    }

    /// Every object with its name.
    pub fn entries(&self) -> BTreeMap<String, Arc<T>> {
        self.read().clone()
    }

    /// How many objects are cached.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Whether the first complete listing has arrived.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<T>>> {
        // A panic while holding the lock leaves a map that is still whole (every write
        // is a single insert, remove or swap), so a poisoned lock is safe to use.
        self.objects
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<T>>> {
        self.objects
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl World {
    /// Empty caches, not yet watching; [`World::start`] starts the watches.
    pub fn new() -> Arc<Self> {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let (synced_tx, _) = watch::channel(());
        Arc::new(Self {
            pools: Cache::new(Kind::IPPool),
            blocks: Cache::new(Kind::IPAMBlock),
            affinities: Cache::new(Kind::BlockAffinity),
            nodes: Cache::new(Kind::Node),
            felix: Cache::new(Kind::FelixConfiguration),
            ipam_configs: Cache::new(Kind::IPAMConfig),
            cluster_infos: Cache::new(Kind::ClusterInformation),
            node_configs: Cache::new(Kind::NodeNetworkConfig),
            changes,
            synced_tx,
            version: AtomicU64::new(0),
            snapshot: Mutex::new(None),
        })
    }

    /// Starts one watch per kind; they run until the returned tasks are aborted.
    pub fn start(self: &Arc<Self>, client: &Client, metrics: &Arc<Metrics>) -> Vec<JoinHandle<()>> {
        vec![
            self.spawn_watch(
                Api::all(client.clone()),
                &self.pools,
                same::<IPPool>,
                metrics,
            ),
            self.spawn_watch(
                Api::all(client.clone()),
                &self.blocks,
                same::<IPAMBlock>,
                metrics,
            ),
            self.spawn_watch(
                Api::all(client.clone()),
                &self.affinities,
                same::<BlockAffinity>,
                metrics,
            ),
            self.spawn_watch(
                Api::all(client.clone()),
                &self.nodes,
                NodeFacts::from_node,
                metrics,
            ),
            self.spawn_watch(
                Api::all(client.clone()),
                &self.felix,
                same::<FelixConfiguration>,
                metrics,
            ),
            self.spawn_watch(
                Api::all(client.clone()),
                &self.ipam_configs,
                same::<IPAMConfig>,
                metrics,
            ),
            self.spawn_watch(
                Api::all(client.clone()),
                &self.cluster_infos,
                same::<ClusterInformation>,
                metrics,
            ),
            self.spawn_watch(
                Api::all(client.clone()),
                &self.node_configs,
                node_config_facts,
                metrics,
            ),
        ]
    }

    /// Whether every cache has had its first complete listing.
    pub fn is_synced(&self) -> bool {
        self.pools.is_synced()
            && self.blocks.is_synced()
            && self.affinities.is_synced()
            && self.nodes.is_synced()
            && self.felix.is_synced()
            && self.ipam_configs.is_synced()
            && self.cluster_infos.is_synced()
            && self.node_configs.is_synced()
    }

    /// Waits until every cache is synced.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced_tx.subscribe();
        while !self.is_synced() {
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`; it cannot be gone while we hold it.
                return;
            }
        }
    }

    /// A stream that yields whenever one of `kinds` changes (several changes may be
    /// folded into one item). The consumer reads the caches itself.
    pub fn changes(&self, kinds: &'static [Kind]) -> impl Stream<Item = ()> + Send + 'static {
        let rx = self.changes.subscribe();
        futures::stream::unfold(rx, move |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(kind) if kinds.contains(&kind) => return Some(((), rx)),
                    Ok(_) => continue,
                    // Fell behind: something relevant may have changed.
                    Err(broadcast::error::RecvError::Lagged(_)) => return Some(((), rx)),
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// The current snapshot; rebuilt only when something changed since the last one.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let version = self.version.load(Ordering::Acquire);
        let mut cached = self
            .snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, snapshot)) = cached.as_ref()
            && *at == version
        {
            return snapshot.clone();
        }
        let mut pools = self.pools.list();
        pools.sort_by(|a, b| pool_age_order(a, b));
        let snapshot = Arc::new(Snapshot {
            pools,
            blocks: self.blocks.list(),
            affinities: self.affinities.list(),
            nodes: self.nodes.entries(),
            felix: self.felix.entries(),
            ipam_config: self.ipam_configs.get(tortie_crds::ipam::IPAM_CONFIG_NAME),
        });
        *cached = Some((version, snapshot.clone()));
        snapshot
    }

    fn notify(&self, kind: Kind) {
        self.version.fetch_add(1, Ordering::AcqRel);
        // No subscriber (a standby runs no controllers) is not an error.
        let _ = self.changes.send(kind);
    }

    fn spawn_watch<K, T>(
        self: &Arc<Self>,
        api: Api<DeserializeGuard<K>>,
        cache: &Arc<Cache<T>>,
        project: fn(&K) -> T,
        metrics: &Arc<Metrics>,
    ) -> JoinHandle<()>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        T: PartialEq + Send + Sync + 'static,
    {
        let world = self.clone();
        let cache = cache.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let kind = cache.kind.as_str();
            let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
            let mut stream = std::pin::pin!(stream);
            let mut listing: Option<BTreeMap<String, Arc<T>>> = None;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(Event::Init) => listing = Some(BTreeMap::new()),
                    Ok(Event::InitApply(object)) => {
                        let name = object.name_any();
                        let Some(object) = well_formed(kind, object) else {
                            // Keep the last good version through a relist.
                            if let (Some(listing), Some(old)) = (listing.as_mut(), cache.get(&name))
                            {
                                listing.insert(name, old);
                            }
                            continue;
                        };
                        if let Some(listing) = listing.as_mut() {
                            listing.insert(name, Arc::new(project(&object)));
                        }
                    }
                    Ok(Event::InitDone) => {
                        if let Some(listing) = listing.take() {
                            *cache.write() = listing;
                        }
                        cache.synced.store(true, Ordering::Release);
                        world.synced_tx.send_modify(|_| {});
                        metrics.set_objects(kind, cache.len());
                        tracing::debug!(kind, objects = cache.len(), "Cache synced");
                        world.notify(cache.kind);
                    }
                    Ok(Event::Apply(object)) => {
                        let name = object.name_any();
                        let Some(object) = well_formed(kind, object) else {
                            continue;
                        };
                        let projected = project(&object);
                        let changed = {
                            let mut objects = cache.write();
                            let changed = objects.get(&name).is_none_or(|old| **old != projected);
                            if changed {
                                objects.insert(name, Arc::new(projected));
                            }
                            changed
                        };
                        if changed {
                            metrics.set_objects(kind, cache.len());
                            world.notify(cache.kind);
                        }
                    }
                    Ok(Event::Delete(object)) => {
                        let removed = cache.write().remove(&object.name_any()).is_some();
                        if removed {
                            metrics.set_objects(kind, cache.len());
                            world.notify(cache.kind);
                        }
                    }
                    Err(error) => {
                        // The stream backs off and re-watches by itself.
                        tracing::warn!(kind, %error, "Watch failed; retrying");
                    }
                }
            }
        })
    }
}

/// The object inside `guard`, or `None` (with a warning naming it) when it is malformed.
fn well_formed<K>(kind: &str, guard: DeserializeGuard<K>) -> Option<K> {
    match guard.0 {
        Ok(object) => Some(object),
        Err(invalid) => {
            let name = invalid.metadata.name.unwrap_or_default();
            tracing::warn!(
                kind,
                %name,
                error = %invalid.error,
                "Skipping malformed object; fix it or delete it"
            );
            None
        }
    }
}

fn same<K: Clone>(object: &K) -> K {
    object.clone()
}

fn node_config_facts(config: &NodeNetworkConfig) -> NodeConfigFacts {
    let owner_uid = config
        .owner_references()
        .iter()
        .find(|owner| owner.kind == "Node" && owner.controller == Some(true))
        .map(|owner| owner.uid.clone());
    NodeConfigFacts {
        spec: config.spec.clone(),
        owner_uid,
    }
}

/// Oldest first: by creation time, then by name. An unset creation time (a pool built in
/// a test) sorts first.
pub fn pool_age_order(a: &IPPool, b: &IPPool) -> std::cmp::Ordering {
    let created = |p: &IPPool| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    created(a)
        .cmp(&created(b))
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

impl Snapshot {
    /// The FelixConfiguration in force for `node`: `node.<node>` over `default`, field by
    /// field.
    pub fn felix_for(&self, node: &str) -> tortie_crds::felix::FelixConfigurationSpec {
        let default = self.felix.get("default").map(|f| &f.spec);
        let own = self.felix.get(&format!("node.{node}")).map(|f| &f.spec);
        merge_felix(default, own)
    }
}

/// `own` over `base`: every field `own` sets wins.
pub fn merge_felix(
    base: Option<&tortie_crds::felix::FelixConfigurationSpec>,
    own: Option<&tortie_crds::felix::FelixConfigurationSpec>,
) -> tortie_crds::felix::FelixConfigurationSpec {
    let to_map = |spec: Option<&tortie_crds::felix::FelixConfigurationSpec>| {
        spec.and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| match v {
                serde_json::Value::Object(map) => Some(map),
                _ => None,
            })
            .unwrap_or_default()
    };
    let mut merged = to_map(base);
    merged.extend(to_map(own));
    serde_json::from_value(serde_json::Value::Object(merged)).unwrap_or_else(|error| {
        // Both halves came from well-formed objects, so their union is one too; should
        // that ever fail, the node's own settings are the better half to keep.
        tracing::warn!(%error, "Could not merge FelixConfigurations; using the node's own");
        own.or(base).cloned().unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_objects_are_skipped_and_good_ones_kept() {
        let bad: DeserializeGuard<IPPool> = serde_json::from_value(serde_json::json!({
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "IPPool",
            "metadata": {"name": "broken"},
            "spec": {"cidr": 10, "ipipMode": "Sometimes"}
        }))
        .expect("the guard takes any object with metadata");
        assert_eq!(bad.name_any(), "broken");
        assert!(well_formed("IPPool", bad).is_none());

        let good: DeserializeGuard<IPPool> = serde_json::from_value(serde_json::json!({
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "IPPool",
            "metadata": {"name": "fine"},
            "spec": {"cidr": "10.0.0.0/16"}
        }))
        .expect("a pool parses");
        assert_eq!(
            well_formed("IPPool", good).map(|p| p.spec.cidr),
            Some("10.0.0.0/16".to_owned())
        );
    }

    #[test]
    fn felix_node_fields_win_field_by_field() {
        let base = tortie_crds::felix::FelixConfigurationSpec {
            ipip_mtu: Some(1400),
            log_severity_screen: Some("Info".into()),
            ..Default::default()
        };
        let own = tortie_crds::felix::FelixConfigurationSpec {
            ipip_mtu: Some(1300),
            ..Default::default()
        };
        let merged = merge_felix(Some(&base), Some(&own));
        assert_eq!(merged.ipip_mtu, Some(1300));
        assert_eq!(merged.log_severity_screen.as_deref(), Some("Info"));
        assert_eq!(merge_felix(None, None), Default::default());
    }
}
