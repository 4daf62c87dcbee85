//! georep-testkit: what georep's tests need to talk to real services.
//!
//! - [`Azurite`] and [`Moto`]: ephemeral Azure Blob and S3 endpoints on free loopback
//!   ports in temporary folders, stopped on drop. Two instances stand for two regions.
//! - [`FlakyProxy`]: a TCP proxy that answers the first N connections with an HTTP error
//!   (503, 429), so retry paths are tested against the real service behind it.
//! - [`Postgres`]: throwaway PostgreSQL clusters (primary and replicas).
//! - [`data`]: deterministic test data.
//! - [`conformance`]: one suite of store behaviours, run against every backend.
//!
//! A missing service binary is a test failure whose message says how to install it;
//! nothing is skipped silently.

pub mod conformance;
pub mod data;
pub mod faults;
mod keyvault;
mod mariadb;
mod partition;
mod postgres;
mod proxy;
mod receivers;
mod serve;
mod services;

pub use keyvault::KeyVault;
pub use mariadb::{mariadb_as, MariaDb};
pub use partition::Partition;
pub use postgres::{psql_at, Postgres};
pub use proxy::FlakyProxy;
pub use receivers::{Api, EventGridTopic, Receiver};
pub use serve::Serve;
pub use services::{
    free_port, wait_until, Azurite, Bao, Mosquitto, Moto, Nats, AZURITE_ACCOUNT, AZURITE_KEY,
};

/// Environment variables a test's child process must not inherit from the developer's
/// shell (credentials, endpoints, georep settings).
pub const SCRUB_ENV: &[&str] = &[
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "GEOREP_LOG",
    "GEOREP_CONFIG",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_SECRETS_MANAGER",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_AUTHORITY_HOST",
    "AZURE_USE_IMDS",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "VAULT_TOKEN",
    "BAO_TOKEN",
    "GEOREP_SECRETS_KEY",
];

/// A command for the binary at `bin` with a scrubbed environment plus `env`.
pub fn command(bin: &str, args: &[&str], env: &[(String, String)]) -> std::process::Command {
    let mut c = std::process::Command::new(bin);
    c.args(args).stdin(std::process::Stdio::null());
    for v in SCRUB_ENV {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}
