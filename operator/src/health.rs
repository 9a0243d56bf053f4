//! `/healthz`, `/readyz` and `/metrics`.
//!
//! A replica is ready once every watch has had its first complete listing; the leader
//! additionally once it has made its first pass (cluster objects ensured, every pool and
//! every node known at the start reconciled once).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::world::World;

/// What `/readyz` looks at.
pub struct Health {
    world: Arc<World>,
    leader: AtomicBool,
    passes: Mutex<Vec<Arc<FirstPass>>>,
}

/// The first pass of one leader task over the objects that existed when it started.
pub struct FirstPass {
    what: &'static str,
    pending: Mutex<Option<BTreeSet<String>>>,
}

impl Health {
    /// Health of a replica with these caches; not leading.
    pub fn new(world: Arc<World>) -> Arc<Self> {
        Arc::new(Self {
            world,
            leader: AtomicBool::new(false),
            passes: Mutex::new(Vec::new()),
        })
    }

    /// Records that this replica leads, with the first passes that must finish before it
    /// is ready.
    pub fn lead(&self, passes: Vec<Arc<FirstPass>>) {
        *self
            .passes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = passes;
        self.leader.store(true, Ordering::Release);
    }

    /// `Ok` when ready, else what is still missing.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.world.is_synced() {
            return Err("watches have not synced yet".into());
        }
        if !self.leader.load(Ordering::Acquire) {
            return Ok(());
        }
        let passes = self
            .passes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match passes.iter().find(|p| !p.is_done()) {
            Some(pass) => Err(format!(
                "leader: first pass over {} not finished",
                pass.what
            )),
            None => Ok(()),
        }
    }
}

impl FirstPass {
    /// A pass not started yet; [`FirstPass::start`] says what it must cover.
    pub fn new(what: &'static str) -> Arc<Self> {
        Arc::new(Self {
            what,
            pending: Mutex::new(None),
        })
    }

    /// Starts the pass over `names`.
    pub fn start(&self, names: impl IntoIterator<Item = String>) {
        *self.lock() = Some(names.into_iter().collect());
    }

    /// Records that `name` has been handled.
    pub fn done(&self, name: &str) {
        if let Some(pending) = self.lock().as_mut() {
            pending.remove(name);
        }
    }

    /// Whether the pass has started and covered everything.
    pub fn is_done(&self) -> bool {
        self.lock().as_ref().is_some_and(BTreeSet::is_empty)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<BTreeSet<String>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Clone)]
struct Served {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// The HTTP routes.
pub fn router(health: Arc<Health>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Served { health, metrics })
}

async fn readyz(State(served): State<Served>) -> impl IntoResponse {
    match served.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn metrics_text(State(served): State<Served>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        served.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_pass_finishes_when_every_name_is_done() {
        let pass = FirstPass::new("pools");
        assert!(!pass.is_done(), "a pass that has not started is not done");
        pass.start(["a".to_owned(), "b".to_owned()]);
        pass.done("a");
        assert!(!pass.is_done());
        pass.done("b");
        assert!(pass.is_done());

        let empty = FirstPass::new("nodes");
        empty.start([]);
        assert!(empty.is_done());
    }

    #[test]
    fn unsynced_world_is_not_ready() {
        let health = Health::new(World::new());
        let reason = health.readiness().expect_err("nothing has synced");
        assert!(reason.contains("watches"), "{reason}");
    }
}
