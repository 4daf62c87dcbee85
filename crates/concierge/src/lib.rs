//! georep-concierge: `[[concierges]]` (issue 15, in progress). Devices ask a concierge
//! which MQTT hub to use and get a signed assignment; this part holds the two pieces
//! of cryptography the rest builds on: device authentication by IoT Hub-style shared
//! access signatures (`sas`), and assignments signed with Ed25519 as JWS compact
//! tokens that any JOSE library verifies against the concierge's published key
//! (`assign`); the device identities file (`identities`); hub health as an MQTT
//! round trip (`probe`); the daemon component that runs each concierge (`component`);
//! and the HTTP API devices
//! ask, with the choice of hub (current, pinned, fallbacks) (`api`). Boundaries:
//! depends on core (the topology), component (the daemon's contract) and storage
//! (the identities object); knows nothing of other capabilities.

pub mod api;
pub mod assign;
mod bridge;
mod component;
pub mod dynsec;
pub mod identities;
mod presence;
pub mod probe;
mod saved;
pub mod shared;

pub use component::Concierges;
/// Device authentication (shared access signatures), shared with devices.
pub use georep_device::sas;
