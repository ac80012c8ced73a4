//! The fan-out tree below a region's coordinators: rack relays and host agents.
//!
//! - [`relay`]: serves its rack's hosts over HTTP: their goals (long poll), manifests and
//!   chunks. A chunk it does not hold is fetched once from its parent (a relay one level up,
//!   or the region's store through the region's nodes) however many hosts ask, and its bytes
//!   are forwarded while they still arrive. It verifies every chunk before caching it, keeps a
//!   bounded cache, learns its rack's goals from a watch stream to the regional leader, and
//!   sends its hosts' reports up as rack summaries.
//! - [`agent`]: on every host: follows its goal, fetches and verifies the artifact, unpacks it
//!   safely, switches `current` atomically, runs the service and checks its health.
//! - [`bucket`]: bandwidth limits; [`cache`]: the relay's disk cache; [`fetch`]: verified
//!   HTTP fetches with fallback; [`unpack`]: the tar unpacker that refuses hostile archives.
//!
//! This crate must not depend on the coordinator: relays and agents talk to it only through
//! the public API (`deploy-client`) and plain HTTP.

pub mod agent;
pub mod bucket;
pub mod cache;
pub mod config;
pub mod exchange;
pub mod fetch;
pub mod relay;
pub mod service;
pub mod serving;
pub mod unpack;
