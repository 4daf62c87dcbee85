//! `[[failover_groups]]`: the model, defaults, every error class.

use std::net::SocketAddr;
use std::time::Duration;

use super::tests::{parse, refused};
use super::*;

const DATABASES: &str = r#"
[regions.qatar-central]
[regions.west-europe]

[[databases]]
name = "orders"
engine = "postgres"
primary = { region = "qatar-central", url = "postgres://app:pw@db-qc/orders" }
replicas = [{ region = "west-europe", url = "postgres://app:pw@db-we/orders" }]

[[databases]]
name = "users"
engine = "postgres"
primary = { region = "qatar-central", url = "postgres://app@db-qc/users" }
replicas = [{ region = "west-europe", url = "postgres://app@db-we/users" }]
"#;

const FULL: &str = r#"
[[failover_groups]]
name = "orders-fg"
database = "orders"
read_write_listener = "127.0.0.1:6432"
read_only_listener = "[::1]:6433"
read_only_to_primary = true
policy = "automatic"
grace_period = "1m"
max_data_loss = "5s"
probe_interval = "500ms"
probe_timeout = "250ms"
probe_failures = 5

[[failover_groups]]
name = "users-fg"
database = "users"
read_write_listener = "0.0.0.0:7432"
"#;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

#[test]
fn full_example_parses_into_the_model() {
    let t = parse(&format!("{DATABASES}{FULL}")).expect("valid");
    assert_eq!(t.failover_groups.len(), 2);
    assert_eq!(t.failover_groups[0].name, "orders-fg", "file order is kept");
    assert_eq!(
        *t.failover_group("orders-fg").expect("group"),
        FailoverGroup {
            name: "orders-fg".into(),
            database: "orders".into(),
            read_write_listener: addr("127.0.0.1:6432"),
            read_only_listener: Some(addr("[::1]:6433")),
            read_only_to_primary: true,
            policy: FailoverPolicy::Automatic,
            grace_period: Duration::from_secs(60),
            max_data_loss: Duration::from_secs(5),
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(250),
            probe_failures: 5,
            max_connections: FailoverGroup::DEFAULT_MAX_CONNECTIONS,
        }
    );
    // Defaults.
    assert_eq!(
        *t.failover_group("users-fg").expect("group"),
        FailoverGroup {
            name: "users-fg".into(),
            database: "users".into(),
            read_write_listener: addr("0.0.0.0:7432"),
            read_only_listener: None,
            read_only_to_primary: false,
            policy: FailoverPolicy::Manual,
            grace_period: Duration::from_secs(30),
            max_data_loss: Duration::ZERO,
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
            probe_failures: 3,
            max_connections: FailoverGroup::DEFAULT_MAX_CONNECTIONS,
        }
    );
    assert_eq!(t.failover_group("nope"), None);

    let json = serde_json::to_value(&t).expect("serializes");
    let g = &json["failover_groups"][0];
    assert_eq!(g["policy"], "automatic");
    assert_eq!(g["read_write_listener"], "127.0.0.1:6432");
    assert_eq!(g["read_only_listener"], "[::1]:6433");
    assert_eq!(g["grace_period"], "1m");
    assert_eq!(g["max_data_loss"], "5s");
    assert_eq!(g["probe_timeout"], "250ms");
    assert_eq!(g["probe_failures"], 5);
    assert_eq!(json["failover_groups"][1]["policy"], "manual");
    assert_eq!(json["failover_groups"][1]["max_data_loss"], "0s");
    assert!(json["failover_groups"][1]["read_only_listener"].is_null());

    assert!(parse(DATABASES).expect("valid").failover_groups.is_empty());
}

/// Each case adds `chunk` after the databases; the errors must mention every `want`.
#[test]
fn each_error_class_is_reported() {
    const OK: &str = "[[failover_groups]]\nname = \"orders-fg\"\ndatabase = \"orders\"\nread_write_listener = \"127.0.0.1:6432\"\nread_only_listener = \"127.0.0.1:6433\"\n";
    let with = |from: &str, to: &str| OK.replace(from, to);
    let second = |body: &str| format!("{OK}\n[[failover_groups]]\n{body}");
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "unknown database",
            with("database = \"orders\"", "database = \"order\""),
            &["failover group 'orders-fg': database 'order' is not declared; add a [[databases]] entry"],
        ),
        (
            "bad name",
            with("name = \"orders-fg\"", "name = \"orders fg\""),
            &["failover group 'orders fg': invalid failover group name"],
        ),
        (
            "missing fields",
            "[[failover_groups]]\npolicy = \"manual\"\n".to_string(),
            &[
                "failover group #1: missing `name`",
                "failover group #1: missing `database`",
                "failover group #1: missing `read_write_listener`",
            ],
        ),
        (
            "duplicate name",
            second("name = \"orders-fg\"\ndatabase = \"users\"\nread_write_listener = \"127.0.0.1:7432\"\n"),
            &["failover group 'orders-fg': the name 'orders-fg' is already used by the failover group at line 16"],
        ),
        (
            "two groups for one database",
            second("name = \"orders-fg2\"\ndatabase = \"orders\"\nread_write_listener = \"127.0.0.1:7432\"\n"),
            &["failover group 'orders-fg2': database 'orders' already has the failover group 'orders-fg' (line 16)"],
        ),
        (
            "bad listen addresses",
            with("\"127.0.0.1:6432\"", "\"localhost:6432\"")
                .replace("\"127.0.0.1:6433\"", "\"127.0.0.1:0\""),
            &[
                "read_write_listener 'localhost:6432' is not IP:PORT",
                "read_only_listener '127.0.0.1:0' has port 0",
            ],
        ),
        (
            "listener as a number",
            with("\"127.0.0.1:6432\"", "6432"),
            &["`read_write_listener` must be a string, not an integer"],
        ),
        (
            "same address within a group",
            with("127.0.0.1:6433", "127.0.0.1:6432"),
            &["read_only_listener 127.0.0.1:6432 clashes with the read_write_listener of failover group 'orders-fg' 127.0.0.1:6432 (line 19)"],
        ),
        (
            "same address across groups",
            second("name = \"users-fg\"\ndatabase = \"users\"\nread_write_listener = \"0.0.0.0:6433\"\n"),
            &["failover group 'users-fg': read_write_listener 0.0.0.0:6433 clashes with the read_only_listener of failover group 'orders-fg' 127.0.0.1:6433 (line 20)"],
        ),
        (
            "same address as the API (default)",
            with("127.0.0.1:6432", "127.0.0.1:7607"),
            &["read_write_listener 127.0.0.1:7607 clashes with the API's [server] listen address 127.0.0.1:7607"],
        ),
        (
            "same address as the API (set)",
            format!("[server]\nlisten = \"[::]:8080\"\n{}", with("127.0.0.1:6433", "[::1]:8080")),
            &["read_only_listener [::1]:8080 clashes with the API's [server] listen address [::]:8080"],
        ),
        (
            "read_only_to_primary without a read-only listener",
            OK.replace("read_only_listener = \"127.0.0.1:6433\"\n", "read_only_to_primary = true\n"),
            &["read_only_to_primary = true has no effect without a read_only_listener"],
        ),
        (
            "read_only_to_primary not a boolean",
            format!("{OK}read_only_to_primary = \"yes\"\n"),
            &["`read_only_to_primary` must be true or false, not a string"],
        ),
        (
            "bad policy",
            format!("{OK}policy = \"Automatic\"\n"),
            &["policy = \"Automatic\" is not a failover policy; use \"manual\" (the default) or \"automatic\""],
        ),
        (
            "durations",
            format!("{OK}grace_period = \"500ms\"\nmax_data_loss = \"soon\"\nprobe_interval = \"10ms\"\nprobe_timeout = \"50ms\"\n"),
            &[
                "grace_period = \"500ms\" is too short; the minimum is 1s",
                "max_data_loss: ",
                "probe_interval = \"10ms\" is too short; the minimum is 100ms",
                "probe_timeout = \"50ms\" is too short; the minimum is 100ms",
            ],
        ),
        (
            "duration as a number",
            format!("{OK}grace_period = 30\n"),
            &["`grace_period` must be a string, not an integer"],
        ),
        (
            "probe_failures out of range",
            format!("{OK}probe_failures = 0\n"),
            &["probe_failures = 0 is out of range; use 1 to 100 (default 3)"],
        ),
        (
            "probe_failures too many",
            format!("{OK}probe_failures = 101\n"),
            &["probe_failures = 101 is out of range"],
        ),
        (
            "unknown fields",
            format!("{OK}grace = \"30s\"\nprobe_failure = 3\n"),
            &[
                "failover group 'orders-fg': unknown field `grace`",
                "unknown field `probe_failure` (did you mean `probe_failures`?)",
            ],
        ),
        (
            "failover_groups as a table",
            "[failover_groups]\nname = \"x\"\n".to_string(),
            &["[[failover_groups]]: expected a list of failover groups, found a table"],
        ),
    ];
    for (name, chunk, wants) in cases {
        refused(name, &format!("{DATABASES}{chunk}"), wants);
    }
}

#[test]
fn errors_have_places_and_all_are_reported() {
    let text = r#"[regions.qatar-central]
[regions.west-europe]
[[databases]]
name = "orders"
engine = "postgres"
primary = { region = "qatar-central", url = "postgres://db-qc/orders" }
replicas = [{ region = "west-europe", url = "postgres://db-we/orders" }]
[[failover_groups]]
name = "fg"
database = "nope"
read_write_listener = "127.0.0.1:6432"
read_only_listener = "127.0.0.1:6432"
policy = "auto"
probe_failures = -1
"#;
    let e = parse(text).expect_err("refused");
    let shown = e.render("g.toml");
    let want = [
        "g.toml:10:12: failover group 'fg': database 'nope' is not declared",
        "g.toml:12:22: failover group 'fg': read_only_listener 127.0.0.1:6432 clashes",
        "g.toml:13:10: failover group 'fg': policy = \"auto\" is not a failover policy",
        "g.toml:14:18: failover group 'fg': probe_failures = -1 is out of range",
    ];
    assert_eq!(e.0.len(), want.len(), "{shown}");
    for (line, w) in shown.lines().zip(want) {
        assert!(line.starts_with(w), "want {w:?}, got {line:?}");
    }
}

#[test]
fn a_member_url_names_one_server_once() {
    let group = r#"
[[failover_groups]]
name = "orders-fg"
database = "orders"
read_write_listener = "127.0.0.1:6432"
"#;
    let with = |primary: &str| {
        format!(
            r#"
[regions.a]
[regions.b]
[[databases]]
name = "orders"
engine = "postgres"
primary = {{ region = "a", url = "{primary}" }}
replicas = [{{ region = "b", url = "postgres://app@db-b/orders" }}]
{group}"#
        )
    };
    // The listener and the connection read the same place.
    let t = parse(&with("postgres://app@127.0.0.1/orders?port=5999")).expect("valid");
    let url = &t.database("orders").expect("db").primary.url;
    assert_eq!(
        crate::pg_endpoint(url).expect("endpoint").address(),
        "127.0.0.1:5999"
    );
    refused(
        "port twice",
        &with("postgres://app:pw@db-a:5432/orders?port=5999"),
        &["g.toml:7:", "gives the port twice"],
    );
    refused(
        "host twice",
        &with("postgres://app@db-a/orders?host=db-c"),
        &["names the server twice"],
    );
    refused(
        "two hosts",
        &with("postgres:///orders?host=db-a,db-c"),
        &["exactly one host", "orders-fg"],
    );
    let shown = refused(
        "socket",
        &with("postgres:///orders?host=/run/postgresql"),
        &["Unix socket", "orders-fg"],
    );
    assert!(!shown.contains("pw"), "{shown}");
}
