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

#[test]
fn scheduled_policies_sync_at_ticks_with_an_rpo_of_at_least_the_interval() {
    let t = parse_env(&format!(
        "{STORES}\n[[policies]]\nname = \"nightly\"\nsource = \"photos-qc\"\ndestinations = [\"points-we\"]\ninclude = [\"a/**\"]\nschedule = \"0 2 * * *\"\n\n[[policies]]\nname = \"tenmin\"\nsource = \"near-qc\"\ndestinations = [\"points-we\"]\ninclude = [\"b/**\"]\nevery = \"10m\"\nrpo = \"30m\"\n"
    ))
    .expect("scheduled policies parse");
    let nightly = t.policy("nightly").expect("nightly");
    assert_eq!(nightly.schedule, Some(Schedule::Cron("0 2 * * *".into())));
    assert_eq!(
        nightly.rpo,
        Duration::from_secs(2 * 86_400),
        "default: two intervals"
    );
    let tenmin = t.policy("tenmin").expect("tenmin");
    assert_eq!(
        tenmin.schedule,
        Some(Schedule::Every(Duration::from_secs(600)))
    );
    assert_eq!(tenmin.rpo, Duration::from_secs(1800));
    refused(
        "rpo under the interval",
        &format!("{STORES}\n[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"points-we\"]\nevery = \"1h\"\nrpo = \"15m\"\n"),
        &["shorter than the schedule's interval"],
    );
    refused(
        "scan_interval with a schedule",
        &format!("{STORES}\n[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"points-we\"]\nevery = \"1h\"\nscan_interval = \"5m\"\n"),
        &["does not apply to a scheduled policy"],
    );
    refused(
        "both",
        &format!("{STORES}\n[[policies]]\nname = \"p\"\nsource = \"photos-qc\"\ndestinations = [\"points-we\"]\nevery = \"1h\"\nschedule = \"0 * * * *\"\n"),
        &["both `every` and `schedule` are set"],
    );
}

#[test]
fn debug_output_never_shows_the_password_and_spans_are_bounded() {
    let t = parse_env(&format!(
        "{STORES}\n[[backups]]\nname = \"b\"\nsource = \"photos-qc\"\nrepository = \"points-we\"\npassword = \"${{PW}}\"\nevery = \"5m\"\n"
    ))
    .expect("parses");
    let shown = format!("{t:?}");
    assert!(
        shown.contains("Backup") && !shown.contains("s3cret"),
        "{shown}"
    );
    assert!(CalendarSpan::parse("20000y").is_err());
    assert!(CalendarSpan::parse("100y").is_ok());
}
