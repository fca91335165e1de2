//! What validation reports: one [`ConfigError`] per problem, naming the TOML field and the reason.

use std::fmt;

use thiserror::Error;

/// One problem in a configuration: the field it is about and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    /// The TOML path of the field (`node.listen`, `service[1].health.timeout`,
    /// `tls.cert`), a command-line flag (`--seed`), or the config file's path when
    /// the file itself cannot be read.
    pub field: String,
    /// What is wrong, and where it helps, what to do about it.
    pub reason: String,
}

impl ConfigError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Every problem found in a configuration, in file order as far as possible.
/// Displayed one error per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// The first error about exactly `field`, if any.
    pub fn find(&self, field: &str) -> Option<&ConfigError> {
        self.0.iter().find(|e| e.field == field)
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (a returned `ConfigErrors` always has at least one).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}
