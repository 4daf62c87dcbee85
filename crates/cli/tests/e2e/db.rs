//! `georep db ...` against real PostgreSQL clusters: a primary and replicas in "regions"
//! that are separate clusters on free loopback ports.

use crate::common::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use georep_testkit::{wait_until, Postgres};
use serde_json::Value;

const SCHEMA: &str = "
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE orders (id bigserial PRIMARY KEY, customer int REFERENCES customers(id), amount numeric(10,2), note text);
CREATE INDEX orders_customer ON orders (customer);
INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 200) g;
INSERT INTO orders (customer, amount) SELECT 1 + g % 200, g * 1.5 FROM generate_series(1, 5000) g;
";

fn count(pg: &Postgres, table: &str) -> i64 {
    pg.psql("shop", &format!("SELECT count(*) FROM {table}"))
        .parse()
        .unwrap_or(-1)
}

fn status(cfg: &str) -> (i32, Value) {
    let (code, out, err) = run(
        &["db", "status", "shop", "-c", cfg, "--output", "json"],
        &[],
    )
    .parts();
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("status json ({e}): {out}{err}"));
    (code, v)
}

#[test]
fn geo_replica_lifecycle_setup_lag_sequences_drift_verify_teardown() {
    let (qc, we, ne) = (
        Postgres::start(&[]),
        Postgres::start(&[]),
        Postgres::start(&[]),
    );
    for pg in [&qc, &we, &ne] {
        pg.create_db("shop");
    }
    qc.psql("shop", SCHEMA);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = db_topology(
        dir.path(),
        &qc.url("shop"),
        &[("we", we.url("shop")), ("ne", ne.url("shop"))],
        "rpo = \"30s\"\nsequence_margin = 100\n",
    );
    let c = cfg.to_str().expect("utf-8");

    // Writes on the primary while setup copies: none may be lost.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (qc.url("shop"), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let ok = Command::new("psql")
                    .args([
                        "-X",
                        "-q",
                        "-d",
                        &url,
                        "-c",
                        "INSERT INTO orders (customer, amount) VALUES (7, 1.25)",
                    ])
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                n += ok as u32;
            }
            n
        })
    };
    let (code, out, err) = run(&["db", "setup", "shop", "-c", c], &[]).parts();
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer");
    assert_eq!(code, 0, "setup failed:\n{out}{err}");
    assert!(
        err.contains("tables synchronized"),
        "no progress shown: {err}"
    );
    assert!(written > 0, "the writer wrote nothing during setup");
    let want = count(&qc, "orders");
    for r in [&we, &ne] {
        assert!(
            wait_until(Duration::from_secs(60), || count(r, "orders") == want),
            "replica has {} orders, primary {want}",
            count(r, "orders")
        );
    }
    let (code, out, err) = run(&["db", "verify", "shop", "-c", c], &[]).parts();
    assert_eq!(code, 0, "verify after setup:\n{out}{err}");

    // Re-running setup is safe.
    let (code, out, err) = run(&["db", "setup", "shop", "-c", c], &[]).parts();
    assert_eq!(code, 0, "second setup:\n{out}{err}");

    // Status: both streaming, no drift, sequences ahead.
    let mut st = Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            st = status(c).1;
            st["replicas"]
                .as_array()
                .is_some_and(|a| a.iter().all(|r| r["state"] == "streaming"))
        }),
        "not streaming: {st:#}"
    );
    assert_eq!(st["replicas"][0]["sequences_behind"], 0, "{st:#}");
    assert_eq!(
        st["replicas"][0]["schema_drift"].as_array().map(Vec::len),
        Some(0),
        "{st:#}"
    );

    // Lag: a replica that stops falls behind, and catches up when it returns.
    ne.stop();
    qc.psql(
        "shop",
        "INSERT INTO orders (customer, amount) SELECT 3, g FROM generate_series(1, 20000) g",
    );
    let (code, v) = status(c);
    assert_eq!(code, 1, "status must fail while a replica is down: {v:#}");
    let ne_st = &v["replicas"][1];
    assert_eq!(ne_st["state"], "unreachable", "{v:#}");
    assert!(
        ne_st["lag_bytes"].as_i64().unwrap_or(0) > 100_000,
        "lag did not grow: {ne_st:#}"
    );
    assert!(
        ne_st["wal_retained_bytes"].as_i64().unwrap_or(0)
            >= ne_st["lag_bytes"].as_i64().unwrap_or(0)
    );
    assert_eq!(ne_st["rpo_breached"], true);
    ne.restart();
    assert!(
        wait_until(Duration::from_secs(90), || {
            let (_, v) = status(c);
            v["replicas"][1]["state"] == "streaming"
                && v["replicas"][1]["lag_bytes"].as_i64().unwrap_or(i64::MAX) < 100_000
        }),
        "the replica did not catch up"
    );
    let want = count(&qc, "orders");
    assert!(wait_until(Duration::from_secs(60), || count(&ne, "orders") == want));

    // Sequences: after a sync, an insert on a promoted replica does not collide.
    let (code, out, err) = run(&["db", "sync-sequences", "shop", "-c", c], &[]).parts();
    assert_eq!(code, 0, "{out}{err}");
    we.psql("shop", "ALTER SUBSCRIPTION georep_shop_we DISABLE");
    let id: i64 = we
        .psql(
            "shop",
            "INSERT INTO orders (customer, amount) VALUES (1, 9.99) RETURNING id",
        )
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("insert on the promoted replica");
    let max_primary: i64 = qc
        .psql("shop", "SELECT max(id) FROM orders")
        .parse()
        .expect("max");
    assert!(
        id > max_primary,
        "replica id {id} collides with the primary's ids (max {max_primary})"
    );
    we.psql("shop", &format!("DELETE FROM orders WHERE id = {id}"));
    we.psql("shop", "ALTER SUBSCRIPTION georep_shop_we ENABLE");

    // Drift: an index created behind georep's back is reported.
    we.psql("shop", "CREATE INDEX orders_amount ON orders (amount)");
    let (code, v) = status(c);
    assert_eq!(code, 1);
    let drift = v["replicas"][0]["schema_drift"].to_string();
    assert!(drift.contains("orders_amount"), "{v:#}");
    we.psql("shop", "DROP INDEX orders_amount");

    // DDL through georep keeps replication running: replicas first for an added column.
    let (code, out, err) = run(
        &[
            "db",
            "ddl",
            "shop",
            "-c",
            c,
            "ALTER TABLE customers ADD COLUMN tier int",
        ],
        &[],
    )
    .parts();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("replica 'we', then replica 'ne', then primary"),
        "{out}"
    );
    qc.psql(
        "shop",
        "INSERT INTO customers (name, tier) VALUES ('gold', 3)",
    );
    for r in [&we, &ne] {
        assert!(wait_until(Duration::from_secs(30), || r
            .psql("shop", "SELECT count(*) FROM customers WHERE tier = 3")
            == "1"));
    }

    // Verify finds a row changed behind replication's back, and names the range.
    ne.psql(
        "shop",
        "UPDATE orders SET amount = amount + 1 WHERE id = 4242",
    );
    let (code, out, err) =
        run(&["db", "verify", "shop", "-c", c, "--table", "orders"], &[]).parts();
    assert_eq!(code, 1, "verify must fail:\n{out}{err}");
    assert!(
        out.contains("DIFFERS") && out.contains("public.orders"),
        "{out}"
    );
    let line = out
        .lines()
        .find(|l| l.contains("keys ["))
        .unwrap_or_default()
        .to_string();
    let bounds: Vec<i64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    assert!(
        bounds.len() >= 2 && bounds[0] <= 4242 && 4242 < bounds[1],
        "range does not hold the row: {line}"
    );
    ne.psql(
        "shop",
        "UPDATE orders SET amount = amount - 1 WHERE id = 4242",
    );

    // Teardown leaves no slot and no publication or subscription.
    let (code, out, err) = run(&["db", "teardown", "shop", "-c", c], &[]).parts();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        qc.psql("shop", "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    assert_eq!(qc.psql("shop", "SELECT count(*) FROM pg_publication"), "0");
    for r in [&we, &ne] {
        assert_eq!(r.psql("shop", "SELECT count(*) FROM pg_subscription"), "0");
    }
}

#[test]
fn setup_names_every_unmet_prerequisite() {
    let qc = Postgres::start(&["wal_level = replica"]);
    let we = Postgres::start(&[]);
    qc.create_db("shop");
    we.create_db("shop");
    qc.psql("shop", "CREATE TABLE events (at timestamptz, payload text); CREATE TABLE logs (line text); CREATE TABLE ok (id int PRIMARY KEY)");
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = db_topology(dir.path(), &qc.url("shop"), &[("we", we.url("shop"))], "");
    let (code, out, err) = run(
        &["db", "setup", "shop", "-c", cfg.to_str().expect("utf-8")],
        &[],
    )
    .parts();
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("wal_level"), "{err}");
    assert!(
        err.contains("public.events") && err.contains("public.logs"),
        "tables not named: {err}"
    );
    assert!(!err.contains("public.ok"), "{err}");
    assert_eq!(
        qc.psql("shop", "SELECT count(*) FROM pg_publication"),
        "0",
        "nothing is created when checks fail"
    );

    // Unreachable replica: exit 3 naming it.
    let cfg = db_topology(
        dir.path(),
        &qc.url("shop"),
        &[("we", "postgres://postgres@127.0.0.1:1/shop".into())],
        "",
    );
    let (code, _, err) = run(
        &["db", "status", "shop", "-c", cfg.to_str().expect("utf-8")],
        &[],
    )
    .parts();
    assert!(code == 1 || code == 3, "{err}");
    let (code, _, err) = run(
        &["db", "setup", "shop", "-c", cfg.to_str().expect("utf-8")],
        &[],
    )
    .parts();
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("replica 'we'") && err.contains("127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn copy_moves_schema_data_indexes_and_sequences() {
    let pg = Postgres::start(&[]);
    pg.create_db("shop");
    pg.create_db("copy");
    pg.psql("shop", SCHEMA);
    pg.psql("shop", "CREATE SCHEMA billing; CREATE TABLE billing.invoices (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, total int); INSERT INTO billing.invoices (total) SELECT g FROM generate_series(1, 300) g");
    // Large enough to be split into block ranges copied in parallel.
    pg.psql("shop", "CREATE TABLE big (k text PRIMARY KEY, v int); INSERT INTO big SELECT 'k' || g, g FROM generate_series(1, 250000) g; ANALYZE big");
    let (code, out, err) = run(
        &[
            "db",
            "copy",
            "--from",
            &pg.url("shop"),
            "--to",
            &pg.url("copy"),
            "--jobs",
            "3",
        ],
        &[],
    )
    .parts();
    assert_eq!(code, 0, "{out}{err}");
    for t in ["customers", "orders", "billing.invoices", "big"] {
        assert_eq!(
            pg.psql(
                "shop",
                &format!(
                    "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {t} t"
                )
            ),
            pg.psql(
                "copy",
                &format!(
                    "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {t} t"
                )
            ),
            "{t} differs"
        );
    }
    assert_eq!(
        pg.psql(
            "copy",
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_customer'"
        ),
        "1"
    );
    assert_eq!(
        pg.psql(
            "copy",
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
        ),
        "1"
    );
    let id = pg.psql(
        "copy",
        "INSERT INTO orders (customer, amount) VALUES (1, 1) RETURNING id",
    );
    assert_eq!(
        id.lines().next().map(str::trim),
        Some("5001"),
        "sequence not carried over"
    );
    let (code, _, err) = run(
        &[
            "db",
            "copy",
            "--from",
            &pg.url("shop"),
            "--to",
            &pg.url("copy"),
        ],
        &[],
    )
    .parts();
    assert_eq!(
        code, 2,
        "copying over existing tables must be refused: {err}"
    );
}

#[test]
fn the_daemon_reports_replicas_and_keeps_sequences_ahead() {
    let (qc, we) = (Postgres::start(&[]), Postgres::start(&[]));
    for pg in [&qc, &we] {
        pg.create_db("shop");
    }
    qc.psql("shop", SCHEMA);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = db_topology(
        dir.path(),
        &qc.url("shop"),
        &[("we", we.url("shop"))],
        "rpo = \"4s\"\nsequence_sync_interval = \"1s\"\nsequence_margin = 50\n",
    );
    let (code, out, err) = run(
        &["db", "setup", "shop", "-c", cfg.to_str().expect("utf-8")],
        &[],
    )
    .parts();
    assert_eq!(code, 0, "{out}{err}");
    let s = georep_testkit::Serve::start(env!("CARGO_BIN_EXE_georep"), &cfg, &[]);
    let mut v = Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            let (code, got) = s.req(reqwest::Method::GET, "/api/v1/databases/shop", None);
            v = got;
            code == 200 && v["replicas"][0]["state"] == "streaming"
        }),
        "no streaming replica in the API: {v:#}\n{}",
        s.log_text()
    );
    // New rows on the primary advance its sequence; the daemon pushes the replica's ahead.
    qc.psql(
        "shop",
        "INSERT INTO orders (customer, amount) SELECT 1, g FROM generate_series(1, 500) g",
    );
    let primary: i64 = qc
        .psql("shop", "SELECT last_value FROM orders_id_seq")
        .parse()
        .expect("seq");
    assert!(
        wait_until(Duration::from_secs(30), || {
            we.psql("shop", "SELECT last_value FROM orders_id_seq")
                .parse::<i64>()
                .unwrap_or(0)
                >= primary + 50
        }),
        "replica sequence not kept ahead"
    );
    let m = s.req(reqwest::Method::GET, "/metrics", None).1;
    let m = m.as_str().unwrap_or_default();
    assert!(
        m.contains("georep_db_replica_lag_bytes{database=\"shop\",replica=\"we\"}"),
        "{m}"
    );
    assert!(
        m.contains("georep_db_replica_streaming{database=\"shop\",replica=\"we\"} 1"),
        "{m}"
    );
    // A stopped replica shows up as an RPO breach in the API and the metrics.
    we.stop();
    assert!(
        wait_until(Duration::from_secs(60), || {
            let (_, v) = s.req(reqwest::Method::GET, "/api/v1/databases/shop", None);
            v["rpo_breached"] == true && v["replicas"][0]["state"] == "unreachable"
        }),
        "no breach reported"
    );
    let m = s.req(reqwest::Method::GET, "/metrics", None).1;
    assert!(m
        .as_str()
        .unwrap_or_default()
        .contains("georep_db_replica_rpo_breached{database=\"shop\",replica=\"we\"} 1"));
    let (code, _) = s.req(reqwest::Method::GET, "/api/v1/databases/nope", None);
    assert_eq!(code, 404);
}

/// A duration past what a clock can hold is refused where it is typed (exit 2, naming
/// the field and the maximum), never accepted and then a panic when a deadline is built.
#[test]
fn huge_durations_are_refused_with_exit_2() {
    let dir = tempfile::tempdir().expect("tmp");
    // Nothing listens on port 1: before the bound, setup got past parsing and failed later.
    let url = "postgres://app@127.0.0.1:1/shop";
    let cfg = db_topology(dir.path(), url, &[("we", url.replace("shop", "shop2"))], "");
    let c = cfg.to_str().expect("utf-8");
    let (code, out, err) = run(
        &[
            "db",
            "setup",
            "shop",
            "-c",
            c,
            "--timeout",
            "18000000000000000000s",
        ],
        &[],
    )
    .parts();
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("--timeout") && err.contains("the maximum is 100 years"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let cfg = db_topology(
        dir.path(),
        url,
        &[("we", url.replace("shop", "shop2"))],
        "sequence_sync_interval = \"18000000000000000000s\"\n",
    );
    let (code, out, err) = run(&["validate", "-c", cfg.to_str().expect("utf-8")], &[]).parts();
    assert_eq!(code, 2, "{out}{err}");
    let all = format!("{out}{err}");
    assert!(
        all.contains("sequence_sync_interval: duration \"18000000000000000000s\" is too long: the maximum is 100 years"),
        "{all}"
    );
}

/// A password in a database URL, in the user info or as `?password=`, never reaches the
/// CLI's output, the daemon's log or its API, whichever path shows the URL: a reachable
/// primary with a refused replica, a refused primary, a refused state database.
#[test]
fn database_passwords_never_appear_in_output_logs_or_the_api() {
    const MARKERS: [&str; 2] = ["S3cr3tMarker", "S3cr3tMarker2"];
    let clean = |what: &str, text: &str| {
        for m in MARKERS {
            assert!(!text.contains(m), "{what} shows a password:\n{text}");
        }
    };
    let qc = Postgres::start(&[]);
    qc.create_db("shop");
    let refused = georep_testkit::free_port();
    let with_secrets = |port: u16, db: &str| {
        format!("postgres://postgres:S3cr3tMarker2@127.0.0.1:{port}/{db}?sslmode=disable&password=S3cr3tMarker")
    };
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("georep.toml");
    std::fs::write(
        &cfg,
        format!(
            "[regions.qc]\n[regions.we]\n\
             [[databases]]\nname = \"shop\"\nengine = \"postgres\"\nrpo = \"2s\"\n\
             primary = {{ region = \"qc\", url = \"{}\" }}\n\
             replicas = [{{ region = \"we\", url = \"{}\" }}]\n\
             [[databases]]\nname = \"lost\"\nengine = \"postgres\"\n\
             primary = {{ region = \"qc\", url = \"{}\" }}\n\
             replicas = [{{ region = \"we\", url = \"{}\" }}]\n",
            with_secrets(qc.port, "shop"),
            with_secrets(refused, "shop"),
            with_secrets(refused, "lost"),
            with_secrets(refused, "lost_we"),
        ),
    )
    .expect("write topology");
    let c = cfg.to_str().expect("utf-8");

    // The replica is refused: its status row carries its URL and the connection error.
    for output in ["text", "json"] {
        let (code, out, err) =
            run(&["db", "status", "shop", "-c", c, "--output", output], &[]).parts();
        assert_eq!(code, 1, "{out}{err}");
        assert!(out.contains("127.0.0.1:"), "the URL is still shown: {out}");
        clean("db status (refused replica)", &format!("{out}{err}"));
    }
    // The primary is refused: every command fails naming it.
    for cmd in ["status", "setup", "verify", "sync-sequences", "teardown"] {
        let (code, out, err) = run(&["db", cmd, "lost", "-c", c], &[]).parts();
        assert_eq!(code, 3, "db {cmd}: {out}{err}");
        assert!(err.contains("password=***"), "db {cmd}: {err}");
        clean(
            &format!("db {cmd} (refused primary)"),
            &format!("{out}{err}"),
        );
    }
    let (code, out, err) = run(
        &[
            "db",
            "copy",
            "--from",
            &with_secrets(refused, "shop"),
            "--to",
            &with_secrets(qc.port, "shop"),
        ],
        &[],
    )
    .parts();
    assert_eq!(code, 3, "db copy: {out}{err}");
    clean("db copy", &format!("{out}{err}"));
    for cmd in [
        &["validate", "-c", c][..],
        &["plan", "-c", c],
        &["plan", "-c", c, "--output", "json"],
    ] {
        let (code, out, err) = run(cmd, &[]).parts();
        assert_eq!(code, 0, "{cmd:?}: {out}{err}");
        clean(&format!("{cmd:?}"), &format!("{out}{err}"));
    }

    // The daemon: its log (status read failures) and GET /api/v1/databases.
    let s = georep_testkit::Serve::start(env!("CARGO_BIN_EXE_georep"), &cfg, &[]);
    let mut v = Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            v = s.get("/api/v1/databases");
            let dbs = v["databases"].as_array().cloned().unwrap_or_default();
            let by = |n: &str| {
                dbs.iter()
                    .find(|d| d["name"] == n)
                    .cloned()
                    .unwrap_or_default()
            };
            by("shop")["replicas"][0]["state"] == "unreachable"
                && by("lost")["error"].as_str().is_some()
        }),
        "no status with both failures: {v:#}\n{}",
        s.log_text()
    );
    let shown = v.to_string();
    assert!(shown.contains("password=***"), "{shown}");
    clean("GET /api/v1/databases", &shown);
    clean(
        "GET /api/v1/databases/shop",
        &s.get("/api/v1/databases/shop").to_string(),
    );
    let log = s.log_text();
    assert!(
        log.contains("cannot read the database's replication status"),
        "{log}"
    );
    clean("the daemon log", &log);
    drop(s);

    // A PostgreSQL state URL is refused by plan and serve, naming it.
    let state_cfg = dir.path().join("state.toml");
    std::fs::write(
        &state_cfg,
        format!(
            "[state]\nurl = \"{}\"\n{}",
            with_secrets(refused, "state"),
            std::fs::read_to_string(&cfg).expect("read topology")
        ),
    )
    .expect("write topology");
    let sc = state_cfg.to_str().expect("utf-8");
    for cmd in [
        &["plan", "-c", sc][..],
        &["serve", "-c", sc, "--listen", "127.0.0.1:0"],
    ] {
        let (code, out, err) = run(cmd, &[]).parts();
        assert_ne!(code, 0, "{cmd:?}: {out}{err}");
        assert!(err.contains("127.0.0.1:"), "{cmd:?}: {err}");
        clean(&format!("{cmd:?}"), &format!("{out}{err}"));
    }
}

/// pg_dump (run for table definitions) gets the password in its environment, never on
/// its command line, where `ps` shows it to every user: a stand-in `pg_dump` first on
/// PATH records its arguments, then runs the real one against a role that must log in
/// with a password.
#[test]
fn pg_dump_runs_without_the_password_on_its_command_line() {
    const PW: &str = "Pw-S3cr3tMarker-4";
    let pg = Postgres::start(&[]);
    pg.password_role("app", PW);
    pg.create_db("src");
    pg.create_db("dst");
    pg.psql(
        "src",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    );
    let dir = tempfile::tempdir().expect("tmp");
    let path = std::env::var("PATH").unwrap_or_default();
    let real = std::env::split_paths(&path)
        .map(|d| d.join("pg_dump"))
        .find(|p| p.is_file())
        .expect("pg_dump on PATH");
    let log = dir.path().join("pg_dump.args");
    let script = dir.path().join("pg_dump");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" >> '{log}'\necho \"PGPASSWORD=${{PGPASSWORD:+set}}\" >> '{log}'\nexec '{real}' \"$@\"\n",
            log = log.display(),
            real = real.display()
        ),
    )
    .expect("write stand-in");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let url = |db: &str| {
        format!(
            "postgres://app:{PW}@127.0.0.1:{}/{db}?sslmode=disable",
            pg.port
        )
    };
    let out = georep_testkit::command(
        env!("CARGO_BIN_EXE_georep"),
        &["db", "copy", "--from", &url("src"), "--to", &url("dst")],
        &[(
            "PATH".to_string(),
            format!("{}:{path}", dir.path().display()),
        )],
    )
    .env_remove("PGPASSWORD")
    .output()
    .expect("run georep");
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{o}{e}");
    assert_eq!(pg.psql("dst", "SELECT count(*) FROM t"), "100");
    let args = std::fs::read_to_string(&log).expect("the stand-in pg_dump ran");
    assert!(args.contains("--schema-only"), "{args}");
    assert!(args.contains("PGPASSWORD=set"), "{args}");
    assert!(
        !args.contains(PW) && !args.contains("postgres://"),
        "{args}"
    );
}

const MIXED_CASE: &str = r#"
CREATE SCHEMA "Sales EU";
CREATE TABLE "Sales EU"."Orders" ("OrderId" serial PRIMARY KEY, "Amount" numeric NOT NULL, note text);
CREATE SEQUENCE "Sales EU"."Invoice-Seq";
CREATE TABLE "Sales EU"."Invoices" (id bigint PRIMARY KEY DEFAULT nextval('"Sales EU"."Invoice-Seq"'), v text);
INSERT INTO "Sales EU"."Orders" ("Amount") SELECT g FROM generate_series(1, 300) g;
INSERT INTO "Sales EU"."Invoices" (v) SELECT 'i' || g FROM generate_series(1, 50) g;
CREATE TABLE public."Orders" ("OrderId" serial PRIMARY KEY, v text);
INSERT INTO public."Orders" (v) SELECT 'o' || g FROM generate_series(1, 20) g;
"#;

fn seq(pg: &Postgres, db: &str, name: &str) -> i64 {
    pg.psql(
        db,
        &format!("SELECT last_value FROM \"Sales EU\".\"{name}\""),
    )
    .parse()
    .unwrap_or(-1)
}

/// Quoted mixed-case schema, table, column and sequence names (`"Sales EU"."Orders"`,
/// `"OrderId"`, `"Invoice-Seq"`) go through every database command and a planned
/// failover: names from the catalog are quoted, never folded to lower case.
#[test]
fn mixed_case_names_through_setup_sequences_verify_copy_and_failover() {
    let (qc, we) = (Postgres::start(&[]), Postgres::start(&[]));
    for pg in [&qc, &we] {
        pg.create_db("shop");
    }
    we.create_db("copy");
    qc.psql("shop", MIXED_CASE);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = db_topology(
        dir.path(),
        &qc.url("shop"),
        &[("we", we.url("shop"))],
        "schemas = ['\"Sales EU\"', \"public\"]\nsequence_margin = 100\n",
    );
    let c = cfg.to_str().expect("utf-8");

    let (code, out, err) = run(&["db", "setup", "shop", "-c", c], &[]).parts();
    assert_eq!(code, 0, "setup:\n{out}{err}");
    let count = |pg: &Postgres, t: &str| {
        pg.psql(
            "shop",
            &format!("SELECT count(*) FROM \"Sales EU\".\"{t}\""),
        )
    };
    qc.psql(
        "shop",
        "INSERT INTO \"Sales EU\".\"Orders\" (\"Amount\") SELECT g FROM generate_series(1, 200) g",
    );
    qc.psql(
        "shop",
        "INSERT INTO \"Sales EU\".\"Invoices\" (v) VALUES ('late')",
    );
    assert!(
        wait_until(Duration::from_secs(60), || count(&we, "Orders") == "500"
            && count(&we, "Invoices") == "51"),
        "replica has {} orders",
        count(&we, "Orders")
    );

    let (code, out, err) = run(&["db", "sync-sequences", "shop", "-c", c], &[]).parts();
    assert_eq!(code, 0, "sync-sequences:\n{out}{err}");
    assert!(seq(&we, "shop", "Orders_OrderId_seq") >= seq(&qc, "shop", "Orders_OrderId_seq") + 100);
    assert!(seq(&we, "shop", "Invoice-Seq") >= seq(&qc, "shop", "Invoice-Seq") + 100);
    let public_seq = |pg: &Postgres| -> i64 {
        pg.psql(
            "shop",
            "SELECT last_value FROM public.\"Orders_OrderId_seq\"",
        )
        .parse()
        .unwrap_or(-1)
    };
    assert!(public_seq(&we) >= public_seq(&qc) + 100);

    let (code, out, err) = run(&["db", "verify", "shop", "-c", c, "--output", "json"], &[]).parts();
    assert_eq!(code, 0, "verify:\n{out}{err}");
    let v: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("verify json ({e}): {out}"));
    assert_eq!(v["tables"].as_array().map(Vec::len), Some(3), "{v:#}");
    let (code, out, err) = run(
        &[
            "db",
            "verify",
            "shop",
            "-c",
            c,
            "--table",
            "\"Sales EU\".\"Orders\"",
        ],
        &[],
    )
    .parts();
    assert_eq!(code, 0, "verify --table:\n{out}{err}");
    let (code, st) = status(c);
    assert_eq!(code, 0, "status: {st:#}");
    assert_eq!(
        st["replicas"][0]["schema_drift"],
        serde_json::json!([]),
        "{st:#}"
    );

    // A column dropped in a statement spread over lines goes to the primary first, so
    // the replica never gets rows for a column it no longer has; replication goes on.
    let (code, out, err) = run(
        &[
            "db",
            "ddl",
            "shop",
            "-c",
            c,
            "--output",
            "json",
            "alter table \"Sales EU\".\"Orders\"\n  -- no longer used\n  drop\n\tcolumn note",
        ],
        &[],
    )
    .parts();
    assert_eq!(code, 0, "ddl:\n{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("ddl json ({e}): {out}"));
    assert_eq!(v["order"][0], "primary", "{v:#}");
    qc.psql(
        "shop",
        "INSERT INTO \"Sales EU\".\"Orders\" (\"Amount\") VALUES (7)",
    );
    assert!(
        wait_until(Duration::from_secs(60), || count(&we, "Orders") == "501"),
        "replication stopped after the DDL"
    );

    // One-shot copy into an empty database: tables, data, sequences, indexes.
    let (code, out, err) = run(
        &[
            "db",
            "copy",
            "--from",
            &qc.url("shop"),
            "--to",
            &we.url("copy"),
        ],
        &[],
    )
    .parts();
    assert_eq!(code, 0, "copy:\n{out}{err}");
    assert_eq!(
        we.psql("copy", "SELECT count(*) FROM \"Sales EU\".\"Orders\""),
        "501"
    );
    assert_eq!(
        seq(&we, "copy", "Invoice-Seq"),
        seq(&qc, "shop", "Invoice-Seq")
    );
    assert_eq!(
        seq(&we, "copy", "Orders_OrderId_seq"),
        seq(&qc, "shop", "Orders_OrderId_seq")
    );

    // A planned failover sets the new primary's sequences and finishes.
    let rw = georep_testkit::free_port();
    let mut t = std::fs::read_to_string(&cfg).expect("read topology");
    t.push_str(&format!(
        "[[failover_groups]]\nname = \"fg\"\ndatabase = \"shop\"\n\
         read_write_listener = \"127.0.0.1:{rw}\"\nprobe_interval = \"300ms\"\nprobe_timeout = \"250ms\"\n"
    ));
    std::fs::write(&cfg, t).expect("write topology");
    let s = georep_testkit::Serve::start(env!("CARGO_BIN_EXE_georep"), &cfg, &[]);
    let (code, report) = s.req(
        reqwest::Method::POST,
        "/api/v1/failover-groups/fg/failover",
        Some(&serde_json::json!({"to": "we"})),
    );
    assert_eq!(code, 200, "{report}\n{}", s.log_text());
    assert_eq!(report["epoch"], 2, "{report}");
    let via_rw = format!("postgres://postgres@127.0.0.1:{rw}/shop");
    assert!(
        wait_until(Duration::from_secs(30), || {
            georep_testkit::psql_at(
            &via_rw,
            "INSERT INTO \"Sales EU\".\"Orders\" (\"Amount\") VALUES (1) RETURNING inet_server_port()",
            false
        ) == Ok(we.port.to_string())
        }),
        "no insert on the new primary through the listener"
    );
}
