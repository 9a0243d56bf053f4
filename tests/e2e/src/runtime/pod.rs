//! One pod's life on the node: sandbox and volumes, init containers in order, then the
//! main containers with probes and restarts, the pod's status, and teardown on deletion or
//! on the runtime's shutdown.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Event as CoreEvent, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::container::{self, ContainerEvent, Control, Launch, RestartRule};
use super::hook::{self, HookTarget};
use super::probe::{self, ProbeTarget, ProbeTracker};
use super::sandbox::{Sandbox, write_atomically};
use super::volume::PodVolumes;
use super::{NodeContext, PodRecord, pod_record_path};

/// How often probes, token refreshes and unwritten status are looked at.
const TICK: Duration = Duration::from_millis(500);

/// The first wait before a failed sandbox or volume setup is tried again; it doubles.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The longest wait between setup attempts.
const MAX_RETRY: Duration = Duration::from_secs(20);

/// The most a pod's processes get to stop when the runtime itself stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The most a pod's processes get when its object vanished without a graceful deletion.
const GONE_GRACE: Duration = Duration::from_secs(2);

/// The kubelet's default termination grace period.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Why a pod's worker stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    /// The pod is being deleted: stop, clean up, then delete the object.
    Deleted,
    /// The object is gone already.
    Gone,
    /// The runtime is stopping; the object stays.
    Shutdown,
}

#[derive(Clone, Debug)]
struct Terminated {
    code: i32,
    reason: String,
    started: Option<Timestamp>,
    finished: Timestamp,
}

#[derive(Clone, Debug)]
enum RunState {
    Waiting { reason: String, message: String },
    Running { since: Timestamp },
    Terminated(Terminated),
}

struct Slot {
    container: Container,
    init: bool,
    state: RunState,
    last: Option<Terminated>,
    restart_count: i32,
    ever_started: bool,
    pid: Option<u32>,
    control: Option<mpsc::UnboundedSender<Control>>,
    task: Option<JoinHandle<()>>,
    readiness: ProbeTracker,
    liveness: ProbeTracker,
}

impl Slot {
    fn new(container: Container, init: bool) -> Slot {
        Slot {
            readiness: ProbeTracker::new(container.readiness_probe.clone()),
            liveness: ProbeTracker::new(container.liveness_probe.clone()),
            container,
            init,
            state: RunState::Waiting {
                reason: "PodInitializing".into(),
                message: String::new(),
            },
            last: None,
            restart_count: 0,
            ever_started: false,
            pid: None,
            control: None,
            task: None,
        }
    }

    fn ready(&self) -> bool {
        matches!(self.state, RunState::Running { .. })
            && (!self.readiness.is_set() || self.readiness.passing == Some(true))
    }

    /// The supervisor has ended for good (the restart rule is satisfied).
    fn finished(&self) -> bool {
        self.task.as_ref().is_some_and(JoinHandle::is_finished)
    }

    fn set_state(&mut self, state: RunState) {
        if let RunState::Terminated(terminated) = &self.state {
            self.last = Some(terminated.clone());
        }
        self.state = state;
    }
}

struct ProbeResult {
    index: usize,
    liveness: bool,
    pid: u32,
    result: Result<(), String>,
}

struct PodWorker {
    ctx: Arc<NodeContext>,
    pod: Arc<Pod>,
    sandbox: Option<Sandbox>,
    pod_ip: Option<IpAddr>,
    volumes: PodVolumes,
    slots: Vec<Slot>,
    next_init: usize,
    mains_started: bool,
    conditions: Vec<(String, String, Timestamp)>,
    start_time: Timestamp,
    last_status: Option<Value>,
    last_record: Option<PodRecord>,
    last_event: Option<String>,
    events: mpsc::UnboundedSender<(usize, ContainerEvent)>,
    probes: mpsc::UnboundedSender<ProbeResult>,
}

/// Runs one pod until it is deleted, its object vanishes, or the runtime stops.
pub async fn run(
    ctx: Arc<NodeContext>,
    mut updates: watch::Receiver<Option<Arc<Pod>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(pod) = updates.borrow_and_update().clone() else {
        return;
    };
    if pod.metadata.deletion_timestamp.is_some() {
        // Nothing of it runs here: the object only has to go.
        delete_object(&ctx, &pod).await;
        return;
    }
    let (events, mut event_rx) = mpsc::unbounded_channel();
    let (probes, mut probe_rx) = mpsc::unbounded_channel();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut slots: Vec<Slot> = spec
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .map(|c| Slot::new(c, true))
        .collect();
    slots.extend(spec.containers.into_iter().map(|c| Slot::new(c, false)));
    let mut worker = PodWorker {
        ctx,
        pod,
        sandbox: None,
        pod_ip: None,
        volumes: PodVolumes::default(),
        slots,
        next_init: 0,
        mains_started: false,
        conditions: Vec::new(),
        start_time: Timestamp::now(),
        last_status: None,
        last_record: None,
        last_event: None,
        events,
        probes,
    };
    info!(pod = %worker.name(), "pod admitted");
    worker.write_status().await;

    let exit = match worker.prepare(&mut updates, &mut shutdown).await {
        Err(exit) => exit,
        Ok(()) => {
            worker.start_next();
            worker.write_status().await;
            let mut tick = tokio::time::interval(TICK);
            loop {
                let exit = tokio::select! {
                    exit = next_exit(&mut updates, &mut shutdown, &mut worker.pod) => Some(exit),
                    Some((index, event)) = event_rx.recv() => {
                        worker.on_container_event(index, event);
                        None
                    }
                    Some(result) = probe_rx.recv() => {
                        worker.on_probe(result);
                        None
                    }
                    _ = tick.tick() => {
                        worker.run_due_probes();
                        worker.refresh_tokens().await;
                        None
                    }
                };
                if let Some(exit) = exit {
                    break exit;
                }
                worker.save_record();
                worker.write_status().await;
            }
        }
    };
    worker.teardown(exit).await;
}

/// Waits until the pod is being deleted, its object is gone, or the runtime stops; keeps
/// `pod` up to date meanwhile.
async fn next_exit(
    updates: &mut watch::Receiver<Option<Arc<Pod>>>,
    shutdown: &mut watch::Receiver<bool>,
    pod: &mut Arc<Pod>,
) -> Exit {
    loop {
        if *shutdown.borrow() {
            return Exit::Shutdown;
        }
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    return Exit::Shutdown;
                }
                let latest = updates.borrow_and_update().clone();
                match latest {
                    None => return Exit::Gone,
                    Some(latest) => {
                        *pod = latest;
                        if pod.metadata.deletion_timestamp.is_some() {
                            return Exit::Deleted;
                        }
                    }
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return Exit::Shutdown;
                }
            }
        }
    }
}

impl PodWorker {
    fn name(&self) -> String {
        format!(
            "{}/{}",
            self.pod.metadata.namespace.as_deref().unwrap_or_default(),
            self.pod.metadata.name.as_deref().unwrap_or_default()
        )
    }

    fn uid(&self) -> String {
        self.pod.metadata.uid.clone().unwrap_or_default()
    }

    fn host_network(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
    }

    fn restart_policy(&self) -> Option<String> {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
    }

    /// Sandbox and volumes, retried with backoff until they work or the pod goes.
    async fn prepare(
        &mut self,
        updates: &mut watch::Receiver<Option<Arc<Pod>>>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Exit> {
        let mut retry = FIRST_RETRY;
        loop {
            let (reason, message) = match self.try_prepare().await {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            warn!(
                pod = %self.name(),
                %reason,
                %message,
                retry = ?retry,
                "pod setup failed; retrying",
            );
            for slot in &mut self.slots {
                slot.state = RunState::Waiting {
                    reason: "ContainerCreating".into(),
                    message: message.clone(),
                };
            }
            if self.last_event.as_deref() != Some(message.as_str()) {
                self.record_event("Warning", &reason, &message).await;
                self.last_event = Some(message);
            }
            self.write_status().await;
            let mut pod = self.pod.clone();
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                exit = next_exit(updates, shutdown, &mut pod) => {
                    self.pod = pod;
                    return Err(exit);
                }
            }
            self.pod = pod;
            retry = (retry * 2).min(MAX_RETRY);
        }
    }

    async fn try_prepare(&mut self) -> Result<(), (String, String)> {
        if self.host_network() {
            self.pod_ip = Some(self.ctx.address);
        } else if self.sandbox.is_none() {
            let mut sandbox = Sandbox::new(&self.pod);
            match sandbox.create(&self.ctx).await {
                Ok(address) => {
                    self.pod_ip = Some(address);
                    self.sandbox = Some(sandbox);
                }
                Err(error) => {
                    return Err((
                        "FailedCreatePodSandBox".into(),
                        format!("Failed to create pod sandbox: {error}"),
                    ));
                }
            }
        }
        self.volumes = PodVolumes::prepare(&self.ctx, &self.pod, self.pod_ip)
            .await
            .map_err(|message| {
                (
                    "FailedMount".to_string(),
                    format!("MountVolume.SetUp failed for {message}"),
                )
            })?;
        self.save_record();
        Ok(())
    }

    /// Starts the next init container, or every main container once init is done.
    fn start_next(&mut self) {
        let inits = self.slots.iter().filter(|slot| slot.init).count();
        if self.next_init < inits {
            self.start(self.next_init);
        } else if !self.mains_started {
            self.mains_started = true;
            for index in inits..self.slots.len() {
                self.start(index);
            }
        }
    }

    fn start(&mut self, index: usize) {
        let pod = self.pod.clone();
        let pod_name = self.name();
        let slot = &mut self.slots[index];
        let mounts = match self.volumes.mounts(&pod, &slot.container) {
            Ok(mounts) => mounts,
            Err(message) => {
                warn!(
                    pod = %pod_name,
                    container = %slot.container.name,
                    %message,
                    "container cannot start",
                );
                slot.state = RunState::Waiting {
                    reason: "CreateContainerConfigError".into(),
                    message,
                };
                return;
            }
        };
        let log = self
            .ctx
            .config
            .node_dir
            .join("var/log/pods")
            .join(format!(
                "{}_{}_{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default(),
                pod.metadata.uid.as_deref().unwrap_or_default()
            ))
            .join(format!("{}.log", slot.container.name));
        let launch = Launch {
            ctx: self.ctx.clone(),
            pod: pod.clone(),
            container: slot.container.clone(),
            netns: self.sandbox.as_ref().map(|sandbox| sandbox.netns.clone()),
            pod_ip: self.pod_ip.unwrap_or(self.ctx.address),
            mounts,
            log,
        };
        let rule = RestartRule::new(
            pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()),
            slot.init,
        );
        let (control, control_rx) = mpsc::unbounded_channel();
        slot.control = Some(control);
        slot.task = Some(tokio::spawn(container::supervise(
            launch,
            rule,
            index,
            self.events.clone(),
            control_rx,
        )));
    }

    fn on_container_event(&mut self, index: usize, event: ContainerEvent) {
        let now = Timestamp::now();
        let slot = &mut self.slots[index];
        match event {
            ContainerEvent::Waiting { reason, message } => {
                slot.set_state(RunState::Waiting { reason, message })
            }
            ContainerEvent::Started { pid } => {
                if slot.ever_started {
                    slot.restart_count += 1;
                }
                slot.ever_started = true;
                slot.pid = Some(pid);
                slot.set_state(RunState::Running { since: now });
                slot.readiness.reset(Instant::now());
                slot.liveness.reset(Instant::now());
            }
            ContainerEvent::Exited { code, reason } => {
                let started = match &slot.state {
                    RunState::Running { since } => Some(*since),
                    _ => None,
                };
                slot.pid = None;
                slot.readiness.stop();
                slot.liveness.stop();
                slot.set_state(RunState::Terminated(Terminated {
                    code,
                    reason,
                    started,
                    finished: now,
                }));
                if slot.init && code == 0 && index == self.next_init {
                    self.next_init += 1;
                    self.start_next();
                }
            }
        }
    }

    fn run_due_probes(&mut self) {
        let now = Instant::now();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(pid) = slot.pid else {
                continue;
            };
            for liveness in [false, true] {
                let tracker = if liveness {
                    &mut slot.liveness
                } else {
                    &mut slot.readiness
                };
                let Some(probe) = tracker.start_if_due(now) else {
                    continue;
                };
                let image = slot.container.image.as_deref().unwrap_or_default();
                let target = ProbeTarget {
                    netns: self.sandbox.as_ref().map(|sandbox| sandbox.netns.clone()),
                    pid,
                    pod_ip: self.pod_ip.unwrap_or(self.ctx.address),
                    self_binary: self.ctx.config.self_binary.clone(),
                    image_bin_dir: super::is_tortie_image(image)
                        .then(|| self.ctx.config.image_bin_dir.clone()),
                };
                let container = slot.container.clone();
                let results = self.probes.clone();
                tokio::spawn(async move {
                    let result = probe::run(&probe, &container, &target).await;
                    let _ = results.send(ProbeResult {
                        index,
                        liveness,
                        pid,
                        result,
                    });
                });
            }
        }
    }

    fn on_probe(&mut self, outcome: ProbeResult) {
        let pod = self.name();
        let grace = self.grace();
        let slot = &mut self.slots[outcome.index];
        if slot.pid != Some(outcome.pid) {
            return;
        }
        let kind = if outcome.liveness {
            "liveness"
        } else {
            "readiness"
        };
        if let Err(message) = &outcome.result {
            debug!(%pod, container = %slot.container.name, kind, %message, "probe failed");
        }
        let tracker = if outcome.liveness {
            &mut slot.liveness
        } else {
            &mut slot.readiness
        };
        if tracker.record(outcome.result.is_ok()) {
            info!(
                %pod,
                container = %slot.container.name,
                kind,
                passing = ?tracker.passing,
                "probe verdict changed",
            );
        }
        if outcome.liveness && slot.liveness.passing == Some(false) {
            warn!(
                %pod,
                container = %slot.container.name,
                "liveness probe failed; restarting the container",
            );
            slot.liveness.stop();
            if let Some(control) = &slot.control {
                let _ = control.send(Control::Restart(grace));
            }
        }
    }

    async fn refresh_tokens(&mut self) {
        let due = self
            .volumes
            .refresh_at
            .is_some_and(|at| Instant::now() >= at);
        if due && let Err(message) = self.volumes.refresh_tokens(&self.ctx, &self.pod).await {
            warn!(pod = %self.name(), %message, "projected token refresh failed; retrying");
            self.volumes.refresh_at = Some(Instant::now() + Duration::from_secs(5));
        }
    }

    fn grace(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(DEFAULT_GRACE_SECONDS);
        Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
    }

    async fn teardown(mut self, exit: Exit) {
        let grace = match exit {
            Exit::Deleted => self.grace(),
            Exit::Gone => self.grace().min(GONE_GRACE),
            Exit::Shutdown => self.grace().min(SHUTDOWN_GRACE),
        };
        info!(pod = %self.name(), ?exit, ?grace, "stopping pod");
        // As the kubelet does, each running container's preStop hook runs first, with the
        // grace period as its deadline; the container's SIGTERM waits for it. The runtime's
        // own shutdown is a node going away, not a pod being deleted: no hooks then.
        let run_hooks = exit != Exit::Shutdown;
        let stops = self.slots.iter_mut().filter_map(|slot| {
            let control = slot.control.take()?;
            let target = slot
                .pid
                .filter(|_| run_hooks && hook::pre_stop(&slot.container).is_some())
                .map(|pid| HookTarget {
                    ctx: self.ctx.clone(),
                    pod: self.pod.clone(),
                    container: slot.container.clone(),
                    pid,
                    pod_ip: self.pod_ip.unwrap_or(self.ctx.address),
                });
            Some(async move {
                let Some(target) = target else {
                    let _ = control.send(Control::Stop(grace));
                    return None;
                };
                let started = Instant::now();
                let result = hook::run_pre_stop(&target, grace).await;
                let rest = hook::remaining_grace(grace, started.elapsed());
                let _ = control.send(Control::Stop(rest));
                result.err()
            })
        });
        let failures: Vec<String> = futures::future::join_all(stops)
            .await
            .into_iter()
            .flatten()
            .collect();
        for message in failures {
            self.record_event("Warning", "FailedPreStopHook", &message)
                .await;
        }
        for slot in &mut self.slots {
            if let Some(task) = slot.task.take() {
                let _ = task.await;
            }
        }
        if let Some(sandbox) = self.sandbox.take()
            && let Err(error) = sandbox.destroy(&self.ctx).await
        {
            warn!(pod = %self.name(), %error, "sandbox teardown left something behind");
            if exit != Exit::Shutdown {
                self.record_event(
                    "Warning",
                    "FailedKillPod",
                    &format!("error killing pod: {error}"),
                )
                .await;
            }
        }
        let dir = self.ctx.pod_dir(&self.uid());
        if let Err(error) = std::fs::remove_dir_all(&dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            warn!(pod = %self.name(), %error, "pod directory could not be removed");
        }
        if exit == Exit::Deleted {
            delete_object(&self.ctx, &self.pod).await;
        }
        info!(pod = %self.name(), "pod stopped");
    }

    fn save_record(&mut self) {
        let record = PodRecord {
            namespace: self.pod.metadata.namespace.clone().unwrap_or_default(),
            name: self.pod.metadata.name.clone().unwrap_or_default(),
            uid: self.uid(),
            netns: self.sandbox.as_ref().map(|sandbox| sandbox.netns.clone()),
            pod_ip: self.pod_ip,
            containers: self
                .slots
                .iter()
                .filter_map(|slot| Some((slot.container.name.clone(), slot.pid?)))
                .collect(),
        };
        if self.last_record.as_ref() == Some(&record) {
            return;
        }
        let path = pod_record_path(&self.ctx.config.node_dir, &self.uid());
        let bytes = serde_json::to_vec_pretty(&record).expect("a pod record serialises");
        match write_atomically(&path, &bytes) {
            Ok(()) => self.last_record = Some(record),
            Err(error) => warn!(pod = %self.name(), %error, "pod record could not be written"),
        }
    }

    /// Writes the status when it changed since the last successful write.
    async fn write_status(&mut self) {
        let status = self.status();
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let pods: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        match pods
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
        {
            Ok(_) => self.last_status = Some(status),
            Err(error) => {
                debug!(pod = %self.name(), %error, "status not written; retrying on the next tick")
            }
        }
    }

    fn status(&mut self) -> Value {
        let mains: Vec<&Slot> = self.slots.iter().filter(|s| !s.init).collect();
        let inits: Vec<&Slot> = self.slots.iter().filter(|s| s.init).collect();
        let never = self.restart_policy().as_deref() == Some("Never");
        let init_failed = never
            && inits.iter().any(|s| {
                s.finished() && matches!(&s.state, RunState::Terminated(t) if t.code != 0)
            });
        let initialized = self.next_init >= inits.len();
        let all_done = !mains.is_empty() && mains.iter().all(|s| s.finished());
        let all_succeeded = mains
            .iter()
            .all(|s| matches!(&s.state, RunState::Terminated(t) if t.code == 0));
        let phase = if init_failed || (all_done && !all_succeeded) {
            "Failed"
        } else if all_done {
            "Succeeded"
        } else if initialized && mains.iter().any(|s| s.ever_started) {
            "Running"
        } else {
            "Pending"
        };
        let unready: Vec<&str> = mains
            .iter()
            .filter(|s| !s.ready())
            .map(|s| s.container.name.as_str())
            .collect();
        let uninitialized: Vec<&str> = inits
            .iter()
            .skip(self.next_init)
            .map(|s| s.container.name.as_str())
            .collect();
        let sandbox_ready = self.pod_ip.is_some();
        let (ready_reason, ready_message) = if phase == "Succeeded" || phase == "Failed" {
            ("PodCompleted", String::new())
        } else {
            (
                "ContainersNotReady",
                format!("containers with unready status: [{}]", unready.join(" ")),
            )
        };
        let conditions = [
            (
                "PodReadyToStartContainers",
                sandbox_ready,
                "",
                String::new(),
            ),
            (
                "Initialized",
                initialized,
                "ContainersNotInitialized",
                format!(
                    "containers with incomplete status: [{}]",
                    uninitialized.join(" ")
                ),
            ),
            (
                "Ready",
                unready.is_empty() && phase == "Running",
                ready_reason,
                ready_message.clone(),
            ),
            (
                "ContainersReady",
                unready.is_empty() && phase == "Running",
                ready_reason,
                ready_message,
            ),
            ("PodScheduled", true, "", String::new()),
        ];
        let now = Timestamp::now();
        let conditions: Vec<Value> = conditions
            .into_iter()
            .map(|(type_, holds, reason, message)| {
                let status = if holds { "True" } else { "False" };
                let transition = match self.conditions.iter_mut().find(|(t, _, _)| t == type_) {
                    Some((_, last, time)) if last == status => *time,
                    Some(entry) => {
                        *entry = (type_.to_string(), status.to_string(), now);
                        now
                    }
                    None => {
                        self.conditions
                            .push((type_.to_string(), status.to_string(), now));
                        now
                    }
                };
                let mut condition = json!({
                    "type": type_,
                    "status": status,
                    "lastTransitionTime": transition.to_string(),
                    "lastProbeTime": null,
                });
                if !holds && !reason.is_empty() {
                    condition["reason"] = json!(reason);
                    condition["message"] = json!(message);
                }
                condition
            })
            .collect();
        let sandbox_id = self
            .sandbox
            .as_ref()
            .map_or("host", |sandbox| sandbox.id.as_str());
        let container_status = |slot: &Slot| container_status(slot, sandbox_id);
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.ctx.address.to_string(),
            "hostIPs": [{ "ip": self.ctx.address.to_string() }],
            "startTime": self.start_time.to_string(),
            "containerStatuses": mains.iter().map(|s| container_status(s)).collect::<Vec<_>>(),
            "initContainerStatuses": inits.iter().map(|s| container_status(s)).collect::<Vec<_>>(),
        });
        if let Some(ip) = self.pod_ip {
            status["podIP"] = json!(ip.to_string());
            status["podIPs"] = json!([{ "ip": ip.to_string() }]);
        }
        json!({ "status": status })
    }

    async fn record_event(&self, type_: &str, reason: &str, message: &str) {
        let namespace = self
            .pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let pod_name = self.pod.metadata.name.clone().unwrap_or_default();
        let now = Timestamp::now();
        let event: Result<CoreEvent, _> = serde_json::from_value(json!({
            "metadata": {
                "name": format!("{pod_name}.{}", super::random_id(8)),
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": namespace,
                "name": pod_name,
                "uid": self.uid(),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": { "component": "tortie-node-runtime", "host": self.ctx.config.node },
            "firstTimestamp": now.to_string(),
            "lastTimestamp": now.to_string(),
            "count": 1,
            "reportingComponent": "tortie-node-runtime",
            "reportingInstance": self.ctx.config.node,
        }));
        let Ok(event) = event else {
            return;
        };
        let events: Api<CoreEvent> = Api::namespaced(self.ctx.client.clone(), &namespace);
        if let Err(error) = events.create(&PostParams::default(), &event).await {
            warn!(pod = %self.name(), %reason, %error, "event could not be recorded");
        }
    }
}

fn container_status(slot: &Slot, sandbox_id: &str) -> Value {
    let container_id = format!("tortie://{sandbox_id}-{}", slot.container.name);
    let state = |state: &RunState| match state {
        RunState::Waiting { reason, message } => {
            json!({ "waiting": { "reason": reason, "message": message } })
        }
        RunState::Running { since } => json!({ "running": { "startedAt": since.to_string() } }),
        RunState::Terminated(terminated) => terminated_json(terminated, &container_id),
    };
    json!({
        "name": slot.container.name,
        "image": slot.container.image.clone().unwrap_or_default(),
        "imageID": "",
        "containerID": container_id,
        "ready": slot.ready(),
        "started": matches!(slot.state, RunState::Running { .. }),
        "restartCount": slot.restart_count,
        "state": state(&slot.state),
        "lastState": slot.last.as_ref().map_or(json!({}), |t| terminated_json(t, &container_id)),
    })
}

fn terminated_json(terminated: &Terminated, container_id: &str) -> Value {
    json!({ "terminated": {
        "exitCode": terminated.code,
        "reason": terminated.reason,
        "startedAt": terminated.started.map(|t| t.to_string()),
        "finishedAt": terminated.finished.to_string(),
        "containerID": container_id,
    }})
}

/// Deletes the Pod object with grace period 0, as the kubelet does once the pod's
/// processes and sandbox are gone. The UID precondition keeps a new pod of the same name safe.
async fn delete_object(ctx: &NodeContext, pod: &Pod) {
    let pods: Api<Pod> = Api::namespaced(
        ctx.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let name = pod.metadata.name.clone().unwrap_or_default();
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    for attempt in 1..=5 {
        match pods.delete(&name, &params).await {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => return,
            Err(error) => {
                warn!(pod = %name, %error, attempt, "pod object could not be deleted; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
