//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Why a configuration could not be loaded or is not acceptable.
///
/// Every message names what to fix: the file, the key or variable, and the
/// offending value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named explicitly is missing or unreadable.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        /// The file as given.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },

    /// The file is not valid TOML.
    #[error("configuration file {} is not valid TOML: {message}", path.display())]
    Parse {
        /// The file as given.
        path: PathBuf,
        /// The parser's description, with line and column.
        message: String,
    },

    /// The file sets a key that names no setting (a typo, most likely).
    #[error("unknown configuration key `{key}` in {origin}")]
    UnknownKey {
        /// The dotted key, e.g. `server.prot`.
        key: String,
        /// The file that sets it.
        origin: String,
    },

    /// A key that was a setting in an earlier version and is no more; the
    /// message names what replaced it.
    #[error("configuration key `{key}` in {origin} is retired: use {replacement}")]
    Retired {
        /// The dotted key, e.g. `limits.outbound_queue`.
        key: String,
        /// The file or environment variable that sets it.
        origin: String,
        /// What to set instead, and why.
        replacement: &'static str,
    },

    /// An `ARQON_` environment variable names no setting. `ARQON_LOG` and
    /// `ARQON_LOG_FORMAT` belong to the log set-up and never cause this.
    #[error(
        "environment variable {var} names no configuration key \
         (expected ARQON_<SECTION>__<KEY>, e.g. ARQON_SERVER__PORT)"
    )]
    UnknownVar {
        /// The variable's name.
        var: String,
    },

    /// A value that cannot be read as its key's type: text for a number, a
    /// number out of range, an unknown role.
    #[error("invalid value {value} for `{key}` in {origin}: {reason}")]
    BadValue {
        /// The dotted key, e.g. `server.port`.
        key: String,
        /// The value as given (text in quotes).
        value: String,
        /// The file or environment variable that set it.
        origin: String,
        /// What was expected, including the allowed values where there is a list.
        reason: String,
    },

    /// A well-typed value that breaks a rule of [`Config::validate`](crate::Config::validate).
    #[error("invalid value {value} for `{key}`: {rule}")]
    Invalid {
        /// The dotted key, e.g. `server.heartbeat_s`.
        key: &'static str,
        /// The value in effect.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },

    /// The configuration has no TOML form (`--print-config`).
    #[error("cannot print the configuration as TOML: {0}")]
    Print(String),

    /// The `config` library failed in a way the checks above do not foresee.
    #[error("cannot load configuration: {0}")]
    Load(#[source] config::ConfigError),
}
