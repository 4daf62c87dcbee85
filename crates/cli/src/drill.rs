//! `georep drill GROUP`: a DR drill against the running daemon. Under a synthetic write
//! load through the read-write listener it does a planned failover and a failback,
//! checks that every acknowledged write is present, and writes a report (Markdown and
//! JSON) with the RTO each way, data loss and the lag before the failover.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use georep_api::Client;
use georep_db::postgres as pg;
use serde_json::json;

use crate::topology::{load, ConfigArg, ConfigFileError};

#[derive(Args, Debug)]
pub(crate) struct DrillArgs {
    /// The failover group.
    pub(crate) group: String,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// The daemon's API (default: http://[server] listen from the topology).
    #[arg(long, value_name = "URL")]
    pub(crate) api: Option<String>,
    /// Seconds of writes before, between and after the two switches.
    #[arg(long, default_value_t = 3)]
    pub(crate) settle: u64,
    /// Where to write drill-GROUP-TIME.md and .json.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub(crate) report_dir: PathBuf,
}

/// Writes through the listener until stopped, reconnecting after errors; returns the
/// acknowledged values with their times.
async fn writer(url: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<(String, Instant)>>>) {
    let mut i = 0u64;
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() {
            client = pg::connect("listener", &url).await.ok();
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        }
        let v = format!("d{}-{i}", std::process::id());
        i += 1;
        let ok = match &client {
            Some(c) => c
                .execute("INSERT INTO georep_drill (v) VALUES ($1)", &[&v])
                .await
                .is_ok(),
            None => false,
        };
        if ok {
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
            bail!(
                "'{member}' is not streaming from the primary after 60 s; check `georep db status`"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `1234 bytes, 0.012 s`, with `unknown` for what is not known.
fn lag_text(l: &georep_api::Lag) -> String {
    let b = l.bytes.map_or("unknown".into(), |b| b.to_string());
    let s = l.seconds.map_or("unknown".into(), |s| format!("{s:.3}"));
    format!("{b} bytes, {s} s")
}

pub(crate) async fn run(a: DrillArgs) -> Result<u8> {
    let t = load(&a.config.config)?;
    let g = t
        .failover_group(&a.group)
        .ok_or_else(|| ConfigFileError(format!("no failover group named '{}'", a.group)))?
        .clone();
    let db = t
        .database(&g.database)
        .ok_or_else(|| ConfigFileError(format!("no database '{}'", g.database)))?
        .clone();
    let api = crate::api_token::client(&t, a.api.as_deref())?;
    let before = api.group(&a.group).await?;
    let original = before.primary.clone();
    let current = pg::rotated(&db, &original);
    let target = current
        .replicas
        .iter()
        .find(|r| !before.fenced.contains(&r.name))
        .ok_or_else(|| anyhow!("group '{}' has no replica to fail over to", a.group))?
        .name
        .clone();
    // The drill table is replicated like any other (added to the publication).
    pg::ddl(&current, "CREATE TABLE IF NOT EXISTS georep_drill (id bigserial PRIMARY KEY, v text UNIQUE NOT NULL, at timestamptz NOT NULL DEFAULT now())")
        .await
        .context("creating the drill table (it must be replicated: use schemas, or list public.georep_drill in tables)")?;
    let user = url::Url::parse(&current.primary.url).ok();
    let listener_url = match &user {
        Some(u) => {
            let mut u = u.clone();
            let _ = u.set_host(Some(&g.read_write_listener.ip().to_string()));
            let _ = u.set_port(Some(g.read_write_listener.port()));
            u.to_string()
        }
        None => bail!("the primary's URL cannot be parsed"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let w = tokio::spawn(writer(listener_url.clone(), stop.clone(), acked.clone()));
    let settle = Duration::from_secs(a.settle);
    tokio::time::sleep(settle).await;

    eprintln!("drill: failing over {} → {target}", original);
    wait_streaming(&api, &a.group, &target).await?;
    let lag_before = api
        .group(&a.group)
        .await?
        .last_known_lag
        .get(&target)
        .copied()
        .unwrap_or_default();
    let to = |m: &str| georep_api::FailoverRequest {
        to: Some(m.to_string()),
        force: false,
    };
    let t1 = Instant::now();
    let over = api.failover(&a.group, &to(&target)).await?;
    let t1_end = Instant::now();
    tokio::time::sleep(settle).await;
    wait_streaming(&api, &a.group, &original).await?;
    eprintln!("drill: failing back {target} → {original}");
    let t2 = Instant::now();
    let back = api.failover(&a.group, &to(&original)).await?;
    let t2_end = Instant::now();
    tokio::time::sleep(settle).await;
    stop.store(true, Ordering::Relaxed);
    let _ = w.await;
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let rto_over = longest_pause(&acked, t1, t1_end);
    let rto_back = longest_pause(&acked, t2, t2_end);

    // Every acknowledged write must be on the primary now.
    let c = pg::connect("listener", &listener_url).await?;
    let rows = c
        .query("SELECT v FROM georep_drill", &[])
        .await
        .context("reading the drill table")?;
    let present: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<&String> = acked
        .iter()
        .map(|(v, _)| v)
        .filter(|v| !present.contains(*v))
        .collect();
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
    let report = json!({
        "group": a.group,
        "database": db.name,
        "started_from": original,
        "failed_over_to": target,
        "acknowledged_writes": acked.len(),
        "lost_writes": lost.len(),
        "lost": lost.iter().take(20).collect::<Vec<_>>(),
        "data_loss": if lost.is_empty() { "none" } else { "WRITES LOST" },
        "rto_failover_ms": ms(rto_over),
        "rto_failback_ms": ms(rto_back),
        "write_gap_failover_ms": over.write_gap_ms,
        "write_gap_failback_ms": back.write_gap_ms,
        "lag_before_failover": lag_before,
        "epochs": [over.epoch, back.epoch],
        "finished_at": chrono::Utc::now().to_rfc3339(),
    });
    std::fs::create_dir_all(&a.report_dir)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let base = a.report_dir.join(format!("drill-{}-{stamp}", a.group));
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = format!(
        "# DR drill: failover group `{}`\n\n| | |\n|---|---|\n| database | `{}` |\n| failover | {} → {} (epoch {}) |\n| failback | {} → {} (epoch {}) |\n| RTO failover (longest pause between acknowledged writes) | {} ms |\n| RTO failback | {} ms |\n| write gap at the listener (failover / failback) | {} ms / {} ms |\n| lag before failover (bytes, seconds) | {} |\n| acknowledged writes | {} |\n| **data loss** | **{}** |\n| finished | {} |\n",
        a.group, db.name, original, target, over.epoch, target, original, back.epoch,
        ms(rto_over).map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
        ms(rto_back).map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
        over.write_gap_ms, back.write_gap_ms, lag_text(&lag_before), acked.len(),
        if lost.is_empty() { "0 writes lost".to_string() } else { format!("{} writes LOST", lost.len()) },
        report["finished_at"].as_str().unwrap_or_default()
    );
    std::fs::write(base.with_extension("md"), &md)?;
    println!("{md}");
    println!("report: {}.md and .json", base.display());
    Ok(if lost.is_empty() {
        0
    } else {
        crate::exit::DIFFERENCES
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
