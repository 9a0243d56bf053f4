//! The IPAM objects in the API server, read and written as the allocator needs them.
//!
//! Nothing is cached: every block is read from the API server right before it is
//! changed and written back with the `resourceVersion` it was read at, so a restarted
//! agent, another node or the operator can never be overwritten unseen.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tortie_crds::ipam::names::{LABEL_HOSTNAME_HASH, LABEL_IP_VERSION, hostname_hash};
use tortie_crds::ipam::{BlockAffinity, IPAM_CONFIG_NAME, IPAMBlock, IPAMConfig, IPAMHandle};
use tortie_crds::ippool::IPPool;

use super::pools::Family;

/// Why an API call did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object was changed since it was read (HTTP 409 Conflict).
    #[error("{what} was changed by someone else since it was read")]
    Conflict {
        /// The object.
        what: String,
    },
    /// The object to create exists already (HTTP 409 AlreadyExists).
    #[error("{what} exists already")]
    AlreadyExists {
        /// The object.
        what: String,
    },
    /// The object is gone (HTTP 404).
    #[error("{what} does not exist")]
    NotFound {
        /// The object.
        what: String,
    },
    /// The API server cannot be reached or is overloaded; the call may work later.
    #[error("the API server is unavailable ({what}): {source}")]
    Unavailable {
        /// What was being done.
        what: String,
        /// The client's error.
        source: kube::Error,
    },
    /// The API server refused the call for good (forbidden, invalid, ...).
    #[error("the API server refused {what}: {source}")]
    Refused {
        /// What was being done.
        what: String,
        /// The client's error.
        source: kube::Error,
    },
}

/// Typed access to the objects IPAM reads and writes.
#[derive(Clone)]
pub struct Store {
    client: Client,
    pools: Api<IPPool>,
    blocks: Api<IPAMBlock>,
    affinities: Api<BlockAffinity>,
    handles: Api<IPAMHandle>,
    configs: Api<IPAMConfig>,
    nodes: Api<Node>,
    namespaces: Api<Namespace>,
}

/// The labels and annotations of an object, all the allocator reads of pods,
/// namespaces and nodes.
#[derive(Debug, Clone, Default)]
pub struct ObjectLabels {
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

impl Store {
    /// Access through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            pools: Api::all(client.clone()),
            blocks: Api::all(client.clone()),
            affinities: Api::all(client.clone()),
            handles: Api::all(client.clone()),
            configs: Api::all(client.clone()),
            nodes: Api::all(client.clone()),
            namespaces: Api::all(client.clone()),
            client,
        }
    }

    /// Every IPPool.
    pub async fn pools(&self) -> Result<Vec<IPPool>, StoreError> {
        let list = self
            .pools
            .list(&ListParams::default())
            .await
            .map_err(|e| classify(e, "listing IPPools"))?;
        Ok(list.items)
    }

    /// The IPAMConfig `default`, or the defaults when there is none.
    pub async fn ipam_config(&self) -> Result<IPAMConfig, StoreError> {
        let found = self
            .configs
            .get_opt(IPAM_CONFIG_NAME)
            .await
            .map_err(|e| classify(e, "reading IPAMConfig default"))?;
        Ok(found.unwrap_or_else(|| IPAMConfig::new(IPAM_CONFIG_NAME, Default::default())))
    }

    /// A node's labels, `None` when the Node does not exist.
    pub async fn node(&self, name: &str) -> Result<Option<ObjectLabels>, StoreError> {
        let node = self
            .nodes
            .get_opt(name)
            .await
            .map_err(|e| classify(e, &format!("reading Node {name}")))?;
        Ok(node.map(|node| labels_of(node.meta())))
    }

    /// A namespace's labels and annotations, `None` when it does not exist.
    pub async fn namespace(&self, name: &str) -> Result<Option<ObjectLabels>, StoreError> {
        let namespace = self
            .namespaces
            .get_opt(name)
            .await
            .map_err(|e| classify(e, &format!("reading Namespace {name}")))?;
        Ok(namespace.map(|namespace| labels_of(namespace.meta())))
    }

    /// A pod's labels and annotations, `None` when it does not exist.
    pub async fn pod(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ObjectLabels>, StoreError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = pods
            .get_opt(name)
            .await
            .map_err(|e| classify(e, &format!("reading Pod {namespace}/{name}")))?;
        Ok(pod.map(|pod| labels_of(pod.meta())))
    }

    /// The node's block affinities of one family, found by Calico's labels.
    pub async fn node_affinities(
        &self,
        node: &str,
        family: Family,
    ) -> Result<Vec<BlockAffinity>, StoreError> {
        let selector = format!(
            "{LABEL_HOSTNAME_HASH}={},{LABEL_IP_VERSION}={}",
            hostname_hash(node),
            family.label_value()
        );
        let list = self
            .affinities
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| classify(e, &format!("listing the BlockAffinities of node {node}")))?;
        // The label is a hash; the spec says whose the affinity really is.
        Ok(list
            .items
            .into_iter()
            .filter(|affinity| affinity.spec.node == node)
            .collect())
    }

    /// Every IPAMBlock.
    pub async fn blocks(&self) -> Result<Vec<IPAMBlock>, StoreError> {
        let list = self
            .blocks
            .list(&ListParams::default())
            .await
            .map_err(|e| classify(e, "listing IPAMBlocks"))?;
        Ok(list.items)
    }

    /// One block, `None` when it does not exist.
    pub async fn block(&self, name: &str) -> Result<Option<IPAMBlock>, StoreError> {
        get_opt(&self.blocks, "IPAMBlock", name).await
    }

    /// One handle, `None` when it does not exist.
    pub async fn handle(&self, name: &str) -> Result<Option<IPAMHandle>, StoreError> {
        get_opt(&self.handles, "IPAMHandle", name).await
    }

    /// One affinity, `None` when it does not exist.
    pub async fn affinity(&self, name: &str) -> Result<Option<BlockAffinity>, StoreError> {
        get_opt(&self.affinities, "BlockAffinity", name).await
    }

    /// Creates a block; [`StoreError::AlreadyExists`] when another writer was first.
    pub async fn create_block(&self, block: &IPAMBlock) -> Result<IPAMBlock, StoreError> {
        create(&self.blocks, "IPAMBlock", block).await
    }

    /// Writes a block back; [`StoreError::Conflict`] when it changed since it was read.
    pub async fn replace_block(&self, block: &IPAMBlock) -> Result<IPAMBlock, StoreError> {
        replace(&self.blocks, "IPAMBlock", block).await
    }

    /// Creates an affinity.
    pub async fn create_affinity(
        &self,
        affinity: &BlockAffinity,
    ) -> Result<BlockAffinity, StoreError> {
        create(&self.affinities, "BlockAffinity", affinity).await
    }

    /// Writes an affinity back (compare-and-swap).
    pub async fn replace_affinity(
        &self,
        affinity: &BlockAffinity,
    ) -> Result<BlockAffinity, StoreError> {
        replace(&self.affinities, "BlockAffinity", affinity).await
    }

    /// Deletes an affinity if it is still at the version read; gone already is success.
    pub async fn delete_affinity(&self, affinity: &BlockAffinity) -> Result<(), StoreError> {
        delete(&self.affinities, "BlockAffinity", affinity).await
    }

    /// Creates a handle.
    pub async fn create_handle(&self, handle: &IPAMHandle) -> Result<IPAMHandle, StoreError> {
        create(&self.handles, "IPAMHandle", handle).await
    }

    /// Writes a handle back (compare-and-swap).
    pub async fn replace_handle(&self, handle: &IPAMHandle) -> Result<IPAMHandle, StoreError> {
        replace(&self.handles, "IPAMHandle", handle).await
    }

    /// Deletes a handle if it is still at the version read; gone already is success.
    pub async fn delete_handle(&self, handle: &IPAMHandle) -> Result<(), StoreError> {
        delete(&self.handles, "IPAMHandle", handle).await
    }
}

fn labels_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectLabels {
    ObjectLabels {
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
    }
}

async fn get_opt<K>(api: &Api<K>, kind: &str, name: &str) -> Result<Option<K>, StoreError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(|e| classify(e, &format!("reading {kind} {name}")))
}

async fn create<K>(api: &Api<K>, kind: &str, object: &K) -> Result<K, StoreError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let what = format!("{kind} {}", name_of(object));
    api.create(&PostParams::default(), object)
        .await
        .map_err(|e| classify(e, &what))
}

async fn replace<K>(api: &Api<K>, kind: &str, object: &K) -> Result<K, StoreError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = name_of(object);
    let what = format!("{kind} {name}");
    api.replace(&name, &PostParams::default(), object)
        .await
        .map_err(|e| classify(e, &what))
}

async fn delete<K>(api: &Api<K>, kind: &str, object: &K) -> Result<(), StoreError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let name = name_of(object);
    let what = format!("{kind} {name}");
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: object.meta().resource_version.clone(),
            uid: object.meta().uid.clone(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(error) => match classify(error, &what) {
            StoreError::NotFound { .. } => Ok(()),
            other => Err(other),
        },
    }
}

fn name_of<K: Resource>(object: &K) -> String {
    object.meta().name.clone().unwrap_or_default()
}

/// Sorts a client error into what the allocator does about it.
fn classify(error: kube::Error, what: &str) -> StoreError {
    let what = what.to_owned();
    match &error {
        kube::Error::Api(status) if status.is_already_exists() => {
            StoreError::AlreadyExists { what }
        }
        kube::Error::Api(status) if status.code == 409 => StoreError::Conflict { what },
        kube::Error::Api(status) if status.is_not_found() => StoreError::NotFound { what },
        kube::Error::Api(status) if status.code == 429 || status.code >= 500 => {
            StoreError::Unavailable {
                what,
                source: error,
            }
        }
        kube::Error::Api(_)
        | kube::Error::SerdeError(_)
        | kube::Error::BuildRequest(_)
        | kube::Error::HttpError(_) => StoreError::Refused {
            what,
            source: error,
        },
        _ => StoreError::Unavailable {
            what,
            source: error,
        },
    }
}
