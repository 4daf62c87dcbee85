//! MariaDB members on real servers (Debian's mariadbd, started per test on free
//! loopback ports): URLs, connections and the prerequisite checks of `db setup`.

use georep_db::mysql::check::{check, Member};
use georep_db::mysql::status::LagBy;
use georep_db::mysql::{self, Dialect, SslMode};
use georep_db::DbError;
use georep_testkit::MariaDb;

fn member(name: &str, url: String, primary: bool) -> Member {
    Member {
        name: name.into(),
        url,
        primary,
    }
}

#[test]
fn urls_are_read_as_the_mysql_client_reads_them() {
    let u = mysql::parse_url(
        "primary",
        "mariadb://rep:pw@db.example:3307/shop?ssl-mode=VERIFY_IDENTITY",
    )
    .expect("mariadb:// is MySQL's protocol");
    assert_eq!(
        (u.host(), u.port(), u.db_name()),
        ("db.example", 3307, "shop")
    );
    assert_eq!(u.ssl_mode, SslMode::VerifyIdentity);
    assert_eq!(u.user(), Some("rep"));
    assert!(!u.shown.contains("pw"), "{}", u.shown);
    let u = mysql::parse_url("r", "mysql://u@h/d").expect("defaults");
    assert_eq!((u.port(), u.ssl_mode), (3306, SslMode::Preferred));
    for (bad, why) in [
        ("postgres://u:secret@h/d", "not MySQL's"),
        ("mysql://u:secret@h:3306/", "no database name"),
        (
            "mysql://u:secret@h/d?ssl-mode=SOMETIMES",
            "ssl-mode 'SOMETIMES'",
        ),
        ("mysql://u:secret@h/d?require_ssl=true", "not accepted"),
        ("mysql://u:secret@h/d?bogus=1", "unknown parameter"),
    ] {
        let e = mysql::parse_url("primary", bad).expect_err(bad).to_string();
        assert!(e.contains(why), "{bad}: {e}");
        assert!(!e.contains("secret"), "the password is never shown: {e}");
        assert!(e.starts_with("primary:"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prerequisites_are_all_reported_at_once_with_their_fixes() {
    let primary = MariaDb::start(1, &[]);
    // Same server id, statement-based log, no strict GTIDs, no log of applied events.
    let replica = MariaDb::start(
        1,
        &[
            "--binlog-format=STATEMENT",
            "--gtid-strict-mode=0",
            "--skip-log-slave-updates",
        ],
    );
    primary.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.nokey (a INT) ENGINE=InnoDB; \
         CREATE TABLE shop.old (id INT PRIMARY KEY) ENGINE=MyISAM; \
         CREATE TABLE shop.fine (id INT PRIMARY KEY, v TEXT) ENGINE=InnoDB",
    );
    replica.sql(
        "CREATE DATABASE shop; CREATE USER 'weak'@'127.0.0.1' IDENTIFIED BY 'pw'; \
         GRANT SELECT ON *.* TO 'weak'@'127.0.0.1'",
    );
    let weak = format!("mysql://weak:pw@127.0.0.1:{}/shop", replica.port);
    let e = check(
        Dialect::MariaDb,
        &[
            member("primary", primary.url("shop"), true),
            member("we", weak, false),
        ],
    )
    .await
    .expect_err("the replica fails several checks");
    assert_eq!(e.exit_class(), 2);
    let DbError::Prerequisites(list) = &e else {
        panic!("{e}")
    };
    let text = list.join("\n");
    for want in [
        "primary and we both have server_id 1",
        "we: binlog_format is STATEMENT",
        "we: gtid_strict_mode is off",
        "we: log_slave_updates is off",
        "we: the user 'weak' lacks REPLICATION SLAVE ADMIN, BINLOG ADMIN, SLAVE MONITOR, CREATE, INSERT",
        "primary: table `shop`.`nokey` has no primary key",
        "primary: table `shop`.`old` uses MyISAM",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("`shop`.`fine`"), "{text}");
    assert!(!text.contains("pw"), "no password in messages: {text}");

    // A sound pair passes and says what it runs.
    let good = MariaDb::start(2, &[]);
    primary.sql("DROP TABLE shop.nokey; DROP TABLE shop.old");
    let facts = check(
        Dialect::MariaDb,
        &[
            member("primary", primary.url("shop"), true),
            member("we", good.url("mysql"), false),
        ],
    )
    .await
    .expect("prerequisites met");
    assert_eq!(facts.len(), 2);
    assert!(facts
        .iter()
        .all(|f| f.dialect == Dialect::MariaDb && f.version.contains("MariaDB")));
    assert_eq!((facts[0].server_id, facts[1].server_id), (1, 2));
    // The engine named in the topology must be what the server is.
    let e = check(
        Dialect::MySql,
        &[member("primary", primary.url("shop"), true)],
    )
    .await
    .expect_err("not MySQL");
    assert!(e.to_string().contains("set engine = \"mariadb\""), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_and_dead_servers_exit_3() {
    let db = MariaDb::start(7, &[]);
    let bad = format!(
        "mysql://root:wrong@127.0.0.1:{}/mysql?ssl-mode=DISABLED",
        db.port
    );
    let e = mysql::connect("primary", &bad)
        .await
        .expect_err("wrong password");
    assert!(matches!(e, DbError::Auth { .. }), "{e}");
    assert_eq!(e.exit_class(), 3);
    assert!(!e.to_string().contains("wrong"), "{e}");
    let e = mysql::connect("primary", &db.url("nosuchdb"))
        .await
        .expect_err("no database");
    assert_eq!(e.exit_class(), 2, "{e}");
    let port = georep_testkit::free_port();
    let e = mysql::connect("we", &format!("mysql://root@127.0.0.1:{port}/x"))
        .await
        .expect_err("nothing listens");
    assert!(matches!(e, DbError::Unreachable { .. }), "{e}");
    // PREFERRED falls back to a plain session on a server without TLS.
    let mut c = mysql::connect("primary", &db.url("mysql"))
        .await
        .expect("connect");
    use mysql_async::prelude::Queryable;
    let one: Option<u8> = c.query_first("SELECT 1").await.expect("query");
    assert_eq!(one, Some(1));
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_copies_under_a_writer_then_replicates_by_gtid_and_teardown_stops_it() {
    use mysql_async::prelude::Queryable;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let primary = MariaDb::start(1, &[]);
    let replica = MariaDb::start(2, &[]);
    primary.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(64) NOT NULL, b BLOB, at DATETIME(6), KEY by_v (v), KEY by_at_v (at DESC, v(8)) COMMENT 'two parts'); \
         INSERT INTO shop.orders (v, b, at) SELECT CONCAT('row ', seq), UNHEX(MD5(seq)), NOW(6) FROM shop.seq_1_to_3000; \
         CREATE DATABASE crm; CREATE TABLE crm.people (id INT PRIMARY KEY, name TEXT CHARACTER SET utf8mb4, note TEXT NULL); \
         INSERT INTO crm.people VALUES (1, 'Zoë ☃', NULL), (2, 'tab\there', 'quote '' and \\\\ backslash'); \
         CREATE TABLE shop.inv (id INT PRIMARY KEY, secret INT INVISIBLE, twice INT AS (id * 2) VIRTUAL); \
         INSERT INTO shop.inv (id, secret) VALUES (1, 41), (7, 42); \
         CREATE TABLE crm.latin (id INT PRIMARY KEY, l VARCHAR(20) CHARACTER SET latin1, s VARBINARY(20), f FLOAT); \
         INSERT INTO crm.latin VALUES (1, 'café', '\\\\N', 1.2345678), (2, NULL, CONCAT('a', CHAR(0), 'b', CHAR(13), CHAR(10), CHAR(9), CHAR(92)), NULL), (3, 'x', UNHEX('FF00FE5C4E'), -3.4e38); \
         CREATE TABLE crm.odd (id INT PRIMARY KEY, flags BIT(8), g POINT); \
         INSERT INTO crm.odd VALUES (1, b'10100101', POINT(1, 2)), (2, NULL, NULL)",
    );
    // A writer keeps inserting through setup; every acknowledged id must arrive.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let writer = {
        let (stop, acked, url) = (stop.clone(), acked.clone(), primary.url("shop"));
        tokio::spawn(async move {
            let mut c = mysql::connect("writer", &url)
                .await
                .expect("writer connects");
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                c.exec_drop(
                    "INSERT INTO orders (v, at) VALUES (?, NOW(6))",
                    (format!("w{i}"),),
                )
                .await
                .expect("insert");
                let id = c.last_insert_id().unwrap_or_default();
                acked.lock().expect("lock").push(id);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };
    let p = member("primary", primary.url("shop"), true);
    let r = member("we", replica.url("mysql"), false);
    let report = georep_db::mysql::setup::setup(&p, std::slice::from_ref(&r), &Default::default())
        .await
        .expect("setup");
    assert_eq!(report.replicas, vec![("we".to_string(), "copied")]);
    assert!(
        report.databases.contains(&"shop".to_string())
            && report.databases.contains(&"crm".to_string())
    );
    assert!(report.rows >= 3002, "{report:?}");
    assert!(!report.gtid.is_empty());
    // Writes after the copy too.
    let at_setup = acked.lock().expect("lock").len();
    wait_for("writes after setup", || async {
        acked.lock().map(|a| a.len()).unwrap_or(0) >= at_setup + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    let status = || async {
        georep_db::mysql::status::status(
            &p,
            std::slice::from_ref(&r),
            std::time::Duration::from_secs(5),
            LagBy::Waiting,
        )
        .await
        .expect("status")
    };
    wait_for("the replica to apply everything", || async {
        status().await[0].gtid_distance == 0
    })
    .await;
    let s = &status().await[0];
    assert_eq!(
        (s.io_running.as_str(), s.sql_running.as_str()),
        ("Yes", "Yes"),
        "{s:?}"
    );
    assert!(s.last_error.is_none(), "{s:?}");
    let sum = "SELECT COUNT(*), SUM(CRC32(CONCAT_WS('#', id, v, HEX(b), at))) FROM shop.orders; \
               SELECT COUNT(*), SUM(CRC32(CONCAT_WS('#', id, name, IFNULL(note, 'NULL')))) FROM crm.people";
    assert_eq!(
        replica.sql(sum),
        primary.sql(sum),
        "the replica equals the primary"
    );
    // Loaded as text (latin1, escapes, NUL, a literal backslash-N) and inserted (BIT,
    // spatial): byte for byte.
    let odd = "SELECT id, HEX(l), HEX(s), CAST(f AS DOUBLE) FROM crm.latin ORDER BY id; \
               SELECT id, HEX(flags), ST_AsText(g) FROM crm.odd ORDER BY id";
    assert_eq!(replica.sql(odd), primary.sql(odd), "odd values");
    assert!(primary.sql(odd).contains("5C4E"), "{}", primary.sql(odd));
    // Secondary indexes, built after the rows, are the primary's.
    let def = "SHOW CREATE TABLE shop.orders";
    let (pd, rd) = (primary.sql(def), replica.sql(def));
    assert!(pd.contains("KEY `by_at_v`"), "{pd}");
    let no_auto_inc = |d: &str| {
        d.split_whitespace()
            .filter(|w| !w.starts_with("AUTO_INCREMENT="))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(no_auto_inc(&rd), no_auto_inc(&pd), "table definition");
    let inv = "SELECT id, secret, twice FROM shop.inv ORDER BY id";
    assert_eq!(
        replica.sql(inv),
        primary.sql(inv),
        "invisible and generated columns"
    );
    let ids = replica.sql("SELECT id FROM shop.orders");
    let have: std::collections::HashSet<u64> = ids.lines().filter_map(|l| l.parse().ok()).collect();
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 10, "the writer ran during setup");
    assert!(
        acked.iter().all(|id| have.contains(id)),
        "every acknowledged write arrived"
    );

    // verify: equal, then a changed row on the replica is named by its key range.
    let opts = georep_db::postgres::VerifyOptions {
        table: None,
        ranges: 16,
        rechecks: 1,
        jobs: 3,
    };
    let v = georep_db::mysql::verify::verify("shop", &p, std::slice::from_ref(&r), &opts)
        .await
        .expect("verify");
    assert!(v.equal, "{v:?}");
    assert_eq!(v.tables.len(), 5, "{v:?}");
    replica
        .sql("SET SESSION sql_log_bin = 0; UPDATE shop.orders SET v = 'tampered' WHERE id = 1500");
    let v = georep_db::mysql::verify::verify("shop", &p, std::slice::from_ref(&r), &opts)
        .await
        .expect("verify");
    assert!(!v.equal);
    let orders = v
        .tables
        .iter()
        .find(|t| t.table == "shop.orders")
        .expect("orders");
    assert_eq!(orders.differing.len(), 1, "{orders:?}");
    let d = &orders.differing[0];
    assert!(
        d.from.is_none_or(|f| f <= 1500) && d.to.is_none_or(|t| t > 1500),
        "{d:?}"
    );
    assert_eq!(
        d.primary_rows, d.replica_rows,
        "same rows, different content"
    );
    assert!(v
        .tables
        .iter()
        .find(|t| t.table == "crm.people")
        .is_some_and(|t| t.equal));
    replica
        .sql("SET SESSION sql_log_bin = 0; UPDATE shop.orders SET v = 'row 1500' WHERE id = 1500");
    // Two rows' values swapped: a XOR of CRCs cannot see it (CRCs are linear); the sum can.
    let swap = "SET SESSION sql_log_bin = 0; \
                UPDATE shop.orders SET v = CASE id WHEN 1201 THEN 'row 1202' ELSE 'row 1201' END WHERE id IN (1201, 1202)";
    replica.sql(swap);
    let v = georep_db::mysql::verify::verify("shop", &p, std::slice::from_ref(&r), &opts)
        .await
        .expect("verify");
    assert!(!v.equal, "a swap between two rows is seen: {v:?}");
    replica.sql(
        "SET SESSION sql_log_bin = 0; \
         UPDATE shop.orders SET v = CONCAT('row ', id) WHERE id IN (1201, 1202)",
    );

    // Running setup again only starts replication again.
    let again = georep_db::mysql::setup::setup(&p, std::slice::from_ref(&r), &Default::default())
        .await
        .expect("again");
    assert_eq!(again.replicas, vec![("we".to_string(), "restarted")]);

    // Lag is measured by a heartbeat: a healthy replica is within the RPO; one that
    // applies 2 s late (MASTER_DELAY: its threads run, Seconds_Behind_Master may say
    // nothing) is over a 1 s RPO and within a 10 s one.
    let s = &status().await[0];
    assert!(
        s.lag_seconds.is_some_and(|l| l < 5.0) && !s.rpo_breached,
        "{s:?}"
    );
    replica.sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 2; START SLAVE");
    let one = std::time::Duration::from_secs(1);
    let s = &georep_db::mysql::status::status(&p, std::slice::from_ref(&r), one, LagBy::Waiting)
        .await
        .expect("status")[0];
    assert!(s.rpo_breached && s.lag_seconds.is_none(), "{s:?}");
    let ten = std::time::Duration::from_secs(10);
    let s = &georep_db::mysql::status::status(&p, std::slice::from_ref(&r), ten, LagBy::Waiting)
        .await
        .expect("status")[0];
    assert!(s.lag_seconds.is_some_and(|l| l >= 0.9), "{s:?}");
    assert!(!s.rpo_breached, "{s:?}");
    // The daemon's way: a heartbeat per poll, its age read without waiting; a replica
    // 2 s behind reads at least 0.9 s once the first beats arrive (MASTER_DELAY counts from
    // the event's timestamp, which has whole seconds).
    let deadline = std::time::Instant::now() + ten;
    let polled = loop {
        let s = georep_db::mysql::status::status(&p, std::slice::from_ref(&r), ten, LagBy::Beat)
            .await
            .expect("status")
            .remove(0);
        if s.lag_seconds.is_some() || std::time::Instant::now() >= deadline {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(polled.lag_seconds.is_some_and(|l| l >= 0.9), "{polled:?}");
    replica.sql("STOP SLAVE; CHANGE MASTER TO MASTER_DELAY = 0; START SLAVE");
    // The heartbeats written meanwhile arrive before the next count.
    let head = primary.sql("SELECT @@gtid_binlog_pos");
    let deadline = std::time::Instant::now() + ten * 3;
    while replica.sql("SELECT @@gtid_slave_pos") != head {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not catch up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // A stopped replica falls behind, and status says by how much.
    replica.sql("STOP SLAVE");
    primary.sql(
        "INSERT INTO shop.orders (v) VALUES ('a'), ('b'); INSERT INTO shop.orders (v) VALUES ('c')",
    );
    let s = &status().await[0];
    assert_eq!(s.io_running, "No");
    assert!(s.rpo_breached && s.lag_seconds.is_none(), "{s:?}");
    assert_eq!(s.gtid_distance, 2, "{s:?}");

    assert_eq!(
        georep_db::mysql::status::teardown(std::slice::from_ref(&r))
            .await
            .expect("teardown"),
        vec!["we"]
    );
    assert_eq!(replica.sql("SHOW SLAVE STATUS"), "", "no source left");
    let s = &status().await[0];
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("not replicating")),
        "{s:?}"
    );

    // The replica now holds data: setup refuses to replace it unless told to.
    let e = georep_db::mysql::setup::setup(&p, std::slice::from_ref(&r), &Default::default())
        .await
        .expect_err("a replica with data");
    assert!(
        e.to_string()
            .contains("already holds data in crm, georep, shop"),
        "{e}"
    );
    assert_eq!(e.exit_class(), 2);
    let again = georep_db::mysql::setup::setup(
        &p,
        std::slice::from_ref(&r),
        &georep_db::mysql::setup::SetupOptions {
            wipe: true,
            ..Default::default()
        },
    )
    .await
    .expect("--wipe copies again");
    assert_eq!(again.replicas, vec![("we".to_string(), "copied")]);
    wait_for("the recopied replica to catch up", || async {
        status().await[0].gtid_distance == 0
    })
    .await;
    assert_eq!(replica.sql(sum), primary.sql(sum));
}
