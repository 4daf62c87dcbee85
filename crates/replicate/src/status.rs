//! Status of policies and objects, read from the state store: the same figures for the
//! daemon's API and for `georep status` run beside (or without) a daemon.

use std::time::Duration;

use georep_core::{Policy, Topology};
use georep_state::State;

use crate::error::Result;

/// Window over which latency percentiles are computed.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Window over which throughput is computed.
pub const THROUGHPUT_WINDOW: Duration = Duration::from_secs(60);

pub use georep_api::{DestStatus, Latency, ObjectStatus, PolicyStatus, ScanStatus, StoreRef};

fn store_ref(topo: &Topology, name: &str) -> StoreRef {
    let def = topo.store(name);
    StoreRef {
        store: name.to_string(),
        region: def.map(|d| d.region.clone()).unwrap_or_default(),
        url: def.map(|d| d.url.to_string()).unwrap_or_default(),
    }
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// The status of one policy. `detailed` adds latency percentiles and throughput (these
/// read the last 15 minutes of completions).
pub fn policy_status(
    state: &State,
    topo: &Topology,
    policy: &Policy,
    detailed: bool,
) -> Result<PolicyStatus> {
    let now = georep_state::now_ms();
    let rec = state.policy(&policy.name)?;
    let lag = state.lag(&policy.name)?;
    let rpo_target = policy.rpo.as_secs_f64();
    // While scans fail, changes since the last good scan may be undetected: the RPO
    // cannot be better than that gap (notifications may still be working, so this is
    // the honest upper bound, not an estimate).
    let blind_since = rec.as_ref().and_then(|r| {
        r.last_scan_error
            .as_ref()
            .map(|_| r.last_ok_scan_at.unwrap_or(r.created_at))
    });
    // A scheduled policy sees nothing written since its last good scan began: that gap
    // is the data a loss now would cost, even with no copy pending.
    let blind_since = match (&policy.schedule, &rec) {
        (Some(_), Some(r)) => Some(r.last_ok_scan_at.unwrap_or(r.created_at)),
        _ => blind_since,
    };
    let next_run = policy.schedule.as_ref().map(|s| {
        let last = rec
            .as_ref()
            .and_then(|r| r.last_ok_scan_at)
            .and_then(chrono::DateTime::from_timestamp_millis);
        let next = s.next(last, chrono::Utc::now());
        next.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    });
    let mut dests = Vec::new();
    for d in &policy.destinations {
        let l = lag
            .iter()
            .find(|l| &l.dest == d)
            .cloned()
            .unwrap_or_default();
        let mut rpo = match l.oldest_change {
            Some(t) if l.pending > 0 => (now - t).max(0) as f64 / 1000.0,
            _ => 0.0,
        };
        if let Some(t) = blind_since {
            rpo = rpo.max((now - t).max(0) as f64 / 1000.0);
        }
        let (latency, ops, bps) = if detailed {
            let since = now - LATENCY_WINDOW.as_millis() as i64;
            let lat = state.latencies_since(&policy.name, d, since)?;
            let (n, b) = state.replicated_since(
                &policy.name,
                d,
                now - THROUGHPUT_WINDOW.as_millis() as i64,
            )?;
            let w = THROUGHPUT_WINDOW.as_secs_f64();
            (
                Latency {
                    count: lat.len() as u64,
                    p50_ms: percentile(&lat, 50.0),
                    p99_ms: percentile(&lat, 99.0),
                    max_ms: lat.last().copied(),
                },
                n as f64 / w,
                b as f64 / w,
            )
        } else {
            (Latency::default(), 0.0, 0.0)
        };
        dests.push(DestStatus {
            store: store_ref(topo, d),
            pending: l.pending,
            pending_bytes: l.pending_bytes,
            failed: l.failed,
            complete: l.complete,
            rpo_seconds: rpo,
            rpo_breached: rpo > rpo_target,
            latency,
            objects_per_second: ops,
            bytes_per_second: bps,
        });
    }
    Ok(PolicyStatus {
        name: policy.name.clone(),
        source: store_ref(topo, &policy.source),
        deletes: format!("{:?}", policy.deletes).to_lowercase(),
        rpo_target_seconds: rpo_target,
        paused: rec.as_ref().and_then(|r| r.paused.clone()),
        held: rec.as_ref().and_then(|r| r.held.clone()),
        notifications: None,
        scan_interval_seconds: policy.scan_interval.as_secs_f64(),
        schedule: policy.schedule.as_ref().map(ToString::to_string),
        next_run,
        last_scan: rec.as_ref().and_then(|r| {
            r.last_scan_at.map(|at| ScanStatus {
                at: iso(at),
                duration_ms: r.last_scan_ms.unwrap_or_default(),
                error: r.last_scan_error.clone(),
                scans: r.scans,
            })
        }),
        source_objects: state.manifest_count(&policy.name)?,
        rpo_breached: dests.iter().any(|d| d.rpo_breached),
        destinations: dests,
    })
}

/// One object's replication status at every destination.
pub fn object_status(state: &State, policy: &Policy, key: &str) -> Result<ObjectStatus> {
    Ok(ObjectStatus {
        policy: policy.name.clone(),
        key: key.to_string(),
        source: state.manifest_get(&policy.name, key)?,
        destinations: state.object_status(&policy.name, key)?,
    })
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
