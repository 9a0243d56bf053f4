//! A pod's volumes, made as directories on the node and bind-mounted into each container's
//! own mount namespace: hostPath, emptyDir, configMap, secret, downwardAPI and projected
//! (service-account token, configMap, secret, downwardAPI).
//!
//! Known limitation: configMap, secret and downwardAPI contents are written once, when the
//! pod starts; only projected service-account tokens are refreshed (at 80 % of their
//! lifetime). Tokens are plain files under the node directory, readable by root.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::NodeContext;
use super::container::field_value;
use super::sandbox::write_atomically;

/// The token lifetime asked for when the projection names none (the API's own default).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// Where a bind mount's source is, and what must exist at its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// The source on the node.
    pub source: PathBuf,
    /// The target inside the container's mount namespace.
    pub target: String,
    /// Remount read-only after binding.
    pub read_only: bool,
    /// The source is a file (the target must be a file too).
    pub file: bool,
}

/// A projected service-account token that must be refreshed.
#[derive(Debug)]
struct TokenProjection {
    file: PathBuf,
    audience: Option<String>,
    expiration_seconds: i64,
}

/// The volumes of one pod, made on the node.
#[derive(Debug, Default)]
pub struct PodVolumes {
    sources: HashMap<String, PathBuf>,
    tokens: Vec<TokenProjection>,
    /// When the projected tokens must be requested again (at 80 % of their lifetime).
    pub refresh_at: Option<Instant>,
}

impl PodVolumes {
    /// Makes every volume of the pod under `<pod dir>/volumes`. An error names the volume
    /// and the reason; the caller retries.
    pub async fn prepare(
        ctx: &NodeContext,
        pod: &Pod,
        pod_ip: Option<IpAddr>,
    ) -> Result<PodVolumes, String> {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let dir = ctx.pod_dir(uid).join("volumes");
        let mut volumes = PodVolumes::default();
        let spec_volumes = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.volumes.clone())
            .unwrap_or_default();
        for volume in &spec_volumes {
            let target = dir.join(&volume.name);
            match volumes.make(ctx, pod, pod_ip, volume, &target).await {
                Ok(Some(source)) => {
                    volumes.sources.insert(volume.name.clone(), source);
                }
                Ok(None) => warn!(
                    pod = %pod_name(pod), volume = %volume.name,
                    "volume type not supported by the node runtime; containers that mount it fail"
                ),
                Err(message) => return Err(format!("volume {:?}: {message}", volume.name)),
            }
        }
        volumes.refresh_tokens(ctx, pod).await?;
        Ok(volumes)
    }

    /// Requests every projected token again and rewrites its file.
    pub async fn refresh_tokens(&mut self, ctx: &NodeContext, pod: &Pod) -> Result<(), String> {
        let mut refresh_in: Option<Duration> = None;
        for token in &self.tokens {
            let (value, lifetime) = request_token(
                ctx,
                pod,
                token.audience.as_deref(),
                token.expiration_seconds,
            )
            .await?;
            write_atomically(&token.file, value.as_bytes()).map_err(|e| e.to_string())?;
            let at = lifetime.mul_f64(0.8);
            refresh_in = Some(refresh_in.map_or(at, |current| current.min(at)));
        }
        self.refresh_at = refresh_in.map(|after| Instant::now() + after);
        debug!(pod = %pod_name(pod), tokens = self.tokens.len(), "projected tokens written");
        Ok(())
    }

    /// The bind mounts of one container, deepest last so nested mounts land on top.
    pub fn mounts(&self, pod: &Pod, container: &Container) -> Result<Vec<BindMount>, String> {
        let mut mounts = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let base = self.sources.get(&mount.name).ok_or_else(|| {
                format!(
                    "volumeMounts[{}] of container {:?} in pod {}: the volume is missing or of a \
                     type the node runtime does not support (hostPath, emptyDir, configMap, \
                     secret, downwardAPI, projected)",
                    mount.name,
                    container.name,
                    pod_name(pod)
                )
            })?;
            let source = match mount.sub_path.as_deref().filter(|sub| !sub.is_empty()) {
                Some(sub) if sub.split('/').any(|part| part == "..") => {
                    return Err(format!(
                        "volumeMounts[{}].subPath {sub:?} must not contain '..'",
                        mount.name
                    ));
                }
                Some(sub) => {
                    let path = base.join(sub);
                    if !path.exists() {
                        std::fs::create_dir_all(&path)
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                    }
                    path
                }
                None => base.clone(),
            };
            mounts.push(BindMount {
                file: source.is_file(),
                source,
                target: mount.mount_path.clone(),
                read_only: mount.read_only.unwrap_or(false),
            });
        }
        mounts.sort_by_key(|mount| mount.target.matches('/').count());
        Ok(mounts)
    }

    /// Makes one volume; `None` for a type not supported.
    async fn make(
        &mut self,
        ctx: &NodeContext,
        pod: &Pod,
        pod_ip: Option<IpAddr>,
        volume: &Volume,
        target: &Path,
    ) -> Result<Option<PathBuf>, String> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(host_path) = &volume.host_path {
            return host_source(
                ctx,
                &host_path.path,
                host_path.type_.as_deref().unwrap_or(""),
            )
            .map(Some);
        }
        create_dir(target)?;
        if volume.empty_dir.is_some() {
            return Ok(Some(target.to_path_buf()));
        }
        if let Some(source) = &volume.config_map {
            let data = config_map_files(ctx, namespace, &source.name, source.optional).await?;
            write_items(target, &data, source.items.as_deref())?;
            return Ok(Some(target.to_path_buf()));
        }
        if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().unwrap_or_default();
            let data = secret_files(ctx, namespace, &name, source.optional).await?;
            write_items(target, &data, source.items.as_deref())?;
            return Ok(Some(target.to_path_buf()));
        }
        if let Some(source) = &volume.downward_api {
            write_downward(
                target,
                pod,
                pod_ip,
                ctx.address,
                source.items.as_deref().unwrap_or_default(),
            )?;
            return Ok(Some(target.to_path_buf()));
        }
        if let Some(projected) = &volume.projected {
            for source in projected.sources.iter().flatten() {
                if let Some(token) = &source.service_account_token {
                    self.tokens.push(TokenProjection {
                        file: target.join(&token.path),
                        audience: token.audience.clone().filter(|a| !a.is_empty()),
                        expiration_seconds: token
                            .expiration_seconds
                            .unwrap_or(DEFAULT_TOKEN_SECONDS),
                    });
                }
                if let Some(config_map) = &source.config_map {
                    let data =
                        config_map_files(ctx, namespace, &config_map.name, config_map.optional)
                            .await?;
                    write_items(target, &data, config_map.items.as_deref())?;
                }
                if let Some(secret) = &source.secret {
                    let data = secret_files(ctx, namespace, &secret.name, secret.optional).await?;
                    write_items(target, &data, secret.items.as_deref())?;
                }
                if let Some(downward) = &source.downward_api {
                    write_downward(
                        target,
                        pod,
                        pod_ip,
                        ctx.address,
                        downward.items.as_deref().unwrap_or_default(),
                    )?;
                }
            }
            return Ok(Some(target.to_path_buf()));
        }
        Ok(None)
    }
}

/// Where a hostPath is on the node. The node's `/etc/cni/net.d`, `/opt/cni/bin`,
/// `/var/run` and `/var/log` are already its own in the runtime's mount namespace;
/// `/var/lib/...` is mapped to the node directory's `var/lib` so that each node keeps its
/// own state. Any other path is the machine's.
pub fn node_path(node_dir: &Path, path: &str) -> PathBuf {
    match path.strip_prefix("/var/lib") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            node_dir.join("var/lib").join(rest.trim_start_matches('/'))
        }
        _ => PathBuf::from(path),
    }
}

fn host_source(ctx: &NodeContext, path: &str, kind: &str) -> Result<PathBuf, String> {
    let source = node_path(&ctx.config.node_dir, path);
    let exists = source.exists();
    match kind {
        "DirectoryOrCreate" | "" if !exists => create_dir(&source)?,
        "FileOrCreate" if !exists => {
            if let Some(parent) = source.parent() {
                create_dir(parent)?;
            }
            std::fs::write(&source, b"").map_err(|e| format!("{}: {e}", source.display()))?;
        }
        "Directory" if !source.is_dir() => {
            return Err(format!(
                "hostPath {path} ({}) is not a directory (type Directory)",
                source.display()
            ));
        }
        "File" if !source.is_file() => {
            return Err(format!(
                "hostPath {path} ({}) is not a file (type File)",
                source.display()
            ));
        }
        "Socket" | "CharDevice" | "BlockDevice" if !exists => {
            return Err(format!(
                "hostPath {path} ({}) does not exist (type {kind})",
                source.display()
            ));
        }
        _ => {}
    }
    Ok(source)
}

async fn request_token(
    ctx: &NodeContext,
    pod: &Pod,
    audience: Option<&str>,
    expiration_seconds: i64,
) -> Result<(String, Duration), String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            // Empty means the API server's own audiences, which is what in-cluster clients use.
            audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            expiration_seconds: Some(expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    let answer = accounts
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .map_err(|error| format!("token for service account {namespace}/{account}: {error}"))?;
    let status = answer.status.ok_or_else(|| {
        format!("token for service account {namespace}/{account}: no status in the answer")
    })?;
    let now = k8s_openapi::jiff::Timestamp::now();
    let seconds = (status.expiration_timestamp.0 - now).get_seconds().max(60);
    Ok((status.token, Duration::from_secs(seconds.unsigned_abs())))
}

async fn config_map_files(
    ctx: &NodeContext,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(map)) => {
            let mut files: BTreeMap<String, Vec<u8>> = map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(key, value)| (key, value.into_bytes()))
                .collect();
            files.extend(
                map.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(key, value)| (key, value.0)),
            );
            Ok(files)
        }
        Ok(None) if optional == Some(true) => Ok(BTreeMap::new()),
        Ok(None) => Err(format!("configmap {namespace}/{name} not found")),
        Err(error) => Err(format!(
            "configmap {namespace}/{name} could not be read with the node's identity: {error}"
        )),
    }
}

async fn secret_files(
    ctx: &NodeContext,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(secret)) => Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect()),
        Ok(None) if optional == Some(true) => Ok(BTreeMap::new()),
        Ok(None) => Err(format!("secret {namespace}/{name} not found")),
        Err(error) => Err(format!(
            "secret {namespace}/{name} could not be read with the node's identity: {error}"
        )),
    }
}

fn write_items(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
) -> Result<(), String> {
    let write = |path: &str, bytes: &[u8]| {
        if path.split('/').any(|part| part == "..") {
            return Err(format!("path {path:?} must not contain '..'"));
        }
        write_atomically(&dir.join(path), bytes).map_err(|e| e.to_string())
    };
    match items {
        Some(items) => {
            for item in items {
                let bytes = data
                    .get(&item.key)
                    .ok_or_else(|| format!("key {:?} is not in the source", item.key))?;
                write(&item.path, bytes)?;
            }
        }
        None => {
            for (key, bytes) in data {
                write(key, bytes)?;
            }
        }
    }
    Ok(())
}

fn write_downward(
    dir: &Path,
    pod: &Pod,
    pod_ip: Option<IpAddr>,
    host_ip: IpAddr,
    items: &[DownwardAPIVolumeFile],
) -> Result<(), String> {
    for item in items {
        let Some(field) = &item.field_ref else {
            debug!(
                pod = %pod_name(pod),
                path = %item.path,
                "resourceFieldRef in a downwardAPI volume is not filled in",
            );
            continue;
        };
        let value = field_value(pod, &field.field_path, pod_ip, host_ip)?;
        write_atomically(&dir.join(&item.path), value.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn create_dir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_lib_host_paths_belong_to_the_node_and_others_to_the_machine() {
        let node = Path::new("/tmp/c/nodes/n1");
        assert_eq!(
            node_path(node, "/var/lib/calico"),
            Path::new("/tmp/c/nodes/n1/var/lib/calico")
        );
        assert_eq!(
            node_path(node, "/var/lib"),
            Path::new("/tmp/c/nodes/n1/var/lib/")
        );
        assert_eq!(node_path(node, "/var/library"), Path::new("/var/library"));
        assert_eq!(node_path(node, "/opt/cni/bin"), Path::new("/opt/cni/bin"));
        assert_eq!(node_path(node, "/lib/modules"), Path::new("/lib/modules"));
    }

    #[test]
    fn items_pick_keys_and_paths_and_refuse_escapes() {
        let dir = std::env::temp_dir().join(format!("tortie-items-{}", std::process::id()));
        let data = BTreeMap::from([
            ("a".to_string(), b"1".to_vec()),
            ("b".to_string(), b"2".to_vec()),
        ]);
        write_items(&dir, &data, None).expect("all keys are written");
        assert_eq!(std::fs::read(dir.join("b")).expect("written"), b"2");
        let items = [KeyToPath {
            key: "a".into(),
            path: "sub/x".into(),
            mode: None,
        }];
        write_items(&dir, &data, Some(&items)).expect("the item is written");
        assert_eq!(std::fs::read(dir.join("sub/x")).expect("written"), b"1");
        let escape = [KeyToPath {
            key: "a".into(),
            path: "../x".into(),
            mode: None,
        }];
        assert!(write_items(&dir, &data, Some(&escape)).is_err());
        let missing = [KeyToPath {
            key: "c".into(),
            path: "c".into(),
            mode: None,
        }];
        assert!(write_items(&dir, &data, Some(&missing)).is_err());
        std::fs::remove_dir_all(&dir).expect("temp dir is removable");
    }
}
