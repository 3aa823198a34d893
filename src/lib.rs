//! residency-relay: a media relay and router that keeps each conference's
//! media and metadata inside the jurisdiction its tenant chose.
//!
//! The layers, from the ground up; a module imports only from the layers
//! below it (and its own), never from beside or above:
//!
//! 1. Shared names, no I/O of their own beyond the clock and signals:
//!    - [`wire`]: wire protocol v1 between clients and relays (control
//!      frames, the media datagram header, close and `going_away` codes) and
//!      the messages relays and routers exchange. Parsers take untrusted
//!      bytes and return typed errors.
//!    - [`geo`]: country codes and where a client is, from operator CIDR
//!      overrides and a MaxMind DB. Location only ranks relays; it never
//!      decides the jurisdiction.
//!    - [`clock`] (the wall clock, read in one place), [`signals`] (SIGINT,
//!      SIGTERM, SIGHUP), [`secret`], [`redact`], [`process_metrics`].
//! 2. Sans-IO cores and the TLS they build on:
//!    - [`forward`]: the forwarding core: conferences, participants, tracks,
//!      subscriptions and bounded per-subscriber queues. It never does I/O
//!      and never parses payloads; fan-out clones `Bytes`, not media.
//!    - [`ticket`]: signed, short-lived join tickets bound to one relay and
//!      one jurisdiction, and the relay's verifier (time is an argument).
//!    - [`tls`]: TLS over TCP (certificates served, CAs trusted).
//! 3. Shared I/O: [`quic`] (QUIC endpoint crypto and sockets of relays and
//!    their clients), [`http_client`], and [`acme`] (certificates from an
//!    ACME CA for a listener given a DNS name).
//! 4. [`policy`]: the operator's jurisdictions (`regions/*.toml`), relay
//!    inventory, plans and tenants (`config/*.toml`), loaded and checked once
//!    into an immutable [`policy::Policy`]. Policy code never reads the clock
//!    or the network.
//! 5. What the services are made of, each on policy:
//!    - [`select`]: the pure relay-selection function. It looks only at
//!      relays inside the conference's jurisdiction and refuses, with a
//!      reason, when none can take the participant; it never falls back
//!      abroad.
//!    - [`store`]: the router's records (SQLite, or PostgreSQL shared by
//!      router replicas).
//!    - [`http_server`]: the HTTP listeners with the limits of a listener open
//!      to the internet, and how addresses are grouped for them.
//!    - [`logging`].
//! 6. The two services, side by side, neither importing the other:
//!    - [`relay`]: the relay process, a tokio/quinn shell that only moves
//!      bytes between sockets and the forwarding core, plus its metrics and
//!      HTTP endpoints.
//!    - [`router`]: the control plane of one or more jurisdictions: pins,
//!      joins, moderation, records and the relays' reports.
//! 7. [`client`]: a client of the router and the relays (tests, the
//!    `client` and `loadtest` commands).
//! 8. [`cli`]: the `residency-relay` commands (`check`, `route`, …), thin
//!    wrappers that print what the layers below decide.
#![forbid(unsafe_code)]

pub mod acme;
pub mod cli;
pub mod client;
pub mod clock;
pub mod forward;
pub mod geo;
pub mod http_client;
pub mod http_server;
pub mod logging;
pub mod policy;
pub mod process_metrics;
pub mod quic;
pub mod redact;
pub mod relay;
pub mod router;
pub mod secret;
pub mod select;
pub mod signals;
pub mod store;
pub mod ticket;
pub mod tls;
pub mod wire;
