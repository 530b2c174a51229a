//! Rules every front door enforces, whatever its protocol: who the client
//! is ([`client`]), how often it may fail to authenticate ([`throttle`]),
//! how many connections it may hold ([`connections`]), and what never
//! leaves the daemon in a message ([`redact`]). Protocol modules translate
//! their verdicts (HTTP 429, a closed socket, a PostgreSQL error).

pub mod client;
pub mod connections;
pub mod redact;
pub mod throttle;
