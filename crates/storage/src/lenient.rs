//! Listing S3 and Azure Blob without giving up on names object_store cannot hold.
//!
//! object_store turns every key of a listing page into a `Path` and fails the whole page
//! (and so the whole listing) on one key with an empty, `.` or `..` segment, such as
//! `b//x`. One such object, which any client can create, would stop every copy and scan
//! of its bucket. So `Store::list` sends the same List request itself, signed with
//! object_store's own authorizers and credentials, and parses it without
//! judging names. Keys no store can address come back as `StorageError::Skipped`, by
//! name, and the keys after them are listed as usual. Every S3 and Azure listing goes
//! through here (so a listing never depends on which page a bad key falls in); the
//! signing options object_store honours for listings (anonymous access, requester
//! pays) are carried over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{BoxStream, StreamExt};
use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::azure::{AzureAuthorizer, AzureCredential};
use object_store::client::{
    CredentialProvider, HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector,
};
use object_store::path::Path;
use object_store::ClientOptions;
use serde::Deserialize;
use url::Url;

use crate::entry::Entry;
use crate::error::{Result, StorageError};
use crate::store::errors::ErrorMapper;

type AwsCreds = Arc<dyn CredentialProvider<Credential = AwsCredential>>;
type AzureCreds = Arc<dyn CredentialProvider<Credential = AzureCredential>>;

/// How to sign a List request for one container.
#[derive(Debug)]
enum Api {
    S3 {
        creds: AwsCreds,
        region: String,
        /// What the store was opened with: anonymous requests (public buckets) and
        /// requester-pays buckets, as object_store would send them.
        unsigned: bool,
        request_payer: bool,
    },
    Azure {
        creds: AzureCreds,
        account: String,
        unsigned: bool,
    },
}

/// How a store's requests are signed, as it was opened.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Signing {
    pub unsigned: bool,
    pub request_payer: bool,
}

/// A lister for one S3 bucket or Azure container, used only after object_store gave up.
#[derive(Debug)]
pub(crate) struct Lenient {
    api: Api,
    /// The container's URL: `https://s3.REGION.amazonaws.com/BUCKET`, `…/CONTAINER`.
    base: Url,
    client: HttpClient,
    retry_timeout: Duration,
}

impl Lenient {
    pub(crate) fn s3(
        creds: AwsCreds,
        region: String,
        signing: Signing,
        base: &str,
        options: &ClientOptions,
        retry_timeout: Duration,
    ) -> Option<Self> {
        let api = Api::S3 {
            creds,
            region,
            unsigned: signing.unsigned,
            request_payer: signing.request_payer,
        };
        Self::new(api, base, options, retry_timeout)
    }

    pub(crate) fn azure(
        creds: AzureCreds,
        account: String,
        signing: Signing,
        base: &str,
        options: &ClientOptions,
        retry_timeout: Duration,
    ) -> Option<Self> {
        let api = Api::Azure {
            creds,
            account,
            unsigned: signing.unsigned,
        };
        Self::new(api, base, options, retry_timeout)
    }

    fn new(api: Api, base: &str, options: &ClientOptions, retry_timeout: Duration) -> Option<Self> {
        Some(Self {
            api,
            base: Url::parse(base).ok()?,
            client: ReqwestConnector::default().connect(options).ok()?,
            retry_timeout,
        })
    }

    /// Lists keys under `prefix` (the full prefix inside the container, with its trailing
    /// `/`, or empty), in key order. Keys come back relative to the prefix, as
    /// `Store::list` gives them. A reply that says "more" without saying where to go on,
    /// or that sends the same continuation twice, ends the listing with an error: a
    /// short listing taken for a whole one would make a sync delete what it missed.
    pub(crate) fn list(
        self: Arc<Self>,
        prefix: String,
        mapper: ErrorMapper,
    ) -> BoxStream<'static, Result<Entry>> {
        struct St {
            token: Option<String>,
            seen: std::collections::HashSet<String>,
        }
        let st = St {
            token: None,
            seen: Default::default(),
        };
        futures::stream::unfold(Some((st, true)), move |state| {
            let (this, prefix, mapper) = (self.clone(), prefix.clone(), mapper.clone());
            async move {
                let (mut st, first) = state?;
                if !first && st.token.is_none() {
                    return None;
                }
                let page = match this.page(&prefix, st.token.as_deref(), &mapper).await {
                    Ok(p) => p,
                    Err(e) => return Some((vec![Err(e)], None)),
                };
                let mut items = page
                    .items
                    .into_iter()
                    .filter_map(|it| judge(it, &prefix, mapper.store()))
                    .collect::<Vec<_>>();
                match page.next {
                    More::Done => st.token = None,
                    More::At(t) if st.seen.insert(t.clone()) => st.token = Some(t),
                    More::At(_) => {
                        items.push(Err(broken_paging(
                            &mapper,
                            "sent the same continuation twice",
                        )));
                        return Some((items, None));
                    }
                    More::Lost => {
                        items.push(Err(broken_paging(
                            &mapper,
                            "said the listing goes on but gave no continuation token",
                        )));
                        return Some((items, None));
                    }
                }
                Some((items, Some((st, false))))
            }
        })
        .flat_map(futures::stream::iter)
        .boxed()
    }

    /// One List request, retried while the endpoint is unreachable or busy.
    async fn page(&self, prefix: &str, token: Option<&str>, mapper: &ErrorMapper) -> Result<Page> {
        let mut url = self.base.clone();
        {
            let mut q = url.query_pairs_mut();
            match &self.api {
                Api::S3 { .. } => {
                    q.append_pair("list-type", "2");
                    if !prefix.is_empty() {
                        q.append_pair("prefix", prefix);
                    }
                    if let Some(t) = token {
                        q.append_pair("continuation-token", t);
                    }
                }
                Api::Azure { .. } => {
                    q.append_pair("restype", "container");
                    q.append_pair("comp", "list");
                    if !prefix.is_empty() {
                        q.append_pair("prefix", prefix);
                    }
                    if let Some(t) = token {
                        q.append_pair("marker", t);
                    }
                }
            }
        }
        let start = Instant::now();
        let deadline = start + self.retry_timeout;
        let mut backoff = Duration::from_millis(100);
        let mut retries = 0u32;
        loop {
            let err = match self.send(&url).await {
                Ok((200, body)) => return self.parse(&body, mapper),
                Ok((status, body)) => {
                    let text = String::from_utf8_lossy(&body).into_owned();
                    mapper.map_status(status, &text)
                }
                Err(e) => mapper.map(e),
            };
            let unreachable = matches!(err, StorageError::Unreachable { .. });
            if !(unreachable || err.is_retryable()) || Instant::now() + backoff > deadline {
                return Err(match err {
                    StorageError::Unreachable { store, detail } if retries > 0 => {
                        StorageError::Unreachable {
                            store,
                            detail: format!(
                                "{detail} (gave up after {retries} retries in {:.1}s)",
                                start.elapsed().as_secs_f64()
                            ),
                        }
                    }
                    e => e,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            retries += 1;
        }
    }

    async fn send(&self, url: &Url) -> std::result::Result<(u16, Bytes), object_store::Error> {
        let generic = |e: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
            store: "list",
            source: e,
        };
        let mut req: HttpRequest = http::Request::builder()
            .method(http::Method::GET)
            .uri(url.as_str())
            .body(HttpRequestBody::empty())
            .map_err(|e| generic(Box::new(e)))?;
        match &self.api {
            Api::S3 { unsigned: true, .. } | Api::Azure { unsigned: true, .. } => {}
            Api::S3 {
                creds,
                region,
                request_payer,
                ..
            } => {
                let cred = creds.get_credential().await?;
                AwsAuthorizer::new(&cred, "s3", region)
                    .with_request_payer(*request_payer)
                    .try_authorize(&mut req, None)?;
            }
            Api::Azure { creds, account, .. } => {
                let cred = creds.get_credential().await?;
                AzureAuthorizer::new(&cred, account).try_authorize(&mut req)?;
            }
        }
        let resp = self
            .client
            .execute(req)
            .await
            .map_err(|e| generic(Box::new(e)))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .bytes()
            .await
            .map_err(|e| generic(Box::new(e)))?;
        Ok((status, body))
    }

    fn parse(&self, body: &[u8], mapper: &ErrorMapper) -> Result<Page> {
        let text = std::str::from_utf8(body).map_err(|e| bad_reply(mapper, e))?;
        match &self.api {
            Api::S3 { .. } => {
                let r: S3List = quick_xml::de::from_str(text).map_err(|e| bad_reply(mapper, e))?;
                let items = r
                    .contents
                    .into_iter()
                    .map(|c| Item {
                        last_modified: DateTime::parse_from_rfc3339(&c.last_modified)
                            .ok()
                            .map(|t| t.with_timezone(&Utc)),
                        key: c.key,
                        size: c.size,
                        e_tag: c.e_tag,
                    })
                    .collect();
                let next = match (r.is_truncated, r.next_continuation_token) {
                    (false, _) => More::Done,
                    (true, Some(t)) if !t.is_empty() => More::At(t),
                    (true, _) => More::Lost,
                };
                Ok(Page { items, next })
            }
            Api::Azure { .. } => {
                let r: AzureList =
                    quick_xml::de::from_str(text).map_err(|e| bad_reply(mapper, e))?;
                let items = r
                    .blobs
                    .blobs
                    .into_iter()
                    .map(|b| Item {
                        key: b.name.decoded(),
                        size: b.properties.content_length,
                        last_modified: DateTime::parse_from_rfc2822(&b.properties.last_modified)
                            .ok()
                            .map(|t| t.with_timezone(&Utc)),
                        e_tag: b.properties.e_tag,
                    })
                    .collect();
                let next = match r.next_marker.filter(|m| !m.is_empty()) {
                    Some(m) => More::At(m),
                    None => More::Done,
                };
                Ok(Page { items, next })
            }
        }
    }
}

fn broken_paging(mapper: &ErrorMapper, what: &str) -> StorageError {
    StorageError::Backend {
        store: mapper.store().to_string(),
        detail: format!(
            "the listing was cut short: the endpoint {what}; nothing is deleted on a partial listing (is it a fully S3-compatible endpoint with ListObjectsV2?)"
        ),
        retryable: false,
    }
}

fn bad_reply(mapper: &ErrorMapper, e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend {
        store: mapper.store().to_string(),
        detail: format!("the listing reply could not be read: {e}"),
        retryable: true,
    }
}

/// Turns one listed object into an entry, or into `Skipped` when object_store could
/// never read, write or delete it. Folder markers (`dir/`, zero bytes, made by consoles
/// and tools to show empty folders) are not objects and are left out; a real empty
/// object `dir` is kept, whatever is listed below `dir/`.
fn judge(it: Item, prefix: &str, store: &str) -> Option<Result<Entry>> {
    if it.size == 0 && it.key.ends_with('/') {
        return None;
    }
    Some(judge_named(it, prefix, store))
}

fn judge_named(it: Item, prefix: &str, store: &str) -> Result<Entry> {
    let rel = it.key.strip_prefix(prefix).unwrap_or(&it.key);
    let skipped = |detail: &str| StorageError::Skipped {
        store: store.to_string(),
        key: rel.escape_debug().to_string(),
        detail: detail.to_string(),
    };
    if it.key.chars().any(char::is_control) {
        // A terminal would act on them when the key is printed, folders cannot hold
        // them, and delete lists are split on newlines.
        return Err(skipped(
            "the name contains a control character; georep does not copy it (shown escaped); rename it",
        ));
    }
    if it.key.starts_with('/') {
        return Err(skipped(
            "a name that starts with '/' cannot be read or copied by georep; rename it",
        ));
    }
    if it.key.ends_with('/') {
        return Err(skipped(
            "a name that ends with '/' and holds data cannot be copied to a folder; rename it",
        ));
    }
    if it.key.is_empty() || Path::parse(&it.key).is_err() {
        return Err(skipped(
            "a name with an empty, '.' or '..' part (such as 'a//b') cannot be read or copied by georep; rename it",
        ));
    }
    let Some(last_modified) = it.last_modified else {
        return Err(skipped(
            "the endpoint gave no readable Last-Modified time for it; skipped",
        ));
    };
    Ok(Entry {
        key: rel.to_string(),
        size: it.size,
        last_modified,
        e_tag: it.e_tag,
    })
}

struct Item {
    key: String,
    size: u64,
    last_modified: Option<DateTime<Utc>>,
    e_tag: Option<String>,
}

/// Where a listing goes after a page.
enum More {
    Done,
    At(String),
    /// "Truncated" with no token: a listing that cannot go on.
    Lost,
}

struct Page {
    items: Vec<Item>,
    next: More,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct S3List {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    contents: Vec<S3Object>,
    #[serde(default)]
    next_continuation_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct S3Object {
    key: String,
    last_modified: String,
    #[serde(default)]
    size: u64,
    #[serde(rename = "ETag", default)]
    e_tag: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AzureList {
    #[serde(default)]
    blobs: AzureBlobs,
    #[serde(default)]
    next_marker: Option<String>,
}

#[derive(Deserialize, Default)]
struct AzureBlobs {
    #[serde(rename = "Blob", default)]
    blobs: Vec<AzureBlob>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AzureBlob {
    name: AzureName,
    properties: AzureProperties,
}

/// A blob name; the service percent-encodes names XML cannot carry and says so.
#[derive(Deserialize)]
struct AzureName {
    #[serde(rename = "@Encoded", default)]
    encoded: Option<String>,
    #[serde(rename = "$text", default)]
    text: String,
}

impl AzureName {
    fn decoded(self) -> String {
        if self.encoded.as_deref() == Some("true") {
            percent_encoding::percent_decode_str(&self.text)
                .decode_utf8_lossy()
                .into_owned()
        } else {
            self.text
        }
    }
}

#[derive(Deserialize)]
struct AzureProperties {
    #[serde(rename = "Last-Modified")]
    last_modified: String,
    #[serde(rename = "Content-Length", default)]
    content_length: u64,
    #[serde(rename = "Etag", default)]
    e_tag: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, size: u64) -> Item {
        Item {
            key: key.into(),
            size,
            last_modified: Some(Utc::now()),
            e_tag: None,
        }
    }

    #[test]
    fn names_object_store_cannot_hold_are_skipped_by_name() {
        for bad in ["b//x", "/x", "a/./b", "a/../b", "data/", "//"] {
            match judge(item(bad, 1), "", "s3://b") {
                Some(Err(StorageError::Skipped { key, .. })) => assert_eq!(key, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
        match judge(item("red\u{1b}[31m", 1), "", "s3://b") {
            Some(Err(StorageError::Skipped { key, detail, .. })) => {
                assert_eq!(key, "red\\u{1b}[31m");
                assert!(detail.contains("control character"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let mut undated = item("x", 1);
        undated.last_modified = None;
        assert!(matches!(
            judge(undated, "", "s3://b"),
            Some(Err(StorageError::Skipped { .. }))
        ));
        assert!(
            judge(item("p/dir/", 0), "p/", "s3://b").is_none(),
            "a marker"
        );
        let e = judge(item("p/dir", 0), "p/", "s3://b").expect("kept");
        assert_eq!(e.expect("an empty object").key, "dir");
        let e = judge(item("p/a b#1", 2), "p/", "s3://b").expect("kept");
        assert_eq!(e.expect("ordinary").key, "a b#1");
    }

    #[test]
    fn list_replies_parse() {
        let s3 = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix></Prefix>
<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>a</Key><LastModified>2026-11-30T10:00:00.000Z</LastModified><ETag>"e1"</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>b//x</Key><LastModified>2026-11-30T10:00:01.000Z</LastModified><ETag>"e2"</ETag><Size>4</Size></Contents>
<NextContinuationToken>tok</NextContinuationToken></ListBucketResult>"#;
        let r: S3List = quick_xml::de::from_str(s3).expect("s3 reply");
        assert_eq!(r.contents.len(), 2);
        assert_eq!(r.contents[1].key, "b//x");
        assert_eq!(r.contents[0].e_tag.as_deref(), Some("\"e1\""));
        assert_eq!(r.next_continuation_token.as_deref(), Some("tok"));
        assert!(r.is_truncated);
        let az = r#"<?xml version="1.0" encoding="utf-8"?>
<EnumerationResults ServiceEndpoint="http://127.0.0.1/devstoreaccount1" ContainerName="c"><Prefix/><Blobs>
<Blob><Name>b//x</Name><Properties><Creation-Time>Mon, 30 Nov 2026 10:00:00 GMT</Creation-Time><Last-Modified>Mon, 30 Nov 2026 10:00:00 GMT</Last-Modified><Etag>0x8D1</Etag><Content-Length>5</Content-Length><BlobType>BlockBlob</BlobType></Properties></Blob>
<Blob><Name Encoded="true">a+b%20c%01</Name><Properties><Last-Modified>Mon, 30 Nov 2026 10:00:00 GMT</Last-Modified><Content-Length>1</Content-Length></Properties></Blob>
</Blobs><NextMarker/></EnumerationResults>"#;
        let r: AzureList = quick_xml::de::from_str(az).expect("azure reply");
        assert_eq!(r.blobs.blobs.len(), 2);
        assert_eq!(r.blobs.blobs[0].properties.content_length, 5);
        assert_eq!(r.next_marker.as_deref(), Some(""));
        let names: Vec<String> = r
            .blobs
            .blobs
            .into_iter()
            .map(|b| b.name.decoded())
            .collect();
        assert_eq!(names, ["b//x", "a+b c\u{1}"]);
    }
}
