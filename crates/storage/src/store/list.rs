//! Listing a store in ascending byte order of key: local folders by georep's walk, S3 and
//! Azure through georep's own List request, the rest through object_store with folder
//! markers dropped.

use futures::stream::{BoxStream, StreamExt, TryStreamExt};

use super::{Backend, Store};
use crate::entry::{Entry, ListRole};
use crate::error::Result;
use crate::local;

impl Store {
    /// Lists every object under the prefix in ascending byte order of key.
    pub fn list(&self, role: ListRole) -> BoxStream<'static, Result<Entry>> {
        match &self.backend {
            Backend::Local { root, links } => {
                local::list_sorted(root.clone(), self.shown.clone(), role, *links)
            }
            Backend::Remote {
                lenient: Some(l),
                prefix,
                ..
            } => {
                let full = prefix
                    .as_ref()
                    .map(|p| format!("{}/", p.as_ref()))
                    .unwrap_or_default();
                l.clone().list(full, self.error_mapper())
            }
            Backend::Remote { os, prefix, .. } => {
                let strip = prefix.as_ref().map(|p| format!("{}/", p.as_ref()));
                let this = self.error_mapper();
                let entries = os
                    .list(prefix.as_ref())
                    .map_err(move |e| this.map(e))
                    .try_filter_map(move |meta| {
                        let full = meta.location.as_ref();
                        let key = match &strip {
                            Some(s) => full.strip_prefix(s.as_str()).map(str::to_string),
                            None => Some(full.to_string()),
                        };
                        futures::future::ready(Ok(key.map(|key| Entry {
                            key,
                            size: meta.size,
                            last_modified: meta.last_modified,
                            e_tag: meta.e_tag,
                        })))
                    });
                drop_folder_markers(entries.boxed())
            }
        }
    }
}

/// For stores listed through object_store (GCS, S3 Express): drops "folder markers",
/// zero-byte objects named `dir/`, which object_store
/// lists as `dir` (it strips the trailing slash). A zero-byte entry is a marker when the
/// next key is the same name (a real `dir` object listed before its marker) or lies
/// below it (`dir/...`). A lone empty marker stays, and reads as gone when copied.
fn drop_folder_markers(
    entries: BoxStream<'static, Result<Entry>>,
) -> BoxStream<'static, Result<Entry>> {
    struct St {
        /// A zero-byte entry waiting for the next key to tell whether it is a marker.
        held: Option<Entry>,
        last: Option<String>,
    }
    let marker_of = |held: &Entry, next: &str| key_within(next, &held.key);
    entries
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .scan(
            St {
                held: None,
                last: None,
            },
            move |st, item| {
                let mut out: Vec<Result<Entry>> = Vec::new();
                match item {
                    None => out.extend(st.held.take().map(Ok)),
                    Some(Err(e)) => {
                        out.extend(st.held.take().map(Ok));
                        out.push(Err(e));
                    }
                    Some(Ok(e)) => {
                        if let Some(h) = st.held.take() {
                            if !marker_of(&h, &e.key) {
                                out.push(Ok(h));
                            }
                        }
                        if e.size == 0 && st.last.as_deref() == Some(e.key.as_str()) {
                            // The marker of a real object of the same name: already listed.
                        } else {
                            st.last = Some(e.key.clone());
                            if e.size == 0 {
                                st.held = Some(e);
                            } else {
                                out.push(Ok(e));
                            }
                        }
                    }
                }
                futures::future::ready(Some(futures::stream::iter(out)))
            },
        )
        .flatten()
        .boxed()
}

/// Whether `key` is `prefix` itself or a key below it (`prefix/...`), as folders nest.
pub fn key_within(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}
