//! Reseeding a former primary removes exactly its own database's georep objects, not
//! those of another database on the same server whose names share a prefix.

use std::time::Duration;

use georep_core::{Database, DbEngine, DbMember};
use georep_db::postgres as pg;
use georep_testkit::Postgres;

fn member(name: &str, url: String) -> DbMember {
    DbMember {
        name: name.into(),
        region: name.into(),
        url,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reseed_leaves_another_databases_objects_with_a_shared_prefix_alone() {
    // `old` was the primary of orders and of orders-eu (two databases on one server);
    // `new` is orders' primary now.
    let (old, new) = (Postgres::start(&[]), Postgres::start(&[]));
    for pg in [&old, &new] {
        pg.create_db("orders");
        pg.psql("orders", "CREATE TABLE t (id int PRIMARY KEY)");
    }
    old.psql("postgres", "CREATE DATABASE \"orders-eu\"");
    old.psql("orders", "INSERT INTO t SELECT generate_series(1, 10)");
    let eu = format!("postgres://postgres@127.0.0.1:{}/orders-eu", old.port);
    // orders-eu's replica `west` is away: its slot is inactive, and its name starts
    // with georep_orders_ ('_' also being a LIKE wildcard).
    georep_testkit::psql_at(
        &eu,
        "SELECT pg_create_logical_replication_slot('georep_orders_eu_west', 'pgoutput')",
        true,
    )
    .expect("slot");
    georep_testkit::psql_at(
        &eu,
        &format!(
            "CREATE SUBSCRIPTION georep_orders_eu_back CONNECTION 'host=127.0.0.1 port={} dbname=orders user=postgres' \
             PUBLICATION p WITH (connect = false)",
            new.port
        ),
        true,
    )
    .expect("subscription");
    // A slot orders' own member left on the old primary: reseed drops it.
    old.psql(
        "orders",
        "SELECT pg_create_logical_replication_slot('georep_orders_primary', 'pgoutput')",
    );

    let db = Database {
        name: "orders".into(),
        engine: DbEngine::Postgres,
        tables: Vec::new(),
        schemas: vec!["public".into()],
        rpo: Duration::from_secs(60),
        sequence_sync_interval: Duration::from_secs(30),
        sequence_margin: 0,
        primary: member("primary", new.url("orders")),
        replicas: vec![member("old", old.url("orders"))],
    };
    pg::prepare_reseed(&db, &db.replicas[0])
        .await
        .expect("prepare reseed");

    let slots = old.psql(
        "postgres",
        "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots",
    );
    assert_eq!(slots, "georep_orders_eu_west", "slots left: {slots}");
    let subs = old.psql(
        "postgres",
        "SELECT string_agg(subname, ',') FROM pg_subscription",
    );
    assert_eq!(subs, "georep_orders_eu_back");
    assert_eq!(old.psql("orders", "SELECT count(*) FROM t"), "0");
}
