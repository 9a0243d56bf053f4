//! The agent's main loop: watch this node's `NodeNetworkConfig`, program the kernel to
//! match it, keep it matching (timer and kernel events), install the CNI conflist once the
//! node works, and report back.
//!
//! Three tasks share the work, joined by latest-value channels so none waits on another:
//! the config watcher maps each new generation to a plan, the resync task owns the kernel
//! connection, and the status writer talks to the API server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tortie_crds::node_network_config::NodeNetworkConfig;
use tracing::{debug, info, warn};

use super::cni_config::{self, ConflistSettings};
use super::health::{self, DEFAULT_HEALTH_ADDR, Health};
use super::node_config::{self, NodeFacts, NodePlan};
use super::node_status::{self, Outcome, Programmed};
use crate::dataplane::watch::RouteWatch;
use crate::dataplane::{Dataplane, DataplaneError};

/// The first wait after a failed apply; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The longest wait between attempts to apply a config that fails.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// How long the loops get to finish after being told to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The loop's settings; each can come from the environment, as the Helm chart sets them.
#[derive(clap::Args, Debug, Clone)]
pub struct LoopArgs {
    /// Where the CNI conflist is written.
    #[arg(long, env = "TORTIE_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,

    /// Where the CNI plugin binaries are (`portmap` is chained when found here).
    #[arg(long, env = "TORTIE_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,

    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "TORTIE_HEALTH_ADDR", default_value = DEFAULT_HEALTH_ADDR)]
    pub health_addr: SocketAddr,

    /// Whether this node may run BGP (the config's `bgp` section is only acted on then).
    #[arg(
        long,
        env = "TORTIE_BGP_ENABLED",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub bgp_enabled: bool,

    /// Pod MTU; 0 takes the config's, or derives it from the host interface.
    #[arg(long, env = "TORTIE_MTU", default_value_t = 0)]
    pub mtu: u32,
}

/// Why the loop could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The health address could not be bound.
    #[error(
        "cannot serve health checks on {address}: {source}; set TORTIE_HEALTH_ADDR to a free \
         address"
    )]
    Health {
        /// The address.
        address: SocketAddr,
        /// The system's error.
        source: std::io::Error,
    },
    /// The kernel connection could not be opened.
    #[error("cannot open the data path: {0}")]
    Dataplane(#[from] DataplaneError),
}

/// The running loops; [`NodeLoop::stop`] ends them.
pub struct NodeLoop {
    health: Health,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    health_server: JoinHandle<()>,
}

/// What the watcher hands the resync task: one generation's plan (or why there is none)
/// and what status needs.
#[derive(Debug, Clone)]
struct Desired {
    plan: Result<NodePlan, String>,
    template: Outcome,
}

/// What set off a resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Config,
    Timer,
    Kernel,
}

impl NodeLoop {
    /// Opens the kernel connection, binds the health address and starts the loops.
    pub async fn start(
        client: kube::Client,
        node_name: &str,
        ipam_socket: &Path,
        args: &LoopArgs,
    ) -> Result<Self, StartError> {
        let health = Health::new(ipam_socket.to_owned());
        let listener =
            health::bind(args.health_addr)
                .await
                .map_err(|source| StartError::Health {
                    address: args.health_addr,
                    source,
                })?;
        let dataplane = Dataplane::connect()?;
        let events = RouteWatch::subscribe()?;

        let (stop, stop_rx) = watch::channel(false);
        let (desired_tx, desired_rx) = watch::channel(None);
        let (outcome_tx, outcome_rx) = watch::channel(None);

        let watcher = watch_config(
            client.clone(),
            node_name.to_owned(),
            args.clone(),
            desired_tx,
            stop_rx.clone(),
        );
        let resync = Resync {
            dataplane,
            events,
            conf_dir: args.cni_conf_dir.clone(),
            bin_dir: args.cni_bin_dir.clone(),
            ipam_socket: ipam_socket.to_owned(),
            health: health.clone(),
            outcomes: outcome_tx,
        }
        .run(desired_rx, stop_rx.clone());
        let address =
            super::node_address::run(client.clone(), node_name.to_owned(), stop_rx.clone());
        let writer = node_status::run_writer(
            client,
            node_name.to_owned(),
            outcome_rx,
            health.clone(),
            stop_rx,
        );

        let tasks = vec![
            spawn_loop("config watcher", health.clone(), watcher),
            spawn_loop("resync", health.clone(), resync),
            spawn_loop("status writer", health.clone(), writer),
            spawn_loop("address publisher", health.clone(), address),
        ];
        let health_server = tokio::spawn({
            let health = health.clone();
            async move {
                if let Err(error) = health::serve(listener, health).await {
                    warn!(%error, "Health endpoint stopped");
                }
            }
        });
        health.set_running(true);
        info!(
            node = node_name,
            health = %args.health_addr,
            conf_dir = %args.cni_conf_dir.display(),
            "Node loop started"
        );
        Ok(Self {
            health,
            stop,
            tasks,
            health_server,
        })
    }

    /// The state the health endpoint serves.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Tells the loops to stop and waits briefly for them; the data path is left as it is
    /// (pods keep working while the agent restarts) and so is the conflist.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(STOP_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
        self.health.set_running(false);
        self.health_server.abort();
        info!("Node loop stopped");
    }
}

/// Spawns one loop; its end, whatever the cause, makes the agent not live.
fn spawn_loop(
    name: &'static str,
    health: Health,
    body: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        body.await;
        health.set_running(false);
        debug!(task = name, "Loop ended");
    })
}

/// Watches this node's config only (a field selector on its name), and turns each new
/// generation into a plan for the resync task, or into the reason it cannot be applied.
///
/// A deleted config leaves the kernel as it was: the operator writes it again, and tearing
/// down the routes on a passing delete would cut the node's pods off.
///
/// Known limitation: the Node's address and the host MTU are read when a generation
/// arrives, so a config that fails only for want of the Node's InternalIP is tried again
/// at its next change or at an agent restart, not when the Node gets the address.
async fn watch_config(
    client: kube::Client,
    node_name: String,
    args: LoopArgs,
    desired: watch::Sender<Option<Desired>>,
    mut stop: watch::Receiver<bool>,
) {
    let configs: Api<NodeNetworkConfig> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client);
    let selector = format!("metadata.name={node_name}");
    let mut stream = watcher(configs, watcher::Config::default().fields(&selector))
        .default_backoff()
        .applied_objects()
        .boxed();
    let mut last_seen: Option<(Option<i64>, NodeNetworkConfig)> = None;

    loop {
        let next = tokio::select! {
            next = stream.try_next() => next,
            _ = stop.changed() => return,
        };
        let config = match next {
            Ok(Some(config)) => config,
            Ok(None) => return,
            Err(error) => {
                warn!(node = %node_name, %error, "NodeNetworkConfig watch failed; retrying");
                continue;
            }
        };
        let generation = config.metadata.generation;
        // Status writes come back as events too; only a new spec needs a new plan.
        if last_seen
            .as_ref()
            .is_some_and(|(seen, old)| *seen == generation && old.spec == config.spec)
        {
            continue;
        }
        last_seen = Some((generation, config.clone()));

        let facts = node_facts(&nodes, &node_name, &config, &args).await;
        let bgp_sessions = config
            .spec
            .bgp
            .as_ref()
            .filter(|bgp| bgp.enabled && args.bgp_enabled)
            .map(|bgp| bgp.sessions.len());
        let template = Outcome {
            generation,
            result: Err(String::new()),
            blocks: config.spec.blocks.clone(),
            bgp_sessions,
            seen_status: config.status.clone(),
        };
        let plan = match node_config::plan(&node_name, &config.spec, facts) {
            Ok(plan) => {
                info!(
                    node = %node_name,
                    ?generation,
                    blocks = plan.dataplane.local_blocks.len(),
                    routes = plan.dataplane.remote_blocks.len(),
                    "New node config"
                );
                for part in &plan.ignored {
                    warn!(node = %node_name, ?generation, part = %part, "Part of the node config is not applied");
                }
                Ok(plan)
            }
            Err(errors) => {
                warn!(node = %node_name, ?generation, %errors, "Node config cannot be applied");
                Err(format!("NodeNetworkConfig {node_name}: {errors}"))
            }
        };
        let _ = desired.send(Some(Desired { plan, template }));
    }
}

/// What the mapping needs from outside the config: the Node's InternalIP, and the host
/// MTU when the pod MTU has to be derived.
async fn node_facts(
    nodes: &Api<Node>,
    node_name: &str,
    config: &NodeNetworkConfig,
    args: &LoopArgs,
) -> NodeFacts {
    let underlay_address = match nodes.get_opt(node_name).await {
        Ok(node) => node.as_ref().and_then(internal_ipv4),
        Err(error) => {
            warn!(node = node_name, %error, "Could not read the Node for its address");
            None
        }
    };
    let host_mtu = match (args.mtu, config.spec.mtu, underlay_address) {
        (0, None, Some(address)) => host_mtu(address).await,
        _ => None,
    };
    NodeFacts {
        underlay_address,
        host_mtu,
        mtu_override: Some(args.mtu).filter(|mtu| *mtu > 0),
    }
}

/// The Node's first IPv4 InternalIP.
pub(crate) fn internal_ipv4(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|address| address.type_ == "InternalIP")
        .find_map(|address| match address.address.parse() {
            Ok(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })
}

/// MTU of the interface that holds `address`.
async fn host_mtu(address: Ipv4Addr) -> Option<u32> {
    use netlink_packet_route::address::AddressAttribute;
    use netlink_packet_route::link::LinkAttribute;

    let (connection, handle, _) = rtnetlink::new_connection().ok()?;
    let connection = tokio::spawn(connection);
    let found = async {
        let mut addresses = handle.address().get().execute();
        let mut index = None;
        while let Ok(Some(message)) = addresses.try_next().await {
            let holds = message.attributes.iter().any(|attribute| {
                matches!(attribute, AddressAttribute::Local(IpAddr::V4(ip))
                    | AddressAttribute::Address(IpAddr::V4(ip)) if *ip == address)
            });
            if holds {
                index = Some(message.header.index);
                break;
            }
        }
        let mut links = handle.link().get().match_index(index?).execute();
        let link = links.try_next().await.ok()??;
        link.attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
    }
    .await;
    connection.abort();
    found
}

/// The task that owns the kernel connection.
struct Resync {
    dataplane: Dataplane,
    events: RouteWatch,
    conf_dir: PathBuf,
    bin_dir: PathBuf,
    ipam_socket: PathBuf,
    health: Health,
    outcomes: watch::Sender<Option<Outcome>>,
}

impl Resync {
    /// Applies the latest plan on every new config, every refresh interval (sooner after a
    /// failure, with backoff) and on kernel events that touch Tortie's routes. A config
    /// that cannot be mapped is reported, while the last one that could is kept in the
    /// kernel.
    async fn run(
        mut self,
        mut desired: watch::Receiver<Option<Desired>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut next_timer: Option<Instant> = None;
        let mut retry = FIRST_RETRY;
        let mut kept: Option<(NodePlan, Outcome)> = None;

        loop {
            let table = kept
                .as_ref()
                .map_or(crate::dataplane::MAIN_TABLE, |(plan, _)| {
                    plan.dataplane.route_table
                });
            let trigger = tokio::select! {
                _ = stop.changed() => return,
                changed = desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    Trigger::Config
                }
                () = sleep_until(next_timer) => Trigger::Timer,
                alive = self.events.changed(table) => {
                    if !alive {
                        warn!("Kernel event subscription ended; subscribing again");
                        match RouteWatch::subscribe() {
                            Ok(events) => self.events = events,
                            Err(error) => {
                                warn!(%error, "Cannot subscribe to kernel events");
                                return;
                            }
                        }
                    }
                    Trigger::Kernel
                }
            };
            let Some(current) = desired.borrow_and_update().clone() else {
                // Nothing is programmed before the first config arrives: an empty plan
                // would remove the routes a restarted agent left in place.
                continue;
            };

            if let Ok(plan) = &current.plan {
                kept = Some((plan.clone(), current.template.clone()));
            }
            let Some((plan, template)) = &kept else {
                let _ = self.outcomes.send(Some(reported(&current, None)));
                continue;
            };

            let full = trigger != Trigger::Kernel;
            let outcome = self.apply(plan, template, full).await;
            let ok = outcome.result.is_ok();
            if ok {
                retry = FIRST_RETRY;
                next_timer = plan
                    .refresh_interval
                    .map(|interval| Instant::now() + interval);
            } else if full {
                next_timer = Some(Instant::now() + retry);
                retry = (retry * 2).min(MAX_RETRY);
            } else {
                // A failed route pass: the next full pass comes soon.
                next_timer = Some(
                    next_timer.map_or(Instant::now() + retry, |at| at.min(Instant::now() + retry)),
                );
            }
            debug!(?trigger, ok, "Resync done");
            let _ = self.outcomes.send(Some(reported(&current, Some(outcome))));
        }
    }

    async fn apply(&mut self, plan: &NodePlan, template: &Outcome, full: bool) -> Outcome {
        let spec = &plan.dataplane;
        let result = if full {
            self.dataplane.reconcile(spec).await
        } else {
            self.dataplane.reconcile_routes(spec).await
        };
        let changes = match &result {
            Ok(report) => report.created + report.replaced + report.deleted,
            Err(DataplaneError::Routes(report)) => {
                report.created + report.replaced + report.deleted
            }
            Err(_) => 0,
        };
        self.health.resynced(full, result.is_ok(), changes);

        let result = match result {
            Ok(_) => self.install_conflist(plan).map(|()| Programmed {
                blocks: spec.local_blocks.len(),
                routes: spec.remote_blocks.len(),
            }),
            Err(error) => {
                warn!(node = %spec.node_name, full, %error, "Applying the node config failed");
                Err(error.to_string())
            }
        };
        if result.is_ok() {
            self.health.programmed(template.generation);
        }
        Outcome {
            result,
            ..template.clone()
        }
    }

    /// Writes the conflist when its content changes (the first success writes it).
    fn install_conflist(&self, plan: &NodePlan) -> Result<(), String> {
        let settings = ConflistSettings::new(plan.pod_mtu, &self.ipam_socket, &self.bin_dir);
        let text = cni_config::render(&settings);
        match cni_config::write_conflist(&self.conf_dir, &text) {
            Ok(true) => {
                info!(
                    path = %self.conf_dir.join(cni_config::CONFLIST_NAME).display(),
                    mtu = ?settings.mtu,
                    portmap = settings.portmap,
                    "CNI conflist written"
                );
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(error) => Err(format!("the CNI conflist could not be written: {error}")),
        }
    }
}

/// What to report after a pass: the pass's own outcome, unless the newest config could
/// not be mapped, which stays the news until it is fixed.
fn reported(current: &Desired, applied: Option<Outcome>) -> Outcome {
    match (&current.plan, applied) {
        (Ok(_), Some(outcome)) => outcome,
        (Err(message), _) => Outcome {
            result: Err(message.clone()),
            ..current.template.clone()
        },
        (Ok(_), None) => Outcome {
            result: Err("the node config was not applied".to_owned()),
            ..current.template.clone()
        },
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: LoopArgs,
    }

    #[test]
    fn defaults_match_the_chart_contract() {
        let args = Wrapper::try_parse_from(["t"]).expect("defaults").args;
        assert_eq!(args.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(args.cni_bin_dir, PathBuf::from("/opt/cni/bin"));
        assert_eq!(args.health_addr.to_string(), "0.0.0.0:9099");
        assert!(!args.bgp_enabled);
        assert_eq!(args.mtu, 0);

        let args = Wrapper::try_parse_from(["t", "--bgp-enabled", "true", "--mtu", "1400"])
            .expect("flags")
            .args;
        assert!(args.bgp_enabled);
        assert_eq!(args.mtu, 1400);
    }

    #[test]
    fn the_internal_ipv4_is_the_underlay_address() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "a"},
                {"type": "InternalIP", "address": "fd00::1"},
                {"type": "InternalIP", "address": "198.18.1.10"},
            ]}
        }))
        .expect("node");
        assert_eq!(internal_ipv4(&node), Some(Ipv4Addr::new(198, 18, 1, 10)));
    }
}
