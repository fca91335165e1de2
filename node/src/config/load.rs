//! Reading a configuration: the file (or TOML text) parsed into the raw mirror,
//! command-line overrides applied, then validated into a [`Config`].

use std::path::Path;

use time::OffsetDateTime;

use crate::config::error::{ConfigError, ConfigErrors};
use crate::config::overrides::Overrides;
use crate::config::raw::RawConfig;
use crate::config::types::Config;
use crate::config::validate::Validator;

impl Config {
    /// Reads, parses and validates the config file at `path`, with `overrides`
    /// applied. Relative paths in the file are relative to the file's directory.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        let base_dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Config::from_toml(&text, base_dir, overrides)
    }

    /// Parses and validates TOML text as if read from a file in `base_dir`.
    pub fn from_toml(
        text: &str,
        base_dir: &Path,
        overrides: &Overrides,
    ) -> Result<Config, ConfigErrors> {
        let mut raw = RawConfig::from_toml(text)?;
        let file_seeds = raw.node.seeds.len();
        overrides.apply(&mut raw);
        Config::validate(raw, base_dir).map_err(|mut errors| {
            // A bad `--seed` flag is reported as the flag, not as a seed index the
            // file does not have.
            for e in &mut errors.0 {
                let index = e
                    .field
                    .strip_prefix("node.seeds[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|i| i.parse::<usize>().ok());
                if index.is_some_and(|i| i >= file_seeds) {
                    e.field = "--seed".to_string();
                }
            }
            errors
        })
    }

    /// Validates a raw configuration; relative paths in it are relative to
    /// `base_dir`. Reads the TLS files. Returns every problem found.
    pub fn validate(raw: RawConfig, base_dir: &Path) -> Result<Config, ConfigErrors> {
        Validator::new(base_dir, OffsetDateTime::now_utc()).run(raw)
    }
}
