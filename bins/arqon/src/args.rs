//! The command line: global options, the command, its options and operands.
//!
//! Hand-written on purpose: a few dozen lines instead of a CLI crate keeps
//! the build quick. Options may come before or after the command, as
//! `--name value` or `--name=value`; `--` ends the options.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::Failure;
use crate::cmd::{COMMANDS, Command};

/// The bus `--url` defaults to: a server started with the default config.
pub(crate) const DEFAULT_URL: &str = "ws://127.0.0.1:9100/ws";

/// Options every command accepts, with a value.
const GLOBAL_VALUED: &[&str] = &["--url", "--token", "--ca"];
/// Options every command accepts, without a value.
const GLOBAL_SWITCHES: &[&str] = &["--json", "--help", "-h", "--version", "-V"];

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Parse {
    /// `--help`, `-h` or `help`.
    Help,
    /// `--version` or `-V`.
    Version,
    /// Run a command.
    Run(Invocation),
}

/// A command to run, with everything given for it.
#[derive(Debug)]
pub(crate) struct Invocation {
    /// The bus's WebSocket URL (`--url`). Default: [`DEFAULT_URL`].
    pub(crate) url: String,
    /// Credentials (`--token`), sent as `Authorization: Bearer`. Default: none.
    pub(crate) token: Option<String>,
    /// `--ca FILE`: PEM certificates trusted for `wss://` besides the public
    /// roots (a self-signed bus, a private CA). Default: none.
    pub(crate) ca: Option<String>,
    /// `--json`: machine output, one JSON value per line.
    pub(crate) json: bool,
    /// The command.
    pub(crate) command: &'static Command,
    /// Its options and operands.
    pub(crate) opts: Opts,
}

/// A command's options and operands.
#[derive(Debug, Default)]
pub(crate) struct Opts {
    /// Operands, in order.
    pub(crate) operands: Vec<String>,
    values: BTreeMap<String, String>,
}

impl Opts {
    /// The value of `--name`, if given (the last one wins).
    pub(crate) fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// `--name` parsed as a number, or `default`; refuses values outside
    /// `min..=max`.
    pub(crate) fn number<T>(&self, name: &str, default: T, min: T, max: T) -> Result<T, Failure>
    where
        T: FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(text) = self.value(name) else { return Ok(default) };
        match text.parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(n),
            _ => Err(Failure::Usage(format!("{name} takes a number from {min} to {max}, not {text:?}"))),
        }
    }
}

impl Invocation {
    /// Parses the arguments after the program name.
    pub(crate) fn parse(argv: &[String]) -> Result<Parse, Failure> {
        let mut url = None;
        let mut token = None;
        let mut ca = None;
        let mut json = false;
        let mut command: Option<&'static Command> = None;
        let mut opts = Opts::default();
        let mut rest = argv.iter();
        let mut only_operands = false;
        while let Some(arg) = rest.next() {
            let is_option = !only_operands && arg.starts_with('-') && arg.len() > 1;
            if !is_option {
                match command {
                    None if arg == "help" => return Ok(Parse::Help),
                    None => {
                        command = Some(COMMANDS.iter().find(|c| c.name == arg).ok_or_else(|| {
                            Failure::Usage(format!("unknown command {arg:?} (commands: {})", command_names()))
                        })?);
                    }
                    Some(_) => opts.operands.push(arg.clone()),
                }
                continue;
            }
            if arg == "--" {
                only_operands = true;
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) if name.starts_with("--") => (name, Some(value.to_owned())),
                _ => (arg.as_str(), None),
            };
            let mut take_value = || {
                inline
                    .clone()
                    .or_else(|| rest.next().cloned())
                    .ok_or_else(|| Failure::Usage(format!("{name} needs a value")))
            };
            let command_valued = command.is_some_and(|c| c.valued.contains(&name));
            if GLOBAL_VALUED.contains(&name) {
                let value = take_value()?;
                match name {
                    "--url" => url = Some(value),
                    "--ca" => ca = Some(value),
                    _ => token = Some(value),
                }
            } else if command_valued {
                let value = take_value()?;
                opts.values.insert(name.to_owned(), value);
            } else if GLOBAL_SWITCHES.contains(&name) {
                if inline.is_some() {
                    return Err(Failure::Usage(format!("{name} takes no value")));
                }
                match name {
                    "--help" | "-h" => return Ok(Parse::Help),
                    "--version" | "-V" => return Ok(Parse::Version),
                    _ => json = true,
                }
            } else {
                return Err(Failure::Usage(match command {
                    Some(c) => format!("unknown option {name} for '{}' (usage: arqon {})", c.name, c.usage),
                    None => format!("unknown option {name}"),
                }));
            }
        }
        let Some(command) = command else {
            return Err(Failure::Usage(format!("no command given (commands: {})", command_names())));
        };
        let (min, max) = command.operands;
        let given = opts.operands.len();
        if given < min || given > max {
            return Err(Failure::Usage(format!("usage: arqon {}", command.usage)));
        }
        let url = url.unwrap_or_else(|| DEFAULT_URL.to_owned());
        Ok(Parse::Run(Invocation { url, token, ca, json, command, opts }))
    }
}

fn command_names() -> String {
    COMMANDS.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(args: &[&str]) -> Result<Parse, Failure> {
        Invocation::parse(&args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    fn run(args: &[&str]) -> Invocation {
        match parse(args) {
            Ok(Parse::Run(invocation)) => invocation,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn global_options_go_anywhere() {
        let a = run(&["--json", "history", "demo/news", "--url", "ws://h:1/ws", "--limit=5"]);
        assert_eq!(a.command.name, "history");
        assert!(a.json);
        assert_eq!(a.url, "ws://h:1/ws");
        assert_eq!(a.opts.value("--limit"), Some("5"));
        assert_eq!(a.opts.operands, ["demo/news"]);
        assert_eq!(run(&["status"]).url, DEFAULT_URL);
        assert_eq!(run(&["ping", "--ca=/etc/bus.pem"]).ca.as_deref(), Some("/etc/bus.pem"));
    }

    #[test]
    fn mistakes_are_usage_errors() {
        for bad in [
            &["frobnicate"][..],
            &["status", "--limit", "3"],
            &["history"],
            &["pub", "demo/news"],
            &["history", "demo/news", "--limit"],
            &["--json"],
        ] {
            match parse(bad) {
                Err(Failure::Usage(_)) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_dash_is_an_operand_and_double_dash_ends_options() {
        assert_eq!(run(&["pub", "demo/news", "-"]).opts.operands, ["demo/news", "-"]);
        assert_eq!(run(&["pub", "demo/news", "--", "-5"]).opts.operands, ["demo/news", "-5"]);
    }

    #[test]
    fn numbers_are_range_checked() {
        let a = run(&["history", "demo/news", "--limit", "0"]);
        assert!(matches!(a.opts.number("--limit", 50u32, 1, 1000), Err(Failure::Usage(_))));
        let a = run(&["history", "demo/news", "--limit", "7"]);
        assert_eq!(a.opts.number("--limit", 50u32, 1, 1000).unwrap(), 7);
    }
}
