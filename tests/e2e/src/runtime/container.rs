//! One container: its environment, the command that runs it in the pod's network namespace
//! and in a mount namespace of its own, and a supervisor that restarts it with backoff.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::api::Api;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::NodeContext;
use super::volume::BindMount;
use crate::cluster::shell_quote;

/// The first wait before a restart; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest wait before a restart (the kubelet's is five minutes; tests want less).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A run this long resets the backoff.
const BACKOFF_RESET: Duration = Duration::from_secs(120);

/// The search path containers get.
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the service-account token is mounted for in-cluster clients.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What a supervisor tells its pod worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerEvent {
    /// Not running, and why (`CreateContainerConfigError`, `CrashLoopBackOff`, ...).
    Waiting {
        /// A CamelCase reason.
        reason: String,
        /// For a person.
        message: String,
    },
    /// A process runs.
    Started {
        /// Its PID (also its process group).
        pid: u32,
    },
    /// The process ended.
    Exited {
        /// Its exit code, 128 + signal when killed.
        code: i32,
        /// `Completed` or `Error`.
        reason: String,
    },
}

/// What a pod worker tells a supervisor.
#[derive(Clone, Copy, Debug)]
pub enum Control {
    /// End the process (SIGTERM, then SIGKILL after the grace period) and the supervisor.
    Stop(Duration),
    /// End the process and apply the restart policy, as after an exit (a failed liveness probe).
    Restart(Duration),
}

/// When a container that ended is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartRule {
    /// Whatever the exit code.
    Always,
    /// On a non-zero exit code.
    OnFailure,
    /// Never.
    Never,
}

impl RestartRule {
    /// The rule for a container of a pod with `restartPolicy`; init containers run until
    /// they succeed unless the policy is Never.
    pub fn new(policy: Option<&str>, init: bool) -> RestartRule {
        match (policy.unwrap_or("Always"), init) {
            ("Never", _) => RestartRule::Never,
            ("OnFailure", _) | (_, true) => RestartRule::OnFailure,
            _ => RestartRule::Always,
        }
    }

    fn restarts(self, code: i32) -> bool {
        match self {
            RestartRule::Always => true,
            RestartRule::OnFailure => code != 0,
            RestartRule::Never => false,
        }
    }
}

/// Everything needed to start one container's process.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The node.
    pub ctx: Arc<NodeContext>,
    /// The pod.
    pub pod: Arc<Pod>,
    /// The container.
    pub container: Container,
    /// The pod's network namespace; `None` for hostNetwork.
    pub netns: Option<String>,
    /// The pod's address.
    pub pod_ip: IpAddr,
    /// The container's volume mounts.
    pub mounts: Vec<BindMount>,
    /// Its log file.
    pub log: PathBuf,
}

/// Starts, watches and restarts one container until told to stop or the restart rule says
/// it is done. Reports every transition on `events` tagged with `index`.
pub async fn supervise(
    launch: Launch,
    rule: RestartRule,
    index: usize,
    events: mpsc::UnboundedSender<(usize, ContainerEvent)>,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let send = |event: ContainerEvent| {
        let _ = events.send((index, event));
    };
    let name = launch.container.name.clone();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let outcome = match launch.command().await {
            Err((reason, message)) => {
                warn!(container = %name, %reason, %message, "container not started");
                send(ContainerEvent::Waiting { reason, message });
                None
            }
            Ok(mut command) => match command.spawn() {
                Err(error) => {
                    let message = format!("could not start {}: {error}", launch.container.name);
                    send(ContainerEvent::Waiting {
                        reason: "RunContainerError".into(),
                        message,
                    });
                    None
                }
                Ok(mut child) => {
                    let pid = child.id().unwrap_or_default();
                    info!(container = %name, pid, "container started");
                    send(ContainerEvent::Started { pid });
                    let (status, stop) = tokio::select! {
                        status = child.wait() => (status, false),
                        order = control.recv() => {
                            let (grace, stop) = match order {
                                Some(Control::Restart(grace)) => (grace, false),
                                Some(Control::Stop(grace)) => (grace, true),
                                None => (Duration::ZERO, true),
                            };
                            (terminate(pid, grace, &mut child).await, stop)
                        }
                    };
                    // Whatever else the container started goes with it, as with a cgroup.
                    signal_group(pid, rustix::process::Signal::KILL);
                    let code = status.map(exit_code).unwrap_or(-1);
                    let reason = if code == 0 { "Completed" } else { "Error" };
                    info!(container = %name, pid, code, "container exited");
                    send(ContainerEvent::Exited {
                        code,
                        reason: reason.into(),
                    });
                    if stop {
                        return;
                    }
                    Some(code)
                }
            },
        };
        if let Some(code) = outcome
            && !rule.restarts(code)
        {
            return;
        }
        if started.elapsed() >= BACKOFF_RESET {
            backoff = FIRST_BACKOFF;
        }
        if outcome.is_some() && backoff > FIRST_BACKOFF {
            send(ContainerEvent::Waiting {
                reason: "CrashLoopBackOff".into(),
                message: format!(
                    "back-off {}s restarting failed container={name}",
                    backoff.as_secs()
                ),
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            order = control.recv() => match order {
                Some(Control::Restart(_)) => {}
                Some(Control::Stop(_)) | None => return,
            },
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

impl Launch {
    /// The command that runs the container: `ip netns exec <pod netns>` (unless
    /// hostNetwork), then a private mount namespace with the volumes bound, then the program.
    async fn command(&self) -> Result<tokio::process::Command, (String, String)> {
        let config_error = |message: String| ("CreateContainerConfigError".to_string(), message);
        let env = environment(&self.ctx, &self.pod, &self.container, self.pod_ip)
            .await
            .map_err(config_error)?;
        let lookup: BTreeMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (program, args) = self
            .program(&lookup)
            .map_err(|m| ("CreateContainerError".to_string(), m))?;

        let mut argv: Vec<String> = Vec::new();
        if let Some(netns) = &self.netns {
            argv.extend(["ip", "netns", "exec", netns].map(str::to_string));
        }
        argv.extend(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c"].map(str::to_string),
        );
        argv.push(mount_script(&self.mounts));
        argv.push(format!(
            "tortie-pod-{}-{}",
            self.pod.metadata.name.as_deref().unwrap_or_default(),
            self.container.name
        ));
        argv.push(program.to_string_lossy().into_owned());
        argv.extend(args);

        if let Some(parent) = self.log.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| config_error(format!("{}: {e}", parent.display())))?;
        }
        let open = || {
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|e| config_error(format!("{}: {e}", self.log.display())))
        };
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(open()?)
            .stderr(open()?)
            // Its own process group: the pod's processes are signalled as one.
            .process_group(0);
        Ok(command)
    }

    /// Tortie's images run the local binary named by `command[0]`; any other image runs
    /// the test server on the container's ports.
    fn program(&self, env: &BTreeMap<&str, &str>) -> Result<(PathBuf, Vec<String>), String> {
        let image = self.container.image.as_deref().unwrap_or_default();
        if !super::is_tortie_image(image) {
            let mut args = vec!["pod-server".to_string(), "--name".into()];
            args.push(self.pod.metadata.name.clone().unwrap_or_default());
            for port in self.container.ports.iter().flatten() {
                if port.protocol.as_deref().unwrap_or("TCP") == "TCP" {
                    args.extend(["--port".to_string(), port.container_port.to_string()]);
                }
            }
            return Ok((self.ctx.config.self_binary.clone(), args));
        }
        let command = self.container.command.clone().unwrap_or_default();
        let Some(first) = command.first() else {
            return Err(format!(
                "container {:?} (image {image}) has no command; the node runtime runs Tortie's \
                 images as the local binary named by command[0]",
                self.container.name
            ));
        };
        let binary = image_binary(&self.ctx.config.image_bin_dir, first);
        if !binary.is_file() {
            return Err(format!(
                "container {:?} (image {image}): binary {} not found; build it with `cargo build` \
                 or point TORTIE_IMAGE_BIN_DIR at it",
                self.container.name,
                binary.display()
            ));
        }
        let args = command[1..]
            .iter()
            .chain(self.container.args.iter().flatten())
            .map(|arg| expand(arg, env))
            .collect();
        Ok((binary, args))
    }
}

/// Where the binary named by a command's first word is: its file name in the image
/// binary directory (`/usr/local/bin/tortie-agent` → `<dir>/tortie-agent`).
pub fn image_binary(dir: &std::path::Path, first: &str) -> PathBuf {
    let name = first.rsplit('/').next().unwrap_or(first);
    dir.join(name)
}

/// The container's environment: the usual variables (PATH, HOSTNAME, the API server's
/// address), then `envFrom`, then `env` with `$(VAR)` references expanded.
pub async fn environment(
    ctx: &NodeContext,
    pod: &Pod,
    container: &Container,
    pod_ip: IpAddr,
) -> Result<Vec<(String, String)>, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let hostname = if host_network {
        ctx.config.node.clone()
    } else {
        pod.metadata.name.clone().unwrap_or_default()
    };
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), CONTAINER_PATH.into()),
        ("HOSTNAME".into(), hostname),
        ("KUBERNETES_SERVICE_HOST".into(), ctx.api_host.clone()),
        ("KUBERNETES_SERVICE_PORT".into(), ctx.api_port.to_string()),
        (
            "KUBERNETES_SERVICE_PORT_HTTPS".into(),
            ctx.api_port.to_string(),
        ),
        (
            "KUBERNETES_PORT".into(),
            format!("tcp://{}:{}", ctx.api_host, ctx.api_port),
        ),
    ];
    let set = |env: &mut Vec<(String, String)>, key: String, value: String| match env
        .iter_mut()
        .find(|(k, _)| *k == key)
    {
        Some(entry) => entry.1 = value,
        None => env.push((key, value)),
    };

    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let values: BTreeMap<String, String> = if let Some(map) = &source.config_map_ref {
            match Api::<ConfigMap>::namespaced(ctx.client.clone(), namespace)
                .get_opt(&map.name)
                .await
            {
                Ok(Some(found)) => found.data.unwrap_or_default(),
                Ok(None) if map.optional == Some(true) => BTreeMap::new(),
                Ok(None) => {
                    return Err(format!(
                        "envFrom: configmap {namespace}/{} not found",
                        map.name
                    ));
                }
                Err(error) => {
                    return Err(format!(
                        "envFrom: configmap {namespace}/{}: {error}",
                        map.name
                    ));
                }
            }
        } else if let Some(secret) = &source.secret_ref {
            match Api::<Secret>::namespaced(ctx.client.clone(), namespace)
                .get_opt(&secret.name)
                .await
            {
                Ok(Some(found)) => found
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect(),
                Ok(None) if secret.optional == Some(true) => BTreeMap::new(),
                Ok(None) => {
                    return Err(format!(
                        "envFrom: secret {namespace}/{} not found",
                        secret.name
                    ));
                }
                Err(error) => {
                    return Err(format!(
                        "envFrom: secret {namespace}/{}: {error}",
                        secret.name
                    ));
                }
            }
        } else {
            BTreeMap::new()
        };
        for (key, value) in values {
            set(&mut env, format!("{prefix}{key}"), value);
        }
    }

    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    Some(
                        field_value(pod, &field.field_path, Some(pod_ip), ctx.address)
                            .map_err(|m| format!("env {}: {m}", var.name))?,
                    )
                } else if let Some(resource) = &from.resource_field_ref {
                    info!(
                        container = %container.name,
                        variable = %var.name,
                        resource = %resource.resource,
                        "resourceFieldRef is not filled in: the node runtime sets no limits"
                    );
                    None
                } else if let Some(key) = &from.config_map_key_ref {
                    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
                    let found = api.get_opt(&key.name).await.map_err(|error| {
                        format!(
                            "env {}: configmap {namespace}/{} could not be read with the node's \
                             identity: {error}",
                            var.name, key.name
                        )
                    })?;
                    let exists = found.is_some();
                    match found.and_then(|map| map.data?.get(&key.key).cloned()) {
                        Some(value) => Some(value),
                        None if key.optional == Some(true) => None,
                        None => {
                            return Err(missing_key(
                                &var.name,
                                "configmap",
                                namespace,
                                &key.name,
                                &key.key,
                                exists,
                            ));
                        }
                    }
                } else if let Some(key) = &from.secret_key_ref {
                    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
                    let found = api.get_opt(&key.name).await.map_err(|error| {
                        format!(
                            "env {}: secret {namespace}/{} could not be read with the node's \
                             identity: {error}",
                            var.name, key.name
                        )
                    })?;
                    let exists = found.is_some();
                    match found.and_then(|secret| secret.data?.get(&key.key).cloned()) {
                        Some(value) => Some(String::from_utf8_lossy(&value.0).into_owned()),
                        None if key.optional == Some(true) => None,
                        None => {
                            return Err(missing_key(
                                &var.name, "secret", namespace, &key.name, &key.key, exists,
                            ));
                        }
                    }
                } else {
                    None
                }
            }
            (Some(value), None) => {
                let known: BTreeMap<&str, &str> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                Some(expand(value, &known))
            }
            (None, None) => Some(String::new()),
        };
        if let Some(value) = value {
            set(&mut env, var.name.clone(), value);
        }
    }
    Ok(env)
}

/// The message for an env reference that cannot be resolved.
fn missing_key(
    variable: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    key: &str,
    exists: bool,
) -> String {
    if exists {
        format!(
            "env {variable}: {kind} {namespace}/{name} has no key {key:?}; add it or mark the \
             reference optional"
        )
    } else {
        format!(
            "env {variable}: {kind} {namespace}/{name} not found; create it or mark the reference \
             optional"
        )
    }
}

/// The value of a downward-API field path.
pub fn field_value(
    pod: &Pod,
    path: &str,
    pod_ip: Option<IpAddr>,
    host_ip: IpAddr,
) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |map: &Option<BTreeMap<String, String>>, rest: &str| {
        let key = rest.strip_prefix("['").and_then(|r| r.strip_suffix("']"))?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default(),
        )
    };
    let all = |map: &Option<BTreeMap<String, String>>| {
        map.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => all(&meta.labels),
        "metadata.annotations" => all(&meta.annotations),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        other => {
            if let Some(value) = other
                .strip_prefix("metadata.labels")
                .and_then(|rest| keyed(&meta.labels, rest))
            {
                value
            } else if let Some(value) = other
                .strip_prefix("metadata.annotations")
                .and_then(|rest| keyed(&meta.annotations, rest))
            {
                value
            } else {
                return Err(format!(
                    "fieldRef.fieldPath {other:?} is not supported; use metadata.name, \
                     metadata.namespace, metadata.uid, metadata.labels['k'], \
                     metadata.annotations['k'], spec.nodeName, spec.serviceAccountName, \
                     status.podIP or status.hostIP"
                ));
            }
        }
    };
    Ok(value)
}

/// Expands `$(NAME)` from `env` as the kubelet does: unknown names stay as written, `$$`
/// is a literal `$`.
pub fn expand(text: &str, env: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The shell script that binds the volumes in the container's mount namespace, then runs
/// the program. Missing mount points are made first.
///
/// Known limitation: a mount point outside the node's own directories (for example
/// `/host/opt/cni/bin`) is made in the machine's filesystem, empty, and left there; the
/// mount on it is only ever seen inside the container.
pub fn mount_script(mounts: &[BindMount]) -> String {
    let mut script = String::from("set -e; ");
    for mount in mounts {
        let source = shell_quote(&mount.source.to_string_lossy());
        let target = shell_quote(&mount.target);
        if mount.file {
            let parent = std::path::Path::new(&mount.target)
                .parent()
                .map(|p| shell_quote(&p.to_string_lossy()))
                .unwrap_or_else(|| "/".into());
            script.push_str(&format!(
                "mkdir -p {parent}; [ -e {target} ] || : > {target}; "
            ));
        } else {
            script.push_str(&format!("mkdir -p {target}; "));
        }
        script.push_str(&format!("mount --bind {source} {target}; "));
        if mount.read_only {
            script.push_str(&format!("mount -o remount,bind,ro {target}; "));
        }
    }
    script.push_str("exec \"$@\"");
    script
}

/// SIGTERM to the group, up to `grace` for the process to exit, then SIGKILL.
async fn terminate(
    pid: u32,
    grace: Duration,
    child: &mut tokio::process::Child,
) -> std::io::Result<ExitStatus> {
    signal_group(pid, rustix::process::Signal::TERM);
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return status;
    }
    signal_group(pid, rustix::process::Signal::KILL);
    child.wait().await
}

/// Signals the process group led by `pid`; a group that is gone already is fine.
///
/// Known limitation: after the leader is reaped, its PID could be reused as a new group's
/// ID; the SIGKILL that sweeps up a container's leftovers right after its exit would then
/// hit that group. The window is the moment between the exit and the sweep.
pub fn signal_group(pid: u32, signal: rustix::process::Signal) {
    let Some(group) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(errno) = rustix::process::kill_process_group(group, signal)
        && errno != rustix::io::Errno::SRCH
    {
        warn!(pid, %errno, "could not signal a container's process group");
    }
}

fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(-1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use kube::api::ObjectMeta;

    #[test]
    fn references_expand_like_the_kubelet() {
        let env = BTreeMap::from([("NODE", "n1"), ("PORT", "80")]);
        assert_eq!(expand("--node=$(NODE):$(PORT)", &env), "--node=n1:80");
        assert_eq!(expand("$(MISSING) stays", &env), "$(MISSING) stays");
        assert_eq!(expand("$$(NODE) is escaped", &env), "$(NODE) is escaped");
        assert_eq!(expand("cost $5 and $(", &env), "cost $5 and $(");
    }

    #[test]
    fn downward_fields_come_from_the_pod() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("agent-x".into()),
                namespace: Some("tortie-system".into()),
                uid: Some("u-1".into()),
                labels: Some(BTreeMap::from([("app".to_string(), "agent".to_string())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                service_account_name: Some("tortie-agent".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod_ip = Some("10.88.1.2".parse().expect("valid"));
        let host = "198.18.1.10".parse().expect("valid");
        let get = |path: &str| field_value(&pod, path, pod_ip, host);
        assert_eq!(get("metadata.name").as_deref(), Ok("agent-x"));
        assert_eq!(get("metadata.namespace").as_deref(), Ok("tortie-system"));
        assert_eq!(get("metadata.uid").as_deref(), Ok("u-1"));
        assert_eq!(get("spec.nodeName").as_deref(), Ok("n1"));
        assert_eq!(
            get("spec.serviceAccountName").as_deref(),
            Ok("tortie-agent")
        );
        assert_eq!(get("status.podIP").as_deref(), Ok("10.88.1.2"));
        assert_eq!(get("status.hostIP").as_deref(), Ok("198.18.1.10"));
        assert_eq!(get("metadata.labels['app']").as_deref(), Ok("agent"));
        assert!(get("spec.nodeSelector").is_err_and(|m| m.contains("not supported")));
    }

    #[test]
    fn restart_rules_follow_the_policy() {
        assert!(RestartRule::new(None, false).restarts(0));
        assert!(!RestartRule::new(Some("OnFailure"), false).restarts(0));
        assert!(RestartRule::new(Some("OnFailure"), false).restarts(1));
        assert!(
            !RestartRule::new(Some("Always"), true).restarts(0),
            "init containers run once"
        );
        assert!(RestartRule::new(Some("Always"), true).restarts(2));
        assert!(!RestartRule::new(Some("Never"), true).restarts(2));
    }

    #[test]
    fn the_mount_script_makes_mount_points_binds_and_runs_the_program() {
        let mounts = [
            BindMount {
                source: "/n/token dir".into(),
                target: SERVICE_ACCOUNT_DIR.into(),
                read_only: true,
                file: false,
            },
            BindMount {
                source: "/n/conf".into(),
                target: "/etc/app/conf".into(),
                read_only: false,
                file: true,
            },
        ];
        let script = mount_script(&mounts);
        let token = format!(
            "mkdir -p {SERVICE_ACCOUNT_DIR}; mount --bind '/n/token dir' {SERVICE_ACCOUNT_DIR}; \
             mount -o remount,bind,ro {SERVICE_ACCOUNT_DIR}; "
        );
        assert!(script.contains(&token), "{script}");
        let file = "mkdir -p /etc/app; [ -e /etc/app/conf ] || : > /etc/app/conf; \
                    mount --bind /n/conf /etc/app/conf;";
        assert!(script.contains(file), "{script}");
        assert!(script.ends_with("exec \"$@\""));
        assert_eq!(
            image_binary(std::path::Path::new("/t"), "/usr/bin/tortie-agent"),
            PathBuf::from("/t/tortie-agent")
        );
    }
}
