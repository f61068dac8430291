//! Observability for ArqonBus: log set-up, Prometheus metrics and the live
//! telemetry event stream.
//!
//! This layer owns how the process reports on itself. It depends only on
//! `arqon-protocol` (for error codes and timestamps) and knows nothing of
//! routing or sockets: the server translates bus events into calls on
//! [`BusMetrics`] and [`TelemetryHub`]. The layers below emit `tracing` events
//! and never configure a subscriber themselves; the server calls
//! [`init_logging`] once.
//!
//! # Layout
//!
//! - [`init_logging`], [`LogFormat`]: `ARQON_LOG` / `ARQON_LOG_FORMAT`.
//! - [`BusMetrics`]: every metric, with handles registered up front.
//! - [`TelemetryHub`]: the bounded, lossy-and-says-so event broadcast.

mod histogram;
mod metrics;
mod stream;

pub use metrics::{
    BudgetReport, BusMetrics, CHANNEL_LIMIT_SCOPES, ClusterReport, FRAME_KINDS, SLOW_CAUSES, STORAGE_OPS, StorageOp,
    WEBHOOK_DROPS, sample,
};
pub use stream::{DEFAULT_CAPACITY, EVENT_TYPES, TelemetryHub, parse_filter};

use std::fmt;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// Log line format, from `ARQON_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines. Default.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = TelemetryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            other => Err(TelemetryError::BadFormat(other.to_owned())),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        })
    }
}

/// Everything that can go wrong in this layer.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `ARQON_LOG` is not a valid filter.
    #[error("ARQON_LOG={filter:?} is not a valid log filter: {reason}")]
    BadFilter {
        /// The filter given.
        filter: String,
        /// Why it does not parse.
        reason: String,
    },
    /// `ARQON_LOG_FORMAT` is neither `pretty` nor `json`.
    #[error("ARQON_LOG_FORMAT={0:?} is not a log format (expected pretty or json)")]
    BadFormat(String),
    /// A global subscriber was already installed.
    #[error("logging was already initialised")]
    AlreadyInitialised,
}

/// Default filter: the bus at `info`, everything else at `warn`. Nothing is
/// logged per delivered message at this level.
pub const DEFAULT_FILTER: &str = "warn,arqon=info,arqonbus=info";

/// Installs the global log subscriber, writing to stderr.
///
/// `filter` is an env-filter directive string (`ARQON_LOG`); `None` uses
/// [`DEFAULT_FILTER`].
pub fn init_logging(filter: Option<&str>, format: LogFormat) -> Result<(), TelemetryError> {
    let directives = filter.unwrap_or(DEFAULT_FILTER);
    let filter = EnvFilter::builder()
        .parse(directives)
        .map_err(|e| TelemetryError::BadFilter { filter: directives.to_owned(), reason: e.to_string() })?;
    // Colour only for a person at a terminal: ANSI codes in a file, a pipe
    // or a log collector are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let result = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInitialised)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("pretty".parse::<LogFormat>().unwrap(), LogFormat::Pretty);
        assert!(matches!("xml".parse::<LogFormat>(), Err(TelemetryError::BadFormat(_))));
    }

    #[test]
    fn bad_filter_is_an_error_not_a_panic() {
        let err = init_logging(Some("arqon=notalevel[["), LogFormat::Pretty).unwrap_err();
        assert!(err.to_string().contains("ARQON_LOG"), "{err}");
    }
}
