//! `georep drill GROUP`: a DR drill against the running daemon (run by
//! `georep_failover::drill`), written as a report in Markdown and JSON; `georep drill
//! concierge NAME` moves a group of devices (`drill_concierge`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use georep_api::DrillReport;

use crate::topology::{load, ConfigArg, ConfigFileError};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct DrillArgs {
    #[command(subcommand)]
    pub(crate) kind: Option<DrillKind>,
    /// The failover group.
    #[arg(required = true)]
    pub(crate) group: Option<String>,
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

#[derive(clap::Subcommand, Debug)]
pub(crate) enum DrillKind {
    /// Move a group of a concierge's devices to another hub and back; report how long
    /// each device took (from its signed presence); exit 1 when one did not move.
    Concierge(crate::drill_concierge::ConciergeDrillArgs),
}

/// `1234 bytes, 0.012 s`, with `unknown` for what is not known.
fn lag_text(l: &georep_api::Lag) -> String {
    let b = l.bytes.map_or("unknown".into(), |b| b.to_string());
    let s = l.seconds.map_or("unknown".into(), |s| format!("{s:.3}"));
    format!("{b} bytes, {s} s")
}

/// The report as Markdown.
fn markdown(r: &DrillReport) -> String {
    let ms = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    format!(
        "# DR drill: failover group `{}`\n\n| | |\n|---|---|\n| database | `{}` |\n| failover | {} → {} (epoch {}) |\n| failback | {} → {} (epoch {}) |\n| RTO failover (longest pause between acknowledged writes) | {} ms |\n| RTO failback | {} ms |\n| write gap at the listener (failover / failback) | {} ms / {} ms |\n| lag before failover (bytes, seconds) | {} |\n| acknowledged writes | {} |\n| **data loss** | **{}** |\n| finished | {} |\n",
        r.group,
        r.database,
        r.started_from,
        r.failed_over_to,
        r.epochs.first().copied().unwrap_or_default(),
        r.failed_over_to,
        r.started_from,
        r.epochs.get(1).copied().unwrap_or_default(),
        ms(r.rto_failover_ms),
        ms(r.rto_failback_ms),
        r.write_gap_failover_ms,
        r.write_gap_failback_ms,
        lag_text(&r.lag_before_failover),
        r.acknowledged_writes,
        if r.lost_writes == 0 {
            "0 writes lost".to_string()
        } else {
            format!("{} writes LOST", r.lost_writes)
        },
        r.finished_at
    )
}

pub(crate) async fn run(a: DrillArgs) -> Result<u8> {
    if let Some(DrillKind::Concierge(c)) = a.kind {
        return crate::drill_concierge::run(c).await;
    }
    let name = a.group.clone().unwrap_or_default();
    let t = load(&a.config.config)?;
    let g = t
        .failover_group(&name)
        .ok_or_else(|| ConfigFileError(format!("no failover group named '{name}'")))?
        .clone();
    let db = t
        .database(&g.database)
        .ok_or_else(|| ConfigFileError(format!("no database '{}'", g.database)))?
        .clone();
    let api = crate::api_token::client(&t, a.api.as_deref())?;
    let progress = |step: &str| eprintln!("drill: {step}");
    let report =
        georep_failover::drill(&api, &g, &db, Duration::from_secs(a.settle), &progress).await?;
    std::fs::create_dir_all(&a.report_dir)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let base = a.report_dir.join(format!("drill-{name}-{stamp}"));
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    let md = markdown(&report);
    std::fs::write(base.with_extension("md"), &md)?;
    println!("{md}");
    println!("report: {}.md and .json", base.display());
    Ok(if report.lost_writes == 0 {
        0
    } else {
        crate::exit::DIFFERENCES
    })
}
