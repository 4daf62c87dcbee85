//! The API token that routes which change something always need. With no
//! `[server] token`, `georep serve` generates one at first start into a 0600 file beside
//! the state, and georep commands on the same machine read it from there.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::Result;
use georep_core::Topology;

use crate::topology::ConfigFileError;

/// Where the generated token lives: `STATE.api-token` beside a SQLite state file.
pub(crate) fn path(topo: &Topology) -> Option<PathBuf> {
    topo.state
        .sqlite_path()
        .map(|db| db.with_extension("api-token"))
}

/// The write token for `serve`: the configured one, or the file's (made on first start).
/// Returns the file's path when the token came from it.
pub(crate) fn ensure(topo: &Topology) -> Result<(String, Option<PathBuf>)> {
    if let Some(t) = &topo.server.token {
        return Ok((t.clone(), None));
    }
    let Some(path) = path(topo) else {
        return Err(ConfigFileError(
            "a state that is not a SQLite file has no place for a generated API token; set [server] token = \"${GEOREP_API_TOKEN}\"".into(),
        )
        .into());
    };
    if let Some(t) = read(&path)? {
        return Ok((t, Some(path)));
    }
    let token: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| {
            ConfigFileError(format!(
                "cannot create the API token file {}: {e}",
                path.display()
            ))
        })?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| ConfigFileError(format!("cannot write {}: {e}", path.display())))?;
    Ok((token, Some(path)))
}

/// The token a client on this machine sends: the configured one, else the generated
/// file's when it exists and is readable (root, or the user that runs the daemon).
pub(crate) fn for_client(topo: &Topology) -> Result<Option<String>> {
    if let Some(t) = &topo.server.token {
        return Ok(Some(t.clone()));
    }
    match path(topo) {
        Some(p) => read(&p),
        None => Ok(None),
    }
}

/// Reads a token file, refusing a link or a file others may read or write.
fn read(path: &std::path::Path) -> Result<Option<String>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) => {
            return Err(ConfigFileError(format!("cannot read {}: {e}", path.display())).into())
        }
    };
    if !meta.file_type().is_file() {
        return Err(ConfigFileError(format!(
            "the API token file {} is not a regular file (a link?); remove it and restart georep serve",
            path.display()
        ))
        .into());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(ConfigFileError(format!(
            "the API token file {} may be read by others (mode {:o}); run chmod 600 on it, or remove it to get a new token",
            path.display(),
            meta.permissions().mode() & 0o777
        ))
        .into());
    }
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
        Ok(_) => Err(ConfigFileError(format!(
            "the API token file {} is empty; remove it and restart georep serve",
            path.display()
        ))
        .into()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(None),
        Err(e) => Err(ConfigFileError(format!("cannot read {}: {e}", path.display())).into()),
    }
}
