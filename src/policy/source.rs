//! Where a running service's policy comes from, for reloads.

use std::path::PathBuf;

use super::{ConfigError, Policy};

/// The policy files a service was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub config: PathBuf,
    /// The `--regions` override of the config's `regions_dir`, if given.
    pub regions: Option<PathBuf>,
}

impl Source {
    /// Reads and checks the files again (every problem reported).
    pub fn load(&self) -> Result<Policy, ConfigError> {
        super::load_with_regions(&self.config, self.regions.as_deref())
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Reloaded {
    /// What differs from the policy it replaced, one line each ([`super::diff`]).
    pub changes: Vec<String>,
    /// Settings that changed but take effect only at the next restart.
    pub restart_needed: Vec<String>,
}

/// Why a reload was refused; the policy in force stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new files do not load: every problem.
    #[error("{0}")]
    Invalid(ConfigError),
    /// They load, but this service cannot run them.
    #[error("{0}")]
    Refused(String),
}

/// SIGHUP deliveries: what operators send a service to reload its policy.
#[derive(Debug)]
pub struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Starts listening (needs a tokio runtime with signals enabled).
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            let signal =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            if signal.is_none() {
                tracing::warn!("cannot listen for SIGHUP; reload through the admin endpoint");
            }
            Hangups { signal }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    /// Waits for the next SIGHUP; `false` when none can come.
    pub async fn next(&mut self) -> bool {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal {
            return s.recv().await.is_some();
        }
        std::future::pending::<()>().await;
        false
    }
}

impl Default for Hangups {
    fn default() -> Self {
        Self::new()
    }
}
