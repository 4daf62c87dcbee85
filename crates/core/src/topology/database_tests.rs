//! `[[databases]]`: the model, defaults, every error class, redaction.

use std::path::Path;
use std::time::Duration;

use super::tests::{parse, refused};
use super::*;

fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

fn parse_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Topology, ConfigErrors> {
    Topology::parse(text, Path::new("/etc/georep"), env)
}

const REGIONS: &str = r#"
[regions.qatar-central]
[regions.west-europe]
[regions.north-europe]
"#;

const FULL: &str = r#"
[regions.qatar-central]
[regions.west-europe]
[regions.north-europe]

[[databases]]
name = "orders"
engine = "postgres"
tables = ["public.orders", "Customers", "sales.Line_Items$"]
rpo = "30s"
sequence_sync_interval = "10s"
sequence_margin = 0
primary = { region = "qatar-central", url = "postgres://app:${PG_PASSWORD}@db-qc:5432/orders" }
replicas = [
  { region = "west-europe", url = "postgresql://app:${PG_PASSWORD}@db-we/orders", name = "we" },
  { region = "north-europe", url = "postgres://app@db-ne:5433/orders?sslmode=require&password=pw2" },
]

[[databases]]
name = "users"
engine = "postgres"
primary = { region = "west-europe", url = "postgres://app@db-we/users" }

[[databases.replicas]]
region = "qatar-central"
url = "postgres://app@db-qc/users"
"#;

#[test]
fn full_example_parses_into_the_model() {
    let t = parse_with(FULL, &env_of(&[("PG_PASSWORD", "hunter2")])).expect("valid");
    assert!(t.policies.is_empty());
    assert_eq!(t.databases.len(), 2);
    assert_eq!(t.databases[0].name, "orders", "file order is kept");

    let d = t.database("orders").expect("database");
    assert_eq!(
        *d,
        Database {
            name: "orders".into(),
            engine: DbEngine::Postgres,
            tables: vec![
                "public.orders".into(),
                "public.customers".into(),
                "sales.line_items$".into()
            ],
            schemas: vec!["public".into()],
            rpo: Duration::from_secs(30),
            sequence_sync_interval: Duration::from_secs(10),
            sequence_margin: 0,
            primary: DbMember {
                name: "primary".into(),
                region: "qatar-central".into(),
                url: "postgres://app:hunter2@db-qc:5432/orders".into(),
            },
            replicas: vec![
                DbMember {
                    name: "we".into(),
                    region: "west-europe".into(),
                    url: "postgresql://app:hunter2@db-we/orders".into(),
                },
                DbMember {
                    name: "north-europe".into(),
                    region: "north-europe".into(),
                    url: "postgres://app@db-ne:5433/orders?sslmode=require&password=pw2".into(),
                },
            ],
        }
    );
    assert_eq!(d.member("primary"), Some(&d.primary));
    assert_eq!(d.member("north-europe"), d.replicas.get(1));
    assert_eq!(d.member("nope"), None);

    // Defaults, and replicas as [[databases.replicas]] tables.
    let u = t.database("users").expect("database");
    assert_eq!(u.tables, Vec::<String>::new());
    assert_eq!(u.schemas, ["public"]);
    assert_eq!(u.rpo, Duration::from_secs(60));
    assert_eq!(u.sequence_sync_interval, Duration::from_secs(30));
    assert_eq!(u.sequence_margin, 1000);
    assert_eq!(u.replicas.len(), 1);
    assert_eq!(u.replicas[0].name, "qatar-central");
    assert_eq!(t.database("nope"), None);

    let schemas = format!(
        "{REGIONS}{}",
        r#"
[[databases]]
name = "s"
engine = "postgres"
schemas = ["Sales", "_audit"]
primary = { region = "qatar-central", url = "postgres://h1/db" }
replicas = [{ region = "west-europe", url = "postgres://h2/db" }]
"#
    );
    let t = parse(&schemas).expect("valid");
    assert_eq!(t.databases[0].schemas, ["sales", "_audit"]);
    assert!(t.databases[0].tables.is_empty());
}

#[test]
fn urls_are_redacted_in_output() {
    let t = parse_with(FULL, &env_of(&[("PG_PASSWORD", "hunter2")])).expect("valid");
    let d = t.database("orders").expect("database");
    assert_eq!(
        d.primary.redacted_url(),
        "postgres://app:***@db-qc:5432/orders"
    );
    assert_eq!(
        d.replicas[1].redacted_url(),
        "postgres://app@db-ne:5433/orders?sslmode=require&password=***"
    );
    assert_eq!(
        t.database("users").expect("db").primary.redacted_url(),
        "postgres://app@db-we/users"
    );

    let json = serde_json::to_value(&t).expect("serializes");
    let shown = json.to_string();
    assert!(
        !shown.contains("hunter2") && !shown.contains("pw2"),
        "{shown}"
    );
    let db = &json["databases"][0];
    assert_eq!(db["engine"], "postgres");
    assert_eq!(db["rpo"], "30s");
    assert_eq!(db["sequence_sync_interval"], "10s");
    assert_eq!(db["sequence_margin"], 0);
    assert_eq!(db["primary"]["name"], "primary");
    assert_eq!(
        db["replicas"][0]["url"],
        "postgresql://app:***@db-we/orders"
    );
    // The state URL gets the same treatment.
    let s = StateConfig {
        url: "postgres://h/db?password=x".into(),
    };
    assert_eq!(s.redacted_url(), "postgres://h/db?password=***");
}

/// Each case adds `chunk` (after the regions) to a valid database; the errors must
/// mention every `want`, and never a password.
#[test]
fn each_error_class_is_reported() {
    const OK: &str = "[[databases]]\nname = \"orders\"\nengine = \"postgres\"\nprimary = { region = \"qatar-central\", url = \"postgres://app:pw@db-qc/orders\" }\nreplicas = [{ region = \"west-europe\", url = \"postgres://app:pw@db-we/orders\" }]\n";
    let with = |from: &str, to: &str| OK.replace(from, to);
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "unknown primary region",
            with("region = \"qatar-central\"", "region = \"mars\""),
            &["database 'orders', primary: region 'mars' is not declared; add a [regions.mars] table"],
        ),
        (
            "unknown replica region",
            with("region = \"west-europe\"", "region = \"venus\""),
            &["database 'orders', replica 'venus': region 'venus' is not declared"],
        ),
        (
            "no replicas",
            with("[{ region = \"west-europe\", url = \"postgres://app:pw@db-we/orders\" }]", "[]"),
            &["database 'orders': has no replicas; list at least one"],
        ),
        (
            "missing replicas",
            with("replicas = [{ region = \"west-europe\", url = \"postgres://app:pw@db-we/orders\" }]\n", ""),
            &["database 'orders': has no replicas; add replicas = ["],
        ),
        (
            "missing primary and engine",
            with("primary = { region = \"qatar-central\", url = \"postgres://app:pw@db-qc/orders\" }\n", "").replace("engine = \"postgres\"\n", ""),
            &["missing `primary`; add primary = {", "missing `engine`; add engine = \"postgres\""],
        ),
        (
            "missing name",
            with("name = \"orders\"\n", ""),
            &["database #1: missing `name`"],
        ),
        (
            "bad database name",
            with("name = \"orders\"", "name = \"a b\""),
            &["database 'a b': invalid database name"],
        ),
        (
            "wrong scheme",
            with("postgres://app:pw@db-we/orders", "mysql://app:pw@db-we/orders"),
            &["replica 'west-europe': url: unsupported scheme 'mysql://' for a PostgreSQL database; write postgres://"],
        ),
        (
            "not a URL",
            with("postgres://app:pw@db-we/orders", "app:pw@db-we/orders"),
            &["url is not a postgres:// URL"],
        ),
        (
            "invalid URL",
            with("postgres://app:pw@db-we/orders", "postgres://app:pw@db-we:99999/orders"),
            &["url is not a valid URL (invalid port number)"],
        ),
        (
            "missing variable",
            with("postgres://app:pw@db-we/orders", "postgres://app:${PG_WE_PASSWORD}@db-we/orders"),
            &["database 'orders', replica 'west-europe': url uses ${PG_WE_PASSWORD}, which is not set in the environment"],
        ),
        (
            "duplicate database names",
            format!("{OK}{OK}"),
            &["the name 'orders' is already used by the database at line 5; database names must be unique"],
        ),
        (
            "duplicate replica names",
            with(
                "replicas = [{ region = \"west-europe\", url = \"postgres://app:pw@db-we/orders\" }]",
                "replicas = [{ region = \"west-europe\", url = \"postgres://app:pw@db-we/orders\" },\n  { region = \"west-europe\", url = \"postgres://db-we2/orders\" }]",
            ),
            &["replica 'west-europe': the replica name 'west-europe' is already used at line 9; give each replica of a database its own name"],
        ),
        (
            "replica is the primary",
            with("postgres://app:pw@db-we/orders", "postgresql://other:pw2@DB-QC:5432/orders?sslmode=require"),
            &["url points at the same database as the primary (db-qc:5432/orders); a replica must be another database"],
        ),
        (
            "replica twice",
            with(
                "replicas = [{ region = \"west-europe\", url = \"postgres://app:pw@db-we/orders\" }]",
                "replicas = [{ region = \"west-europe\", url = \"postgres://app:pw@db-we/orders\" },\n  { region = \"north-europe\", url = \"postgres://db-we:5432/x?dbname=orders\" }]",
            ),
            &["replica 'north-europe': url points at the same database as replica 'west-europe' (db-we:5432/orders)"],
        ),
        (
            "bad table names",
            with("engine = \"postgres\"\n", "engine = \"postgres\"\ntables = [\"public.orders\", \"a.b.c\", \"my table\", \"\\\"Bad.Name\\\"\", \"\\\"Quoted\\\"\", \"1x\", \"public.ORDERS\"]\n"),
            &[
                "table 'a.b.c' is not `schema.table` or `table` (which means public.table)",
                "table 'my table' is not `schema.table` or `table` ('my table' has a character not allowed)",
                "table '\"Bad.Name\"' is not `schema.table` or `table` (\"Bad.Name\" is empty or has a '\"', '.' or control character inside the quotes)",
                "table '1x' is not",
                "table 'public.orders' is listed twice in `tables`",
            ],
        ),
        (
            "empty tables",
            with("engine = \"postgres\"\n", "engine = \"postgres\"\ntables = []\n"),
            &["`tables` lists no tables"],
        ),
        (
            "tables and schemas",
            with("engine = \"postgres\"\n", "engine = \"postgres\"\ntables = [\"orders\"]\nschemas = [\"sales\"]\n"),
            &["`schemas` is only used when `tables` is omitted"],
        ),
        (
            "bad schemas",
            with("engine = \"postgres\"\n", "engine = \"postgres\"\nschemas = [\"a.b\", \"x\", \"X\"]\n"),
            &["schema 'a.b' is not a schema name", "schema 'x' is listed twice"],
        ),
        (
            "long identifier",
            with("engine = \"postgres\"\n", &format!("engine = \"postgres\"\ntables = [\"{}\"]\n", "t".repeat(64))),
            &["is longer than 63 characters"],
        ),
        (
            "bad durations",
            with("engine = \"postgres\"\n", "engine = \"postgres\"\nrpo = \"soon\"\nsequence_sync_interval = \"10ms\"\n"),
            &["rpo: invalid duration \"soon\"", "sequence_sync_interval = \"10ms\" is too short; the minimum is 1s"],
        ),
        (
            "huge duration",
            with("engine = \"postgres\"\n", "engine = \"postgres\"\nsequence_sync_interval = \"18000000000000000000s\"\n"),
            &["sequence_sync_interval: duration \"18000000000000000000s\" is too long: the maximum is 100 years"],
        ),
        (
            "negative sequence_margin",
            with("engine = \"postgres\"\n", "engine = \"postgres\"\nsequence_margin = -1\n"),
            &["sequence_margin = -1 is negative; use 0 or more (default 1000)"],
        ),
        (
            "sequence_margin not a number",
            with("engine = \"postgres\"\n", "engine = \"postgres\"\nsequence_margin = \"1000\"\n"),
            &["`sequence_margin` must be a whole number, not a string"],
        ),
        (
            "unknown fields",
            with("engine = \"postgres\"\n", "engine = \"postgres\"\nrpos = \"1m\"\n")
                .replace("url = \"postgres://app:pw@db-we/orders\"", "url = \"postgres://app:pw@db-we/orders\", regin = \"x\"")
                .replace("{ region = \"qatar-central\",", "{ name = \"main\", region = \"qatar-central\","),
            &[
                "database 'orders': unknown field `rpos` (did you mean `rpo`?)",
                "replica 'west-europe': unknown field `regin` (did you mean `region`?)",
                "database 'orders', primary: unknown field `name`; the fields allowed here are: region, url",
            ],
        ),
        (
            "mysql with postgres urls",
            with("engine = \"postgres\"", "engine = \"mysql\""),
            &["url is not a mysql:// or mariadb:// URL"],
        ),
        (
            "engine names are lower case",
            with("engine = \"postgres\"", "engine = \"MariaDB\""),
            &["engine \"MariaDB\" is not a database engine georep knows; write engine = \"postgres\", \"mariadb\" or \"mysql\" (lower case)"],
        ),
        (
            "unknown engine",
            with("engine = \"postgres\"", "engine = \"oracle\""),
            &["engine \"oracle\" is not a database engine georep knows; write engine = \"postgres\", \"mariadb\" or \"mysql\""],
        ),
        (
            "missing member fields",
            with("{ region = \"west-europe\", url = \"postgres://app:pw@db-we/orders\" }", "{ }"),
            &["replica #1: missing `region`", "replica #1: missing `url`"],
        ),
        (
            "reserved replica name",
            with("url = \"postgres://app:pw@db-we/orders\"", "url = \"postgres://app:pw@db-we/orders\", name = \"primary\""),
            &["replica 'primary': the name 'primary' is reserved for the primary"],
        ),
        (
            "bad replica name",
            with("url = \"postgres://app:pw@db-we/orders\"", "url = \"postgres://app:pw@db-we/orders\", name = \"we/1\""),
            &["replica 'we/1': invalid replica name"],
        ),
        (
            "wrong shapes",
            with("replicas = [{ region = \"west-europe\", url = \"postgres://app:pw@db-we/orders\" }]", "replicas = \"we\"")
                .replace("primary = {", "primary = [{")
                .replace("db-qc/orders\" }", "db-qc/orders\" }]"),
            &["`replicas` must be a list of tables, not a string", "database 'orders', primary: expected a table, found a list"],
        ),
        (
            "databases as a table",
            "[databases]\nname = \"orders\"\n".to_string(),
            &["[[databases]]: expected a list of databases, found a table; write each database as a [[databases]] table (double brackets)"],
        ),
    ];
    for (name, chunk, wants) in cases {
        let shown = refused(name, &format!("{REGIONS}{chunk}"), wants);
        assert!(
            !shown.contains(":pw") && !shown.contains("pw2"),
            "{name}: a password is shown:\n{shown}"
        );
    }
}

#[test]
fn errors_have_places_and_all_are_reported() {
    let text = r#"[regions.qatar-central]
[regions.west-europe]
[[databases]]
name = "orders"
engine = "postgres"
sequence_margin = -5
primary = { region = "qatar-central", url = "postgres://app:secret@db-qc/orders" }
replicas = [
  { region = "mars", url = "mysql://app:secret@db-we/orders" },
]
"#;
    let e = parse(text).expect_err("refused");
    let shown = e.render("g.toml");
    let want = [
        "g.toml:6:19: database 'orders': sequence_margin = -5 is negative",
        "g.toml:9:14: database 'orders', replica 'mars': region 'mars' is not declared",
        "g.toml:9:28: database 'orders', replica 'mars': url: unsupported scheme 'mysql://'",
    ];
    assert_eq!(e.0.len(), want.len(), "{shown}");
    for (line, w) in shown.lines().zip(want) {
        assert!(line.starts_with(w), "want {w:?}, got {line:?}");
    }
    assert!(!shown.contains("secret"), "{shown}");
}

#[test]
fn scheme_is_echoed_only_when_it_is_a_scheme() {
    let text = format!(
        "{REGIONS}{}",
        r#"
[[databases]]
name = "d"
engine = "postgres"
primary = { region = "qatar-central", url = "user:secret@host://x" }
replicas = [{ region = "west-europe", url = "postgres://h2/db" }]
"#
    );
    let shown = parse(&text).expect_err("refused").to_string();
    assert!(shown.contains("url is not a postgres:// URL"), "{shown}");
    assert!(!shown.contains("secret"), "{shown}");
}

#[test]
fn quoted_names_are_kept_exactly_and_unquoted_ones_folded() {
    let cases: &[(&str, Result<&str, &str>)] = &[
        ("Orders", Ok("public.orders")),
        ("Sales.Orders", Ok("sales.orders")),
        ("\"Orders\"", Ok("public.Orders")),
        ("\"Sales EU\".\"Orders\"", Ok("Sales EU.Orders")),
        ("sales.\"Order-Lines\"", Ok("sales.Order-Lines")),
        ("\"a.b\".c", Err("'.'")),
        ("\"\"", Err("empty")),
        ("\"Sales EU.Orders", Err("not `schema.table`")),
        ("a.b.c", Err("not `schema.table`")),
        ("\"Sales EU\"", Ok("public.Sales EU")),
    ];
    for (input, want) in cases {
        match (table_name(input), want) {
            (Ok(got), Ok(w)) => assert_eq!(got, *w, "{input}"),
            (Err(e), Err(w)) => assert!(e.contains(w), "{input}: {e}"),
            (got, _) => panic!("{input}: {got:?}, want {want:?}"),
        }
    }
    let t = parse(&format!(
        "{REGIONS}[[databases]]\nname = \"o\"\nengine = \"postgres\"\nschemas = ['\"Sales EU\"', 'public']\n\
         primary = {{ region = \"qatar-central\", url = \"postgres://h/a\" }}\n\
         replicas = [{{ region = \"west-europe\", url = \"postgres://h2/a\" }}]\n"
    ))
    .expect("valid");
    assert_eq!(t.databases[0].schemas, ["Sales EU", "public"]);
}

#[test]
fn object_names_are_sanitised_and_never_shared() {
    let t = parse(&format!(
        "{REGIONS}[[databases]]\nname = \"Orders-EU.1\"\nengine = \"postgres\"\n\
         primary = {{ region = \"qatar-central\", url = \"postgres://h/a\" }}\n\
         replicas = [{{ region = \"west-europe\", url = \"postgres://h2/a\", name = \"{}\" }}]\n",
        "x".repeat(60)
    ))
    .expect("valid");
    let d = &t.databases[0];
    assert_eq!(d.publication_name(), "georep_orders_eu_1");
    assert_eq!(d.subscription_name("we-1"), "georep_orders_eu_1_we_1");
    assert_eq!(d.subscription_name(&"x".repeat(60)).len(), 63);
    assert_eq!(
        d.subscription_names(),
        [
            "georep_orders_eu_1_primary".to_string(),
            d.subscription_name(&"x".repeat(60))
        ]
    );

    let db = |name: &str, replica: &str, n: u8| {
        format!(
            "[[databases]]\nname = \"{name}\"\nengine = \"postgres\"\n\
             primary = {{ region = \"qatar-central\", url = \"postgres://p{n}/a\" }}\n\
             replicas = [{{ region = \"west-europe\", url = \"postgres://r{n}/a\", name = \"{replica}\" }}]\n"
        )
    };
    // orders + eu-west and orders-eu + west: both georep_orders_eu_west.
    let shown = refused(
        "subscription clash",
        &format!("{REGIONS}{}{}", db("orders", "eu-west", 1), db("orders-eu", "west", 2)),
        &["database 'orders-eu', replica 'west': its subscription and slot would be named georep_orders_eu_west, as those of database 'orders', member 'eu-west'; georep names its objects"],
    );
    assert_eq!(shown.lines().count(), 1, "{shown}");
    refused(
        "publication clash",
        &format!("{REGIONS}{}{}", db("orders-eu", "a", 1), db("orders_eu", "b", 2)),
        &["database 'orders_eu': its publication would be named georep_orders_eu, as database 'orders-eu''s is"],
    );
    refused(
        "clash within a database",
        &format!(
            "{REGIONS}[[databases]]\nname = \"o\"\nengine = \"postgres\"\n\
             primary = {{ region = \"qatar-central\", url = \"postgres://p/a\" }}\n\
             replicas = [{{ region = \"west-europe\", url = \"postgres://r1/a\", name = \"eu-west\" }},\n\
             {{ region = \"north-europe\", url = \"postgres://r2/a\", name = \"eu_west\" }}]\n"
        ),
        &["its subscription and slot would be named georep_o_eu_west, as those of database 'o', member 'eu-west'"],
    );
    // Distinct names that merely share a prefix are fine.
    parse(&format!(
        "{REGIONS}{}{}",
        db("orders", "we", 1),
        db("orders-eu", "we", 2)
    ))
    .expect("valid");
}

#[test]
fn mariadb_and_mysql_databases_replicate_whole_servers() {
    let t = parse(
        r#"
[regions.qc]
[regions.we]
[[databases]]
name = "shop"
engine = "mariadb"
primary = { region = "qc", url = "mariadb://app:pw@db-qc:3307/shop" }
replicas = [{ region = "we", url = "mysql://app:pw@db-we/shop?ssl-mode=REQUIRED" }]
"#,
    )
    .expect("a MariaDB database parses");
    let db = t.database("shop").expect("shop");
    assert_eq!(db.engine, DbEngine::MariaDb);
    assert!(db.engine.is_mysql_family());
    assert_eq!(serde_json::to_value(db.engine).expect("json"), "mariadb");
    let text = refused(
        "mariadb extras",
        r#"
[regions.qc]
[regions.we]
[[databases]]
name = "shop"
engine = "mysql"
tables = ["shop.orders"]
sequence_margin = 10
primary = { region = "qc", url = "mysql://app:pw@db-qc/shop" }
replicas = [{ region = "we", url = "mysql://app:pw@db-qc:3306/other" }, { region = "qc", name = "x", url = "mysql://app:pw@db-x:3306/" }]

[[failover_groups]]
name = "shop-fg"
database = "shop"
read_write_listener = "127.0.0.1:6000"
read_only_listener = "127.0.0.1:6001"
"#,
        &[
            "`tables` does not apply to engine \"mysql\"",
            "`sequence_margin` does not apply to engine \"mysql\"",
            "url points at the same database as the primary (db-qc:3306)",
            "url names no database",
        ],
    );
    assert!(!text.contains("pw@"), "{text}");
    // MySQL 8 databases take failover groups like MariaDB's.
    assert!(!text.contains("failover group"), "{text}");
}
