//! The `arqonbus` command line: arguments, logging, signals.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use arqon_telemetry::LogFormat;

use crate::{Bus, Config, ServerError};

const USAGE: &str = "\
ArqonBus: a small, fast real-time message bus over WebSocket.

Usage: arqonbus [--config PATH]
       arqonbus --check-config [PATH]
       arqonbus --print-config [--config PATH]

Options:
  -c, --config PATH       read settings from a TOML file (see docs/configuration.md)
  --check-config [PATH]   load and check the configuration (PATH, or --config,
                          and the ARQON_* variables), TLS files and auth keys
                          included, then exit: 0 if the server would start with it
  --print-config          print the effective configuration as TOML, secrets
                          redacted, then exit
  -h, --help              print this help
  -V, --version           print the version and git revision

Every setting can also be given as an environment variable, e.g.
ARQON_LIMITS__RATE_PER_S=0 (these win over the file). A second instance on
the same machine needs both of its ports moved:
ARQON_SERVER__PORT=9200 ARQON_MONITORING__PORT=9201 arqonbus
Logging: ARQON_LOG (filter, e.g. \"info\" or \"arqon=debug\"), ARQON_LOG_FORMAT (pretty|json);
colour only when stderr is a terminal.
";

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the server.
    Run {
        /// `--config PATH`, if given.
        config: Option<PathBuf>,
    },
    /// Load and check the configuration, then exit.
    CheckConfig {
        /// The file: `--check-config PATH` or `--config PATH`, if given.
        config: Option<PathBuf>,
    },
    /// Print the effective configuration, secrets redacted, then exit.
    PrintConfig {
        /// `--config PATH`, if given.
        config: Option<PathBuf>,
    },
    /// Print help.
    Help,
    /// Print the version.
    Version,
}

/// Parses the arguments after the program name.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, ServerError> {
    let mut args = args.into_iter().peekable();
    let mut config = None;
    let (mut check, mut print) = (false, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-c" | "--config" => match args.next() {
                Some(path) => config = Some(PathBuf::from(path)),
                None => return Err(ServerError::Usage(format!("{arg} needs a path\n\n{USAGE}"))),
            },
            "--check-config" => {
                check = true;
                // The path is optional: anything that is not an option.
                if let Some(path) = args.next_if(|next| !next.starts_with('-')) {
                    config = Some(PathBuf::from(path));
                }
            }
            "--print-config" => print = true,
            other => match other.strip_prefix("--config=").or_else(|| other.strip_prefix("--check-config=")) {
                Some(path) => {
                    check |= other.starts_with("--check-config=");
                    config = Some(PathBuf::from(path));
                }
                None => return Err(ServerError::Usage(format!("unknown argument {other:?}\n\n{USAGE}"))),
            },
        }
    }
    Ok(match (check, print) {
        (true, true) => {
            return Err(ServerError::Usage(format!("--check-config and --print-config are exclusive\n\n{USAGE}")));
        }
        (true, false) => Command::CheckConfig { config },
        (false, true) => Command::PrintConfig { config },
        (false, false) => Command::Run { config },
    })
}

/// The whole program: parse, set up logging, serve until SIGINT/SIGTERM.
pub fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Ok(Command::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("arqonbus {} (git {})", env!("CARGO_PKG_VERSION"), crate::GIT_REV);
            ExitCode::SUCCESS
        }
        Ok(Command::CheckConfig { config }) => match check_config(config.as_deref()) {
            Ok(summary) => {
                println!("arqonbus: configuration OK ({summary})");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("arqonbus: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(Command::PrintConfig { config }) => {
            match Config::from_env(config.as_deref())
                .map_err(ServerError::from)
                .and_then(|c| Ok(c.redacted().to_toml()?))
            {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("arqonbus: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok(Command::Run { config }) => match run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("arqonbus: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("arqonbus: {e}");
            ExitCode::from(2)
        }
    }
}

/// Everything start-up checks before it binds: the settings and their
/// rules, the TLS certificate and key, the auth keys. Returns what was read.
fn check_config(path: Option<&std::path::Path>) -> Result<String, ServerError> {
    let config = Config::from_env(path)?;
    crate::transport_config(&config)?;
    crate::auth::Authenticator::from_config(&config.auth)?;
    // The CA files of https:// hooks and webhooks.
    crate::connect_hook::ConnectHook::from_config(&config.hooks)?;
    crate::join_hook::HttpJoinGuard::from_config(&config.hooks)?;
    if config.webhooks.enabled() {
        crate::http_client::Target::parse(&config.webhooks.url, &config.webhooks.ca_file, "webhooks.ca_file")?;
    }
    let vars = std::env::vars_os()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            name.starts_with("ARQON_") && name != "ARQON_LOG" && name != "ARQON_LOG_FORMAT"
        })
        .count();
    let file = path.map_or_else(|| "no file".to_owned(), |p| p.display().to_string());
    Ok(format!("{file}, {vars} ARQON_* variable(s)"))
}

fn run(config_path: Option<PathBuf>) -> Result<(), ServerError> {
    let config = Config::from_env(config_path.as_deref())?;
    let format = match std::env::var("ARQON_LOG_FORMAT") {
        Ok(format) => format.parse::<LogFormat>()?,
        Err(_) => LogFormat::default(),
    };
    arqon_telemetry::init_logging(std::env::var("ARQON_LOG").ok().as_deref(), format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ServerError::Usage(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let bus = Bus::bind(&config).await?;
        let shutdown = shutdown_signal();
        // One machine-readable line on stdout: scripts and tests wait for it
        // (with port 0 it is the only way to learn the port).
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "ArqonBus listening on {}", bus.url());
        if let Some(monitoring) = bus.monitoring_url() {
            let _ = writeln!(
                stdout,
                "Monitoring on {monitoring} (dashboard /, /health, /ready, /status, /metrics, /telemetry)"
            );
        }
        let _ = stdout.flush();
        bus.serve(shutdown).await
    })
}

/// A future that resolves on SIGINT or SIGTERM. The handlers are installed
/// here, before the ready line is printed: a signal sent right after that
/// line must stop the server cleanly, not kill it with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (interrupt, terminate) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()));
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                (interrupt, terminate) => {
                    let error = interrupt.err().or(terminate.err()).map(|e| e.to_string()).unwrap_or_default();
                    tracing::warn!(error = %error, "cannot listen for SIGINT/SIGTERM; only Ctrl-C stops the server");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            tracing::info!("shutdown requested");
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutdown requested");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, ServerError> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse(&[]).unwrap(), Command::Run { config: None });
        assert_eq!(parse(&["--config", "a.toml"]).unwrap(), Command::Run { config: Some("a.toml".into()) });
        assert_eq!(parse(&["-c", "a.toml"]).unwrap(), Command::Run { config: Some("a.toml".into()) });
        assert_eq!(parse(&["--config=a.toml"]).unwrap(), Command::Run { config: Some("a.toml".into()) });
        assert_eq!(parse(&["--help"]).unwrap(), Command::Help);
        assert_eq!(parse(&["-V"]).unwrap(), Command::Version);
        assert_eq!(parse(&["--check-config"]).unwrap(), Command::CheckConfig { config: None });
        assert_eq!(
            parse(&["--check-config", "a.toml"]).unwrap(),
            Command::CheckConfig { config: Some("a.toml".into()) }
        );
        assert_eq!(parse(&["--check-config=a.toml"]).unwrap(), Command::CheckConfig { config: Some("a.toml".into()) });
        assert_eq!(
            parse(&["--check-config", "-c", "a.toml"]).unwrap(),
            Command::CheckConfig { config: Some("a.toml".into()) }
        );
        assert_eq!(
            parse(&["--print-config", "-c", "a.toml"]).unwrap(),
            Command::PrintConfig { config: Some("a.toml".into()) }
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        assert!(matches!(parse(&["--config"]), Err(ServerError::Usage(_))));
        assert!(matches!(parse(&["--port", "1"]), Err(ServerError::Usage(_))));
        assert!(matches!(parse(&["--check-config", "--print-config"]), Err(ServerError::Usage(_))));
    }
}
