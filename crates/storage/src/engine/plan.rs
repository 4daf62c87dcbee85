//! Deciding each merged key: most are settled from the two listings alone (skip, missing,
//! extra, size differs), and only copies and content comparisons become tasks.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::copy::transfer;
use super::merge::Item;
use super::verify::same_content;
use super::{failed, Ctx, DiffKind, Difference, JobOptions, Mode, Outcome, Overwrite, Progress};
use crate::entry::Entry;

/// What one merged key needs: most keys are decided from the listings alone, and only
/// copies and content comparisons go to a task.
pub(super) enum Step {
    Done(Outcome),
    Transfer(Entry),
    /// Copy when the content differs (`--checksum`).
    CopyIfDifferent(Entry),
    /// `check --checksum` of two same-size objects.
    Compare(Entry),
}

/// Decides a key from the listings alone (no IO).
pub(super) fn plan(opts: &JobOptions, progress: &Progress, item: Item) -> Step {
    match (opts.mode, item) {
        (_, Item::ListError(e)) => Step::Done(Outcome::ListFailure(e)),
        (Mode::Check, Item::SrcOnly(s)) => {
            Step::Done(Outcome::Differs(diff(s.key, DiffKind::Missing, None)))
        }
        (Mode::Check, Item::DstOnly(d)) => {
            Step::Done(Outcome::Differs(diff(d.key, DiffKind::Extra, None)))
        }
        (Mode::Check, Item::Both(s, d)) => {
            if s.size != d.size {
                let detail = format!("size {} at source, {} at destination", s.size, d.size);
                Step::Done(Outcome::Differs(diff(
                    s.key,
                    DiffKind::Differs,
                    Some(detail),
                )))
            } else if opts.checksum {
                Step::Compare(s)
            } else {
                Step::Done(Outcome::Nothing)
            }
        }
        (_, Item::DstOnly(d)) => Step::Done(if opts.mode == Mode::Sync && opts.delete {
            Outcome::Delete(d)
        } else {
            Outcome::Nothing
        }),
        (_, Item::SrcOnly(s)) => Step::Transfer(s),
        (_, Item::Both(s, d)) => {
            let copy = match opts.overwrite {
                Overwrite::Always => true,
                Overwrite::Never => false,
                Overwrite::IfNewer => newer(&s, &d),
                Overwrite::Different if s.size != d.size => true,
                Overwrite::Different if opts.checksum => return Step::CopyIfDifferent(s),
                Overwrite::Different => newer(&s, &d),
            };
            if copy {
                Step::Transfer(s)
            } else {
                progress.checked.fetch_add(1, Ordering::Relaxed);
                Step::Done(Outcome::Skipped)
            }
        }
    }
}

/// Carries out a step that needs IO.
pub(super) async fn execute(ctx: Arc<Ctx>, step: Step) -> Outcome {
    match step {
        Step::Done(o) => o,
        Step::Transfer(s) => transfer(&ctx, s).await,
        Step::CopyIfDifferent(s) => match same_content(&ctx, &s.key).await {
            Ok(true) => {
                ctx.progress.checked.fetch_add(1, Ordering::Relaxed);
                Outcome::Skipped
            }
            Ok(false) => transfer(&ctx, s).await,
            Err(e) if e.is_fatal_for_store() => Outcome::Fatal(e),
            Err(e) => failed(s.key, e),
        },
        Step::Compare(s) => match same_content(&ctx, &s.key).await {
            Ok(true) => Outcome::Nothing,
            Ok(false) => Outcome::Differs(diff(
                s.key,
                DiffKind::Differs,
                Some("content differs".into()),
            )),
            Err(e) if e.is_fatal_for_store() => Outcome::Fatal(e),
            Err(e) => failed(s.key, e),
        },
    }
}

/// Whether the source is newer than the destination, to the second: Azure and S3 keep
/// last-modified in whole seconds, local disks in nanoseconds.
fn newer(src: &Entry, dst: &Entry) -> bool {
    src.last_modified.timestamp() > dst.last_modified.timestamp()
}

fn diff(key: String, kind: DiffKind, detail: Option<String>) -> Difference {
    Difference { key, kind, detail }
}
