//! Schema migrations, applied in order and recorded in `PRAGMA user_version`.

/// Each entry moves the schema one version up; never edit a released entry, append one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: policies, manifests, the work queue.
    "
    CREATE TABLE policies (
        name            TEXT PRIMARY KEY,
        config          TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        paused          TEXT,
        allow_mass_delete INTEGER NOT NULL DEFAULT 0,
        last_scan_at    INTEGER,
        last_scan_ms    INTEGER,
        last_scan_error TEXT,
        scans           INTEGER NOT NULL DEFAULT 0
    );
    -- What was last seen at each policy's source: a scan diffs its listing against this.
    CREATE TABLE manifest (
        policy TEXT NOT NULL,
        key    TEXT NOT NULL,
        size   INTEGER NOT NULL,
        etag   TEXT,
        mtime  INTEGER NOT NULL,
        PRIMARY KEY (policy, key)
    ) WITHOUT ROWID;
    -- One row per policy, destination and key: the latest operation and its status.
    CREATE TABLE items (
        policy          TEXT NOT NULL,
        dest            TEXT NOT NULL,
        key             TEXT NOT NULL,
        op              TEXT NOT NULL,
        status          TEXT NOT NULL,
        generation      INTEGER NOT NULL,
        size            INTEGER NOT NULL,
        change_time     INTEGER NOT NULL,
        enqueued_at     INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        next_attempt_at INTEGER NOT NULL,
        lease_until     INTEGER NOT NULL DEFAULT 0,
        replicated_at   INTEGER,
        PRIMARY KEY (policy, dest, key)
    ) WITHOUT ROWID;
    CREATE INDEX items_open ON items (policy, next_attempt_at) WHERE status != 'complete';
    CREATE INDEX items_done ON items (policy, dest, replicated_at) WHERE status = 'complete';
    ",
    // 2: object lookups by key across destinations; scans remember their last success;
    //    policies remember their destinations (to backfill new ones).
    "
    CREATE INDEX items_key ON items (policy, key);
    CREATE INDEX items_due ON items (policy, next_attempt_at)
        WHERE status != 'complete' AND lease_until = 0;
    ALTER TABLE policies ADD COLUMN last_ok_scan_at INTEGER;
    ALTER TABLE policies ADD COLUMN source TEXT;
    ALTER TABLE policies ADD COLUMN dests TEXT;
    ",
    // 3: failover groups: the current epoch and primary of each group, and its history.
    "
    CREATE TABLE failover (
        grp        TEXT PRIMARY KEY,
        epoch      INTEGER NOT NULL,
        primary_member TEXT NOT NULL,
        state      TEXT NOT NULL,
        fenced     TEXT,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE failover_history (
        grp        TEXT NOT NULL,
        epoch      INTEGER NOT NULL,
        kind       TEXT NOT NULL,
        from_member TEXT NOT NULL,
        to_member  TEXT NOT NULL,
        started_at INTEGER NOT NULL,
        finished_at INTEGER,
        write_gap_ms INTEGER,
        data_loss  TEXT,
        PRIMARY KEY (grp, epoch)
    );
    ",
    // 4: how each role change ended (done, rolled back, finished after a restart) and
    // the members it left needing a reseed.
    "
    ALTER TABLE failover_history ADD COLUMN outcome TEXT;
    ALTER TABLE failover_history ADD COLUMN left_behind TEXT;
    ",
    // 5: an operator's pause (`georep pause`): when and why, or NULL.
    "
    ALTER TABLE policies ADD COLUMN held TEXT;
    ",
];
