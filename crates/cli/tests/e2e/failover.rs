//! Failover groups against real PostgreSQL clusters: a writer through the read-write
//! listener during a planned failover loses nothing.

use crate::common::*;
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use georep_testkit::{free_port, psql_at, wait_until, Partition, Postgres, Serve};
use serde_json::json;

/// Runs SQL as an ordinary client: its output, or None when refused.
fn psql(url: &str, sql: &str) -> Option<String> {
    psql_at(url, sql, false).ok()
}

/// Whether `url` refuses a client write because the database is read-only.
fn refuses_writes(url: &str) -> bool {
    psql_at(
        url,
        "INSERT INTO w (v) VALUES (gen_random_uuid()::text)",
        false,
    )
    .is_err_and(|e| e.contains("read-only transaction"))
}

#[test]
fn planned_failover_loses_no_acknowledged_write_and_survives_a_restart() {
    let (qc, we, _dir, cfg, rw, ro) = group_setup("");
    let mut s = Serve::start(BIN, &cfg, &[]);
    let via_rw = format!("postgres://postgres@127.0.0.1:{rw}/shop");
    let via_ro = format!("postgres://postgres@127.0.0.1:{ro}/shop");
    assert!(wait_until(Duration::from_secs(30), || psql(
        &via_rw,
        "SELECT inet_server_port()"
    ) == Some(
        qc.port.to_string()
    )));

    // A writer through the listener records every write the database acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, url) = (acked.clone(), stop.clone(), via_rw.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let v = format!("w{i}");
                if psql(&url, &format!("INSERT INTO w (v) VALUES ('{v}')")).is_some() {
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
    let report = s.post("/api/v1/failover-groups/fg/failover", &json!({"to": "we"}));
    assert_eq!(report["epoch"], 2, "{report}");
    assert_eq!(report["to"], "we");
    assert!(report["write_gap_ms"].as_u64().is_some(), "{report}");
    let after = n();
    assert!(
        wait_until(Duration::from_secs(30), || n() >= after + 30),
        "no writes after the failover"
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");

    // Every acknowledged write is on the new primary.
    let rows: BTreeSet<String> = we
        .psql("shop", "SELECT v FROM w")
        .lines()
        .map(str::to_string)
        .collect();
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let lost: Vec<&String> = acked.iter().filter(|v| !rows.contains(*v)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    assert_eq!(
        psql(&via_rw, "SELECT inet_server_port()"),
        Some(we.port.to_string())
    );
    // The old primary follows the new one; the read-only listener goes to it.
    let want = we.psql("shop", "SELECT count(*) FROM w");
    assert!(
        wait_until(Duration::from_secs(30), || qc
            .psql("shop", "SELECT count(*) FROM w")
            == want),
        "reverse replication"
    );
    assert!(wait_until(Duration::from_secs(30), || psql(
        &via_ro,
        "SELECT inet_server_port()"
    ) == Some(
        qc.port.to_string()
    )));
    // An insert on the new primary does not collide with ids the old one handed out.
    assert!(psql(&via_rw, "INSERT INTO w (v) VALUES ('after')").is_some());
    // The old primary, now a replica, refuses client writes, directly or through the
    // read-only listener.
    assert!(refuses_writes(&qc.url("shop")));
    assert!(refuses_writes(&via_ro));
    assert!(psql(&via_ro, "SELECT count(*) FROM w").is_some());

    // A restarted daemon routes by the recorded epoch.
    s.kill9();
    let s = Serve::start(BIN, &cfg, &[]);
    let g = s.get("/api/v1/failover-groups/fg");
    assert_eq!(
        (g["epoch"].clone(), g["primary"].clone()),
        (json!(2), json!("we")),
        "{g}"
    );
    assert_eq!(
        psql(&via_rw, "SELECT inet_server_port()"),
        Some(we.port.to_string())
    );
    let (code, _) = s.req(
        reqwest::Method::POST,
        "/api/v1/failover-groups/fg/failover",
        Some(&json!({"to": "nowhere"})),
    );
    assert_eq!(code, 409);
}

/// A primary, a replica set up from it, and a topology with one failover group.
fn group_setup(
    policy: &str,
) -> (
    Postgres,
    Postgres,
    tempfile::TempDir,
    std::path::PathBuf,
    u16,
    u16,
) {
    let (mut pgs, dir, cfg, rw, ro) = members_setup(policy, &["we"]);
    let we = pgs.pop().expect("replica");
    let qc = pgs.pop().expect("primary");
    (qc, we, dir, cfg, rw, ro)
}

/// A primary (member `primary`, region qc) and one replica per region in `replicas`
/// (members named by region), set up, with one failover group `fg` over them.
fn members_setup(
    policy: &str,
    replicas: &[&str],
) -> (
    Vec<Postgres>,
    tempfile::TempDir,
    std::path::PathBuf,
    u16,
    u16,
) {
    let pgs: Vec<Postgres> = (0..=replicas.len()).map(|_| Postgres::start(&[])).collect();
    for pg in &pgs {
        pg.create_db("shop");
    }
    pgs[0].psql(
        "shop",
        "CREATE TABLE w (id bigserial PRIMARY KEY, v text UNIQUE NOT NULL)",
    );
    let (rw, ro) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("georep.toml");
    let regions: String = std::iter::once("qc")
        .chain(replicas.iter().copied())
        .map(|r| format!("[regions.{r}]\n"))
        .collect();
    let members = replicas
        .iter()
        .zip(&pgs[1..])
        // Replicas name their port as a parameter, as libpq users often do: the
        // listener must route where the connection goes, not to the default 5432.
        .map(|(r, pg)| {
            format!(
                "{{ region = \"{r}\", url = \"postgres://postgres@127.0.0.1/shop?port={}\" }}",
                pg.port
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        &cfg,
        format!(
            "[state]\nurl = \"sqlite://state/g.db\"\n{regions}\
             [[databases]]\nname = \"shop\"\nengine = \"postgres\"\n\
             primary = {{ region = \"qc\", url = \"{}\" }}\nreplicas = [ {members} ]\n\
             [[failover_groups]]\nname = \"fg\"\ndatabase = \"shop\"\n\
             read_write_listener = \"127.0.0.1:{rw}\"\nread_only_listener = \"127.0.0.1:{ro}\"\n\
             probe_interval = \"300ms\"\nprobe_timeout = \"250ms\"\nprobe_failures = 2\n{policy}\n",
            pgs[0].url("shop"),
        ),
    )
    .expect("write topology");
    let out = Command::new(BIN)
        .args(["db", "setup", "shop", "-c", cfg.to_str().expect("utf-8")])
        .output()
        .expect("setup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (pgs, dir, cfg, rw, ro)
}

/// Waits until the daemon knows replica `we`'s lag in seconds (read on the primary).
fn wait_lag_known(s: &Serve) {
    let mut g = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            g = s.get("/api/v1/failover-groups/fg");
            g["last_known_lag"]["we"]["seconds"].is_number()
        }),
        "lag unknown: {g:#}\n{}",
        s.log_text()
    );
}

/// Starts the daemon with `GEOREP_CRASH_AT=point`, asks for a planned failover to `to`,
/// and waits for the daemon to die at that point.
fn crash_during_failover(cfg: &std::path::Path, to: &str, force: bool, point: &str) {
    let mut s = Serve::start(BIN, cfg, &[("GEOREP_CRASH_AT".into(), point.into())]);
    // A forced failover needs the target seen healthy first.
    assert!(wait_until(Duration::from_secs(30), || s
        .get("/api/v1/failover-groups/fg")["members"]
        .as_array()
        .is_some_and(|m| m
            .iter()
            .any(|m| m["member"] == to && m["healthy"] == true))));
    let sent = s
        .http
        .post(format!("{}/api/v1/failover-groups/fg/failover", s.base))
        .bearer_auth(s.token().unwrap_or_default())
        .header("content-type", "application/json")
        .body(json!({ "to": to, "force": force }).to_string())
        .send();
    assert!(
        sent.is_err(),
        "the daemon answered instead of crashing: {sent:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || s.exited()),
        "the daemon did not stop at {point}"
    );
    assert!(
        s.log_text().contains(&format!("GEOREP_CRASH_AT={point}")),
        "{}",
        s.log_text()
    );
}

#[test]
fn a_failover_interrupted_by_a_crash_is_rolled_back_or_finished_on_restart() {
    let (qc, we, _dir, cfg, rw, ro) = group_setup("");
    let via_rw = format!("postgres://postgres@127.0.0.1:{rw}/shop");
    let via_ro = format!("postgres://postgres@127.0.0.1:{ro}/shop");
    let port = || psql(&via_rw, "SELECT inet_server_port()");

    // An application role (not a superuser) on both members.
    for pg in [&qc, &we] {
        pg.psql(
            "shop",
            "CREATE ROLE app LOGIN; GRANT ALL ON w TO app; GRANT ALL ON SEQUENCE w_id_seq TO app",
        );
    }
    let app_direct = format!("postgres://app@127.0.0.1:{}/shop", qc.port);

    // Crash after the fence, before the promotion. While nothing settles it, the old
    // primary is closed to applications and read-only for everyone else.
    crash_during_failover(&cfg, "we", false, "switchover-fenced");
    let refused = psql_at(&app_direct, "SELECT 1", false);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("too many connections")),
        "{refused:?}"
    );
    assert!(refuses_writes(&qc.url("shop")));
    // On restart it is rolled back: the old primary takes writes again and replicates.
    let s = restart_settled(&cfg, 2, "primary", "rolled back");
    assert!(psql(
        &app_direct,
        "INSERT INTO w (v) VALUES ('app-after-rollback')"
    )
    .is_some());
    assert_eq!(port(), Some(qc.port.to_string()));
    assert!(
        psql(&via_rw, "INSERT INTO w (v) VALUES ('after-rollback')").is_some(),
        "the old primary is still fenced:\n{}",
        s.log_text()
    );
    assert!(wait_until(Duration::from_secs(30), || we.psql(
        "shop",
        "SELECT count(*) FROM w WHERE v = 'after-rollback'"
    ) == "1"));
    drop(s);

    // Crash right after the promotion: finished, the old primary follows the new one.
    crash_during_failover(&cfg, "we", false, "switchover-promoted");
    let s = restart_settled(&cfg, 3, "we", "finished");
    // The old primary, now a replica, is open to applications again, for reading.
    assert!(psql(&app_direct, "SELECT count(*) FROM w").is_some());
    assert!(refuses_writes(&app_direct));
    assert_eq!(port(), Some(we.port.to_string()));
    assert!(psql(&via_rw, "INSERT INTO w (v) VALUES ('after-finish')").is_some());
    assert!(
        wait_until(Duration::from_secs(30), || qc.psql(
            "shop",
            "SELECT count(*) FROM w WHERE v IN ('after-rollback', 'after-finish')"
        ) == "2"),
        "the old primary does not follow the new one:\n{}",
        s.log_text()
    );
    assert!(wait_until(Duration::from_secs(30), || psql(
        &via_ro,
        "SELECT inet_server_port()"
    ) == Some(
        qc.port.to_string()
    )));
    drop(s);

    // Crash after every database step, before the new epoch was recorded: finishing
    // again changes nothing in the databases and routes to the new primary.
    crash_during_failover(&cfg, "primary", false, "failover-before-route");
    let s = restart_settled(&cfg, 4, "primary", "finished");
    assert_eq!(port(), Some(qc.port.to_string()));
    assert!(psql(&via_rw, "INSERT INTO w (v) VALUES ('after-back')").is_some());
    assert!(
        wait_until(Duration::from_secs(30), || we.psql(
            "shop",
            "SELECT count(*) FROM w WHERE v LIKE 'after-%' OR v LIKE 'app-%'"
        ) == "4"),
        "{}",
        s.log_text()
    );
    drop(s);

    // A forced failover that crashed right after the promotion is finished too: the
    // member it left is fenced, the promoted one takes writes.
    crash_during_failover(&cfg, "we", true, "promote-promoted");
    let s = restart_settled_fenced(&cfg, 5, "we", "finished", &["primary"]);
    assert_eq!(port(), Some(we.port.to_string()));
    assert!(psql(&via_rw, "INSERT INTO w (v) VALUES ('after-force')").is_some());
    assert!(
        wait_until(Duration::from_secs(30), || refuses_writes(&qc.url("shop"))),
        "{}",
        s.log_text()
    );
}

/// Restarts the daemon and waits until the interrupted failover is settled at `epoch`
/// with `primary`, its history saying `outcome`.
fn restart_settled(cfg: &std::path::Path, epoch: i64, primary: &str, outcome: &str) -> Serve {
    restart_settled_fenced(cfg, epoch, primary, outcome, &[])
}

/// [`restart_settled`], with `fenced` members expected.
fn restart_settled_fenced(
    cfg: &std::path::Path,
    epoch: i64,
    primary: &str,
    outcome: &str,
    fenced: &[&str],
) -> Serve {
    let s = Serve::start(BIN, cfg, &[]);
    let mut g = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            g = s.get("/api/v1/failover-groups/fg");
            g["unsettled"] == false
        }),
        "not settled: {g:#}\n{}",
        s.log_text()
    );
    assert_eq!(
        (
            g["epoch"].clone(),
            g["primary"].clone(),
            g["fenced"].clone()
        ),
        (json!(epoch), json!(primary), json!(fenced)),
        "{g:#}"
    );
    assert!(
        g["history"][0]["outcome"]
            .as_str()
            .unwrap_or_default()
            .contains(outcome),
        "{g:#}"
    );
    let mut metrics = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            metrics = s
                .req(reqwest::Method::GET, "/metrics", None)
                .1
                .as_str()
                .unwrap_or_default()
                .to_string();
            metrics.contains(&format!("georep_failover_epoch{{group=\"fg\"}} {epoch}"))
        }),
        "{metrics}"
    );
    assert!(
        metrics.contains("georep_failover_unsettled{group=\"fg\"} 0"),
        "{metrics}"
    );
    s
}

#[test]
fn other_replicas_follow_the_new_primary_or_are_fenced_when_they_cannot() {
    let (pgs, _dir, cfg, rw, ro) = members_setup("", &["we", "au"]);
    let (qc, we, au) = (&pgs[0], &pgs[1], &pgs[2]);
    let via_rw = format!("postgres://postgres@127.0.0.1:{rw}/shop");
    let via_ro = format!("postgres://postgres@127.0.0.1:{ro}/shop");
    let mut s = Serve::start(BIN, &cfg, &[]);
    assert!(psql(&via_rw, "INSERT INTO w (v) VALUES ('one')").is_some());
    // Read-only connections are spread over both replicas.
    let mut seen = BTreeSet::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            seen.extend(psql(&via_ro, "SELECT inet_server_port()"));
            seen.contains(&we.port.to_string()) && seen.contains(&au.port.to_string())
        }),
        "read-only connections went to {seen:?}"
    );
    assert!(!seen.contains(&qc.port.to_string()), "{seen:?}");

    // Planned: au has everything up to the fence, so it follows we from there.
    let r = s.post("/api/v1/failover-groups/fg/failover", &json!({"to": "we"}));
    assert_eq!(r["repointed"], json!(["au"]), "{r:#}");
    assert_eq!(r["left_behind"], json!({}), "{r:#}");
    assert!(psql(&via_rw, "INSERT INTO w (v) VALUES ('two')").is_some());
    for pg in [qc, au] {
        assert!(
            wait_until(Duration::from_secs(30), || pg
                .psql("shop", "SELECT string_agg(v, ',' ORDER BY v) FROM w")
                == "one,two"),
            "member on port {} did not get the new primary's write:\n{}",
            pg.port,
            s.log_text()
        );
    }

    // Forced, with au behind the member promoted: au would miss writes, so it is
    // fenced for a reseed instead of following.
    au.psql("shop", "ALTER SUBSCRIPTION georep_shop_au DISABLE");
    assert!(psql(&via_rw, "INSERT INTO w (v) VALUES ('three')").is_some());
    assert!(wait_until(Duration::from_secs(30), || qc
        .psql("shop", "SELECT count(*) FROM w")
        == "3"));
    we.kill9();
    let r = s.post(
        "/api/v1/failover-groups/fg/failover",
        &json!({"to": "primary", "force": true}),
    );
    assert_eq!(r["to"], "primary", "{r:#}");
    assert!(r["left_behind"]["au"].is_string(), "{r:#}");
    let g = s.get("/api/v1/failover-groups/fg");
    assert_eq!(g["fenced"], json!(["au", "we"]), "{g:#}");
    let four = psql_at(&via_rw, "INSERT INTO w (v) VALUES ('four')", false);
    assert!(
        four.is_ok(),
        "no write through the listener after the forced failover: {four:?}\n{}",
        s.log_text()
    );
    assert_eq!(qc.psql("shop", "SELECT count(*) FROM w"), "4");
    // Its sequence was moved past the rows it had received, by the margin.
    let ids = qc.psql(
        "shop",
        "SELECT max(id) FILTER (WHERE v = 'four') - max(id) FILTER (WHERE v <> 'four') FROM w",
    );
    assert!(ids.parse::<i64>().is_ok_and(|d| d > 1), "{ids}");
    // `georep status` shows the fenced members and the history, and exits 1.
    let out = Command::new(BIN)
        .args(["status", "-c", cfg.to_str().expect("utf-8")])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FENCED") && text.contains("left behind: au"),
        "{text}"
    );

    // A reseed rebuilds au from the current primary; it is routed to again.
    let out = Command::new(BIN)
        .args([
            "db",
            "reseed",
            "fg",
            "au",
            "-c",
            cfg.to_str().expect("utf-8"),
            "--api",
            &s.base,
        ])
        .output()
        .expect("reseed");
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log_text()
    );
    let g = s.get("/api/v1/failover-groups/fg");
    assert_eq!(g["fenced"], json!(["we"]), "{g:#}");
    assert!(psql(&via_rw, "INSERT INTO w (v) VALUES ('five')").is_some());
    assert!(
        wait_until(Duration::from_secs(30), || au
            .psql("shop", "SELECT string_agg(v, ',' ORDER BY v) FROM w")
            == "five,four,one,three,two"),
        "au after the reseed: {}",
        au.psql("shop", "SELECT string_agg(v, ',' ORDER BY v) FROM w")
    );
    assert!(refuses_writes(&au.url("shop")));
    // Reseeding a member that is not fenced is refused.
    let (code, _) = s.req(
        reqwest::Method::POST,
        "/api/v1/failover-groups/fg/reseed",
        Some(&json!({"member": "au"})),
    );
    assert_eq!(code, 409);
    s.kill9();
}

#[test]
fn automatic_failover_after_the_primary_dies_and_the_old_primary_is_never_routed_again() {
    let (qc, we, _dir, cfg, rw, ro) =
        group_setup("policy = \"automatic\"\ngrace_period = \"2s\"\nmax_data_loss = \"5s\"");
    let s = Serve::start(BIN, &cfg, &[]);
    let via_rw = format!("postgres://postgres@127.0.0.1:{rw}/shop");
    let via_ro = format!("postgres://postgres@127.0.0.1:{ro}/shop");
    assert!(psql(&via_rw, "INSERT INTO w (v) VALUES ('before')").is_some());
    // The daemon knows the replica's lag before the primary fails.
    wait_lag_known(&s);
    qc.kill9();
    let killed = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(60), || psql(
            &via_rw,
            "INSERT INTO w (v) VALUES ('after')"
        )
        .is_some()),
        "no write succeeded through the listener:\n{}",
        s.log_text()
    );
    // Detection (2 probes of 300 ms) + grace period (2 s) + 5 s.
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(600 + 2000 + 5000),
        "writes resumed only after {took:?}"
    );
    let g = s.get("/api/v1/failover-groups/fg");
    assert_eq!(
        (g["epoch"].clone(), g["primary"].clone()),
        (json!(2), json!("we")),
        "{g:#}"
    );
    assert_eq!(g["fenced"], json!(["primary"]), "{g:#}");
    assert_eq!(g["last_failover"]["kind"], "automatic");
    assert!(
        g["last_failover"]["data_loss"]
            .as_str()
            .unwrap_or_default()
            .contains("s"),
        "{g:#}"
    );
    assert_eq!(
        we.psql(
            "shop",
            "SELECT count(*) FROM w WHERE v IN ('before', 'after')"
        ),
        "2"
    );

    // The old primary comes back: it is never routed to again.
    qc.restart();
    assert!(wait_until(Duration::from_secs(30), || {
        s.get("/api/v1/failover-groups/fg")["members"]
            .as_array()
            .is_some_and(|m| {
                m.iter()
                    .any(|m| m["member"] == "primary" && m["healthy"] == true)
            })
    }));
    // ... and it refuses client writes made to it directly.
    assert!(
        wait_until(Duration::from_secs(30), || refuses_writes(&qc.url("shop"))),
        "the returned old primary takes writes"
    );
    for _ in 0..5 {
        assert_eq!(
            psql(&via_rw, "SELECT inet_server_port()"),
            Some(we.port.to_string())
        );
        assert_ne!(
            psql(&via_ro, "SELECT inet_server_port()"),
            Some(qc.port.to_string())
        );
    }
}

#[test]
fn automatic_failover_is_refused_when_the_lag_exceeds_max_data_loss() {
    let (qc, we, _dir, cfg, rw, _ro) =
        group_setup("policy = \"automatic\"\ngrace_period = \"1s\"\nmax_data_loss = \"1s\"");
    let s = Serve::start(BIN, &cfg, &[]);
    // The replica stops receiving: its lag is no longer known to be within 1 s.
    we.psql("shop", "ALTER SUBSCRIPTION georep_shop_we DISABLE");
    qc.psql(
        "shop",
        "INSERT INTO w (v) SELECT 'x' || g FROM generate_series(1, 1000) g",
    );
    assert!(wait_until(Duration::from_secs(30), || {
        s.get("/api/v1/failover-groups/fg")["last_known_lag"]["we"]["seconds"].is_null()
    }));
    qc.kill9();
    let mut g = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            g = s.get("/api/v1/failover-groups/fg");
            g["automatic"]
                .as_str()
                .is_some_and(|a| a.contains("refused"))
        }),
        "no refusal reported: {g:#}"
    );
    assert!(
        g["automatic"]
            .as_str()
            .unwrap_or_default()
            .contains("max_data_loss"),
        "{g:#}"
    );
    assert_eq!(g["epoch"], 1, "it failed over anyway: {g:#}");
    assert_eq!(
        g["route"]["read_write"],
        json!(format!("127.0.0.1:{}", qc.port))
    );
    assert!(psql(
        &format!("postgres://postgres@127.0.0.1:{rw}/shop"),
        "SELECT 1"
    )
    .is_none());
    // A planned failover needs the primary: refused as unavailable (exit 3), nothing changed.
    let out = Command::new(BIN)
        .args([
            "failover",
            "fg",
            "-c",
            cfg.to_str().expect("utf-8"),
            "--api",
            &s.base,
            "--to",
            "we",
        ])
        .output()
        .expect("failover");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("primary") && err.contains("503"), "{err}");
    assert_eq!(s.get("/api/v1/failover-groups/fg")["epoch"], 1);
}

#[test]
fn drills_fail_over_and_back_with_zero_loss_and_write_a_report() {
    let (_qc, _we, dir, cfg, _rw, _ro) = group_setup("");
    let s = Serve::start(BIN, &cfg, &[]);
    let reports = dir.path().join("reports");
    for round in 0..2 {
        let out = Command::new(BIN)
            .args([
                "drill",
                "fg",
                "-c",
                cfg.to_str().expect("utf-8"),
                "--api",
                &s.base,
                "--settle",
                "1",
                "--report-dir",
            ])
            .arg(&reports)
            .output()
            .expect("drill");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "drill {round} failed:\n{text}\n{}",
            s.log_text()
        );
        assert!(text.contains("0 writes lost"), "{text}");
    }
    let mut jsons: Vec<_> = std::fs::read_dir(&reports)
        .expect("reports")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    jsons.sort();
    assert_eq!(jsons.len(), 2, "{jsons:?}");
    let last: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&jsons[1]).expect("read")).expect("json");
    assert_eq!(last["lost_writes"], 0);
    assert!(
        last["acknowledged_writes"].as_u64().unwrap_or(0) > 10,
        "{last:#}"
    );
    assert!(
        last["rto_failover_ms"].is_u64() && last["rto_failback_ms"].is_u64(),
        "{last:#}"
    );
    assert_eq!(last["epochs"], json!([4, 5]));
    assert!(jsons[1].with_extension("md").exists());
}

#[test]
fn a_partitioned_primary_is_failed_over_and_fenced_when_the_partition_heals() {
    let (qc, we, _dir, cfg, rw, _ro) =
        group_setup("policy = \"automatic\"\ngrace_period = \"2s\"\nmax_data_loss = \"5s\"");
    // The daemon (probes and listeners) reaches the primary through a link the test can
    // cut; replication between the regions does not go through it.
    let link = Partition::start(qc.port);
    let text = std::fs::read_to_string(&cfg).expect("read topology");
    std::fs::write(
        &cfg,
        text.replace(
            &format!("127.0.0.1:{}/", qc.port),
            &format!("127.0.0.1:{}/", link.port),
        ),
    )
    .expect("write topology");
    let s = Serve::start(BIN, &cfg, &[]);
    let via_rw = format!("postgres://postgres@127.0.0.1:{rw}/shop");
    assert!(psql(&via_rw, "INSERT INTO w (v) VALUES ('before')").is_some());
    assert!(wait_until(Duration::from_secs(30), || s
        .get("/api/v1/failover-groups/fg")["last_known_lag"]["we"]
        ["seconds"]
        .is_number()));

    link.cut();
    let cut_at = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(60), || psql(
            &via_rw,
            "INSERT INTO w (v) VALUES ('during')"
        )
        .is_some()),
        "no write through the listener during the partition:\n{}",
        s.log_text()
    );
    // Detection (2 probes timing out after 250 ms, 300 ms apart) + grace (2 s) + 5 s.
    let took = cut_at.elapsed();
    assert!(took < Duration::from_millis(1100 + 2000 + 5000), "{took:?}");
    let g = s.get("/api/v1/failover-groups/fg");
    assert_eq!(
        (
            g["epoch"].clone(),
            g["primary"].clone(),
            g["fenced"].clone()
        ),
        (json!(2), json!("we"), json!(["primary"])),
        "{g:#}"
    );
    assert_eq!(
        psql(&via_rw, "SELECT inet_server_port()"),
        Some(we.port.to_string())
    );
    // The old primary was alive all along, cut off only from the daemon; until the
    // link heals, nothing can stop a client that reaches it directly.
    assert!(psql(&qc.url("shop"), "SELECT 1").is_some());

    link.heal();
    assert!(
        wait_until(Duration::from_secs(30), || refuses_writes(&qc.url("shop"))),
        "the old primary still takes writes after the partition healed:\n{}",
        s.log_text()
    );
    for _ in 0..5 {
        assert_eq!(
            psql(&via_rw, "SELECT inet_server_port()"),
            Some(we.port.to_string())
        );
    }
    assert_eq!(
        we.psql(
            "shop",
            "SELECT count(*) FROM w WHERE v IN ('before', 'during')"
        ),
        "2"
    );
}

/// Whether the listener closed this connection (EOF) within a few seconds.
fn closed_by_listener(c: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    matches!(c.read(&mut [0u8; 1]), Ok(0))
}

#[test]
fn a_listener_at_max_connections_closes_new_ones_and_the_api_keeps_answering() {
    let (_pgs, _dir, cfg, rw, _ro) = members_setup("max_connections = 2", &["we"]);
    let s = Serve::start(BIN, &cfg, &[]);
    assert!(wait_until(Duration::from_secs(30), || s
        .get("/api/v1/failover-groups/fg")["members"]
        .as_array()
        .is_some_and(|m| m.iter().all(|m| m["healthy"] == true))));
    let connect = || std::net::TcpStream::connect(("127.0.0.1", rw)).expect("connect");
    // Two sessions are carried (PostgreSQL waits for their start-up packet)...
    let first = connect();
    let second = connect();
    // ...the third is closed at once.
    let mut third = connect();
    assert!(
        closed_by_listener(&mut third),
        "a third connection was carried"
    );
    assert_eq!(s.get("/healthz")["status"], "ok");
    // When one ends, a new one is carried again.
    drop(first);
    assert!(wait_until(Duration::from_secs(10), || {
        let mut again = connect();
        let _ = again.set_read_timeout(Some(Duration::from_millis(300)));
        use std::io::Read;
        matches!(again.read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
    }));
    drop(second);
}

/// A georep role that is not a superuser: owner of the database, allowed to end client
/// sessions; the topology's primary URL is switched to it.
fn run_primary_as_owner(qc: &Postgres, cfg: &std::path::Path) -> String {
    qc.psql(
        "shop",
        "CREATE ROLE op LOGIN REPLICATION; ALTER DATABASE shop OWNER TO op; \
         GRANT pg_signal_backend, pg_monitor TO op; GRANT ALL ON w TO op; \
         GRANT ALL ON SEQUENCE w_id_seq TO op",
    );
    let owner = format!("postgres://op@127.0.0.1:{}/shop", qc.port);
    let text = std::fs::read_to_string(cfg).expect("read topology");
    let text = text.replace(&qc.url("shop"), &owner);
    assert!(text.contains(&owner), "{text}");
    std::fs::write(cfg, text).expect("write topology");
    owner
}

#[test]
fn a_busy_primary_is_never_failed_over_and_a_closed_database_settles_without_a_superuser() {
    let (qc, _we, _dir, cfg, _rw, _ro) =
        group_setup("policy = \"automatic\"\ngrace_period = \"1s\"\nmax_data_loss = \"30s\"");
    let owner = run_primary_as_owner(&qc, &cfg);

    // "Too many connections" is an answer: the primary is up, and failing over would
    // lose writes for nothing.
    let s = Serve::start(BIN, &cfg, &[]);
    wait_lag_known(&s);
    qc.psql("shop", "ALTER ROLE op CONNECTION LIMIT 1");
    let mut holder = Command::new("psql")
        .args(["-X", "-q", "-d", &owner, "-c", "SELECT pg_sleep(120)"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    let mut g = serde_json::Value::Null;
    let busy = |g: &serde_json::Value| {
        g["members"].as_array().is_some_and(|m| {
            m.iter().any(|m| {
                m["member"] == "primary"
                    && m["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("too many connections"))
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            g = s.get("/api/v1/failover-groups/fg");
            busy(&g)
        }),
        "the probes never saw the busy primary: {g:#}"
    );
    // Without the fix, two failed probes and the 1 s grace period fail it over.
    assert!(
        !wait_until(Duration::from_secs(5), || s
            .get("/api/v1/failover-groups/fg")["epoch"]
            != 1),
        "a busy primary was failed over: {:#}\n{}",
        s.get("/api/v1/failover-groups/fg"),
        s.log_text()
    );
    let _ = holder.kill();
    let _ = holder.wait();
    qc.psql("shop", "ALTER ROLE op CONNECTION LIMIT -1");
    drop(s);

    // A planned failover run as `op` crashes after closing the database to new
    // sessions (CONNECTION LIMIT 0, which holds `op` too): on restart georep reopens
    // it from the maintenance database and rolls the change back.
    crash_during_failover(&cfg, "we", false, "switchover-fenced");
    assert!(psql_at(&owner, "SELECT 1", false)
        .is_err_and(|e| e.contains("too many connections for database")));
    let s = restart_settled(&cfg, 2, "primary", "rolled back");
    assert!(
        psql(&owner, "INSERT INTO w (v) VALUES ('after-rollback')").is_some(),
        "{}",
        s.log_text()
    );
    assert_eq!(
        qc.psql(
            "shop",
            "SELECT datconnlimit FROM pg_database WHERE datname = 'shop'"
        ),
        "-1"
    );
}

/// Opens a session through a listener without starting it (PostgreSQL waits for the
/// start-up packet), so it stays open across a reload.
fn idle_session(port: u16) -> std::net::TcpStream {
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the listener")
}

/// Whether a session opened earlier still reaches PostgreSQL: an SSLRequest is answered
/// with one byte, `N` or `S`.
fn still_proxied(c: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let mut b = [0u8; 1];
    c.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).is_ok()
        && matches!(c.read(&mut b), Ok(1) if b[0] == b'N' || b[0] == b'S')
}

/// A reload that does not touch a failover group leaves its listeners and their
/// proxied sessions alone; one that changes the group restarts it (sessions end, new
/// ones are routed at once), and the change names the field.
#[test]
fn a_reload_keeps_an_unchanged_group_and_its_sessions_and_restarts_a_changed_one() {
    let (_pgs, dir, cfg, rw, _ro) = members_setup("", &["we"]);
    let cfg_s = cfg.to_str().expect("utf-8");
    let s = Serve::start(BIN, &cfg, &[]);
    wait_lag_known(&s);
    let epoch = s.get("/api/v1/failover-groups/fg")["epoch"].clone();
    let mut kept = idle_session(rw);
    // Add a policy: the group is not part of the change.
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::write(a.join("x"), b"x").expect("write");
    let text = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(
        &cfg,
        format!(
            "{text}[stores.a]\nregion = \"qc\"\nurl = \"{}\"\n[stores.b]\nregion = \"we\"\nurl = \"{}\"\n\
             [[policies]]\nname = \"p\"\nsource = \"a\"\ndestinations = [\"b\"]\n",
            a.display(),
            b.display()
        ),
    )
    .expect("write");
    let (code, text_out, err) = run(&["reload", "-c", cfg_s, "--api", &s.base], &[]).parts();
    assert_eq!(code, 0, "{text_out}{err}");
    assert!(text_out.contains("+ policies p: started"), "{text_out}");
    assert!(!text_out.contains("failover_groups"), "{text_out}");
    assert!(
        wait_until(Duration::from_secs(30), || b.join("x").exists()),
        "the added policy does not run"
    );
    assert!(
        still_proxied(&mut kept),
        "a session of an unchanged group was cut by a reload"
    );
    assert_eq!(s.get("/api/v1/failover-groups/fg")["epoch"], epoch);

    // Change the group: it restarts; its old sessions end; new ones are routed.
    let mut cut = idle_session(rw);
    let text = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(
        &cfg,
        text.replace("probe_failures = 2", "probe_failures = 3"),
    )
    .expect("write");
    let (code, text_out, err) = run(&["reload", "-c", cfg_s, "--api", &s.base], &[]).parts();
    assert_eq!(code, 0, "{text_out}{err}");
    assert!(
        text_out.contains("~ failover_groups fg: restarted (probe_failures)"),
        "{text_out}"
    );
    assert!(
        closed_by_listener(&mut cut),
        "a session of the restarted group was kept"
    );
    let via_rw = format!("postgres://postgres@127.0.0.1:{rw}/shop");
    assert!(
        wait_until(Duration::from_secs(30), || psql(&via_rw, "SELECT 1")
            .is_some()),
        "the restarted listener does not route:\n{}",
        s.log_text()
    );
    assert_eq!(s.get("/api/v1/failover-groups/fg")["epoch"], epoch);

    // Moving the listener to an address another process holds is refused before the
    // group is touched: it keeps serving where it was.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    let text = std::fs::read_to_string(&cfg).expect("read");
    std::fs::write(
        &cfg,
        text.replace(
            &format!("read_write_listener = \"127.0.0.1:{rw}\""),
            &format!("read_write_listener = \"127.0.0.1:{taken_port}\""),
        ),
    )
    .expect("write");
    let (code, text_out, err) = run(&["reload", "-c", cfg_s, "--api", &s.base], &[]).parts();
    assert_eq!(code, 1, "{text_out}{err}");
    assert!(
        text_out.contains("! failover_groups fg: FAILED")
            && text_out.contains("keeps running as it was"),
        "{text_out}"
    );
    assert!(
        psql(&via_rw, "SELECT 1").is_some(),
        "the group stopped serving"
    );
    assert_eq!(s.get("/api/v1/failover-groups/fg")["epoch"], epoch);
    drop(taken);
}
