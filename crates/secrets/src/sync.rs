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
    let ledger = Ledger::open(&opts.state_dir.join("secrets"), &sync.name, key)?;
    let promoted = ledger.meta(PROMOTED)?;
    let (source, dests) = roles(sync, promoted.as_deref());
    let src = VaultClient::open(vault(topo, &source)?)?;
    let listing = src.list().await?;
    let entries: Vec<Entry> = listing
        .into_iter()
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
    if report.exit_code == 0 || report.errors.is_empty() {
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
}

impl Pass<'_> {
    fn mac(&self, v: &Version) -> String {
        self.key.mac("value", v.value.expose())
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
            return Err(SecretsError::Refused {
                vault: self.src.name().to_string(),
                detail: format!(
                    "'{}': every version is disabled; nothing can be read",
                    e.name
                ),
            });
        }
        let mut versions = Vec::new();
        for m in &readable[readable.len().saturating_sub(n)..] {
            versions.push(self.src.read(&e.name, &m.id).await?);
        }
        if let (Some(a), Some(last)) = (&sv.secret_attrs, versions.last_mut()) {
            let shape = last.attrs.shape;
            last.attrs = a.clone();
            if last.attrs.shape == crate::model::Shape::Text {
                last.attrs.shape = shape;
            }
        }
        let macs: Vec<String> = versions.iter().map(|v| self.mac(v)).collect();
        let Some(newest) = versions.last() else {
            return Ok((Outcome::InSync, 0, String::new()));
        };
        let attrs_mac = self.attrs_mac(newest);
        let mut row = row.unwrap_or_default();
        row.dst_name = dst_name.to_string();
        let origin = (dst_name != name).then_some(name.as_str());

        // The destination as it is, when it may not be as georep left it.
        let mut drift: Option<String> = None;
        match &existing {
            None if !row.carried.is_empty()
                && row.status != "deleted"
                && row.status != "disabled" =>
            {
                drift = Some(format!("deleted at the destination (as '{dst_name}')"));
            }
            None => {}
            // Checked whenever versions are about to be written (not only when the
            // fingerprint moved: Key Vault's has one-second resolution).
            Some(x) => {
                let dv = dst.versions(dst_name).await?;
                if let Some(top) = dv.versions.iter().rev().find(|v| v.readable) {
                    let newest_ours = row.carried.last().is_some_and(|c| c.dst == top.id);
                    if newest_ours {
                        if x.fingerprint != row.dst_fp && row.status == "in_sync" {
                            drift = Some(format!(
                                "attributes or older versions changed at the destination ('{dst_name}', version {})",
                                top.id
                            ));
                        }
                    } else {
                        let got = dst.read(dst_name, &top.id).await?;
                        let m = self.mac(&got);
                        let ours = row.carried.iter().any(|c| c.dst == top.id);
                        if let (false, Some(pos)) = (ours, macs.iter().rposition(|x| *x == m)) {
                            // A write the ledger missed (killed before recording it), or
                            // an equal copy made before georep: taken as carried.
                            let seq = row.carried.last().map_or(1, |c| c.seq + 1);
                            row.carried.push(Carried {
                                seq,
                                src: versions[pos].id.clone(),
                                dst: top.id.clone(),
                                mac: m,
                            });
                        } else {
                            drift = Some(format!(
                                "changed at the destination: the newest version of '{dst_name}' ({}) was not written by this sync",
                                top.id
                            ));
                        }
                    }
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
                }
            }
        }

        // Versions newer than the newest carried one, oldest first.
        let mut start = match row.carried.last() {
            Some(c) => macs.iter().rposition(|m| *m == c.mac).map_or(0, |p| p + 1),
            None => 0,
        };
        if drift.is_some() {
            start = start.min(versions.len() - 1);
        }
        let to_write = &versions[start..];
        if self.dry_run {
            return Ok(if to_write.is_empty() {
                (Outcome::InSync, 0, String::new())
            } else {
                (Outcome::WouldCopy, to_write.len() as u32, String::new())
            });
        }
        let mut written = 0u32;
        for v in to_write {
            let seq = row.carried.last().map_or(1, |c| c.seq + 1);
            let meta = WriteMeta {
                attrs: &v.attrs,
                seq,
                origin,
            };
            let id = dst.write(dst_name, &v.value, &meta).await?;
            row.carried.push(Carried {
                seq,
                src: v.id.clone(),
                dst: id,
                mac: self.mac(v),
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
        row.src_fp = e.fingerprint.clone();
        row.dst_fp = dst
            .entry(dst_name)
            .await?
            .map(|x| x.fingerprint)
            .unwrap_or_default();
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
        let gone: Vec<(String, Row)> = self
            .ledger
            .rows(Some(d))?
            .into_iter()
            .filter(|(_, n, r)| {
                !present.contains(n.as_str())
                    && self.sync.filter.matches(n)
                    && !r.carried.is_empty()
                    && !matches!(r.status.as_str(), "deleted" | "disabled" | "kept")
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
        if self.sync.deletes == SecretDeletes::Keep {
            for (n, mut r) in gone {
                if !self.dry_run {
                    r.status = "kept".into();
                    r.detail = "deleted at the source; kept (deletes = \"keep\")".into();
                    self.ledger.put(d, &n, &r)?;
                }
                out.push(item(
                    &n,
                    Outcome::Kept,
                    "deleted at the source; kept (deletes = \"keep\")".into(),
                ));
            }
            return Ok(out);
        }
        if !self
            .sync
            .max_delete
            .allows(gone.len() as u64, dst_total as u64)
        {
            let why = format!(
                "{} secrets are gone from the source, more than max_delete ({}) of the {dst_total} in '{d}' allows; nothing was removed. If this is meant, raise max_delete for one pass",
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
