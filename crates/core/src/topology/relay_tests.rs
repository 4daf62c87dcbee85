//! `[[relays]]`: the model, defaults, every error class.

use std::path::Path;
use std::time::Duration;

use super::tests::refused;
use super::*;

const REGIONS: &str = r#"
[regions.qatar-central]
[regions.west-europe]

[stores.dead-we]
region = "west-europe"
url = "s3://dead"
"#;

fn env(k: &str) -> Option<String> {
    match k {
        "RELAY_KEY" => Some("publisher-s3cret".into()),
        "EG_QC" => Some("eg-key-qc".into()),
        "EG_WE" => Some("eg-key-we".into()),
        _ => None,
    }
}

fn parse_env(text: &str) -> Result<Topology, ConfigErrors> {
    Topology::parse(text, Path::new("/etc/georep"), &env)
}

#[test]
fn a_relay_parses_with_defaults_and_never_shows_its_keys() {
    let t = parse_env(&format!(
        r#"{REGIONS}
[[relays]]
name = "orders-events"
listen = "127.0.0.1:7443"
accept = "eventgrid"
key = "${{RELAY_KEY}}"
mode = "failover"
dead_letters = "dead-we"
targets = [
  {{ name = "qc", region = "qatar-central", kind = "eventgrid", url = "https://orders-qc.qatarcentral-1.eventgrid.azure.net/api/events", key = "${{EG_QC}}" }},
  {{ name = "we", region = "west-europe", kind = "webhook", url = "https://hooks.example/events", health = "https://hooks.example/healthz", timeout = "2s" }},
]
"#
    ))
    .expect("a relay parses");
    let r = t.relay("orders-events").expect("relay");
    assert_eq!(r.listen, "127.0.0.1:7443".parse().expect("addr"));
    assert_eq!((r.accept, r.mode), (Accept::EventGrid, RelayMode::Failover));
    assert_eq!(r.key, "publisher-s3cret");
    assert_eq!(r.targets.len(), 2);
    assert_eq!(r.targets[0].key.as_deref(), Some("eg-key-qc"));
    assert_eq!(r.targets[1].kind, TargetKind::Webhook);
    assert_eq!(r.targets[1].timeout, Duration::from_secs(2));
    assert_eq!(r.targets[0].timeout, Relay::DEFAULT_TIMEOUT);
    assert_eq!(r.failover_after, Relay::DEFAULT_FAILOVER_AFTER);
    assert_eq!(r.failback_after, Relay::DEFAULT_FAILBACK_AFTER);
    assert_eq!(r.max_outbox, Relay::DEFAULT_MAX_OUTBOX);
    assert_eq!(r.dead_letters.as_deref(), Some("dead-we"));
    let shown = format!("{t:?} {}", serde_json::to_string(&t).expect("json"));
    for secret in ["publisher-s3cret", "eg-key-qc"] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
    }
}

#[test]
fn every_bad_relay_field_is_reported_with_its_fix() {
    let text = refused(
        "bad relays",
        &format!(
            r#"{REGIONS}
[server]
listen = "127.0.0.1:7607"

[[relays]]
name = "a"
listen = "127.0.0.1:7607"
accept = "kafka"
key = "plain-text-key"
mode = "failover"
batch = 0
max_outbox = "10KiB"
failover_after = 0
dead_letters = "nowhere"
speed = 1
targets = [
  {{ name = "x", region = "mars", kind = "eventgrid", url = "ftp://u:p@host/x" }},
  {{ name = "x", region = "west-europe", kind = "sqs", url = "https://h/x" }},
]

[[relays]]
name = "a"
listen = "127.0.0.1:7443"
accept = "eventgrid"
key = "${{RELAY_KEY}}"
mode = "failover"
targets = [{{ name = "only", region = "west-europe", kind = "webhook", url = "https://user:pw@h/x" }}]

[[relays]]
name = "b"
listen = "127.0.0.1:7443"
mode = "both"
"#
        ),
        &[
            "accept \"kafka\" is not one georep knows; write accept = \"eventgrid\"",
            "the key is written in the file; write key = \"${NAME}\"",
            "batch must be between 1 and 5000",
            "max_outbox is smaller than 1MiB",
            "failover_after must be between 1 and 100",
            "dead_letters 'nowhere' is not a store",
            "unknown field `speed`",
            "region 'mars' is not declared",
            "url is not an http:// or https:// URL (it starts with 'ftp://')",
            "missing `key`; an Event Grid topic takes events only with its access key",
            "kind \"sqs\" is not one georep knows",
            "the target name 'x' is used twice",
            "the name 'a' is already used by the relay at line",
            "listen 127.0.0.1:7607 clashes with the API's [server] listen address",
            "mode = \"failover\" needs at least two targets",
            "url holds credentials; put the key or token in `key",
            "listen 127.0.0.1:7443 clashes with the listen address of relay 'a'",
            "mode \"both\" is not one georep knows",
            "missing `targets`",
            "missing `accept`",
            "missing `key`; add key = \"${NAME}\"",
            // Without the environment (no_env), a ${NAME} names the variable to export.
            "key uses ${RELAY_KEY}, which is not set in the environment",
        ],
    );
    assert!(
        !text.contains("u:p@") && !text.contains("user:pw"),
        "{text}"
    );
}

#[test]
fn log_relays_and_every_target_kind_parse_and_each_misuse_is_reported() {
    let t = parse_env(&format!(
        r#"{REGIONS}
[[relays]]
name = "app-logs"
listen = "127.0.0.1:7444"
accept = "loki"
key = "${{RELAY_KEY}}"
mode = "replicate"
targets = [
  {{ name = "law", region = "qatar-central", kind = "logs", url = "https://dce.qatarcentral-1.ingest.monitor.azure.com/dataCollectionRules/dcr-1/streams/Custom-App_CL", key = "${{EG_QC}}" }},
  {{ name = "loki", region = "west-europe", kind = "loki", url = "http://loki:3100/loki/api/v1/push" }},
  {{ name = "es", region = "west-europe", kind = "elasticsearch", url = "http://es:9200/logs" }},
  {{ name = "nats", region = "west-europe", kind = "nats", url = "nats://10.0.0.5:4222", subject = "logs.app" }},
  {{ name = "keep", region = "west-europe", kind = "archive", store = "dead-we" }},
]

[[relays]]
name = "orders"
listen = "127.0.0.1:7445"
accept = "eventgrid"
key = "${{RELAY_KEY}}"
mode = "failover"
targets = [
  {{ name = "eb", region = "qatar-central", kind = "eventbridge", url = "https://events.me-central-1.amazonaws.com", bus = "orders" }},
  {{ name = "moto", region = "west-europe", kind = "eventbridge", url = "http://127.0.0.1:5000", aws_region = "eu-west-1" }},
]
"#
    ))
    .expect("log relays parse");
    let r = t.relay("app-logs").expect("relay");
    assert_eq!(r.accept, Accept::Loki);
    let kinds: Vec<&str> = r.targets.iter().map(|t| t.kind.as_str()).collect();
    assert_eq!(kinds, ["logs", "loki", "elasticsearch", "nats", "archive"]);
    assert_eq!(r.targets[3].subject.as_deref(), Some("logs.app"));
    assert_eq!(r.targets[4].store.as_deref(), Some("dead-we"));
    let o = t.relay("orders").expect("relay");
    assert_eq!(o.targets[0].aws_region.as_deref(), Some("me-central-1"));
    assert_eq!(o.targets[0].bus.as_deref(), Some("orders"));
    assert_eq!(o.targets[1].aws_region.as_deref(), Some("eu-west-1"));

    refused(
        "misused targets",
        &format!(
            r#"{REGIONS}
[[relays]]
name = "l"
listen = "127.0.0.1:7446"
accept = "elasticsearch"
key = "${{RELAY_KEY}}"
mode = "replicate"
targets = [
  {{ name = "eg", region = "qatar-central", kind = "eventgrid", url = "https://t/api/events", key = "${{EG_QC}}" }},
  {{ name = "law", region = "qatar-central", kind = "logs", url = "https://dce/wrong" }},
  {{ name = "loki", region = "west-europe", kind = "loki", url = "http://loki:3100/", subject = "x" }},
  {{ name = "n", region = "west-europe", kind = "nats", url = "http://nats:4222" }},
  {{ name = "n2", region = "west-europe", kind = "nats", url = "nats://h:4222", subject = "logs.>" }},
  {{ name = "a", region = "west-europe", kind = "archive", url = "http://x", store = "nowhere" }},
  {{ name = "eb", region = "west-europe", kind = "eventbridge", url = "http://127.0.0.1:5000", key = "${{EG_WE}}" }},
]
"#
        ),
        &[
        "a target of kind \"eventgrid\" cannot take what accept = \"elasticsearch\" brings (log records)",
        "the url's path '/wrong' is not a logs endpoint",
        "the url's path '/' is not a loki endpoint",
        "`subject` applies only to kind = \"nats\"",
        "url is not a nats:// or tls:// URL",
        "missing `subject`",
        "subject 'logs.>' is not a NATS subject",
        "an archive target writes to a store: remove `url`",
        "store 'nowhere' is not declared",
        "a target of kind \"eventbridge\" cannot take what accept",
        "signs with the AWS_ACCESS_KEY_ID",
        "the AWS region cannot be read from the url",
        ],
    );
    refused(
        "an index-less elasticsearch target for Loki records",
        &format!(
            r#"{REGIONS}
[[relays]]
name = "l"
listen = "127.0.0.1:7447"
accept = "loki"
key = "${{RELAY_KEY}}"
mode = "replicate"
targets = [{{ name = "es", region = "west-europe", kind = "elasticsearch", url = "http://es:9200/" }}]
"#
        ),
        &["an elasticsearch url names the index records go to"],
    );
}
