//! The durable outbox of one relay: an SQLite file of its own beside the state file,
//! in WAL mode with `synchronous = FULL`, so an event is on disk (fsync'd) before the
//! publisher hears 2xx. Appends from concurrent requests share one commit (group
//! commit, on one writer thread); deliveries read on a second connection. Each
//! delivery stream keeps a cursor (the last sequence number it delivered); events every
//! cursor has passed are deleted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::error::{RelayError, Result};

/// One accepted event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: i64,
    /// `eventgrid` or `cloudevents`: a delivery never mixes the two.
    pub schema: String,
    /// The partition key: a subject or source (events), a data collection rule's
    /// stream, a Loki label set, an Elasticsearch index.
    pub partition: String,
    pub id: String,
    pub body: Vec<u8>,
    pub accepted_ms: i64,
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub schema: &'static str,
    pub partition: String,
    pub id: String,
    pub body: Vec<u8>,
    /// Only this target (a dead letter replayed in `replicate` mode); `None`: all.
    pub only: Option<String>,
}

/// A dead letter as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: i64,
    pub target: String,
    pub event_id: String,
    pub reason: String,
    pub at_ms: i64,
}

/// A failover as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    pub at_ms: i64,
    pub from: String,
    pub to: String,
    pub reason: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  schema TEXT NOT NULL,
  part TEXT NOT NULL,
  id TEXT NOT NULL,
  body BLOB NOT NULL,
  accepted_ms INTEGER NOT NULL,
  only_target TEXT
);
CREATE TABLE IF NOT EXISTS cursors (stream TEXT PRIMARY KEY, seq INTEGER NOT NULL, delivered INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS dead_letters (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  target TEXT NOT NULL,
  schema TEXT NOT NULL,
  event_id TEXT NOT NULL,
  body BLOB NOT NULL,
  reason TEXT NOT NULL,
  at_ms INTEGER NOT NULL,
  part TEXT NOT NULL DEFAULT '',
  accepted_ms INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS failovers (id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, from_target TEXT NOT NULL, to_target TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

type Job = Box<dyn FnOnce(&Connection) -> rusqlite::Result<u64> + Send>;

/// The outbox of one relay.
pub struct Outbox {
    relay: String,
    path: PathBuf,
    jobs: Mutex<mpsc::Sender<(Job, oneshot::Sender<rusqlite::Result<u64>>)>>,
    reader: Mutex<Connection>,
    /// Bytes of event bodies held (undelivered by some stream).
    bytes: Arc<AtomicU64>,
    max_bytes: u64,
}

/// Brings an outbox made by an earlier georep up to date: dead letters keep their
/// partition and acceptance time (a replayed record goes where it was going), and the
/// outbox has an instance id (ids the relay makes stay unique if the file is remade).
fn migrate(c: &Connection) -> rusqlite::Result<()> {
    let mut cols = Vec::new();
    {
        let mut st = c.prepare("PRAGMA table_info(dead_letters)")?;
        let rows = st.query_map([], |r| r.get::<_, String>(1))?;
        for r in rows {
            cols.push(r?);
        }
    }
    if !cols.iter().any(|c| c == "part") {
        c.execute_batch("ALTER TABLE dead_letters ADD COLUMN part TEXT NOT NULL DEFAULT ''; ALTER TABLE dead_letters ADD COLUMN accepted_ms INTEGER NOT NULL DEFAULT 0;")?;
    }
    let instance = format!("{:08x}", rand::random::<u32>());
    c.execute(
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('instance', ?1)",
        [instance],
    )?;
    Ok(())
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    // Every commit reaches the disk before it returns: an acknowledged event survives
    // power loss, not only a crash of the process.
    c.pragma_update(None, "synchronous", "FULL")?;
    Ok(c)
}

impl Outbox {
    /// Opens (or creates) the outbox file at `path`, readable by its owner only (it
    /// holds event bodies); neither it nor its folder may be a symbolic link.
    pub fn open(relay: &str, path: &Path, max_bytes: u64) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let err = |e: &dyn std::fmt::Display| RelayError::outbox(relay, path, e);
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| err(&e))?;
            if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(err(&"its folder is a symbolic link; georep does not follow links it did not make: remove it"));
            }
        }
        // Created 0600 here, without following a link; SQLite's -wal and -shm files
        // take the same mode.
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|e| err(&format!("{e} (a symbolic link is refused: georep does not follow links it did not make)")))?;
        let w = connect(path).map_err(|e| err(&e))?;
        w.execute_batch(SCHEMA).map_err(|e| err(&e))?;
        migrate(&w).map_err(|e| err(&e))?;
        // Held: undelivered events and dead letters, both on disk.
        let held: i64 = w
            .query_row(
                "SELECT (SELECT COALESCE(SUM(LENGTH(body)), 0) FROM events) + (SELECT COALESCE(SUM(LENGTH(body)), 0) FROM dead_letters)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| err(&e))?;
        let reader = connect(path).map_err(|e| err(&e))?;
        let (tx, rx) = mpsc::channel::<(Job, oneshot::Sender<rusqlite::Result<u64>>)>();
        let name = format!("georep-outbox-{relay}");
        std::thread::Builder::new()
            .name(name)
            .spawn(move || writer(w, rx))
            .map_err(|e| err(&e))?;
        Ok(Self {
            relay: relay.to_string(),
            path: path.to_path_buf(),
            jobs: Mutex::new(tx),
            reader: Mutex::new(reader),
            bytes: Arc::new(AtomicU64::new(held.max(0) as u64)),
            max_bytes,
        })
    }

    /// Opens an existing outbox to read only (`georep status` beside a running daemon);
    /// `None` when the relay has never run. Writes fail.
    pub fn open_read_only(relay: &str, path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        let err = |e: &dyn std::fmt::Display| RelayError::outbox(relay, path, e);
        let reader = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| err(&e))?;
        reader
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| err(&e))?;
        let (tx, _) = mpsc::channel();
        Ok(Some(Self {
            relay: relay.to_string(),
            path: path.to_path_buf(),
            jobs: Mutex::new(tx),
            reader: Mutex::new(reader),
            bytes: Arc::new(AtomicU64::new(0)),
            max_bytes: 0,
        }))
    }

    fn err(&self, e: impl std::fmt::Display) -> RelayError {
        RelayError::outbox(&self.relay, &self.path, e)
    }

    /// Runs `job` on the writer thread in a transaction shared with whatever else is
    /// queued, and returns once it is committed.
    async fn write(&self, job: Job) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send((job, tx))
            .map_err(|_| self.err("the writer thread ended"))?;
        rx.await
            .map_err(|_| self.err("the writer thread ended"))?
            .map_err(|e| self.err(e))
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let c = self
            .reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&c).map_err(|e| self.err(e))
    }

    /// Bytes of events and dead letters held.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Gives back `n` held bytes, never below zero.
    fn release(&self, n: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                Some(b.saturating_sub(n))
            });
    }

    /// Appends `events` durably; [`RelayError::Full`] when they would take the outbox
    /// past its size (nothing is appended then).
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<()> {
        let size: u64 = events.iter().map(|e| e.body.len() as u64).sum();
        // Reserved first, so concurrent requests cannot overshoot together.
        let before = self.bytes.fetch_add(size, Ordering::SeqCst);
        if before.saturating_add(size) > self.max_bytes {
            self.release(size);
            return Err(RelayError::Full(self.relay.clone()));
        }
        let at = now_ms();
        let done = self
            .write(Box::new(move |c| {
                let mut st = c.prepare_cached(
                    "INSERT INTO events (schema, part, id, body, accepted_ms, only_target) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for e in &events {
                    st.execute(params![e.schema, e.partition, e.id, e.body, at, e.only])?;
                }
                Ok(0)
            }))
            .await;
        if done.is_err() {
            self.release(size);
        }
        done.map(|_| ())
    }

    /// Where `stream` is (its last delivered sequence number; 0 for a new stream) and
    /// how many events it delivered.
    pub fn cursor(&self, stream: &str) -> Result<(i64, u64)> {
        self.read(|c| {
            c.query_row(
                "SELECT seq, delivered FROM cursors WHERE stream = ?1",
                [stream],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?.max(0) as u64)),
            )
            .optional()
            .map(|o| o.unwrap_or((0, 0)))
        })
    }

    /// Up to `limit` events after `after`, oldest first, of one schema (the first
    /// one's) and at most `max_bytes` of bodies (at least one event), for `target`
    /// (`Some`: events addressed to another target are skipped; `None`: all, as a
    /// failover stream delivers them).
    pub fn next_batch(
        &self,
        after: i64,
        target: Option<&str>,
        (limit, max_bytes): (u32, usize),
    ) -> Result<Vec<Stored>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT seq, schema, id, body, accepted_ms, part FROM events WHERE seq > ?1 AND (?2 IS NULL OR only_target IS NULL OR only_target = ?2) ORDER BY seq LIMIT ?3",
            )?;
            let rows = st.query_map(params![after, target, limit], |r| {
                Ok(Stored {
                    seq: r.get(0)?,
                    schema: r.get(1)?,
                    id: r.get(2)?,
                    body: r.get(3)?,
                    accepted_ms: r.get(4)?,
                    partition: r.get(5)?,
                })
            })?;
            let mut out: Vec<Stored> = Vec::new();
            let mut bytes = 0usize;
            for row in rows {
                let row = row?;
                bytes += row.body.len() + 1;
                if out.first().is_some_and(|f| f.schema != row.schema)
                    || (!out.is_empty() && bytes > max_bytes)
                {
                    break;
                }
                out.push(row);
            }
            Ok(out)
        })
    }

    /// Events after `after` not delivered yet by that stream: count, bytes and the
    /// oldest one's acceptance time.
    pub fn pending(&self, after: i64, target: Option<&str>) -> Result<(u64, u64, Option<i64>)> {
        self.read(|c| {
            c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(accepted_ms) FROM events WHERE seq > ?1 AND (?2 IS NULL OR only_target IS NULL OR only_target = ?2)",
                params![after, target],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?.max(0) as u64,
                        r.get::<_, i64>(1)?.max(0) as u64,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                },
            )
        })
    }

    /// Every event accepted since the outbox was created.
    pub fn accepted(&self) -> Result<u64> {
        self.read(|c| {
            c.query_row(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0)",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| n.max(0) as u64)
    }

    /// Moves `stream` past `seq` (having delivered `count` more events), and deletes
    /// the events every stream in `streams` has passed.
    pub async fn advance(
        &self,
        stream: &str,
        seq: i64,
        count: u64,
        streams: &[String],
    ) -> Result<()> {
        self.advance_counted(stream, seq, (None, count), streams)
            .await
    }

    /// [`Self::advance`], also adding `count` to the `count:TARGET` counter of
    /// `target` when one is given, in the same commit (one fsync per delivery).
    pub async fn advance_counted(
        &self,
        stream: &str,
        seq: i64,
        (target, count): (Option<&str>, u64),
        streams: &[String],
    ) -> Result<()> {
        let (stream, streams) = (stream.to_string(), streams.to_vec());
        let counter = target.map(|t| format!("count:{t}"));
        let freed = self
            .write(Box::new(move |c| {
                const UPSERT: &str = "INSERT INTO cursors (stream, seq, delivered) VALUES (?1, ?2, ?3) ON CONFLICT (stream) DO UPDATE SET seq = MAX(seq, excluded.seq), delivered = delivered + excluded.delivered";
                c.execute(UPSERT, params![stream, seq, count as i64])?;
                if let Some(counter) = counter.filter(|_| count > 0) {
                    c.execute(UPSERT, params![counter, 0, count as i64])?;
                }
                let mut low = i64::MAX;
                for s in &streams {
                    let at: i64 = c
                        .query_row("SELECT seq FROM cursors WHERE stream = ?1", [s], |r| r.get(0))
                        .optional()?
                        .unwrap_or(0);
                    low = low.min(at);
                }
                if low == i64::MAX || low <= 0 {
                    return Ok(0);
                }
                let freed: i64 = c.query_row(
                    "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM events WHERE seq <= ?1",
                    [low],
                    |r| r.get(0),
                )?;
                c.execute("DELETE FROM events WHERE seq <= ?1", [low])?;
                Ok(freed.max(0) as u64)
            }))
            .await?;
        self.release(freed);
        Ok(())
    }

    /// Keeps `events` as dead letters of `target`, with why it refused them (they
    /// count towards `max_outbox` until replayed and delivered).
    pub async fn dead_letter(&self, target: &str, events: &[Stored], reason: &str) -> Result<()> {
        let size: u64 = events.iter().map(|e| e.body.len() as u64).sum();
        self.bytes.fetch_add(size, Ordering::SeqCst);
        let (target, reason, events) = (target.to_string(), reason.to_string(), events.to_vec());
        self.write(Box::new(move |c| {
            let at = now_ms();
            for e in &events {
                c.execute(
                    "INSERT INTO dead_letters (target, schema, event_id, body, reason, at_ms, part, accepted_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![target, e.schema, e.id, e.body, reason, at, e.partition, e.accepted_ms],
                )?;
            }
            Ok(0)
        }))
        .await
        .map(|_| ())
        .inspect_err(|_| self.release(size))
    }

    pub fn dead_letters(&self, limit: u32) -> Result<(u64, Vec<DeadLetter>)> {
        self.read(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0))?;
            let mut st = c.prepare_cached(
                "SELECT id, target, event_id, reason, at_ms FROM dead_letters ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = st
                .query_map([limit], |r| {
                    Ok(DeadLetter {
                        id: r.get(0)?,
                        target: r.get(1)?,
                        event_id: r.get(2)?,
                        reason: r.get(3)?,
                        at_ms: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((n.max(0) as u64, rows))
        })
    }

    /// Moves every dead letter back into the outbox (each addressed to the target that
    /// refused it when `per_target`), in the order they died; returns how many. The
    /// held bytes do not change: they move from one table to the other.
    pub async fn replay(&self, per_target: bool) -> Result<u64> {
        self.write(Box::new(move |c| {
            let at = now_ms();
            let n = c.execute(
                "INSERT INTO events (schema, part, id, body, accepted_ms, only_target) SELECT schema, part, event_id, body, CASE WHEN accepted_ms > 0 THEN accepted_ms ELSE ?1 END, CASE WHEN ?2 THEN target ELSE NULL END FROM dead_letters ORDER BY id",
                params![at, per_target],
            )?;
            c.execute("DELETE FROM dead_letters", [])?;
            Ok(n as u64)
        }))
        .await
    }

    pub async fn record_failover(&self, f: Failover) -> Result<()> {
        self.write(Box::new(move |c| {
            c.execute(
                "INSERT INTO failovers (at_ms, from_target, to_target, reason) VALUES (?1, ?2, ?3, ?4)",
                params![f.at_ms, f.from, f.to, f.reason],
            )?;
            Ok(0)
        }))
        .await
        .map(|_| ())
    }

    /// The most recent failovers, newest first, and how many there were.
    pub fn failovers(&self, limit: u32) -> Result<(u64, Vec<Failover>)> {
        self.read(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM failovers", [], |r| r.get(0))?;
            let mut st = c.prepare_cached(
                "SELECT at_ms, from_target, to_target, reason FROM failovers ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = st
                .query_map([limit], |r| {
                    Ok(Failover {
                        at_ms: r.get(0)?,
                        from: r.get(1)?,
                        to: r.get(2)?,
                        reason: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((n.max(0) as u64, rows))
        })
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.read(|c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
    }

    pub async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        let (k, v) = (key.to_string(), value.to_string());
        self.write(Box::new(move |c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![k, v],
            )?;
            Ok(0)
        }))
        .await
        .map(|_| ())
    }
}

/// The writer thread: takes every queued job, runs each in its own savepoint of one
/// transaction, commits once (one fsync for all), then answers each.
fn writer(mut c: Connection, rx: mpsc::Receiver<(Job, oneshot::Sender<rusqlite::Result<u64>>)>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let tx = match c.transaction() {
            Ok(t) => t,
            Err(e) => {
                let msg = e.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(rusqlite::Error::InvalidParameterName(msg.clone())));
                }
                continue;
            }
        };
        let mut results = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (job, reply) in batch {
            let r = match tx.execute_batch("SAVEPOINT job") {
                Ok(()) => match job(&tx) {
                    Ok(v) => tx.execute_batch("RELEASE job").map(|()| v),
                    Err(e) => {
                        let _ = tx.execute_batch("ROLLBACK TO job; RELEASE job");
                        Err(e)
                    }
                },
                Err(e) => Err(e),
            };
            results.push(r);
            replies.push(reply);
        }
        match tx.commit() {
            Ok(()) => {
                for (r, reply) in results.into_iter().zip(replies) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(rusqlite::Error::InvalidParameterName(msg.clone())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, schema: &'static str) -> NewEvent {
        NewEvent {
            schema,
            partition: "p".into(),
            id: id.into(),
            body: format!("{{\"id\":\"{id}\"}}").into_bytes(),
            only: None,
        }
    }

    #[tokio::test]
    async fn events_stay_until_every_stream_has_delivered_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("r.db");
        let o = Outbox::open("r", &path, 1 << 20).expect("open");
        o.append(vec![ev("a", "eventgrid"), ev("b", "eventgrid")])
            .await
            .expect("append");
        o.append(vec![ev("c", "cloudevents")])
            .await
            .expect("append");
        assert_eq!(o.accepted().expect("accepted"), 3);
        // A batch never mixes schemas.
        let b = o.next_batch(0, Some("x"), (10, 1 << 20)).expect("batch");
        assert_eq!(
            b.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let streams = vec!["x".to_string(), "y".to_string()];
        o.advance("x", 2, 2, &streams).await.expect("advance");
        // y has not delivered: everything stays.
        assert_eq!(o.pending(0, Some("y")).expect("pending").0, 3);
        o.advance("y", 3, 3, &streams).await.expect("advance");
        assert_eq!(o.pending(2, Some("x")).expect("pending").0, 1);
        assert_eq!(o.cursor("y").expect("cursor"), (3, 3));
        // Only events every stream passed (1 and 2) are gone; the bytes follow.
        assert_eq!(o.bytes(), b"{\"id\":\"c\"}".len() as u64);
        drop(o);
        // Reopened: the cursors and the held bytes are as they were.
        let o = Outbox::open("r", &path, 1 << 20).expect("reopen");
        assert_eq!(o.cursor("x").expect("cursor").0, 2);
        assert_eq!(
            o.next_batch(2, Some("x"), (10, 1 << 20)).expect("batch")[0].id,
            "c"
        );
        assert_eq!(o.bytes(), b"{\"id\":\"c\"}".len() as u64);
    }

    #[tokio::test]
    async fn a_full_outbox_refuses_and_dead_letters_replay_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let o = Outbox::open("r", &dir.path().join("r.db"), 15).expect("open");
        o.append(vec![ev("a", "eventgrid")])
            .await
            .expect("first fits");
        assert!(matches!(
            o.append(vec![ev("b", "eventgrid")]).await,
            Err(RelayError::Full(_))
        ));
        let a = o.next_batch(0, Some("t"), (10, 1 << 20)).expect("batch");
        o.dead_letter("t", &a, "400: bad").await.expect("dead");
        o.advance("t", a[0].seq, 0, &["t".to_string()])
            .await
            .expect("advance");
        // The dead letter is still held.
        assert_eq!(o.bytes(), a[0].body.len() as u64);
        assert_eq!(o.dead_letters(10).expect("list").0, 1);
        assert_eq!(o.replay(true).await.expect("replay"), 1);
        assert_eq!(o.dead_letters(10).expect("list").0, 0);
        // Back in the outbox for that target only.
        assert_eq!(
            o.next_batch(a[0].seq, Some("t"), (10, 1 << 20))
                .expect("batch")[0]
                .id,
            "a"
        );
        assert!(o
            .next_batch(a[0].seq, Some("other"), (10, 1 << 20))
            .expect("batch")
            .is_empty());
        // A failover stream takes it whatever it was addressed to.
        assert_eq!(
            o.next_batch(a[0].seq, None, (10, 1 << 20))
                .expect("batch")
                .len(),
            1
        );
        assert_eq!(o.bytes(), a[0].body.len() as u64);
        // Batches stop at a byte size, but always hold one event.
        assert_eq!(o.next_batch(0, None, (10, 1)).expect("batch").len(), 1);
    }
}
