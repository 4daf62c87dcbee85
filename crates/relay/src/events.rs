//! What publishers send, checked as Event Grid checks it: the Event Grid schema (a JSON
//! array of events with `id`, `subject`, `eventType`, `eventTime`) or CloudEvents 1.0 in
//! structured mode (`application/cloudevents+json`, one event; `application/cloudevents-
//! batch+json`, an array) with `specversion`, `id`, `source`, `type`. Each event is kept
//! as the publisher wrote it (its id included, so receivers can drop duplicates).

use serde_json::value::RawValue;
use serde_json::Value;

use crate::outbox::NewEvent;

/// Event Grid's limit for one request, and for one event.
pub const MAX_REQUEST: usize = 1024 * 1024;

pub const EVENTGRID: &str = "eventgrid";
pub const CLOUDEVENTS: &str = "cloudevents";

/// Why a request was refused: the HTTP status and a message for the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        message: message.into(),
    }
}

fn text<'a>(e: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a str> {
    e.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The events of one publish request, in order, or why it is refused.
pub fn parse(content_type: &str, body: &[u8]) -> Result<Vec<NewEvent>, Refusal> {
    if body.len() > MAX_REQUEST {
        return Err(Refusal {
            status: 413,
            message: format!(
                "the request is {} bytes; at most {MAX_REQUEST} (1 MB) per request",
                body.len()
            ),
        });
    }
    let ct = content_type.to_ascii_lowercase();
    // Events are kept byte for byte as published (ids, key order, number text); they
    // are parsed only to be checked.
    let whole: &RawValue =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let is_array = whole.get().trim_start().starts_with('[');
    let (schema, items): (&'static str, Vec<&RawValue>) = if ct
        .starts_with("application/cloudevents-batch+json")
    {
        if !is_array {
            return Err(bad("a CloudEvents batch must be a JSON array of events"));
        }
        (CLOUDEVENTS, array(whole)?)
    } else if ct.starts_with("application/cloudevents+json") {
        (CLOUDEVENTS, vec![whole])
    } else if is_array {
        (EVENTGRID, array(whole)?)
    } else {
        return Err(bad(
                "the Event Grid schema takes a JSON array of events (for CloudEvents, send Content-Type: application/cloudevents+json or application/cloudevents-batch+json)",
            ));
    };
    if items.is_empty() {
        return Err(bad("the request holds no event"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let Ok(e) = serde_json::from_str::<serde_json::Map<String, Value>>(item.get()) else {
            return Err(bad(format!("event #{} is not a JSON object", i + 1)));
        };
        let need: &[&str] = if schema == EVENTGRID {
            &["id", "subject", "eventType", "eventTime"]
        } else {
            &["specversion", "id", "source", "type"]
        };
        let missing: Vec<&str> = need
            .iter()
            .copied()
            .filter(|k| text(&e, k).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(bad(format!(
                "event #{} lacks {} (each a non-empty string)",
                i + 1,
                missing.join(", ")
            )));
        }
        let time = if schema == EVENTGRID {
            "eventTime"
        } else {
            "time"
        };
        if let Some(t) = text(&e, time) {
            if chrono::DateTime::parse_from_rfc3339(t).is_err() {
                return Err(bad(format!(
                    "event #{}: {time} '{t}' is not an RFC 3339 time such as 2026-12-02T10:00:00Z",
                    i + 1
                )));
            }
        }
        if schema == CLOUDEVENTS && text(&e, "specversion") != Some("1.0") {
            return Err(bad(format!(
                "event #{}: specversion must be \"1.0\"",
                i + 1
            )));
        }
        let id = text(&e, "id").unwrap_or_default().to_string();
        // Order is kept per subject (Event Grid), or per subject, else source
        // (CloudEvents).
        let partition = text(&e, "subject")
            .or_else(|| text(&e, "source"))
            .unwrap_or_default()
            .to_string();
        out.push(NewEvent {
            schema,
            partition,
            id,
            body: item.get().trim().as_bytes().to_vec(),
            only: None,
        });
    }
    Ok(out)
}

fn array(whole: &RawValue) -> Result<Vec<&RawValue>, Refusal> {
    serde_json::from_str(whole.get()).map_err(|e| bad(format!("the body is not a JSON array: {e}")))
}

/// The body and content type that deliver `bodies` (stored events of one schema) as one
/// batch.
pub fn batch(schema: &str, bodies: &[&[u8]]) -> (Vec<u8>, &'static str) {
    let mut out = Vec::with_capacity(bodies.iter().map(|b| b.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, b) in bodies.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b);
    }
    out.push(b']');
    let ct = if schema == CLOUDEVENTS {
        "application/cloudevents-batch+json; charset=utf-8"
    } else {
        "application/json"
    };
    (out, ct)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_grid_and_cloudevents_are_checked_as_event_grid_checks_them() {
        let eg = br#"[{"subject":"orders/7","id":"1","eventType":"Created","eventTime":"2026-12-02T10:00:00Z","data":{"n":1E2,"big":123456789012345678901234567890},"dataVersion":"1"}]"#;
        let got = parse("application/json", eg).expect("eg");
        assert_eq!((got[0].schema, got[0].id.as_str()), (EVENTGRID, "1"));
        // Byte for byte as published: key order and number text kept.
        assert_eq!(got[0].body, &eg[1..eg.len() - 1]);
        assert_eq!(got[0].partition, "orders/7");
        let ce = br#"{"specversion":"1.0","id":"a","source":"/orders","type":"created","data":{}}"#;
        let got = parse("application/cloudevents+json; charset=utf-8", ce).expect("ce");
        assert_eq!(
            (got[0].schema, got[0].partition.as_str()),
            (CLOUDEVENTS, "/orders")
        );
        let batch_ce = format!("[{}]", std::str::from_utf8(ce).expect("utf8"));
        assert_eq!(
            parse("application/cloudevents-batch+json", batch_ce.as_bytes())
                .expect("batch")
                .len(),
            1
        );
        for (ct, body, want) in [
            ("application/json", &b"{}"[..], "array of events"),
            ("application/json", b"[]", "no event"),
            ("application/json", b"not json", "not JSON"),
            (
                "application/json",
                br#"[{"id":"1"}]"#,
                "lacks subject, eventType, eventTime",
            ),
            (
                "application/cloudevents+json",
                br#"{"specversion":"0.3","id":"a","source":"s","type":"t"}"#,
                "specversion must be",
            ),
            (
                "application/cloudevents-batch+json",
                ce,
                "must be a JSON array",
            ),
        ] {
            let e = parse(ct, body).expect_err("refused");
            assert_eq!(e.status, 400);
            assert!(e.message.contains(want), "{want}: {}", e.message);
        }
        let big = vec![b' '; MAX_REQUEST + 1];
        assert_eq!(
            parse("application/json", &big).expect_err("big").status,
            413
        );
        let (body, ct) = batch(CLOUDEVENTS, &[b"{\"a\":1}", b"{\"b\":2}"]);
        assert_eq!(body, b"[{\"a\":1},{\"b\":2}]");
        assert!(ct.starts_with("application/cloudevents-batch+json"));
    }
}
