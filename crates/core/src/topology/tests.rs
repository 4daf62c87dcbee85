use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const BASE: &str = "/etc/georep";

fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// Parses `text` as if read from `/etc/georep/`, with no environment variables.
pub(super) fn parse(text: &str) -> Result<Topology, ConfigErrors> {
    Topology::parse(text, Path::new(BASE), &no_env)
}

/// Parses `text`, which must be refused, and checks that the rendered errors contain
/// each of `wants`; returns them for further checks.
pub(super) fn refused(name: &str, text: &str, wants: &[&str]) -> String {
    let shown = match parse(text) {
        Ok(_) => panic!("{name}: accepted:\n{text}"),
        Err(e) => e.render("g.toml"),
    };
    for want in wants {
        assert!(shown.contains(want), "{name}: want {want:?} in:\n{shown}");
    }
    shown
}

fn errors(text: &str) -> ConfigErrors {
    parse(text).expect_err("the file should be refused")
}

/// Regions and stores most cases build on.
const PRELUDE: &str = r#"
[regions.qatar-central]
[regions.west-europe]
[stores.photos-qc]
region = "qatar-central"
url = "az://photos"
[stores.photos-we]
region = "west-europe"
url = "/srv/dr/photos"
[stores.archive-s3]
region = "west-europe"
url = "s3://archive/photos"
"#;

const FULL: &str = r#"
[state]
url = "sqlite://./state/georep.db"

[server]
listen = "0.0.0.0:8080"
token = "${GEOREP_TOKEN}"

[regions.qatar-central]
description = "Azure Qatar Central"

[regions.west-europe]

[stores.photos-qc]
region = "qatar-central"
url = "az://photos"

[stores.photos-we]
region = "west-europe"
url = "dr/photos"

[[policies]]
name = "photos-dr"
source = "photos-qc"
destinations = ["photos-we"]
include = ["images/**"]
exclude = ["**/*.tmp"]
since = "2024-06-01T00:00:00Z"
deletes = "propagate"
max_delete = "5%"
rpo = "5m"
scan_interval = "60s"
transfers = 16

[[policies]]
name = "defaults"
source = "photos-we"
destinations = ["photos-qc"]
include = ["other/**"]
"#;

#[test]
fn full_example_parses_into_the_model() {
    // The second policy goes back the other way: a cycle. Check it is refused, then
    // parse the file without it.
    let cyc = Topology::parse(
        FULL,
        Path::new(BASE),
        &env_of(&[("GEOREP_TOKEN", "s3cret")]),
    )
    .expect_err("cycle");
    assert!(cyc.to_string().contains("cycle"), "{cyc}");

    let text = FULL.replace(
        "source = \"photos-we\"\ndestinations = [\"photos-qc\"]",
        "source = \"photos-qc\"\ndestinations = [\"photos-we\"]",
    );
    let t = Topology::parse(
        &text,
        Path::new(BASE),
        &env_of(&[("GEOREP_TOKEN", "s3cret")]),
    )
    .expect("valid");
    assert_eq!(t.state.url, "sqlite:///etc/georep/state/georep.db");
    assert_eq!(
        t.state.sqlite_path(),
        Some(PathBuf::from("/etc/georep/state/georep.db"))
    );
    assert_eq!(t.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(t.server.token.as_deref(), Some("s3cret"));
    assert_eq!(
        t.regions["qatar-central"].description.as_deref(),
        Some("Azure Qatar Central")
    );
    assert_eq!(t.regions["west-europe"], Region { description: None });
    assert_eq!(
        t.store("photos-we"),
        Some(&StoreDef {
            name: "photos-we".into(),
            region: "west-europe".into(),
            url: StoreUrl::Local {
                path: "/etc/georep/dr/photos".into()
            },
        })
    );
    assert_eq!(
        t.store("photos-qc").map(|s| s.url.to_string()).as_deref(),
        Some("az://photos")
    );

    let p = t.policy("photos-dr").expect("policy");
    assert_eq!(p.source, "photos-qc");
    assert_eq!(p.destinations, ["photos-we"]);
    assert_eq!(p.include, ["images/**"]);
    assert_eq!(p.exclude, ["**/*.tmp"]);
    assert!(p.filter.matches("images/a.jpg"));
    assert!(!p.filter.matches("images/a.tmp"));
    assert!(!p.filter.matches("docs/a.jpg"));
    assert_eq!(
        p.since.map(|s| s.to_rfc3339()).as_deref(),
        Some("2024-06-01T00:00:00+00:00")
    );
    assert_eq!(p.deletes, DeleteMode::Propagate);
    assert_eq!(p.max_delete, MaxDelete::Percent(5.0));
    assert_eq!(p.rpo, Duration::from_secs(300));
    assert_eq!(p.scan_interval, Duration::from_secs(60));
    assert_eq!(p.transfers, 16);

    // Defaults.
    let d = t.policy("defaults").expect("policy");
    assert_eq!(d.exclude, Vec::<String>::new());
    assert_eq!(d.since, None);
    assert_eq!(d.deletes, DeleteMode::Keep);
    assert_eq!(d.max_delete, MaxDelete::Percent(10.0));
    assert_eq!(d.rpo, Duration::from_secs(15 * 60));
    assert_eq!(d.scan_interval, Duration::from_secs(5 * 60));
    assert_eq!(d.transfers, 8);
    assert_eq!(t.policies.len(), 2);
    assert_eq!(t.policies[0].name, "photos-dr", "file order is kept");
}

#[test]
fn empty_file_gets_every_default() {
    let t = parse("").expect("empty is valid");
    assert_eq!(t.state.url, "sqlite:///etc/georep/georep-state/georep.db");
    assert_eq!(t.server.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(t.server.token, None);
    assert!(t.regions.is_empty() && t.stores.is_empty() && t.policies.is_empty());
    // [state] without url gets the default too.
    assert_eq!(parse("[state]\n").expect("valid").state, t.state);
}

#[test]
fn state_urls() {
    let ok = [
        ("sqlite:///var/lib/georep.db", "sqlite:///var/lib/georep.db"),
        ("sqlite://../x/g.db", "sqlite:///etc/x/g.db"),
        (
            "sqlite://g.db?mode=rwc",
            "sqlite:///etc/georep/g.db?mode=rwc",
        ),
        (
            "postgres://georep@db.internal/georep",
            "postgres://georep@db.internal/georep",
        ),
        ("postgresql://h/db", "postgresql://h/db"),
    ];
    for (input, want) in ok {
        let t = parse(&format!("[state]\nurl = \"{input}\"\n")).expect(input);
        assert_eq!(t.state.url, want);
    }
    for (input, want) in [
        (
            "mysql://u:pw@h/db",
            "unsupported state URL scheme 'mysql://'",
        ),
        ("./state.db", "is not a URL"),
        ("sqlite://", "names no database file"),
    ] {
        let e = errors(&format!("[state]\nurl = \"{input}\"\n")).to_string();
        assert!(e.contains(want), "{input}: {e}");
        assert!(!e.contains("pw"), "never echo a password: {e}");
    }
    let s = StateConfig {
        url: "postgres://u:hunter2@h/db".into(),
    };
    assert_eq!(s.redacted_url(), "postgres://u:***@h/db");
    assert_eq!(s.sqlite_path(), None);
}

#[test]
fn relative_local_paths_resolve_against_the_config_folder() {
    let text = r#"
[regions.r]
[stores.a]
region = "r"
url = "../demo/region-a"
[stores.b]
region = "r"
url = "./b/./c"
[stores.c]
region = "r"
url = "/abs/c"
[stores.d]
region = "r"
url = "file:///abs/d"
"#;
    let t = Topology::parse(text, Path::new("/work/main/examples"), &no_env).expect("valid");
    let path = |n: &str| match &t.stores[n].url {
        StoreUrl::Local { path } => path.clone(),
        other => panic!("{n} is {other:?}"),
    };
    assert_eq!(path("a"), PathBuf::from("/work/main/demo/region-a"));
    assert_eq!(path("b"), PathBuf::from("/work/main/examples/b/c"));
    assert_eq!(path("c"), PathBuf::from("/abs/c"));
    assert_eq!(path("d"), PathBuf::from("/abs/d"));
    // A relative base keeps the climb it cannot resolve.
    assert_eq!(
        resolve(Path::new(""), Path::new("../x")),
        PathBuf::from("../x")
    );
    assert_eq!(
        resolve(Path::new("a"), Path::new("../../x")),
        PathBuf::from("../x")
    );
    assert_eq!(
        resolve(Path::new("/"), Path::new("../x")),
        PathBuf::from("/x")
    );
}

#[test]
fn env_expansion() {
    let text = r#"
[state]
url = "postgres://georep:${PGPASS}@db/georep"
[server]
token = "${GEOREP_TOKEN}"
[regions.r]
[stores.a]
region = "r"
url = "https://${AZ_ACCOUNT}.blob.core.windows.net/photos/$${literal}"
"#;
    let env = env_of(&[
        ("PGPASS", "pw"),
        ("GEOREP_TOKEN", "tok"),
        ("AZ_ACCOUNT", "acct"),
    ]);
    let t = Topology::parse(text, Path::new(BASE), &env).expect("valid");
    assert_eq!(t.state.url, "postgres://georep:pw@db/georep");
    assert_eq!(t.server.token.as_deref(), Some("tok"));
    assert_eq!(
        t.stores["a"].url,
        StoreUrl::Azure {
            account: Some("acct".into()),
            container: "photos".into(),
            prefix: "${literal}".into(),
            endpoint: None
        }
    );

    // Every missing variable is named, with the field and the fix.
    let e = Topology::parse(text, Path::new(BASE), &env_of(&[("PGPASS", "pw")]))
        .expect_err("missing variables");
    let shown = e.to_string();
    assert_eq!(e.0.len(), 2, "{shown}");
    assert!(shown.contains(
        "store 'a': url uses ${AZ_ACCOUNT}, which is not set in the environment; export it or remove the reference"
    ), "{shown}");
    assert!(
        shown.contains("[server]: token uses ${GEOREP_TOKEN}"),
        "{shown}"
    );

    // Environment text is never parsed as TOML.
    let env = env_of(&[("X", "\"\n[evil]\n")]);
    let e = Topology::parse("[server]\ntoken = \"${X}\"\n", Path::new(BASE), &env)
        .expect("a token may hold any text");
    assert_eq!(e.server.token.as_deref(), Some("\"\n[evil]\n"));
}

#[test]
fn expand_rules() {
    use super::read::{expand, ExpandError};
    let env = env_of(&[("A", "1"), ("B_2", "two")]);
    assert_eq!(expand("x${A}y${B_2}", &env), Ok("x1ytwo".to_string()));
    assert_eq!(
        expand("$${A} $A $$ $", &env),
        Ok("${A} $A $$ $".to_string())
    );
    assert_eq!(
        expand("${NOPE}${1X}${A", &env),
        Err(vec![
            ExpandError::Missing("NOPE".into()),
            ExpandError::BadName("1X".into()),
            ExpandError::Unterminated
        ])
    );
}

/// Each case adds `chunk` to the prelude; the errors must mention every `want`.
#[test]
fn each_error_class_is_reported() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "unknown region",
            "[stores.x]\nregion = \"mars\"\nurl = \"s3://xbucket\"\n",
            &["store 'x'", "region 'mars' is not declared", "[regions.mars]"],
        ),
        (
            "unknown source",
            "[[policies]]\nname = \"p\"\nsource = \"nope\"\ndestinations = [\"photos-we\"]\n",
            &["policy 'p'", "source 'nope' is not a store", "[stores.nope]"],
        ),
        (
            "unknown destination",
            "[[policies]]\nname = \"photos-dr\"\nsource = \"photos-qc\"\ndestinations = [\"photos-xx\"]\n",
            &["policy 'photos-dr': destination 'photos-xx' is not a store; declare it under [stores.photos-xx] or fix the name"],
        ),
        (
            "no destinations",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = []\n",
            &["has no destinations"],
        ),
        (
            "missing destinations",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\n",
            &["has no destinations"],
        ),
        (
            "destination is the source",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"photos-qc\"]\n",
            &["destination 'photos-qc' is also the source"],
        ),
        (
            "destination overlaps the source",
            "[stores.nested]\nregion = \"west-europe\"\nurl = \"/srv/dr/photos/sub\"\n[[policies]]\nname = \"p\"\nsource = \"photos-we\"\ndestinations = [\"nested\"]\n",
            &["destination 'nested'", "overlaps the source 'photos-we'"],
        ),
        (
            "duplicate policy names",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\ninclude = [\"a/**\"]\n[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"archive-s3\"]\n",
            &["the name 'p' is already used by the policy at line", "unique"],
        ),
        (
            "duplicate destinations",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\", \"photos-we\"]\n",
            &["destination 'photos-we' is listed twice"],
        ),
        (
            "two policies into one destination",
            "[[policies]]\nname = \"a\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\ninclude = [\"images/**\"]\n[[policies]]\nname = \"b\"\nsource = \"archive-s3\"\ndestinations = [\"photos-we\"]\n",
            &["policies 'a' (line 13) and 'b' both write into destination 'photos-we'", "include patterns with disjoint prefixes"],
        ),
        (
            "nested includes into one destination",
            "[[policies]]\nname = \"a\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\ninclude = [\"images/**\"]\n[[policies]]\nname = \"b\"\nsource = \"archive-s3\"\ndestinations = [\"photos-we\"]\ninclude = [\"images/2024/**\"]\n",
            &["policies 'a' (line ", "and 'b' both write into destination 'photos-we'"],
        ),
        (
            "overlapping destinations",
            "[stores.we-all]\nregion = \"west-europe\"\nurl = \"/srv/dr\"\n[[policies]]\nname = \"a\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\ninclude = [\"x/**\"]\n[[policies]]\nname = \"b\"\nsource = \"archive-s3\"\ndestinations = [\"we-all\"]\ninclude = [\"photos/x/**\"]\n",
            &["and 'b' both write into destinations 'photos-we' and 'we-all', which overlap"],
        ),
        (
            "cycle",
            "[[policies]]\nname = \"out\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\n[[policies]]\nname = \"back\"\nsource = \"photos-we\"\ndestinations = [\"photos-qc\"]\n",
            &["replication cycle photos-qc → photos-we → photos-qc", "'out', 'back'"],
        ),
        (
            "bad rpo",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\nrpo = \"soon\"\n",
            &["rpo: invalid duration \"soon\""],
        ),
        (
            "scan interval too short",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\nscan_interval = \"500ms\"\n",
            &["scan_interval = \"500ms\" is too short; the minimum is 1s"],
        ),
        (
            "bad since",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\nsince = \"yesterday\"\n",
            &["since 'yesterday' is not an RFC 3339 time"],
        ),
        (
            "since without offset",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\nsince = 2024-06-01T00:00:00\n",
            &["since '2024-06-01T00:00:00' is not an RFC 3339 time with a time zone"],
        ),
        (
            "bad glob",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\ninclude = [\"ok/**\", \"a[\"]\n",
            &["include: invalid glob \"a[\""],
        ),
        (
            "bad url",
            "[stores.bad]\nregion = \"west-europe\"\nurl = \"az://Photos\"\n",
            &["store 'bad': url: invalid container name 'Photos'"],
        ),
        (
            "bad max_delete",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\nmax_delete = \"lots\"\n",
            &["max_delete: invalid delete limit \"lots\""],
        ),
        (
            "bad listen",
            "[server]\nlisten = \"localhost\"\n",
            &["[server]: listen address 'localhost' is not IP:PORT"],
        ),
        (
            "bad deletes",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\ndeletes = \"mirror\"\n",
            &["deletes = \"mirror\" is not a delete mode", "\"propagate\""],
        ),
        (
            "transfers out of range",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\ntransfers = 0\n",
            &["transfers = 0 is out of range; use 1 to 256"],
        ),
        (
            "transfers too high",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\ntransfers = 1000\n",
            &["transfers = 1000 is out of range"],
        ),
        (
            "bad store name",
            "[stores.\"bad name\"]\nregion = \"west-europe\"\nurl = \"s3://xbucket\"\n",
            &["store 'bad name': invalid store name"],
        ),
        (
            "bad region name",
            "[regions.\"-r\"]\n",
            &["region '-r': invalid region name"],
        ),
        (
            "bad policy name",
            "[[policies]]\nname = \"a/b\"\nsource = \"photos-qc\"\ndestinations = [\"photos-we\"]\n",
            &["policy 'a/b': invalid policy name"],
        ),
        (
            "unknown field",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestination = [\"photos-we\"]\n",
            &["unknown field `destination` (did you mean `destinations`?)"],
        ),
        (
            "unknown section",
            "[store.x]\nregion = \"r\"\n",
            &["unknown section `store` (did you mean `stores`?)"],
        ),
        (
            "wrong type",
            "[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = \"photos-we\"\n",
            &["`destinations` must be a list of strings, not a string"],
        ),
        (
            "policies as a table",
            "[policies]\nname = \"p\"\n",
            &["[[policies]] table (double brackets)"],
        ),
        (
            "missing store fields",
            "[stores.x]\n",
            &["missing `region`", "missing `url`"],
        ),
        (
            "empty token",
            "[server]\ntoken = \"\"\n",
            &["token is empty"],
        ),
    ];
    for (name, chunk, wants) in cases {
        let text = format!("{PRELUDE}{chunk}");
        let shown = match parse(&text) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => e.to_string(),
        };
        for want in *wants {
            assert!(shown.contains(want), "{name}: want {want:?} in:\n{shown}");
        }
    }
}

#[test]
fn disjoint_includes_may_share_a_destination() {
    let text = format!(
        "{PRELUDE}{}",
        r#"
[[policies]]
name = "images"
source = "photos-qc"
destinations = ["archive-s3"]
include = ["images/**", "/thumbs/*.jpg"]
[[policies]]
name = "videos"
source = "photos-qc"
destinations = ["archive-s3"]
include = ["videos/**", "images2/**"]
"#
    );
    let t = parse(&text).expect("disjoint prefixes are accepted");
    assert_eq!(t.policies.len(), 2);
    // A chain without a loop is fine too.
    let chain = format!(
        "{PRELUDE}{}",
        r#"
[[policies]]
name = "one"
source = "photos-qc"
destinations = ["photos-we"]
[[policies]]
name = "two"
source = "photos-we"
destinations = ["archive-s3"]
"#
    );
    parse(&chain).expect("a chain is not a cycle");
}

#[test]
fn cycles_through_overlapping_stores() {
    let text = format!(
        "{PRELUDE}{}",
        r#"
[stores.dr-root]
region = "west-europe"
url = "/srv/dr"
[[policies]]
name = "out"
source = "photos-qc"
destinations = ["photos-we"]
[[policies]]
name = "back"
source = "dr-root"
destinations = ["photos-qc"]
"#
    );
    let shown = errors(&text).to_string();
    assert!(
        shown.contains("replication cycle photos-qc → photos-we (same location as 'dr-root') → photos-qc (policies 'out', 'back')"),
        "{shown}"
    );
}

#[test]
fn all_errors_are_reported_at_once() {
    let text = r#"
[regions.r]
[stores.a]
region = "r"
url = "s3://abucket"
colour = "blue"

[stores.b]
region = "nowhere"
url = "s3://bbucket"

[[policies]]
name = "p"
source = "a"
destinations = ["zz"]
rpo = "fast"
transfers = 0
retries = 3
"#;
    let e = errors(text);
    let shown = e.render("georep.toml");
    let want = [
        "georep.toml:6:1: store 'a': unknown field `colour`",
        "georep.toml:9:10: store 'b': region 'nowhere' is not declared",
        "georep.toml:15:17: policy 'p': destination 'zz' is not a store",
        "georep.toml:16:7: policy 'p': rpo: invalid duration \"fast\"",
        "georep.toml:17:13: policy 'p': transfers = 0 is out of range",
        "georep.toml:18:1: policy 'p': unknown field `retries`",
    ];
    assert_eq!(e.0.len(), want.len(), "{shown}");
    for (line, w) in shown.lines().zip(want) {
        assert!(line.starts_with(w), "want {w:?}, got {line:?}");
    }
}

#[test]
fn syntax_error_has_line_and_column() {
    let e = errors("[server]\nlisten = \n");
    assert_eq!(e.0.len(), 1);
    let err = &e.0[0];
    assert_eq!((err.line, err.column), (Some(2), Some(10)), "{err:?}");
    assert_eq!(err.what, "invalid TOML");
    assert!(
        e.render("g.toml")
            .starts_with("g.toml:2:10: invalid TOML: "),
        "{e}"
    );

    let dup = errors("[regions.a]\n[regions.a]\n");
    assert_eq!(dup.0[0].line, Some(2), "{dup}");
    assert!(dup.to_string().contains("duplicate"), "{dup}");
}

#[test]
fn render_without_place() {
    let e = ConfigErrors(vec![
        ConfigError {
            line: None,
            column: None,
            what: "policy 'p'".into(),
            message: "m".into(),
        },
        ConfigError {
            line: Some(3),
            column: Some(4),
            what: "store 's'".into(),
            message: "n".into(),
        },
    ]);
    assert_eq!(
        e.render("f.toml"),
        "f.toml: policy 'p': m\nf.toml:3:4: store 's': n"
    );
    assert_eq!(e.to_string(), "policy 'p': m\n3:4: store 's': n");
}

#[test]
fn line_columns_count_characters() {
    use super::error::line_column;
    assert_eq!(line_column("ab\ncd", 0), (1, 1));
    assert_eq!(line_column("ab\ncd", 3), (2, 1));
    assert_eq!(line_column("é = x", 3), (1, 3));
    assert_eq!(line_column("ab", 99), (1, 3));
}

#[test]
fn serializes_without_secrets() {
    let text = FULL
        .replace(
            "source = \"photos-we\"\ndestinations = [\"photos-qc\"]",
            "source = \"photos-qc\"\ndestinations = [\"photos-we\"]",
        )
        .replace("sqlite://./state/georep.db", "postgres://u:hunter2@db/g");
    let t = Topology::parse(
        &text,
        Path::new(BASE),
        &env_of(&[("GEOREP_TOKEN", "s3cret")]),
    )
    .expect("valid");
    let json = serde_json::to_value(&t).expect("serializes");
    let shown = json.to_string();
    assert!(
        !shown.contains("s3cret") && !shown.contains("hunter2"),
        "{shown}"
    );
    let p = &json["policies"][0];
    assert_eq!(p["rpo"], "5m");
    assert_eq!(p["scan_interval"], "1m");
    assert_eq!(p["max_delete"], "5%");
    assert_eq!(p["deletes"], "propagate");
    assert_eq!(p["since"], "2024-06-01T00:00:00Z");
    assert_eq!(json["stores"]["photos-we"]["url"], "/etc/georep/dr/photos");
    assert_eq!(json["state"]["url"], "postgres://u:***@db/g");
}

#[test]
fn store_credentials_in_the_host_part_are_refused_without_echo() {
    let text = PRELUDE.replace("s3://archive/photos", "s3://AKIAMARK:S3CR3T@archive/photos");
    let shown = refused(
        "s3 userinfo",
        &text,
        &[
            "url: store URL 's3://archive/photos' carries credentials",
            "AWS_SECRET_ACCESS_KEY",
        ],
    );
    assert!(
        !shown.contains("S3CR3T") && !shown.contains("AKIAMARK"),
        "{shown}"
    );
}

#[test]
fn the_webhook_token_is_its_own_secret() {
    let text = |events: &str| {
        format!("[server]\ntoken = \"${{GEOREP_TOKEN}}\"\nevents_token = \"{events}\"\n")
    };
    let env = env_of(&[("GEOREP_TOKEN", "s3cret"), ("EV", "ev3nts")]);
    let t = Topology::parse(&text("${EV}"), Path::new(BASE), &env).expect("valid");
    assert_eq!(t.server.events_token.as_deref(), Some("ev3nts"));
    let e = Topology::parse(&text("${GEOREP_TOKEN}"), Path::new(BASE), &env)
        .expect_err("same as token")
        .to_string();
    assert!(
        e.contains("events_token equals token") && !e.contains("s3cret"),
        "{e}"
    );
}
