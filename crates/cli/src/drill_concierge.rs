//! `georep drill concierge NAME --group G [--to HUB]`: pins a group of devices to
//! another hub through the running daemon, waits until each connected device says (by
//! its signed presence) that it is there, unpins and waits until each has left again;
//! reports how long each device took, in Markdown and JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use georep_api::{paths, ConciergeDevice, ConciergePinRequest};
use serde::Serialize;

use crate::relay::DaemonArgs;

#[derive(Args, Debug)]
pub(crate) struct ConciergeDrillArgs {
    /// The concierge.
    pub(crate) name: String,
    /// The group of devices to move.
    #[arg(long)]
    pub(crate) group: String,
    /// The hub to move them to (default: the first healthy hub they are not on).
    #[arg(long, value_name = "HUB")]
    pub(crate) to: Option<String>,
    /// Seconds to wait for every device, each way.
    #[arg(long, default_value_t = 120)]
    pub(crate) timeout: u64,
    /// Where to write drill-concierge-NAME-TIME.md and .json.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub(crate) report_dir: PathBuf,
    #[command(flatten)]
    pub(crate) daemon: DaemonArgs,
}

/// One way of the drill.
#[derive(Debug, Serialize)]
pub(crate) struct Leg {
    pub(crate) moved: usize,
    /// Milliseconds from the pin (or unpin) until the concierge heard the device's
    /// presence on the hub, per device.
    pub(crate) took_ms: BTreeMap<String, u64>,
    pub(crate) p50_ms: Option<u64>,
    pub(crate) p99_ms: Option<u64>,
    pub(crate) max_ms: Option<u64>,
    /// Devices that did not move within the timeout.
    pub(crate) stragglers: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) concierge: String,
    pub(crate) group: String,
    pub(crate) devices_in_group: usize,
    /// Devices connected when the drill began (the ones measured), by hub.
    pub(crate) connected_before: BTreeMap<String, usize>,
    pub(crate) to: String,
    pub(crate) there: Leg,
    pub(crate) back: Leg,
    pub(crate) finished_at: String,
}

fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

/// Polls until each of `who` satisfies `arrived` after `since_ms`, or `timeout`.
async fn leg(
    api: &georep_api::Client,
    a: &ConciergeDrillArgs,
    who: &[String],
    since_ms: u64,
    arrived: impl Fn(&ConciergeDevice) -> bool,
) -> Result<Leg> {
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut took = BTreeMap::new();
    loop {
        let now = api.concierge_devices(&a.name, Some(&a.group)).await?;
        for d in &now.devices {
            if who.contains(&d.id) && !took.contains_key(&d.id) && arrived(d) {
                if let Some(seen) = d.connected_seen_ms.filter(|s| *s >= since_ms) {
                    took.insert(d.id.clone(), seen - since_ms);
                }
            }
        }
        if took.len() == who.len() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut v: Vec<u64> = took.values().copied().collect();
    v.sort_unstable();
    Ok(Leg {
        moved: took.len(),
        p50_ms: percentile(&v, 0.50),
        p99_ms: percentile(&v, 0.99),
        max_ms: v.last().copied(),
        stragglers: who
            .iter()
            .filter(|id| !took.contains_key(*id))
            .cloned()
            .collect(),
        took_ms: took,
    })
}

fn markdown(r: &Report) -> String {
    let ms = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    let row = |name: &str, l: &Leg| {
        format!(
            "| {name} | {} of {} | {} | {} | {} | {} |\n",
            l.moved,
            l.moved + l.stragglers.len(),
            ms(l.p50_ms),
            ms(l.p99_ms),
            ms(l.max_ms),
            if l.stragglers.is_empty() {
                "none".to_string()
            } else {
                l.stragglers.join(", ")
            }
        )
    };
    let before: Vec<String> = r
        .connected_before
        .iter()
        .map(|(h, n)| format!("{n} on {h}"))
        .collect();
    format!(
        "# Concierge drill: `{}`, group `{}`\n\n{} devices in the group; connected before: {}; moved to `{}` and back.\n\n| leg | moved | p50 ms | p99 ms | max ms | did not move |\n|---|---|---|---|---|---|\n{}{}\nfinished {}\n",
        r.concierge,
        r.group,
        r.devices_in_group,
        before.join(", "),
        r.to,
        row("there", &r.there),
        row("back", &r.back),
        r.finished_at
    )
}

pub(crate) async fn run(a: ConciergeDrillArgs) -> Result<u8> {
    let api = a.daemon.client()?;
    let status = match crate::api_token::answered(api.concierge(&a.name).await) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let start =
        match crate::api_token::answered(api.concierge_devices(&a.name, Some(&a.group)).await) {
            Ok(d) => d,
            Err(code) => return Ok(code),
        };
    let connected: Vec<&ConciergeDevice> = start
        .devices
        .iter()
        .filter(|d| d.connected_hub.is_some())
        .collect();
    if start.devices.is_empty() {
        bail!(
            "concierge '{}' has no device in group '{}'",
            a.name,
            a.group
        );
    }
    if connected.is_empty() {
        bail!(
            "no device of group '{}' is connected as far as the concierge knows (devices tell it by signed presence; see `georep concierge status {}`): nothing to measure",
            a.group,
            a.name
        );
    }
    let mut before: BTreeMap<String, usize> = BTreeMap::new();
    for d in &connected {
        *before
            .entry(d.connected_hub.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let to = match &a.to {
        Some(t) => t.clone(),
        None => status
            .hubs
            .iter()
            .find(|h| h.healthy && !before.contains_key(&h.name))
            .map(|h| h.name.clone())
            .ok_or_else(|| {
                anyhow::anyhow!("no healthy hub the group is not on already; name one with --to")
            })?,
    };
    let who: Vec<String> = connected.iter().map(|d| d.id.clone()).collect();
    let pin = |hub: Option<String>| ConciergePinRequest {
        device: None,
        group: Some(a.group.clone()),
        hub,
    };
    eprintln!(
        "drill: moving {} connected devices of group '{}' to '{to}'",
        who.len(),
        a.group
    );
    let r = match crate::api_token::answered(
        api.concierge_action(paths::CONCIERGE_PIN, &a.name, &pin(Some(to.clone())))
            .await,
    ) {
        Ok(r) => r,
        Err(code) => return Ok(code),
    };
    let there = leg(&api, &a, &who, r.at_ms, |d| {
        d.connected_hub.as_deref() == Some(to.as_str())
    })
    .await;
    // Unpinned whatever happened, so a failed drill leaves no pin behind.
    eprintln!("drill: unpinning group '{}'", a.group);
    let r = api
        .concierge_action(paths::CONCIERGE_PIN, &a.name, &pin(None))
        .await?;
    let there = there?;
    let back = leg(&api, &a, &who, r.at_ms, |d| {
        d.connected_hub.as_deref().is_some_and(|h| h != to)
    })
    .await?;
    let report = Report {
        concierge: a.name.clone(),
        group: a.group.clone(),
        devices_in_group: start.devices.len(),
        connected_before: before,
        to,
        there,
        back,
        finished_at: chrono::Utc::now().to_rfc3339(),
    };
    std::fs::create_dir_all(&a.report_dir)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let base = a
        .report_dir
        .join(format!("drill-concierge-{}-{stamp}", a.name));
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = markdown(&report);
    std::fs::write(base.with_extension("md"), &md)?;
    println!("{md}");
    println!("report: {}.md and .json", base.display());
    Ok(
        if report.there.stragglers.is_empty() && report.back.stragglers.is_empty() {
            0
        } else {
            crate::exit::DIFFERENCES
        },
    )
}
