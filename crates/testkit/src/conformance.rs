//! One suite of store behaviours, run against every backend (local, memory, Azurite,
//! S3 via moto). Each function panics with a message naming the backend and the check.

use bytes::Bytes;
use futures::TryStreamExt;
use georep_storage::{ObjectReader, Store};
use object_store::{Attribute, Attributes};

use crate::data;

/// What a backend can do; checks that need a capability run only where it exists.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Keeps content-type, cache-control, … and user metadata.
    pub attributes: bool,
}

/// Runs every check against `store`, which must be empty.
pub async fn run_all(store: &Store, caps: Caps) {
    round_trip_awkward_keys(store).await;
    list_is_sorted_and_relative(store).await;
    overwrite_replaces(store).await;
    delete_is_idempotent(store).await;
    multipart_round_trip(store).await;
    missing_key_is_an_error(store).await;
    ranges_read_exactly(store).await;
    if caps.attributes {
        attributes_round_trip(store).await;
    }
}

async fn put(store: &Store, key: &str, data: &[u8], attrs: Attributes) {
    let reader = ObjectReader::from_bytes(Bytes::copy_from_slice(data), attrs);
    store
        .put(key, reader, 5 << 20, 2)
        .await
        .unwrap_or_else(|e| panic!("{}: put {key:?}: {e}", store.name()));
}

async fn get(store: &Store, key: &str) -> (Bytes, Attributes) {
    let r = store
        .get(key, 1 << 20)
        .await
        .unwrap_or_else(|e| panic!("{}: get {key:?}: {e}", store.name()));
    let attrs = r.attributes.clone();
    let bytes = r
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{}: read {key:?}: {e}", store.name()));
    (bytes, attrs)
}

async fn keys(store: &Store) -> Vec<String> {
    store
        .list(georep_storage::ListRole::Destination)
        .map_ok(|e| e.key)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{}: list: {e}", store.name()))
}

/// Content survives byte for byte, whatever the key looks like.
pub async fn round_trip_awkward_keys(store: &Store) {
    for (key, content) in data::awkward_tree() {
        let key = format!("rt/{key}");
        put(store, &key, &content, Attributes::new()).await;
        let (got, _) = get(store, &key).await;
        assert_eq!(
            got.as_ref(),
            content.as_slice(),
            "{}: content of {key:?}",
            store.name()
        );
        let head = store
            .head(&key)
            .await
            .unwrap_or_else(|e| panic!("{}: head {key:?}: {e}", store.name()));
        assert_eq!(
            head.size,
            content.len() as u64,
            "{}: size of {key:?}",
            store.name()
        );
    }
}

/// Listings come in ascending byte order of key, relative to the prefix, with sizes.
pub async fn list_is_sorted_and_relative(store: &Store) {
    let listed: Vec<georep_storage::Entry> = store
        .list(georep_storage::ListRole::Destination)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{}: list: {e}", store.name()));
    let rt: Vec<_> = listed.iter().filter(|e| e.key.starts_with("rt/")).collect();
    let mut want: Vec<String> = data::awkward_tree()
        .iter()
        .map(|(k, _)| format!("rt/{k}"))
        .collect();
    want.sort();
    let got: Vec<String> = rt.iter().map(|e| e.key.clone()).collect();
    assert_eq!(got, want, "{}: listing order and keys", store.name());
    let all: Vec<&String> = listed.iter().map(|e| &e.key).collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "{}: whole listing sorted", store.name());
    for (key, content) in data::awkward_tree() {
        let e = rt
            .iter()
            .find(|e| e.key == format!("rt/{key}"))
            .expect("listed");
        assert_eq!(
            e.size,
            content.len() as u64,
            "{}: listed size of {key}",
            store.name()
        );
    }
}

/// A second put replaces the object whole.
pub async fn overwrite_replaces(store: &Store) {
    put(store, "ow/x", b"first version, longer", Attributes::new()).await;
    put(store, "ow/x", b"second", Attributes::new()).await;
    let (got, _) = get(store, "ow/x").await;
    assert_eq!(got.as_ref(), b"second", "{}: overwrite", store.name());
}

/// Deleting removes the key from listings; deleting again is not an error.
pub async fn delete_is_idempotent(store: &Store) {
    put(store, "del/gone", b"x", Attributes::new()).await;
    store
        .delete("del/gone")
        .await
        .unwrap_or_else(|e| panic!("{}: delete: {e}", store.name()));
    store
        .delete("del/gone")
        .await
        .unwrap_or_else(|e| panic!("{}: second delete: {e}", store.name()));
    assert!(
        !keys(store).await.iter().any(|k| k == "del/gone"),
        "{}: deleted key still listed",
        store.name()
    );
}

/// An object larger than the part size goes up in parts and reads back intact.
pub async fn multipart_round_trip(store: &Store) {
    let content = data::bytes(42, 13 << 20);
    let chunks: Vec<Bytes> = content
        .chunks(1 << 20)
        .map(Bytes::copy_from_slice)
        .collect();
    let reader = ObjectReader {
        size: content.len() as u64,
        last_modified: chrono::Utc::now(),
        e_tag: None,
        attributes: Attributes::new(),
        stream: Box::pin(futures::stream::iter(chunks.into_iter().map(Ok))),
    };
    store
        .put("mp/big.bin", reader, 5 << 20, 2)
        .await
        .unwrap_or_else(|e| panic!("{}: multipart put: {e}", store.name()));
    let (got, _) = get(store, "mp/big.bin").await;
    assert!(
        got.as_ref() == content.as_slice(),
        "{}: multipart content",
        store.name()
    );
}

/// Reading a key that does not exist fails (it must not read as empty).
pub async fn missing_key_is_an_error(store: &Store) {
    assert!(
        store.get("no/such/key", 1 << 20).await.is_err(),
        "{}: get of a missing key",
        store.name()
    );
    assert!(
        store.head("no/such/key").await.is_err(),
        "{}: head of a missing key",
        store.name()
    );
}

/// Content headers and user metadata survive a put/get.
pub async fn attributes_round_trip(store: &Store) {
    let mut attrs = Attributes::new();
    attrs.insert(Attribute::ContentType, "application/x-georep".into());
    attrs.insert(Attribute::ContentEncoding, "gzip".into());
    attrs.insert(Attribute::CacheControl, "max-age=60".into());
    attrs.insert(
        Attribute::ContentDisposition,
        "attachment; filename=\"a.bin\"".into(),
    );
    attrs.insert(Attribute::ContentLanguage, "en-GB".into());
    attrs.insert(Attribute::Metadata("project".into()), "georep".into());
    put(store, "attr/obj", b"payload", attrs.clone()).await;
    let (_, got) = get(store, "attr/obj").await;
    for (k, v) in attrs.iter() {
        assert_eq!(got.get(k), Some(v), "{}: attribute {k:?}", store.name());
    }
}

/// A byte range reads exactly those bytes; a range past the end is an error.
pub async fn ranges_read_exactly(store: &Store) {
    let data = data::bytes(7, 100_000);
    put(store, "ranges/pack", &data, Attributes::new()).await;
    for (a, b) in [
        (0u64, 1u64),
        (0, 100_000),
        (12_345, 67_890),
        (99_999, 100_000),
    ] {
        let got = store
            .get_range("ranges/pack", a..b)
            .await
            .unwrap_or_else(|e| panic!("{}: range {a}..{b}: {e}", store.name()));
        assert_eq!(
            &got[..],
            &data[a as usize..b as usize],
            "{}: range {a}..{b}",
            store.name()
        );
    }
    assert!(
        store
            .get_range("ranges/pack", 99_000..100_001)
            .await
            .is_err(),
        "{}: a range past the end was read",
        store.name()
    );
    store
        .delete("ranges/pack")
        .await
        .unwrap_or_else(|e| panic!("{}: delete: {e}", store.name()));
}
