//! Keys and secrets: `keygen` (ticket-signing and records keys),
//! `hash-api-key` and `e2ee-secret`.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;

use sha2::{Digest, Sha256};

use super::args::E2eeSecretArgs;

pub(super) fn keygen(out: &Path, records_key: bool, from_signing_key: Option<&Path>) -> ExitCode {
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

/// Reads an API key from standard input and prints its SHA-256.
pub(super) fn hash_api_key() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() || line.trim().is_empty() {
        eprintln!("error: give the API key on standard input");
        return ExitCode::FAILURE;
    }
    println!("{}", hex::encode(Sha256::digest(line.trim().as_bytes())));
    ExitCode::SUCCESS
}

/// Makes an end-to-end encrypted conference's secret and prints it, or
/// each link given with it in the fragment.
pub(super) fn e2ee_secret(a: E2eeSecretArgs) -> ExitCode {
    let secret = match crate::client::e2ee::Secret::random() {
        Ok(s) => s.to_base64(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if a.links.is_empty() {
        println!("{secret}");
    }
    for link in a.links {
        let sep = if link.contains('#') { '&' } else { '#' };
        println!("{link}{sep}k={secret}");
    }
    ExitCode::SUCCESS
}
