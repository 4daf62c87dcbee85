//! Filesystem notifications for local-folder sources: changed paths become keys that are
//! observed at once, so a written file is queued in milliseconds instead of at the next
//! scan. The scan stays as the safety net for anything a notification misses.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use crate::policy::{PolicyRuntime, Via};

/// Gathers bursts (an editor's write, truncate and rename) into one observation.
const DEBOUNCE: Duration = Duration::from_millis(30);

/// Starts watching `root`; the returned watcher must be kept alive.
pub(crate) fn start(
    rt: Arc<PolicyRuntime>,
    root: PathBuf,
    mut stop: watch::Receiver<bool>,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(move |ev| {
        // The receiver is gone only at shutdown.
        let _ = tx.send(ev);
    })?;
    watcher.watch(&root, RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                ev = rx.recv() => ev,
                _ = stop.changed() => None,
            };
            let Some(first) = first else { break };
            let mut keys = BTreeSet::new();
            let mut rescan = false;
            collect(&root, first, &mut keys, &mut rescan);
            let deadline = tokio::time::Instant::now() + DEBOUNCE;
            while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                collect(&root, ev, &mut keys, &mut rescan);
            }
            if rescan {
                rt.scan_now.notify_one();
            }
            if !keys.is_empty() {
                if let Err(e) = rt
                    .observe(keys.into_iter().map(|k| (k, None)).collect(), Via::FsNotify)
                    .await
                {
                    tracing::warn!(policy = rt.name(), error = %e, "cannot queue notified changes; the next scan will");
                }
            }
        }
    });
    Ok(watcher)
}

fn collect(
    root: &Path,
    ev: notify::Result<notify::Event>,
    keys: &mut BTreeSet<String>,
    rescan: &mut bool,
) {
    let ev = match ev {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!(error = %e, "filesystem notification error; rescanning");
            *rescan = true;
            return;
        }
    };
    if ev.need_rescan() {
        *rescan = true;
    }
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    // A file is observed when its writer closes it (or it is renamed into place, removed,
    // or its metadata changes), not on every write: copying a file mid-write would only
    // be redone, and could show a truncated version at the destination meanwhile.
    match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Create(CreateKind::Folder)
        | EventKind::Modify(ModifyKind::Name(_))
        | EventKind::Modify(ModifyKind::Metadata(_))
        | EventKind::Remove(_)
        | EventKind::Any
        | EventKind::Other => {}
        EventKind::Access(_) | EventKind::Create(_) | EventKind::Modify(_) => return,
    }
    for path in ev.paths {
        if path.is_dir() {
            // A folder moved in brings files that raise no events of their own.
            for e in walkdir_files(&path) {
                if let Some(k) = key_of(root, &e) {
                    keys.insert(k);
                }
            }
        } else if let Some(k) = key_of(root, &path) {
            keys.insert(k);
        }
    }
}

fn walkdir_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// The store key of a path under `root`, or None for georep's own temp files and names
/// that cannot be keys.
fn key_of(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for c in rel.components() {
        let s = c.as_os_str().to_str()?;
        parts.push(s);
    }
    let name = parts.last()?;
    if name.starts_with(georep_storage::TEMP_PREFIX) {
        return None;
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_paths() {
        let root = Path::new("/r");
        assert_eq!(
            key_of(root, Path::new("/r/a/b.txt")).as_deref(),
            Some("a/b.txt")
        );
        assert_eq!(key_of(root, Path::new("/r")), None);
        assert_eq!(key_of(root, Path::new("/other/x")), None);
        let tmp = format!("/r/a/{}123-x", georep_storage::TEMP_PREFIX);
        assert_eq!(key_of(root, Path::new(&tmp)), None);
    }
}
