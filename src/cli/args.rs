//! The command line's arguments: what each command takes.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::{client, hostile, overload};

#[derive(Debug, Parser)]
#[command(
    name = "residency-relay",
    version,
    about = "Keeps each conference inside the jurisdiction its tenant chose"
)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
    /// PEM file of the CA (or the self-signed certificate) to verify
    /// routers' HTTPS certificates with, for commands that call routers
    /// (`dev` trusts its config's `tls_ca` without it).
    #[arg(long, global = true, value_name = "FILE")]
    pub(super) ca: Option<PathBuf>,
    /// The name routers' certificates must be for, when the URL given is
    /// an address and the certificate is for a name (with --ca).
    #[arg(long, global = true, value_name = "NAME", requires = "ca")]
    pub(super) server_name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Validate policy files and print a summary; exit non-zero with every problem otherwise.
    Check(CheckArgs),
    /// Show which relay a client at ADDR would be sent to, and why.
    ///
    /// Every relay is taken as healthy and idle unless named by --down; the
    /// live router feeds real health and load into the same selection.
    Route(RouteArgs),
    /// Read an API key from standard input and print the SHA-256 to store in config.
    HashApiKey,
    /// Make an end-to-end encrypted conference's secret (on the host's
    /// machine: it never goes to a server) and print it, or each join link
    /// given with the secret added to its fragment (`&k=…`).
    E2eeSecret(E2eeSecretArgs),
    /// Join a relay by hand: publish synthetic media, or subscribe and count.
    Client {
        #[command(subcommand)]
        action: client::Action,
    },
    /// Load a relay with synthetic conferences and print what was delivered.
    Loadtest(LoadtestArgs),
    /// Run a media relay from the config's inventory until SIGINT/SIGTERM.
    Relay(RelayArgs),
    /// Run a router: the HTTP API that creates conferences and admits participants.
    Router(RouterArgs),
    /// Run every router and relay of a config in one process, on loopback.
    Dev(DevArgs),
    /// Join load on a router: concurrent joins, then latency percentiles.
    Joinload(JoinloadArgs),
    /// Cascade load: one publisher and N subscribers on one relay, then
    /// spread over three linked relays; egress per relay and latency.
    Cascadeload(CascadeloadArgs),
    /// Overload: a call filling a jurisdiction's relay capacity, then
    /// newcomers asking to join at a fixed rate; joins accepted and refused,
    /// and the latency of those in, calm against overload.
    Overload(overload::Plan),
    /// Hostile load: idle connections, stalled uploads and forged QUIC
    /// Initials against a running `dev`, all at once, while an EU call runs
    /// and newcomers join; joins, their latency, the call's loss, relay
    /// health, RSS and descriptors, calm against attack.
    Hostile(hostile::Plan),
    /// One attack worker of `hostile`.
    #[command(hide = true)]
    HostileWorker(hostile::Worker),
    /// Fetch a conference's signed residency report from its router.
    Report(ReportArgs),
    /// Verify a residency report offline against the router's public key.
    VerifyReport(VerifyReportArgs),
    /// Drain a relay: no new joins; its participants move to other relays.
    Drain(DrainArgs),
    /// Create an Ed25519 ticket-signing key and print its public key for
    /// `ticket_keys`; with `--records-key`, a router's records key instead
    /// (printing its id).
    Keygen(KeygenArgs),
    /// Mint a join ticket (for tests and manual use; routers issue them in production).
    Ticket(TicketArgs),
}

// `check`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct CheckArgs {
    #[arg(long)]
    pub(super) config: PathBuf,
    /// Region files directory (default: the config's regions_dir).
    #[arg(long)]
    pub(super) regions: Option<PathBuf>,
    /// Dry run against a running router: list what this config would do
    /// to its live conferences (needs --token).
    #[arg(long, requires = "token")]
    pub(super) against: Option<String>,
    /// The router's admin token (with --against).
    #[arg(long)]
    pub(super) token: Option<String>,
}

// `route`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct RouteArgs {
    #[arg(long)]
    pub(super) config: PathBuf,
    #[arg(long)]
    pub(super) regions: Option<PathBuf>,
    /// The client's IP address.
    #[arg(long)]
    pub(super) ip: IpAddr,
    /// The conference's jurisdiction. With --tenant, checked against the
    /// tenant's plan; omitted, the plan's default.
    #[arg(long, required_unless_present = "tenant")]
    pub(super) jurisdiction: Option<String>,
    /// Apply this tenant's plan rules to the pin.
    #[arg(long)]
    pub(super) tenant: Option<String>,
    /// Relays already hosting the conference (repeatable).
    #[arg(long = "hosting", value_name = "RELAY_ID")]
    pub(super) hosting: Vec<String>,
    /// Relays to treat as unhealthy (repeatable).
    #[arg(long = "down", value_name = "RELAY_ID")]
    pub(super) down: Vec<String>,
    /// One JSON object instead of text.
    #[arg(long)]
    pub(super) json: bool,
}

// `e2ee-secret`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct E2eeSecretArgs {
    /// Join links to print with the secret added (the same secret for all).
    pub(super) links: Vec<String>,
}

// `loadtest`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct LoadtestArgs {
    #[arg(long)]
    pub(super) config: PathBuf,
    #[arg(long)]
    pub(super) regions: Option<PathBuf>,
    /// The relay (id in the inventory); its /cert and /metrics are read too.
    #[arg(long)]
    pub(super) relay: String,
    /// Signing key trusted for one of the relay's jurisdictions.
    #[arg(long, default_value = "config/dev-ticket.key")]
    pub(super) key: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub(super) conferences: usize,
    #[arg(long, default_value_t = 4)]
    pub(super) participants: usize,
    /// Publishers per conference (each sends one video and one audio track).
    #[arg(long, default_value_t = 2)]
    pub(super) publishers: usize,
    #[arg(long, default_value_t = 1_500_000)]
    pub(super) video_bps: u64,
    #[arg(long, default_value_t = 50_000)]
    pub(super) audio_bps: u64,
    /// Video packet size in bytes (header included): the largest
    /// datagram a frame is split into.
    #[arg(long, default_value_t = 1100)]
    pub(super) packet_size: usize,
    /// Video frames per second: each frame (video-bps / 8 / fps bytes)
    /// is sent at once, split into datagrams, as an encoder's output
    /// is; 0 sends evenly spaced packets instead.
    #[arg(long, default_value_t = 30)]
    pub(super) fps: u32,
    /// Consecutive addresses from --bind-ip the clients spread over
    /// (the relay limits connections per address).
    #[arg(long, default_value_t = 1)]
    pub(super) sources: u8,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    pub(super) duration: u64,
    /// Local address the clients send from.
    #[arg(long, default_value = "127.0.0.1")]
    pub(super) bind_ip: std::net::IpAddr,
}

// `relay`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct RelayArgs {
    #[arg(long)]
    pub(super) config: PathBuf,
    #[arg(long)]
    pub(super) regions: Option<PathBuf>,
    /// This relay's id in the inventory.
    #[arg(long)]
    pub(super) id: String,
    /// Datagrams queued per subscriber before the drop policy applies.
    #[arg(long, default_value_t = 256)]
    pub(super) queue_packets: usize,
    /// Seconds connected clients get to leave after `going_away`.
    #[arg(long, default_value_t = 5)]
    pub(super) shutdown_grace: u64,
    /// Shards (core tasks) and runtime threads; default: the relay's
    /// `workers` in the inventory, else one per available core.
    #[arg(long)]
    pub(super) workers: Option<usize>,
    /// File holding the credential the relay presents to its routers
    /// (else the RESIDENCY_RELAY_CREDENTIAL environment variable).
    #[arg(long)]
    pub(super) credential_file: Option<PathBuf>,
}

// `router`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct RouterArgs {
    #[arg(long)]
    pub(super) config: PathBuf,
    #[arg(long)]
    pub(super) regions: Option<PathBuf>,
    /// This router's id in the config.
    #[arg(long)]
    pub(super) id: String,
}

// `dev`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct DevArgs {
    #[arg(long, default_value = "config/dev.toml")]
    pub(super) config: PathBuf,
    /// Run a scripted EU call, print where everyone went, and exit.
    #[arg(long)]
    pub(super) demo: bool,
    /// Log to the console instead of data/dev.log.
    #[arg(long)]
    pub(super) log_console: bool,
    /// Keep the EU router's records in this PostgreSQL database
    /// (`postgres://user@host:port/db`, password from
    /// RR_STORE_PASSWORD) and run a second EU replica beside it on
    /// 127.0.2.4:8080; the config with both is written beside --config.
    #[arg(long)]
    pub(super) store: Option<String>,
}

// `joinload`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct JoinloadArgs {
    /// Router base URL, e.g. https://127.0.2.1:8080 (with --ca); several, comma
    /// separated or repeated, for replicas: the conference is created
    /// on the first and the clients are spread over all of them.
    #[arg(long, required = true, value_delimiter = ',')]
    pub(super) router: Vec<String>,
    /// Tenant API key that creates the conference.
    #[arg(long)]
    pub(super) api_key: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub(super) concurrency: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    pub(super) seconds: u64,
    /// Also load GET /healthz the same way, for the HTTP floor to
    /// compare with.
    #[arg(long)]
    pub(super) baseline: bool,
}

// `cascadeload`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct CascadeloadArgs {
    /// The config `dev` runs (for the relays' metrics addresses).
    #[arg(long, default_value = "config/dev.toml")]
    pub(super) config: PathBuf,
    #[arg(long, default_value = "https://127.0.2.1:8080")]
    pub(super) router: String,
    #[arg(long, default_value = "dev-acme-key")]
    pub(super) api_key: String,
    #[arg(long, default_value_t = 300)]
    pub(super) subscribers: usize,
    /// Packets per second the publisher sends (1,100 bytes each).
    #[arg(long, default_value_t = 100)]
    pub(super) pps: u64,
    #[arg(long, default_value_t = 10)]
    pub(super) seconds: u64,
}

// `report`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct ReportArgs {
    /// Router base URL.
    #[arg(long)]
    pub(super) router: String,
    #[arg(long)]
    pub(super) conference: String,
    /// The tenant's API key or the conference's host token.
    #[arg(long)]
    pub(super) token: String,
    /// Write the report here (standard output otherwise).
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
}

// `verify-report`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct VerifyReportArgs {
    pub(super) file: PathBuf,
    /// The router's public key (hex or base64url), obtained independently.
    #[arg(long)]
    pub(super) key: String,
}

// `drain`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct DrainArgs {
    #[arg(long)]
    pub(super) router: String,
    #[arg(long)]
    pub(super) relay: String,
    /// The operator's admin token.
    #[arg(long)]
    pub(super) token: String,
}

// `keygen`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct KeygenArgs {
    /// Where to write the key (hex; created with mode 0600, never overwritten).
    #[arg(long)]
    pub(super) out: PathBuf,
    /// Write a records key (`records_key` of a `[[router]]`: keys the
    /// address and passcode hashes in its store).
    #[arg(long)]
    pub(super) records_key: bool,
    /// With `--records-key`: write the key a router derives from this
    /// signing key file (what it uses without `records_key`), so that
    /// the signing key can change and the records key stay.
    #[arg(long, requires = "records_key")]
    pub(super) from_signing_key: Option<PathBuf>,
}

// `ticket`'s arguments (its help text is the variant's).
#[derive(Debug, clap::Args)]
pub(super) struct TicketArgs {
    #[arg(long)]
    pub(super) config: PathBuf,
    #[arg(long)]
    pub(super) regions: Option<PathBuf>,
    /// File holding the signing key (as written by `keygen`).
    #[arg(long)]
    pub(super) key: PathBuf,
    #[arg(long)]
    pub(super) conference: String,
    #[arg(long)]
    pub(super) jurisdiction: String,
    /// The relay the ticket admits to; must be inside the jurisdiction.
    #[arg(long)]
    pub(super) relay: String,
    #[arg(long)]
    pub(super) participant: String,
    #[arg(long, default_value = "")]
    pub(super) name: String,
    #[arg(long)]
    pub(super) publish: bool,
    #[arg(long)]
    pub(super) subscribe: bool,
    #[arg(long)]
    pub(super) moderate: bool,
    /// The conference is end-to-end encrypted: the relay refuses tracks
    /// not declared encrypted.
    #[arg(long)]
    pub e2ee: bool,
    /// Validity in seconds (at most 300).
    #[arg(long, default_value_t = 60)]
    pub(super) ttl: u64,
}
