//! `georep secrets sync|status|diff|promote|escrow`: secret syncs (`[[secret_syncs]]`)
//! done here by `georep_secrets`; a lock per sync keeps these and the daemon's passes
//! apart. No command prints a value: only names, versions, fields and outcomes.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use georep_core::{SecretSync, Topology};
use georep_secrets::ledger::MacKey;
use georep_secrets::sync::{Outcome, RunOptions, RunReport};

use crate::output::print;
use crate::topology::{load, ConfigArg, ConfigFileError};
use crate::Output;

#[derive(Subcommand, Debug)]
pub(crate) enum SecretsCommand {
    /// One pass now: carry every changed secret (its newest `versions`, in order) to each
    /// destination, report drift, apply `deletes`, write an escrow bundle if anything
    /// changed. Exit 1 on drift, failures or unexportable items; 3 if a vault is
    /// unreachable or refuses the credentials.
    Sync(SyncArgs),
    /// Per secret and destination, as the last pass left it (in sync, pending, drifted,
    /// failed, kept, disabled, deleted), from the state alone. Exit 1 on drift or
    /// failures.
    Status(NameArgs),
    /// What a pass would do, by name and field, changing nothing. Exit 1 if anything
    /// differs.
    Diff(NameArgs),
    /// Make a destination the source (the source's region is lost); the others, and
    /// the old source when it returns, are written from it. Promoting the topology's
    /// source undoes it.
    Promote(PromoteArgs),
    /// Escrow bundles: list them, or rebuild a vault from one.
    #[command(subcommand)]
    Escrow(EscrowCommand),
}

#[derive(Subcommand, Debug)]
pub(crate) enum EscrowCommand {
    /// The bundles in the escrow store, oldest first.
    List(NameArgs),
    /// Decrypt a bundle (the newest unless --bundle) with an age identity file and write
    /// its secrets, versions in order, into a vault. A secret already there with another
    /// value is left alone (exit 1) unless --overwrite.
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
pub(crate) struct NameArgs {
    /// The secret sync (`name` in [[secret_syncs]]).
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
}

#[derive(Args, Debug)]
pub(crate) struct SyncArgs {
    #[command(flatten)]
    pub(crate) sync: NameArgs,
    /// Show what would change; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Secrets worked on at once per destination.
    #[arg(long, default_value_t = 16)]
    pub(crate) parallel: usize,
    /// GEOREP_SECRETS_KEY changed on purpose: drop the hashes recorded with the old one
    /// and compare every secret afresh.
    #[arg(long)]
    pub(crate) rekey: bool,
}

#[derive(Args, Debug)]
pub(crate) struct PromoteArgs {
    #[command(flatten)]
    pub(crate) sync: NameArgs,
    /// The vault that becomes the source.
    #[arg(long, value_name = "VAULT")]
    pub(crate) to: String,
}

#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    pub(crate) sync: NameArgs,
    /// The vault to write into (a [vaults.NAME] of the topology).
    #[arg(long, value_name = "VAULT")]
    pub(crate) to: String,
    /// An age identity file (`age-keygen` output) whose public key is a recipient.
    #[arg(long, value_name = "FILE")]
    pub(crate) identity: PathBuf,
    /// A bundle's name (as `escrow list` shows); the newest without it.
    #[arg(long, value_name = "NAME")]
    pub(crate) bundle: Option<String>,
    /// Write over secrets that exist in the vault with another value.
    #[arg(long)]
    pub(crate) overwrite: bool,
    /// Restore a bundle without checking that GEOREP_SECRETS_KEY made it (the key is
    /// lost; you know where the bundle came from).
    #[arg(long)]
    pub(crate) unverified: bool,
}

fn open(a: &NameArgs) -> Result<(Topology, SecretSync, PathBuf)> {
    let t = load(&a.config.config)?;
    let s = t.secret_sync(&a.name).cloned().ok_or_else(|| {
        let names: Vec<&str> = t.secret_syncs.iter().map(|s| s.name.as_str()).collect();
        ConfigFileError(format!(
            "no secret sync named '{}' in {}; the topology has: {}",
            a.name,
            a.config.config.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))
    })?;
    let dir = state_dir(&t, &a.config.config);
    Ok((t, s, dir))
}

/// The folder beside the state file (where `secrets/` goes).
fn state_dir(t: &Topology, config: &std::path::Path) -> PathBuf {
    match t
        .state
        .sqlite_path()
        .as_deref()
        .and_then(std::path::Path::parent)
    {
        Some(p) => p.to_path_buf(),
        None => std::path::absolute(config)
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("georep-state")))
            .unwrap_or_else(|| PathBuf::from("georep-state")),
    }
}

fn key() -> Result<MacKey> {
    MacKey::from_env().map_err(|e| anyhow::Error::new(SecretsFailure(e)))
}

/// A library error carried to `main`, which maps it to its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SecretsFailure(pub(crate) georep_secrets::SecretsError);

fn fail(e: georep_secrets::SecretsError) -> anyhow::Error {
    anyhow::Error::new(SecretsFailure(e))
}

pub(crate) async fn run(c: SecretsCommand) -> Result<u8> {
    match c {
        SecretsCommand::Sync(a) => sync(&a.sync, a.dry_run, a.parallel, a.rekey, false).await,
        SecretsCommand::Diff(a) => sync(&a, true, 16, false, true).await,
        SecretsCommand::Status(a) => status(&a),
        SecretsCommand::Promote(a) => {
            let (_, s, dir) = open(&a.sync)?;
            let (source, dests) =
                georep_secrets::restore::promote(&dir, &s, &a.to, &key()?).map_err(fail)?;
            let v = serde_json::json!({"sync": s.name, "source": source, "destinations": dests});
            print(a.sync.output, &v, || {
                format!(
                    "secret sync '{}': source is now '{source}'; the next pass writes to {}{}",
                    s.name,
                    dests.join(", "),
                    if source == s.source {
                        String::new()
                    } else {
                        format!(". Change source in the topology to make it permanent, or promote '{}' to undo", s.source)
                    }
                )
            })?;
            Ok(0)
        }
        SecretsCommand::Escrow(EscrowCommand::List(a)) => {
            let (t, s, _) = open(&a)?;
            let esc = s.escrow.as_ref().ok_or_else(|| {
                ConfigFileError(format!("secret sync '{}' has no escrow", s.name))
            })?;
            let store = georep_secrets::sync::open_escrow_store(&t, &s.name, esc).map_err(fail)?;
            let list = georep_secrets::escrow::bundles(&store)
                .await
                .map_err(fail)?;
            print(a.output, &list, || {
                if list.is_empty() {
                    format!("secret sync '{}': no escrow bundle yet", s.name)
                } else {
                    list.join("\n")
                }
            })?;
            Ok(0)
        }
        SecretsCommand::Escrow(EscrowCommand::Restore(a)) => {
            let (t, s, _) = open(&a.sync)?;
            let identity = read_identity(&a.identity)?;
            let mac_key = if a.unverified { None } else { Some(key()?) };
            let r = georep_secrets::restore::restore(
                &t,
                &s,
                &a.to,
                &identity,
                a.bundle.as_deref(),
                a.overwrite,
                mac_key.as_ref(),
            )
            .await
            .map_err(fail)?;
            print(a.sync.output, &r, || {
                let mut out = format!(
                    "restored bundle {} (taken {}) into vault '{}':",
                    r.bundle, r.taken, r.vault
                );
                for x in &r.secrets {
                    out.push_str(&format!(
                        "\n  {:<40} {:<9} {} versions{}",
                        x.name,
                        x.outcome,
                        x.versions,
                        if x.detail.is_empty() {
                            String::new()
                        } else {
                            format!("  {}", x.detail)
                        }
                    ));
                }
                out
            })?;
            Ok(r.exit_code as u8)
        }
    }
}

/// Reads an identity file; it holds a private key, so a link or a file others can
/// read is refused.
fn read_identity(p: &std::path::Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(p)
        .map_err(|e| ConfigFileError(format!("cannot read identity file {}: {e}", p.display())))?;
    if m.file_type().is_symlink() || !m.file_type().is_file() {
        return Err(ConfigFileError(format!(
            "identity file {} is not a regular file (a link?); georep does not follow links",
            p.display()
        ))
        .into());
    }
    if m.permissions().mode() & 0o077 != 0 {
        return Err(ConfigFileError(format!(
            "identity file {} can be read by others (mode {:o}); chmod 600 it",
            p.display(),
            m.permissions().mode() & 0o777
        ))
        .into());
    }
    georep_secrets::kv::read_nofollow(p)
        .with_context(|| format!("cannot read identity file {}", p.display()))
}

async fn sync(a: &NameArgs, dry_run: bool, parallel: usize, rekey: bool, diff: bool) -> Result<u8> {
    if dry_run && rekey {
        return Err(ConfigFileError(
            "--rekey drops the recorded hashes; it cannot go with --dry-run".into(),
        )
        .into());
    }
    let (t, s, dir) = open(a)?;
    let opts = RunOptions {
        state_dir: dir,
        dry_run,
        rekey,
        parallel,
    };
    let r = georep_secrets::run(&t, &s, &key()?, &opts)
        .await
        .map_err(fail)?;
    print(a.output, &r, || render(&r, diff))?;
    let mut code = r.exit_code as u8;
    if diff && r.items.iter().any(|i| i.outcome != Outcome::InSync) {
        code = code.max(1);
    }
    Ok(code)
}

fn render(r: &RunReport, diff: bool) -> String {
    let mut out = format!(
        "secret sync '{}': {} secrets at '{}'{}; {} in step unchanged",
        r.sync,
        r.secrets,
        r.source,
        if r.promoted { " (promoted)" } else { "" },
        r.unchanged
    );
    for i in &r.items {
        if diff && i.outcome == Outcome::InSync {
            continue;
        }
        let what = if i.written > 0 {
            format!("{} ({} versions)", i.outcome.as_str(), i.written)
        } else {
            i.outcome.as_str().to_string()
        };
        out.push_str(&format!(
            "\n  {:<40} -> {:<14} {:<22} {}",
            i.name, i.destination, what, i.detail
        ));
    }
    if let Some(k) = &r.escrow {
        out.push_str(&format!("\n  escrow bundle written: {k}"));
    }
    for e in &r.errors {
        out.push_str(&format!("\n  error: {e}"));
    }
    out
}

fn status(a: &NameArgs) -> Result<u8> {
    let (_, s, dir) = open(a)?;
    let st = georep_secrets::status::status(&dir.join("secrets"), &s.name).map_err(fail)?;
    print(a.output, &st, || {
        let mut out = format!(
            "secret sync '{}': {} in sync, {} pending, {} drifted, {} failed, {} not exportable; last pass {}{}",
            st.sync,
            st.in_sync,
            st.pending,
            st.drifted,
            st.failed,
            st.not_exportable,
            st.last_run.as_deref().unwrap_or("never"),
            st.promoted
                .as_deref()
                .map(|p| format!("; promoted: source is '{p}'"))
                .unwrap_or_default()
        );
        if let Some(e) = &st.escrow_at {
            out.push_str(&format!(
                "; escrow {} at {e}",
                st.escrow_bundle.as_deref().unwrap_or("")
            ));
        }
        for x in &st.secrets {
            out.push_str(&format!(
                "\n  {:<40} -> {:<14} {:<9} {} versions  {}",
                x.name, x.destination, x.status, x.versions, x.detail
            ));
        }
        out
    })?;
    Ok(if st.drifted + st.failed + st.not_exportable > 0 {
        1
    } else {
        0
    })
}
