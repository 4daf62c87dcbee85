//! `georep copy`, `sync` and `check`: one engine run each, printed as text or JSON.

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use georep_core::{Filter, MaxDelete, StoreUrl};
use georep_storage::{
    DiffKind, JobOptions, Mode, Overwrite, Progress, Report, Store, StoreOptions,
};

use crate::output::{human, ProgressView};
use crate::{exit, Common, Output};

/// The two stores and the flags every two-store command shares.
#[derive(Args, Debug)]
pub(crate) struct Pair {
    /// Source store (its prefix is the root of the copy).
    src: String,
    /// Destination store; keys keep their path relative to the source prefix.
    dst: String,
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    tuning: Tuning,
}

#[derive(Args, Debug)]
pub(crate) struct TransferArgs {
    #[command(flatten)]
    pair: Pair,
    /// Compare content (BLAKE3 of both sides) instead of size and last-modified.
    #[arg(long)]
    checksum: bool,
    /// When an object exists at both ends: replace it if different (default), always, never, or if the source is newer.
    #[arg(long, value_enum, default_value_t = OverwriteArg::Different)]
    overwrite: OverwriteArg,
    /// Print what would change and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not compare the destination's ETag with the MD5 of the bytes sent (needed for
    /// S3 buckets with SSE-KMS or SSE-C encryption, whose ETags are not MD5s).
    #[arg(long)]
    no_etag_check: bool,
}

#[derive(Args, Debug)]
pub(crate) struct SyncArgs {
    #[command(flatten)]
    inner: TransferArgs,
    /// Also delete destination objects that the source does not have: only after every
    /// copy succeeded and both listings completed, and never from an empty source unless
    /// --max-delete 100%.
    #[arg(long)]
    delete: bool,
    /// Refuse (exit 1, nothing deleted) when more than N objects, or P% of the
    /// destination, would be deleted.
    #[arg(long, value_name = "N|P%", value_parser = parse_max_delete)]
    max_delete: Option<MaxDelete>,
}

#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    pair: Pair,
    /// Compare content (BLAKE3 of both sides), proving byte equality.
    #[arg(long)]
    checksum: bool,
    /// Accepted for symmetry with copy and sync: check never changes anything.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Tuning {
    /// fsync every file written to a local destination (and its folder) before it counts
    /// as copied: survives power loss, at some cost in speed.
    #[arg(long)]
    fsync: bool,
    /// Objects copied in parallel.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    transfers: u16,
    /// Objects compared in parallel (content hashing with --checksum).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    checkers: u16,
    /// Bandwidth limit across all transfers, bytes per second (e.g. 50M).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    bwlimit: Option<u64>,
    /// Objects larger than this are uploaded in parts of this size (min 5M).
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = parse_part)]
    part_size: u64,
    /// A local source's symbolic links: copy what they point to, as long as it is inside
    /// the source folder (links leading out, and loops, are skipped). Without it, links
    /// are skipped and reported. A destination's links are never followed.
    #[arg(long)]
    follow_symlinks: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OverwriteArg {
    Different,
    Always,
    Never,
    IfNewer,
}

fn parse_max_delete(s: &str) -> Result<MaxDelete, String> {
    MaxDelete::parse(s).map_err(|e| e.to_string())
}

fn parse_rate(s: &str) -> Result<u64, String> {
    match georep_core::parse_size(s.trim_end_matches("/s")) {
        Ok(0) => Err("the rate must be above 0".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_part(s: &str) -> Result<u64, String> {
    match georep_core::parse_size(s) {
        Ok(n) if n >= 5 << 20 => Ok(n),
        Ok(_) => Err("parts must be at least 5M (the S3 minimum)".into()),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) async fn run_copy(a: TransferArgs) -> anyhow::Result<u8> {
    let opts = job(Mode::Copy, &a)?;
    execute("copy", &a.pair, opts).await
}

pub(crate) async fn run_sync(a: SyncArgs) -> anyhow::Result<u8> {
    let mut opts = job(Mode::Sync, &a.inner)?;
    opts.delete = a.delete;
    opts.max_delete = a.max_delete;
    execute("sync", &a.inner.pair, opts).await
}

pub(crate) async fn run_check(a: CheckArgs) -> anyhow::Result<u8> {
    let _ = a.dry_run;
    let opts = JobOptions {
        mode: Mode::Check,
        filter: Filter::new(&a.pair.common.include, &a.pair.common.exclude)?,
        checksum: a.checksum,
        ..tuned(&a.pair.tuning)
    };
    execute("check", &a.pair, opts).await
}

fn tuned(t: &Tuning) -> JobOptions {
    JobOptions {
        transfers: t.transfers as usize,
        checkers: t.checkers as usize,
        bwlimit: t.bwlimit,
        part_size: t.part_size as usize,
        ..Default::default()
    }
}

fn job(mode: Mode, a: &TransferArgs) -> anyhow::Result<JobOptions> {
    Ok(JobOptions {
        mode,
        filter: Filter::new(&a.pair.common.include, &a.pair.common.exclude)?,
        checksum: a.checksum,
        overwrite: match a.overwrite {
            OverwriteArg::Different => Overwrite::Different,
            OverwriteArg::Always => Overwrite::Always,
            OverwriteArg::Never => Overwrite::Never,
            OverwriteArg::IfNewer => Overwrite::IfNewer,
        },
        dry_run: a.dry_run,
        verify_dest_etag: !a.no_etag_check,
        ..tuned(&a.pair.tuning)
    })
}

async fn execute(command: &'static str, pair: &Pair, opts: JobOptions) -> anyhow::Result<u8> {
    let (src, dst, common) = (&pair.src, &pair.dst, &pair.common);
    let src_url = StoreUrl::parse(src).context("bad source URL")?;
    let dst_url = StoreUrl::parse(dst).context("bad destination URL")?;
    let cwd = std::env::current_dir().unwrap_or_default();
    // Compared as they are on disk, links resolved: `bk -> data/backup` is inside `data`.
    let (real_src, real_dst) = (
        georep_storage::resolve_local(&src_url),
        georep_storage::resolve_local(&dst_url),
    );
    if src_url.overlaps(&dst_url, &cwd) || real_src.overlaps(&real_dst, &cwd) {
        return Err(georep_core::StoreUrlError::Invalid {
            url: format!("{src_url} -> {dst_url}"),
            reason: "the source and the destination overlap (one is inside the other); choose separate locations".into(),
        }
        .into());
    }
    let store_opts = StoreOptions {
        retry_timeout: common.retry_timeout,
        fsync: pair.tuning.fsync,
        ..Default::default()
    };
    let src_opts = StoreOptions {
        follow_symlinks: pair.tuning.follow_symlinks,
        ..store_opts.clone()
    };
    let src = Arc::new(Store::open(&src_url, &src_opts)?);
    let dst = Arc::new(Store::open(&dst_url, &store_opts)?);
    let progress = Arc::new(Progress::default());
    let view = ProgressView::start(progress.clone());
    let report = georep_storage::run(src.clone(), dst.clone(), opts, progress).await;
    drop(view);
    let report = report?;
    match common.output {
        Output::Json => print_json(command, &src, &dst, &report)?,
        Output::Text => print_text(command, &report),
    }
    Ok(if report.is_clean() {
        0
    } else {
        exit::DIFFERENCES
    })
}

fn print_json(command: &str, src: &Store, dst: &Store, report: &Report) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(report)?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("command".into(), command.into());
        obj.insert("source".into(), src.name().into());
        obj.insert("destination".into(), dst.name().into());
    }
    println!("{v}");
    Ok(())
}

fn print_text(command: &str, r: &Report) {
    if let Some(planned) = &r.planned {
        for p in planned {
            match p.action {
                "copy" => println!("would copy {} ({})", p.key, human(p.size)),
                other => println!("would {other} {}", p.key),
            }
        }
    }
    if let Some(diffs) = &r.differences {
        for d in diffs {
            let kind = match d.kind {
                DiffKind::Missing => "missing",
                DiffKind::Extra => "extra  ",
                DiffKind::Differs => "differs",
            };
            match &d.detail {
                Some(detail) => println!("{kind} {} ({detail})", d.key),
                None => println!("{kind} {}", d.key),
            }
        }
    }
    for f in &r.failures {
        if f.key.is_empty() {
            eprintln!("failed: {}", f.error);
        } else {
            eprintln!("failed: {}: {}", f.key, f.error);
        }
    }
    for f in &r.skipped_keys {
        eprintln!("skipped: {}: {}", f.key, f.error);
    }
    if let Some(why) = &r.delete_refused {
        eprintln!("georep: {why}");
    }
    if r.deletes_held > 0 {
        eprintln!(
            "georep: {} delete(s) held: their keys are source names listed as skipped above, so what the source holds there is unknown",
            r.deletes_held
        );
    }
    let rate = if r.elapsed_secs > 0.0 {
        human((r.bytes_copied as f64 / r.elapsed_secs) as u64)
    } else {
        human(0)
    };
    match command {
        "check" => {
            let n = r.differences.as_ref().map_or(0, Vec::len);
            let verdict = if n == 0 && r.failed == 0 {
                "equal"
            } else {
                "NOT equal"
            };
            println!(
                "check: {verdict}: {} checked, {n} differences, {} failed in {:.2}s",
                r.checked, r.failed, r.elapsed_secs
            );
        }
        _ => {
            let dry = if r.dry_run {
                " (dry run: nothing changed)"
            } else {
                ""
            };
            let left = if r.skipped_keys.is_empty() {
                String::new()
            } else {
                format!(", {} left alone (listed above)", r.skipped_keys.len())
            };
            println!(
                "{command}: {} copied ({}), {} skipped, {} deleted, {} failed{left}, {} checked in {:.2}s ({rate}/s){dry}",
                r.copied,
                human(r.bytes_copied),
                r.skipped,
                r.deleted,
                r.failed,
                r.checked,
                r.elapsed_secs
            );
        }
    }
}
