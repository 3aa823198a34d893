//! residency-relay: a media relay and router that keeps each conference's
//! media and metadata inside the jurisdiction its tenant chose.
//!
//! The layers, one rule each:
//!
//! - [`policy`]: the operator's jurisdictions (`regions/*.toml`), relay
//!   inventory, plans and tenants (`config/*.toml`), loaded and checked once
//!   into an immutable [`policy::Policy`]. Policy code never reads the clock
//!   or the network.
//! - [`geo`]: where a client is, from operator CIDR overrides and a MaxMind DB.
//!   Location only ranks relays; it never decides the jurisdiction.
//! - [`select`]: the pure relay-selection function. It looks only at relays
//!   inside the conference's jurisdiction and refuses, with a reason, when
//!   none can take the participant; it never falls back abroad.
//! - [`wire`]: wire protocol v1 between clients and relays: control-message
//!   frames and the media datagram header. Parsers take untrusted bytes and
//!   return typed errors.
//! - [`forward`]: the sans-IO forwarding core: conferences, participants,
//!   tracks, subscriptions and bounded per-subscriber queues. It never does
//!   I/O and never parses payloads; fan-out clones `Bytes`, not media.
//! - [`ticket`]: signed, short-lived join tickets bound to one relay and one
//!   jurisdiction, and the relay's verifier (sans-IO: time is an argument).
//! - [`relay`]: the relay process, a tokio/quinn shell that only moves
//!   bytes between sockets and the forwarding core, plus its metrics and
//!   HTTP endpoints.
//! - [`client`]: a client of the relay (tests, the `client` and `loadtest`
//!   commands).
//! - [`cli`]: the `residency-relay` commands (`check`, `route`, …), thin
//!   wrappers that print what the layers above decide.
#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod forward;
pub mod geo;
pub mod http_client;
pub mod http_server;
pub mod logging;
pub mod policy;
pub mod process_metrics;
pub mod redact;
pub mod relay;
pub mod router;
pub mod secret;
pub mod select;
pub mod store;
pub mod ticket;
pub mod tls;
pub mod wire;
