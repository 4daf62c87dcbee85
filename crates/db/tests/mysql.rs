//! MariaDB members on real servers (Debian's mariadbd, started per test on free
//! loopback ports): URLs, connections and the prerequisite checks of `db setup`.

use georep_db::mysql::check::{check, Member};
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
