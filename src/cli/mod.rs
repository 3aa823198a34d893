//! The `residency-relay` command line.

mod cascadeload;
mod client;
mod dev;
mod dry_run;
mod hostile;
mod joinload;
mod loadtest;
mod overload;
mod relay;
mod report;
mod route;
mod router;
mod ticket;

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};

use crate::policy::{self, Policy};

#[derive(Debug, Parser)]
#[command(
    name = "residency-relay",
    version,
    about = "Keeps each conference inside the jurisdiction its tenant chose"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// PEM file of the CA (or the self-signed certificate) to verify
    /// routers' HTTPS certificates with, for commands that call routers
    /// (`dev` trusts its config's `tls_ca` without it).
    #[arg(long, global = true, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The name routers' certificates must be for, when the URL given is
    /// an address and the certificate is for a name (with --ca).
    #[arg(long, global = true, value_name = "NAME", requires = "ca")]
    server_name: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate policy files and print a summary; exit non-zero with every problem otherwise.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// Region files directory (default: the config's regions_dir).
        #[arg(long)]
        regions: Option<PathBuf>,
        /// Dry run against a running router: list what this config would do
        /// to its live conferences (needs --token).
        #[arg(long, requires = "token")]
        against: Option<String>,
        /// The router's admin token (with --against).
        #[arg(long)]
        token: Option<String>,
    },
    /// Show which relay a client at ADDR would be sent to, and why.
    ///
    /// Every relay is taken as healthy and idle unless named by --down; the
    /// live router feeds real health and load into the same selection.
    Route {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        regions: Option<PathBuf>,
        /// The client's IP address.
        #[arg(long)]
        ip: IpAddr,
        /// The conference's jurisdiction. With --tenant, checked against the
        /// tenant's plan; omitted, the plan's default.
        #[arg(long, required_unless_present = "tenant")]
        jurisdiction: Option<String>,
        /// Apply this tenant's plan rules to the pin.
        #[arg(long)]
        tenant: Option<String>,
        /// Relays already hosting the conference (repeatable).
        #[arg(long = "hosting", value_name = "RELAY_ID")]
        hosting: Vec<String>,
        /// Relays to treat as unhealthy (repeatable).
        #[arg(long = "down", value_name = "RELAY_ID")]
        down: Vec<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Read an API key from standard input and print the SHA-256 to store in config.
    HashApiKey,
    /// Make an end-to-end encrypted conference's secret (on the host's
    /// machine: it never goes to a server) and print it, or each join link
    /// given with the secret added to its fragment (`&k=…`).
    E2eeSecret {
        /// Join links to print with the secret added (the same secret for all).
        links: Vec<String>,
    },
    /// Join a relay by hand: publish synthetic media, or subscribe and count.
    Client {
        #[command(subcommand)]
        action: client::Action,
    },
    /// Load a relay with synthetic conferences and print what was delivered.
    Loadtest {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        regions: Option<PathBuf>,
        /// The relay (id in the inventory); its /cert and /metrics are read too.
        #[arg(long)]
        relay: String,
        /// Signing key trusted for one of the relay's jurisdictions.
        #[arg(long, default_value = "config/dev-ticket.key")]
        key: PathBuf,
        #[arg(long, default_value_t = 1)]
        conferences: usize,
        #[arg(long, default_value_t = 4)]
        participants: usize,
        /// Publishers per conference (each sends one video and one audio track).
        #[arg(long, default_value_t = 2)]
        publishers: usize,
        #[arg(long, default_value_t = 1_500_000)]
        video_bps: u64,
        #[arg(long, default_value_t = 50_000)]
        audio_bps: u64,
        /// Video packet size in bytes (header included): the largest
        /// datagram a frame is split into.
        #[arg(long, default_value_t = 1100)]
        packet_size: usize,
        /// Video frames per second: each frame (video-bps / 8 / fps bytes)
        /// is sent at once, split into datagrams, as an encoder's output
        /// is; 0 sends evenly spaced packets instead.
        #[arg(long, default_value_t = 30)]
        fps: u32,
        /// Consecutive addresses from --bind-ip the clients spread over
        /// (the relay limits connections per address).
        #[arg(long, default_value_t = 1)]
        sources: u8,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Local address the clients send from.
        #[arg(long, default_value = "127.0.0.1")]
        bind_ip: std::net::IpAddr,
    },
    /// Run a media relay from the config's inventory until SIGINT/SIGTERM.
    Relay {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        regions: Option<PathBuf>,
        /// This relay's id in the inventory.
        #[arg(long)]
        id: String,
        /// Datagrams queued per subscriber before the drop policy applies.
        #[arg(long, default_value_t = 256)]
        queue_packets: usize,
        /// Seconds connected clients get to leave after `going_away`.
        #[arg(long, default_value_t = 5)]
        shutdown_grace: u64,
        /// Shards (core tasks) and runtime threads; default: the relay's
        /// `workers` in the inventory, else one per available core.
        #[arg(long)]
        workers: Option<usize>,
        /// File holding the credential the relay presents to its routers
        /// (else the RESIDENCY_RELAY_CREDENTIAL environment variable).
        #[arg(long)]
        credential_file: Option<PathBuf>,
    },
    /// Run a router: the HTTP API that creates conferences and admits participants.
    Router {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        regions: Option<PathBuf>,
        /// This router's id in the config.
        #[arg(long)]
        id: String,
    },
    /// Run every router and relay of a config in one process, on loopback.
    Dev {
        #[arg(long, default_value = "config/dev.toml")]
        config: PathBuf,
        /// Run a scripted EU call, print where everyone went, and exit.
        #[arg(long)]
        demo: bool,
        /// Log to the console instead of data/dev.log.
        #[arg(long)]
        log_console: bool,
        /// Keep the EU router's records in this PostgreSQL database
        /// (`postgres://user@host:port/db`, password from
        /// RR_STORE_PASSWORD) and run a second EU replica beside it on
        /// 127.0.2.4:8080; the config with both is written beside --config.
        #[arg(long)]
        store: Option<String>,
    },
    /// Join load on a router: concurrent joins, then latency percentiles.
    Joinload {
        /// Router base URL, e.g. https://127.0.2.1:8080 (with --ca); several, comma
        /// separated or repeated, for replicas: the conference is created
        /// on the first and the clients are spread over all of them.
        #[arg(long, required = true, value_delimiter = ',')]
        router: Vec<String>,
        /// Tenant API key that creates the conference.
        #[arg(long)]
        api_key: String,
        /// Concurrent clients.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Also load GET /healthz the same way, for the HTTP floor to
        /// compare with.
        #[arg(long)]
        baseline: bool,
    },
    /// Cascade load: one publisher and N subscribers on one relay, then
    /// spread over three linked relays; egress per relay and latency.
    Cascadeload {
        /// The config `dev` runs (for the relays' metrics addresses).
        #[arg(long, default_value = "config/dev.toml")]
        config: PathBuf,
        #[arg(long, default_value = "https://127.0.2.1:8080")]
        router: String,
        #[arg(long, default_value = "dev-acme-key")]
        api_key: String,
        #[arg(long, default_value_t = 300)]
        subscribers: usize,
        /// Packets per second the publisher sends (1,100 bytes each).
        #[arg(long, default_value_t = 100)]
        pps: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
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
    Report {
        /// Router base URL.
        #[arg(long)]
        router: String,
        #[arg(long)]
        conference: String,
        /// The tenant's API key or the conference's host token.
        #[arg(long)]
        token: String,
        /// Write the report here (standard output otherwise).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a residency report offline against the router's public key.
    VerifyReport {
        file: PathBuf,
        /// The router's public key (hex or base64url), obtained independently.
        #[arg(long)]
        key: String,
    },
    /// Drain a relay: no new joins; its participants move to other relays.
    Drain {
        #[arg(long)]
        router: String,
        #[arg(long)]
        relay: String,
        /// The operator's admin token.
        #[arg(long)]
        token: String,
    },
    /// Create an Ed25519 ticket-signing key and print its public key for
    /// `ticket_keys`; with `--records-key`, a router's records key instead
    /// (printing its id).
    Keygen {
        /// Where to write the key (hex; created with mode 0600, never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Write a records key (`records_key` of a `[[router]]`: keys the
        /// address and passcode hashes in its store).
        #[arg(long)]
        records_key: bool,
        /// With `--records-key`: write the key a router derives from this
        /// signing key file (what it uses without `records_key`), so that
        /// the signing key can change and the records key stay.
        #[arg(long, requires = "records_key")]
        from_signing_key: Option<PathBuf>,
    },
    /// Mint a join ticket (for tests and manual use; routers issue them in production).
    Ticket {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        regions: Option<PathBuf>,
        /// File holding the signing key (as written by `keygen`).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        conference: String,
        #[arg(long)]
        jurisdiction: String,
        /// The relay the ticket admits to; must be inside the jurisdiction.
        #[arg(long)]
        relay: String,
        #[arg(long)]
        participant: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long)]
        publish: bool,
        #[arg(long)]
        subscribe: bool,
        #[arg(long)]
        moderate: bool,
        /// The conference is end-to-end encrypted: the relay refuses tracks
        /// not declared encrypted.
        #[arg(long)]
        e2ee: bool,
        /// Validity in seconds (at most 300).
        #[arg(long, default_value_t = 60)]
        ttl: u64,
    },
}

/// Makes the commands' own calls to the routers of `policy` trust what
/// relays trust (their `tls_ca` files), unless `--ca` said otherwise.
fn trust_routers_of(policy: &Policy) -> Result<(), String> {
    if crate::http_client::has_default_trust() {
        return Ok(());
    }
    let cas: Vec<&Path> = policy
        .routers()
        .iter()
        .filter_map(|r| r.tls_ca.as_deref())
        .collect();
    if !cas.is_empty() {
        crate::http_client::set_default_trust(crate::http_client::Tls::from_ca_files(cas)?);
    }
    Ok(())
}

/// Exit code for a refused route (a valid answer, not a failure of the tool).
const EXIT_REFUSED: u8 = 2;

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version go to stdout and succeed; every other
            // command-line error is a usage error (1), never a refusal (2).
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Err(e) = crate::http_client::trust_ca_file(cli.ca.as_deref(), cli.server_name.as_deref())
    {
        eprintln!("--ca: {e}");
        return ExitCode::FAILURE;
    }
    match cli.command {
        Command::Check {
            config,
            regions,
            against: None,
            ..
        } => check(&config, regions.as_deref()),
        Command::Check {
            config,
            regions,
            against: Some(url),
            token,
        } => {
            let policy = match load(&config, regions.as_deref()) {
                Ok(p) => p,
                Err(code) => return code,
            };
            if let Err(e) = trust_routers_of(&policy) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            match dry_run::run(&policy, &url, token.as_deref().unwrap_or_default()) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Route {
            config,
            regions,
            ip,
            jurisdiction,
            tenant,
            hosting,
            down,
            json,
        } => {
            let policy = match load(&config, regions.as_deref()) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let request = route::Request {
                ip,
                jurisdiction: jurisdiction.as_deref(),
                tenant: tenant.as_deref(),
                hosting: &hosting,
                down: &down,
            };
            match route::run(&policy, &request) {
                Ok(report) => {
                    let mut out = std::io::stdout().lock();
                    let written = if json {
                        writeln!(out, "{}", report.to_json(&policy))
                    } else {
                        write!(out, "{}", report.to_text(&policy))
                    };
                    if written.is_err() {
                        return ExitCode::FAILURE;
                    }
                    if report.is_refusal() {
                        ExitCode::from(EXIT_REFUSED)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Keygen {
            out,
            records_key,
            from_signing_key,
        } => keygen(&out, records_key, from_signing_key.as_deref()),
        Command::Client { action } => match client::run(action) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        },
        Command::Loadtest {
            config,
            regions,
            relay,
            key,
            conferences,
            participants,
            publishers,
            video_bps,
            audio_bps,
            packet_size,
            fps,
            sources,
            duration,
            bind_ip,
        } => {
            let policy = match load(&config, regions.as_deref()) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let plan = loadtest::Plan {
                relay,
                key,
                conferences,
                participants,
                publishers,
                video_bps,
                audio_bps,
                packet_size: packet_size.clamp(
                    crate::wire::datagram::HEADER_LEN + 8,
                    crate::wire::datagram::MAX_DATAGRAM_LEN,
                ),
                fps,
                sources: sources.max(1),
                duration: std::time::Duration::from_secs(duration.max(1)),
                bind_ip,
            };
            match loadtest::run(&policy, plan) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Relay {
            config,
            regions,
            id,
            queue_packets,
            shutdown_grace,
            workers,
            credential_file,
        } => {
            let policy = match load(&config, regions.as_deref()) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let credential = match credential_file {
                Some(path) => match std::fs::read_to_string(&path) {
                    Ok(text) => Some(text.trim().to_owned()),
                    Err(e) => {
                        eprintln!("error: cannot read {}: {e}", path.display());
                        return ExitCode::FAILURE;
                    }
                },
                None => std::env::var("RESIDENCY_RELAY_CREDENTIAL").ok(),
            };
            let source = policy::Source { config, regions };
            match relay::run(
                policy,
                source,
                &id,
                queue_packets,
                shutdown_grace,
                workers,
                credential,
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Router {
            config,
            regions,
            id,
        } => {
            let policy = match load(&config, regions.as_deref()) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let source = policy::Source { config, regions };
            report(router::run(policy, &id, source))
        }
        Command::Dev {
            config,
            demo,
            log_console,
            store,
        } => {
            let config = match store {
                None => config,
                Some(store) => match dev::replicated_config(&config, &store) {
                    Ok(path) => path,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            let policy = match load(&config, None) {
                Ok(p) => p,
                Err(code) => return code,
            };
            report(dev::run(policy, demo, log_console))
        }
        Command::Joinload {
            router,
            api_key,
            concurrency,
            seconds,
            baseline,
        } => report(joinload::run(
            &router,
            &api_key,
            concurrency,
            seconds,
            baseline,
        )),
        Command::Overload(plan) => report(overload::run(plan)),
        Command::Hostile(plan) => report(hostile::run(plan)),
        Command::HostileWorker(worker) => report(hostile::run_worker(worker)),
        Command::Cascadeload {
            config,
            router,
            api_key,
            subscribers,
            pps,
            seconds,
        } => {
            let policy = match load(&config, None) {
                Ok(p) => p,
                Err(code) => return code,
            };
            report(cascadeload::run(
                &policy,
                &router,
                &api_key,
                subscribers,
                pps,
                seconds,
            ))
        }
        Command::Report {
            router,
            conference,
            token,
            out,
        } => report(report::fetch(&router, &conference, &token, out.as_deref())),
        Command::VerifyReport { file, key } => match report::verify(&file, &key) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        },
        Command::Drain {
            router,
            relay,
            token,
        } => report(report::drain(&router, &relay, &token)),
        Command::Ticket {
            config,
            regions,
            key,
            conference,
            jurisdiction,
            relay,
            participant,
            name,
            publish,
            subscribe,
            moderate,
            e2ee,
            ttl,
        } => {
            let policy = match load(&config, regions.as_deref()) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let request = ticket::Request {
                key: &key,
                conference,
                jurisdiction,
                relay,
                participant,
                name,
                grants: crate::ticket::Grants {
                    publish,
                    subscribe,
                    moderate,
                },
                e2ee,
                ttl,
            };
            match ticket::mint(&policy, request) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("error: {message}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::E2eeSecret { links } => {
            let secret = match crate::client::e2ee::Secret::random() {
                Ok(s) => s.to_base64(),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if links.is_empty() {
                println!("{secret}");
            }
            for link in links {
                let sep = if link.contains('#') { '&' } else { '#' };
                println!("{link}{sep}k={secret}");
            }
            ExitCode::SUCCESS
        }
        Command::HashApiKey => {
            let mut line = String::new();
            if std::io::stdin().lock().read_line(&mut line).is_err() || line.trim().is_empty() {
                eprintln!("error: give the API key on standard input");
                return ExitCode::FAILURE;
            }
            println!("{}", hex::encode(Sha256::digest(line.trim().as_bytes())));
            ExitCode::SUCCESS
        }
    }
}

/// Prints an error and fails, or succeeds.
fn report(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(out: &Path, records_key: bool, from_signing_key: Option<&Path>) -> ExitCode {
    let mut seed = [0u8; 32];
    if let Some(path) = from_signing_key {
        let signing = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| crate::ticket::parse_signing_key(t.trim()));
        match signing {
            Ok(k) => {
                seed = crate::secret::RecordsKey::derived_from_signing_key(&k.to_bytes()).to_bytes()
            }
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    } else if let Err(e) = getrandom::fill(&mut seed) {
        eprintln!("error: no randomness for a key: {e}");
        return ExitCode::FAILURE;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options
        .open(out)
        .and_then(|mut f| writeln!(f, "{}", hex::encode(seed)));
    if let Err(e) = written {
        eprintln!("error: cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    if records_key {
        let key = crate::secret::RecordsKey::from_bytes(seed);
        println!("records key id {}", hex::encode(key.id()));
    } else {
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        println!("{}", hex::encode(key.verifying_key().to_bytes()));
    }
    ExitCode::SUCCESS
}

fn load(config: &Path, regions: Option<&Path>) -> Result<Policy, ExitCode> {
    policy::load_with_regions(config, regions).map_err(|e| {
        eprint!("{e}");
        ExitCode::FAILURE
    })
}

fn check(config: &Path, regions: Option<&Path>) -> ExitCode {
    let policy = match load(config, regions) {
        Ok(p) => p,
        Err(code) => return code,
    };
    print!("{}", summary(&policy));
    ExitCode::SUCCESS
}

/// The `check` summary: jurisdictions, relays per jurisdiction, plans, tenants, GeoIP.
pub fn summary(policy: &Policy) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{}: OK", policy.source().display());
    let _ = writeln!(s, "jurisdictions ({}):", policy.jurisdictions().len());
    for j in policy.jurisdictions() {
        let relays: Vec<&str> = j.relays().map(|r| policy.relay(r).id.as_str()).collect();
        let _ = writeln!(
            s,
            "  {:<8} {} ({}; {} {})",
            j.id,
            j.name,
            j.legal_basis,
            j.countries.len(),
            if j.countries.len() == 1 {
                "country"
            } else {
                "countries"
            }
        );
        if relays.is_empty() {
            let _ = writeln!(
                s,
                "           relays: none (every route into {} is refused)",
                j.id
            );
        } else {
            let _ = writeln!(
                s,
                "           relays ({}): {}",
                relays.len(),
                relays.join(", ")
            );
        }
        if let Some(d) = j.default_relay {
            let _ = writeln!(
                s,
                "           default relay for unknown locations: {}",
                policy.relay(d).id
            );
        }
    }
    let _ = writeln!(s, "relays ({}):", policy.relays().len());
    for (i, r) in policy.relays().iter().enumerate() {
        let member: Vec<&str> = policy
            .jurisdictions_of(crate::policy::RelayIdx(i as u32))
            .map(|j| j.id.as_str())
            .collect();
        let _ = writeln!(
            s,
            "  {:<12} {} {} (in {}), {} participants, {} bit/s",
            r.id,
            r.country,
            r.quic_addr,
            member.join(", "),
            r.max_participants,
            r.max_bitrate_bps
        );
    }
    let default = &policy.jurisdiction(policy.default_jurisdiction()).id;
    let _ = writeln!(s, "operator default jurisdiction: {default}");
    let _ = writeln!(s, "plans ({}):", policy.plans().len());
    for p in policy.plans() {
        let choices: Vec<&str> = p
            .jurisdictions
            .iter()
            .map(|j| policy.jurisdiction(*j).id.as_str())
            .collect();
        let default = &policy.jurisdiction(p.default).id;
        if p.may_choose() {
            let _ = writeln!(
                s,
                "  {:<12} may choose {}; default {default}",
                p.id,
                choices.join(", ")
            );
        } else {
            let _ = writeln!(s, "  {:<12} may not choose; pinned to {default}", p.id);
        }
    }
    let _ = writeln!(s, "tenants ({}):", policy.tenants().len());
    for t in policy.tenants() {
        let _ = writeln!(s, "  {:<12} plan {}", t.id, policy.plan_of(t).id);
    }
    let geo = policy.geoip();
    match geo.database() {
        Some(db) => {
            let _ = writeln!(s, "geoip: {} ({})", db.path().display(), db.database_type());
        }
        None => {
            let _ = writeln!(
                s,
                "geoip: no database (overrides only; other addresses are unlocated)"
            );
        }
    }
    let _ = writeln!(
        s,
        "geoip overrides: {}; trusted proxies: {}",
        geo.overrides().entries().len(),
        policy.trusted_proxies().len()
    );
    let _ = writeln!(s, "routers ({}):", policy.routers().len());
    for r in policy.routers() {
        let served: Vec<&str> = r
            .jurisdictions
            .iter()
            .map(|j| policy.jurisdiction(*j).id.as_str())
            .collect();
        let _ = writeln!(
            s,
            "  {:<16} {} {} serves {}",
            r.id,
            r.country,
            r.url,
            served.join(", ")
        );
        let _ = match (&r.tls, &r.tls_ca) {
            (Some((cert, _)), ca) => writeln!(
                s,
                "    https: serves {}{}",
                cert.display(),
                ca.as_ref().map_or(String::new(), |ca| format!(
                    "; relays verify it against {}",
                    ca.display()
                ))
            ),
            (None, _) => writeln!(
                s,
                "    warning: plain HTTP (plain_http = true): only behind a TLS-terminating proxy, or passcodes, tickets{} cross the network in clear",
                if r.relay_url.starts_with("http://") {
                    " and relay credentials (relay_url is http://)"
                } else {
                    ""
                }
            ),
        };
        let _ = match &r.store {
            policy::StoreLocation::Sqlite(path) => {
                writeln!(
                    s,
                    "    store: SQLite {} (on the router's machine)",
                    path.display()
                )
            }
            policy::StoreLocation::Postgres(pg) => {
                let replicas: Vec<&str> = policy
                    .replicas(r)
                    .iter()
                    .map(|o| o.id.as_str())
                    .filter(|o| *o != r.id)
                    .collect();
                writeln!(
                    s,
                    "    store: PostgreSQL {} in {}{}{}",
                    pg.url,
                    pg.country,
                    if pg.ca.is_some() {
                        ", TLS verified"
                    } else {
                        ""
                    },
                    if replicas.is_empty() {
                        String::new()
                    } else {
                        format!("; replicas: {}", replicas.join(", "))
                    }
                )
            }
        };
        let _ = writeln!(
            s,
            "    records key: {}{} (keys address and passcode hashes; not in the store: back it up apart from it)",
            match &r.records_key {
                Some(path) => path.display().to_string(),
                None => format!("derived from {}", r.signing_key.display()),
            },
            match r.records_key_previous.len() {
                0 => String::new(),
                n => format!(", {n} previous still accepted"),
            }
        );
    }
    for j in policy.jurisdictions() {
        if policy
            .jurisdiction_idx(&j.id)
            .and_then(|i| policy.router_for(i))
            .is_none()
            && !policy.routers().is_empty()
        {
            let _ = writeln!(
                s,
                "  note: no router serves '{}': its conferences cannot be created",
                j.id
            );
        }
    }
    if !policy.routers().is_empty() {
        for r in policy.relays() {
            if r.credential_sha256.is_none() {
                let _ = writeln!(
                    s,
                    "  note: relay '{}' has no credential_sha256: it cannot register and gets no joins",
                    r.id
                );
            }
        }
    }
    s
}
