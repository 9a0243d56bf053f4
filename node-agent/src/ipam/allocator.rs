//! The node's address allocator, on top of Calico's IPAM objects in the API server.
//!
//! An address is taken, in this order, from
//!
//! 1. a block the node owns (a confirmed BlockAffinity) in one of the chosen pools;
//! 2. a block newly claimed for the node, when `autoAllocateBlocks` is on and the node is
//!    below `maxBlocksPerHost`: the affinity is created `pending`, the block is created
//!    naming the node (create fails with 409 when another node was first, and the next
//!    free block is tried), then the affinity is confirmed;
//! 3. another node's block with a free address, unless `strictAffinity` is on.
//!
//! Each address is first counted in the IPAMHandle and then written into the block, so
//! a crash between the two leaves a handle that counts too much (released later by
//! handle) and never an address that no handle knows about. Every block and handle
//! write is a compare-and-swap on the `resourceVersion` just read; on a conflict the
//! object is read again and the change retried, a bounded number of times.
//!
//! Within one agent the writes are serialised, so requests of one node never race each
//! other; conflicts come only from other nodes borrowing and from garbage collection.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::Mutex;
use tortie_crds::ipam::names::{block_name, handle_name};
use tortie_crds::ipam::{
    ATTRIBUTE_NODE, ATTRIBUTE_TIMESTAMP, ATTRIBUTE_TYPE, AffinityState, AllocationAttribute,
    BlockAffinity, BlockError, IPAMBlock, IPAMConfigSpec, IPAMHandle, Release, block_cidr,
    block_count,
};

use super::pools::{
    ChosenPools, Family, PodContext, PoolChoice, PoolError, PoolSource, choose_pools,
};
use super::protocol::{
    AllocateRequest, AllocateResponse, AllocatedAddress, CODE_EXHAUSTED, CODE_INVALID,
    CODE_IPAM_STATE, CODE_TRY_AGAIN, StatusResponse,
};
use super::store::{Store, StoreError};

/// [`ATTRIBUTE_TYPE`] of a VXLAN device's address, as Calico records it.
const TYPE_VXLAN_TUNNEL: &str = "vxlanTunnelAddress";

/// How often one object's compare-and-swap is retried before giving up for now.
const MAX_CAS_ATTEMPTS: u32 = 12;

/// How many blocks that another node claimed first are skipped before giving up for now.
const MAX_CLAIM_CONFLICTS: u128 = 16;

/// Why a request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The request names another node.
    #[error(
        "this agent serves node {served:?} but the request is for node {asked:?}; the plugin \
         must talk to the agent of its own node"
    )]
    WrongNode {
        /// The node in the request.
        asked: String,
        /// The agent's node.
        served: String,
    },
    /// The agent's own Node object is missing.
    #[error(
        "Node {node:?} does not exist, so pools cannot be matched by nodeSelector: start the \
         agent with --node-name (NODE_NAME) set to this node's name"
    )]
    UnknownNode {
        /// The agent's node.
        node: String,
    },
    /// No pool list could be made.
    #[error(transparent)]
    Pools(#[from] PoolError),
    /// Every chosen pool is full for this node.
    #[error(
        "no free {family} address for node {node:?} in IPPool {pools}: {reason}; free \
         addresses, add an IPPool, or name another pool"
    )]
    Exhausted {
        /// The family asked for.
        family: Family,
        /// The node.
        node: String,
        /// The pools tried, as text.
        pools: String,
        /// What was tried and why it did not help.
        reason: String,
    },
    /// The API server cannot be reached; the plugin should try again later.
    #[error(transparent)]
    Unavailable(StoreError),
    /// Other writers kept changing an object; the plugin should try again later.
    #[error("{what} kept changing while being written ({MAX_CAS_ATTEMPTS} attempts); try again")]
    Contention {
        /// The object.
        what: String,
    },
    /// The API server refused a call, or an object is in a state that cannot be used.
    #[error("{0}")]
    State(String),
}

impl IpamError {
    /// The CNI error code for the plugin to report.
    pub fn code(&self) -> u32 {
        match self {
            Self::WrongNode { .. } | Self::Pools(_) => CODE_INVALID,
            Self::Exhausted { .. } => CODE_EXHAUSTED,
            Self::Unavailable(_) | Self::Contention { .. } => CODE_TRY_AGAIN,
            Self::UnknownNode { .. } | Self::State(_) => CODE_IPAM_STATE,
        }
    }
}

impl From<StoreError> for IpamError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable { .. } => Self::Unavailable(error),
            StoreError::Conflict { what } | StoreError::AlreadyExists { what } => {
                Self::Contention { what }
            }
            other => Self::State(other.to_string()),
        }
    }
}

impl From<BlockError> for IpamError {
    fn from(error: BlockError) -> Self {
        Self::State(error.to_string())
    }
}

/// Allocates and releases the addresses of one node's pods.
pub struct Allocator {
    store: Store,
    node: String,
    /// Serialises this agent's block and handle writes (see the module docs).
    writes: Mutex<()>,
}

impl Allocator {
    /// An allocator for `node`'s pods.
    pub fn new(store: Store, node: impl Into<String>) -> Self {
        Self {
            store,
            node: node.into(),
            writes: Mutex::new(()),
        }
    }

    /// The node this allocator serves.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Allocates one address per family asked for. A handle that already holds an
    /// address of a family keeps it (a retried ADD gets the same answer). When a later
    /// family fails, the addresses of this request are given back.
    pub async fn allocate(&self, request: &AllocateRequest) -> Result<AllocateResponse, IpamError> {
        if let Some(asked) = &request.node
            && *asked != self.node
        {
            return Err(IpamError::WrongNode {
                asked: asked.clone(),
                served: self.node.clone(),
            });
        }

        let context = self.pod_context(request).await?;
        let pools = self.store.pools().await?;
        let config = self.store.ipam_config().await?.spec;
        let families: Vec<Family> = [
            (request.families.ipv4, Family::V4),
            (request.families.ipv6, Family::V6),
        ]
        .into_iter()
        .filter_map(|(wanted, family)| wanted.then_some(family))
        .collect();
        let mut node_labels = None;
        let mut choices = Vec::new();
        for &family in &families {
            if super::pools::requested_pools(family, &context)?.is_none() && node_labels.is_none() {
                let node =
                    self.store
                        .node(&self.node)
                        .await?
                        .ok_or_else(|| IpamError::UnknownNode {
                            node: self.node.clone(),
                        })?;
                node_labels = Some(node.labels);
            }
            let labels = node_labels.clone().unwrap_or_default();
            choices.push((
                family,
                choose_pools(family, &context, &pools, &self.node, &labels)?,
            ));
        }
        let owner = self.owner(request);

        let _writes = self.writes.lock().await;
        let held = self.held(&request.handle_id).await?;
        let mut addresses = Vec::new();
        let mut new: Vec<(IpNet, IpAddr)> = Vec::new();
        for (family, chosen) in &choices {
            if let Some((address, block)) = held
                .iter()
                .find(|(address, _)| Family::of(&IpNet::from(*address)) == *family)
            {
                tracing::debug!(handle = %request.handle_id, %address, "handle already holds an address");
                addresses.push(allocated(
                    *address,
                    *block,
                    &pools_of(chosen, &pools, block),
                ));
                continue;
            }
            match self
                .allocate_one(*family, chosen, &config, &request.handle_id, &owner)
                .await
            {
                Ok((address, block, pool)) => {
                    new.push((block, address));
                    addresses.push(allocated(address, block, &pool.name));
                }
                Err(error) => {
                    self.roll_back(&request.handle_id, &new).await;
                    return Err(error);
                }
            }
        }
        tracing::info!(handle = %request.handle_id, addresses = ?addresses.iter().map(|a| a.address).collect::<Vec<_>>(), "allocated");
        Ok(AllocateResponse { addresses })
    }

    /// An IPv4 address for `node`'s VXLAN device from `pools` (see
    /// [`super::pools::vxlan_tunnel_pools`]), held by `handle_id`. A handle that already
    /// holds an IPv4 address keeps it, so asking again returns the same address.
    pub async fn allocate_vxlan_tunnel(
        &self,
        handle_id: &str,
        pools: Vec<PoolChoice>,
    ) -> Result<IpAddr, IpamError> {
        let config = self.store.ipam_config().await?.spec;
        let _writes = self.writes.lock().await;
        if let Some((address, _)) = self
            .held(handle_id)
            .await?
            .into_iter()
            .find(|(address, _)| address.is_ipv4())
        {
            return Ok(address);
        }
        let chosen = ChosenPools {
            pools,
            source: PoolSource::VxlanTunnel {
                node: self.node.clone(),
            },
        };
        let owner = AllocationAttribute::new(
            handle_id.to_owned(),
            [
                (ATTRIBUTE_NODE.to_owned(), self.node.clone()),
                (ATTRIBUTE_TYPE.to_owned(), TYPE_VXLAN_TUNNEL.to_owned()),
                (
                    ATTRIBUTE_TIMESTAMP.to_owned(),
                    go_timestamp(Timestamp::now()),
                ),
            ]
            .into(),
        );
        let (address, block, _) = self
            .allocate_one(Family::V4, &chosen, &config, handle_id, &owner)
            .await?;
        tracing::info!(handle = %handle_id, %address, %block, "allocated the VXLAN tunnel address");
        Ok(address)
    }

    /// Releases every address `handle_id` holds and deletes the handle. A handle that
    /// does not exist releases nothing and succeeds.
    pub async fn release(&self, handle_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        let config = self.store.ipam_config().await?.spec;
        let release = release_mode(&config);
        let name = handle_name(handle_id);

        let _writes = self.writes.lock().await;
        let mut released = Vec::new();
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some(handle) = self.store.handle(&name).await? else {
                break;
            };
            for key in handle.spec.block.keys() {
                let Ok(cidr) = key.parse::<IpNet>() else {
                    tracing::warn!(handle = %name, block = %key, "handle names a block that is not a CIDR; skipping it");
                    continue;
                };
                let freed = self
                    .release_in_block(&cidr, &handle.spec.handle_id, &release)
                    .await?;
                released.extend(freed);
            }
            match self.store.delete_handle(&handle).await {
                Ok(()) => {
                    tracing::info!(handle = %handle_id, addresses = ?released, "released");
                    released.sort();
                    return Ok(released);
                }
                Err(StoreError::Conflict { .. }) => {
                    backoff(0).await;
                    continue;
                }
                Err(error) => return Err(error.into()),
            }
        }
        if released.is_empty() && self.store.handle(&name).await?.is_none() {
            tracing::debug!(handle = %handle_id, "nothing to release");
            return Ok(released);
        }
        Err(IpamError::Contention {
            what: format!("IPAMHandle {name}"),
        })
    }

    /// The addresses `handle_id` holds, read from the blocks its handle names.
    pub async fn check(&self, handle_id: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut addresses: Vec<IpAddr> = self
            .held(handle_id)
            .await?
            .into_iter()
            .map(|(address, _)| address)
            .collect();
        addresses.sort();
        Ok(addresses)
    }

    /// Whether addresses can be allocated now.
    pub async fn status(&self) -> StatusResponse {
        let (ready, message) = match self.store.pools().await {
            Ok(pools) => {
                let enabled = pools.iter().filter(|pool| !pool.spec.disabled).count();
                if enabled == 0 {
                    (
                        false,
                        "no enabled IPPool exists; create one (for example with the cluster's pod CIDR)"
                            .to_owned(),
                    )
                } else {
                    (true, format!("{enabled} enabled IPPool(s)"))
                }
            }
            Err(error) => (false, error.to_string()),
        };
        StatusResponse {
            ready,
            node: self.node.clone(),
            message,
        }
    }

    /// Reads the pod's and namespace's labels and annotations.
    async fn pod_context(&self, request: &AllocateRequest) -> Result<PodContext, IpamError> {
        let mut context = PodContext {
            config_pools_v4: request.ipv4_pools.clone(),
            config_pools_v6: request.ipv6_pools.clone(),
            ..PodContext::default()
        };
        let (Some(namespace), Some(pod)) = (&request.namespace, &request.pod) else {
            return Ok(context);
        };
        context.pod = Some((namespace.clone(), pod.clone()));
        match self.store.pod(namespace, pod).await? {
            Some(found) => context.pod_annotations = found.annotations,
            None => {
                tracing::debug!(namespace = %namespace, pod = %pod, "pod not found; its annotations are not read");
            }
        }
        if let Some(found) = self.store.namespace(namespace).await? {
            context.namespace_labels = Some(found.labels);
            context.namespace_annotations = found.annotations;
        }
        Ok(context)
    }

    /// The owner recorded in the block: the handle and, as Calico's CNI plugin writes
    /// them, the namespace, pod, node and time.
    fn owner(&self, request: &AllocateRequest) -> AllocationAttribute {
        let timestamp = go_timestamp(Timestamp::now());
        match (&request.namespace, &request.pod) {
            (Some(namespace), Some(pod)) => AllocationAttribute::for_pod(
                request.handle_id.clone(),
                &self.node,
                namespace,
                pod,
                &timestamp,
            ),
            _ => AllocationAttribute::new(
                request.handle_id.clone(),
                [
                    (ATTRIBUTE_NODE.to_owned(), self.node.clone()),
                    (ATTRIBUTE_TIMESTAMP.to_owned(), timestamp),
                ]
                .into(),
            ),
        }
    }

    /// One address of `family` from the chosen pools, with its block and pool.
    async fn allocate_one(
        &self,
        family: Family,
        chosen: &ChosenPools,
        config: &IPAMConfigSpec,
        handle_id: &str,
        owner: &AllocationAttribute,
    ) -> Result<(IpAddr, IpNet, PoolChoice), IpamError> {
        let pool_of = |cidr: &IpNet| {
            chosen
                .pools
                .iter()
                .find(|pool| pool.cidr.contains(cidr))
                .cloned()
        };

        // 1. Blocks the node owns.
        // Known limitation: affinities are found by Calico's hostname-hash label, which
        // older Calico releases did not write; such a node's older blocks are not reused
        // until they carry the label.
        let affinities = self.store.node_affinities(&self.node, family).await?;
        let mut owned: Vec<&BlockAffinity> = affinities
            .iter()
            .filter(|affinity| affinity.spec.state != AffinityState::PendingDeletion)
            .filter(|affinity| pool_of(&affinity.spec.cidr).is_some())
            .collect();
        owned.sort_by_key(|affinity| affinity.spec.cidr);
        let mut tried: HashSet<IpNet> = HashSet::new();
        for affinity in owned {
            let cidr = affinity.spec.cidr;
            tried.insert(cidr);
            if affinity.spec.state == AffinityState::Pending && !self.finish_claim(affinity).await?
            {
                continue;
            }
            if let Some(address) = self
                .take_from_block(&cidr, true, handle_id, owner, config)
                .await?
                && let Some(pool) = pool_of(&cidr)
            {
                return Ok((address, cidr, pool));
            }
        }

        // 2. A new block for the node. maxBlocksPerHost counts the node's blocks of this
        // family in every pool.
        let mut reasons = vec!["the node's own blocks are full".to_owned()];
        let limit = config.block_limit();
        let at_limit = limit
            .is_some_and(|limit| affinities.len() >= usize::try_from(limit).unwrap_or(usize::MAX));
        if !config.auto_allocate_blocks {
            reasons
                .push("IPAMConfig autoAllocateBlocks is false, so no new block is claimed".into());
        } else if at_limit {
            reasons.push(format!(
                "the node owns {} blocks, the IPAMConfig maxBlocksPerHost limit",
                affinities.len()
            ));
        } else {
            for pool in &chosen.pools {
                if let Some((address, cidr)) =
                    self.claim_and_take(pool, handle_id, owner, config).await?
                {
                    return Ok((address, cidr, pool.clone()));
                }
            }
            reasons.push("every block of the pool is claimed".into());
        }

        // 3. An address from another node's block.
        if config.strict_affinity {
            reasons.push(
                "IPAMConfig strictAffinity is true, so other nodes' blocks are not borrowed from"
                    .into(),
            );
        } else {
            let mut others: Vec<IPAMBlock> = self
                .store
                .blocks()
                .await?
                .into_iter()
                .filter(|block| !tried.contains(&block.cidr()))
                .filter(|block| pool_of(&block.cidr()).is_some())
                .filter(|block| !block.spec.deleted && block.free_count() > 0)
                .collect();
            others.sort_by_key(IPAMBlock::cidr);
            for block in others {
                let cidr = block.cidr();
                if let Some(address) = self
                    .take_from_block(&cidr, false, handle_id, owner, config)
                    .await?
                    && let Some(pool) = pool_of(&cidr)
                {
                    tracing::info!(block = %cidr, owner = ?block.node(), %address, "borrowed an address from another node's block");
                    return Ok((address, cidr, pool));
                }
            }
            reasons.push("no other block has a free address".into());
        }

        let pools: Vec<String> = chosen
            .pools
            .iter()
            .map(|pool| format!("{:?} ({})", pool.name, pool.cidr))
            .collect();
        Err(IpamError::Exhausted {
            family,
            node: self.node.clone(),
            pools: pools.join(", "),
            reason: reasons.join("; "),
        })
    }

    /// Claims the first free block of `pool` for the node and takes an address from it.
    /// `None` when the pool has no block left to claim.
    async fn claim_and_take(
        &self,
        pool: &PoolChoice,
        handle_id: &str,
        owner: &AllocationAttribute,
        config: &IPAMConfigSpec,
    ) -> Result<Option<(IpAddr, IpNet)>, IpamError> {
        // Known limitation: claiming (and borrowing) lists every block of the cluster,
        // a few megabytes on the largest clusters; both are rare next to allocations
        // from the node's own blocks, which read only those blocks.
        let existing: BTreeSet<IpNet> = self
            .store
            .blocks()
            .await?
            .iter()
            .map(IPAMBlock::cidr)
            .collect();
        let count = block_count(&pool.cidr, pool.block_size)?;
        // Nodes start their search at different places, so that they rarely race for
        // the same block. Among the first `existing + 1` candidates at least one is free.
        let start = u128::from(node_hash(&self.node)) % count;
        let candidates = count.min(existing.len() as u128 + 1 + MAX_CLAIM_CONFLICTS);
        let mut conflicts = 0;
        for step in 0..count {
            if step >= candidates + conflicts {
                break;
            }
            let cidr = block_cidr(&pool.cidr, pool.block_size, (start + step) % count)?;
            if existing.contains(&cidr) {
                continue;
            }
            let affinity = BlockAffinity::for_node(&self.node, cidr, AffinityState::Pending);
            let affinity = match self.store.create_affinity(&affinity).await {
                Ok(created) => created,
                Err(StoreError::AlreadyExists { .. }) => {
                    match self.store.affinity(&affinity_name(&affinity)).await? {
                        Some(found) if found.spec.state != AffinityState::PendingDeletion => found,
                        _ => continue,
                    }
                }
                Err(error) => return Err(error.into()),
            };
            if !self.finish_claim(&affinity).await? {
                conflicts += 1;
                if conflicts > MAX_CLAIM_CONFLICTS {
                    return Err(IpamError::Contention {
                        what: format!("the blocks of IPPool {}", pool.name),
                    });
                }
                continue;
            }
            tracing::info!(block = %cidr, pool = %pool.name, "claimed a block");
            if let Some(address) = self
                .take_from_block(&cidr, true, handle_id, owner, config)
                .await?
            {
                return Ok(Some((address, cidr)));
            }
        }
        Ok(None)
    }

    /// Completes a pending claim: creates the block naming the node (or finds it was
    /// created by an earlier attempt of this node) and confirms the affinity. Returns
    /// false, and removes the affinity, when another node owns the block.
    async fn finish_claim(&self, affinity: &BlockAffinity) -> Result<bool, IpamError> {
        let cidr = affinity.spec.cidr;
        let now = Timestamp::now();
        let mut block = IPAMBlock::new_empty(cidr, Some(&self.node), nanos_since_epoch())?;
        block.spec.affinity_claim_time = Some(Time(now));
        match self.store.create_block(&block).await {
            Ok(_) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                let found = self.store.block(&block_name(&cidr)).await?;
                if found.as_ref().and_then(IPAMBlock::node) != Some(self.node.as_str()) {
                    tracing::debug!(block = %cidr, "another node owns the block; dropping the claim");
                    if let Err(error) = self.store.delete_affinity(affinity).await {
                        tracing::warn!(block = %cidr, %error, "could not remove the pending affinity");
                    }
                    return Ok(false);
                }
            }
            Err(error) => return Err(error.into()),
        }

        let mut current = affinity.clone();
        for attempt in 0..MAX_CAS_ATTEMPTS {
            if current.spec.state == AffinityState::Confirmed {
                return Ok(true);
            }
            current.spec.state = AffinityState::Confirmed;
            match self.store.replace_affinity(&current).await {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { .. }) => {
                    backoff(attempt).await;
                    match self.store.affinity(&affinity_name(affinity)).await? {
                        Some(found) if found.spec.state != AffinityState::PendingDeletion => {
                            current = found;
                        }
                        _ => return Ok(false),
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(IpamError::Contention {
            what: format!("BlockAffinity {}", affinity_name(affinity)),
        })
    }

    /// Takes one address from the block `cidr` (only if the node owns it, when
    /// `own_only`). `None` when the block is gone, someone else's or full.
    async fn take_from_block(
        &self,
        cidr: &IpNet,
        own_only: bool,
        handle_id: &str,
        owner: &AllocationAttribute,
        config: &IPAMConfigSpec,
    ) -> Result<Option<IpAddr>, IpamError> {
        let name = block_name(cidr);
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let Some(mut block) = self.store.block(&name).await? else {
                return Ok(None);
            };
            if block.spec.deleted || (own_only && block.node() != Some(self.node.as_str())) {
                return Ok(None);
            }
            block.finish_cooldowns(&Time(Timestamp::now()), config.cooldown_seconds())?;
            if block.free_count() == 0 {
                return Ok(None);
            }

            self.change_handle(handle_id, cidr, 1).await?;
            let taken = block.allocate(1, owner)?;
            let address = *taken
                .first()
                .expect("allocate(1) on a block with a free address hands out one address");
            block.note_write();
            match self.store.replace_block(&block).await {
                Ok(_) => return Ok(Some(address)),
                Err(StoreError::Conflict { .. }) => {
                    // The block was not written: take the count back and read it again.
                    self.change_handle(handle_id, cidr, -1).await?;
                    backoff(attempt).await;
                }
                Err(error @ StoreError::Unavailable { .. }) => {
                    // The write may have happened; the handle keeps counting it so a
                    // release by handle still finds the block.
                    return Err(error.into());
                }
                Err(error) => {
                    self.change_handle(handle_id, cidr, -1).await?;
                    return Err(error.into());
                }
            }
        }
        Err(IpamError::Contention {
            what: format!("IPAMBlock {name}"),
        })
    }

    /// Releases `handle_id`'s addresses in the block `cidr`.
    async fn release_in_block(
        &self,
        cidr: &IpNet,
        handle_id: &str,
        release: &Release,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let name = block_name(cidr);
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let Some(mut block) = self.store.block(&name).await? else {
                return Ok(Vec::new());
            };
            let freed = block.release_handle(handle_id, release)?;
            if freed.is_empty() {
                return Ok(freed);
            }
            block.note_write();
            match self.store.replace_block(&block).await {
                Ok(_) => return Ok(freed),
                Err(StoreError::Conflict { .. }) => backoff(attempt).await,
                Err(error) => return Err(error.into()),
            }
        }
        Err(IpamError::Contention {
            what: format!("IPAMBlock {name}"),
        })
    }

    /// Adds `delta` to the handle's count for `block`, creating the handle when it is
    /// missing and deleting it when it drops to nothing.
    async fn change_handle(
        &self,
        handle_id: &str,
        block: &IpNet,
        delta: i64,
    ) -> Result<(), IpamError> {
        let name = handle_name(handle_id);
        let amount = delta.unsigned_abs();
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let written = match self.store.handle(&name).await? {
                None if delta > 0 => {
                    let mut handle = IPAMHandle::new_empty(handle_id);
                    handle.spec.add(block, amount);
                    self.store.create_handle(&handle).await.map(drop)
                }
                None => return Ok(()),
                Some(handle) if handle.spec.deleted => {
                    // Being deleted by another writer: wait for it to go.
                    Err(StoreError::Conflict { what: name.clone() })
                }
                Some(mut handle) => {
                    if delta > 0 {
                        handle.spec.add(block, amount);
                    } else {
                        handle.spec.remove(block, amount);
                    }
                    if handle.spec.is_empty() {
                        self.store.delete_handle(&handle).await
                    } else {
                        self.store.replace_handle(&handle).await.map(drop)
                    }
                }
            };
            match written {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => {
                    backoff(attempt).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Err(IpamError::Contention {
            what: format!("IPAMHandle {name}"),
        })
    }

    /// The addresses the handle holds with their blocks.
    async fn held(&self, handle_id: &str) -> Result<Vec<(IpAddr, IpNet)>, IpamError> {
        let Some(handle) = self.store.handle(&handle_name(handle_id)).await? else {
            return Ok(Vec::new());
        };
        let mut held = Vec::new();
        for key in handle.spec.block.keys() {
            let Ok(cidr) = key.parse::<IpNet>() else {
                continue;
            };
            if let Some(block) = self.store.block(&block_name(&cidr)).await? {
                for address in block.addresses_of_handle(&handle.spec.handle_id) {
                    held.push((address, cidr));
                }
            }
        }
        Ok(held)
    }

    /// Gives back addresses taken by a request that failed later.
    async fn roll_back(&self, handle_id: &str, taken: &[(IpNet, IpAddr)]) {
        for (block, address) in taken {
            let result = self.release_address(block, *address).await;
            let result = match result {
                Ok(()) => self.change_handle(handle_id, block, -1).await,
                Err(error) => Err(error),
            };
            match result {
                Ok(()) => tracing::debug!(handle = %handle_id, %address, "rolled back"),
                Err(error) => {
                    tracing::warn!(handle = %handle_id, %address, %error, "could not roll back an allocation; a release by handle will free it")
                }
            }
        }
    }

    async fn release_address(&self, cidr: &IpNet, address: IpAddr) -> Result<(), IpamError> {
        let name = block_name(cidr);
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let Some(mut block) = self.store.block(&name).await? else {
                return Ok(());
            };
            if block
                .release_address(address, &Release::Immediate)?
                .is_none()
            {
                return Ok(());
            }
            block.note_write();
            match self.store.replace_block(&block).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => backoff(attempt).await,
                Err(error) => return Err(error.into()),
            }
        }
        Err(IpamError::Contention {
            what: format!("IPAMBlock {name}"),
        })
    }
}

/// The pool of a block the handle already holds, from the chosen pools or any pool.
fn pools_of(chosen: &ChosenPools, pools: &[tortie_crds::ippool::IPPool], block: &IpNet) -> String {
    if let Some(pool) = chosen.pools.iter().find(|pool| pool.cidr.contains(block)) {
        return pool.name.clone();
    }
    pools
        .iter()
        .find(|pool| {
            pool.spec
                .cidr
                .parse::<IpNet>()
                .is_ok_and(|cidr| cidr.contains(block))
        })
        .and_then(|pool| pool.metadata.name.clone())
        .unwrap_or_default()
}

fn allocated(address: IpAddr, block: IpNet, pool: &str) -> AllocatedAddress {
    AllocatedAddress {
        address: IpNet::from(address),
        block,
        pool: pool.to_owned(),
    }
}

fn affinity_name(affinity: &BlockAffinity) -> String {
    affinity.metadata.name.clone().unwrap_or_default()
}

/// Immediate, or through the IPAMConfig's cooldown.
fn release_mode(config: &IPAMConfigSpec) -> Release {
    match config.cooldown_seconds() {
        0 => Release::Immediate,
        cooldown_seconds => Release::Cooldown {
            now: Time(Timestamp::now()),
            cooldown_seconds,
        },
    }
}

/// Go's `time.Time.String()` form in UTC, which Calico writes as the `timestamp`
/// attribute: `2024-05-01 12:00:00.123456789 +0000 UTC`.
pub fn go_timestamp(at: Timestamp) -> String {
    format!("{} +0000 UTC", at.strftime("%Y-%m-%d %H:%M:%S%.f"))
}

/// A new block's first sequence number: the time in nanoseconds, as Calico does, so a
/// re-created block never repeats an old block's numbers.
fn nanos_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// FNV-1a of the node name: a stable, spread-out starting block per node.
fn node_hash(node: &str) -> u64 {
    node.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A short, growing pause before retrying a compare-and-swap, with jitter so that two
/// writers do not retry in lockstep.
async fn backoff(attempt: u32) {
    let jitter = u64::from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            % 7,
    );
    let millis = 5 * u64::from(attempt.min(8) + 1) + jitter;
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_read_like_go() {
        let at: Timestamp = "2024-05-01T12:00:00.123456789Z".parse().expect("literal");
        assert_eq!(go_timestamp(at), "2024-05-01 12:00:00.123456789 +0000 UTC");
        let whole: Timestamp = "2024-05-01T12:00:00Z".parse().expect("literal");
        assert_eq!(go_timestamp(whole), "2024-05-01 12:00:00 +0000 UTC");
    }

    #[test]
    fn nodes_start_their_search_in_different_places() {
        assert_ne!(node_hash("node-1") % 1024, node_hash("node-2") % 1024);
        assert_eq!(node_hash("node-1"), node_hash("node-1"));
    }

    #[test]
    fn error_codes_tell_the_runtime_what_to_do() {
        let exhausted = IpamError::Exhausted {
            family: Family::V4,
            node: "n".into(),
            pools: "\"tiny\" (10.250.0.0/30)".into(),
            reason: "full".into(),
        };
        assert_eq!(exhausted.code(), CODE_EXHAUSTED);
        assert!(exhausted.to_string().contains("\"tiny\""));
        let contention = IpamError::Contention { what: "x".into() };
        assert_eq!(contention.code(), 11);
        let pools = IpamError::Pools(PoolError::Unknown {
            entry: "p".into(),
            named_by: super::super::pools::PoolSource::CniConfig,
        });
        assert_eq!(pools.code(), 7);
    }
}
