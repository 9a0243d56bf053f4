//! Prometheus metrics: reconciles and their errors and durations by kind, objects in the
//! caches by kind, and how full each pool is.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming a kind, such as `IPPool`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The kind.
    pub kind: String,
}

/// Labels naming a pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The pool's name.
    pub pool: String,
}

type HistogramFamily = Family<KindLabels, Histogram, fn() -> Histogram>;

/// Every metric the operator exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    reconcile_errors: Family<KindLabels, Counter>,
    reconcile_duration: HistogramFamily,
    objects: Family<KindLabels, Gauge>,
    pool_allocated: Family<PoolLabels, Gauge>,
    pool_capacity: Family<PoolLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pool_blocks: Family<PoolLabels, Gauge>,
    leader: Gauge,
    gc_released_addresses: Counter,
    gc_deleted_handles: Counter,
    gc_released_blocks: Counter,
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All metrics at zero, registered under the `tortie_operator` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tortie_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let reconcile_errors = Family::<KindLabels, Counter>::default();
        let reconcile_duration =
            HistogramFamily::new_with_constructor(duration_histogram as fn() -> Histogram);
        let objects = Family::<KindLabels, Gauge>::default();
        let pool_allocated = Family::<PoolLabels, Gauge>::default();
        let pool_capacity = Family::default();
        let pool_blocks = Family::<PoolLabels, Gauge>::default();
        let leader = Gauge::default();
        let gc_released_addresses = Counter::default();
        let gc_deleted_handles = Counter::default();
        let gc_released_blocks = Counter::default();

        registry.register(
            "reconciles",
            "Reconciles finished, by kind",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles took, by kind",
            reconcile_duration.clone(),
        );
        registry.register(
            "objects",
            "Well-formed objects in the operator's caches, by kind",
            objects.clone(),
        );
        registry.register(
            "ippool_allocated_addresses",
            "Addresses allocated from each pool",
            pool_allocated.clone(),
        );
        registry.register(
            "ippool_capacity_addresses",
            "Addresses in each pool",
            pool_capacity.clone(),
        );
        registry.register(
            "ippool_blocks_in_use",
            "Blocks of each pool that nodes own",
            pool_blocks.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the lease",
            leader.clone(),
        );
        registry.register(
            "ipam_gc_released_addresses",
            "Addresses released because their pod or node was gone",
            gc_released_addresses.clone(),
        );
        registry.register(
            "ipam_gc_deleted_handles",
            "IPAM handles deleted because they held no address",
            gc_deleted_handles.clone(),
        );
        registry.register(
            "ipam_gc_released_blocks",
            "Empty blocks of nodes that were gone, released with their affinities",
            gc_released_blocks.clone(),
        );

        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            objects,
            pool_allocated,
            pool_capacity,
            pool_blocks,
            leader,
            gc_released_addresses,
            gc_deleted_handles,
            gc_released_blocks,
        }
    }

    /// Counts a finished reconcile of `kind` that took `took`.
    pub fn reconciled(&self, kind: &str, took: Duration, failed: bool) {
        let labels = KindLabels { kind: kind.into() };
        self.reconciles.get_or_create(&labels).inc();
        if failed {
            self.reconcile_errors.get_or_create(&labels).inc();
        }
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Records how many objects of `kind` the caches hold.
    pub fn set_objects(&self, kind: &str, count: usize) {
        self.objects
            .get_or_create(&KindLabels { kind: kind.into() })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Records a pool's usage.
    pub fn set_pool_usage(&self, pool: &str, allocated: u64, capacity: f64, blocks: u64) {
        let labels = PoolLabels { pool: pool.into() };
        self.pool_allocated
            .get_or_create(&labels)
            .set(i64::try_from(allocated).unwrap_or(i64::MAX));
        self.pool_capacity.get_or_create(&labels).set(capacity);
        self.pool_blocks
            .get_or_create(&labels)
            .set(i64::try_from(blocks).unwrap_or(i64::MAX));
    }

    /// Forgets a pool that is gone.
    pub fn remove_pool(&self, pool: &str) {
        let labels = PoolLabels { pool: pool.into() };
        self.pool_allocated.remove(&labels);
        self.pool_capacity.remove(&labels);
        self.pool_blocks.remove(&labels);
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Counts addresses released by garbage collection.
    pub fn gc_released_addresses(&self, count: u64) {
        self.gc_released_addresses.inc_by(count);
    }

    /// Counts a handle deleted by garbage collection.
    pub fn gc_deleted_handle(&self) {
        self.gc_deleted_handles.inc();
    }

    /// Counts a block released by garbage collection.
    pub fn gc_released_block(&self) {
        self.gc_released_blocks.inc();
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!(%error, "Could not encode metrics");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_kinds_and_pools() {
        let metrics = Metrics::new();
        metrics.reconciled("IPPool", Duration::from_millis(3), false);
        metrics.reconciled("IPPool", Duration::from_millis(5), true);
        metrics.set_objects("Node", 3);
        metrics.set_pool_usage("default-ipv4-ippool", 31, 65536.0, 1);
        let text = metrics.encode();
        assert!(
            text.contains("tortie_operator_reconciles_total{kind=\"IPPool\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tortie_operator_reconcile_errors_total{kind=\"IPPool\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tortie_operator_objects{kind=\"Node\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "tortie_operator_ippool_allocated_addresses{pool=\"default-ipv4-ippool\"} 31"
            ),
            "{text}"
        );

        metrics.gc_released_addresses(2);
        metrics.gc_deleted_handle();
        metrics.gc_released_block();
        let text = metrics.encode();
        for line in [
            "tortie_operator_ipam_gc_released_addresses_total 2",
            "tortie_operator_ipam_gc_deleted_handles_total 1",
            "tortie_operator_ipam_gc_released_blocks_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }

        metrics.remove_pool("default-ipv4-ippool");
        assert!(!metrics.encode().contains("default-ipv4-ippool"));
    }
}
