//! `georep backup run|list|restore|verify|prune|drill NAME`: recovery points of a
//! `[[backups]]` entry, done here (not through the daemon) by `georep_backup`; the
//! per-repository lock keeps these and the daemon's points apart.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use clap::{Args, Subcommand};
use georep_backup::{PointSel, RepoSpec};
use georep_core::{Backup, Filter, StoreUrl, Topology};
use georep_storage::{Store, StoreOptions};

use crate::output::{human, print};
use crate::topology::{load, ConfigArg, ConfigFileError};
use crate::Output;

#[derive(Subcommand, Debug)]
pub(crate) enum BackupCommand {
    /// Take one point now (creates the repository on the first one). Reads only objects
    /// changed since the last point; exit 1 if some objects could not be read.
    Run(NameArgs),
    /// The points: id, time, objects, size, new data.
    List(NameArgs),
    /// What the running daemon reports per backup: last point, its age against the
    /// schedule (the RPO achieved), size, dedup ratio, next run, failures. Exit 1 when a
    /// backup's RPO is breached or its last run failed.
    Status(StatusArgs),
    /// Restore a point into any store (a topology store name or a URL), one object at a
    /// time, each appearing whole or not at all.
    Restore(RestoreArgs),
    /// Check the repository (with --read-data, every byte of it); exit 1 on errors.
    Verify(VerifyArgs),
    /// Apply the retention bands: forget the points no band keeps and delete the data
    /// only they used. --dry-run shows what would go.
    Prune(PruneArgs),
    /// Restore a point into an empty scratch store, read every object back and compare;
    /// report the RTO and the RPO achieved (Markdown and JSON). Exit 1 if anything differs.
    Drill(DrillArgs),
}

#[derive(Args, Debug)]
pub(crate) struct NameArgs {
    /// The backup (`name` in [[backups]]).
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

/// Which point: `--point` or `--at`; the latest without either.
#[derive(Args, Debug)]
pub(crate) struct PointArgs {
    /// A point id (or a unique prefix of one), as `backup list` shows.
    #[arg(long, value_name = "ID", conflicts_with = "at")]
    pub(crate) point: Option<String>,
    /// The newest point taken at or before this time (RFC 3339, or `YYYY-MM-DD HH:MM[:SS]` in UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(crate) at: Option<DateTime<Utc>>,
}

impl PointArgs {
    fn sel(&self) -> PointSel {
        match (&self.point, self.at) {
            (Some(id), _) => PointSel::Id(id.clone()),
            (None, Some(t)) => PointSel::At(t),
            (None, None) => PointSel::Latest,
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    pub(crate) backup: NameArgs,
    #[command(flatten)]
    pub(crate) point: PointArgs,
    /// Where to restore: a store name from the topology or a store URL.
    #[arg(long, value_name = "STORE")]
    pub(crate) to: String,
    /// Only keys matching this glob. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub(crate) include: Vec<String>,
    /// Objects restored at once.
    #[arg(long, default_value_t = 8)]
    pub(crate) parallel: usize,
    /// Restore into a store that already holds objects, replacing those the point has
    /// (e.g. back into the source after ransomware). Without it, a non-empty target is
    /// refused.
    #[arg(long)]
    pub(crate) overwrite: bool,
}

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) backup: NameArgs,
    /// Also read and decrypt every pack (downloads the whole repository).
    #[arg(long)]
    pub(crate) read_data: bool,
}

#[derive(Args, Debug)]
pub(crate) struct PruneArgs {
    #[command(flatten)]
    pub(crate) backup: NameArgs,
    /// Show what would go; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Args, Debug)]
pub(crate) struct DrillArgs {
    #[command(flatten)]
    pub(crate) backup: NameArgs,
    #[command(flatten)]
    pub(crate) point: PointArgs,
    /// An empty scratch store: a store name from the topology or a store URL.
    #[arg(long, value_name = "STORE")]
    pub(crate) to: String,
    #[arg(long, default_value_t = 8)]
    pub(crate) parallel: usize,
    /// Where to write backup-drill-NAME-TIME.md and .json.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub(crate) report_dir: PathBuf,
}

#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Only this backup.
    pub(crate) name: Option<String>,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// The daemon's API (default: http://[server] listen from the topology).
    #[arg(long, value_name = "URL")]
    pub(crate) api: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc());
        }
    }
    Err(format!(
        "'{s}' is not a time; write 2026-12-01T10:00:00Z or \"2026-12-01 10:00\" (UTC)"
    ))
}

/// The topology, the backup and its repository.
fn open(a: &NameArgs) -> Result<(Topology, Backup, RepoSpec)> {
    let t = load(&a.config.config)?;
    let b = t.backup(&a.name).cloned().ok_or_else(|| {
        ConfigFileError(format!(
            "no backup named '{}' in {}; the names are in [[backups]]",
            a.name,
            a.config.config.display()
        ))
    })?;
    let spec = RepoSpec::from_topology(&t, &b)?;
    Ok((t, b, spec))
}

/// A topology store by name, else a store URL.
fn target(t: &Topology, to: &str) -> Result<Arc<Store>> {
    let url = match t.store(to) {
        Some(def) => def.url.clone(),
        None => StoreUrl::parse(to).with_context(|| {
            format!("--to '{to}' is neither a store in the topology nor a store URL")
        })?,
    };
    Ok(Arc::new(Store::open(&url, &StoreOptions::default())?))
}

pub(crate) async fn run(c: BackupCommand) -> Result<u8> {
    match c {
        BackupCommand::Run(a) => {
            let (t, b, spec) = open(&a)?;
            let source = Arc::new(georep_backup::source_store(&t, &b)?);
            let r = georep_backup::run_point(&spec, source, &b.filter, None).await?;
            print(a.output, &r, || {
                format!(
                    "{}: point {} at {}: {} objects, {} ({} objects read, {} new data){} in {:.1} s",
                    b.name,
                    &r.point.id[..8],
                    r.point.time,
                    r.point.files,
                    human(r.point.size),
                    r.files_read,
                    human(r.point.data_added),
                    if r.initialized { ", repository created" } else { "" },
                    r.duration_ms as f64 / 1000.0
                )
            })?;
            Ok(0)
        }
        BackupCommand::List(a) => {
            let (_, b, spec) = open(&a)?;
            let points = georep_backup::points(&spec).await?;
            print(a.output, &points, || {
                let mut out = format!(
                    "{:<10} {:<21} {:>8} {:>11} {:>11}\n",
                    "ID", "TIME", "OBJECTS", "SIZE", "NEW DATA"
                );
                for p in &points {
                    out.push_str(&format!(
                        "{:<10} {:<21} {:>8} {:>11} {:>11}\n",
                        &p.id[..8],
                        p.time,
                        p.files,
                        human(p.size),
                        human(p.data_added)
                    ));
                }
                out.push_str(&format!("{} points of backup '{}'", points.len(), b.name));
                out
            })?;
            Ok(0)
        }
        BackupCommand::Status(a) => status(a).await,
        BackupCommand::Restore(a) => {
            let (t, _, spec) = open(&a.backup)?;
            let to = target(&t, &a.to)?;
            if !a.overwrite {
                let mut l = to.list(georep_storage::ListRole::Destination);
                if let Some(Ok(e)) = futures::StreamExt::next(&mut l).await {
                    return Err(ConfigFileError(format!(
                        "the target {} is not empty (it holds '{}'); restore into an empty store, or pass --overwrite to replace what the point has",
                        to.url(),
                        e.key
                    ))
                    .into());
                }
            }
            let include = Filter::new(&a.include, &[])?;
            let r = georep_backup::restore(&spec, &a.point.sel(), to, &include, a.parallel).await?;
            print(a.backup.output, &r, || {
                format!(
                    "restored point {} of '{}' into {}: {} objects, {} in {:.1} s",
                    &r.point[..8.min(r.point.len())],
                    r.backup,
                    r.to,
                    r.files,
                    human(r.bytes),
                    r.duration_ms as f64 / 1000.0
                )
            })?;
            Ok(0)
        }
        BackupCommand::Verify(a) => {
            let (_, _, spec) = open(&a.backup)?;
            let r = georep_backup::verify(&spec, a.read_data).await?;
            print(a.backup.output, &r, || {
                let mut out = String::new();
                for e in &r.errors {
                    out.push_str(&format!("error: {e}\n"));
                }
                for w in &r.warnings {
                    out.push_str(&format!("warning: {w}\n"));
                }
                out.push_str(&format!(
                    "{}: {} points, {}{}",
                    r.backup,
                    r.points,
                    if r.read_data { "all data read, " } else { "" },
                    if r.errors.is_empty() {
                        "no errors".to_string()
                    } else {
                        format!("{} ERRORS", r.errors.len())
                    }
                ));
                out
            })?;
            Ok(if r.errors.is_empty() {
                0
            } else {
                crate::exit::DIFFERENCES
            })
        }
        BackupCommand::Prune(a) => {
            let (_, b, spec) = open(&a.backup)?;
            let r = georep_backup::prune(&spec, &b.retention, a.dry_run, None).await?;
            print(a.backup.output, &r, || {
                let mut out = String::new();
                for p in &r.points {
                    out.push_str(&format!(
                        "{} {} {}{}\n",
                        if p.keep { "keep  " } else { "forget" },
                        &p.id[..8],
                        p.time,
                        if p.reasons.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", p.reasons.join(", "))
                        }
                    ));
                }
                let gone = r.points.iter().filter(|p| !p.keep).count();
                out.push_str(&format!(
                    "{}{}: {} of {} points {}, {} packs ({}) {}, {} packs repacked",
                    if r.dry_run { "dry run, " } else { "" },
                    r.backup,
                    gone,
                    r.points.len(),
                    if r.dry_run {
                        "would be forgotten"
                    } else {
                        "forgotten"
                    },
                    r.packs_removed,
                    human(r.bytes_removed),
                    if r.dry_run {
                        "would be deleted"
                    } else {
                        "deleted"
                    },
                    r.packs_repacked
                ));
                out
            })?;
            Ok(0)
        }
        BackupCommand::Drill(a) => {
            let (t, _, spec) = open(&a.backup)?;
            let to = target(&t, &a.to)?;
            let r = georep_backup::drill(&spec, &a.point.sel(), to, a.parallel).await?;
            std::fs::create_dir_all(&a.report_dir).with_context(|| {
                format!("cannot create the report folder {}", a.report_dir.display())
            })?;
            let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
            let base = a
                .report_dir
                .join(format!("backup-drill-{}-{stamp}", r.backup));
            std::fs::write(
                base.with_extension("json"),
                serde_json::to_string_pretty(&r)?,
            )?;
            let md = drill_markdown(&r);
            std::fs::write(base.with_extension("md"), &md)?;
            match a.backup.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
                Output::Text => {
                    println!("{md}");
                    println!("report: {}.md and .json", base.display());
                }
            }
            Ok(if r.passed {
                0
            } else {
                crate::exit::DIFFERENCES
            })
        }
    }
}

fn drill_markdown(r: &georep_api::BackupDrillReport) -> String {
    let mut md = format!(
        "# Recovery drill: backup `{}`\n\n| | |\n|---|---|\n| point | `{}` taken {} |\n| restored into | {} |\n| objects restored / verified | {} / {} |\n| bytes | {} |\n| **RTO** (restore and verify) | **{:.1} s** |\n| **RPO** (age of the point at the start) | **{:.0} s** |\n| result | {} |\n",
        r.backup,
        r.point.id,
        r.point.time,
        r.restore.to,
        r.restore.files,
        r.verified_files,
        human(r.restore.bytes),
        r.rto_seconds,
        r.rpo_seconds,
        if r.passed {
            "PASSED: every object equals the point".to_string()
        } else {
            format!("FAILED: {} objects differ", r.mismatches.len())
        }
    );
    if !r.mismatches.is_empty() {
        md.push_str("\n## Differences\n\n");
        for m in &r.mismatches {
            md.push_str(&format!("- {m}\n"));
        }
    }
    md
}

fn age(secs: f64) -> String {
    match secs {
        s if s < 120.0 => format!("{s:.0}s"),
        s if s < 7200.0 => format!("{:.0}m", s / 60.0),
        s if s < 172_800.0 => format!("{:.1}h", s / 3600.0),
        s => format!("{:.1}d", s / 86_400.0),
    }
}

async fn status(a: StatusArgs) -> Result<u8> {
    let t = load(&a.config.config)?;
    let api = crate::api_token::client(&t, a.api.as_deref())?;
    let got = match &a.name {
        Some(n) => api.backup(n).await.map(|s| vec![s]),
        None => api.backups().await.map(|l| l.backups),
    };
    let all = match crate::api_token::answered(got) {
        Ok(all) => all,
        Err(code) => return Ok(code),
    };
    let bad = all.iter().any(|s| s.rpo_breached || s.last_error.is_some());
    print(a.output, &all, || {
        let mut out = format!(
            "{:<16} {:<15} {:>9} {:>9} {:>7} {:>11} {:>6} {:<21} {}\n",
            "BACKUP", "SCHEDULE", "RPO", "TARGET", "POINTS", "SIZE", "DEDUP", "NEXT RUN", "STATE"
        );
        for s in &all {
            let state = if s.running {
                "taking a point".to_string()
            } else if let Some(e) = &s.last_error {
                format!("FAILING ({} failures): {e}", s.failures)
            } else if s.rpo_breached {
                "RPO BREACHED".to_string()
            } else {
                "ok".to_string()
            };
            out.push_str(&format!(
                "{:<16} {:<15} {:>9} {:>9} {:>7} {:>11} {:>6} {:<21} {}{}\n",
                s.name,
                s.schedule,
                s.rpo_seconds.map_or("-".into(), age),
                age(s.target_seconds),
                s.points,
                human(s.repository_bytes),
                s.dedup_ratio.map_or("-".into(), |d| format!("{d:.1}x")),
                s.next_run
                    .and_then(|n| DateTime::<Utc>::from_timestamp(n, 0))
                    .map_or("-".into(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
                state,
                if s.append_only {
                    " (append-only: nothing is ever deleted)"
                } else {
                    ""
                }
            ));
        }
        out.trim_end().to_string()
    })?;
    Ok(if bad { crate::exit::DIFFERENCES } else { 0 })
}
