//! Failover groups over MariaDB: two mariadbd servers as two regions, a writer through
//! the read-write listener as an application user (without READ_ONLY ADMIN, so
//! `read_only` binds it), planned failover and failback, drills, automatic failover
//! after the primary is killed, and refused promotions.

use crate::common::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use georep_testkit::{free_port, mariadb_as, wait_until, MariaDb, Serve};
use serde_json::json;

const APP: &str = "CREATE USER IF NOT EXISTS app@'%' IDENTIFIED BY 'pw'; GRANT SELECT, INSERT ON shop.* TO app@'%'; GRANT SELECT, INSERT ON georep.* TO app@'%'";

/// As the application through a listener or a server.
fn app(port: u16, sql: &str) -> Result<String, String> {
    mariadb_as(port, "app", "pw", sql)
}

/// A primary (region qc) and a replica (region we), set up, with the application
/// user on both (created on the replica outside its binary log) and group `fg`.
fn maria_group(
    policy: &str,
) -> (
    MariaDb,
    MariaDb,
    tempfile::TempDir,
    std::path::PathBuf,
    u16,
    u16,
) {
    let (p, r) = (MariaDb::start(1, &[]), MariaDb::start(2, &[]));
    p.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.w (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(40) NOT NULL UNIQUE)",
    );
    p.sql(APP);
    r.sql(&format!("SET SESSION sql_log_bin = 0; {APP}"));
    let (rw, ro) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = TopologyFile::new()
        .region("qc")
        .region("we")
        .raw(&format!(
            "[[databases]]\nname = \"shop\"\nengine = \"mariadb\"\nrpo = \"5s\"\n\
             primary = {{ region = \"qc\", url = \"{}\" }}\nreplicas = [{{ region = \"we\", url = \"{}\" }}]\n\
             [[failover_groups]]\nname = \"fg\"\ndatabase = \"shop\"\n\
             read_write_listener = \"127.0.0.1:{rw}\"\nread_only_listener = \"127.0.0.1:{ro}\"\n\
             probe_interval = \"300ms\"\nprobe_timeout = \"1s\"\nprobe_failures = 2\n{policy}\n",
            p.url("shop"),
            r.url("mysql"),
        ))
        .write(dir.path());
    run(&["db", "setup", "shop", "-c", s(&cfg)], &[]).ok();
    (p, r, dir, cfg, rw, ro)
}

/// Waits until the daemon knows replica `member`'s lag in seconds.
fn wait_lag_known(sv: &Serve, member: &str) {
    let mut g = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            g = sv.get("/api/v1/failover-groups/fg");
            g["last_known_lag"][member]["seconds"].is_number()
        }),
        "lag unknown: {g:#}\n{}",
        sv.log_text()
    );
}

#[test]
fn mariadb_planned_failover_and_failback_under_a_writer_lose_no_acknowledged_write() {
    let (p, r, _dir, cfg, rw, ro) = maria_group("");
    let sv = Serve::start(BIN, &cfg, &[]);
    assert!(
        wait_until(Duration::from_secs(30), || app(rw, "SELECT @@port")
            == Ok(p.port.to_string())),
        "{}",
        sv.log_text()
    );
    wait_lag_known(&sv, "we");
    // The daemon polls the replica: threads, GTID distance and heartbeat lag.
    let mut d = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            // 503 until the first poll has read the database.
            d = sv
                .req(reqwest::Method::GET, "/api/v1/databases/shop", None)
                .1;
            let r = &d["replicas"][0];
            r["io_thread"] == "Yes" && r["lag_seconds"].is_number() && r["gtid_distance"].is_u64()
        }),
        "{d:#}"
    );
    assert_eq!(d["replicas"][0]["state"], "streaming", "{d:#}");
    let m = sv.req(reqwest::Method::GET, "/metrics", None).1;
    let m = m.as_str().unwrap_or_default();
    assert!(
        m.contains("georep_db_replica_streaming{database=\"shop\",replica=\"we\"} 1"),
        "{m}"
    );

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let v = format!("w{i}");
                if app(rw, &format!("INSERT INTO shop.w (v) VALUES ('{v}')")).is_ok() {
                    if let Ok(mut a) = acked.lock() {
                        a.push(v);
                    }
                }
                i += 1;
            }
        })
    };
    let n = || acked.lock().map(|a| a.len()).unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(30), || n() >= 30),
        "writer made no progress"
    );

    let over = sv.post("/api/v1/failover-groups/fg/failover", &json!({"to": "we"}));
    assert_eq!(
        (over["epoch"].clone(), over["to"].clone()),
        (json!(2), json!("we")),
        "{over}"
    );
    let after = n();
    assert!(
        wait_until(Duration::from_secs(30), || n() >= after + 30),
        "no writes after the failover:\n{}",
        sv.log_text()
    );
    assert_eq!(app(rw, "SELECT @@port"), Ok(r.port.to_string()));
    // The old primary is a read-only replica of the new one: the application's own
    // write to it is refused, and the read-only listener goes to it.
    assert!(
        app(p.port, "INSERT INTO shop.w (v) VALUES ('direct')")
            .is_err_and(|e| e.contains("read-only") || e.contains("1290")),
        "the old primary takes writes"
    );
    assert!(wait_until(Duration::from_secs(30), || app(
        ro,
        "SELECT @@port"
    ) == Ok(p
        .port
        .to_string())));
    assert!(p.sql("SHOW SLAVE STATUS").contains(&r.port.to_string()));

    // Failback under the same writer.
    wait_lag_known(&sv, "primary");
    let back = sv.post(
        "/api/v1/failover-groups/fg/failover",
        &json!({"to": "primary"}),
    );
    assert_eq!(
        (back["epoch"].clone(), back["to"].clone()),
        (json!(3), json!("primary")),
        "{back}"
    );
    let after = n();
    assert!(
        wait_until(Duration::from_secs(30), || n() >= after + 30),
        "no writes after the failback:\n{}",
        sv.log_text()
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");

    // Every acknowledged write is on the primary, and the replica has the same rows.
    let rows: BTreeSet<String> = p
        .sql("SELECT v FROM shop.w")
        .lines()
        .map(str::to_string)
        .collect();
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let lost: Vec<&String> = acked.iter().filter(|v| !rows.contains(*v)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    let count = p.sql("SELECT COUNT(*) FROM shop.w");
    assert!(
        wait_until(Duration::from_secs(30), || r
            .sql("SELECT COUNT(*) FROM shop.w")
            == count),
        "the replica did not follow the primary again: {}",
        r.sql("SHOW SLAVE STATUS")
    );
    assert_eq!(r.sql("SELECT @@read_only"), "1");
    assert_eq!(p.sql("SELECT @@read_only"), "0");
    // read_only does not survive a restart: the probes set it again.
    r.kill9();
    r.restart();
    // (Checked without writing: a write that got in first would be an errant GTID.)
    assert!(
        wait_until(Duration::from_secs(30), || r.sql("SELECT @@read_only")
            == "1"),
        "the restarted replica was not fenced again"
    );
    r.sql("START SLAVE");

    // A drill does the same round trip and finds nothing lost.
    let (code, text, err) = run(
        &[
            "drill",
            "fg",
            "-c",
            s(&cfg),
            "--api",
            &sv.base,
            "--settle",
            "1",
        ],
        &[],
    )
    .parts();
    assert_eq!(code, 0, "{text}{err}\n{}", sv.log_text());
    assert!(text.contains("0 writes lost"), "{text}");
}

#[test]
fn mariadb_automatic_failover_after_the_primary_is_killed_and_the_old_primary_is_fenced() {
    let (p, r, _dir, cfg, rw, _ro) =
        maria_group("policy = \"automatic\"\ngrace_period = \"2s\"\nmax_data_loss = \"5s\"");
    let sv = Serve::start(BIN, &cfg, &[]);
    assert!(wait_until(Duration::from_secs(30), || app(
        rw,
        "INSERT INTO shop.w (v) VALUES ('before')"
    )
    .is_ok()));
    wait_lag_known(&sv, "we");
    p.kill9();
    assert!(
        wait_until(Duration::from_secs(60), || app(
            rw,
            "INSERT INTO shop.w (v) VALUES ('after')"
        )
        .is_ok()),
        "no write succeeded through the listener:\n{}",
        sv.log_text()
    );
    let g = sv.get("/api/v1/failover-groups/fg");
    assert_eq!(
        (g["epoch"].clone(), g["primary"].clone()),
        (json!(2), json!("we")),
        "{g:#}"
    );
    assert_eq!(g["fenced"], json!(["primary"]), "{g:#}");
    assert_eq!(g["last_failover"]["kind"], "automatic");
    assert_eq!(
        r.sql("SELECT COUNT(*) FROM shop.w WHERE v IN ('before', 'after')"),
        "2"
    );
    // The old primary comes back: it is made read-only and never routed to.
    p.restart();
    assert!(
        wait_until(Duration::from_secs(30), || app(
            p.port,
            "INSERT INTO shop.w (v) VALUES ('stray')"
        )
        .is_err_and(|e| e.contains("1290") || e.contains("read-only"))),
        "the returned old primary takes writes"
    );
    assert_eq!(app(rw, "SELECT @@port"), Ok(r.port.to_string()));
}

#[test]
fn mariadb_forced_promotion_of_a_lagging_or_diverged_replica_is_refused_and_says_why() {
    let (p, r, _dir, cfg, _rw, _ro) = maria_group("");
    let sv = Serve::start(BIN, &cfg, &[]);
    assert!(wait_until(Duration::from_secs(30), || {
        sv.get("/api/v1/failover-groups/fg")["members"]
            .as_array()
            .is_some_and(|m| {
                m.iter()
                    .any(|m| m["member"] == "we" && m["healthy"] == true)
            })
    }));
    // Received but not applied: the SQL thread is stopped with a backlog.
    r.sql("STOP SLAVE SQL_THREAD");
    p.sql("INSERT INTO shop.w (v) SELECT CONCAT('x', seq) FROM shop.seq_1_to_50");
    assert!(wait_until(Duration::from_secs(30), || r
        .slave_status("Gtid_IO_Pos")
        == p.sql("SELECT @@gtid_binlog_pos")
        && r.sql("SELECT @@gtid_slave_pos")
            != p.sql("SELECT @@gtid_binlog_pos")));
    let force = json!({"to": "we", "force": true});
    let (code, body) = sv.req(
        reqwest::Method::POST,
        "/api/v1/failover-groups/fg/failover",
        Some(&force),
    );
    assert_ne!(code, 200, "{body}");
    assert!(body.to_string().contains("not applied"), "{body}");
    assert_eq!(sv.get("/api/v1/failover-groups/fg")["primary"], "primary");

    // A write made on the replica itself: errant, named.
    r.sql("START SLAVE SQL_THREAD");
    let head = p.sql("SELECT @@gtid_binlog_pos");
    assert!(wait_until(Duration::from_secs(30), || r
        .sql("SELECT @@gtid_slave_pos")
        == head));
    r.sql("INSERT INTO shop.w (v) VALUES ('on the replica')");
    let (code, body) = sv.req(
        reqwest::Method::POST,
        "/api/v1/failover-groups/fg/failover",
        Some(&force),
    );
    assert_ne!(code, 200, "{body}");
    assert!(
        body.to_string().contains("transactions of its own"),
        "{body}"
    );
    assert!(
        body.to_string().contains("0-2-"),
        "the errant GTID is named: {body}"
    );
    let g = sv.get("/api/v1/failover-groups/fg");
    assert_eq!(
        (g["primary"].clone(), g["epoch"].clone()),
        (json!("primary"), json!(1)),
        "{g:#}"
    );
}
