//! Process-wide logging: human or JSON lines on standard error, the level
//! from the config unless `RUST_LOG` is set, and that level changeable by a
//! policy reload.

use std::sync::OnceLock;

use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The handle of the level filter, when this module set logging up and
/// `RUST_LOG` did not fix the level.
static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Sets up logging to `path` (appended to) instead of standard error, for
/// `dev`, whose console is for its summary. Errors if the file cannot be
/// opened.
pub fn init_to_file(json: bool, level: &str, path: &std::path::Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    install(json, level, std::sync::Mutex::new(file), false);
    Ok(())
}

/// Sets up logging (once per process; later calls change nothing).
pub fn init(json: bool, level: &str) {
    install(json, level, std::io::stderr, true);
}

/// Logs as a config's `[logging]` says: human or JSON lines on stderr, its
/// level unless `RUST_LOG` is set.
pub fn init_as(logging: &crate::policy::Logging) {
    init(logging.json, &logging.level);
}

fn install<W>(json: bool, level: &str, writer: W, ansi: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let from_env = std::env::var_os("RUST_LOG").is_some();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let output = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if json {
        registry.with(output.json()).try_init()
    } else {
        registry.with(output).try_init()
    }
    .is_ok();
    if installed && !from_env {
        let _ = LEVEL.set(handle);
    }
}

/// Puts the filter directive `level` in force. `Ok(false)` when `RUST_LOG`
/// fixes the level or logging was set up elsewhere (e.g. a test).
pub fn set_level(level: &str) -> Result<bool, String> {
    let Some(handle) = LEVEL.get() else {
        return Ok(false);
    };
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    Ok(true)
}

/// Applies a reloaded `[logging]` level if it changed; returns what needs a
/// restart instead (the format, or the level when `RUST_LOG` fixes it).
pub fn reload(old: &crate::policy::Logging, new: &crate::policy::Logging) -> Vec<String> {
    let mut restart = Vec::new();
    if old.json != new.json {
        restart.push("[logging] format".to_owned());
    }
    if old.level != new.level {
        match set_level(&new.level) {
            Ok(true) => tracing::info!(level = %new.level, "log level changed"),
            Ok(false) => restart.push("[logging] level (RUST_LOG sets it)".to_owned()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot apply the new log level");
                restart.push("[logging] level".to_owned());
            }
        }
    }
    restart
}
