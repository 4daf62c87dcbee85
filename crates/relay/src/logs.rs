//! Log records as the three ingestion APIs send them, checked as each checks them:
//! Azure Monitor's Logs Ingestion API (a JSON array of records for one data collection
//! rule's stream), Loki's push API (JSON streams of `[nanoseconds, line]` values) and
//! Elasticsearch's bulk API (NDJSON `index`/`create` actions, each with its document).
//! Each record becomes one stored event, kept as sent; its partition (the stream, the
//! label set, the index) is what order is kept by.

use std::io::Read;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::events::Refusal;
use crate::outbox::NewEvent;

/// Azure Monitor Logs Ingestion records.
pub const MONITOR: &str = "monitor";
/// One Loki entry, stored as a stream of one value: `{"stream":{..},"values":[[..]]}`.
pub const LOKI: &str = "loki";
/// One Elasticsearch document sent with `index`.
pub const ES: &str = "es";
/// One Elasticsearch document sent with `create`.
pub const ES_CREATE: &str = "es.create";

/// The most a request may come to once stored (a Loki label set is kept with each
/// line: a request of many short lines under many labels grows).
pub const MAX_STORED: usize = 2 * MAX_DECODED;
/// Bulk actions per request.
pub const MAX_BULK_ITEMS: usize = 10_000;

fn too_big(what: &str) -> Refusal {
    Refusal {
        status: 413,
        message: format!("the request holds {what}; send smaller requests"),
    }
}

/// The most a log request may hold once decompressed (Loki and Elasticsearch clients
/// send bigger batches than Event Grid's 1 MB).
pub const MAX_DECODED: usize = 16 * 1024 * 1024;

fn bad(message: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        message: message.into(),
    }
}

/// The body as sent, or gunzipped (`Content-Encoding: gzip`, which the Azure Monitor
/// SDKs use by default), at most [`MAX_DECODED`] bytes.
pub fn decode(encoding: Option<&str>, body: &[u8]) -> Result<Vec<u8>, Refusal> {
    let too_big = || Refusal {
        status: 413,
        message: format!("the request holds more than {MAX_DECODED} bytes once decompressed"),
    };
    match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "identity") => {
            if body.len() > MAX_DECODED {
                return Err(too_big());
            }
            Ok(body.to_vec())
        }
        Some("gzip") => {
            let mut out = Vec::new();
            // Every member of a multi-member stream (what concatenated gzip files are).
            flate2::read::MultiGzDecoder::new(body)
                .take(MAX_DECODED as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("the body is not valid gzip: {e}")))?;
            if out.len() > MAX_DECODED {
                return Err(too_big());
            }
            Ok(out)
        }
        Some(other) => Err(Refusal {
            status: 415,
            message: format!("Content-Encoding '{other}' is not supported; send gzip or none"),
        }),
    }
}

/// `POST /dataCollectionRules/{dcr}/streams/{stream}`: a JSON array of objects.
pub fn monitor(dcr: &str, stream: &str, body: &[u8]) -> Result<Vec<NewEvent>, Refusal> {
    let items: Vec<&RawValue> = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body must be a JSON array of records: {e}")))?;
    if items.is_empty() {
        return Err(bad("the request holds no record"));
    }
    let partition = format!("{dcr}/{stream}");
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            if !item.get().trim_start().starts_with('{') {
                return Err(bad(format!("record #{} is not a JSON object", i + 1)));
            }
            Ok(NewEvent {
                schema: MONITOR,
                partition: partition.clone(),
                id: String::new(),
                body: item.get().trim().as_bytes().to_vec(),
                only: None,
            })
        })
        .collect()
}

/// `POST /loki/api/v1/push` (JSON): `{"streams":[{"stream":{labels},"values":[[ts,
/// line], [ts, line, {metadata}]]}]}`, with `ts` nanoseconds as a string.
pub fn loki(body: &[u8]) -> Result<Vec<NewEvent>, Refusal> {
    #[derive(serde::Deserialize)]
    struct Push {
        streams: Vec<Stream>,
    }
    #[derive(serde::Deserialize)]
    struct Stream {
        stream: Map<String, Value>,
        values: Vec<Vec<Value>>,
    }
    let push: Push = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the body is not a Loki push request ({{\"streams\":[{{\"stream\":{{..}},\"values\":[[\"NANOSECONDS\",\"LINE\"]]}}]}}): {e}"
        ))
    })?;
    let mut out = Vec::new();
    let mut stored = 0usize;
    for (i, s) in push.streams.into_iter().enumerate() {
        if s.stream.is_empty() || s.stream.values().any(|v| !v.is_string()) {
            return Err(bad(format!(
                "stream #{}: labels must be a non-empty object of strings",
                i + 1
            )));
        }
        // Loki's own limits: at most 15 labels, names as Prometheus names them.
        let name_ok = |n: &str| {
            n.len() <= 1024
                && n.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if s.stream.len() > 15
            || s.stream.keys().any(|k| !name_ok(k))
            || s.stream
                .values()
                .any(|v| v.as_str().is_some_and(|v| v.len() > 2048))
        {
            return Err(bad(format!(
                "stream #{}: at most 15 labels, each name [a-zA-Z_][a-zA-Z0-9_]* of at most 1024 bytes and each value at most 2048 bytes",
                i + 1
            )));
        }
        // serde_json's maps are sorted: the same labels always give the same key.
        let partition = Value::Object(s.stream.clone()).to_string();
        for (j, v) in s.values.into_iter().enumerate() {
            let ok = matches!(v.len(), 2 | 3)
                && v[0]
                    .as_str()
                    .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                && v[1].is_string()
                && v.get(2).is_none_or(Value::is_object);
            if !ok {
                return Err(bad(format!(
                    "stream #{} entry #{}: expected [\"NANOSECONDS\", \"LINE\"] (and optionally an object of metadata)",
                    i + 1,
                    j + 1
                )));
            }
            let one = serde_json::json!({"stream": s.stream, "values": [v]})
                .to_string()
                .into_bytes();
            stored += one.len();
            if stored > MAX_STORED {
                return Err(too_big(&format!(
                    "more than {MAX_STORED} bytes once each line is kept with its labels"
                )));
            }
            out.push(NewEvent {
                schema: LOKI,
                partition: partition.clone(),
                id: String::new(),
                body: one,
                only: None,
            });
        }
    }
    if out.is_empty() {
        return Err(bad("the request holds no entry"));
    }
    Ok(out)
}

/// One accepted bulk item: its action and id, for the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkItem {
    pub action: String,
    pub index: String,
    pub id: Option<String>,
}

/// `POST /_bulk` or `POST /{index}/_bulk`: NDJSON pairs of an `index` or `create`
/// action and its document. Other actions (update, delete) are refused: a relay keeps
/// logs, it does not edit them.
pub fn bulk(
    default_index: Option<&str>,
    body: &[u8],
) -> Result<(Vec<NewEvent>, Vec<BulkItem>), Refusal> {
    let text = std::str::from_utf8(body).map_err(|_| bad("the bulk body is not UTF-8 NDJSON"))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let (mut out, mut items) = (Vec::new(), Vec::new());
    let mut n = 0;
    while let Some(action) = lines.next() {
        n += 1;
        if n > MAX_BULK_ITEMS {
            return Err(too_big(&format!("more than {MAX_BULK_ITEMS} actions")));
        }
        let a: Map<String, Value> = serde_json::from_str(action)
            .map_err(|e| bad(format!("bulk action #{n} is not a JSON object: {e}")))?;
        let Some((verb, meta)) = a.iter().next().filter(|_| a.len() == 1) else {
            return Err(bad(format!(
                "bulk action #{n} must hold exactly one action"
            )));
        };
        if !matches!(verb.as_str(), "index" | "create") {
            return Err(bad(format!(
                "bulk action #{n} is '{verb}'; a relay takes only index and create actions"
            )));
        }
        let index = meta
            .get("_index")
            .and_then(Value::as_str)
            .or(default_index)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                bad(format!(
                    "bulk action #{n} names no _index and the path gives none (POST /INDEX/_bulk)"
                ))
            })?
            .to_string();
        let id = match meta.get("_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 512 => Some(s.clone()),
            Some(_) => {
                return Err(bad(format!(
                    "bulk action #{n}: _id must be a string of 1 to 512 bytes"
                )))
            }
        };
        let doc = lines
            .next()
            .ok_or_else(|| bad(format!("bulk action #{n} has no document line after it")))?;
        let raw: &RawValue = serde_json::from_str(doc)
            .map_err(|e| bad(format!("the document of bulk action #{n} is not JSON: {e}")))?;
        if !raw.get().trim_start().starts_with('{') {
            return Err(bad(format!(
                "the document of bulk action #{n} is not a JSON object"
            )));
        }
        out.push(NewEvent {
            schema: if verb == "create" { ES_CREATE } else { ES },
            partition: index.clone(),
            id: id.clone().unwrap_or_default(),
            body: raw.get().trim().as_bytes().to_vec(),
            only: None,
        });
        items.push(BulkItem {
            action: verb.clone(),
            index,
            id,
        });
    }
    if out.is_empty() {
        return Err(bad("the bulk request holds no action"));
    }
    Ok((out, items))
}

/// The bulk API's answer once every item is durable: each one created.
pub fn bulk_answer(items: &[BulkItem]) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|i| {
            let mut m = Map::new();
            m.insert(
                i.action.clone(),
                serde_json::json!({
                    "_index": i.index, "_id": i.id, "status": 201, "result": "created",
                    "_version": 1, "_shards": {"total": 1, "successful": 1, "failed": 0}
                }),
            );
            Value::Object(m)
        })
        .collect();
    serde_json::json!({"took": 0, "errors": false, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_api_is_checked_as_its_server_checks_it() {
        let got = monitor(
            "dcr-1",
            "Custom-App_CL",
            br#"[{"TimeGenerated":"2026-12-02T10:00:00Z","Msg":"a"},{"Msg":"b"}]"#,
        )
        .expect("monitor");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].partition, "dcr-1/Custom-App_CL");
        assert_eq!(got[1].body, br#"{"Msg":"b"}"#);
        for body in [&b"{}"[..], b"[]", b"[1]", b"nope"] {
            assert_eq!(monitor("d", "s", body).expect_err("refused").status, 400);
        }

        let got = loki(br#"{"streams":[{"stream":{"job":"api","env":"prod"},"values":[["1733130000000000000","first"],["1733130000000000001","second",{"trace":"t"}]]}]}"#)
            .expect("loki");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].partition, r#"{"env":"prod","job":"api"}"#);
        let one: Value = serde_json::from_slice(&got[1].body).expect("json");
        assert_eq!(one["values"][0][1], "second");
        for body in [
            &br#"{"streams":[{"stream":{},"values":[["1","a"]]}]}"#[..],
            br#"{"streams":[{"stream":{"a":"b"},"values":[["x1","a"]]}]}"#,
            br#"{"streams":[{"stream":{"a":"b"},"values":[[1,"a"]]}]}"#,
            br#"{"streams":[]}"#,
        ] {
            assert_eq!(loki(body).expect_err("refused").status, 400);
        }

        let (got, items) = bulk(
            Some("logs"),
            b"{\"index\":{}}\n{\"message\":\"a\"}\n{\"create\":{\"_index\":\"other\",\"_id\":\"7\"}}\n{\"message\":\"b\"}\n",
        )
        .expect("bulk");
        assert_eq!(
            (got[0].partition.as_str(), got[1].partition.as_str()),
            ("logs", "other")
        );
        assert_eq!((got[0].id.as_str(), got[1].id.as_str()), ("", "7"));
        assert_eq!(items[1].action, "create");
        let answer = bulk_answer(&items);
        assert_eq!(answer["errors"], false);
        assert_eq!(answer["items"][1]["create"]["_id"], "7");
        for (index, body, want) in [
            (None, &b"{\"index\":{}}\n{}\n"[..], "names no _index"),
            (
                Some("l"),
                b"{\"delete\":{\"_id\":\"1\"}}\n",
                "only index and create",
            ),
            (Some("l"), b"{\"index\":{}}\n", "no document line"),
            (Some("l"), b"{\"index\":{}}\n[1]\n", "not a JSON object"),
        ] {
            let e = bulk(index, body).expect_err("refused");
            assert!(e.message.contains(want), "{want}: {}", e.message);
        }
    }

    #[test]
    fn gzip_bodies_are_opened_and_bounded() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"[{\"a\":1}]").expect("gzip");
        let packed = gz.finish().expect("gzip");
        assert_eq!(
            decode(Some("gzip"), &packed).expect("gunzip"),
            b"[{\"a\":1}]"
        );
        assert_eq!(decode(None, b"x").expect("plain"), b"x");
        assert_eq!(decode(Some("br"), b"x").expect_err("br").status, 415);
        assert_eq!(
            decode(Some("gzip"), b"not gzip").expect_err("bad").status,
            400
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&vec![b' '; MAX_DECODED + 1]).expect("gzip");
        let bomb = gz.finish().expect("gzip");
        assert_eq!(decode(Some("gzip"), &bomb).expect_err("bomb").status, 413);
    }
}
