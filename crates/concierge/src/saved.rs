//! What a concierge keeps across restarts of the daemon, in `concierges/NAME.json`
//! beside the state file: the hub devices are sent to, whether an operator holds it
//! there, the pins, and recent failovers. Written whole to a temporary file, synced and
//! renamed, so a kill at any point leaves the old or the new file; neither the file nor
//! its folder may be a symbolic link, and only the owner may read them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use georep_api::ConciergeFailover;
use serde::{Deserialize, Serialize};

/// How many failovers are remembered.
pub(crate) const RECENT: usize = 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Saved {
    /// The current hub's name.
    pub(crate) current: Option<String>,
    pub(crate) held: bool,
    pub(crate) pins: BTreeMap<String, String>,
    pub(crate) failovers: u64,
    /// Newest first.
    pub(crate) recent: Vec<ConciergeFailover>,
}

fn nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// The saved state at `path`; the default when there is none yet.
pub(crate) fn read(path: &Path) -> Result<Saved, String> {
    read_json(path)
}

/// Replaces the saved state at `path` with `s`.
pub(crate) fn write(path: &Path, s: &Saved) -> Result<(), String> {
    write_json(path, s)
}

/// A JSON file at `path`; the default when there is none yet.
pub(crate) fn read_json<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
) -> Result<T, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow())
        .open(path);
    let mut f = match f {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
        Err(e) => {
            return Err(format!(
                "cannot open {}: {e} (a symbolic link is refused: georep does not follow links it did not make)",
                path.display()
            ))
        }
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not what georep saved there ({e}); remove it and georep starts afresh (devices sent to the preferred hub, no pins, every identity set again)",
            path.display()
        )
    })
}

/// Replaces the JSON file at `path` with `s`, whole.
pub(crate) fn write_json<T: Serialize>(path: &Path, s: &T) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("cannot save {}: {e}", path.display());
    let dir = path.parent().ok_or_else(|| err(&"no folder"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err(&e))?;
    if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(err(
            &"its folder is a symbolic link; georep does not follow links it did not make: remove it",
        ));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let body = serde_json::to_vec(s).map_err(|e| err(&e))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nofollow())
        .open(&tmp)
        .map_err(|e| err(&e))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(|e| err(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(&e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_round_trips_and_refuses_links_and_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("concierges").join("devices.json");
        assert_eq!(read(&path).expect("none yet"), Saved::default());
        let s = Saved {
            current: Some("we".into()),
            held: true,
            pins: [("group:plant-a".to_string(), "ne".to_string())].into(),
            failovers: 2,
            recent: vec![ConciergeFailover {
                at: "2026-12-02T00:00:00Z".into(),
                from: "qc".into(),
                to: "we".into(),
                reason: "manual failover".into(),
            }],
        };
        write(&path, &s).expect("write");
        assert_eq!(read(&path).expect("read"), s);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        std::fs::write(&path, b"{not json").expect("corrupt");
        let e = read(&path).expect_err("corrupt");
        assert!(e.contains("remove it"), "{e}");

        let other = dir.path().join("elsewhere.json");
        std::fs::write(&other, b"{}").expect("other");
        std::fs::remove_file(&path).expect("rm");
        std::os::unix::fs::symlink(&other, &path).expect("link");
        assert!(read(&path).expect_err("link").contains("symbolic link"));
        assert!(
            write(&path, &s).is_ok(),
            "a rename replaces the link itself"
        );
        assert_eq!(std::fs::read(&other).expect("other"), b"{}");
    }
}
