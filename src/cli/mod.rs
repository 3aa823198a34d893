//! The `residency-relay` command line: [`args`] says what each command
//! takes, [`main`] parses it and hands each command to the module that
//! runs it, and what several commands share lives here.

mod args;
mod cascadeload;
mod check;
mod client;
mod dev;
mod dry_run;
mod hostile;
mod joinload;
mod keygen;
mod loadtest;
mod overload;
mod relay;
mod report;
mod route;
mod router;
mod ticket;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

use crate::policy::{self, Policy};
use args::{Cli, Command};

pub use check::summary;

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
    run(cli.command)
}

/// Which module runs each command.
fn run(command: Command) -> ExitCode {
    match command {
        Command::Check(a) => check::command(a),
        Command::Route(a) => route::command(a),
        Command::HashApiKey => keygen::hash_api_key(),
        Command::E2eeSecret(a) => keygen::e2ee_secret(a),
        Command::Client { action } => report(client::run(action)),
        Command::Loadtest(a) => loadtest::command(a),
        Command::Relay(a) => relay::command(a),
        Command::Router(a) => router::command(a),
        Command::Dev(a) => dev::command(a),
        Command::Joinload(a) => report(joinload::run(
            &a.router,
            &a.api_key,
            a.concurrency,
            a.seconds,
            a.baseline,
        )),
        Command::Cascadeload(a) => cascadeload::command(a),
        Command::Overload(plan) => report(overload::run(plan)),
        Command::Hostile(plan) => report(hostile::run(plan)),
        Command::HostileWorker(worker) => report(hostile::run_worker(worker)),
        Command::Report(a) => report(report::fetch(
            &a.router,
            &a.conference,
            &a.token,
            a.out.as_deref(),
        )),
        Command::VerifyReport(a) => report::verify_command(a),
        Command::Drain(a) => report(report::drain(&a.router, &a.relay, &a.token)),
        Command::Keygen(a) => keygen::keygen(&a.out, a.records_key, a.from_signing_key.as_deref()),
        Command::Ticket(a) => ticket::command(a),
    }
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

/// Loads the policy files, printing every problem if they do not load.
fn load(config: &Path, regions: Option<&Path>) -> Result<Policy, ExitCode> {
    policy::load_with_regions(config, regions).map_err(|e| {
        eprint!("{e}");
        ExitCode::FAILURE
    })
}
