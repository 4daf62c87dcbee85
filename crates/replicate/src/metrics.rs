//! Prometheus metrics for replication, registered in the daemon's one registry.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// Labels of per-destination series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Dest {
    pub(crate) policy: String,
    pub(crate) destination: String,
}

/// Labels of per-policy series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Pol {
    pub(crate) policy: String,
}

/// Labels of change-notification counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Source {
    pub(crate) policy: String,
    /// `scan`, `fsnotify` or `webhook`.
    pub(crate) via: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// Every replication metric. Gauges are refreshed from the state store; counters and the
/// latency histogram are updated as work completes.
pub(crate) struct Metrics {
    pub(crate) latency: Family<Dest, Histogram>,
    pub(crate) replicated: Family<Dest, Counter>,
    pub(crate) replicated_bytes: Family<Dest, Counter>,
    pub(crate) deleted: Family<Dest, Counter>,
    pub(crate) failures: Family<Dest, Counter>,
    pub(crate) changes: Family<Source, Counter>,
    pub(crate) pending: Family<Dest, Gauge>,
    pub(crate) pending_bytes: Family<Dest, Gauge>,
    pub(crate) failed: Family<Dest, Gauge>,
    pub(crate) rpo: Family<Dest, FGauge>,
    pub(crate) rpo_target: Family<Pol, FGauge>,
    pub(crate) rpo_breached: Family<Dest, Gauge>,
    pub(crate) paused: Family<Pol, Gauge>,
    pub(crate) scan_seconds: Family<Pol, FGauge>,
    pub(crate) scan_errors: Family<Pol, Counter>,
    pub(crate) last_scan: Family<Pol, FGauge>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    ])
}

impl Metrics {
    /// Builds the families and registers them in `r`.
    pub(crate) fn register(r: &georep_component::Metrics) -> Self {
        let m = Self {
            latency: Family::new_with_constructor(latency_histogram),
            replicated: Default::default(),
            replicated_bytes: Default::default(),
            deleted: Default::default(),
            failures: Default::default(),
            changes: Default::default(),
            pending: Default::default(),
            pending_bytes: Default::default(),
            failed: Default::default(),
            rpo: Default::default(),
            rpo_target: Default::default(),
            rpo_breached: Default::default(),
            paused: Default::default(),
            scan_seconds: Default::default(),
            scan_errors: Default::default(),
            last_scan: Default::default(),
        };
        {
            r.register(
                "replication_latency_seconds",
                "Time from a change at the source to its copy being visible at the destination",
                m.latency.clone(),
            );
            r.register(
                "replicated_objects",
                "Objects copied to a destination",
                m.replicated.clone(),
            );
            r.register(
                "replicated_bytes",
                "Bytes copied to a destination",
                m.replicated_bytes.clone(),
            );
            r.register(
                "replicated_deletes",
                "Deletes propagated to a destination",
                m.deleted.clone(),
            );
            r.register(
                "replication_failures",
                "Failed replication attempts (each is retried with backoff)",
                m.failures.clone(),
            );
            r.register(
                "source_changes",
                "Source changes detected, by detector",
                m.changes.clone(),
            );
            r.register(
                "replication_pending_objects",
                "Objects waiting to be replicated to a destination",
                m.pending.clone(),
            );
            r.register(
                "replication_pending_bytes",
                "Bytes waiting to be replicated to a destination",
                m.pending_bytes.clone(),
            );
            r.register(
                "replication_failed_objects",
                "Objects whose replication has failed repeatedly (still retried)",
                m.failed.clone(),
            );
            r.register(
                "replication_rpo_seconds",
                "Age of the oldest change not yet replicated to a destination (the current RPO)",
                m.rpo.clone(),
            );
            r.register(
                "replication_rpo_target_seconds",
                "The policy's RPO target",
                m.rpo_target.clone(),
            );
            r.register(
                "replication_rpo_breached",
                "1 while the current RPO exceeds the target",
                m.rpo_breached.clone(),
            );
            r.register(
                "policy_paused",
                "1 while the mass-delete guard holds a policy's deletes",
                m.paused.clone(),
            );
            r.register(
                "scan_duration_seconds",
                "Duration of the last source scan",
                m.scan_seconds.clone(),
            );
            r.register(
                "scan_errors",
                "Source scans that failed",
                m.scan_errors.clone(),
            );
            r.register(
                "scan_last_timestamp_seconds",
                "When the last source scan finished (Unix time)",
                m.last_scan.clone(),
            );
        }
        m
    }
}

impl Metrics {
    /// Drops the series of a destination no longer replicated (its policy was removed
    /// or changed by a reload), so dashboards do not show stale values.
    pub(crate) fn forget(&self, policy: &str, destination: &str) {
        let l = dest(policy, destination);
        for f in [
            &self.pending,
            &self.pending_bytes,
            &self.failed,
            &self.rpo_breached,
        ] {
            f.remove(&l);
        }
        self.rpo.remove(&l);
    }

    /// Drops a removed policy's per-policy gauges (counters are kept: they only grow).
    pub(crate) fn forget_policy(&self, policy: &str) {
        let l = pol(policy);
        self.paused.remove(&l);
        self.rpo_target.remove(&l);
        self.scan_seconds.remove(&l);
        self.last_scan.remove(&l);
    }
}

pub(crate) fn dest(policy: &str, destination: &str) -> Dest {
    Dest {
        policy: policy.to_string(),
        destination: destination.to_string(),
    }
}

pub(crate) fn pol(policy: &str) -> Pol {
    Pol {
        policy: policy.to_string(),
    }
}
