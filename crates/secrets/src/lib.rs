//! georep-secrets: secrets kept in step from one vault to vaults in other regions or
//! clouds (`[[secret_syncs]]`), and an offline, age-encrypted escrow copy in a store.
//!
//! - `model` — what a secret version is, in terms every vault kind maps to.
//! - `kv`, `sm`, `keyvault` — Vault/OpenBao KV v2, AWS Secrets Manager and Azure Key
//!   Vault over their HTTP APIs; `vault` dispatches to them.
//! - `ledger` — per sync, what was written where, as keyed hashes (never values).
//! - `sync` — one pass of a sync: list, compare, carry versions, report drift.
//! - `escrow` — the bundles: sealed for age recipients, kept by count, restored.
//!
//! Values never reach output, logs, errors, the ledger, the API or metrics: they live in
//! [`model::Value`], whose `Debug` prints `***` and which has no `Display` or `Serialize`.

pub mod component;
pub mod error;
pub mod escrow;
pub mod keyvault;
pub mod kv;
pub mod ledger;
pub mod model;
pub mod names;
pub mod restore;
pub mod sm;
pub mod status;
pub mod sync;
pub mod vault;

pub use component::SecretSyncs;
pub use error::{Result, SecretsError};
pub use model::{Attrs, Shape, Value, Version, VersionMeta};
pub use sync::{run, Outcome, RunOptions, RunReport};
pub use vault::VaultClient;
