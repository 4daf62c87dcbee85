//! Checking bytes: the stream wrapper that verifies size and MD5 before a copy is
//! committed, content comparison by BLAKE3, and reading MD5s out of ETags.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use md5::{Digest, Md5};

use super::Ctx;
use crate::error::{Result, StorageError};
use crate::store::Store;

/// Wraps a source stream: counts and hashes bytes, applies `--bwlimit`, and ends with an
/// error (so the write is abandoned, never committed) if size or MD5 do not match.
pub(super) fn verify_stream(
    inner: BoxStream<'static, Result<Bytes>>,
    key: String,
    size: u64,
    src_md5: Option<[u8; 16]>,
    want_md5: bool,
    computed: Arc<Mutex<Option<[u8; 16]>>>,
    ctx: &Ctx,
) -> BoxStream<'static, Result<Bytes>> {
    struct St {
        inner: BoxStream<'static, Result<Bytes>>,
        seen: u64,
        md5: Option<Md5>,
        done: bool,
    }
    let progress = ctx.progress.clone();
    let limiter = ctx.limiter.clone();
    let st = St {
        inner,
        seen: 0,
        md5: want_md5.then(Md5::new),
        done: false,
    };
    stream::unfold(st, move |mut st| {
        let key = key.clone();
        let computed = computed.clone();
        let progress = progress.clone();
        let limiter = limiter.clone();
        async move {
            if st.done {
                return None;
            }
            match st.inner.next().await {
                Some(Ok(chunk)) => {
                    st.seen += chunk.len() as u64;
                    if let Some(h) = st.md5.as_mut() {
                        h.update(&chunk);
                    }
                    if let Some(l) = &limiter {
                        l.acquire(chunk.len() as u64).await;
                    }
                    progress.bytes_done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    Some((Ok(chunk), st))
                }
                Some(Err(e)) => {
                    st.done = true;
                    Some((Err(e), st))
                }
                None => {
                    st.done = true;
                    if st.seen != size {
                        let e = StorageError::Verify(format!(
                            "{key}: read {} bytes, expected {size}; the source changed during the copy",
                            st.seen
                        ));
                        return Some((Err(e), st));
                    }
                    let digest: Option<[u8; 16]> = st.md5.take().map(|h| h.finalize().into());
                    if let (Some(d), Some(want)) = (digest, src_md5) {
                        if d != want {
                            let e = StorageError::Verify(format!(
                                "{key}: MD5 of the bytes read {} differs from the source ETag {}",
                                hex(&d),
                                hex(&want)
                            ));
                            return Some((Err(e), st));
                        }
                    }
                    if let Ok(mut g) = computed.lock() {
                        *g = digest;
                    }
                    None
                }
            }
        }
    })
    .boxed()
}

/// Whether an object has the same bytes at both ends (BLAKE3 of each, streamed).
pub(super) async fn same_content(ctx: &Ctx, key: &str) -> Result<bool> {
    let Ok(_permit) = ctx.checkers.acquire().await else {
        return Err(StorageError::Verify("engine shut down".into()));
    };
    let (a, b) = tokio::join!(hash_object(&ctx.src, key), hash_object(&ctx.dst, key));
    Ok(a? == b?)
}

async fn hash_object(store: &Store, key: &str) -> Result<blake3::Hash> {
    let mut reader = store.get(key, 1 << 20).await?;
    let mut hasher = blake3::Hasher::new();
    while let Some(chunk) = reader.stream.next().await {
        hasher.update(&chunk?);
    }
    Ok(hasher.finalize())
}

pub(super) fn md5_of_etag(etag: &str) -> Option<[u8; 16]> {
    let t = etag.trim_matches('"');
    if t.len() != 32 {
        return None; // multipart or opaque ETag
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(t.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{JobOptions, Progress};
    use georep_core::StoreUrl;
    use tokio::sync::Semaphore;

    fn ctx() -> Ctx {
        let open = |u: &str| {
            Arc::new(
                Store::open(&StoreUrl::parse(u).expect("url"), &Default::default())
                    .expect("memory store"),
            )
        };
        Ctx {
            src: open("memory://verify-src"),
            dst: open("memory://verify-dst"),
            opts: JobOptions::default(),
            limiter: None,
            transfers: Semaphore::new(1),
            checkers: Semaphore::new(1),
            progress: Arc::new(Progress::default()),
        }
    }

    async fn drain(s: BoxStream<'static, Result<Bytes>>) -> Vec<Result<Bytes>> {
        s.collect().await
    }

    fn chunks(parts: &[&'static [u8]]) -> BoxStream<'static, Result<Bytes>> {
        let v: Vec<Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        stream::iter(v).boxed()
    }

    #[tokio::test]
    async fn verify_stream_fails_on_short_or_long_reads() {
        let ctx = ctx();
        for (parts, size) in [
            (&[b"abc" as &[u8]][..], 4u64),
            (&[b"abc" as &[u8], b"de"][..], 4),
        ] {
            let slot = Arc::new(Mutex::new(None));
            let out = drain(verify_stream(
                chunks(parts),
                "k".into(),
                size,
                None,
                false,
                slot,
                &ctx,
            ))
            .await;
            let last = out.last().expect("some item");
            assert!(
                matches!(last, Err(StorageError::Verify(_))),
                "size {size}: {out:?}"
            );
        }
    }

    #[tokio::test]
    async fn verify_stream_checks_md5_against_the_source_etag() {
        let ctx = ctx();
        let good: [u8; 16] = Md5::digest(b"hello").into();
        let slot = Arc::new(Mutex::new(None));
        let out = drain(verify_stream(
            chunks(&[b"hel", b"lo"]),
            "k".into(),
            5,
            Some(good),
            true,
            slot.clone(),
            &ctx,
        ))
        .await;
        assert!(out.iter().all(|r| r.is_ok()), "{out:?}");
        assert_eq!(
            *slot.lock().expect("lock"),
            Some(good),
            "digest handed to the put check"
        );
        let bad: [u8; 16] = Md5::digest(b"HELLO").into();
        let out = drain(verify_stream(
            chunks(&[b"hello"]),
            "k".into(),
            5,
            Some(bad),
            true,
            Arc::new(Mutex::new(None)),
            &ctx,
        ))
        .await;
        assert!(
            matches!(out.last(), Some(Err(StorageError::Verify(m))) if m.contains("MD5")),
            "{out:?}"
        );
    }

    #[test]
    fn etag_parsing() {
        assert!(md5_of_etag("\"5d41402abc4b2a76b9719d911017c592\"").is_some());
        assert!(md5_of_etag("\"5d41402abc4b2a76b9719d911017c592-3\"").is_none());
        assert!(md5_of_etag("0x8DC1234").is_none());
    }
}
