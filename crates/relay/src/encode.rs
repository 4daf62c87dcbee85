//! What a batch looks like to each kind of target. Events go out as published; log
//! records go to a log target of another kind mapped field by field (documented in
//! docs/config.md): a Loki line becomes `TimeGenerated`/`RawData`/`Labels` for Azure
//! Monitor and `@timestamp`/`message`/`labels` for Elasticsearch; a record or document
//! becomes a Loki line (its JSON) under the labels `relay` and `stream` or `index`.

use std::io::Write;

use serde_json::{Map, Value};

use crate::events::{self, CLOUDEVENTS, EVENTGRID};
use crate::logs::{ES, ES_CREATE, LOKI, MONITOR};
use crate::outbox::Stored;

/// The id a receiver drops duplicates by: the publisher's, else one of the relay's own
/// that a redelivery repeats: `ids` (`RELAY-INSTANCE`, the instance drawn when the
/// outbox file was made, so a remade outbox never repeats an earlier one's ids) and the
/// record's place in the outbox.
pub(crate) fn id_of(ids: &str, e: &Stored) -> String {
    if e.id.is_empty() {
        format!("{ids}-{}", e.seq)
    } else {
        e.id.clone()
    }
}

/// A NATS message id: [`id_of`], qualified by the partition where the publisher's ids
/// are unique only within it (CloudEvents: per source; Elasticsearch: per index).
pub(crate) fn msg_id(ids: &str, e: &Stored) -> String {
    if !e.id.is_empty() && (e.schema == CLOUDEVENTS || is_es(&e.schema)) {
        format!("{}/{}", e.partition, e.id)
    } else {
        id_of(ids, e)
    }
}

/// Whether `schema` is an Elasticsearch document (`index` or `create`).
pub(crate) fn is_es(schema: &str) -> bool {
    schema == ES || schema == ES_CREATE
}

/// One stored event on one line: raw newlines can only be whitespace between JSON
/// tokens (a string holds them escaped), so they become spaces.
pub(crate) fn one_line(body: &[u8]) -> Vec<u8> {
    body.iter()
        .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
        .collect()
}

fn object(e: &Stored) -> Map<String, Value> {
    serde_json::from_slice(&e.body).unwrap_or_default()
}

/// A time with at most 7 fractional digits (Azure Monitor keeps 100 ns ticks).
fn rfc3339_ns(ns: i128) -> String {
    let secs = ns.div_euclid(1_000_000_000) as i64;
    let nanos = (ns.rem_euclid(1_000_000_000) / 100 * 100) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

fn parse_time_ns(v: Option<&Value>) -> Option<i128> {
    let t = chrono::DateTime::parse_from_rfc3339(v?.as_str()?).ok()?;
    t.timestamp_nanos_opt().map(i128::from)
}

/// A Loki entry: labels, nanoseconds, line (and metadata).
struct Entry {
    labels: Map<String, Value>,
    ns: i128,
    line: String,
    meta: Option<Value>,
}

fn loki_entry(relay: &str, e: &Stored) -> Entry {
    let accepted = i128::from(e.accepted_ms) * 1_000_000;
    if e.schema == LOKI {
        let mut o = object(e);
        let labels = match o.remove("stream") {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let value = o
            .remove("values")
            .and_then(|v| v.as_array().and_then(|a| a.first().cloned()))
            .unwrap_or(Value::Null);
        return Entry {
            labels,
            ns: value[0]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(accepted),
            line: value[1].as_str().unwrap_or_default().to_string(),
            meta: value.get(2).cloned(),
        };
    }
    let o = object(e);
    let (label, time) = if is_es(&e.schema) {
        ("index", "@timestamp")
    } else {
        ("stream", "TimeGenerated")
    };
    let mut labels = Map::new();
    labels.insert("relay".into(), relay.into());
    labels.insert(label.into(), e.partition.clone().into());
    Entry {
        labels,
        ns: parse_time_ns(o.get(time)).unwrap_or(accepted),
        line: String::from_utf8_lossy(&one_line(&e.body)).into_owned(),
        meta: None,
    }
}

/// A record for Azure Monitor (`TimeGenerated` added when it lacks one).
fn monitor_record(relay: &str, e: &Stored) -> Value {
    if e.schema == LOKI {
        let en = loki_entry(relay, e);
        let mut m = Map::new();
        m.insert("TimeGenerated".into(), rfc3339_ns(en.ns).into());
        m.insert("RawData".into(), en.line.into());
        m.insert("Labels".into(), Value::Object(en.labels));
        if let Some(meta) = en.meta {
            m.insert("Metadata".into(), meta);
        }
        return Value::Object(m);
    }
    let mut o = object(e);
    if !o.contains_key("TimeGenerated") {
        let ns =
            parse_time_ns(o.get("@timestamp")).unwrap_or(i128::from(e.accepted_ms) * 1_000_000);
        o.insert("TimeGenerated".into(), rfc3339_ns(ns).into());
    }
    Value::Object(o)
}

/// A document for Elasticsearch (`@timestamp` added when it lacks one).
fn es_doc(relay: &str, e: &Stored) -> Vec<u8> {
    if is_es(&e.schema) {
        return one_line(&e.body);
    }
    let v = if e.schema == LOKI {
        let en = loki_entry(relay, e);
        let mut m = Map::new();
        m.insert("@timestamp".into(), rfc3339_ns(en.ns).into());
        m.insert("message".into(), en.line.into());
        m.insert("labels".into(), Value::Object(en.labels));
        Value::Object(m)
    } else {
        let mut o = object(e);
        if !o.contains_key("@timestamp") {
            let ns = parse_time_ns(o.get("TimeGenerated"))
                .unwrap_or(i128::from(e.accepted_ms) * 1_000_000);
            o.insert("@timestamp".into(), rfc3339_ns(ns).into());
        }
        Value::Object(o)
    };
    v.to_string().into_bytes()
}

/// The events as one JSON array of their bodies.
fn array(batch: &[Stored]) -> Vec<u8> {
    let bodies: Vec<&[u8]> = batch.iter().map(|e| e.body.as_slice()).collect();
    events::batch(EVENTGRID, &bodies).0
}

/// Event Grid and webhooks: the events as published (a CloudEvents batch, or an Event
/// Grid array); log records as a JSON array.
pub(crate) fn events_body(batch: &[Stored]) -> (Vec<u8>, &'static str) {
    let schema = batch.first().map_or(EVENTGRID, |e| e.schema.as_str());
    if schema == EVENTGRID || schema == CLOUDEVENTS {
        let bodies: Vec<&[u8]> = batch.iter().map(|e| e.body.as_slice()).collect();
        events::batch(schema, &bodies)
    } else {
        (array(batch), "application/json")
    }
}

/// One event as a CloudEvents binary-mode request: its attributes as `ce-` headers
/// (percent-encoded as the HTTP binding says), its data as the body. Event Grid events
/// map as Event Grid maps them (`id`, `eventType` to `type`, `subject`, `eventTime` to
/// `time`, `topic` or `/relays/RELAY` to `source`); log records become
/// `georep.log` events from `/relays/RELAY/PARTITION`, the record as the data.
pub(crate) struct Binary {
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) content_type: String,
    pub(crate) body: Vec<u8>,
}

pub(crate) fn binary(relay: &str, ids: &str, e: &Stored) -> Binary {
    use base64::Engine as _;
    let mut o = object(e);
    let mut attrs: Vec<(String, String)> = Vec::new();
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let (data, ct) = if e.schema == CLOUDEVENTS {
        let ct = o
            .remove("datacontenttype")
            .map(|v| text(&v))
            .unwrap_or_else(|| "application/json".into());
        let data = match (o.remove("data_base64"), o.remove("data")) {
            (Some(Value::String(b64)), _) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .unwrap_or_default(),
            (_, Some(Value::String(s))) if !ct.contains("json") => s.into_bytes(),
            (_, Some(v)) => v.to_string().into_bytes(),
            (_, None) => Vec::new(),
        };
        for (k, v) in &o {
            attrs.push((k.clone(), text(v)));
        }
        (data, ct)
    } else if e.schema == EVENTGRID {
        let get = |k: &str| o.get(k).map(text);
        attrs.push(("specversion".into(), "1.0".into()));
        attrs.push(("id".into(), get("id").unwrap_or_default()));
        attrs.push((
            "source".into(),
            get("topic").unwrap_or_else(|| format!("/relays/{relay}")),
        ));
        attrs.push(("type".into(), get("eventType").unwrap_or_default()));
        for (from, to) in [
            ("subject", "subject"),
            ("eventTime", "time"),
            ("dataVersion", "dataversion"),
        ] {
            if let Some(v) = get(from) {
                attrs.push((to.into(), v));
            }
        }
        let data = o.get("data").map(|v| v.to_string()).unwrap_or_default();
        (data.into_bytes(), "application/json".into())
    } else {
        attrs.push(("specversion".into(), "1.0".into()));
        attrs.push(("id".into(), id_of(ids, e)));
        attrs.push(("source".into(), format!("/relays/{relay}/{}", e.partition)));
        attrs.push(("type".into(), "georep.log".into()));
        (one_line(&e.body), "application/json".into())
    };
    // Printable ASCII but '%' goes as is; the rest percent-encoded, as UTF-8.
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%').add(b'"');
    let headers = attrs
        .into_iter()
        .filter(|(k, _)| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(|(k, v)| {
            (
                format!("ce-{}", k.to_ascii_lowercase()),
                percent_encoding::utf8_percent_encode(&v, KEEP).to_string(),
            )
        })
        .collect();
    Binary {
        headers,
        content_type: ct,
        body: data,
    }
}

/// The Logs Ingestion API: a JSON array of records.
pub(crate) fn monitor_body(relay: &str, batch: &[Stored]) -> Vec<u8> {
    if batch.iter().all(|e| e.schema == MONITOR) {
        return array(batch);
    }
    let v: Vec<Value> = batch.iter().map(|e| monitor_record(relay, e)).collect();
    Value::Array(v).to_string().into_bytes()
}

/// Loki's push API: entries grouped by label set, in order within each.
pub(crate) fn loki_body(relay: &str, batch: &[Stored]) -> Vec<u8> {
    let mut streams: Vec<(Map<String, Value>, Vec<Value>)> = Vec::new();
    for e in batch {
        let en = loki_entry(relay, e);
        let mut value = vec![Value::from(en.ns.to_string()), Value::from(en.line)];
        if let Some(meta) = en.meta {
            value.push(meta);
        }
        match streams.iter_mut().find(|(l, _)| *l == en.labels) {
            Some((_, values)) => values.push(Value::Array(value)),
            None => streams.push((en.labels, vec![Value::Array(value)])),
        }
    }
    let streams: Vec<Value> = streams
        .into_iter()
        .map(|(l, v)| serde_json::json!({"stream": l, "values": v}))
        .collect();
    serde_json::json!({ "streams": streams })
        .to_string()
        .into_bytes()
}

/// Elasticsearch's bulk API, every record with an id so a redelivery stores nothing
/// twice: a document sent with `index` and its own `_id` is indexed again (it may be a
/// new version); every other record is a `create` (a redelivered one answers 409,
/// already there). Documents keep their index; others go to the URL's.
pub(crate) fn bulk_body(relay: &str, ids: &str, batch: &[Stored]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in batch {
        let mut meta = Map::new();
        if is_es(&e.schema) && !e.partition.is_empty() {
            meta.insert("_index".into(), e.partition.clone().into());
        }
        meta.insert("_id".into(), id_of(ids, e).into());
        let verb = if e.schema == ES && !e.id.is_empty() {
            "index"
        } else {
            "create"
        };
        let mut action = Map::new();
        action.insert(verb.into(), Value::Object(meta));
        out.extend_from_slice(Value::Object(action).to_string().as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&es_doc(relay, e));
        out.push(b'\n');
    }
    out
}

/// EventBridge `PutEvents` entries: `Source` from the CloudEvents `source` (else
/// `georep.RELAY`), `DetailType` from the type, `Detail` the whole event as published
/// (its id included), `Time` from its time.
pub(crate) fn eventbridge_body(relay: &str, bus: &str, batch: &[Stored]) -> Vec<u8> {
    let entries: Vec<Value> = batch
        .iter()
        .map(|e| {
            let o = object(e);
            let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
            let source = text("source")
                .filter(|s| !s.starts_with("aws."))
                .unwrap_or_else(|| format!("georep.{relay}"));
            let kind = text("type")
                .or_else(|| text("eventType"))
                .unwrap_or_else(|| "georep.event".into());
            let mut m = Map::new();
            m.insert("Source".into(), source.into());
            m.insert("DetailType".into(), kind.into());
            m.insert(
                "Detail".into(),
                String::from_utf8_lossy(&one_line(&e.body))
                    .into_owned()
                    .into(),
            );
            m.insert("EventBusName".into(), bus.into());
            let t = o.get("time").or_else(|| o.get("eventTime"));
            if let Some(ns) = parse_time_ns(t) {
                m.insert("Time".into(), ((ns / 1_000_000) as f64 / 1000.0).into());
            }
            Value::Object(m)
        })
        .collect();
    serde_json::json!({ "Entries": entries })
        .to_string()
        .into_bytes()
}

/// An archive object: the events, one per line, gzip-compressed.
pub(crate) fn archive_body(batch: &[Stored]) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for e in batch {
        gz.write_all(&one_line(&e.body))?;
        gz.write_all(b"\n")?;
    }
    gz.finish()
}

/// Where an archive object goes: by the first event's acceptance hour, named by the
/// outbox place of its first record, so a batch sent again (grown by events that came
/// meanwhile) overwrites the object instead of adding one that repeats it.
pub(crate) fn archive_key(relay: &str, target: &str, batch: &[Stored]) -> String {
    let first = batch.first().map_or(0, |e| e.seq);
    let hour = chrono::DateTime::from_timestamp_millis(batch.first().map_or(0, |e| e.accepted_ms))
        .map(|t| t.format("%Y/%m/%d/%H").to_string())
        .unwrap_or_default();
    format!("relays/{relay}/{target}/{hour}/{first:020}.ndjson.gz")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: i64, schema: &str, partition: &str, id: &str, body: &str) -> Stored {
        Stored {
            seq,
            schema: schema.into(),
            partition: partition.into(),
            id: id.into(),
            body: body.as_bytes().to_vec(),
            accepted_ms: 1_764_669_600_000,
        }
    }

    #[test]
    fn log_records_map_between_the_three_apis() {
        let loki = stored(
            1,
            LOKI,
            r#"{"job":"api"}"#,
            "",
            r#"{"stream":{"job":"api"},"values":[["1764669600000000001","hello"]]}"#,
        );
        let mon = stored(
            2,
            MONITOR,
            "dcr/Custom-T_CL",
            "",
            r#"{"TimeGenerated":"2026-12-02T10:00:00Z","Msg":"m"}"#,
        );
        let es = stored(3, ES, "logs", "d1", "{\"message\":\n\"e\"}");

        let m: Value =
            serde_json::from_slice(&monitor_body("r", std::slice::from_ref(&loki))).expect("json");
        assert_eq!(m[0]["RawData"], "hello");
        assert_eq!(m[0]["Labels"]["job"], "api");
        assert_eq!(m[0]["TimeGenerated"], "2025-12-02T10:00:00Z");
        let m: Value =
            serde_json::from_slice(&monitor_body("r", std::slice::from_ref(&es))).expect("json");
        assert_eq!(m[0]["TimeGenerated"], "2025-12-02T10:00:00Z");
        assert_eq!(
            monitor_body("r", std::slice::from_ref(&mon)),
            format!("[{}]", String::from_utf8_lossy(&mon.body)).into_bytes()
        );

        let l: Value =
            serde_json::from_slice(&loki_body("r", &[loki.clone(), mon.clone(), loki.clone()]))
                .expect("json");
        assert_eq!(l["streams"][0]["values"].as_array().map(Vec::len), Some(2));
        assert_eq!(l["streams"][1]["stream"]["stream"], "dcr/Custom-T_CL");
        assert_eq!(l["streams"][1]["values"][0][0], "1796205600000000000");

        let created = stored(4, ES_CREATE, "logs", "d2", "{}");
        let b = String::from_utf8(bulk_body("r", "r-0a", &[es, mon, created])).expect("utf8");
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[0], r#"{"index":{"_id":"d1","_index":"logs"}}"#);
        assert_eq!(lines[4], r#"{"create":{"_id":"d2","_index":"logs"}}"#);
        assert_eq!(lines[1], "{\"message\": \"e\"}");
        assert_eq!(lines[2], r#"{"create":{"_id":"r-0a-2"}}"#);
        assert!(
            lines[3].contains("\"@timestamp\":\"2026-12-02T10:00:00Z\""),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn events_map_to_cloudevents_binary_mode() {
        let ce = stored(
            1,
            CLOUDEVENTS,
            "/orders",
            "a",
            r#"{"specversion":"1.0","id":"a","source":"/orders","type":"created","subject":"café 7","datacontenttype":"text/plain","data":"hello"}"#,
        );
        let b = binary("r", "r-0a", &ce);
        let h = |k: &str| {
            b.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!((h("ce-id"), h("ce-type")), (Some("a"), Some("created")));
        assert_eq!(h("ce-subject"), Some("caf%C3%A9 7"));
        assert_eq!(
            (b.content_type.as_str(), b.body.as_slice()),
            ("text/plain", &b"hello"[..])
        );
        let eg = stored(
            2,
            EVENTGRID,
            "s",
            "b",
            r#"{"id":"b","eventType":"Made","subject":"s","eventTime":"2026-12-02T10:00:00Z","data":{"n":1},"dataVersion":"1"}"#,
        );
        let b = binary("r", "r-0a", &eg);
        let h = |k: &str| {
            b.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            (h("ce-source"), h("ce-type"), h("ce-time")),
            (
                Some("/relays/r"),
                Some("Made"),
                Some("2026-12-02T10:00:00Z")
            )
        );
        assert_eq!(b.body, br#"{"n":1}"#);
        let b64 = stored(
            3,
            CLOUDEVENTS,
            "/x",
            "c",
            r#"{"specversion":"1.0","id":"c","source":"/x","type":"t","datacontenttype":"application/octet-stream","data_base64":"AAEC"}"#,
        );
        assert_eq!(binary("r", "r-0a", &b64).body, vec![0u8, 1, 2]);
    }

    #[test]
    fn events_map_to_eventbridge_entries_and_archives() {
        let ce = stored(
            5,
            CLOUDEVENTS,
            "/orders",
            "a",
            r#"{"specversion":"1.0","id":"a","source":"/orders","type":"created","time":"2026-12-02T10:00:00.5Z"}"#,
        );
        let eg = stored(
            6,
            EVENTGRID,
            "s",
            "b",
            r#"{"id":"b","eventType":"Made","subject":"s","eventTime":"x"}"#,
        );
        let v: Value = serde_json::from_slice(&eventbridge_body("r", "orders", &[ce, eg.clone()]))
            .expect("json");
        let e = &v["Entries"];
        assert_eq!(
            (e[0]["Source"].as_str(), e[0]["DetailType"].as_str()),
            (Some("/orders"), Some("created"))
        );
        assert_eq!(e[0]["Time"], 1796205600.5);
        assert_eq!(
            (e[1]["Source"].as_str(), e[1]["EventBusName"].as_str()),
            (Some("georep.r"), Some("orders"))
        );
        let detail: Value =
            serde_json::from_str(e[1]["Detail"].as_str().expect("detail")).expect("json");
        assert_eq!(detail["id"], "b");

        let gz = archive_body(&[eg.clone(), eg.clone()]).expect("gzip");
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text)
            .expect("gunzip");
        assert_eq!(text.lines().count(), 2);
        assert_eq!(
            archive_key("r", "t", &[eg]),
            "relays/r/t/2025/12/02/10/00000000000000000006.ndjson.gz"
        );
        assert_eq!(id_of("r-0a", &stored(9, MONITOR, "", "", "{}")), "r-0a-9");
        assert_eq!(
            msg_id("r-0a", &stored(9, CLOUDEVENTS, "/src", "a", "{}")),
            "/src/a"
        );
        assert_eq!(msg_id("r-0a", &stored(9, EVENTGRID, "s", "a", "{}")), "a");
    }
}
