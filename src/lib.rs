//! herd: a proxy server herd.
//!
//! Phones report their position (IAMAT) to any server; any server answers "what is near
//! client X?" (WHATSAT) by calling a places API around the client's last position.
//! docs/PROTOCOL.md describes the protocol; the README says how to run it.
//!
//! Where things live:
//!
//! - [`protocol`]: the client and herd line protocol as pure values (parse, format).
//! - [`line`](mod@line): cutting a byte stream into lines, with a length limit.
//! - [`answer_queue`]: the answers a connection owes, leaving in the order of its lines.
//! - [`socket_out`]: the sending side of a connection, shared by sessions and links.
//! - [`record_table`]: the latest record per client, in a table that grows without a stall.
//! - [`answer_cache`]: places answers kept for reuse (time to live, least recently used out).
//! - [`places_json`]: the places API's answer format (cut to a bound, error objects).
//! - [`places_new`]: Places API (New): its request, and its answer mapped to the legacy shape.
//! - [`config`]: `herd.toml`, environment overrides and validation.
//! - [`descriptors`]: the open-file budget, and the cap on clients it allows.
//! - [`backoff`]: capped exponential backoff with jitter, for reconnecting links.
//! - [`actors`]: the actors and their typed messages, one module per actor
//!   (`ClientSession`, `LocationStore`, `PeerLink`, `PlacesProxy`).
//! - [`stream`]: a connection's bytes, plain TCP or TLS, split for reading and writing.
//! - [`tls`]: the herd's certificates, read into rustls, and who a certificate names.
//! - [`certs`]: making those certificates (`herd certs`): the herd's CA and each server's.
//! - [`store_file`]: the records a server stores, appended to a file and read back at start.
//! - [`metrics`]: what a server counts about itself, for `/metrics` and `/status`.
//! - [`server_log`]: each server's log file, written off the hot path.
//! - [`admin`]: the admin listener: metrics, health, status, the herd and its page.
//! - [`node`]: starting one server (its actors and listener) and stopping it cleanly.
//! - [`status`]: `herd status`, the whole herd in one table.
//! - [`cli`]: the `herd` command line.
//!
//! Beside this crate in the workspace: `herd-bench` (`bench/`), the tools that measure a
//! running server from outside, and `places-fake` (`places-fake/`), the local places API
//! that the tests call.

#[path = "../actors/mod.rs"]
pub mod actors;
pub mod admin;
pub mod answer_cache;
pub mod answer_queue;
pub mod backoff;
pub mod certs;
pub mod cli;
pub mod config;
pub mod descriptors;
pub mod line;
pub mod metrics;
pub mod node;
pub mod places_json;
pub mod places_new;
pub mod protocol;
pub mod record_table;
pub mod server_log;
pub mod socket_out;
pub mod status;
pub mod store_file;
pub mod stream;
pub mod tls;
