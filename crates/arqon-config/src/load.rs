//! Loading: defaults, then an optional TOML file, then `ARQON_*` variables;
//! every value type-checked strictly, then the whole validated.

use std::collections::BTreeMap;
use std::iter;
use std::path::Path;

use config::{File, FileFormat, Map, Source, Value, ValueKind};
use serde::Deserialize;
use serde::de::IntoDeserializer;
use serde::de::value::{Error as StrictError, MapDeserializer};

use crate::{Config, ConfigError};

/// Prefix of every environment variable that sets a key.
const ENV_PREFIX: &str = "ARQON_";
/// `ARQON_` variables that the log set-up reads: skipped here, not rejected.
const LOG_VARS: [&str; 2] = ["ARQON_LOG", "ARQON_LOG_FORMAT"];

/// Each section's keys with their default values. Files and variables are
/// checked against it; it is serialized from `Config::default()`, so a field
/// added to a struct is known here at once.
type Schema = BTreeMap<String, Map<String, Value>>;

impl Config {
    /// Defaults, then the TOML file at `path` (if `Some`; a file named
    /// explicitly must exist), then the given `ARQON_*` variables, each later
    /// layer overriding the earlier; then [`Config::validate`].
    ///
    /// Variables are `ARQON_<SECTION>__<KEY>`, e.g. `ARQON_SERVER__PORT=9200`.
    /// Variables without the `ARQON_` prefix, `ARQON_LOG` and
    /// `ARQON_LOG_FORMAT` are ignored; any other `ARQON_` variable must name a
    /// key. `load` reads nothing but `path` and `env`, so tests pass their own.
    ///
    /// # Errors
    ///
    /// A missing or unreadable file, invalid TOML, an unknown key or variable,
    /// a value of the wrong type or range, or a broken validation rule; each
    /// message names the file or variable, the key and the value.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let schema = schema()?;
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            builder = builder.add_source(read_toml(path)?);
        }
        let vars = setting_vars(env, &schema)?;
        for (key, (_, value)) in &vars {
            builder = builder.set_override(key, value.clone()).map_err(ConfigError::Load)?;
        }
        let merged = builder.build().map_err(ConfigError::Load)?;

        let origin = |key: &str| match (vars.get(key), path) {
            (Some((var, _)), _) => format!("environment variable {var}"),
            (None, Some(path)) => path.display().to_string(),
            // Not reached: defaults come from serde, so every value in the
            // merged tree came from the file or the environment.
            (None, None) => "the built-in defaults".to_owned(),
        };
        check(&merged.collect().map_err(ConfigError::Load)?, &schema, origin)?;

        let config: Config = merged.try_deserialize().map_err(ConfigError::Load)?;
        config.validate()?;
        Ok(config)
    }

    /// [`Config::load`] with the process environment.
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn from_env(path: Option<&Path>) -> Result<Config, ConfigError> {
        // Lossy because `std::env::vars` panics on a variable that is not
        // UTF-8; a mangled `ARQON_` value then fails its type check instead.
        let env = std::env::vars_os()
            .map(|(name, value)| (name.to_string_lossy().into_owned(), value.to_string_lossy().into_owned()));
        Config::load(path, env)
    }
}

fn schema() -> Result<Schema, ConfigError> {
    let defaults = config::Config::try_from(&Config::default()).map_err(ConfigError::Load)?;
    defaults
        .collect()
        .map_err(ConfigError::Load)?
        .into_iter()
        .map(|(section, keys)| Ok((section, keys.into_table().map_err(ConfigError::Load)?)))
        .collect()
}

/// The `ARQON_` variables that set keys, as key → (variable, value).
fn setting_vars(
    env: impl IntoIterator<Item = (String, String)>,
    schema: &Schema,
) -> Result<BTreeMap<String, (String, ValueKind)>, ConfigError> {
    let mut vars = BTreeMap::new();
    for (var, text) in env {
        let Some(name) = var.strip_prefix(ENV_PREFIX) else { continue };
        if LOG_VARS.contains(&var.as_str()) {
            continue;
        }
        // ARQON_SERVER__PORT sets server.port, the key as written in TOML.
        let key = name.to_lowercase().replace("__", ".");
        let default = key.split_once('.').and_then(|(section, field)| schema.get(section)?.get(field));
        let Some(default) = default else { return Err(ConfigError::UnknownVar { var }) };
        let value = typed(text, &default.kind);
        vars.insert(key, (var, value));
    }
    Ok(vars)
}

/// Reads variable text as the type of the key's default, so that
/// `ARQON_SERVER__PORT=9200` is a number while a text key keeps "007" as
/// written (guessing from the text alone would turn it into 7). Text that does
/// not parse stays text, and [`check`] rejects it with the key's type.
fn typed(text: String, default: &ValueKind) -> ValueKind {
    let parsed = match default {
        ValueKind::Boolean(_) => text.parse().map(ValueKind::Boolean).ok(),
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => {
            text.parse().map(ValueKind::I64).or_else(|_| text.parse().map(ValueKind::U64)).ok()
        }
        _ => None,
    };
    parsed.unwrap_or(ValueKind::String(text))
}

fn read_toml(path: &Path) -> Result<config::Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    config::Config::builder()
        .add_source(File::from_str(&text, FileFormat::Toml))
        .build()
        .map_err(|error| ConfigError::Parse { path: path.to_owned(), message: error.to_string().trim_end().to_owned() })
}

/// Checks every given value against the schema: no unknown keys, and each
/// value of its field's type. Settings are two levels deep, `[section]` then
/// key. Sorted, so that of several mistakes the same one is reported each run.
fn check(given: &Map<String, Value>, schema: &Schema, origin: impl Fn(&str) -> String) -> Result<(), ConfigError> {
    for (section, value) in given.iter().collect::<BTreeMap<_, _>>() {
        let Some(defaults) = schema.get(section) else {
            return Err(ConfigError::UnknownKey { key: section.clone(), origin: origin(section) });
        };
        let ValueKind::Table(keys) = &value.kind else {
            let reason = format!("expected a table of keys, [{section}]");
            return Err(bad_value(section.clone(), &value.kind, origin(section), reason));
        };
        for (field, value) in keys.iter().collect::<BTreeMap<_, _>>() {
            let key = format!("{section}.{field}");
            if !defaults.contains_key(field) {
                return Err(ConfigError::UnknownKey { origin: origin(&key), key });
            }
            if let Err(reason) = strict_check(section, field, &value.kind) {
                let origin = origin(&key);
                return Err(bad_value(key, &value.kind, origin, reason));
            }
        }
    }
    Ok(())
}

/// Reads one value as its field's type with serde's own strict deserializers.
///
/// The `config` crate's deserializer is lenient where start-up should fail:
/// it rounds 1.5 into an integer, reads `true` as 1 and 7 as "7", and names no
/// allowed values for an enum. Deserializing a `Config` that holds only this
/// one value gives serde's standard messages instead ("invalid value: integer
/// `70000`, expected u16", "unknown variant `root`, expected one of `guest`,
/// `user`, `admin`").
fn strict_check(section: &str, field: &str, value: &ValueKind) -> Result<(), String> {
    fn read<'de, V: IntoDeserializer<'de, StrictError>>(section: &str, field: &str, value: V) -> Result<(), String> {
        let keys = MapDeserializer::new(iter::once((field, value)));
        let sections = MapDeserializer::new(iter::once((section, keys)));
        Config::deserialize(sections).map(drop).map_err(|error| error.to_string())
    }
    match value {
        ValueKind::String(text) => read(section, field, text.as_str()),
        ValueKind::Boolean(b) => read(section, field, *b),
        ValueKind::I64(n) => read(section, field, *n),
        ValueKind::I128(n) => read(section, field, *n),
        ValueKind::U64(n) => read(section, field, *n),
        ValueKind::U128(n) => read(section, field, *n),
        ValueKind::Float(x) => read(section, field, *x),
        // TOML has no null, and no key takes a list or a table (yet).
        ValueKind::Nil | ValueKind::Array(_) | ValueKind::Table(_) => Err("expected a single value".to_owned()),
    }
}

fn bad_value(key: String, value: &ValueKind, origin: String, reason: String) -> ConfigError {
    ConfigError::BadValue { key, value: show(value), origin, reason }
}

/// A value as it would be written in TOML, for error messages (text quoted,
/// so that an empty or blank value is visible).
fn show(value: &ValueKind) -> String {
    match value {
        ValueKind::String(text) => format!("{text:?}"),
        ValueKind::Array(items) => {
            format!("[{}]", items.iter().map(|item| show(&item.kind)).collect::<Vec<_>>().join(", "))
        }
        ValueKind::Table(table) => {
            let entries: BTreeMap<_, _> = table.iter().map(|(key, value)| (key, show(&value.kind))).collect();
            let entries: Vec<String> = entries.into_iter().map(|(key, value)| format!("{key} = {value}")).collect();
            format!("{{ {} }}", entries.join(", "))
        }
        other => other.to_string(),
    }
}
