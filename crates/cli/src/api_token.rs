//! The API token that routes which change something always need. With no
//! `[server] token`, `georep serve` generates one at first start into a 0600 file beside
//! the state, and georep commands on the same machine read it from there.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::Result;
use georep_core::Topology;

use crate::topology::ConfigFileError;

/// Where a generated token lives: `STATE.api-token` / `STATE.events-token` beside a
/// SQLite state file.
pub(crate) fn path(topo: &Topology, kind: Kind) -> Option<PathBuf> {
    topo.state
        .sqlite_path()
        .map(|db| db.with_extension(kind.extension()))
}

/// Which generated token: the API's write token, or the storage-event webhook's.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Api,
    Events,
}

impl Kind {
    fn extension(self) -> &'static str {
        match self {
            Kind::Api => "api-token",
            Kind::Events => "events-token",
        }
    }

    fn configured(self, topo: &Topology) -> Option<&String> {
        match self {
            Kind::Api => topo.server.token.as_ref(),
            Kind::Events => topo.server.events_token.as_ref(),
        }
    }

    fn field(self) -> &'static str {
        match self {
            Kind::Api => "token = \"${GEOREP_API_TOKEN}\"",
            Kind::Events => "events_token = \"${GEOREP_EVENTS_TOKEN}\"",
        }
    }
}

/// A token for `serve`: the configured one, or the file's beside the state (made on
/// first start, 0600). Returns the file's path when the token came from it.
pub(crate) fn ensure(topo: &Topology, kind: Kind) -> Result<(String, Option<PathBuf>)> {
    if let Some(t) = kind.configured(topo) {
        return Ok((t.clone(), None));
    }
    let Some(path) = path(topo, kind) else {
        return Err(ConfigFileError(format!(
            "a state that is not a SQLite file has no place for a generated token; set [server] {}",
            kind.field()
        ))
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
                "cannot create the token file {}: {e}",
                path.display()
            ))
        })?;
    f.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| ConfigFileError(format!("cannot write {}: {e}", path.display())))?;
    Ok((token, Some(path)))
}

/// The token a client sends to the daemon at `base`: the configured one, else the
/// generated file's when it exists and is readable (root, or the user that runs the
/// daemon) and `base` is this machine (a loopback address, `localhost`, or the
/// configured listen address), so that `--api` pointed elsewhere never carries it off.
pub(crate) fn for_client(topo: &Topology, base: &str) -> Result<Option<String>> {
    if let Some(t) = &topo.server.token {
        return Ok(Some(t.clone()));
    }
    let Some(p) = path(topo, Kind::Api) else {
        return Ok(None);
    };
    if !is_this_machine(base, topo.server.listen) {
        tracing::warn!(api = %base, "not sending this machine's generated API token to another host; set [server] token to call a daemon elsewhere");
        return Ok(None);
    }
    read(&p)
}

/// A client of the daemon at `api` (default: `http://[server] listen`), with the token
/// this machine may send it.
pub(crate) fn client(topo: &Topology, api: Option<&str>) -> Result<georep_api::Client> {
    let base = api
        .map(str::to_string)
        .unwrap_or_else(|| format!("http://{}", topo.server.listen));
    let token = for_client(topo, &base)?;
    Ok(georep_api::Client::new(&base, token))
}

fn is_this_machine(base: &str, listen: std::net::SocketAddr) -> bool {
    let Ok(url) = url::Url::parse(base) else {
        return false;
    };
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback() || ip.is_unspecified() || std::net::IpAddr::V4(ip) == listen.ip()
        }
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.is_unspecified() || std::net::IpAddr::V6(ip) == listen.ip()
        }
        None => false,
    }
}

/// Reads a token file, refusing a link, a file others may read or write, a file owned by
/// another user, or one in a folder anyone may write to (someone could have put their
/// own token there). Checked on the opened file, so nothing can swap it in between.
fn read(path: &std::path::Path) -> Result<Option<String>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| -> anyhow::Error { ConfigFileError(why).into() };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(m) = std::fs::metadata(dir) {
            if m.permissions().mode() & 0o1002 == 0o002 {
                return Err(refuse(format!(
                    "the folder of the API token file, {}, may be written by anyone; run chmod o-w on it",
                    dir.display()
                )));
            }
        }
    }
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(
            rustix::fs::OFlags::NOFOLLOW.bits() as i32 | rustix::fs::OFlags::NONBLOCK.bits() as i32,
        )
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(refuse(format!(
                "the API token file {} is a symbolic link; remove it and restart georep serve",
                path.display()
            )))
        }
        Err(e) => return Err(refuse(format!("cannot read {}: {e}", path.display()))),
    };
    let meta = f
        .metadata()
        .map_err(|e| refuse(format!("cannot read {}: {e}", path.display())))?;
    if !meta.file_type().is_file() {
        return Err(refuse(format!(
            "the API token file {} is not a regular file; remove it and restart georep serve",
            path.display()
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(refuse(format!(
            "the API token file {} belongs to user {}, not to this user or root; remove it and restart georep serve",
            path.display(),
            meta.uid()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(refuse(format!(
            "the API token file {} may be read by others (mode {:o}); run chmod 600 on it, or remove it to get a new token",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    let mut t = String::new();
    f.take(4096)
        .read_to_string(&mut t)
        .map_err(|e| refuse(format!("cannot read {}: {e}", path.display())))?;
    match t.trim() {
        "" => Err(refuse(format!(
            "the API token file {} is empty; remove it and restart georep serve",
            path.display()
        ))),
        t => Ok(Some(t.to_string())),
    }
}

/// A daemon call's answer, or the exit code its error maps to (the error printed).
pub(crate) fn answered<T>(
    r: std::result::Result<T, georep_api::ClientError>,
) -> std::result::Result<T, u8> {
    r.map_err(|e| {
        eprintln!("georep: {e}");
        e.exit_class()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_token_goes_only_to_this_machine() {
        let listen: std::net::SocketAddr = "10.1.2.3:8080".parse().expect("addr");
        for here in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:2",
            "http://0.0.0.0:8080",
            "http://10.1.2.3:8080",
        ] {
            assert!(is_this_machine(here, listen), "{here}");
        }
        for away in [
            "http://10.9.9.9:8080",
            "https://georep.example.com",
            "http://localhost.evil.example",
            "not a url",
        ] {
            assert!(!is_this_machine(away, listen), "{away}");
        }
    }

    #[test]
    fn a_token_file_anyone_could_have_planted_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let good = dir.path().join("good.api-token");
        std::fs::write(&good, "t0k\n").expect("write");
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read(&good).expect("read").as_deref(), Some("t0k"));
        assert_eq!(read(&dir.path().join("none")).expect("read"), None);

        let link = dir.path().join("link.api-token");
        std::os::unix::fs::symlink(&good, &link).expect("symlink");
        let e = read(&link).expect_err("a link").to_string();
        assert!(e.contains("symbolic link"), "{e}");

        let open = dir.path().join("open.api-token");
        std::fs::write(&open, "x").expect("write");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = read(&open).expect_err("readable by others").to_string();
        assert!(e.contains("chmod 600"), "{e}");

        if rustix::process::geteuid().is_root() {
            let theirs = dir.path().join("theirs.api-token");
            std::fs::write(&theirs, "x").expect("write");
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
            std::os::unix::fs::chown(&theirs, Some(65534), None).expect("chown");
            let e = read(&theirs).expect_err("another user's").to_string();
            assert!(e.contains("belongs to user 65534"), "{e}");
        }

        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        let e = read(&good)
            .expect_err("a folder anyone may write")
            .to_string();
        assert!(e.contains("chmod o-w"), "{e}");
    }
}
