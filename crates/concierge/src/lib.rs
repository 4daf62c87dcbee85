//! georep-concierge: `[[concierges]]` (issue 15, in progress). Devices ask a concierge
//! which MQTT hub to use and get a signed assignment; this part holds the two pieces
//! of cryptography the rest builds on: device authentication by IoT Hub-style shared
//! access signatures (`sas`), and assignments signed with Ed25519 as JWS compact
//! tokens that any JOSE library verifies against the concierge's published key
//! (`assign`). Boundaries: depends on nothing of georep's yet; the HTTP API, hub
//! probes and identity replication come next and will depend on core and component.

pub mod assign;
pub mod sas;
