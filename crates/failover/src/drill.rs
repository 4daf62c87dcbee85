//! DR drills: under a synthetic write load through a group's read-write listener, a
//! planned failover and a failback through the daemon's API, then every acknowledged
//! write is looked for on the primary. The report gives the RTO each way as the writer
//! saw it, the listener's write gap, the lag before the failover and the writes lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use georep_api::{Client, DrillReport, FailoverRequest, Lag};
use georep_core::{Database, FailoverGroup};
use georep_db::engine::{self, DrillSession};

use crate::{FailoverError, Result};

/// Writes through the listener until stopped, reconnecting after errors; records the
/// acknowledged values with their times.
async fn writer(
    db: Database,
    url: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
) {
    let mut i = 0u64;
    let mut client: Option<DrillSession> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            client = DrillSession::connect(&db, &url).await.ok();
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            continue;
        };
        let v = format!("d{}-{i}", std::process::id());
        i += 1;
        if c.insert(&v).await {
            if let Ok(mut a) = acked.lock() {
                a.push((v, Instant::now()));
            }
        } else {
            client = None;
        }
    }
}

/// The writer's recovery time for a switch requested at `from` and answered at `to`:
/// the longest pause between consecutive acknowledged writes from the last one before
/// `from` to the first one after `to` (None: no write was acknowledged after `to`).
fn longest_pause(acked: &[(String, Instant)], from: Instant, to: Instant) -> Option<Duration> {
    let start = acked.iter().rposition(|(_, t)| *t <= from).unwrap_or(0);
    let end = acked.iter().position(|(_, t)| *t > to)?;
    acked[start..=end]
        .windows(2)
        .map(|w| w[1].1 - w[0].1)
        .max()
        .or(Some(Duration::ZERO))
}

/// Waits until the group's primary sees `member` streaming (its lag in time is known),
/// so a switch measures the failover rather than a replica still reconnecting.
async fn wait_streaming(api: &Client, group: &str, member: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let g = api.group(group).await?;
        if g.last_known_lag
            .get(member)
            .and_then(|l| l.seconds)
            .is_some()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(FailoverError::Refused(format!(
                "'{member}' is not streaming from the primary after 60 s; check `georep db status`"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The listener's URL: the primary's URL (user, database, parameters) with the
/// listener's address.
fn listener_url(db: &Database, g: &FailoverGroup) -> Result<String> {
    let mut u = url::Url::parse(&db.primary.url).map_err(|e| {
        FailoverError::InvalidConfig(format!("the primary's URL cannot be parsed: {e}"))
    })?;
    let _ = u.set_host(Some(&g.read_write_listener.ip().to_string()));
    let _ = u.set_port(Some(g.read_write_listener.port()));
    Ok(u.to_string())
}

/// Runs a drill of group `g` (over `db`) through the daemon at `api`: writes for
/// `settle`, fails over to the first replica that is not fenced, writes for `settle`,
/// fails back, writes for `settle`, and checks every acknowledged write. `progress`
/// hears each step.
pub async fn drill(
    api: &Client,
    g: &FailoverGroup,
    db: &Database,
    settle: Duration,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<DrillReport> {
    let before = api.group(&g.name).await?;
    let original = before.primary.clone();
    let current = georep_db::rotated(db, &original);
    let target = current
        .replicas
        .iter()
        .find(|r| !before.fenced.contains(&r.name))
        .ok_or_else(|| {
            FailoverError::Refused(format!("group '{}' has no replica to fail over to", g.name))
        })?
        .name
        .clone();
    engine::prepare_drill(&current).await.map_err(|e| {
        FailoverError::Refused(format!(
            "creating the drill table failed (it must be replicated: PostgreSQL: use schemas, or list public.georep_drill in tables): {e}"
        ))
    })?;
    let listener = listener_url(&current, g)?;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let w = tokio::spawn(writer(
        current.clone(),
        listener.clone(),
        stop.clone(),
        acked.clone(),
    ));
    tokio::time::sleep(settle).await;

    progress(&format!("failing over {original} → {target}"));
    wait_streaming(api, &g.name, &target).await?;
    let lag_before: Lag = api
        .group(&g.name)
        .await?
        .last_known_lag
        .get(&target)
        .copied()
        .unwrap_or_default();
    let to = |m: &str| FailoverRequest {
        to: Some(m.to_string()),
        force: false,
    };
    let t1 = Instant::now();
    let over = api.failover(&g.name, &to(&target)).await?;
    let t1_end = Instant::now();
    tokio::time::sleep(settle).await;
    wait_streaming(api, &g.name, &original).await?;
    progress(&format!("failing back {target} → {original}"));
    let t2 = Instant::now();
    let back = api.failover(&g.name, &to(&original)).await?;
    let t2_end = Instant::now();
    tokio::time::sleep(settle).await;
    stop.store(true, Ordering::Relaxed);
    let _ = w.await;
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);

    // Every acknowledged write must be on the primary now.
    let present = DrillSession::connect(&current, &listener)
        .await?
        .values()
        .await?;
    let lost: Vec<String> = acked
        .iter()
        .map(|(v, _)| v)
        .filter(|v| !present.contains(*v))
        .cloned()
        .collect();
    Ok(DrillReport {
        group: g.name.clone(),
        database: db.name.clone(),
        started_from: original,
        failed_over_to: target,
        acknowledged_writes: acked.len(),
        lost_writes: lost.len(),
        data_loss: if lost.is_empty() {
            "none"
        } else {
            "WRITES LOST"
        }
        .to_string(),
        lost: lost.into_iter().take(20).collect(),
        rto_failover_ms: ms(longest_pause(&acked, t1, t1_end)),
        rto_failback_ms: ms(longest_pause(&acked, t2, t2_end)),
        write_gap_failover_ms: over.write_gap_ms,
        write_gap_failback_ms: back.write_gap_ms,
        lag_before_failover: lag_before,
        epochs: vec![over.epoch, back.epoch],
        finished_at: chrono::Utc::now().to_rfc3339(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_pause_spans_the_switch() {
        let t0 = Instant::now();
        let at = |ms| ("v".to_string(), t0 + Duration::from_millis(ms));
        // Writes every 10 ms, a 400 ms hole during the switch requested at 105, answered at 520.
        let acked = vec![at(80), at(90), at(100), at(110), at(510), at(520), at(530)];
        let pause = longest_pause(
            &acked,
            t0 + Duration::from_millis(105),
            t0 + Duration::from_millis(520),
        );
        assert_eq!(pause, Some(Duration::from_millis(400)));
        // Nothing acknowledged after the switch: unknown, not zero.
        assert_eq!(
            longest_pause(
                &acked,
                t0 + Duration::from_millis(600),
                t0 + Duration::from_millis(700)
            ),
            None
        );
    }
}
