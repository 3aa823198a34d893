//! The command line's arguments: what each command takes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::client::e2ee::Secret;

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
        action: ClientAction,
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
    Overload(OverloadArgs),
    /// Hostile load: idle connections, stalled uploads and forged QUIC
    /// Initials against a running `dev`, all at once, while an EU call runs
    /// and newcomers join; joins, their latency, the call's loss, relay
    /// health, RSS and descriptors, calm against attack.
    Hostile(HostileArgs),
    /// One attack worker of `hostile`.
    #[command(hide = true)]
    HostileWorker(HostileWorkerArgs),
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
    /// How the clients reach the relay: QUIC, or WebSocket on TLS over TCP
    /// (its `websocket_url`).
    #[arg(long, value_enum, default_value_t = TransportArg::Quic)]
    pub(super) transport: TransportArg,
    /// PEM file of the CA (or certificate) to verify the relay's WebSocket
    /// certificate with (required for one over ACME); without it the
    /// certificate the relay's config names (`websocket_tls_cert`, else
    /// `tls_cert`) is pinned, else its own (its /cert).
    #[arg(long, value_name = "FILE")]
    pub(super) websocket_ca: Option<PathBuf>,
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

#[derive(Debug, Subcommand)]
pub(super) enum ClientAction {
    /// Publish one synthetic video track at a bitrate.
    Publish {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, default_value_t = 1_500_000)]
        bitrate: u64,
        #[arg(long, default_value_t = 1100)]
        packet_size: usize,
        /// Seconds to send.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Send call media instead: a camera in this many simulcast
        /// layers (1–3; 150, 500, 1,500 kbit/s at 30 fps) and audio,
        /// following the relay's word on layers and keyframes
        /// (`--bitrate` and `--packet-size` then do not apply).
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=3), conflicts_with = "screen")]
        layers: Option<u8>,
        /// Send call media as a shared screen: one layer at 5 fps, 1.2
        /// Mbit/s, and audio.
        #[arg(long)]
        screen: bool,
        /// The level the call audio's headers carry, in -dBov (0 loudest,
        /// 127 silence; below 60 counts as speech).
        #[arg(long, default_value_t = 127, value_parser = clap::value_parser!(u8).range(0..=127))]
        level: u8,
    },
    /// Subscribe to tracks (all announced ones when none given) and count.
    Subscribe {
        #[command(flatten)]
        connection: Connection,
        #[arg(long = "track")]
        tracks: Vec<u32>,
        /// Seconds to listen.
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
}

/// How the client reaches its relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum TransportArg {
    Quic,
    Websocket,
}

/// Either join through a router (`--router`, `--conference`, `--passcode`
/// or `--invite`), or connect to a relay directly with a ticket (`--relay`,
/// `--cert-sha256`, `--ticket`).
#[derive(Debug, Args)]
pub(super) struct Connection {
    /// Router base URL to join through, e.g. https://127.0.2.1:8080 (with --ca)
    #[arg(long, requires = "conference", conflicts_with_all = ["relay", "ticket"])]
    pub(super) router: Option<String>,
    /// Conference id (with --router).
    #[arg(long)]
    pub(super) conference: Option<String>,
    /// Conference passcode (with --router).
    #[arg(long)]
    pub(super) passcode: Option<String>,
    /// Invitation token (with --router), instead of a passcode.
    #[arg(long)]
    pub(super) invite: Option<String>,
    /// Display name (with --router and --passcode).
    #[arg(long, default_value = "cli")]
    pub(super) name: String,
    /// The relay's QUIC address (without --router).
    #[arg(long, requires_all = ["cert_sha256", "ticket"])]
    pub(super) relay: Option<SocketAddr>,
    /// SHA-256 of the relay's certificate (its /cert, or the log line at start).
    #[arg(long)]
    pub(super) cert_sha256: Option<String>,
    /// A ticket for this relay (`residency-relay ticket …`).
    #[arg(long)]
    pub(super) ticket: Option<String>,
    /// Local address to send from.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(super) bind: SocketAddr,
    /// How to reach the relay: QUIC, or WebSocket on TLS over TCP (for
    /// networks that block UDP).
    #[arg(long, value_enum, default_value_t = TransportArg::Quic)]
    pub(super) transport: TransportArg,
    /// The relay's WebSocket URL (without --router; default
    /// wss://<relay>/ws).
    #[arg(long)]
    pub(super) websocket_url: Option<String>,
    /// PEM file of the CA (or certificate) to verify the relay's WebSocket
    /// certificate with; without it the relay's own certificate is pinned
    /// (--cert-sha256, or the join answer's).
    #[arg(long, value_name = "FILE")]
    pub(super) websocket_ca: Option<PathBuf>,
    /// The conference's end-to-end encryption secret: 43 base64url
    /// characters, or a join link whose fragment carries it (`#…&k=…`).
    /// Required for an end-to-end encrypted conference.
    /// Given, the client refuses a conference that is not end-to-end
    /// encrypted rather than send in the clear.
    #[arg(long, value_name = "SECRET_OR_LINK", value_parser = Secret::parse)]
    pub(super) e2ee_secret: Option<Secret>,
}

/// What to run (the command's arguments).
#[derive(Debug, Clone, clap::Args)]
pub(super) struct OverloadArgs {
    /// Router base URL (the default serves `ch`, one relay of 200).
    #[arg(long, default_value = "https://127.0.2.3:8080")]
    pub(super) router: String,
    #[arg(long, default_value = "dev-acme-key")]
    pub(super) api_key: String,
    #[arg(long, default_value = "ch")]
    pub(super) residency: String,
    /// Participants in the call (the first publishes): the capacity.
    #[arg(long, default_value_t = 200)]
    pub(super) inside: usize,
    /// Concurrent newcomers (each from its own address).
    #[arg(long, default_value_t = 50)]
    pub(super) newcomers: usize,
    /// Join attempts per second, all newcomers together.
    #[arg(long, default_value_t = 200)]
    pub(super) rate: u64,
    /// Packets per second the publisher sends (1,100 bytes each).
    #[arg(long, default_value_t = 100)]
    pub(super) pps: u64,
    /// Length of each phase.
    #[arg(long, default_value_t = 10)]
    pub(super) seconds: u64,
}

/// What to run (the command's arguments).
#[derive(Debug, Clone, clap::Args)]
pub(super) struct HostileArgs {
    /// The config `dev` runs (addresses of its routers and relays).
    #[arg(long, default_value = "config/dev.toml")]
    pub(super) config: PathBuf,
    /// The router of the EU call and the newcomers.
    #[arg(long, default_value = "de-fra-router")]
    pub(super) router: String,
    #[arg(long, default_value = "dev-acme-key")]
    pub(super) api_key: String,
    #[arg(long, default_value = "dev-admin-key")]
    pub(super) admin_token: String,
    /// Idle TCP connections held open (two worker processes).
    #[arg(long, default_value_t = 20_000)]
    pub(super) idle: usize,
    /// Source addresses the idle connections come from.
    #[arg(long, default_value_t = 100)]
    pub(super) idle_sources: usize,
    /// How long an idle connection the server closed waits before it
    /// connects again (lower turns the idle attack into a connect flood).
    #[arg(long, default_value_t = 1000)]
    pub(super) reconnect_ms: u64,
    /// Stalled uploads to the relay channel at any time.
    #[arg(long, default_value_t = 100)]
    pub(super) stalled: usize,
    /// Forged QUIC Initial packets per second.
    #[arg(long, default_value_t = 200)]
    pub(super) initials_per_second: u64,
    /// Waiting-room polls held open with one wait token (0: none).
    #[arg(long, default_value_t = 1020)]
    pub(super) polls: usize,
    /// Source addresses the polls come from (127.0.12.x).
    #[arg(long, default_value_t = 40)]
    pub(super) poll_sources: usize,
    /// Newcomers asking to join per second.
    #[arg(long, default_value_t = 20)]
    pub(super) join_rate: u64,
    /// Packets per second of the call's publisher (1,100 bytes each).
    #[arg(long, default_value_t = 100)]
    pub(super) pps: u64,
    /// Length of each measured phase.
    #[arg(long, default_value_t = 20)]
    pub(super) seconds: u64,
    /// Seconds the attack runs before its phase is measured.
    #[arg(long, default_value_t = 10)]
    pub(super) ramp: u64,
    /// Nice level of the attack workers (0: the same priority as `dev`).
    #[arg(long, default_value_t = 0)]
    pub(super) attacker_nice: u8,
    /// Processes to watch (default: the running `dev`, found in /proc).
    #[arg(long)]
    pub(super) pid: Vec<u32>,
}

/// What one attack worker does (a hidden command; `hostile` starts them
/// as separate processes, so their descriptors and CPU are their own).
#[derive(Debug, Clone, clap::Args)]
pub(super) struct HostileWorkerArgs {
    #[arg(long, value_enum)]
    pub(super) mode: AttackMode,
    /// Where to: HTTP listeners (idle, round robin), the router (stalled),
    /// relays' QUIC addresses (initials, paired with `--from`).
    #[arg(long, value_delimiter = ',')]
    pub(super) targets: Vec<SocketAddr>,
    /// Forged sources of the Initials, one per target.
    #[arg(long, value_delimiter = ',')]
    pub(super) from: Vec<SocketAddr>,
    /// Connections held (idle, stalled).
    #[arg(long, default_value_t = 0)]
    pub(super) count: usize,
    /// Index of the first source address (127.0.9.1 is 0), and how many.
    #[arg(long, default_value_t = 0)]
    pub(super) first_source: usize,
    #[arg(long, default_value_t = 1)]
    pub(super) sources: usize,
    #[arg(long)]
    pub(super) seconds: u64,
    #[arg(long, default_value_t = 1000)]
    pub(super) reconnect_ms: u64,
    /// Initials per second.
    #[arg(long, default_value_t = 0)]
    pub(super) rate: u64,
    /// For a router serving HTTPS (stalled): the CA to verify it with ...
    #[arg(long)]
    pub(super) tls_ca: Option<PathBuf>,
    /// ... and the name its certificate is for.
    #[arg(long)]
    pub(super) tls_name: Option<String>,
    /// The waiting-room poll's path (polls).
    #[arg(long)]
    pub(super) path: Option<String>,
    /// The wait token it is polled with (polls).
    #[arg(long)]
    pub(super) token: Option<String>,
}

/// The attack a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum AttackMode {
    Idle,
    Stalled,
    Polls,
    Initials,
}
