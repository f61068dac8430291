//! Loading: defaults, then an optional TOML file, then `ARQON_*` variables;
//! every value type-checked strictly, then the whole validated.

use std::collections::BTreeMap;
use std::path::Path;

use config::{File, FileFormat, Map, Source, Value, ValueKind};
use serde::Deserialize;

use crate::{Config, ConfigError};

/// Prefix of every environment variable that sets a key.
const ENV_PREFIX: &str = "ARQON_";
/// `ARQON_` variables that the log set-up reads: skipped here, not rejected.
const LOG_VARS: [&str; 2] = ["ARQON_LOG", "ARQON_LOG_FORMAT"];

/// Every key with its default value, as a tree of tables: `[section]` then
/// key, or `[section.part]` then key. Files and variables are checked against
/// it; it is serialized from `Config::default()`, so a field added to a
/// struct is known here at once.
type Schema = Map<String, Value>;

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
    // Through JSON rather than the `config` crate, which drops empty lists
    // and tables (`auth.tokens = []` must still be a known key).
    let defaults = serde_json::to_value(Config::default())
        .map_err(|e| ConfigError::Load(config::ConfigError::Message(e.to_string())))?;
    match from_json(defaults).kind {
        ValueKind::Table(sections) => Ok(sections),
        _ => Err(ConfigError::Load(config::ConfigError::Message("defaults are not a table".to_owned()))),
    }
}

/// Whether a default is a table of settings, checked key by key: a struct
/// such as `[storage.redis]`. An empty default table is a free-form map
/// (`limits.roles`), checked as one value like any other setting.
/// Top-level tables whose keys are names the user chooses (room patterns),
/// not settings of ours.
const FREE_TABLES: [&str; 1] = ["rooms"];

fn is_section(default: &Value) -> bool {
    matches!(&default.kind, ValueKind::Table(keys) if !keys.is_empty())
}

/// The default of a dotted key that names a setting (not a section).
fn leaf<'a>(schema: &'a Schema, key: &str) -> Option<&'a Value> {
    let mut table = schema;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let value = table.get(part)?;
        match (&value.kind, parts.peek()) {
            (ValueKind::Table(inner), Some(_)) if is_section(value) => table = inner,
            (_, None) if !is_section(value) => return Some(value),
            _ => return None,
        }
    }
    None
}

fn from_json(value: serde_json::Value) -> Value {
    use serde_json::Value as Json;
    let kind = match value {
        Json::Null => ValueKind::Nil,
        Json::Bool(b) => ValueKind::Boolean(b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ValueKind::I64(i),
            (None, Some(u)) => ValueKind::U64(u),
            _ => ValueKind::Float(n.as_f64().unwrap_or_default()),
        },
        Json::String(text) => ValueKind::String(text),
        Json::Array(items) => ValueKind::Array(items.into_iter().map(from_json).collect()),
        Json::Object(fields) => ValueKind::Table(fields.into_iter().map(|(k, v)| (k, from_json(v))).collect()),
    };
    Value::new(None, kind)
}

/// Keys that were settings once, with what replaced them: a configuration
/// that still sets one fails with a message naming the replacement rather
/// than as an unknown key.
const RETIRED: [(&str, &str); 1] = [(
    "limits.outbound_queue",
    "`limits.max_backlog_bytes` (ARQON_LIMITS__MAX_BACKLOG_BYTES): backlogs are bounded in bytes since protocol \
     v1.1, with `limits.write_timeout_ms` and `limits.backlog_budget_bytes` (docs/configuration.md)",
)];

fn retired(key: &str, origin: String) -> Option<ConfigError> {
    RETIRED.iter().find(|(old, _)| *old == key).map(|(old, replacement)| ConfigError::Retired {
        key: (*old).to_owned(),
        origin,
        replacement,
    })
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
        // ARQON_SERVER__PORT sets server.port, the key as written in TOML;
        // ARQON_STORAGE__REDIS__URL sets storage.redis.url.
        let key = name.to_lowercase().replace("__", ".");
        let Some(default) = leaf(schema, &key) else {
            return Err(retired(&key, format!("environment variable {var}")).unwrap_or(ConfigError::UnknownVar { var }));
        };
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
        // A list from the environment is comma-separated: `a,b`.
        ValueKind::Array(_) => Some(ValueKind::Array(
            text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(|t| Value::new(None, t.to_owned())).collect(),
        )),
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

/// Checks every given value against the schema: no unknown keys, a table
/// where the schema has one, and each value of its field's type. Sorted, so
/// that of several mistakes the same one is reported each run.
fn check(given: &Map<String, Value>, schema: &Schema, origin: impl Fn(&str) -> String) -> Result<(), ConfigError> {
    check_table(given, schema, None, &origin)
}

/// [`check`] for the table at `prefix` (`None`: the top level of sections).
fn check_table(
    given: &Map<String, Value>,
    schema: &Schema,
    prefix: Option<&str>,
    origin: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    for (field, value) in given.iter().collect::<BTreeMap<_, _>>() {
        let key = prefix.map_or_else(|| field.clone(), |prefix| format!("{prefix}.{field}"));
        let Some(default) = schema.get(field) else {
            return Err(retired(&key, origin(&key)).unwrap_or(ConfigError::UnknownKey { origin: origin(&key), key }));
        };
        match (&default.kind, &value.kind) {
            (ValueKind::Table(defaults), ValueKind::Table(keys)) if is_section(default) => {
                check_table(keys, defaults, Some(&key), origin)?;
            }
            // `[rooms."pattern"]`: a table whose keys are the user's own,
            // checked whole by its type below.
            (ValueKind::Table(_), ValueKind::Table(_)) if prefix.is_none() && FREE_TABLES.contains(&field.as_str()) => {
                if let Err(reason) = strict_check(&key, &value.kind) {
                    let origin = origin(&key);
                    return Err(bad_value(key, &value.kind, origin, reason));
                }
            }
            (_, _) if is_section(default) || prefix.is_none() => {
                let reason = format!("expected a table of keys, [{key}]");
                return Err(bad_value(key.clone(), &value.kind, origin(&key), reason));
            }
            (_, _) => {
                if let Err(reason) = strict_check(&key, &value.kind) {
                    let origin = origin(&key);
                    return Err(bad_value(key, &value.kind, origin, reason));
                }
            }
        }
    }
    Ok(())
}

/// Reads one value as its field's type, strictly.
///
/// The `config` crate's deserializer is lenient where start-up should fail:
/// it rounds 1.5 into an integer, reads `true` as 1 and 7 as "7", and names no
/// allowed values for an enum. Deserializing a `Config` that holds only this
/// one value, as JSON, gives serde's standard messages instead ("invalid
/// value: integer `70000`, expected u16", "unknown variant `root`, expected
/// one of `guest`, `user`, `admin`") and checks lists and tables (such as
/// `auth.tokens`) field by field, unknown fields included.
fn strict_check(key: &str, value: &ValueKind) -> Result<(), String> {
    // `storage.redis.url` becomes {"storage": {"redis": {"url": value}}}.
    let nested = key.rsplit('.').fold(to_json(value), |inner, part| {
        serde_json::Value::Object(serde_json::Map::from_iter([(part.to_owned(), inner)]))
    });
    Config::deserialize(nested).map(drop).map_err(|error| error.to_string())
}

fn to_json(value: &ValueKind) -> serde_json::Value {
    use serde_json::Value as Json;
    match value {
        ValueKind::Nil => Json::Null,
        ValueKind::Boolean(b) => Json::from(*b),
        ValueKind::I64(n) => Json::from(*n),
        ValueKind::U64(n) => Json::from(*n),
        ValueKind::I128(n) => i64::try_from(*n).map_or_else(|_| Json::from(n.to_string()), Json::from),
        ValueKind::U128(n) => u64::try_from(*n).map_or_else(|_| Json::from(n.to_string()), Json::from),
        ValueKind::Float(x) => Json::from(*x),
        ValueKind::String(text) => Json::from(text.as_str()),
        ValueKind::Array(items) => Json::Array(items.iter().map(|item| to_json(&item.kind)).collect()),
        ValueKind::Table(table) => Json::Object(table.iter().map(|(k, v)| (k.clone(), to_json(&v.kind))).collect()),
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
