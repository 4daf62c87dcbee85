//! One pass of a secret sync.
//!
//! 1. List the source (names and fingerprints only) and each destination.
//! 2. A secret whose source and destination fingerprints both match the ledger is in
//!    step: nothing more is read (an unchanged pass reads metadata only).
//! 3. Otherwise the source's newest `versions` are read and hashed (HMAC, keyed). The
//!    destination's newest version is checked when it changed since georep's last
//!    write: georep's own (attributes changed: drift), equal to a source version (a
//!    write whose record a crash lost, or an equal copy made before: adopted), or
//!    someone else's (drift: reported and left alone, or overwritten).
//! 4. The source versions newer than the newest one carried are written oldest first,
//!    each recorded the moment the vault accepts it; then attributes; then the
//!    destination's fingerprint.
//! 5. Secrets gone from the source are kept, disabled or deleted (`deletes`), within
//!    `max_delete`.
//! 6. When anything changed at the source, an escrow bundle is written.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use futures::StreamExt;
use georep_core::{OnDrift, SecretDeletes, SecretSync, Topology};

use crate::error::{Result, SecretsError};
use crate::ledger::{Carried, Ledger, MacKey, Row};
use crate::model::{Entry, Version};
use crate::names::{fold, map_name};
use crate::vault::{VaultClient, WriteMeta};

/// Recorded versions kept per secret and destination (for alignment with the source).
const CARRIED_KEPT: usize = 40;
/// The ledger key naming the vault `promote` made the source.
pub const PROMOTED: &str = "promoted";

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where ledgers live (`secrets/` beside the state file).
    pub state_dir: PathBuf,
    pub dry_run: bool,
    /// Accept a changed `GEOREP_SECRETS_KEY` (the recorded hashes are dropped).
    pub rekey: bool,
    /// Secrets worked on at once per destination.
    pub parallel: usize,
}

pub use georep_api::{Outcome, SecretItem as Item, SecretPass as RunReport};

/// The source and destinations now: the topology's, or after `promote`.
pub fn roles(sync: &SecretSync, promoted: Option<&str>) -> (String, Vec<String>) {
    match promoted {
        Some(p) if p != sync.source => {
            let mut d: Vec<String> = sync
                .destinations
                .iter()
                .filter(|d| *d != p)
                .cloned()
                .collect();
            d.push(sync.source.clone());
            (p.to_string(), d)
        }
        _ => (sync.source.clone(), sync.destinations.clone()),
    }
}

fn vault<'a>(topo: &'a Topology, name: &str) -> Result<&'a georep_core::Vault> {
    topo.vaults
        .get(name)
        .ok_or_else(|| SecretsError::Config(format!("vault '{name}' is not declared")))
}

/// The creation time (ms) recorded in a ledger source id (`VAULT:ID@MS`).
fn created_of(src: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let ms: i64 = src.rsplit_once('@')?.1.parse().ok()?;
    chrono::DateTime::from_timestamp_millis(ms)
}

/// The name a source entry is known by across vaults.
fn logical(e: &Entry) -> &str {
    e.origin.as_deref().unwrap_or(&e.name)
}

/// Runs one pass of `sync`.
pub async fn run(
    topo: &Topology,
    sync: &SecretSync,
    key: &MacKey,
    opts: &RunOptions,
) -> Result<RunReport> {
    let ledger = Ledger::open(&opts.state_dir.join("secrets"), &sync.name, key, opts.rekey)?;
    let mut promoted = ledger.meta(PROMOTED)?;
    if let Some(p) = &promoted {
        // A promotion to a vault the topology no longer gives this sync is void.
        if !sync.destinations.contains(p) {
            tracing::warn!(sync = %sync.name, vault = %p, "the promoted vault is no longer a destination of this sync; its promotion is dropped");
            if !opts.dry_run {
                ledger.clear_meta(PROMOTED)?;
            }
            promoted = None;
        }
    }
    let (source, dests) = roles(sync, promoted.as_deref());
    let src = VaultClient::open(vault(topo, &source)?)?;
    let src_url = &vault(topo, &source)?.url;
    let listed_at = chrono::Utc::now();
    let listing = src.list().await?;
    let entries: Vec<Entry> = listing
        .into_iter()
        .map(|mut e| {
            // A `georep-name` tag is believed only when it maps to this very name, so
            // a tag cannot slip a secret past the filter or onto another's name.
            if let Some(o) = &e.origin {
                if crate::names::map_name(src_url, o).as_deref() != Ok(e.name.as_str()) {
                    e.origin = None;
                }
            }
            e
        })
        .filter(|e| sync.filter.matches(logical(e)))
        .collect();
    let mut report = RunReport {
        sync: sync.name.clone(),
        source: source.clone(),
        destinations: dests.clone(),
        promoted: promoted.is_some_and(|p| p != sync.source),
        secrets: entries.len(),
        unchanged: 0,
        items: Vec::new(),
        escrow: None,
        errors: Vec::new(),
        exit_code: 0,
    };
    for (name, why) in src.unexportable().await.unwrap_or_default() {
        if sync.filter.matches(&name) {
            if !opts.dry_run {
                // Kept in the ledger (under the source vault) so status shows it.
                ledger.put(
                    &source,
                    &name,
                    &Row {
                        status: "not_exportable".into(),
                        detail: why.clone(),
                        updated: chrono::Utc::now().to_rfc3339(),
                        ..Row::default()
                    },
                )?;
            }
            report.items.push(Item {
                name,
                destination: "*".into(),
                outcome: Outcome::NotExportable,
                written: 0,
                detail: why,
            });
        }
    }
    let pass = Pass {
        sync,
        key,
        ledger: &ledger,
        src: &src,
        dry_run: opts.dry_run,
        promoted: report.promoted,
        listed_at,
        worst: std::sync::atomic::AtomicI32::new(0),
    };
    for d in &dests {
        let dst = match vault(topo, d).and_then(VaultClient::open) {
            Ok(c) => c,
            Err(e) => {
                report.errors.push(e.to_string());
                report.exit_code = report.exit_code.max(e.exit_code().max(1));
                continue;
            }
        };
        let dst_url = &vault(topo, d)?.url;
        let dst_list = match dst.list().await {
            Ok(l) => l,
            Err(e) => {
                report.errors.push(e.to_string());
                report.exit_code = report.exit_code.max(e.exit_code().max(1));
                continue;
            }
        };
        let at_dst: HashMap<String, Entry> = dst_list
            .into_iter()
            .map(|e| (fold(dst_url, &e.name), e))
            .collect();
        // Names as the destination will have them; two that meet are both refused.
        let mut planned: Vec<(&Entry, String)> = Vec::new();
        let mut taken: HashMap<String, Vec<&str>> = HashMap::new();
        for e in &entries {
            match map_name(dst_url, logical(e)) {
                Ok(n) => {
                    taken.entry(fold(dst_url, &n)).or_default().push(logical(e));
                    planned.push((e, n));
                }
                Err(why) => report.items.push(Item {
                    name: logical(e).to_string(),
                    destination: d.clone(),
                    outcome: Outcome::Failed,
                    written: 0,
                    detail: why,
                }),
            }
        }
        let mut work = Vec::new();
        for (e, n) in planned {
            let same = &taken[&fold(dst_url, &n)];
            if same.len() > 1 {
                report.items.push(Item {
                    name: logical(e).to_string(),
                    destination: d.clone(),
                    outcome: Outcome::Failed,
                    written: 0,
                    detail: format!(
                        "'{}' and '{}' both become '{n}' in vault '{d}' ({} names allow fewer characters{}); rename one or exclude it",
                        same[0],
                        same[1],
                        dst_url.kind(),
                        if dst_url.kind() == "keyvault" { " and ignore case" } else { "" }
                    ),
                });
                continue;
            }
            let existing = at_dst.get(&fold(dst_url, &n)).cloned();
            work.push((e.clone(), n, existing));
        }
        let (p, dst_ref) = (&pass, &dst);
        let results: Vec<(Item, bool)> = futures::stream::iter(work)
            .map(
                |(e, n, existing): (Entry, String, Option<Entry>)| async move {
                    p.one(d, dst_ref, &e, n, existing).await
                },
            )
            .buffer_unordered(opts.parallel.max(1))
            .collect()
            .await;
        for (item, unchanged) in results {
            if unchanged {
                report.unchanged += 1;
            } else {
                report.items.push(item);
            }
        }
        let present: std::collections::HashSet<&str> = entries.iter().map(logical).collect();
        report
            .items
            .extend(pass.removals(d, &dst, &present, at_dst.len()).await?);
    }
    if let (Some(esc), false) = (&sync.escrow, opts.dry_run) {
        match escrow(topo, &pass, esc, &entries, &source).await {
            Ok(k) => report.escrow = k,
            Err(e) => {
                report.errors.push(e.to_string());
                report.exit_code = report.exit_code.max(1);
            }
        }
    }
    report
        .items
        .sort_by(|a, b| (&a.name, &a.destination).cmp(&(&b.name, &b.destination)));
    if report.items.iter().any(|i| i.outcome.is_problem()) {
        report.exit_code = report.exit_code.max(1);
    }
    report.exit_code = report
        .exit_code
        .max(pass.worst.load(std::sync::atomic::Ordering::Relaxed));
    if report.errors.is_empty() && !opts.dry_run {
        ledger.set_meta("last_run", &chrono::Utc::now().to_rfc3339())?;
    }
    Ok(report)
}

/// What every secret of one pass shares.
struct Pass<'a> {
    sync: &'a SecretSync,
    key: &'a MacKey,
    ledger: &'a Ledger,
    src: &'a VaultClient,
    dry_run: bool,
    promoted: bool,
    /// When the source was listed.
    listed_at: chrono::DateTime<chrono::Utc>,
    /// The worst exit code of a per-secret error (3 when credentials were refused or
    /// a vault stopped answering mid-pass).
    worst: std::sync::atomic::AtomicI32,
}

impl Pass<'_> {
    /// A source version's id as the ledger keeps it: with the vault's name, since ids of
    /// two vaults (KV v2's version numbers) can be equal after `promote`.
    fn src_id(&self, v: &crate::model::VersionMeta) -> String {
        match v.created {
            Some(t) => format!("{}:{}@{}", self.src.name(), v.id, t.timestamp_millis()),
            None => format!("{}:{}", self.src.name(), v.id),
        }
    }

    /// Keyed by the secret's name too, so equal values of two secrets (or a value
    /// that comes back) cannot be linked in the ledger.
    fn mac(&self, name: &str, v: &Version) -> String {
        self.key.mac(&format!("value:{name}"), v.value.expose())
    }

    fn attrs_mac(&self, v: &Version) -> String {
        self.key
            .mac("attrs", &serde_json::to_vec(&v.attrs).unwrap_or_default())
    }

    /// One secret at one destination; `true` when it was in step without any read.
    async fn one(
        &self,
        d: &str,
        dst: &VaultClient,
        e: &Entry,
        dst_name: String,
        existing: Option<Entry>,
    ) -> (Item, bool) {
        let name = logical(e).to_string();
        let row = self.ledger.row(d, &name).ok().flatten();
        if let (Some(r), Some(x)) = (&row, &existing) {
            if r.status == "in_sync" && r.src_fp == e.fingerprint && r.dst_fp == x.fingerprint {
                let item = Item {
                    name,
                    destination: d.to_string(),
                    outcome: Outcome::InSync,
                    written: 0,
                    detail: String::new(),
                };
                return (item, true);
            }
        }
        let result = self
            .carry(d, dst, e, &dst_name, existing, row.clone())
            .await;
        let (outcome, written, detail) = match result {
            Ok(x) => x,
            Err(err) => {
                self.worst
                    .fetch_max(err.exit_code(), std::sync::atomic::Ordering::Relaxed);
                let mut r = row.unwrap_or_default();
                r.status = "failed".into();
                r.detail = err.to_string();
                r.dst_name = dst_name.clone();
                r.updated = chrono::Utc::now().to_rfc3339();
                if !self.dry_run {
                    let _ = self.ledger.put(d, &name, &r);
                }
                (Outcome::Failed, 0, err.to_string())
            }
        };
        let item = Item {
            name,
            destination: d.to_string(),
            outcome,
            written,
            detail,
        };
        (item, false)
    }

    async fn carry(
        &self,
        d: &str,
        dst: &VaultClient,
        e: &Entry,
        dst_name: &str,
        existing: Option<Entry>,
        row: Option<Row>,
    ) -> Result<(Outcome, u32, String)> {
        let name = logical(e).to_string();
        let n = self.sync.versions as usize;
        let sv = self.src.versions(&e.name).await?;
        let readable: Vec<_> = sv.versions.iter().filter(|v| v.readable).collect();
        if readable.is_empty() {
            return Ok((
                Outcome::Kept,
                0,
                "every version is disabled at the source; the destination keeps its copy".into(),
            ));
        }
        let mut row = row.unwrap_or_default();
        row.dst_name = dst_name.to_string();
        // Once removed here (deletes), a secret back at the source starts afresh.
        let removed = matches!(row.status.as_str(), "deleted" | "disabled");
        if removed {
            row.carried.clear();
        }
        let mine = format!("{}:", self.src.name());
        let newest_carried = row.carried.last().cloned();
        // Recorded from this source (not before a promote, or its undo).
        let same_source = newest_carried
            .as_ref()
            .is_some_and(|c| c.src.starts_with(&mine));
        // The newest readable source version already carried (its id includes its
        // creation time, so a secret deleted and made again does not match).
        let carried_at = if same_source {
            readable
                .iter()
                .rposition(|v| row.carried.iter().any(|c| c.src == self.src_id(v)))
        } else {
            None
        };
        let window = readable.len().saturating_sub(n);
        // Values are read for the window (hashes align a promoted source by value).
        let mut versions = Vec::new();
        for m in &readable[window..] {
            versions.push(self.src.read(&e.name, &m.id).await?);
        }
        if let (Some(a), Some(last)) = (&sv.secret_attrs, versions.last_mut()) {
            let shape = last.attrs.shape;
            last.attrs = a.clone();
            if last.attrs.shape == crate::model::Shape::Text {
                last.attrs.shape = shape;
            }
        }
        let macs: Vec<String> = versions.iter().map(|v| self.mac(&name, v)).collect();
        let Some(newest) = versions.last() else {
            return Ok((Outcome::InSync, 0, String::new()));
        };
        let attrs_mac = self.attrs_mac(newest);
        let origin = (dst_name != name).then_some(name.as_str());
        let behind = "the source's newest readable version is older than the one carried (disabled, deleted or rolled back at the source); the destination keeps its copy";
        // Index into `versions` of the first one to write.
        let mut start = 0;
        match (&newest_carried, carried_at) {
            (Some(c), Some(p)) if same_source => {
                // The newest carried one is gone and nothing newer came: the source
                // went back. Never rolled back at the destinations: reported.
                if p + 1 == readable.len() && c.src != self.src_id(readable[p]) {
                    return Ok((Outcome::SourceBehind, 0, behind.into()));
                }
                start = (p + 1).max(window).min(readable.len()) - window;
            }
            (Some(c), None) if same_source => {
                let newest_time = readable.last().and_then(|v| v.created);
                if let (Some(was), Some(now)) = (created_of(&c.src), newest_time) {
                    if now < was {
                        return Ok((Outcome::SourceBehind, 0, behind.into()));
                    }
                }
                // More new versions than the window: all of the window.
                start = macs.iter().rposition(|m| *m == c.mac).map_or(0, |p| p + 1);
            }
            // Recorded from another vault (after promote, or its undo): by value.
            (Some(c), _) => {
                start = macs.iter().rposition(|m| *m == c.mac).map_or(0, |p| p + 1);
            }
            (None, _) => {}
        }

        // The destination as it is, when it may not be as georep left it. A secret
        // that comes back after `deletes` removed it here is written afresh.
        let mut drift: Option<String> = None;
        let mut value_drift = false;
        match (&existing, removed) {
            (_, true) => {}
            (None, false) if !row.carried.is_empty() => {
                drift = Some(format!("deleted at the destination (as '{dst_name}')"));
                value_drift = true;
            }
            (None, false) => {}
            // Checked whenever versions are about to be written (not only when the
            // fingerprint moved: Key Vault's has one-second resolution).
            (Some(x), false) => {
                let dv = dst.versions(dst_name).await?;
                if let Some(top) = dv.versions.iter().rev().find(|v| v.readable) {
                    let newest_ours = row.carried.last().is_some_and(|c| c.dst == top.id);
                    if newest_ours {
                        let watched = matches!(row.status.as_str(), "in_sync" | "drifted");
                        // An empty recorded fingerprint was not settled yet: unknown,
                        // not a change.
                        if x.fingerprint != row.dst_fp && watched && !row.dst_fp.is_empty() {
                            // Reported once: the new fingerprint is taken as seen.
                            drift = Some(format!(
                                "attributes or older versions changed at the destination ('{dst_name}', version {})",
                                top.id
                            ));
                            row.dst_fp = x.fingerprint.clone();
                        }
                    } else {
                        let got = dst.read(dst_name, &top.id).await?;
                        let m = self.mac(&name, &got);
                        let ours = row.carried.iter().any(|c| c.dst == top.id);
                        // Adopted: the version georep would write next (or a newer
                        // one) — a write the ledger missed (killed before it was
                        // recorded), or an equal copy made before georep — or the
                        // source's newest (someone made the destination right). An
                        // older value there is someone's rollback: drift.
                        let pos = macs
                            .iter()
                            .rposition(|x| *x == m)
                            .filter(|p| *p >= start || *p + 1 == macs.len());
                        if let (false, Some(pos)) = (ours, pos) {
                            let seq = row.carried.last().map_or(1, |c| c.seq + 1);
                            row.carried.push(Carried {
                                seq,
                                src: self.src_id(readable[window + pos]),
                                dst: top.id.clone(),
                                mac: m,
                            });
                            start = start.max(pos + 1);
                        } else {
                            drift = Some(format!(
                                "changed at the destination: the newest version of '{dst_name}' ({}) was not written by this sync",
                                top.id
                            ));
                            value_drift = true;
                        }
                    }
                } else if !row.carried.is_empty() {
                    drift = Some(format!(
                        "no readable version left at the destination ('{dst_name}')"
                    ));
                    value_drift = true;
                }
            }
        }
        if let Some(why) = &drift {
            match self.sync.on_drift {
                OnDrift::Report => {
                    if !self.dry_run {
                        row.status = "drifted".into();
                        row.detail = why.clone();
                        row.updated = chrono::Utc::now().to_rfc3339();
                        self.ledger.put(d, &name, &row)?;
                    }
                    return Ok((
                        Outcome::Drifted,
                        0,
                        format!("{why}; left alone (on_drift = \"report\")"),
                    ));
                }
                OnDrift::Overwrite => {
                    tracing::warn!(sync = %self.sync.name, secret = %name, vault = d, "{why}; overwriting (on_drift = \"overwrite\")");
                    if value_drift {
                        start = start.min(versions.len() - 1);
                    }
                }
            }
        }
        let first = start.min(versions.len());
        let to_write = &versions[first..];
        if self.dry_run {
            return Ok(if to_write.is_empty() {
                (Outcome::InSync, 0, String::new())
            } else {
                (Outcome::WouldCopy, to_write.len() as u32, String::new())
            });
        }
        let mut written = 0u32;
        // Known while georep writes a secret new to the destination.
        let mut after: Option<String> = (existing.is_none() && !removed).then(String::new);
        for (i, v) in to_write.iter().enumerate() {
            let seq = row.carried.last().map_or(1, |c| c.seq + 1);
            let meta = WriteMeta {
                attrs: &v.attrs,
                seq,
                origin,
                after: after.as_deref(),
            };
            let id = dst.write(dst_name, &v.value, &meta).await?;
            if after.is_some() {
                after = Some(id.clone());
            }
            row.carried.push(Carried {
                seq,
                src: self.src_id(readable[window + first + i]),
                dst: id,
                mac: self.mac(&name, v),
            });
            if row.carried.len() > CARRIED_KEPT {
                row.carried.remove(0);
            }
            written += 1;
            row.status = "pending".into();
            row.detail = String::new();
            row.updated = chrono::Utc::now().to_rfc3339();
            self.ledger.put(d, &name, &row)?;
        }
        let mut outcome = if written > 0 {
            Outcome::Copied
        } else {
            Outcome::InSync
        };
        if let Some(last) = row.carried.last().cloned() {
            if written == 0 && (row.attrs_mac != attrs_mac || drift.is_some()) {
                let meta = WriteMeta {
                    attrs: &newest.attrs,
                    seq: last.seq,
                    origin,
                    after: None,
                };
                dst.set_attrs(dst_name, &last.dst, &meta).await?;
                outcome = Outcome::Updated;
            }
            let keep: Vec<(u64, String)> = row
                .carried
                .iter()
                .rev()
                .take(n)
                .map(|c| (c.seq, c.dst.clone()))
                .collect();
            dst.trim(dst_name, &keep).await?;
        }
        row.attrs_mac = attrs_mac;
        // A fingerprint from a one-second clock that may still move within its second
        // is not recorded: the next pass looks again.
        let settled = |x: &Entry, at: chrono::DateTime<chrono::Utc>| {
            x.coarse
                .is_none_or(|t| t + chrono::Duration::seconds(2) <= at)
        };
        row.src_fp = if settled(e, self.listed_at) {
            e.fingerprint.clone()
        } else {
            String::new()
        };
        row.dst_fp = match dst.entry(dst_name).await? {
            Some(x) if settled(&x, chrono::Utc::now()) => x.fingerprint,
            _ => String::new(),
        };
        row.status = "in_sync".into();
        row.detail = String::new();
        row.updated = chrono::Utc::now().to_rfc3339();
        self.ledger.put(d, &name, &row)?;
        Ok((outcome, written, String::new()))
    }

    /// Secrets the ledger has at `d` that the source no longer lists.
    async fn removals(
        &self,
        d: &str,
        dst: &VaultClient,
        present: &std::collections::HashSet<&str>,
        dst_total: usize,
    ) -> Result<Vec<Item>> {
        let rows = self.ledger.rows(Some(d))?;
        // The guard's whole: the secrets this sync keeps at `d`, not the vault's.
        let managed = rows
            .iter()
            .filter(|(_, _, r)| {
                !r.carried.is_empty() && !matches!(r.status.as_str(), "deleted" | "disabled")
            })
            .count();
        let gone: Vec<(String, Row)> = rows
            .into_iter()
            .filter(|(_, n, r)| {
                !present.contains(n.as_str())
                    && self.sync.filter.matches(n)
                    && !r.carried.is_empty()
                    && !matches!(r.status.as_str(), "deleted" | "disabled")
                    // Kept earlier (deletes = "keep", or while promoted): removed once
                    // the sync would remove it now.
                    && (r.status != "kept"
                        || (!self.promoted && self.sync.deletes != SecretDeletes::Keep))
            })
            .map(|(_, n, r)| (n, r))
            .collect();
        let mut out = Vec::new();
        if gone.is_empty() {
            return Ok(out);
        }
        let item = |name: &str, outcome, detail: String| Item {
            name: name.to_string(),
            destination: d.to_string(),
            outcome,
            written: 0,
            detail,
        };
        // While promoted, a secret missing from the new source may simply never have
        // reached it: nothing is removed until the topology names the new source.
        let keep_why = if self.promoted {
            Some("missing at the promoted source; kept (nothing is removed while a sync is promoted)")
        } else if self.sync.deletes == SecretDeletes::Keep {
            Some("deleted at the source; kept (deletes = \"keep\")")
        } else {
            None
        };
        if let Some(why) = keep_why {
            for (n, mut r) in gone {
                if !self.dry_run {
                    r.status = "kept".into();
                    r.detail = why.into();
                    self.ledger.put(d, &n, &r)?;
                }
                out.push(item(&n, Outcome::Kept, why.into()));
            }
            return Ok(out);
        }
        if dst_total == 0
            || !self
                .sync
                .max_delete
                .allows(gone.len() as u64, managed as u64)
        {
            let why = format!(
                "{} secrets are gone from the source, more than max_delete ({}) of the {managed} this sync keeps in '{d}' allows (or '{d}' lists none); nothing was removed. If this is meant, raise max_delete for one pass",
                gone.len(),
                self.sync.max_delete
            );
            for (n, _) in &gone {
                out.push(item(n, Outcome::Failed, why.clone()));
            }
            return Ok(out);
        }
        for (n, mut r) in gone {
            if self.dry_run {
                out.push(item(&n, Outcome::WouldRemove, String::new()));
                continue;
            }
            let (res, outcome) = match self.sync.deletes {
                SecretDeletes::Disable => (dst.disable(&r.dst_name).await, Outcome::Disabled),
                _ => (dst.delete(&r.dst_name).await, Outcome::Deleted),
            };
            match res {
                Ok(()) | Err(SecretsError::NotFound { .. }) => {
                    r.status = outcome.as_str().into();
                    r.detail = "deleted at the source".into();
                    r.updated = chrono::Utc::now().to_rfc3339();
                    self.ledger.put(d, &n, &r)?;
                    out.push(item(&n, outcome, "deleted at the source".into()));
                }
                Err(e) => out.push(item(&n, Outcome::Failed, e.to_string())),
            }
        }
        Ok(out)
    }
}

/// Writes an escrow bundle when the source changed since the last one.
async fn escrow(
    topo: &Topology,
    pass: &Pass<'_>,
    esc: &georep_core::Escrow,
    entries: &[Entry],
    source: &str,
) -> Result<Option<String>> {
    let mut fps: BTreeMap<&str, &str> = BTreeMap::new();
    for e in entries {
        fps.insert(logical(e), &e.fingerprint);
    }
    let fp = pass
        .key
        .mac("escrow", &serde_json::to_vec(&fps).unwrap_or_default());
    if pass.ledger.meta("escrow_fp")?.as_deref() == Some(fp.as_str()) {
        return Ok(None);
    }
    let store = open_escrow_store(topo, &pass.sync.name, esc)?;
    let n = pass.sync.versions as usize;
    let mut held = Vec::new();
    for e in entries {
        let sv = pass.src.versions(&e.name).await?;
        let readable: Vec<_> = sv.versions.iter().filter(|v| v.readable).collect();
        let mut versions = Vec::new();
        for m in &readable[readable.len().saturating_sub(n)..] {
            versions.push(pass.src.read(&e.name, &m.id).await?);
        }
        if let (Some(a), Some(last)) = (&sv.secret_attrs, versions.last_mut()) {
            let shape = last.attrs.shape;
            last.attrs = a.clone();
            last.attrs.shape = shape;
        }
        held.push(crate::escrow::Held {
            name: logical(e).to_string(),
            versions,
        });
    }
    let key = crate::escrow::write(
        &store,
        &esc.recipients,
        esc.keep,
        &pass.sync.name,
        source,
        &held,
        pass.key,
    )
    .await?;
    pass.ledger.set_meta("escrow_fp", &fp)?;
    pass.ledger.set_meta("escrow_key", &key)?;
    pass.ledger
        .set_meta("escrow_at", &chrono::Utc::now().to_rfc3339())?;
    Ok(Some(key))
}

/// The store a sync's bundles go to: the escrow store's folder named after the sync.
pub fn open_escrow_store(
    topo: &Topology,
    sync: &str,
    esc: &georep_core::Escrow,
) -> Result<georep_storage::Store> {
    let def = topo.store(&esc.store).ok_or_else(|| {
        SecretsError::Config(format!("escrow store '{}' is not declared", esc.store))
    })?;
    let url = def
        .url
        .join(sync)
        .map_err(|e| SecretsError::Config(format!("escrow store '{}': {e}", esc.store)))?;
    georep_storage::Store::open(&url, &georep_storage::StoreOptions::default())
        .map_err(|e| SecretsError::Escrow(format!("escrow store '{}': {e}", esc.store)))
}
