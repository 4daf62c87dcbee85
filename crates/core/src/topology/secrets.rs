//! Reads `[vaults.NAME]` (secret vaults in regions: Key Vault, Secrets Manager, Vault
//! or OpenBao KV v2) and `[[secret_syncs]]` (secrets kept in step from one vault to
//! others, with an encrypted escrow copy in a store). Checked field by field, so every
//! bad value is reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use super::read::{valid_name, Ctx, Section, NAME_RULE};
use super::relays::{missing, secret, word};
use crate::{Filter, MaxDelete, VaultUrl};

const VAULT_FIELDS: &[&str] = &["region", "url", "token", "token_file", "namespace"];
const SYNC_FIELDS: &[&str] = &[
    "name",
    "source",
    "destinations",
    "include",
    "exclude",
    "versions",
    "deletes",
    "on_drift",
    "interval",
    "max_delete",
    "escrow",
];
const ESCROW_FIELDS: &[&str] = &["store", "recipients", "keep"];

/// A secret vault in a region.
#[derive(Clone, PartialEq, Serialize)]
pub struct Vault {
    pub name: String,
    pub region: String,
    #[serde(serialize_with = "super::display")]
    pub url: VaultUrl,
    /// Vault/OpenBao: the token, after `${NAME}` expansion. Never serialized.
    #[serde(skip)]
    pub token: Option<String>,
    /// Vault/OpenBao: a file the token is read from at each use (a Vault Agent sink),
    /// so a renewed token is picked up.
    pub token_file: Option<PathBuf>,
    /// Vault Enterprise/OpenBao namespace (`X-Vault-Namespace`).
    pub namespace: Option<String>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("url", &self.url.to_string())
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("token_file", &self.token_file)
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// What a sync does at a destination when a secret disappears from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretDeletes {
    /// Nothing: the safe default for disaster recovery.
    Keep,
    /// The destination's copy stays but is disabled (Key Vault: `enabled=false`;
    /// Secrets Manager: tagged and scheduled for deletion with the longest recovery
    /// window; KV v2: its latest version soft-deleted, undeletable).
    Disable,
    /// Deleted too, recoverably where the vault allows it (Key Vault soft delete,
    /// Secrets Manager's recovery window, KV v2 versions soft-deleted), within
    /// `max_delete`.
    Propagate,
}

/// What a sync does when a destination's copy was changed by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDrift {
    /// Report it (status `drifted`, exit 1) and leave the destination alone.
    Report,
    /// Write the source's versions over it.
    Overwrite,
}

/// An offline copy of a sync's secrets: age-encrypted bundles in a store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Escrow {
    /// A store from `[stores]`, in another region than the sync's source.
    pub store: String,
    /// age X25519 recipients (`age1...`); any one of their identities decrypts.
    pub recipients: Vec<String>,
    /// How many bundles to keep (the newest).
    pub keep: u32,
}

/// Secrets kept in step from one vault to others.
#[derive(Debug, Clone, Serialize)]
pub struct SecretSync {
    pub name: String,
    pub source: String,
    pub destinations: Vec<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    #[serde(skip)]
    pub filter: Filter,
    /// How many of each secret's newest versions are carried, oldest first.
    pub versions: u32,
    pub deletes: SecretDeletes,
    pub on_drift: OnDrift,
    #[serde(serialize_with = "super::duration")]
    pub interval: Duration,
    /// The most destination secrets one pass may delete or disable.
    #[serde(serialize_with = "super::display")]
    pub max_delete: MaxDelete,
    pub escrow: Option<Escrow>,
}

impl PartialEq for SecretSync {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name
            && self.source == o.source
            && self.destinations == o.destinations
            && self.include == o.include
            && self.exclude == o.exclude
            && self.versions == o.versions
            && self.deletes == o.deletes
            && self.on_drift == o.on_drift
            && self.interval == o.interval
            && self.max_delete == o.max_delete
            && self.escrow == o.escrow
    }
}

impl SecretSync {
    pub const DEFAULT_VERSIONS: u32 = 2;
    /// Secrets Manager keeps a version only while a staging label points at it, and a
    /// secret takes about 20 labels: one per carried version plus AWSCURRENT and
    /// AWSPREVIOUS.
    pub const MAX_VERSIONS: u32 = 18;
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
    pub const DEFAULT_MAX_DELETE: MaxDelete = MaxDelete::Percent(10.0);
    pub const DEFAULT_ESCROW_KEEP: u32 = 30;
}

pub(super) struct DraftVault {
    pub(super) what: String,
    pub(super) region: Option<Spanned<String>>,
    url: Option<VaultUrl>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    namespace: Option<String>,
    /// `token` was written (even if it could not be expanded).
    token_given: bool,
}

pub(super) struct DraftSync {
    pub(super) what: String,
    pub(super) span: super::read::Span,
    pub(super) name: Option<Spanned<String>>,
    pub(super) source: Option<Spanned<String>>,
    pub(super) destinations: Vec<Spanned<String>>,
    include: Vec<String>,
    exclude: Vec<String>,
    filter: Option<Filter>,
    versions: u32,
    deletes: SecretDeletes,
    on_drift: OnDrift,
    interval: Duration,
    max_delete: MaxDelete,
    pub(super) escrow: Option<(Spanned<String>, Vec<String>, u32)>,
    escrow_ok: bool,
}

impl DraftVault {
    pub(super) fn finish(self, name: String) -> Option<Vault> {
        Some(Vault {
            name,
            region: self.region?.into_inner(),
            url: self.url?,
            token: self.token,
            token_file: self.token_file,
            namespace: self.namespace,
        })
    }
}

impl DraftSync {
    pub(super) fn finish(self) -> Option<SecretSync> {
        if !self.escrow_ok {
            return None;
        }
        Some(SecretSync {
            name: self.name?.into_inner(),
            source: self.source?.into_inner(),
            destinations: self
                .destinations
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
            include: self.include,
            exclude: self.exclude,
            filter: self.filter?,
            versions: self.versions,
            deletes: self.deletes,
            on_drift: self.on_drift,
            interval: self.interval,
            max_delete: self.max_delete,
            escrow: self.escrow.map(|(store, recipients, keep)| Escrow {
                store: store.into_inner(),
                recipients,
                keep,
            }),
        })
    }
}

pub(super) fn vaults(
    ctx: &mut Ctx<'_>,
    top: &Section<'_, '_>,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<String, DraftVault> {
    let example =
        "[vaults.NAME] with region = \"REGION\" and url = \"https://NAME.vault.azure.net\"";
    let mut out = BTreeMap::new();
    for (name, sec) in super::sections::named_tables(ctx, top, "vaults", "vault", example) {
        let mut v = DraftVault {
            what: format!("vault '{}'", name.get_ref()),
            region: None,
            url: None,
            token: None,
            token_file: None,
            namespace: None,
            token_given: false,
        };
        if let Some(sec) = sec {
            sec.check_keys(ctx, "field", VAULT_FIELDS);
            v.region = sec.string(ctx, "region", "\"qatar-central\"");
            missing(
                ctx,
                &sec,
                "region",
                "add region = \"NAME\" naming one of the [regions.NAME] tables",
            );
            if let Some(raw) = sec.string(ctx, "url", "\"https://kv-qc.vault.azure.net\"") {
                if let Some(text) = super::read::expand_field(ctx, &sec.what, "url", &raw, env) {
                    match VaultUrl::parse(&text) {
                        Ok(u) => v.url = Some(u),
                        Err(e) => ctx.error(Some(raw.span()), &sec.what, format!("url: {e}")),
                    }
                }
            }
            missing(ctx, &sec, "url", "add url = \"https://NAME.vault.azure.net\", \"aws-sm://REGION\" or \"vault://HOST:PORT/MOUNT\"");
            v.token = secret(ctx, &sec, "token", env);
            v.token_given = sec.get("token").is_some();
            v.token_file = sec
                .string(ctx, "token_file", "\"/run/vault-agent/token\"")
                .map(|p| super::resolve(base_dir, Path::new(p.get_ref().trim())));
            v.namespace = sec
                .string(ctx, "namespace", "\"team-a\"")
                .map(Spanned::into_inner);
            let is_kv = matches!(v.url, Some(VaultUrl::Kv { .. }));
            for key in ["token", "token_file", "namespace"] {
                if let (Some(value), Some(u)) = (sec.get(key), &v.url) {
                    if !is_kv {
                        ctx.error(
                            Some(value.span()),
                            &sec.what,
                            format!("`{key}` is for Vault/OpenBao; a {} vault takes its credentials from the environment ({})", u.kind(), credentials_hint(u)),
                        );
                    }
                }
            }
            if let (Some(t), Some(_)) = (sec.get("token"), sec.get("token_file")) {
                ctx.error(
                    Some(t.span()),
                    &sec.what,
                    "give `token` or `token_file`, not both",
                );
            }
        }
        out.insert(name.into_inner(), v);
    }
    out
}

fn credentials_hint(u: &VaultUrl) -> &'static str {
    match u {
        VaultUrl::KeyVault { .. } => {
            "AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or a managed identity"
        }
        VaultUrl::SecretsManager { .. } => "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        VaultUrl::Kv { .. } => "VAULT_TOKEN or BAO_TOKEN",
    }
}

pub(super) fn syncs(ctx: &mut Ctx<'_>, top: &Section<'_, '_>) -> Vec<DraftSync> {
    super::read::named_tables(ctx, top, "secret_syncs", "secret sync", "\"app-secrets\"")
        .into_iter()
        .map(|(sec, name)| sync(ctx, &sec, name))
        .collect()
}

fn sync(ctx: &mut Ctx<'_>, sec: &Section<'_, '_>, name: Option<Spanned<String>>) -> DraftSync {
    let what = sec.what.clone();
    sec.check_keys(ctx, "field", SYNC_FIELDS);
    if let Some(n) = &name {
        if !valid_name(n.get_ref()) {
            ctx.error(
                Some(n.span()),
                &what,
                format!("invalid secret sync name: {NAME_RULE}"),
            );
        }
    }
    missing(
        ctx,
        sec,
        "name",
        "add name = \"NAME\" (it names the sync in the CLI, API and metrics)",
    );
    let source = sec.string(ctx, "source", "\"bao-dc1\"");
    missing(
        ctx,
        sec,
        "source",
        "add source = \"VAULT\" naming the [vaults.VAULT] secrets are read from",
    );
    let destinations = match sec.strings(ctx, "destinations", "[\"kv-qc\", \"sm-me\"]") {
        Some(list) if list.get_ref().is_empty() => {
            ctx.error(
                Some(list.span()),
                &what,
                "destinations is empty; name at least one vault",
            );
            Vec::new()
        }
        Some(list) => list.into_inner(),
        None => Vec::new(),
    };
    missing(
        ctx,
        sec,
        "destinations",
        "add destinations = [\"VAULT\", ...] naming where secrets are written",
    );
    let (include, exclude, filter) = super::policies::globs(ctx, sec, &what);
    let versions = super::relays::bounded(
        ctx,
        sec,
        ("versions", "2", "versions"),
        1..=SecretSync::MAX_VERSIONS,
        SecretSync::DEFAULT_VERSIONS,
    );
    let deletes = word(
        ctx,
        sec,
        "deletes",
        &[
            ("keep", SecretDeletes::Keep),
            ("disable", SecretDeletes::Disable),
            ("propagate", SecretDeletes::Propagate),
        ],
    )
    .unwrap_or(SecretDeletes::Keep);
    let on_drift = word(
        ctx,
        sec,
        "on_drift",
        &[
            ("report", OnDrift::Report),
            ("overwrite", OnDrift::Overwrite),
        ],
    )
    .unwrap_or(OnDrift::Report);
    let interval =
        super::policies::duration(ctx, sec, "interval", "\"5m\"", Duration::from_secs(1))
            .unwrap_or(SecretSync::DEFAULT_INTERVAL);
    let max_delete =
        super::policies::max_delete(ctx, sec, &what).unwrap_or(SecretSync::DEFAULT_MAX_DELETE);
    let (escrow, escrow_ok) = escrow(ctx, sec);
    DraftSync {
        what,
        span: sec.span.clone(),
        name,
        source,
        destinations,
        include,
        exclude,
        filter,
        versions,
        deletes,
        on_drift,
        interval,
        max_delete,
        escrow,
        escrow_ok,
    }
}

/// Whether `r` looks like an age X25519 recipient: `age1` and 58 bech32 characters.
fn age_recipient(r: &str) -> bool {
    const BECH32: &str = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    r.len() == 62 && r.starts_with("age1") && r[4..].chars().all(|c| BECH32.contains(c))
}

/// `escrow = { store = "NAME", recipients = ["age1..."], keep = 30 }`.
#[allow(clippy::type_complexity)]
fn escrow(
    ctx: &mut Ctx<'_>,
    sec: &Section<'_, '_>,
) -> (Option<(Spanned<String>, Vec<String>, u32)>, bool) {
    let example = "escrow = { store = \"escrow-we\", recipients = [\"age1...\"] }";
    let Some(value) = sec.get("escrow") else {
        return (None, true);
    };
    let what = format!("{} escrow", sec.what);
    let Some(t) = Section::new(ctx, value, what, example) else {
        return (None, false);
    };
    t.check_keys(ctx, "field", ESCROW_FIELDS);
    let store = t.string(ctx, "store", "\"escrow-we\"");
    missing(
        ctx,
        &t,
        "store",
        &format!("add {example}: the store the encrypted bundles go to"),
    );
    let mut ok = true;
    let mut recipients = Vec::new();
    match t.strings(ctx, "recipients", "[\"age1...\"]") {
        Some(list) if list.get_ref().is_empty() => {
            ok = false;
            ctx.error(Some(list.span()), &t.what, "recipients is empty; give at least one age public key (age-keygen -y KEYFILE prints it)");
        }
        Some(list) => {
            for r in list.into_inner() {
                let text = r.get_ref().trim().to_string();
                if !age_recipient(&text) {
                    ok = false;
                    ctx.error(Some(r.span()), &t.what, format!("'{text}' is not an age X25519 public key (age1 followed by 58 characters); make a key pair with age-keygen and give the public key it prints"));
                } else if recipients.contains(&text) {
                    ctx.error(
                        Some(r.span()),
                        &t.what,
                        format!("recipient '{text}' is listed twice"),
                    );
                } else {
                    recipients.push(text);
                }
            }
        }
        None => ok = false,
    }
    missing(ctx, &t, "recipients", &format!("add {example}: the age public keys that may decrypt the bundles (keep their identities offline)"));
    let keep = super::relays::bounded(
        ctx,
        &t,
        ("keep", "30", "bundles"),
        1..=10_000,
        SecretSync::DEFAULT_ESCROW_KEEP,
    );
    match store {
        Some(s) => (Some((s, recipients, keep)), ok),
        None => (None, false),
    }
}

/// Checks across sections: vault regions declared; sync names unique; sources and
/// destinations declared vaults, distinct; no sync loop (a vault reached from itself);
/// the escrow store declared and in another region than the source.
pub(super) fn check(ctx: &mut Ctx<'_>, draft: &super::sections::Draft) {
    for v in draft.vaults.values() {
        if let Some(r) = &v.region {
            if !draft.regions.contains_key(r.get_ref()) {
                ctx.error(
                    Some(r.span()),
                    &v.what,
                    format!(
                        "region '{}' is not declared; add [regions.{}] or fix the name",
                        r.get_ref(),
                        r.get_ref()
                    ),
                );
            }
        }
    }
    // One environment token for several Vault clusters would send each cluster's
    // token to the others.
    let shared: Vec<&DraftVault> = draft
        .vaults
        .values()
        .filter(|v| {
            matches!(v.url, Some(VaultUrl::Kv { .. }))
                && v.token.is_none()
                && v.token_file.is_none()
                && !v.token_given
        })
        .collect();
    if shared.len() > 1 {
        for v in shared {
            ctx.error(
                None,
                &v.what,
                "several Vault/OpenBao vaults would share VAULT_TOKEN/BAO_TOKEN from the environment; give each its own token = \"${NAME}\" or token_file",
            );
        }
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut edges: Vec<(&str, &str, &DraftSync)> = Vec::new();
    for s in &draft.secret_syncs {
        if let Some(n) = &s.name {
            if let Some(line) = names.get(n.get_ref().as_str()) {
                ctx.error(
                    Some(n.span()),
                    &s.what,
                    format!("the name '{}' is already used by the secret sync at line {line}; names must be unique", n.get_ref()),
                );
            } else {
                names.insert(n.get_ref(), ctx.line_of(&s.span));
            }
        }
        let declared = |ctx: &mut Ctx<'_>, v: &Spanned<String>, role: &str| -> bool {
            if draft.vaults.contains_key(v.get_ref()) {
                return true;
            }
            ctx.error(
                Some(v.span()),
                &s.what,
                format!(
                    "{role} vault '{}' is not declared; add [vaults.{}] or fix the name",
                    v.get_ref(),
                    v.get_ref()
                ),
            );
            false
        };
        if let Some(src) = &s.source {
            declared(ctx, src, "source");
        }
        let mut seen: Vec<&str> = Vec::new();
        for d in &s.destinations {
            declared(ctx, d, "destination");
            if seen.contains(&d.get_ref().as_str()) {
                ctx.error(
                    Some(d.span()),
                    &s.what,
                    format!("destination '{}' is listed twice", d.get_ref()),
                );
            }
            seen.push(d.get_ref());
            if let Some(src) = &s.source {
                if src.get_ref() == d.get_ref() {
                    ctx.error(
                        Some(d.span()),
                        &s.what,
                        format!("'{}' is both the source and a destination", d.get_ref()),
                    );
                } else {
                    edges.push((src.get_ref(), d.get_ref(), s));
                }
            }
        }
        if let Some((store, _, _)) = &s.escrow {
            match draft.stores.get(store.get_ref()) {
                None => ctx.error(
                    Some(store.span()),
                    &s.what,
                    format!("escrow store '{}' is not declared; declare it under [stores.{}] or fix the name", store.get_ref(), store.get_ref()),
                ),
                Some(st) => {
                    let src_region = s
                        .source
                        .as_ref()
                        .and_then(|v| draft.vaults.get(v.get_ref()))
                        .and_then(|v| v.region.as_ref());
                    if let (Some(a), Some(b)) = (&st.region, src_region) {
                        if a.get_ref() == b.get_ref() {
                            ctx.error(
                                Some(store.span()),
                                &s.what,
                                format!("escrow store '{}' is in region '{}', like the source vault; an escrow is for losing that region, so put it in another one", store.get_ref(), a.get_ref()),
                            );
                        }
                    }
                }
            }
        }
    }
    // A loop (x -> y -> ... -> x) would copy secrets around for ever.
    for (from, to, s) in &edges {
        let mut stack = vec![*to];
        let mut seen: Vec<&str> = Vec::new();
        while let Some(v) = stack.pop() {
            if v == *from {
                ctx.error(
                    Some(s.span.clone()),
                    &s.what,
                    format!("secrets written to '{to}' come back to '{from}' through the secret syncs (a loop); remove one of the syncs that form it"),
                );
                break;
            }
            if seen.contains(&v) {
                continue;
            }
            seen.push(v);
            stack.extend(edges.iter().filter(|(f, _, _)| *f == v).map(|(_, t, _)| *t));
        }
    }
}
