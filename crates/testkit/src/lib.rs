//! georep-testkit: what georep's tests need to talk to real services.
//!
//! - [`Azurite`] and [`Moto`]: ephemeral Azure Blob and S3 endpoints on free loopback
//!   ports in temporary folders, stopped on drop. Two instances stand for two regions.
//! - [`FlakyProxy`]: a TCP proxy that answers the first N connections with an HTTP error
//!   (503, 429), so retry paths are tested against the real service behind it.
//! - [`data`]: deterministic test data.
//! - [`conformance`]: one suite of store behaviours, run against every backend.
//!
//! A missing service binary is a test failure whose message says how to install it;
//! nothing is skipped silently.

pub mod conformance;
pub mod data;
pub mod faults;
mod proxy;
mod services;

pub use proxy::FlakyProxy;
pub use services::{free_port, wait_until, Azurite, Moto, AZURITE_ACCOUNT, AZURITE_KEY};
