//! What a sync wrote where, kept per sync in `secrets/NAME.db` beside the state file
//! (SQLite, WAL, 0600, opened only when it is not a link): per destination and secret,
//! the versions carried (source id, destination id, sequence, and the value's keyed
//! hash — HMAC-SHA256 with `GEOREP_SECRETS_KEY`, never the value), the fingerprints
//! seen, and the status. A stolen ledger says which secrets exist and when they
//! changed, nothing about their values. An exclusive lock file keeps two passes of one
//! sync (the daemon's and a command's) apart. Each write is recorded the moment the
//! vault accepts it, so a pass killed at any point resumes where it stopped.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SecretsError};

/// The environment variable the keyed-hash key comes from.
pub const KEY_ENV: &str = "GEOREP_SECRETS_KEY";

/// The HMAC key: from the environment, never stored.
pub struct MacKey(aws_lc_rs::hmac::Key);

impl MacKey {
    /// From `GEOREP_SECRETS_KEY` (at least 32 characters).
    pub fn from_env() -> Result<Self> {
        let k = std::env::var(KEY_ENV).unwrap_or_default();
        Self::new(k.trim().as_bytes())
    }

    pub fn new(key: &[u8]) -> Result<Self> {
        if key.len() < 32 {
            return Err(SecretsError::Config(format!(
                "{KEY_ENV} is {}: export {KEY_ENV}=$(openssl rand -hex 32) (at least 32 characters; keep it out of the state folder: it keys the hashes that detect changes without storing values)",
                if key.is_empty() { "not set" } else { "shorter than 32 characters" }
            )));
        }
        Ok(Self(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            key,
        )))
    }

    /// The keyed hash of `data` in `domain`, hex.
    pub fn mac(&self, domain: &str, data: &[u8]) -> String {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.0);
        ctx.update(domain.as_bytes());
        ctx.update(&[0]);
        ctx.update(data);
        let tag = ctx.sign();
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One version georep carried to a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    pub seq: u64,
    pub src: String,
    pub dst: String,
    pub mac: String,
}

/// A secret at one destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The source fingerprint it was last brought in step with.
    pub src_fp: String,
    /// The destination's fingerprint right after georep's last change.
    pub dst_fp: String,
    pub dst_name: String,
    pub carried: Vec<Carried>,
    /// Keyed hash of the newest version's attributes.
    pub attrs_mac: String,
    pub status: String,
    pub detail: String,
    pub updated: String,
}

pub struct Ledger {
    conn: Mutex<Connection>,
    path: PathBuf,
    sync: String,
    _lock: std::fs::File,
}

impl Ledger {
    /// Opens (creating) `dir/NAME.db`, holding `dir/NAME.lock` until dropped. A ledger
    /// written with another key is refused unless `rekey` (its hashes are then
    /// dropped and every secret compared afresh).
    pub fn open(dir: &Path, sync: &str, key: &MacKey, rekey: bool) -> Result<Self> {
        let fail = |path: &Path, e: &dyn std::fmt::Display| SecretsError::Ledger {
            sync: sync.to_string(),
            path: path.display().to_string(),
            detail: e.to_string(),
        };
        create_private_dir(dir).map_err(|e| fail(dir, &e))?;
        let lock_path = dir.join(format!("{sync}.lock"));
        let lock = open_nofollow(&lock_path).map_err(|e| fail(&lock_path, &e))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| SecretsError::Ledger {
                sync: sync.to_string(),
                path: lock_path.display().to_string(),
                detail: "another pass of this sync is running (the daemon or another command); wait for it, or run it through the daemon".into(),
            },
        )?;
        let path = dir.join(format!("{sync}.db"));
        drop(open_nofollow(&path).map_err(|e| fail(&path, &e))?);
        // SQLite opens its journal files by name: none may be a link.
        for side in ["db-wal", "db-shm", "db-journal"] {
            let p = dir.join(format!("{sync}.{side}"));
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(fail(&p, &"a symbolic link, which georep does not follow"));
            }
        }
        let conn = Connection::open(&path).map_err(|e| fail(&path, &e))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS rows (
               vault TEXT NOT NULL, name TEXT NOT NULL, body TEXT NOT NULL,
               PRIMARY KEY (vault, name));",
        )
        .map_err(|e| fail(&path, &e))?;
        let ledger = Self {
            conn: Mutex::new(conn),
            path,
            sync: sync.to_string(),
            _lock: lock,
        };
        // A changed key makes every recorded hash meaningless: refused (a mistyped or
        // missing key must not wipe the record), or with `rekey` forgotten, and the next
        // pass compares source and destination values afresh.
        let check = key.mac("key-check", b"georep");
        match ledger.meta("key_check")? {
            Some(k) if k == check => {}
            Some(_) if !rekey => {
                return Err(SecretsError::Config(format!(
                    "secret sync '{sync}': {KEY_ENV} is not the key its state was written with; export the right one, or pass --rekey to drop the recorded hashes and compare every secret afresh"
                )))
            }
            Some(_) => {
                tracing::warn!(sync, "GEOREP_SECRETS_KEY changed: the recorded hashes are dropped and every secret is compared afresh");
                ledger.exec("DELETE FROM rows", [])?;
                ledger.set_meta("key_check", &check)?;
            }
            None => ledger.set_meta("key_check", &check)?,
        }
        Ok(ledger)
    }

    /// Opens `dir/NAME.db` to read only, without the lock (status while a pass runs);
    /// `None` when the sync never ran.
    pub fn open_read(dir: &Path, sync: &str) -> Result<Option<Self>> {
        let path = dir.join(format!("{sync}.db"));
        let fail = |e: &dyn std::fmt::Display| SecretsError::Ledger {
            sync: sync.to_string(),
            path: path.display().to_string(),
            detail: e.to_string(),
        };
        match std::fs::symlink_metadata(&path) {
            Err(_) => return Ok(None),
            Ok(m) if !m.file_type().is_file() => {
                return Err(fail(
                    &"not a regular file (a link?); georep does not follow it",
                ))
            }
            Ok(_) => {}
        }
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| fail(&e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| fail(&e))?;
        // A first pass may have created the file and not yet its tables.
        let ready: bool = conn
            .query_row(
                "SELECT count(*) = 2 FROM sqlite_master WHERE type = 'table' AND name IN ('meta', 'rows')",
                [],
                |r| r.get(0),
            )
            .map_err(|e| fail(&e))?;
        if !ready {
            return Ok(None);
        }
        let lock = std::fs::File::open(&path).map_err(|e| fail(&e))?;
        Ok(Some(Self {
            conn: Mutex::new(conn),
            path,
            sync: sync.to_string(),
            _lock: lock,
        }))
    }

    fn err(&self, e: impl std::fmt::Display) -> SecretsError {
        SecretsError::Ledger {
            sync: self.sync.clone(),
            path: self.path.display().to_string(),
            detail: e.to_string(),
        }
    }

    fn exec<P: rusqlite::Params>(&self, sql: &str, p: P) -> Result<()> {
        let c = self.conn.lock().map_err(|_| self.err("poisoned"))?;
        c.execute(sql, p).map(|_| ()).map_err(|e| self.err(e))
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        let c = self.conn.lock().map_err(|_| self.err("poisoned"))?;
        c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.exec(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
    }

    pub fn clear_meta(&self, key: &str) -> Result<()> {
        self.exec("DELETE FROM meta WHERE key = ?1", [key])
    }

    pub fn row(&self, vault: &str, name: &str) -> Result<Option<Row>> {
        let c = self.conn.lock().map_err(|_| self.err("poisoned"))?;
        let body: Option<String> = c
            .query_row(
                "SELECT body FROM rows WHERE vault = ?1 AND name = ?2",
                params![vault, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
    }

    /// Every row of one destination (all destinations when `None`).
    pub fn rows(&self, vault: Option<&str>) -> Result<Vec<(String, String, Row)>> {
        let c = self.conn.lock().map_err(|_| self.err("poisoned"))?;
        let mut st = c
            .prepare("SELECT vault, name, body FROM rows WHERE ?1 IS NULL OR vault = ?1 ORDER BY vault, name")
            .map_err(|e| self.err(e))?;
        let out = st
            .query_map([vault], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?
            .filter_map(|r| r.ok())
            .filter_map(|(v, n, b)| Some((v, n, serde_json::from_str(&b).ok()?)))
            .collect();
        Ok(out)
    }

    pub fn put(&self, vault: &str, name: &str, row: &Row) -> Result<()> {
        let body = serde_json::to_string(row).map_err(|e| self.err(e))?;
        self.exec(
            "INSERT INTO rows (vault, name, body) VALUES (?1, ?2, ?3) ON CONFLICT(vault, name) DO UPDATE SET body = excluded.body",
            params![vault, name, body],
        )
    }
}

/// Opens or creates a regular file 0600 without following a link.
fn open_nofollow(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(p)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(std::io::Error::other(
            "it is a symbolic link, which georep does not follow",
        )),
        // Others who can write here could swap the ledger or its lock.
        Ok(m) if m.mode() & 0o022 != 0 || m.uid() != rustix::process::geteuid().as_raw() => {
            Err(std::io::Error::other(format!(
                "the folder is writable by others or owned by another user (mode {:o}); chmod 700 it",
                m.mode() & 0o777
            )))
        }
        Ok(_) => Ok(()),
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_and_a_new_key_forgets_them() {
        assert!(MacKey::new(b"short").is_err());
        let k1 = MacKey::new(&[1; 32]).expect("key");
        let k2 = MacKey::new(&[2; 32]).expect("key");
        assert_ne!(k1.mac("v", b"hunter2"), k2.mac("v", b"hunter2"));
        assert_ne!(k1.mac("v", b"hunter2"), k1.mac("a", b"hunter2"));
        let dir = tempfile::tempdir().expect("tmp");
        {
            let l = Ledger::open(dir.path(), "s", &k1, false).expect("opens");
            l.put(
                "kv",
                "a",
                &Row {
                    status: "in_sync".into(),
                    ..Row::default()
                },
            )
            .expect("put");
            assert!(
                Ledger::open(dir.path(), "s", &k1, false).is_err(),
                "a second pass is locked out"
            );
        }
        let l = Ledger::open(dir.path(), "s", &k1, false).expect("reopens");
        assert!(l.row("kv", "a").expect("row").is_some());
        drop(l);
        assert!(
            Ledger::open(dir.path(), "s", &k2, false).is_err(),
            "another key is refused"
        );
        let l = Ledger::open(dir.path(), "s", &k2, true).expect("reopens with rekey");
        assert!(l.row("kv", "a").expect("row").is_none());
    }
}
