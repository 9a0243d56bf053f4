//! IPAMBlock: a block of a pool and which of its addresses are held, by whom.
//!
//! The block logic here is pure: it takes a block and returns the changed block, and the
//! caller writes it back with a compare-and-swap on `resourceVersion`. It follows the
//! order in which Calico hands out and takes back addresses, so a block written by Calico
//! reads the same here and the other way round:
//!
//! - `unallocated` is a queue: addresses are taken from its front, released ones go to
//!   its back in ascending order, so a released address is reused as late as possible.
//! - `allocations[ordinal]` is an index into `attributes`; equal owners share one entry,
//!   and entries nothing points at any more are removed, the indices closed up.
//! - A release may first park the address in a cooldown: it points at an entry with only
//!   `releasedAt`, and becomes free once the cooldown has passed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::SignedDuration;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::names::{self, affinity_node, host_affinity};
use super::schema::{self, null_as_default};
use crate::validation::{FieldPath, Validate, ValidationErrors};

/// Attribute key for the node an address was allocated on.
pub const ATTRIBUTE_NODE: &str = "node";
/// Attribute key for the namespace of the pod an address belongs to.
pub const ATTRIBUTE_NAMESPACE: &str = "namespace";
/// Attribute key for the name of the pod an address belongs to.
pub const ATTRIBUTE_POD: &str = "pod";
/// Attribute key for when the address was allocated (Go's `time.Time.String()` form).
pub const ATTRIBUTE_TIMESTAMP: &str = "timestamp";
/// Attribute key for what a non-pod address is for (a tunnel address, for example).
pub const ATTRIBUTE_TYPE: &str = "type";

/// Handle of the addresses Calico reserves in blocks used by Windows nodes; a block
/// holding only those counts as empty.
pub const WINDOWS_RESERVED_HANDLE: &str = "windows-reserved-ipam-handle";

/// Most host bits a block may have. Calico's pools allow block sizes /20../32 (IPv4) and
/// /116../128 (IPv6), so a block never has more than 4096 addresses.
pub const MAX_BLOCK_HOST_BITS: u8 = 12;

/// A block of addresses of a pool, and which of them are allocated to whom. Calico and
/// Tortie both read and write these; every write is a compare-and-swap on the object's
/// `resourceVersion`, so two nodes never hand out one address.
// Several printer columns share a `type_`; clippy takes that for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "crd.projectcalico.org",
    version = "v1",
    derive = "PartialEq",
    kind = "IPAMBlock",
    plural = "ipamblocks",
    singular = "ipamblock",
    doc = "A block of a pool and which of its addresses are allocated, to whom (Calico's IPAM format).",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "Affinity", type_ = "string", json_path = ".spec.affinity"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockSpec {
    /// The block's CIDR, masked (for example `10.244.1.64/26`). The object's name is this
    /// CIDR with `.`, `:` and `/` replaced by `-`.
    #[schemars(schema_with = "schema::cidr_string")]
    pub cidr: IpNet,

    /// Who the block belongs to, as `host:<node name>`. Absent when no node owns it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,

    /// When the current owner claimed the block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_claim_time: Option<Time>,

    /// One entry per address of the block, in address order: `null` when the address is
    /// free, otherwise the index into `attributes` of the allocation's owner.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(schema_with = "schema::allocation_list")]
    pub allocations: Vec<Option<usize>>,

    /// The ordinals (offsets into the block) of the free addresses, in the order they will
    /// be handed out.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(schema_with = "schema::ordinal_list")]
    pub unallocated: Vec<usize>,

    /// The owners of the allocations: a handle and attributes such as namespace, pod and
    /// node. Allocations with the same owner share an entry.
    #[serde(default, deserialize_with = "null_as_default")]
    pub attributes: Vec<AllocationAttribute>,

    /// Counts the writes to the block. An allocation records the count at the time it was
    /// made, so a release based on stale information can be refused.
    #[serde(default)]
    #[schemars(schema_with = "schema::sequence_number")]
    pub sequence_number: u64,

    /// The value of `sequenceNumber` when each allocated ordinal was allocated, keyed by
    /// the ordinal written as a decimal string.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schemars(schema_with = "schema::sequence_number_map")]
    pub sequence_number_for_allocation: BTreeMap<String, u64>,

    /// Set just before the block is deleted, so that a writer holding an old copy gets a
    /// conflict instead of bringing the block back. Never set by hand.
    #[serde(default)]
    pub deleted: bool,

    /// Deprecated and unused; strict affinity is set in IPAMConfig. Kept so objects keep
    /// their shape.
    #[serde(default)]
    pub strict_affinity: bool,
}

/// The owner of one or more allocations in a block.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocationAttribute {
    /// The handle that holds the addresses, such as `k8s-pod-network.<container ID>`.
    /// Absent on entries that only mark addresses in cooldown.
    #[serde(rename = "handle_id", default, skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,

    /// Attributes of the current owner: `namespace`, `pod`, `node`, `timestamp`, or
    /// `type` for addresses that are not a pod's.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    #[schemars(schema_with = "schema::string_map")]
    pub secondary: BTreeMap<String, String>,

    /// Attributes of a previous or coming owner, kept while a virtual machine's address
    /// moves between pods during a live migration.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_as_default"
    )]
    #[schemars(schema_with = "schema::string_map")]
    pub alternate_owner_attrs: BTreeMap<String, String>,

    /// When the addresses pointing here were released. They stay out of use until the
    /// IPAMConfig `ipCooldownSeconds` have passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<Time>,
}

/// How a release frees addresses.
#[derive(Debug, Clone, PartialEq)]
pub enum Release {
    /// Free at once; addresses already cooling down are freed too. The same as Calico
    /// with `ipCooldownSeconds: 0`.
    Immediate,
    /// Keep released addresses out of use until `cooldown_seconds` after they were
    /// released; `now` is the release time.
    Cooldown {
        /// The time of this release.
        now: Time,
        /// The IPAMConfig `ipCooldownSeconds`.
        cooldown_seconds: u32,
    },
}

/// Why a block operation could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Fewer addresses are free than were asked for.
    #[error(
        "IPAM block {block}: block full: {requested} addresses requested but only {free} free; \
         allocate from another block"
    )]
    Full {
        /// The block's CIDR.
        block: IpNet,
        /// How many addresses were asked for.
        requested: usize,
        /// How many are free.
        free: usize,
    },

    /// The address lies outside the block.
    #[error("IPAM block {block}: address {address} is not in the block")]
    NotInBlock {
        /// The block's CIDR.
        block: IpNet,
        /// The address asked about.
        address: IpAddr,
    },

    /// The ordinal lies past the end of the block.
    #[error("IPAM block {block}: ordinal {ordinal} is outside the block of {size} addresses")]
    OrdinalOutOfRange {
        /// The block's CIDR.
        block: IpNet,
        /// The ordinal asked about.
        ordinal: usize,
        /// How many addresses the block has.
        size: usize,
    },

    /// The address is held already.
    #[error("IPAM block {block}: address {address} is already allocated to handle {holder:?}")]
    AlreadyAllocated {
        /// The block's CIDR.
        block: IpNet,
        /// The address asked for.
        address: IpAddr,
        /// The handle holding it, if it has one.
        holder: Option<String>,
    },

    /// The address was released recently and may not be handed out yet.
    #[error(
        "IPAM block {block}: address {address} was released and is still in its cooldown; \
         it can be allocated again once the cooldown has passed"
    )]
    InCooldown {
        /// The block's CIDR.
        block: IpNet,
        /// The address asked for.
        address: IpAddr,
    },

    /// The block CIDR has bits set after its prefix.
    #[error("IPAM block {cidr}: spec.cidr is not masked; the block starting there is {masked}")]
    NotMasked {
        /// The CIDR given.
        cidr: IpNet,
        /// The same prefix with the host bits cleared.
        masked: IpNet,
    },

    /// The block size does not fit the pool or is too large.
    #[error("IP pool {pool}: block size /{block_size} is not allowed: {reason}")]
    BadBlockSize {
        /// The pool's CIDR.
        pool: IpNet,
        /// The block prefix length asked for.
        block_size: u8,
        /// What is wrong with it.
        reason: String,
    },

    /// The block index is past the last block of the pool.
    #[error(
        "IP pool {pool}: block index {index} is out of range; the pool has {count} blocks of /{block_size}"
    )]
    IndexOutOfRange {
        /// The pool's CIDR.
        pool: IpNet,
        /// The block prefix length.
        block_size: u8,
        /// The index asked for.
        index: u128,
        /// How many blocks the pool has.
        count: u128,
    },

    /// The stored block breaks one of its own invariants; it is not changed.
    #[error("IPAM block {block}: inconsistent: {problem}; the block was not changed")]
    Inconsistent {
        /// The block's CIDR.
        block: IpNet,
        /// Which invariant is broken.
        problem: String,
    },
}

impl AllocationAttribute {
    /// The owner `handle_id` with the given attributes.
    pub fn new(handle_id: impl Into<String>, secondary: BTreeMap<String, String>) -> Self {
        Self {
            handle_id: Some(handle_id.into()),
            secondary,
            ..Self::default()
        }
    }

    /// The owner of a pod's address, with the attributes Calico's CNI plugin records.
    /// `timestamp` is the allocation time in Go's `time.Time.String()` form, such as
    /// `2024-05-01 12:00:00.123456789 +0000 UTC`.
    pub fn for_pod(
        handle_id: impl Into<String>,
        node: &str,
        namespace: &str,
        pod: &str,
        timestamp: &str,
    ) -> Self {
        Self::new(
            handle_id,
            BTreeMap::from([
                (ATTRIBUTE_NODE.to_owned(), node.to_owned()),
                (ATTRIBUTE_NAMESPACE.to_owned(), namespace.to_owned()),
                (ATTRIBUTE_POD.to_owned(), pod.to_owned()),
                (ATTRIBUTE_TIMESTAMP.to_owned(), timestamp.to_owned()),
            ]),
        )
    }

    /// The handle, cleaned as Calico does: older host-local migrations wrote handles
    /// with a trailing `\r...`, which is not part of the handle.
    pub fn handle(&self) -> Option<&str> {
        self.handle_id
            .as_deref()
            .map(|h| h.split('\r').next().unwrap_or(h))
    }

    /// Whether this entry only marks addresses in cooldown.
    pub fn is_cooldown(&self) -> bool {
        self.released_at.is_some()
    }
}

/// How many blocks of `/block_size` a pool has.
pub fn block_count(pool: &IpNet, block_size: u8) -> Result<u128, BlockError> {
    check_block_size(pool, block_size)?;
    let bits = u32::from(block_size - pool.prefix_len());
    1u128
        .checked_shl(bits)
        .ok_or_else(|| BlockError::BadBlockSize {
            pool: *pool,
            block_size,
            reason: "the pool has 2^128 blocks or more, which cannot be counted".to_owned(),
        })
}

/// The CIDR of block number `index` of a pool, counting from the pool's first address.
pub fn block_cidr(pool: &IpNet, block_size: u8, index: u128) -> Result<IpNet, BlockError> {
    let count = block_count(pool, block_size)?;
    if index >= count {
        return Err(BlockError::IndexOutOfRange {
            pool: *pool,
            block_size,
            index,
            count,
        });
    }
    let host_bits = u32::from(pool.max_prefix_len() - block_size);
    let start = addr_to_u128(pool.network()) + (index << host_bits);
    let net = IpNet::new(u128_to_addr(start, pool), block_size)
        .expect("block_size was checked to be at most the address length");
    Ok(net)
}

/// Every block of a pool, in address order.
pub fn pool_blocks(
    pool: &IpNet,
    block_size: u8,
) -> Result<impl Iterator<Item = IpNet> + use<>, BlockError> {
    check_block_size(pool, block_size)?;
    let blocks = pool
        .trunc()
        .subnets(block_size)
        .expect("block_size was checked to be between the pool's prefix and the address length");
    Ok(blocks)
}

/// The block of `/block_size` that `address` falls in.
pub fn block_cidr_for_address(address: IpAddr, block_size: u8) -> Option<IpNet> {
    IpNet::new(address, block_size).ok().map(|n| n.trunc())
}

impl IPAMBlock {
    /// An empty block for `cidr`, owned by `node` if given, named as Calico names it.
    /// `sequence_number` starts the write counter; Calico uses the creation time in
    /// nanoseconds since 1970, so a re-created block never repeats old numbers.
    pub fn new_empty(
        cidr: IpNet,
        node: Option<&str>,
        sequence_number: u64,
    ) -> Result<Self, BlockError> {
        let masked = cidr.trunc();
        if masked != cidr {
            return Err(BlockError::NotMasked { cidr, masked });
        }
        let host_bits = cidr.max_prefix_len() - cidr.prefix_len();
        if host_bits > MAX_BLOCK_HOST_BITS {
            return Err(BlockError::BadBlockSize {
                pool: cidr,
                block_size: cidr.prefix_len(),
                reason: format!("a block may have at most {MAX_BLOCK_HOST_BITS} host bits"),
            });
        }

        let size = 1usize << host_bits;
        let spec = IPAMBlockSpec {
            cidr,
            affinity: node.map(host_affinity),
            affinity_claim_time: None,
            allocations: vec![None; size],
            unallocated: (0..size).collect(),
            attributes: Vec::new(),
            sequence_number,
            sequence_number_for_allocation: BTreeMap::new(),
            deleted: false,
            strict_affinity: false,
        };
        Ok(Self {
            metadata: ObjectMeta {
                name: Some(names::block_name(&cidr)),
                ..ObjectMeta::default()
            },
            spec,
        })
    }

    /// An empty block number `index` of a pool with blocks of `/block_size`, owned by
    /// `node`.
    pub fn for_pool(
        pool: &IpNet,
        block_size: u8,
        index: u128,
        node: &str,
        sequence_number: u64,
    ) -> Result<Self, BlockError> {
        let cidr = block_cidr(pool, block_size, index)?;
        Self::new_empty(cidr, Some(node), sequence_number)
    }

    /// The block's CIDR.
    pub fn cidr(&self) -> IpNet {
        self.spec.cidr
    }

    /// How many addresses the block covers.
    pub fn size(&self) -> usize {
        let host_bits = self.spec.cidr.max_prefix_len() - self.spec.cidr.prefix_len();
        1usize
            .checked_shl(u32::from(host_bits))
            .unwrap_or(usize::MAX)
    }

    /// The node owning the block, from a `host:<node>` affinity.
    pub fn node(&self) -> Option<&str> {
        self.spec.affinity.as_deref().and_then(affinity_node)
    }

    /// The address at `ordinal` (0 is the block's first address).
    pub fn address_of(&self, ordinal: usize) -> Result<IpAddr, BlockError> {
        let size = self.size();
        if ordinal >= size {
            return Err(BlockError::OrdinalOutOfRange {
                block: self.spec.cidr,
                ordinal,
                size,
            });
        }
        let start = addr_to_u128(self.spec.cidr.network());
        Ok(u128_to_addr(start + ordinal as u128, &self.spec.cidr))
    }

    /// The ordinal of `address` in the block.
    pub fn ordinal_of(&self, address: IpAddr) -> Result<usize, BlockError> {
        if !self.spec.cidr.contains(&address) {
            return Err(BlockError::NotInBlock {
                block: self.spec.cidr,
                address,
            });
        }
        let offset = addr_to_u128(address) - addr_to_u128(self.spec.cidr.network());
        usize::try_from(offset).map_err(|_| BlockError::NotInBlock {
            block: self.spec.cidr,
            address,
        })
    }

    /// How many addresses can be handed out now.
    pub fn free_count(&self) -> usize {
        self.spec.unallocated.len()
    }

    /// How many addresses are held by an owner (not counting those in cooldown).
    pub fn used_count(&self) -> usize {
        self.held_ordinals().count()
    }

    /// How many released addresses are still in their cooldown.
    pub fn cooldown_count(&self) -> usize {
        self.spec
            .allocations
            .iter()
            .flatten()
            .filter(|&&i| self.spec.attributes.get(i).is_some_and(|a| a.is_cooldown()))
            .count()
    }

    /// Whether nothing in the block is in use: every address is free, in cooldown counts
    /// as in use, and Calico's Windows reservations do not count.
    pub fn is_empty(&self) -> bool {
        self.spec.allocations.iter().flatten().all(|&i| {
            self.spec.attributes.get(i).is_some_and(|a| {
                a.released_at.is_none()
                    && a.handle()
                        .is_some_and(|h| h.eq_ignore_ascii_case(WINDOWS_RESERVED_HANDLE))
            })
        })
    }

    /// The owner of `address`, or `None` when it is free or in cooldown.
    pub fn owner_of(&self, address: IpAddr) -> Result<Option<&AllocationAttribute>, BlockError> {
        let ordinal = self.ordinal_of(address)?;
        Ok(self.holder(ordinal))
    }

    /// Every held address with its owner, in address order.
    pub fn allocations(&self) -> impl Iterator<Item = (IpAddr, &AllocationAttribute)> + '_ {
        self.held_ordinals().filter_map(|(ordinal, owner)| {
            self.address_of(ordinal)
                .ok()
                .map(|address| (address, owner))
        })
    }

    /// The addresses held by `handle`, in address order.
    pub fn addresses_of_handle(&self, handle: &str) -> Vec<IpAddr> {
        self.allocations()
            .filter(|(_, owner)| owner.handle() == Some(handle))
            .map(|(address, _)| address)
            .collect()
    }

    /// Hands out `count` addresses to `owner`, all or none, in Calico's order.
    pub fn allocate(
        &mut self,
        count: usize,
        owner: &AllocationAttribute,
    ) -> Result<Vec<IpAddr>, BlockError> {
        self.check()?;
        let free = self.free_count();
        if free < count {
            return Err(BlockError::Full {
                block: self.spec.cidr,
                requested: count,
                free,
            });
        }
        self.allocate_up_to_skipping(count, owner, |_| false)
    }

    /// Hands out as many of `count` addresses as are free, in Calico's order; the caller
    /// takes the rest from another block.
    pub fn allocate_up_to(
        &mut self,
        count: usize,
        owner: &AllocationAttribute,
    ) -> Result<Vec<IpAddr>, BlockError> {
        self.allocate_up_to_skipping(count, owner, |_| false)
    }

    /// Like [`Self::allocate_up_to`], but never hands out an address for which `reserved`
    /// is true; those stay free and keep their place in the queue.
    pub fn allocate_up_to_skipping(
        &mut self,
        count: usize,
        owner: &AllocationAttribute,
        reserved: impl Fn(IpAddr) -> bool,
    ) -> Result<Vec<IpAddr>, BlockError> {
        self.check()?;

        let mut taken = Vec::new();
        let mut remaining = Vec::with_capacity(self.spec.unallocated.len());
        for &ordinal in &self.spec.unallocated {
            let address = self.address_of(ordinal)?;
            if taken.len() < count && !reserved(address) {
                taken.push((ordinal, address));
            } else {
                remaining.push(ordinal);
            }
        }
        if taken.is_empty() {
            return Ok(Vec::new());
        }

        let index = self.find_or_add_attribute(owner);
        for &(ordinal, _) in &taken {
            self.spec.allocations[ordinal] = Some(index);
            self.record_sequence_number(ordinal);
        }
        self.spec.unallocated = remaining;
        Ok(taken.into_iter().map(|(_, address)| address).collect())
    }

    /// Hands out one given address to `owner`.
    pub fn allocate_address(
        &mut self,
        address: IpAddr,
        owner: &AllocationAttribute,
    ) -> Result<(), BlockError> {
        self.check()?;
        let ordinal = self.ordinal_of(address)?;
        if let Some(index) = self.spec.allocations[ordinal] {
            let entry = &self.spec.attributes[index];
            if entry.is_cooldown() {
                return Err(BlockError::InCooldown {
                    block: self.spec.cidr,
                    address,
                });
            }
            return Err(BlockError::AlreadyAllocated {
                block: self.spec.cidr,
                address,
                holder: entry.handle().map(str::to_owned),
            });
        }

        let index = self.find_or_add_attribute(owner);
        self.spec.allocations[ordinal] = Some(index);
        self.spec.unallocated.retain(|&o| o != ordinal);
        self.record_sequence_number(ordinal);
        Ok(())
    }

    /// Releases `address`. Returns the handle that held it, or `None` when it was free
    /// or already released (releasing twice is not an error).
    pub fn release_address(
        &mut self,
        address: IpAddr,
        release: &Release,
    ) -> Result<Option<String>, BlockError> {
        self.check()?;
        let ordinal = self.ordinal_of(address)?;
        let Some(holder) = self.holder(ordinal) else {
            return Ok(None);
        };
        let handle = holder.handle().map(str::to_owned);
        self.release_ordinals(&[ordinal], release);
        Ok(handle)
    }

    /// Releases every address held by `handle`. Returns them in address order; none when
    /// the handle holds nothing here (releasing twice is not an error).
    pub fn release_handle(
        &mut self,
        handle: &str,
        release: &Release,
    ) -> Result<Vec<IpAddr>, BlockError> {
        self.check()?;
        let ordinals: Vec<usize> = self
            .held_ordinals()
            .filter(|(_, owner)| owner.handle() == Some(handle))
            .map(|(ordinal, _)| ordinal)
            .collect();
        let addresses = ordinals
            .iter()
            .map(|&o| self.address_of(o))
            .collect::<Result<Vec<_>, _>>()?;
        if !ordinals.is_empty() {
            self.release_ordinals(&ordinals, release);
        }
        Ok(addresses)
    }

    /// Frees the addresses whose cooldown has passed at `now` and removes owner entries
    /// nothing points at. Returns whether the block changed (and must be written).
    pub fn finish_cooldowns(
        &mut self,
        now: &Time,
        cooldown_seconds: u32,
    ) -> Result<bool, BlockError> {
        self.check()?;
        let release = Release::Cooldown {
            now: now.clone(),
            cooldown_seconds,
        };
        Ok(self.collect(&[], &release))
    }

    /// Counts a write of the block; call once before each write, after the changes.
    pub fn note_write(&mut self) {
        self.spec.sequence_number = self.spec.sequence_number.wrapping_add(1);
    }

    /// Checks the invariants every operation relies on: one allocation entry per address,
    /// each free address queued exactly once, and every owner index pointing at an entry.
    pub fn check(&self) -> Result<(), BlockError> {
        let size = self.size();
        let problem = |problem: String| BlockError::Inconsistent {
            block: self.spec.cidr,
            problem,
        };

        if self.spec.cidr.trunc() != self.spec.cidr {
            return Err(problem("spec.cidr is not masked".to_owned()));
        }
        if self.spec.allocations.len() != size {
            return Err(problem(format!(
                "spec.allocations has {} entries but the block has {size} addresses",
                self.spec.allocations.len()
            )));
        }
        let mut queued = vec![false; size];
        for (i, &ordinal) in self.spec.unallocated.iter().enumerate() {
            if ordinal >= size {
                return Err(problem(format!(
                    "spec.unallocated[{i}] is {ordinal}, past the block's {size} addresses"
                )));
            }
            if std::mem::replace(&mut queued[ordinal], true) {
                return Err(problem(format!(
                    "spec.unallocated lists ordinal {ordinal} twice"
                )));
            }
        }
        for (ordinal, entry) in self.spec.allocations.iter().enumerate() {
            match entry {
                None if !queued[ordinal] => {
                    return Err(problem(format!(
                        "ordinal {ordinal} is neither allocated nor in spec.unallocated"
                    )));
                }
                Some(_) if queued[ordinal] => {
                    return Err(problem(format!(
                        "ordinal {ordinal} is allocated and also in spec.unallocated"
                    )));
                }
                Some(index) if *index >= self.spec.attributes.len() => {
                    return Err(problem(format!(
                        "spec.allocations[{ordinal}] points at attribute {index}, but there are {}",
                        self.spec.attributes.len()
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The owner holding `ordinal`, if it is held and not in cooldown.
    fn holder(&self, ordinal: usize) -> Option<&AllocationAttribute> {
        let index = (*self.spec.allocations.get(ordinal)?)?;
        self.spec
            .attributes
            .get(index)
            .filter(|entry| !entry.is_cooldown())
    }

    fn held_ordinals(&self) -> impl Iterator<Item = (usize, &AllocationAttribute)> + '_ {
        (0..self.spec.allocations.len()).filter_map(|o| self.holder(o).map(|owner| (o, owner)))
    }

    /// The index of an entry equal to `owner`, adding one if there is none.
    fn find_or_add_attribute(&mut self, owner: &AllocationAttribute) -> usize {
        let wanted = AllocationAttribute {
            released_at: None,
            ..owner.clone()
        };
        if let Some(index) = self.spec.attributes.iter().position(|a| *a == wanted) {
            return index;
        }
        self.spec.attributes.push(wanted);
        self.spec.attributes.len() - 1
    }

    fn record_sequence_number(&mut self, ordinal: usize) {
        self.spec
            .sequence_number_for_allocation
            .insert(ordinal.to_string(), self.spec.sequence_number);
    }

    /// Releases held ordinals (checked by the caller).
    fn release_ordinals(&mut self, ordinals: &[usize], release: &Release) {
        match release {
            Release::Immediate => {
                self.collect(ordinals, release);
            }
            Release::Cooldown { now, .. } => {
                // The addresses point at a marker entry until the cooldown has passed; a
                // zero cooldown frees them in the collection right after.
                let marker = AllocationAttribute {
                    released_at: Some(now.clone()),
                    ..AllocationAttribute::default()
                };
                self.spec.attributes.push(marker);
                let index = self.spec.attributes.len() - 1;
                for &ordinal in ordinals {
                    self.spec.allocations[ordinal] = Some(index);
                    self.record_sequence_number(ordinal);
                }
                self.collect(&[], release);
            }
        }
    }

    /// Frees `released` and every ordinal whose cooldown has passed, appending them to
    /// the free queue in ascending order, then drops unreferenced owner entries and
    /// renumbers the rest. Returns whether anything changed.
    fn collect(&mut self, released: &[usize], release: &Release) -> bool {
        let cutoff = match release {
            Release::Immediate => None,
            Release::Cooldown {
                now,
                cooldown_seconds,
            } => Some(
                now.0
                    .checked_sub(SignedDuration::from_secs(i64::from(*cooldown_seconds)))
                    .unwrap_or(now.0),
            ),
        };
        let mut changed = false;

        let mut in_use = vec![false; self.spec.attributes.len()];
        for ordinal in 0..self.spec.allocations.len() {
            let Some(index) = self.spec.allocations[ordinal] else {
                continue;
            };
            let cooled = self.spec.attributes[index]
                .released_at
                .as_ref()
                .is_some_and(|at| cutoff.is_none_or(|cutoff| at.0 <= cutoff));
            if cooled || released.contains(&ordinal) {
                self.spec.allocations[ordinal] = None;
                self.spec.unallocated.push(ordinal);
                self.spec
                    .sequence_number_for_allocation
                    .remove(&ordinal.to_string());
                changed = true;
            } else {
                in_use[index] = true;
            }
        }

        if in_use.iter().all(|&used| used) {
            return changed;
        }
        let mut renumbered = vec![None; in_use.len()];
        let mut kept = Vec::new();
        for (old, attribute) in std::mem::take(&mut self.spec.attributes)
            .into_iter()
            .enumerate()
        {
            if in_use[old] {
                renumbered[old] = Some(kept.len());
                kept.push(attribute);
            }
        }
        self.spec.attributes = kept;
        for entry in self.spec.allocations.iter_mut().flatten() {
            *entry = renumbered[*entry].expect("every index still referenced was kept");
        }
        true
    }
}

impl Validate for IPAMBlockSpec {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        let cidr = path.child("cidr");
        if self.cidr.trunc() != self.cidr {
            errors.push(
                &cidr,
                format!(
                    "{} has bits set after the prefix; the block starting there is {}",
                    self.cidr,
                    self.cidr.trunc()
                ),
            );
        }
        let host_bits = self.cidr.max_prefix_len() - self.cidr.prefix_len();
        if host_bits > MAX_BLOCK_HOST_BITS {
            errors.push(
                &cidr,
                format!(
                    "a block may have at most {} addresses (/{} for IPv4, /{} for IPv6)",
                    1u32 << MAX_BLOCK_HOST_BITS,
                    32 - MAX_BLOCK_HOST_BITS,
                    128 - MAX_BLOCK_HOST_BITS
                ),
            );
            return;
        }
        if let Some(affinity) = &self.affinity
            && !affinity.starts_with(names::HOST_AFFINITY_PREFIX)
            && !affinity.starts_with("virtual:")
        {
            errors.push(
                &path.child("affinity"),
                format!("{affinity:?} must be host:<node name> or virtual:<name>"),
            );
        }

        let size = 1usize << host_bits;
        if self.allocations.len() != size {
            errors.push(
                &path.child("allocations"),
                format!(
                    "has {} entries but the block has {size} addresses; there must be one per address",
                    self.allocations.len()
                ),
            );
        }
        for (i, entry) in self.allocations.iter().enumerate() {
            if let Some(index) = entry
                && *index >= self.attributes.len()
            {
                errors.push(
                    &path.child("allocations").index(i),
                    format!(
                        "points at attribute {index}, but there are only {}",
                        self.attributes.len()
                    ),
                );
            }
        }
        let mut seen = vec![false; size];
        for (i, &ordinal) in self.unallocated.iter().enumerate() {
            let field = path.child("unallocated").index(i);
            if ordinal >= size {
                errors.push(
                    &field,
                    format!("{ordinal} is past the block's {size} addresses"),
                );
            } else if std::mem::replace(&mut seen[ordinal], true) {
                errors.push(&field, format!("{ordinal} is listed twice"));
            } else if self.allocations.get(ordinal).is_some_and(Option::is_some) {
                errors.push(
                    &field,
                    format!("{ordinal} is free here but allocated in allocations"),
                );
            }
        }
    }
}

impl Validate for IPAMBlock {
    fn validate_at(&self, path: &FieldPath, errors: &mut ValidationErrors) {
        self.spec.validate_at(&path.child("spec"), errors);
        let expected = names::block_name(&self.spec.cidr);
        if let Some(name) = &self.metadata.name
            && *name != expected
        {
            errors.push(
                &path.child("metadata").child("name"),
                format!("must be {expected:?}, the name Calico derives from spec.cidr"),
            );
        }
    }
}

fn check_block_size(pool: &IpNet, block_size: u8) -> Result<(), BlockError> {
    let bad = |reason: String| BlockError::BadBlockSize {
        pool: *pool,
        block_size,
        reason,
    };
    if block_size > pool.max_prefix_len() {
        return Err(bad(format!(
            "an address has only {} bits",
            pool.max_prefix_len()
        )));
    }
    if block_size < pool.prefix_len() {
        return Err(bad(format!(
            "blocks must not be larger than the pool (/{})",
            pool.prefix_len()
        )));
    }
    if pool.max_prefix_len() - block_size > MAX_BLOCK_HOST_BITS {
        return Err(bad(format!(
            "a block may have at most {} addresses",
            1u32 << MAX_BLOCK_HOST_BITS
        )));
    }
    Ok(())
}

fn addr_to_u128(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address numbered `value` in the family of `net`. Callers only pass values inside
/// `net`, so an IPv4 value always fits 32 bits.
fn u128_to_addr(value: u128, net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(_) => IpAddr::V4(
            u32::try_from(value)
                .expect("an offset inside an IPv4 network fits 32 bits")
                .into(),
        ),
        IpNet::V6(_) => IpAddr::V6(value.into()),
    }
}
