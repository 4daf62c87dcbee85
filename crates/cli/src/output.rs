//! Shared printing helpers: sizes, the progress display, and exit codes for errors.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use georep_storage::{Progress, StorageError};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::exit;

/// Maps an error to its exit code: store errors by their class, bad input 2.
pub(crate) fn exit_code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(s) = cause.downcast_ref::<StorageError>() {
            return s.exit_class();
        }
        if let Some(f) = cause.downcast_ref::<crate::secrets::SecretsFailure>() {
            return u8::try_from(f.0.exit_code()).unwrap_or(1);
        }
        if let Some(b) = cause.downcast_ref::<georep_backup::BackupError>() {
            return b.exit_class();
        }
        if let Some(d) = cause.downcast_ref::<georep_db::DbError>() {
            return d.exit_class();
        }
        if let Some(r) = cause.downcast_ref::<georep_replicate::ReplicateError>() {
            return r.exit_class();
        }
        if let Some(e) = cause.downcast_ref::<georep_component::Error>() {
            return georep_daemon::exit_class(e);
        }
        if cause.downcast_ref::<georep_core::StoreUrlError>().is_some()
            || cause
                .downcast_ref::<crate::topology::ConfigFileError>()
                .is_some()
            || cause.downcast_ref::<georep_state::StateError>().is_some()
            || cause.downcast_ref::<georep_core::FilterError>().is_some()
            || cause.downcast_ref::<georep_core::SizeError>().is_some()
        {
            return exit::USAGE;
        }
    }
    1
}

/// Human-readable bytes, powers of 1024.
pub(crate) fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A progress line on stderr, drawn only when stdout is a terminal; stops when dropped.
pub(crate) struct ProgressView {
    bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressView {
    pub(crate) fn start(progress: Arc<Progress>) -> Self {
        if !std::io::stdout().is_terminal() {
            return Self {
                bar: None,
                task: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {msg} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        let b = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                let p = &progress;
                b.set_length(p.bytes_to_copy.load(Ordering::Relaxed));
                b.set_position(p.bytes_done.load(Ordering::Relaxed));
                let listing = if p.listing_done.load(Ordering::Relaxed) {
                    ""
                } else {
                    " (listing…)"
                };
                b.set_message(format!(
                    "objects {}/{} copied, {} checked, {} failed{listing} |",
                    p.copied.load(Ordering::Relaxed),
                    p.to_copy.load(Ordering::Relaxed),
                    p.checked.load(Ordering::Relaxed),
                    p.failed.load(Ordering::Relaxed),
                ));
                b.tick();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self {
            bar: Some(bar),
            task: Some(task),
        }
    }
}

impl Drop for ProgressView {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// `value` as pretty JSON, or `text()` for people.
pub(crate) fn print<T: serde::Serialize>(
    output: crate::Output,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match output {
        crate::Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        crate::Output::Text => println!("{}", text()),
    }
    Ok(())
}
