//! Listing S3 and Azure Blob without giving up on names object_store cannot hold.
//!
//! object_store turns every key of a listing page into a `Path` and fails the whole page
//! (and so the whole listing) on one key with an empty, `.` or `..` segment, such as
//! `b//x`. One such object, which any client can create, would stop every copy and scan
//! of its bucket. When that happens, `Store::list` carries on here: the same List
//! request, signed with object_store's own authorizers and credentials, parsed without
//! judging names. Keys no store can address come back as `StorageError::Skipped`, by
//! name, and the keys after them are listed as usual.

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

use crate::error::{Result, StorageError};
use crate::store::{Entry, ErrorMapper};

type AwsCreds = Arc<dyn CredentialProvider<Credential = AwsCredential>>;
type AzureCreds = Arc<dyn CredentialProvider<Credential = AzureCredential>>;

/// How to sign a List request for one container.
#[derive(Debug)]
enum Api {
    S3 { creds: AwsCreds, region: String },
    Azure { creds: AzureCreds, account: String },
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
        base: &str,
        options: &ClientOptions,
        retry_timeout: Duration,
    ) -> Option<Self> {
        Self::new(Api::S3 { creds, region }, base, options, retry_timeout)
    }

    pub(crate) fn azure(
        creds: AzureCreds,
        account: String,
        base: &str,
        options: &ClientOptions,
        retry_timeout: Duration,
    ) -> Option<Self> {
        Self::new(Api::Azure { creds, account }, base, options, retry_timeout)
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
    /// `/`, or empty) that sort after `after` (a full key), in key order. Keys come back
    /// relative to the prefix, as `Store::list` gives them.
    pub(crate) fn list_after(
        self: Arc<Self>,
        prefix: String,
        after: Option<String>,
        mapper: ErrorMapper,
    ) -> BoxStream<'static, Result<Entry>> {
        struct St {
            token: Option<String>,
            first: bool,
        }
        let st = St {
            token: None,
            first: true,
        };
        futures::stream::unfold(Some(st), move |st| {
            let (this, prefix, after, mapper) =
                (self.clone(), prefix.clone(), after.clone(), mapper.clone());
            async move {
                let mut st = st?;
                if !st.first && st.token.is_none() {
                    return None;
                }
                st.first = false;
                let page = match this
                    .page(&prefix, after.as_deref(), st.token.as_deref(), &mapper)
                    .await
                {
                    Ok(p) => p,
                    Err(e) => return Some((vec![Err(e)], None)),
                };
                st.token = page.next;
                let items = page
                    .items
                    .into_iter()
                    .filter(|it| after.as_deref().is_none_or(|a| it.key.as_str() > a))
                    .filter_map(|it| judge(it, &prefix, mapper.store()))
                    .collect::<Vec<_>>();
                Some((items, Some(st)))
            }
        })
        .flat_map(futures::stream::iter)
        .boxed()
    }

    /// One List request, retried while the endpoint is unreachable or busy.
    async fn page(
        &self,
        prefix: &str,
        after: Option<&str>,
        token: Option<&str>,
        mapper: &ErrorMapper,
    ) -> Result<Page> {
        let mut url = self.base.clone();
        {
            let mut q = url.query_pairs_mut();
            match &self.api {
                Api::S3 { .. } => {
                    q.append_pair("list-type", "2");
                    if !prefix.is_empty() {
                        q.append_pair("prefix", prefix);
                    }
                    match (token, after) {
                        (Some(t), _) => {
                            q.append_pair("continuation-token", t);
                        }
                        (None, Some(a)) => {
                            q.append_pair("start-after", a);
                        }
                        (None, None) => {}
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
            Api::S3 { creds, region } => {
                let cred = creds.get_credential().await?;
                AwsAuthorizer::new(&cred, "s3", region).try_authorize(&mut req, None)?;
            }
            Api::Azure { creds, account } => {
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
                    .map(|c| {
                        let at = DateTime::parse_from_rfc3339(&c.last_modified)
                            .map_err(|e| bad_reply(mapper, e))?;
                        Ok(Item {
                            key: c.key,
                            size: c.size,
                            last_modified: at.with_timezone(&Utc),
                            e_tag: c.e_tag,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Page {
                    items,
                    next: r
                        .next_continuation_token
                        .filter(|t| r.is_truncated && !t.is_empty()),
                })
            }
            Api::Azure { .. } => {
                let r: AzureList =
                    quick_xml::de::from_str(text).map_err(|e| bad_reply(mapper, e))?;
                let items = r
                    .blobs
                    .blobs
                    .into_iter()
                    .map(|b| {
                        let at = DateTime::parse_from_rfc2822(&b.properties.last_modified)
                            .map_err(|e| bad_reply(mapper, e))?;
                        Ok(Item {
                            key: b.name,
                            size: b.properties.content_length,
                            last_modified: at.with_timezone(&Utc),
                            e_tag: b.properties.e_tag,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Page {
                    items,
                    next: r.next_marker.filter(|m| !m.is_empty()),
                })
            }
        }
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
        key: rel.to_string(),
        detail: detail.to_string(),
    };
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
    let trimmed = it.key.as_str();
    if Path::parse(trimmed).is_err() || trimmed.is_empty() {
        return Err(skipped(
            "a name with an empty, '.' or '..' part (such as 'a//b') cannot be read or copied by georep; rename it",
        ));
    }
    Ok(Entry {
        key: trimmed.strip_prefix(prefix).unwrap_or(trimmed).to_string(),
        size: it.size,
        last_modified: it.last_modified,
        e_tag: it.e_tag,
    })
}

struct Item {
    key: String,
    size: u64,
    last_modified: DateTime<Utc>,
    e_tag: Option<String>,
}

struct Page {
    items: Vec<Item>,
    next: Option<String>,
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
    name: String,
    properties: AzureProperties,
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
            last_modified: Utc::now(),
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
</Blobs><NextMarker/></EnumerationResults>"#;
        let r: AzureList = quick_xml::de::from_str(az).expect("azure reply");
        assert_eq!(r.blobs.blobs.len(), 1);
        assert_eq!(r.blobs.blobs[0].properties.content_length, 5);
        assert_eq!(r.next_marker.as_deref(), Some(""));
    }
}
