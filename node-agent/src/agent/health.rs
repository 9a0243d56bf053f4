//! The agent's health endpoint: `/healthz` (the loops are running), `/readyz` (IPAM is
//! served and the node has been programmed at least once) and `/metrics` in the
//! Prometheus text format.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The address served when `TORTIE_HEALTH_ADDR` is not set (Calico's Felix health port).
pub const DEFAULT_HEALTH_ADDR: &str = "0.0.0.0:9099";

/// Shared view of the agent's state, cheap to clone; the loops update it and the health
/// endpoint reads it.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    ipam_socket: PathBuf,
    loops_running: AtomicBool,
    programmed: AtomicBool,
    metrics: Metrics,
    registry: Registry,
}

/// Labels of a resync.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResyncLabels {
    /// `full` (config change, timer) or `routes` (kernel event).
    kind: &'static str,
    /// `ok` or `error`.
    result: &'static str,
}

#[derive(Default)]
struct Metrics {
    resyncs: Family<ResyncLabels, Counter>,
    route_changes: Counter,
    applied_generation: Gauge,
    programmed: Gauge,
    status_writes: Counter,
}

impl Health {
    /// A fresh state: not running, not programmed. `ipam_socket` is probed for readiness.
    pub fn new(ipam_socket: PathBuf) -> Self {
        let metrics = Metrics::default();
        let mut registry = Registry::with_prefix("tortie_agent");
        registry.register(
            "resyncs",
            "Data-path resyncs by trigger kind and result",
            metrics.resyncs.clone(),
        );
        registry.register(
            "route_changes",
            "Routes created, replaced or deleted by resyncs",
            metrics.route_changes.clone(),
        );
        registry.register(
            "applied_generation",
            "NodeNetworkConfig generation last applied without error",
            metrics.applied_generation.clone(),
        );
        registry.register(
            "programmed",
            "1 once the node has been programmed, 0 before",
            metrics.programmed.clone(),
        );
        registry.register(
            "status_writes",
            "NodeNetworkConfig status writes",
            metrics.status_writes.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                ipam_socket,
                loops_running: AtomicBool::new(false),
                programmed: AtomicBool::new(false),
                metrics,
                registry,
            }),
        }
    }

    /// Records whether the agent's loops are running.
    pub fn set_running(&self, running: bool) {
        self.inner.loops_running.store(running, Ordering::Relaxed);
    }

    /// Records one resync and what it changed.
    pub fn resynced(&self, full: bool, ok: bool, route_changes: usize) {
        let labels = ResyncLabels {
            kind: if full { "full" } else { "routes" },
            result: if ok { "ok" } else { "error" },
        };
        self.inner.metrics.resyncs.get_or_create(&labels).inc();
        self.inner
            .metrics
            .route_changes
            .inc_by(u64::try_from(route_changes).unwrap_or(u64::MAX));
    }

    /// Records that a generation was applied without error.
    pub fn programmed(&self, generation: Option<i64>) {
        self.inner.programmed.store(true, Ordering::Relaxed);
        self.inner.metrics.programmed.set(1);
        if let Some(generation) = generation {
            self.inner.metrics.applied_generation.set(generation);
        }
    }

    /// Whether the node has been programmed at least once.
    pub fn is_programmed(&self) -> bool {
        self.inner.programmed.load(Ordering::Relaxed)
    }

    /// Records a status write.
    pub fn status_written(&self) {
        self.inner.metrics.status_writes.inc();
    }

    /// Live while the loops run.
    pub fn is_live(&self) -> bool {
        self.inner.loops_running.load(Ordering::Relaxed)
    }

    /// Why the agent is not ready, or `None` when it is.
    pub async fn not_ready_reason(&self) -> Option<String> {
        if !self.is_live() {
            return Some("the agent's loops are not running".to_owned());
        }
        if !self.is_programmed() {
            return Some("the node config has not been applied yet".to_owned());
        }
        let socket = &self.inner.ipam_socket;
        if let Err(error) = tokio::net::UnixStream::connect(socket).await {
            return Some(format!(
                "IPAM socket {} is not served: {error}",
                socket.display()
            ));
        }
        None
    }

    fn metrics_text(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Binds the health address; separate from [`serve`] so a port in use fails start-up.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves the health endpoint until the task is dropped or the listener fails.
pub async fn serve(listener: TcpListener, health: Health) -> std::io::Result<()> {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    axum::serve(listener, router).await
}

async fn healthz(State(health): State<Health>) -> Response {
    if health.is_live() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent's loops are not running\n",
        )
            .into_response()
    }
}

async fn readyz(State(health): State<Health>) -> Response {
    match health.not_ready_reason().await {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn metrics(State(health): State<Health>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics_text(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_needs_the_loops_a_programmed_node_and_the_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("ipam.sock");
        let health = Health::new(socket.clone());
        assert!(!health.is_live());
        assert!(health.not_ready_reason().await.is_some());

        health.set_running(true);
        let reason = health.not_ready_reason().await.expect("not programmed");
        assert!(reason.contains("not been applied"), "{reason}");

        health.programmed(Some(4));
        let reason = health.not_ready_reason().await.expect("no socket");
        assert!(reason.contains("ipam.sock"), "{reason}");

        let _listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        assert_eq!(health.not_ready_reason().await, None);
    }

    #[test]
    fn metrics_are_exported() {
        let health = Health::new(PathBuf::from("/nonexistent"));
        health.resynced(true, true, 3);
        health.programmed(Some(7));
        let text = health.metrics_text();
        assert!(
            text.contains("tortie_agent_resyncs_total{kind=\"full\",result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tortie_agent_route_changes_total 3"),
            "{text}"
        );
        assert!(text.contains("tortie_agent_applied_generation 7"), "{text}");
    }
}
