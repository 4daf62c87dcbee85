//! Webhook bodies → object-change notifications.
//!
//! Pure parsing (no IO) of the push formats a source store can send us, so the
//! HTTP layer stays thin and every format quirk is unit-tested here:
//! - Azure Event Grid schema (JSON array of events, plus the
//!   `SubscriptionValidationEvent` handshake);
//! - CloudEvents 1.0 as delivered by Event Grid (single structured event or a
//!   batch array; its handshake is an HTTP OPTIONS, see
//!   [`cloudevents_allowed_origin`]);
//! - AWS S3 event notifications, sent directly or wrapped in an SNS envelope.
//!
//! A batch is processed event by event: one malformed event is counted in
//! `ignored` rather than failing the whole delivery, because failing would make
//! the sender retry (and re-fail) the good events too.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// Request header carrying the sender's origin in the CloudEvents OPTIONS handshake.
pub const WEBHOOK_REQUEST_ORIGIN: &str = "WebHook-Request-Origin";
/// Response header granting that origin permission to deliver.
pub const WEBHOOK_ALLOWED_ORIGIN: &str = "WebHook-Allowed-Origin";
/// Response header with the granted delivery rate (requests per minute or `*`).
pub const WEBHOOK_ALLOWED_RATE: &str = "WebHook-Allowed-Rate";
/// Value for [`WEBHOOK_ALLOWED_RATE`]: the spec says it SHOULD be sent; `*` means no limit.
pub const ALLOWED_RATE_UNLIMITED: &str = "*";

const BLOB_CREATED: &str = "Microsoft.Storage.BlobCreated";
const BLOB_DELETED: &str = "Microsoft.Storage.BlobDeleted";
const BLOB_RENAMED: &str = "Microsoft.Storage.BlobRenamed";
const SUBSCRIPTION_VALIDATION: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
/// Blob subjects are `/blobServices/default/containers/{c}/blobs/{name}`; some
/// CloudEvents samples omit the leading slash, so it is stripped first.
const SUBJECT_PREFIX: &str = "blobServices/default/containers/";
/// Untrusted text quoted in error messages is clipped to keep logs readable.
const CLIP: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Azure container or S3 bucket the event names.
    pub container: String,
    /// Full object name inside the container/bucket (decoded), no leading slash.
    pub name: String,
    pub kind: ChangeKind,
    /// When the change happened at the source, per the event (eventTime/time), if given and parseable.
    pub time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Changes to act on, plus how many events were ignored (other types, or malformed).
    Changes {
        changes: Vec<Change>,
        ignored: usize,
    },
    /// Event Grid subscription validation: reply 200 with {"validationResponse": code}.
    Validation { code: String },
    /// SNS subscription confirmation; the operator must confirm it (URL is logged).
    SnsConfirmation { subscribe_url: String },
}

/// Why a body (or, internally, one event of a batch) could not be used.
///
/// [`parse`] only returns the whole-body errors; per-event errors (missing
/// field, bad subject, URL or key) are counted in `Parsed::Changes::ignored`.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("webhook body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "unrecognised webhook body: expected an Event Grid or CloudEvents event (or an array \
         of them), an S3 notification with \"Records\", an s3:TestEvent or an SNS message; {0}"
    )]
    UnknownFormat(String),
    #[error("SNS {kind} message has no string field \"{field}\"")]
    SnsField { kind: String, field: &'static str },
    #[error("SNS Notification \"Message\" is not a usable S3 event notification: {0}")]
    SnsMessage(Box<EventError>),
    #[error("event is not a JSON object")]
    NotAnObject,
    #[error("event has no non-empty string field \"{0}\"")]
    MissingField(&'static str),
    #[error(
        "blob subject {0:?} is not of the form \
         /blobServices/default/containers/<container>/blobs/<name>"
    )]
    BadSubject(String),
    #[error("blob URL {0:?} is not of the form https://<host>/<container>/<name>")]
    BadUrl(String),
    #[error("S3 object key {0:?} does not decode to UTF-8 text")]
    BadKey(String),
}

/// Parse a webhook body, detecting its format from its shape.
///
/// The format is detected from the body rather than headers because Event Grid
/// and SNS both send generic content types (`application/json`, `text/plain`).
pub fn parse(body: &[u8]) -> Result<Parsed, EventError> {
    let value: Value = serde_json::from_slice(body)?;
    parse_value(&value, true)
}

/// Key relative to a store rooted at `container`/`prefix` (prefix without slashes at ends, may be empty), or None when the change is outside that store (other container, or name not under prefix/).
pub fn relative_key(change: &Change, container: &str, prefix: &str) -> Option<String> {
    if change.container != container {
        return None;
    }
    let prefix = prefix.trim_matches('/');
    let rest = if prefix.is_empty() {
        change.name.as_str()
    } else {
        change.name.strip_prefix(prefix)?.strip_prefix('/')?
    };
    canonical_key(rest)
}

/// The key as a listing of the store shows it, or `None` for a name that is not an
/// object there: a folder marker (`dir/`), an empty name, empty, `.` or `..` segments,
/// control characters. object_store strips one leading `/`, so `/x.txt` lists as
/// `x.txt`; storing the event's spelling would leave a row no scan ever matches.
pub fn canonical_key(name: &str) -> Option<String> {
    if name.ends_with('/') || name.chars().any(char::is_control) {
        return None;
    }
    let key = name.strip_prefix('/').unwrap_or(name);
    let ok = !key.is_empty()
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    ok.then(|| key.to_owned())
}

/// Response header value for the CloudEvents OPTIONS handshake.
///
/// Echoes the `WebHook-Request-Origin` value (trimmed) so Event Grid accepts the
/// endpoint; `None` when the header is absent or unusable, in which case the
/// caller must not send `WebHook-Allowed-Origin` (no consent). Values with
/// control characters, spaces or non-ASCII are refused since an origin is a DNS
/// name and echoing them into a response header would allow header injection.
pub fn cloudevents_allowed_origin(request_origin: Option<&str>) -> Option<String> {
    let origin = request_origin?.trim();
    let valid =
        !origin.is_empty() && origin.len() <= 253 && origin.chars().all(|c| c.is_ascii_graphic());
    valid.then(|| origin.to_owned())
}

/// `allow_sns` is false inside an SNS envelope so a message cannot nest another envelope.
fn parse_value(value: &Value, allow_sns: bool) -> Result<Parsed, EventError> {
    let obj = match value {
        Value::Array(events) => return parse_azure(events),
        Value::Object(obj) => obj,
        other => return Err(EventError::UnknownFormat(describe(other))),
    };
    if let Some(records) = obj.get("Records") {
        return parse_s3(records);
    }
    if str_field(obj, "Event") == Some("s3:TestEvent") {
        // Sent once when the bucket notification is configured; just acknowledge it.
        return Ok(Parsed::Changes {
            changes: Vec::new(),
            ignored: 0,
        });
    }
    if allow_sns {
        if let Some(kind) = str_field(obj, "Type") {
            return parse_sns(obj, kind);
        }
    }
    if is_azure_event(obj) {
        // CloudEvents structured mode: one event per request.
        return parse_azure(std::slice::from_ref(value));
    }
    Err(EventError::UnknownFormat(describe(value)))
}

fn parse_sns(obj: &Map<String, Value>, kind: &str) -> Result<Parsed, EventError> {
    let field = |field: &'static str| {
        str_field(obj, field).ok_or_else(|| EventError::SnsField {
            kind: clip(kind),
            field,
        })
    };
    match kind {
        "SubscriptionConfirmation" => Ok(Parsed::SnsConfirmation {
            subscribe_url: field("SubscribeURL")?.to_owned(),
        }),
        "Notification" => {
            let wrap = |e: EventError| EventError::SnsMessage(Box::new(e));
            let inner: Value =
                serde_json::from_str(field("Message")?).map_err(|e| wrap(e.into()))?;
            parse_value(&inner, false).map_err(wrap)
        }
        // Nothing to do; surfaced as an ignored event so it is visible in counters.
        "UnsubscribeConfirmation" => Ok(Parsed::Changes {
            changes: Vec::new(),
            ignored: 1,
        }),
        other => Err(EventError::UnknownFormat(format!(
            "got SNS message Type {:?}",
            clip(other)
        ))),
    }
}

/// Event Grid schema has `eventType`; CloudEvents has `type` + `specversion`.
fn is_azure_event(obj: &Map<String, Value>) -> bool {
    str_field(obj, "eventType").is_some()
        || (str_field(obj, "type").is_some() && obj.contains_key("specversion"))
}

enum Outcome {
    Changes(Vec<Change>),
    Validation(String),
    Ignored,
}

fn parse_azure(events: &[Value]) -> Result<Parsed, EventError> {
    // An array with no recognisable event at all is the wrong endpoint or format,
    // not a batch with bad members: report it instead of silently ignoring.
    if !events.is_empty()
        && !events
            .iter()
            .any(|e| e.as_object().is_some_and(is_azure_event))
    {
        return Err(EventError::UnknownFormat(describe(&Value::Array(
            Vec::new(),
        ))));
    }
    let mut changes = Vec::new();
    let mut ignored = 0;
    for event in events {
        match azure_event(event) {
            // Event Grid sends the validation event alone in its array.
            Ok(Outcome::Validation(code)) => return Ok(Parsed::Validation { code }),
            Ok(Outcome::Changes(found)) => changes.extend(found),
            Ok(Outcome::Ignored) | Err(_) => ignored += 1,
        }
    }
    Ok(Parsed::Changes { changes, ignored })
}

fn azure_event(event: &Value) -> Result<Outcome, EventError> {
    let obj = event.as_object().ok_or(EventError::NotAnObject)?;
    let event_type = str_field(obj, "eventType")
        .or_else(|| str_field(obj, "type"))
        .ok_or(EventError::MissingField("eventType"))?;
    let time = str_field(obj, "eventTime")
        .or_else(|| str_field(obj, "time"))
        .and_then(parse_time);
    let data = |field: &'static str| {
        obj.get("data")
            .and_then(|d| str_at(d, &[field]))
            .ok_or(EventError::MissingField(field))
    };
    let subject =
        || split_subject(str_field(obj, "subject").ok_or(EventError::MissingField("subject"))?);
    let change = |(container, name): (String, String), kind| Change {
        container,
        name,
        kind,
        time,
    };

    match event_type {
        SUBSCRIPTION_VALIDATION => Ok(Outcome::Validation(data("validationCode")?.to_owned())),
        BLOB_CREATED => Ok(Outcome::Changes(vec![change(
            subject()?,
            ChangeKind::Created,
        )])),
        BLOB_DELETED => Ok(Outcome::Changes(vec![change(
            subject()?,
            ChangeKind::Deleted,
        )])),
        BLOB_RENAMED => {
            // Hierarchical-namespace rename: replicate as delete old + create new.
            // The subject names the destination; destinationUrl is the fallback.
            let source = split_blob_url(data("sourceUrl")?)?;
            let destination = match subject() {
                Ok(dest) => dest,
                Err(_) => split_blob_url(data("destinationUrl")?)?,
            };
            Ok(Outcome::Changes(vec![
                change(source, ChangeKind::Deleted),
                change(destination, ChangeKind::Created),
            ]))
        }
        _ => Ok(Outcome::Ignored),
    }
}

/// Split a blob subject into (container, name).
///
/// Container names cannot contain `/`, so the container ends at the first `/`
/// and must be followed by `blobs/`; everything after is the name verbatim
/// (subjects carry raw names: spaces, unicode and even `/blobs/` inside names).
fn split_subject(subject: &str) -> Result<(String, String), EventError> {
    let bad = || EventError::BadSubject(clip(subject));
    let rest = subject.strip_prefix('/').unwrap_or(subject);
    let (container, rest) = rest
        .strip_prefix(SUBJECT_PREFIX)
        .and_then(|r| r.split_once('/'))
        .ok_or_else(bad)?;
    let name = rest.strip_prefix("blobs/").ok_or_else(bad)?;
    if container.is_empty() || name.is_empty() {
        return Err(bad());
    }
    Ok((container.to_owned(), name.to_owned()))
}

/// Split `https://<account>.blob|dfs.core.windows.net/<container>/<name>` into
/// (container, name), percent-decoding the path as URLs carry it encoded.
fn split_blob_url(url: &str) -> Result<(String, String), EventError> {
    let bad = || EventError::BadUrl(clip(url));
    let (_, after_scheme) = url.split_once("://").ok_or_else(bad)?;
    let (_host, path) = after_scheme.split_once('/').ok_or_else(bad)?;
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let (container, name) = path.split_once('/').ok_or_else(bad)?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(Cow::into_owned)
    };
    let (container, name) = (
        decode(container).map_err(|_| bad())?,
        decode(name).map_err(|_| bad())?,
    );
    if container.is_empty() || name.is_empty() {
        return Err(bad());
    }
    Ok((container, name))
}

fn parse_s3(records: &Value) -> Result<Parsed, EventError> {
    let records = records.as_array().ok_or_else(|| {
        EventError::UnknownFormat("got \"Records\" that is not an array".to_owned())
    })?;
    let mut changes = Vec::new();
    let mut ignored = 0;
    for record in records {
        match s3_record(record) {
            Ok(Some(change)) => changes.push(change),
            Ok(None) | Err(_) => ignored += 1,
        }
    }
    Ok(Parsed::Changes { changes, ignored })
}

/// One S3 record; `Ok(None)` for event types we do not replicate (restore, tagging, ...).
fn s3_record(record: &Value) -> Result<Option<Change>, EventError> {
    let obj = record.as_object().ok_or(EventError::NotAnObject)?;
    let event_name = str_field(obj, "eventName").ok_or(EventError::MissingField("eventName"))?;
    // AWS omits the "s3:" prefix; S3-compatible stores (e.g. MinIO) keep it.
    let event_name = event_name.strip_prefix("s3:").unwrap_or(event_name);
    let kind = if event_name.starts_with("ObjectCreated:") {
        ChangeKind::Created
    } else if event_name.starts_with("ObjectRemoved:") {
        // Includes DeleteMarkerCreated: the object is gone for readers either way.
        ChangeKind::Deleted
    } else {
        return Ok(None);
    };
    let bucket = str_at(record, &["s3", "bucket", "name"])
        .ok_or(EventError::MissingField("s3.bucket.name"))?;
    let key = str_at(record, &["s3", "object", "key"])
        .ok_or(EventError::MissingField("s3.object.key"))?;
    Ok(Some(Change {
        container: bucket.to_owned(),
        name: decode_s3_key(key)?,
        kind,
        time: str_field(obj, "eventTime").and_then(parse_time),
    }))
}

/// S3 event keys are form-URL-encoded: `+` is a space and a literal `+` arrives
/// as `%2B`, so `+` must be replaced before percent-decoding, never after.
fn decode_s3_key(key: &str) -> Result<String, EventError> {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|_| EventError::BadKey(clip(key)))
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Non-empty string field of an object.
fn str_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Non-empty string at a nested path; `None` if any step is missing or not an object.
fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(key))?
        .as_str()
        .filter(|s| !s.is_empty())
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(CLIP) {
        Some((end, _)) => format!("{}…", s.get(..end).unwrap_or_default()),
        None => s.to_owned(),
    }
}

/// Short description of an unrecognised body for error messages.
fn describe(value: &Value) -> String {
    match value {
        Value::Object(obj) => {
            let keys: Vec<String> = obj.keys().take(8).map(|k| clip(k)).collect();
            format!("got an object with keys {keys:?}")
        }
        Value::Array(_) => {
            "got an array with no object having \"eventType\" or \"type\"+\"specversion\""
                .to_owned()
        }
        Value::String(_) => "got a JSON string".to_owned(),
        Value::Number(_) => "got a JSON number".to_owned(),
        Value::Bool(_) => "got a JSON boolean".to_owned(),
        Value::Null => "got JSON null".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    /// Event Grid schema, BlobCreated (shape from the Azure docs sample).
    const EG_CREATED: &str = r#"[{
      "topic": "/subscriptions/{subscription-id}/resourceGroups/Storage/providers/Microsoft.Storage/storageAccounts/my-storage-account",
      "subject": "/blobServices/default/containers/test-container/blobs/new-file.txt",
      "eventType": "Microsoft.Storage.BlobCreated",
      "eventTime": "2017-06-26T18:41:00.9584103Z",
      "id": "831e1650-001e-001b-66ab-eeb76e069631",
      "data": {
        "api": "PutBlockList",
        "clientRequestId": "6d79dbfb-0e37-4fc4-981f-442c9ca65760",
        "requestId": "831e1650-001e-001b-66ab-eeb76e000000",
        "eTag": "\"0x8D4BCC2E4835CD0\"",
        "contentType": "text/plain",
        "contentLength": 524288,
        "blobType": "BlockBlob",
        "url": "https://my-storage-account.blob.core.windows.net/testcontainer/new-file.txt",
        "sequencer": "00000000000004420000000000028963",
        "storageDiagnostics": { "batchId": "b68529f3-68cd-4744-baa4-3c0498ec19f0" }
      },
      "dataVersion": "",
      "metadataVersion": "1"
    }]"#;

    const EG_DELETED: &str = r#"[{
      "topic": "/subscriptions/{subscription-id}/resourceGroups/Storage/providers/Microsoft.Storage/storageAccounts/my-storage-account",
      "subject": "/blobServices/default/containers/testcontainer/blobs/file-to-delete.txt",
      "eventType": "Microsoft.Storage.BlobDeleted",
      "eventTime": "2017-11-07T20:09:22.5674003Z",
      "id": "4c2359fe-001e-00ba-0e04-58586806d298",
      "data": {
        "api": "DeleteBlob",
        "requestId": "4c2359fe-001e-00ba-0e04-585868000000",
        "contentType": "text/plain",
        "blobType": "BlockBlob",
        "url": "https://my-storage-account.blob.core.windows.net/testcontainer/file-to-delete.txt",
        "sequencer": "0000000000000281000000000002F5CA",
        "storageDiagnostics": { "batchId": "b68529f3-68cd-4744-baa4-3c0498ec19f0" }
      },
      "dataVersion": "",
      "metadataVersion": "1"
    }]"#;

    const EG_VALIDATION: &str = r#"[{
      "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
      "topic": "/subscriptions/xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
      "subject": "",
      "data": {
        "validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
        "validationUrl": "https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/estest/validate?id=512d38b6-c7b8-40c8-89fe-f46f9e9622b6&t=2018-04-26T20:30:54.4538837Z&apiVersion=2018-05-01-preview&token=1A1A1A1A"
      },
      "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
      "eventTime": "2018-01-25T22:12:19.4556811Z",
      "metadataVersion": "1",
      "dataVersion": "1"
    }]"#;

    /// CloudEvents structured mode (single object; subject without leading
    /// slash as in one docs sample, and a name with spaces, unicode, "/blobs/").
    const CE_SINGLE: &str = r#"{
      "specversion": "1.0",
      "type": "Microsoft.Storage.BlobCreated",
      "source": "/subscriptions/{subscription-id}/resourceGroups/{resource-group}/providers/Microsoft.Storage/storageAccounts/{storage-account}",
      "id": "9aeb0fdf-c01e-0131-0922-9eb54906e209",
      "time": "2019-11-18T15:13:39.4589254Z",
      "subject": "blobServices/default/containers/photos/blobs/2019/a blobs/blobs/été 📷.png",
      "data": {
        "api": "PutBlockList",
        "clientRequestId": "4c5dd7fb-2c48-4a27-bb30-5361b5de920a",
        "requestId": "9aeb0fdf-c01e-0131-0922-9eb549000000",
        "eTag": "0x8D76C39E4407333",
        "contentType": "image/png",
        "contentLength": 30699,
        "blobType": "BlockBlob",
        "url": "https://gridtesting.blob.core.windows.net/testcontainer/{new-file}",
        "sequencer": "000000000000000000000000000099240000000000c41c18",
        "storageDiagnostics": { "batchId": "681fe319-3006-00a8-0022-9e7cde000000" }
      }
    }"#;

    /// CloudEvents batch: created, deleted, and a tier change we ignore.
    const CE_BATCH: &str = r#"[{
      "source": "/subscriptions/{subscription-id}/resourceGroups/Storage/providers/Microsoft.Storage/storageAccounts/my-storage-account",
      "subject": "/blobServices/default/containers/test-container/blobs/new-file.txt",
      "type": "Microsoft.Storage.BlobCreated",
      "time": "2017-06-26T18:41:00.9584103Z",
      "id": "831e1650-001e-001b-66ab-eeb76e069631",
      "data": { "api": "PutBlockList", "contentLength": 524288, "blobType": "BlockBlob",
                "url": "https://my-storage-account.blob.core.windows.net/testcontainer/new-file.txt" },
      "specversion": "1.0"
    }, {
      "source": "/subscriptions/{subscription-id}/resourceGroups/Storage/providers/Microsoft.Storage/storageAccounts/my-storage-account",
      "subject": "/blobServices/default/containers/testcontainer/blobs/file-to-delete.txt",
      "type": "Microsoft.Storage.BlobDeleted",
      "time": "2017-11-07T20:09:22.5674003Z",
      "id": "4c2359fe-001e-00ba-0e04-58586806d298",
      "data": { "api": "DeleteBlob", "blobType": "BlockBlob",
                "url": "https://my-storage-account.blob.core.windows.net/testcontainer/file-to-delete.txt" },
      "specversion": "1.0"
    }, {
      "source": "/subscriptions/{subscription-id}/resourceGroups/Storage/providers/Microsoft.Storage/storageAccounts/my-storage-account",
      "subject": "/blobServices/default/containers/testcontainer/blobs/Auto.jpg",
      "type": "Microsoft.Storage.BlobTierChanged",
      "time": "2021-05-04T15:00:00.8350154Z",
      "id": "0fdefc06-b01e-0034-39f6-4016610696f6",
      "data": { "api": "SetBlobTier" },
      "specversion": "1.0"
    }]"#;

    const EG_RENAMED: &str = r#"[{
      "topic": "/subscriptions/{subscription-id}/resourceGroups/Storage/providers/Microsoft.Storage/storageAccounts/my-storage-account",
      "subject": "/blobServices/default/containers/my-file-system/blobs/my-renamed-file.txt",
      "eventType": "Microsoft.Storage.BlobRenamed",
      "eventTime": "2017-06-26T18:41:00.9584103Z",
      "id": "831e1650-001e-001b-66ab-eeb76e069631",
      "data": {
        "api": "RenameFile",
        "destinationUrl": "https://my-storage-account.dfs.core.windows.net/my-file-system/my-renamed-file.txt",
        "sourceUrl": "https://my-storage-account.dfs.core.windows.net/my-file-system/dir/my%20original%C3%A9.txt",
        "sequencer": "00000000000004420000000000028963"
      },
      "dataVersion": "1",
      "metadataVersion": "1"
    }]"#;

    /// S3 Put (shape from the AWS docs sample) with a key needing decoding.
    const S3_PUT: &str = r#"{"Records":[{
      "eventVersion":"2.1",
      "eventSource":"aws:s3",
      "awsRegion":"us-west-2",
      "eventTime":"1970-01-01T00:00:00.000Z",
      "eventName":"ObjectCreated:Put",
      "userIdentity":{"principalId":"AIDAJDPLRKLG7UEXAMPLE"},
      "requestParameters":{"sourceIPAddress":"127.0.0.1"},
      "responseElements":{"x-amz-request-id":"C3D13FE58DE4C810",
        "x-amz-id-2":"FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
      "s3":{
        "s3SchemaVersion":"1.0",
        "configurationId":"testConfigRule",
        "bucket":{"name":"mybucket","ownerIdentity":{"principalId":"A3NL1KOZZKExample"},"arn":"arn:aws:s3:::mybucket"},
        "object":{"key":"photos/my+file%C3%A9.jpg","size":1024,"eTag":"d41d8cd98f00b204e9800998ecf8427e",
          "versionId":"096fKKXTRTtl3on89fVO.nfljtsv6qko","sequencer":"0055AED6DCD90281E5"}
      }
    }]}"#;

    const S3_TEST_EVENT: &str = r#"{
      "Service":"Amazon S3",
      "Event":"s3:TestEvent",
      "Time":"2014-10-13T15:57:02.089Z",
      "Bucket":"bucketname",
      "RequestId":"5582815E1AEA5ADF",
      "HostId":"8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"
    }"#;

    fn s3_record(event_name: &str, bucket: &str, key: &str) -> Value {
        json!({
            "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-west-2",
            "eventTime": "2024-03-01T12:00:00.000Z", "eventName": event_name,
            "s3": { "s3SchemaVersion": "1.0", "bucket": { "name": bucket, "arn": format!("arn:aws:s3:::{bucket}") },
                    "object": { "key": key, "sequencer": "0055AED6DCD90281E5" } }
        })
    }

    fn changes_of(body: &str) -> (Vec<Change>, usize) {
        match parse(body.as_bytes()).expect("body should parse") {
            Parsed::Changes { changes, ignored } => (changes, ignored),
            other => panic!("expected Changes, got {other:?}"),
        }
    }

    fn change(container: &str, name: &str, kind: ChangeKind) -> Change {
        Change {
            container: container.into(),
            name: name.into(),
            kind,
            time: None,
        }
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, nanos: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid date")
            + chrono::Duration::nanoseconds(i64::from(nanos))
    }

    #[test]
    fn event_grid_blob_created() {
        let (changes, ignored) = changes_of(EG_CREATED);
        assert_eq!(ignored, 0);
        assert_eq!(
            changes,
            vec![Change {
                time: Some(utc(2017, 6, 26, 18, 41, 0, 958_410_300)),
                ..change("test-container", "new-file.txt", ChangeKind::Created)
            }]
        );
    }

    #[test]
    fn event_grid_blob_deleted() {
        let (changes, ignored) = changes_of(EG_DELETED);
        assert_eq!(ignored, 0);
        assert_eq!(
            changes,
            vec![Change {
                time: Some(utc(2017, 11, 7, 20, 9, 22, 567_400_300)),
                ..change("testcontainer", "file-to-delete.txt", ChangeKind::Deleted)
            }]
        );
    }

    #[test]
    fn event_grid_validation() {
        let parsed = parse(EG_VALIDATION.as_bytes()).expect("validation parses");
        assert_eq!(
            parsed,
            Parsed::Validation {
                code: "512d38b6-c7b8-40c8-89fe-f46f9e9622b6".into()
            }
        );
    }

    #[test]
    fn event_grid_blob_renamed_is_delete_plus_create() {
        let (changes, ignored) = changes_of(EG_RENAMED);
        assert_eq!(ignored, 0);
        let kinds: Vec<_> = changes
            .iter()
            .map(|c| (c.container.as_str(), c.name.as_str(), c.kind.clone()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (
                    "my-file-system",
                    "dir/my originalé.txt",
                    ChangeKind::Deleted
                ),
                ("my-file-system", "my-renamed-file.txt", ChangeKind::Created),
            ]
        );
    }

    #[test]
    fn cloudevents_single_structured() {
        let (changes, ignored) = changes_of(CE_SINGLE);
        assert_eq!(ignored, 0);
        assert_eq!(
            changes,
            vec![Change {
                time: Some(utc(2019, 11, 18, 15, 13, 39, 458_925_400)),
                ..change(
                    "photos",
                    "2019/a blobs/blobs/été 📷.png",
                    ChangeKind::Created
                )
            }]
        );
    }

    #[test]
    fn cloudevents_batch() {
        let (changes, ignored) = changes_of(CE_BATCH);
        assert_eq!(ignored, 1, "BlobTierChanged is ignored");
        let names: Vec<_> = changes
            .iter()
            .map(|c| (c.name.as_str(), c.kind.clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("new-file.txt", ChangeKind::Created),
                ("file-to-delete.txt", ChangeKind::Deleted)
            ]
        );
        assert!(changes.iter().all(|c| c.time.is_some()));
    }

    #[test]
    fn subject_splitting() {
        let ok = |s: &str| split_subject(s).expect("valid subject");
        assert_eq!(
            ok("/blobServices/default/containers/c/blobs/a/b.txt"),
            ("c".into(), "a/b.txt".into())
        );
        assert_eq!(
            ok("/blobServices/default/containers/c/blobs/x/blobs/y"),
            ("c".into(), "x/blobs/y".into())
        );
        assert_eq!(
            ok("/blobServices/default/containers/blobs/blobs/blobs"),
            ("blobs".into(), "blobs".into())
        );
        assert_eq!(
            ok("blobServices/default/containers/c/blobs/日本 語.txt"),
            ("c".into(), "日本 語.txt".into())
        );
        for bad in [
            "",
            "/",
            "/blobServices/default/containers/",
            "/blobServices/default/containers/c",
            "/blobServices/default/containers/c/",
            "/blobServices/default/containers/c/blobs/",
            "/blobServices/default/containers//blobs/x",
            "/blobServices/default/containers/c/files/x",
            "/fileServices/default/shares/s/files/x",
        ] {
            assert!(split_subject(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn s3_put_decodes_key() {
        let (changes, ignored) = changes_of(S3_PUT);
        assert_eq!(ignored, 0);
        assert_eq!(
            changes,
            vec![Change {
                time: Some(utc(1970, 1, 1, 0, 0, 0, 0)),
                ..change("mybucket", "photos/my fileé.jpg", ChangeKind::Created)
            }]
        );
        assert_eq!(decode_s3_key("a%2Bb+c%25d").expect("decodes"), "a+b c%d");
    }

    #[test]
    fn s3_remove_and_other_types() {
        let body = json!({ "Records": [
            s3_record("ObjectRemoved:Delete", "b", "dir/old.txt"),
            s3_record("ObjectRemoved:DeleteMarkerCreated", "b", "dir/versioned.txt"),
            s3_record("ObjectCreated:CompleteMultipartUpload", "b", "big.bin"),
            s3_record("s3:ObjectCreated:Put", "b", "minio.txt"),
            s3_record("ObjectRestore:Completed", "b", "cold.txt"),
        ]});
        let (changes, ignored) = changes_of(&body.to_string());
        assert_eq!(ignored, 1, "restore events are ignored");
        let got: Vec<_> = changes
            .iter()
            .map(|c| (c.name.as_str(), c.kind.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("dir/old.txt", ChangeKind::Deleted),
                ("dir/versioned.txt", ChangeKind::Deleted),
                ("big.bin", ChangeKind::Created),
                ("minio.txt", ChangeKind::Created),
            ]
        );
    }

    #[test]
    fn s3_test_event_is_acknowledged() {
        assert_eq!(changes_of(S3_TEST_EVENT), (Vec::new(), 0));
    }

    #[test]
    fn sns_notification_envelope() {
        let envelope = json!({
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
            "Subject": "Amazon S3 Notification",
            "Message": S3_PUT,
            "Timestamp": "2012-05-02T00:54:06.655Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLEw6JRN...",
            "SigningCertURL": "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "UnsubscribeURL": "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-west-2:123456789012:MyTopic:c9135db0"
        });
        let (changes, ignored) = changes_of(&envelope.to_string());
        assert_eq!(ignored, 0);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes.first().map(|c| c.name.as_str()),
            Some("photos/my fileé.jpg")
        );

        let test_event = json!({ "Type": "Notification", "Message": S3_TEST_EVENT });
        assert_eq!(changes_of(&test_event.to_string()), (Vec::new(), 0));
    }

    #[test]
    fn sns_subscription_confirmation() {
        let url = "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:123456789012:MyTopic&Token=2336412f37";
        let body = json!({
            "Type": "SubscriptionConfirmation",
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": "2336412f37",
            "TopicArn": "arn:aws:sns:us-west-2:123456789012:MyTopic",
            "Message": "You have chosen to subscribe to the topic arn:aws:sns:us-west-2:123456789012:MyTopic.\nTo confirm the subscription, visit the SubscribeURL included in this message.",
            "SubscribeURL": url,
            "Timestamp": "2012-04-26T20:45:04.751Z",
            "SignatureVersion": "1"
        });
        let parsed = parse(body.to_string().as_bytes()).expect("confirmation parses");
        assert_eq!(
            parsed,
            Parsed::SnsConfirmation {
                subscribe_url: url.into()
            }
        );
    }

    #[test]
    fn relative_keys() {
        let c = change("photos", "2024/01/cat.jpg", ChangeKind::Created);
        assert_eq!(
            relative_key(&c, "photos", ""),
            Some("2024/01/cat.jpg".into())
        );
        assert_eq!(
            relative_key(&c, "photos", "2024"),
            Some("01/cat.jpg".into())
        );
        assert_eq!(
            relative_key(&c, "photos", "2024/01"),
            Some("cat.jpg".into())
        );
        assert_eq!(
            relative_key(&c, "photos", "/2024/"),
            Some("01/cat.jpg".into())
        );
        assert_eq!(
            relative_key(&c, "photos", "202"),
            None,
            "prefix must end at a / boundary"
        );
        assert_eq!(relative_key(&c, "photos", "2024/01/cat.jpg"), None);
        assert_eq!(relative_key(&c, "videos", ""), None);
        assert_eq!(relative_key(&c, "Photos", ""), None);
    }

    #[test]
    fn event_keys_are_canonical_as_listings_show_them() {
        assert_eq!(canonical_key("/x.txt").as_deref(), Some("x.txt"));
        assert_eq!(canonical_key("a/b.txt").as_deref(), Some("a/b.txt"));
        for odd in [
            "x.txt/", "dir/", "", "/", "a//b", "a/../b", "./a", "a\nb", "//x",
        ] {
            assert_eq!(canonical_key(odd), None, "{odd:?}");
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let bodies: [&[u8]; 16] = [
            b"",
            b"not json",
            b"{",
            b"\xff\xfe{}",
            b"42",
            b"\"Records\"",
            b"null",
            b"{}",
            b"[1, 2, \"x\"]",
            br#"[{"foo": 1}]"#,
            br#"{"Records": 5}"#,
            br#"{"type": "Microsoft.Storage.BlobCreated"}"#,
            br#"{"Type": "Notification", "Message": "not json"}"#,
            br#"{"Type": "Notification", "Message": "{\"Type\":\"Notification\",\"Message\":\"{}\"}"}"#,
            br#"{"Type": "SubscriptionConfirmation"}"#,
            br#"{"Type": "SomethingElse"}"#,
        ];
        for body in bodies {
            let result = parse(body);
            assert!(
                result.is_err(),
                "{:?} should fail, got {result:?}",
                String::from_utf8_lossy(body)
            );
        }
        let err = parse(b"{}").expect_err("empty object");
        assert!(
            err.to_string()
                .contains("expected an Event Grid or CloudEvents"),
            "{err}"
        );
    }

    #[test]
    fn truncated_bodies_never_panic() {
        let envelope = json!({ "Type": "Notification", "Message": S3_PUT }).to_string();
        for body in [
            EG_CREATED,
            EG_VALIDATION,
            EG_RENAMED,
            CE_SINGLE,
            CE_BATCH,
            S3_PUT,
            S3_TEST_EVENT,
            envelope.as_str(),
        ] {
            for end in 0..body.len() {
                let _ = parse(body.as_bytes().get(..end).unwrap_or_default());
            }
        }
    }

    #[test]
    fn batch_with_bad_events_keeps_good_ones() {
        let good = json!({
            "subject": "/blobServices/default/containers/c/blobs/ok.txt",
            "eventType": "Microsoft.Storage.BlobCreated", "eventTime": "not a time", "id": "1", "data": {}
        });
        let body = json!([
            good,
            { "subject": "/blobServices/default/containers/c", "eventType": "Microsoft.Storage.BlobCreated" },
            { "eventType": "Microsoft.Storage.BlobDeleted" },
            { "eventType": "Microsoft.Storage.BlobRenamed", "subject": "/blobServices/default/containers/c/blobs/n",
              "data": { "sourceUrl": "no-scheme" } },
            { "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {} },
            { "subject": "/blobServices/default/containers/c/blobs/x", "eventType": 7 },
            42,
            null
        ]);
        let (changes, ignored) = changes_of(&body.to_string());
        assert_eq!(
            changes,
            vec![change("c", "ok.txt", ChangeKind::Created)],
            "unparseable time becomes None"
        );
        assert_eq!(ignored, 7);

        let s3 = json!({ "Records": [
            s3_record("ObjectCreated:Put", "b", "fine+name"),
            s3_record("ObjectCreated:Put", "b", "bad%FFutf8"),
            s3_record("ObjectCreated:Put", "", "no-bucket"),
            { "eventName": "ObjectCreated:Put", "s3": { "bucket": { "name": "b" } } },
            "garbage"
        ]});
        let (changes, ignored) = changes_of(&s3.to_string());
        assert_eq!(
            changes.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            vec!["fine name"]
        );
        assert_eq!(ignored, 4);
    }

    #[test]
    fn empty_batches() {
        assert_eq!(changes_of("[]"), (Vec::new(), 0));
        assert_eq!(changes_of(r#"{"Records": []}"#), (Vec::new(), 0));
        assert_eq!(
            changes_of(r#"{"Type": "UnsubscribeConfirmation"}"#),
            (Vec::new(), 1)
        );
    }

    #[test]
    fn cloudevents_origin_handshake() {
        assert_eq!(
            cloudevents_allowed_origin(Some("eventgrid.azure.net")),
            Some("eventgrid.azure.net".into())
        );
        assert_eq!(
            cloudevents_allowed_origin(Some("  eventemitter.example.com ")),
            Some("eventemitter.example.com".into())
        );
        assert_eq!(cloudevents_allowed_origin(None), None);
        assert_eq!(cloudevents_allowed_origin(Some("")), None);
        assert_eq!(cloudevents_allowed_origin(Some("   ")), None);
        assert_eq!(
            cloudevents_allowed_origin(Some("a.example\r\nSet-Cookie: x=1")),
            None
        );
        assert_eq!(cloudevents_allowed_origin(Some("exämple.com")), None);
    }
}
