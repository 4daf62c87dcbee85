//! `[[backups]]`: the model, defaults, every error class.

use std::path::Path;
use std::time::Duration;

use super::tests::refused;
use super::*;
use crate::Schedule;

const STORES: &str = r#"
[regions.qatar-central]
[regions.west-europe]

[stores.photos-qc]
region = "qatar-central"
url = "az://photos"

[stores.points-we]
region = "west-europe"
url = "s3://points"

[stores.near-qc]
region = "qatar-central"
url = "az://near"
"#;

fn env(k: &str) -> Option<String> {
    (k == "PW").then(|| "s3cret".to_string())
}

fn parse_env(text: &str) -> Result<Topology, ConfigErrors> {
    Topology::parse(text, Path::new("/etc/georep"), &env)
}

#[test]
fn a_backup_parses_into_the_model_and_never_shows_its_password() {
    let t = parse_env(&format!(
        r#"{STORES}
[[backups]]
name = "photos-points"
source = "photos-qc"
repository = "points-we"
password = "${{PW}}"
every = "5m"
exclude = ["**/*.tmp"]
retention = {{ within = "2h", hourly = "24h", daily = "15d", weekly = "12w", monthly = "12m", yearly = "3y" }}
append_only = true

[[backups]]
name = "nightly"
source = "photos-qc"
repository = "points-we"
password = "${{PW}}"
schedule = "0 3 * * *"
"#
    ))
    .expect("valid");
    let b = t.backup("photos-points").expect("backup");
    assert_eq!(
        (b.source.as_str(), b.repository.as_str()),
        ("photos-qc", "points-we")
    );
    assert_eq!(b.password, "s3cret");
    assert_eq!(b.schedule, Schedule::Every(Duration::from_secs(300)));
    assert!(b.append_only);
    assert!(!b.filter.matches("a/b.tmp") && b.filter.matches("a/b.jpg"));
    assert_eq!(b.retention.monthly.map(|s| s.months), Some(12));
    assert_eq!(b.retention.weekly.map(|s| s.weeks), Some(12));
    assert_eq!(
        t.backup("nightly").map(|b| b.schedule.clone()),
        Some(Schedule::Cron("0 3 * * *".into()))
    );
    assert_eq!(
        t.backup("nightly").map(|b| b.retention),
        Some(Retention::default())
    );
    let json = serde_json::to_string(&t).expect("json");
    assert!(!json.contains("s3cret"), "{json}");
    assert!(json.contains(r#""monthly":"12m""#), "{json}");
}

#[test]
fn every_error_is_reported_with_its_fix() {
    let shown = refused(
        "many",
        &format!(
            r#"{STORES}
[[backups]]
name = "a"
source = "photos-qc"
repository = "near-qc"
password = "literal"
every = "10s"
retention = {{ hourly = "24x", fortnightly = "2w" }}
colour = "blue"

[[backups]]
name = "a"
source = "nowhere"
repository = "photos-qc"
every = "5m"
schedule = "0 * * * *"

[[backups]]
name = "c"
source = "photos-qc"
repository = "photos-qc"
password = "${{NOT_SET}}"
schedule = "0 25 * * *"
"#
        ),
        &[
            "repository 'near-qc' is in region 'qatar-central', like the source",
            "the password is written in the file",
            "every = \"10s\" is shorter than the shortest interval, 1m",
            "hourly: '24x' has the unit 'x'",
            "unknown band `fortnightly`",
            "unknown field `colour`",
            "the name 'a' is already used by the backup",
            "source 'nowhere' is not a store",
            "missing `password`",
            "both `every` and `schedule` are set",
            "the repository is the source itself",
            "${NOT_SET}, which is not set in the environment",
            "schedule: '25': the hour must be * or numbers from 0 to 23",
        ],
    );
    assert!(
        !shown.contains("literal"),
        "a password is never shown: {shown}"
    );
    refused(
        "no schedule",
        &format!(
            "{STORES}[[backups]]\nname = \"b\"\nsource = \"photos-qc\"\nrepository = \"points-we\"\npassword = \"${{PW}}\"\n"
        ),
        &["missing `every` or `schedule`"],
    );
}
