//! The operator's life: serve health and metrics, watch, compete for the lease, and while
//! leading run the writers; exit non-zero on losing the lease, cleanly on SIGTERM.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cli::Args;
use crate::default_pool::{DefaultPoolSettings, ensure_default_pool};
use crate::error::{Error, Result};
use crate::health::{FirstPass, Health};
use crate::ipam_gc::{GcContext, GcSettings};
use crate::metrics::Metrics;
use crate::node_config::{NodeConfigContext, NodeConfigSettings};
use crate::pool::PoolContext;
use crate::world::{Kind, World};
use crate::{cluster_objects, health, ipam_gc, node_config, pool};

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "tortie-operator";
/// Name the operator reports Events under.
const REPORTER: &str = "tortie-operator";
/// First retry delay after a transient failure; doubled per failure.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How long the writers get to finish their current work on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often the cluster singletons are checked even when no watch said so.
const SINGLETON_RESYNC: Duration = Duration::from_secs(600);

/// How the operator stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM or SIGINT; the lease was released.
    Signal,
    /// Another replica holds the lease now; this process must exit non-zero.
    LostLease,
}

/// Per-object retry delays for transient failures: 1 s, 2 s, 4 s ... up to 5 minutes, and
/// back to the start after a success.
#[derive(Default)]
pub struct Backoffs {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoffs {
    /// The delay before retrying `name`, counting this failure.
    pub fn next(&self, name: &str) -> Duration {
        let mut failures = self.lock();
        let count = failures.entry(name.to_owned()).or_default();
        let delay = BACKOFF_START
            .checked_mul(2u32.saturating_pow(*count))
            .unwrap_or(BACKOFF_MAX)
            .min(BACKOFF_MAX);
        *count = count.saturating_add(1);
        delay
    }

    /// What a controller does after reconciling the `kind` object `name` failed: a
    /// permanent error waits for the object to change; a transient one is retried after
    /// this object's next backoff delay.
    pub fn after_error(
        &self,
        kind: &str,
        name: &str,
        error: &Error,
    ) -> kube::runtime::controller::Action {
        use kube::runtime::controller::Action;
        if error.is_permanent() {
            tracing::warn!(kind, name, %error, "Reconcile waits until the object changes");
            return Action::await_change();
        }
        let delay = self.next(name);
        tracing::warn!(kind, name, %error, retry_in = ?delay, "Reconcile failed; retrying");
        Action::requeue(delay)
    }

    /// Forgets the failures of `name`.
    pub fn reset(&self, name: &str) {
        self.lock().remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs the operator until a signal or the loss of the lease.
pub async fn run(args: Args) -> Result<Stopped> {
    let client = Client::try_default().await?;
    let identity = args
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("tortie-operator-{}", &cluster_objects::random_guid()[..8]));
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        %identity,
        lease = %format!("{}/{}", args.lease_namespace, args.lease_name),
        "Starting tortie-operator"
    );

    let metrics = Arc::new(Metrics::new());
    let world = World::new();
    let health = Health::new(world.clone());
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| Error::Serve {
            addr: args.metrics_addr,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(args.metrics_addr);
    tracing::info!(addr = %bound, "Serving /metrics, /healthz and /readyz");
    let server = tokio::spawn({
        let router = health::router(health.clone(), metrics.clone());
        async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "Metrics and health server stopped");
            }
        }
    });

    let watches = world.start(&client, &metrics);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(forward_signals(shutdown_tx));

    let stopped = lead_when_elected(
        &args,
        &identity,
        &client,
        &world,
        &health,
        &metrics,
        shutdown_rx,
    )
    .await;

    for task in watches {
        task.abort();
    }
    server.abort();
    stopped
}

/// Competes for the lease; while holding it runs the writers. Returns on a signal (after
/// releasing the lease) or when the lease is lost.
async fn lead_when_elected(
    args: &Args,
    identity: &str,
    client: &Client,
    world: &Arc<World>,
    health: &Arc<Health>,
    metrics: &Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<Stopped> {
    if args.lease_renew_grace >= args.lease_duration {
        return Err(Error::LeaseTimes {
            grace: args.lease_renew_grace,
            duration: args.lease_duration,
        });
    }
    let lease_error = |source| Error::Lease {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_parameters(LeaseParams::new(
            identity,
            args.lease_duration,
            args.lease_renew_grace,
        ))
        .build()
        .await
        .map_err(lease_error)?;
    let (mut leading, lease_task) = manager.watch().await;

    let release = |leading: watch::Receiver<bool>| async move {
        // Closing the channel makes the lease task release the lease and end.
        drop(leading);
        match tokio::time::timeout(SHUTDOWN_GRACE, lease_task).await {
            Ok(Ok(Ok(_))) => tracing::info!("Released the lease"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "Could not release the lease"),
            Ok(Err(error)) => tracing::warn!(%error, "Lease task failed"),
            Err(_) => tracing::warn!("Timed out releasing the lease"),
        }
    };

    tracing::info!("Waiting to become the leader");
    let elected = tokio::select! {
        elected = leading.wait_for(|l| *l) => Some(elected.is_ok()),
        _ = signalled(shutdown.clone()) => None,
    };
    match elected {
        Some(true) => {}
        Some(false) => {
            return Err(Error::LeaseEnded {
                namespace: args.lease_namespace.clone(),
                name: args.lease_name.clone(),
            });
        }
        None => {
            release(leading).await;
            return Ok(Stopped::Signal);
        }
    }
    tracing::info!("Became the leader");
    metrics.set_leader(true);

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut writers = JoinSet::new();
    let leader = Leader {
        client: client.clone(),
        world: world.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: REPORTER.into(),
                instance: Some(identity.to_owned()),
            },
        ),
        default_pool: DefaultPoolSettings {
            cidr: args.default_pool_cidr,
            encapsulation: args.default_pool_encapsulation,
            block_size: args.default_block_size,
            nat_outgoing: args.default_pool_nat_outgoing,
            node_selector: args
                .default_pool_node_selector
                .clone()
                .filter(|selector| !selector.trim().is_empty()),
        },
        node_settings: NodeConfigSettings {
            uplink_mtu: args.uplink_mtu,
        },
        gc_settings: GcSettings {
            interval: Duration::from_secs(args.ipam_gc_interval),
            grace: Duration::from_secs(args.ipam_gc_grace),
        },
    };
    leader.spawn(&mut writers, health, stop_rx);

    let stopped = tokio::select! {
        _ = leading.wait_for(|l| !*l) => Stopped::LostLease,
        _ = signalled(shutdown) => Stopped::Signal,
    };
    metrics.set_leader(false);
    if stopped == Stopped::LostLease {
        tracing::error!("Lost the lease to another replica; exiting so that only one writes");
        writers.abort_all();
        return Ok(Stopped::LostLease);
    }

    tracing::info!("Shutting down");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while writers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("Writers did not stop in time; abandoning them");
        writers.abort_all();
    }
    release(leading).await;
    Ok(Stopped::Signal)
}

/// What the leader's writers share.
struct Leader {
    client: Client,
    world: Arc<World>,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    default_pool: DefaultPoolSettings,
    node_settings: NodeConfigSettings,
    gc_settings: GcSettings,
}

impl Leader {
    fn spawn(self, writers: &mut JoinSet<()>, health: &Health, stop: watch::Receiver<bool>) {
        let singletons = FirstPass::new("cluster objects");
        let pools = FirstPass::new("IPPools");
        let nodes = FirstPass::new("NodeNetworkConfigs");
        health.lead(vec![singletons.clone(), pools.clone(), nodes.clone()]);

        let pool_ctx = Arc::new(PoolContext {
            client: self.client.clone(),
            world: self.world.clone(),
            metrics: self.metrics.clone(),
            recorder: self.recorder.clone(),
            backoffs: Backoffs::default(),
            first_pass: pools.clone(),
        });
        let node_ctx = Arc::new(NodeConfigContext {
            client: self.client.clone(),
            world: self.world.clone(),
            metrics: self.metrics.clone(),
            settings: self.node_settings.clone(),
            backoffs: Backoffs::default(),
            first_pass: nodes.clone(),
        });

        let gc_ctx = Arc::new(GcContext {
            client: self.client.clone(),
            world: self.world.clone(),
            metrics: self.metrics.clone(),
            settings: self.gc_settings,
        });

        let stop_singletons = stop.clone();
        let world = self.world.clone();
        let stop_gc = stop.clone();
        writers.spawn(async move {
            world.wait_synced().await;
            ipam_gc::run(gc_ctx, signalled(stop_gc)).await;
        });

        let world = self.world.clone();
        let stop_pools = stop.clone();
        writers.spawn(async move {
            world.wait_synced().await;
            pools.start(world.pools.entries().into_keys());
            pool::run(pool_ctx, signalled(stop_pools)).await;
        });

        let world = self.world.clone();
        writers.spawn(async move {
            world.wait_synced().await;
            nodes.start(world.nodes.entries().into_keys());
            node_config::run(node_ctx, signalled(stop)).await;
        });

        let world = self.world.clone();
        let stop_writers = stop_singletons;
        writers.spawn(async move {
            world.wait_synced().await;
            self.keep_singletons(&singletons, stop_writers).await;
        });
    }

    /// Creates the default pool once, then keeps ClusterInformation and IPAMConfig,
    /// retrying transient failures with backoff.
    async fn keep_singletons(self, pass: &FirstPass, mut stop: watch::Receiver<bool>) {
        pass.start([String::from("singletons")]);
        let backoffs = Backoffs::default();
        loop {
            let result = ensure_default_pool(
                &self.client,
                &self.world,
                &self.default_pool,
                &self.recorder,
            )
            .await;
            match result {
                Ok(()) => break,
                Err(error) => {
                    let delay = backoffs.next("default pool");
                    tracing::warn!(%error, retry_in = ?delay, "Could not create the default pool");
                    if sleep_or_stop(delay, &mut stop).await {
                        return;
                    }
                }
            }
        }

        let mut changes = Box::pin(
            self.world
                .changes(&[Kind::ClusterInformation, Kind::IPAMConfig]),
        );
        loop {
            let started = std::time::Instant::now();
            let result = cluster_objects::ensure(&self.client, &self.world).await;
            self.metrics.reconciled(
                Kind::ClusterInformation.as_str(),
                started.elapsed(),
                result.is_err(),
            );
            let wait = match result {
                Ok(()) => {
                    backoffs.reset("singletons");
                    pass.done("singletons");
                    SINGLETON_RESYNC
                }
                Err(error) => {
                    let delay = backoffs.next("singletons");
                    tracing::warn!(%error, retry_in = ?delay, "Could not write the cluster objects");
                    delay
                }
            };
            tokio::select! {
                _ = changes.next() => {}
                stopped = sleep_or_stop(wait, &mut stop) => if stopped { return },
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

/// Sleeps for `delay`; true when stopped meanwhile.
async fn sleep_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    stopped || *stop.borrow()
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn signalled(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Turns SIGTERM and SIGINT into `true` on `shutdown`.
async fn forward_signals(shutdown: watch::Sender<bool>) {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "Cannot listen for SIGTERM; stopping on SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
                let _ = shutdown.send(true);
                return;
            }
        };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("Received SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("Received SIGINT"),
    }
    let _ = shutdown.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let backoffs = Backoffs::default();
        assert_eq!(backoffs.next("a"), Duration::from_secs(1));
        assert_eq!(backoffs.next("a"), Duration::from_secs(2));
        assert_eq!(backoffs.next("a"), Duration::from_secs(4));
        assert_eq!(backoffs.next("b"), Duration::from_secs(1), "per object");
        for _ in 0..40 {
            backoffs.next("a");
        }
        assert_eq!(backoffs.next("a"), BACKOFF_MAX);
        backoffs.reset("a");
        assert_eq!(backoffs.next("a"), Duration::from_secs(1));
    }
}
