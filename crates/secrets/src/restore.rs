//! `escrow restore` (a vault rebuilt from a bundle) and `promote` (a destination made
//! the source after the source's region is lost).

use serde::Serialize;

use georep_core::{SecretSync, Topology};

use crate::error::{Result, SecretsError};
use crate::ledger::{Ledger, MacKey};
use crate::names::map_name;
use crate::vault::{VaultClient, WriteMeta};

/// One secret restored (or not).
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub name: String,
    /// `restored`, `in_sync` (already equal), `conflict` (exists with another value;
    /// `--overwrite` replaces it) or `failed`.
    pub outcome: String,
    pub versions: usize,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub sync: String,
    pub bundle: String,
    pub taken: String,
    pub vault: String,
    pub secrets: Vec<Restored>,
    pub exit_code: i32,
}

/// Writes every secret of a bundle (its versions, oldest first) into vault `to`.
pub async fn restore(
    topo: &Topology,
    sync: &SecretSync,
    to: &str,
    identity_file: &str,
    bundle: Option<&str>,
    overwrite: bool,
    mac_key: Option<&MacKey>,
) -> Result<RestoreReport> {
    let esc = sync.escrow.as_ref().ok_or_else(|| {
        SecretsError::Config(format!(
            "secret sync '{}' has no escrow; add escrow = {{ store = ..., recipients = [...] }}",
            sync.name
        ))
    })?;
    let def = topo.vaults.get(to).ok_or_else(|| {
        SecretsError::Config(format!("vault '{to}' is not declared in the topology"))
    })?;
    let store = crate::sync::open_escrow_store(topo, &sync.name, esc)?;
    let (key, opened) = crate::escrow::read(&store, bundle, identity_file, mac_key).await?;
    if mac_key.is_some() && opened.sync != sync.name {
        return Err(SecretsError::Escrow(format!(
            "{key} belongs to secret sync '{}', not '{}'",
            opened.sync, sync.name
        )));
    }
    let dst = VaultClient::open(def)?;
    dst.check().await?;
    let mut report = RestoreReport {
        sync: sync.name.clone(),
        bundle: key,
        taken: opened.taken.clone(),
        vault: to.to_string(),
        secrets: Vec::new(),
        exit_code: 0,
    };
    for held in &opened.secrets {
        let r = restore_one(&dst, &def.url, held, overwrite).await;
        let r = match r {
            Ok(r) => r,
            Err(e) => Restored {
                name: held.name.clone(),
                outcome: "failed".into(),
                versions: 0,
                detail: e.to_string(),
            },
        };
        if r.outcome == "failed" || r.outcome == "conflict" {
            report.exit_code = 1;
        }
        report.secrets.push(r);
    }
    Ok(report)
}

async fn restore_one(
    dst: &VaultClient,
    url: &georep_core::VaultUrl,
    held: &crate::escrow::Held,
    overwrite: bool,
) -> Result<Restored> {
    let name = map_name(url, &held.name).map_err(SecretsError::Config)?;
    let origin = (name != held.name).then_some(held.name.as_str());
    if held.versions.is_empty() {
        return Ok(Restored {
            name: held.name.clone(),
            outcome: "skipped".into(),
            versions: 0,
            detail: "no version in the bundle".into(),
        });
    }
    if dst.entry(&name).await?.is_some() {
        let vs = dst.versions(&name).await?;
        if let Some(top) = vs.versions.iter().rev().find(|v| v.readable) {
            let have = dst.read(&name, &top.id).await?;
            // Already there up to some version (a restore cut short): the rest.
            if let Some(pos) = held.versions.iter().rposition(|v| v.value == have.value) {
                let rest = &held.versions[pos + 1..];
                for (i, v) in rest.iter().enumerate() {
                    let meta = WriteMeta {
                        attrs: &v.attrs,
                        seq: (pos + 2 + i) as u64,
                        origin,
                        after: None,
                    };
                    dst.write(&name, &v.value, &meta).await?;
                }
                return Ok(Restored {
                    name: held.name.clone(),
                    outcome: if rest.is_empty() {
                        "in_sync"
                    } else {
                        "restored"
                    }
                    .into(),
                    versions: rest.len(),
                    detail: String::new(),
                });
            }
            if !overwrite {
                return Ok(Restored {
                    name: held.name.clone(),
                    outcome: "conflict".into(),
                    versions: 0,
                    detail: format!("'{name}' exists with another value; --overwrite writes the bundle's versions over it"),
                });
            }
        }
    }
    for (i, v) in held.versions.iter().enumerate() {
        let meta = WriteMeta {
            attrs: &v.attrs,
            seq: i as u64 + 1,
            origin,
            after: None,
        };
        dst.write(&name, &v.value, &meta).await?;
    }
    Ok(Restored {
        name: held.name.clone(),
        outcome: "restored".into(),
        versions: held.versions.len(),
        detail: String::new(),
    })
}

/// Makes `to` the sync's source (recorded in its ledger): the other destinations and
/// the old source are written from it from the next pass on. `to` equal to the
/// topology's source undoes a promotion.
pub fn promote(
    state_dir: &std::path::Path,
    sync: &SecretSync,
    to: &str,
    key: &MacKey,
) -> Result<(String, Vec<String>)> {
    if to != sync.source && !sync.destinations.iter().any(|d| d == to) {
        return Err(SecretsError::Config(format!(
            "vault '{to}' is neither the source nor a destination of secret sync '{}'; promote one of: {}, {}",
            sync.name,
            sync.source,
            sync.destinations.join(", ")
        )));
    }
    let ledger = Ledger::open(&state_dir.join("secrets"), &sync.name, key, false)?;
    if to == sync.source {
        ledger.clear_meta(crate::sync::PROMOTED)?;
    } else {
        ledger.set_meta(crate::sync::PROMOTED, to)?;
    }
    Ok(crate::sync::roles(sync, Some(to)))
}
