//! georep-concierge: `[[concierges]]` (issue 15, in progress). Devices ask a concierge
//! which MQTT hub to use and get a signed assignment; this part holds the two pieces
//! of cryptography the rest builds on: device authentication by IoT Hub-style shared
//! access signatures (`sas`), and assignments signed with Ed25519 as JWS compact
//! tokens that any JOSE library verifies against the concierge's published key
//! (`assign`); the device identities file (`identities`); hub health as an MQTT
//! round trip (`probe`); and the HTTP API devices
//! ask, with the choice of hub (current, pinned, fallbacks) (`api`). Boundaries:
//! depends on nothing of georep's yet; hub probes, identity replication and the
//! daemon component come next and will depend on core and component.

pub mod api;
pub mod assign;
pub mod identities;
pub mod probe;
pub mod sas;
