//! The actors of one server and their typed messages, one module per actor.
//!
//! - [`client_session::ClientSession`]: one per client TCP connection; reads lines, answers
//!   them in order.
//! - [`location_store::LocationStore`]: the only owner of the client records.
//! - [`peer_link::PeerLink`]: one per neighbor; this server's outgoing link to it, redialled
//!   with backoff.
//! - [`places_proxy::PlacesProxy`]: the HTTP calls to the places API.
//!
//! Actors reach each other only through messages, and hold the others as `Recipient`s, so a
//! test can put a fake in place of any of them. Each actor logs the messages it handles under
//! its own log target, `herd::<module>`, named by the module's `LOG_TARGET`.

pub mod client_session;
pub mod location_store;
pub mod peer_link;
pub mod places_proxy;
