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
