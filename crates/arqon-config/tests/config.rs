//! Loading, layering, error messages and validation of `arqon_config::Config`,
//! and the checks that keep docs/configuration.md in step with the code.

use std::collections::BTreeMap;
use std::io::Write;

use arqon_config::{
    ChannelsConfig, Config, ConfigError, JournalConfig, JournalFsync, LimitsConfig, RedbConfig, RedisConfig,
    ServerConfig, StorageBackend,
};
use arqon_protocol::Role;

/// The configuration reference, compiled in so that editing it reruns the check.
const REFERENCE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md"));

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().expect("create a temporary file");
    file.write_all(text.as_bytes()).expect("write the temporary file");
    file
}

fn load_env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load(None, vars(pairs))
}

fn load_toml(text: &str) -> Result<Config, ConfigError> {
    Config::load(Some(toml_file(text).path()), vars(&[]))
}

/// Asserts that `result` failed and that its message contains every part.
fn assert_fails_naming(result: Result<Config, ConfigError>, parts: &[&str]) -> ConfigError {
    let error = result.expect_err("loading should have failed");
    let message = error.to_string();
    for part in parts {
        assert!(message.contains(part), "{message:?} should contain {part:?}");
    }
    error
}

#[test]
fn defaults_are_protocol_section_7() {
    let config = Config::default();
    assert_eq!(
        config.limits,
        LimitsConfig {
            max_message_bytes: 1_048_576,
            rate_per_s: 100,
            burst: 200,
            max_backlog_bytes: 64 * 1024 * 1024,
            write_timeout_ms: 10_000,
            backlog_budget_bytes: 1024 * 1024 * 1024,
            member_events_max: 1000,
            member_events_per_s: 20,
            member_events_burst: 50,
            direct_per_s: 100,
            direct_burst: 200,
            direct_backlog_bytes: 1 << 20,
            history_per_channel: 1000,
            history_bytes_per_channel: 8 << 20,
            history_bytes_total: 256 << 20,
            max_channels: 10_000,
            max_channels_per_room: 1000,
            max_channels_created_per_client: 1000,
            bytes_per_s: 1 << 20,
            bytes_burst: 4 << 20,
            abuse_limit: 100,
            abuse_window_s: 10,
            roles: Default::default(),
        }
    );
    assert_eq!(
        config.server,
        ServerConfig {
            host: "127.0.0.1".to_owned(),
            port: 9100,
            heartbeat_s: 20,
            shutdown_grace_ms: 5000,
            upgrade_timeout_ms: 10_000,
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            allowed_origins: Vec::new(),
        }
    );
    assert_eq!(config.channels, ChannelsConfig { auto_create: true, idle_reclaim_s: 300 });
    assert_eq!(config.auth.default_role, Role::User);
    assert_eq!(config.storage.backend, StorageBackend::Memory);
    assert_eq!(config.storage.backend.to_string(), "memory");
}

#[test]
fn no_file_and_no_variables_give_the_valid_defaults() {
    let config = load_env(&[]).unwrap();
    assert_eq!(config, Config::default());
    config.validate().unwrap();
    assert_eq!(config.listen_addr(), "127.0.0.1:9100".parse().unwrap());
}

#[test]
fn file_overrides_defaults_key_by_key() {
    let config = load_toml(
        r#"
        [server]
        port = 9200
        [limits]
        rate_per_s = 0
        burst = 0
        [auth]
        default_role = "admin"
        "#,
    )
    .unwrap();
    assert_eq!(config.server.port, 9200);
    assert_eq!(config.server.host, "127.0.0.1", "keys the file leaves out keep their defaults");
    assert_eq!((config.limits.rate_per_s, config.limits.burst), (0, 0), "burst 0 is fine while unlimited");
    assert_eq!(config.auth.default_role, Role::Admin);
    assert_eq!(config.limits.max_backlog_bytes, 64 << 20);
    assert_eq!(config.channels, ChannelsConfig::default());
}

#[test]
fn environment_overrides_the_file() {
    let file = toml_file("[server]\nhost = \"0.0.0.0\"\nport = 9200\n");
    let config = Config::load(Some(file.path()), vars(&[("ARQON_SERVER__PORT", "9300")])).unwrap();
    assert_eq!(config.server.port, 9300);
    assert_eq!(config.server.host, "0.0.0.0", "the file still sets what the environment does not");
}

#[test]
fn environment_sets_each_type_of_key() {
    let config = load_env(&[
        ("ARQON_SERVER__HOST", "::1"),
        ("ARQON_SERVER__PORT", "9200"),
        ("ARQON_LIMITS__RATE_PER_S", "0"),
        ("ARQON_LIMITS__MAX_MESSAGE_BYTES", "65536"),
        ("ARQON_CHANNELS__AUTO_CREATE", "false"),
        ("ARQON_AUTH__DEFAULT_ROLE", "guest"),
        ("ARQON_STORAGE__BACKEND", "memory"),
    ])
    .unwrap();
    assert_eq!(config.listen_addr(), "[::1]:9200".parse().unwrap());
    assert_eq!(config.limits.rate_per_s, 0);
    assert_eq!(config.limits.max_message_bytes, 65536);
    assert!(!config.channels.auto_create);
    assert_eq!(config.auth.default_role, Role::Guest);
    assert_eq!(config.storage.backend, StorageBackend::Memory);
}

#[test]
fn log_variables_and_other_variables_are_ignored() {
    let config = load_env(&[
        ("ARQON_LOG", "arqon=debug"),
        ("ARQON_LOG_FORMAT", "json"),
        ("PATH", "/usr/bin"),
        ("SERVER__PORT", "1"),
    ])
    .unwrap();
    assert_eq!(config, Config::default());
}

#[test]
fn unknown_variable_fails_naming_it() {
    for var in [
        "ARQON_SERVER__PROT",
        "ARQON_SERVER_PORT",
        "ARQON_SERVR__PORT",
        "ARQON_SERVER",
        "ARQON_SERVER__PORT__MAX",
        "ARQON_LOGS",
    ] {
        let error = assert_fails_naming(load_env(&[(var, "1")]), &[var]);
        assert!(matches!(&error, ConfigError::UnknownVar { var: named } if named == var), "{error:?}");
    }
}

#[test]
fn unknown_file_key_fails_naming_it_and_the_file() {
    for (text, key) in [
        ("[server]\nprot = 9100\n", "`server.prot`"),
        ("[servr]\nport = 9100\n", "`servr`"),
        ("[bogus]\n", "`bogus`"),
        ("log = \"debug\"\n", "`log`"),
    ] {
        let file = toml_file(text);
        let error =
            assert_fails_naming(Config::load(Some(file.path()), vars(&[])), &[key, &file.path().display().to_string()]);
        assert!(matches!(error, ConfigError::UnknownKey { .. }), "{error:?}");
    }
}

#[test]
fn bad_variable_value_names_key_value_and_variable() {
    for (var, value, key, more) in [
        ("ARQON_SERVER__PORT", "abc", "server.port", &["u16"][..]),
        ("ARQON_SERVER__PORT", "70000", "server.port", &["u16"]),
        ("ARQON_SERVER__PORT", "-1", "server.port", &[]),
        ("ARQON_SERVER__HEARTBEAT_S", "1.5", "server.heartbeat_s", &[]),
        ("ARQON_LIMITS__BURST", "", "limits.burst", &[]),
        ("ARQON_CHANNELS__AUTO_CREATE", "yes", "channels.auto_create", &["boolean"]),
        ("ARQON_AUTH__DEFAULT_ROLE", "root", "auth.default_role", &["guest", "user", "admin"]),
        ("ARQON_AUTH__DEFAULT_ROLE", "GUEST", "auth.default_role", &["guest"]),
        ("ARQON_STORAGE__BACKEND", "mongo", "storage.backend", &["memory", "redis"]),
        ("ARQON_STORAGE__REDIS__MAX_LEN", "many", "storage.redis.max_len", &[]),
        ("ARQON_STORAGE__REDIS__POOL_SIZE", "-2", "storage.redis.pool_size", &[]),
    ] {
        let quoted = format!("`{key}`");
        let parts: Vec<&str> = [&quoted, value, var].into_iter().chain(more.iter().copied()).collect();
        let error = assert_fails_naming(load_env(&[(var, value)]), &parts);
        assert!(matches!(error, ConfigError::BadValue { .. }), "{error:?}");
    }
}

#[test]
fn bad_file_value_names_key_value_and_file() {
    for (text, key, value, more) in [
        ("[server]\nport = 70000", "server.port", "70000", &["u16"][..]),
        ("[server]\nport = \"9100\"", "server.port", "\"9100\"", &[]),
        ("[server]\nhost = 127", "server.host", "127", &["string"]),
        ("[server]\nheartbeat_s = 1.5", "server.heartbeat_s", "1.5", &[]),
        ("[limits]\nmax_message_bytes = -5", "limits.max_message_bytes", "-5", &[]),
        ("[channels]\nauto_create = \"yes\"", "channels.auto_create", "\"yes\"", &[]),
        ("[auth]\ndefault_role = \"root\"", "auth.default_role", "\"root\"", &["guest", "user", "admin"]),
        ("[storage]\nbackend = \"mongo\"", "storage.backend", "\"mongo\"", &["memory", "redis"]),
        ("[storage.redis]\nurl = 6379", "storage.redis.url", "6379", &["string"]),
        ("[storage]\nredis = \"redis://x\"", "storage.redis", "\"redis://x\"", &["table"]),
        ("server = 3", "server", "3", &["table"]),
        ("[server]\nport = [9100]", "server.port", "[9100]", &["invalid type: sequence, expected u16"]),
        ("[server.port]\nmin = 1", "server.port", "{ min = 1 }", &["invalid type: map, expected u16"]),
    ] {
        let file = toml_file(text);
        let (quoted, path) = (format!("`{key}`"), file.path().display().to_string());
        let parts: Vec<&str> = [&quoted, value, &path].into_iter().chain(more.iter().copied()).collect();
        let error = assert_fails_naming(Config::load(Some(file.path()), vars(&[])), &parts);
        assert!(matches!(error, ConfigError::BadValue { .. }), "{error:?}");
    }
}

#[test]
fn each_validation_rule_names_key_and_value() {
    for (env, key, value) in [
        (&[("ARQON_SERVER__HOST", "localhost")][..], "server.host", "\"localhost\""),
        (&[("ARQON_SERVER__HEARTBEAT_S", "0")], "server.heartbeat_s", "0"),
        (&[("ARQON_SERVER__SHUTDOWN_GRACE_MS", "60001")], "server.shutdown_grace_ms", "60001"),
        (&[("ARQON_LIMITS__MAX_MESSAGE_BYTES", "255")], "limits.max_message_bytes", "255"),
        (&[("ARQON_LIMITS__MAX_MESSAGE_BYTES", "67108865")], "limits.max_message_bytes", "67108865"),
        (&[("ARQON_LIMITS__RATE_PER_S", "10"), ("ARQON_LIMITS__BURST", "0")], "limits.burst", "0"),
        (&[("ARQON_LIMITS__MAX_BACKLOG_BYTES", "65535")], "limits.max_backlog_bytes", "65535"),
        (
            &[("ARQON_LIMITS__MAX_BACKLOG_BYTES", "1048575"), ("ARQON_LIMITS__MAX_MESSAGE_BYTES", "1048576")],
            "limits.max_backlog_bytes",
            "1048575",
        ),
        (
            &[
                ("ARQON_LIMITS__MAX_MESSAGE_BYTES", "65536"),
                ("ARQON_LIMITS__MAX_BACKLOG_BYTES", "70000"),
                ("ARQON_LIMITS__BACKLOG_BUDGET_BYTES", "69999"),
            ],
            "limits.backlog_budget_bytes",
            "69999",
        ),
        (&[("ARQON_LIMITS__BYTES_PER_S", "10"), ("ARQON_LIMITS__BYTES_BURST", "0")], "limits.bytes_burst", "0"),
        (&[("ARQON_LIMITS__ABUSE_WINDOW_S", "0")], "limits.abuse_window_s", "0"),
        (&[("ARQON_LIMITS__HISTORY_PER_CHANNEL", "0")], "limits.history_per_channel", "0"),
        (&[("ARQON_LIMITS__HISTORY_BYTES_PER_CHANNEL", "1048575")], "limits.history_bytes_per_channel", "1048575"),
        (
            &[("ARQON_LIMITS__MAX_MESSAGE_BYTES", "65536"), ("ARQON_LIMITS__HISTORY_BYTES_PER_CHANNEL", "65535")],
            "limits.history_bytes_per_channel",
            "65535",
        ),
        (&[("ARQON_LIMITS__HISTORY_BYTES_TOTAL", "8388607")], "limits.history_bytes_total", "8388607"),
        (&[("ARQON_COMPRESSION__LEVEL", "0")], "compression.level", "0"),
        (&[("ARQON_COMPRESSION__LEVEL", "10")], "compression.level", "10"),
    ] {
        let quoted = format!("`{key}`");
        let error = assert_fails_naming(load_env(env), &[&quoted, value]);
        assert!(
            matches!(&error, ConfigError::Invalid { key: named, value: shown, .. } if *named == key && shown == value),
            "{error:?}"
        );
    }
}

#[test]
fn the_retired_outbound_queue_names_its_replacement() {
    let error = load_env(&[("ARQON_LIMITS__OUTBOUND_QUEUE", "1024")]).unwrap_err();
    assert!(
        matches!(&error, ConfigError::Retired { key, origin, .. }
            if key == "limits.outbound_queue" && origin == "environment variable ARQON_LIMITS__OUTBOUND_QUEUE"),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("limits.max_backlog_bytes") && text.contains("ARQON_LIMITS__MAX_BACKLOG_BYTES"), "{text}");

    let file = toml_file("[limits]\noutbound_queue = 1024\n");
    let error = Config::load(Some(file.path()), vars(&[])).unwrap_err();
    assert!(
        matches!(&error, ConfigError::Retired { key, origin, .. }
            if key == "limits.outbound_queue" && *origin == file.path().display().to_string()),
        "{error:?}"
    );
}

#[test]
fn validation_bounds_are_inclusive() {
    let config = load_env(&[
        ("ARQON_SERVER__HOST", "::"),
        ("ARQON_SERVER__PORT", "0"),
        ("ARQON_SERVER__HEARTBEAT_S", "1"),
        ("ARQON_SERVER__SHUTDOWN_GRACE_MS", "60000"),
        ("ARQON_LIMITS__MAX_MESSAGE_BYTES", "67108864"),
        // The largest messages need a channel budget that holds one.
        ("ARQON_LIMITS__HISTORY_BYTES_PER_CHANNEL", "67108864"),
        ("ARQON_LIMITS__HISTORY_BYTES_TOTAL", "67108864"),
        ("ARQON_LIMITS__RATE_PER_S", "1"),
        ("ARQON_LIMITS__BURST", "1"),
        ("ARQON_LIMITS__MAX_BACKLOG_BYTES", "67108864"),
        ("ARQON_LIMITS__BACKLOG_BUDGET_BYTES", "67108864"),
        ("ARQON_LIMITS__HISTORY_PER_CHANNEL", "1"),
    ])
    .unwrap();
    assert_eq!(config.listen_addr(), "[::]:0".parse().unwrap());
    let smallest = load_env(&[("ARQON_LIMITS__MAX_MESSAGE_BYTES", "256")]).unwrap();
    assert_eq!(smallest.limits.max_message_bytes, 256);
    // The byte budgets may come down to the largest message, and zero caps
    // (no limit) and a zero idle time (never reclaim) are accepted.
    let tight = load_env(&[
        ("ARQON_LIMITS__MAX_MESSAGE_BYTES", "65536"),
        ("ARQON_LIMITS__HISTORY_BYTES_PER_CHANNEL", "65536"),
        ("ARQON_LIMITS__HISTORY_BYTES_TOTAL", "65536"),
        ("ARQON_LIMITS__MAX_CHANNELS", "0"),
        ("ARQON_LIMITS__MAX_CHANNELS_PER_ROOM", "0"),
        ("ARQON_LIMITS__MAX_CHANNELS_CREATED_PER_CLIENT", "0"),
        ("ARQON_CHANNELS__IDLE_RECLAIM_S", "0"),
    ])
    .unwrap();
    assert_eq!((tight.limits.history_bytes_per_channel, tight.limits.history_bytes_total), (65536, 65536));
    assert_eq!(
        (tight.limits.max_channels, tight.limits.max_channels_per_room, tight.limits.max_channels_created_per_client),
        (0, 0, 0)
    );
    assert_eq!(tight.channels.idle_reclaim_s, 0);
}

#[test]
fn validate_checks_a_config_built_in_code() {
    let mut config = Config::default();
    config.server.host = "example.com".to_owned();
    let error = config.validate().unwrap_err();
    assert!(error.to_string().contains("`server.host`") && error.to_string().contains("example.com"), "{error}");
    // Unvalidated, the bad host falls back to loopback instead of panicking.
    assert_eq!(config.listen_addr(), "127.0.0.1:9100".parse().unwrap());
}

#[test]
fn missing_file_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("arqonbus.toml");
    let error = assert_fails_naming(Config::load(Some(&path), vars(&[])), &[&path.display().to_string()]);
    assert!(matches!(error, ConfigError::Read { .. }), "{error:?}");
    // from_env passes the path on the same way.
    let error = Config::from_env(Some(&path)).unwrap_err();
    assert!(matches!(error, ConfigError::Read { path: named, .. } if named == path));
}

#[test]
fn malformed_toml_fails_naming_the_file() {
    let file = toml_file("[server\nport = 9100\n");
    let error = assert_fails_naming(
        Config::load(Some(file.path()), vars(&[])),
        &[&file.path().display().to_string(), "line 1"],
    );
    assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
}

/// Every key of `Config::default()`, dotted, with its default as written in
/// the docs (text without quotes). A sub-table with keys of its own, such as
/// `[storage.redis]`, is listed key by key; an empty one (a free-form map such
/// as `limits.roles`) is one key.
fn default_keys() -> BTreeMap<String, String> {
    fn flatten(prefix: &str, value: serde_json::Value, keys: &mut BTreeMap<String, String>) {
        match value {
            serde_json::Value::Object(fields) if !fields.is_empty() => {
                for (field, value) in fields {
                    let key = if prefix.is_empty() { field } else { format!("{prefix}.{field}") };
                    flatten(&key, value, keys);
                }
            }
            serde_json::Value::String(text) => {
                keys.insert(prefix.to_owned(), text);
            }
            other => {
                keys.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut keys = BTreeMap::new();
    flatten("", serde_json::to_value(Config::default()).expect("Config serializes"), &mut keys);
    keys
}

#[test]
fn reference_table_lists_every_key_with_its_variable_and_default() {
    // Rows of the reference table: | `key` | `VAR` | type | `default` ... | meaning |
    let rows: BTreeMap<&str, Vec<&str>> = REFERENCE
        .lines()
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`'), cells)
        })
        .collect();
    let defaults = default_keys();
    assert_eq!(rows.keys().copied().collect::<Vec<_>>(), defaults.keys().map(String::as_str).collect::<Vec<_>>());
    for (key, default) in &defaults {
        let cells = &rows[key.as_str()];
        let var = format!("`ARQON_{}`", key.to_uppercase().replace('.', "__"));
        assert_eq!(cells[2], var, "variable of {key}");
        assert!(
            cells[4].starts_with(&format!("`{default}`")),
            "default of {key}: docs say {}, code {default}",
            cells[4]
        );
    }
}

#[test]
fn sample_file_in_the_docs_loads_to_the_defaults() {
    let start = REFERENCE.find("```toml\n").expect("the docs have a TOML sample") + "```toml\n".len();
    let length = REFERENCE[start..].find("```").expect("the sample is closed");
    let file = toml_file(&REFERENCE[start..start + length]);
    assert_eq!(Config::load(Some(file.path()), vars(&[])).unwrap(), Config::default());
    // Loading fills in what is missing, so check separately that it spells out every key.
    let sample = &REFERENCE[start..start + length];
    for key in default_keys().keys() {
        // `rooms` is a table of the user's patterns: the docs show it apart.
        let Some((section, field)) = key.rsplit_once('.') else { continue };
        let at = sample.find(&format!("[{section}]\n")).unwrap_or_else(|| panic!("sample lacks [{section}]"));
        let body = sample[at + 1..].split("\n[").next().unwrap();
        assert!(body.lines().any(|line| line.starts_with(&format!("{field} = "))), "sample lacks {key}");
    }
}

#[test]
fn redis_settings_load_from_the_file_and_from_nested_variables() {
    let file = toml_file(
        r#"
        [storage]
        backend = "redis"
        [storage.redis]
        url = "redis://10.0.0.5:6380/2"
        max_len = 500
        cache_per_channel = 500
        pool_size = 4
        "#,
    );
    let env = vars(&[("ARQON_STORAGE__REDIS__KEY_PREFIX", "bus-a:"), ("ARQON_STORAGE__REDIS__POOL_SIZE", "8")]);
    let config = Config::load(Some(file.path()), env).unwrap();
    assert_eq!(config.storage.backend, StorageBackend::Redis);
    assert_eq!(config.storage.backend.to_string(), "redis");
    assert_eq!(
        config.storage.redis,
        RedisConfig {
            url: "redis://10.0.0.5:6380/2".to_owned(),
            key_prefix: "bus-a:".to_owned(),
            max_len: 500,
            pool_size: 8,
            cache_per_channel: 500,
            ..RedisConfig::default()
        },
        "keys left out keep their defaults; the environment wins"
    );
    // Any section with keys of its own reads nested variables, e.g. a secret.
    let config = load_env(&[("ARQON_AUTH__JWT__SECRET", "s3cret")]).unwrap();
    assert_eq!(config.auth.jwt.secret, "s3cret");
}

#[test]
fn redis_defaults_are_documented_values() {
    assert_eq!(
        Config::default().storage.redis,
        RedisConfig {
            url: "redis://127.0.0.1:6379".to_owned(),
            key_prefix: "arqon:".to_owned(),
            max_len: 10_000,
            connect_timeout_ms: 2000,
            command_timeout_ms: 1000,
            pool_size: 2,
            journal_capacity: 100_000,
            journal_bytes: 256 << 20,
            cache_per_channel: 1000,
            cache_bytes: 64 << 20,
        }
    );
}

#[test]
fn journal_settings_load_and_are_checked() {
    assert_eq!(
        Config::default().storage.journal,
        JournalConfig { path: "arqon-journal".to_owned(), fsync: JournalFsync::Always, fsync_interval_ms: 1000 }
    );
    let file = toml_file("[storage.journal]\npath = \"/var/lib/arqon\"\nfsync = \"interval\"\n");
    let env =
        vars(&[("ARQON_STORAGE__JOURNAL__FSYNC_INTERVAL_MS", "50"), ("ARQON_STORAGE__REDIS__CACHE_BYTES", "1024")]);
    let config = Config::load(Some(file.path()), env).unwrap();
    assert_eq!(
        config.storage.journal,
        JournalConfig { path: "/var/lib/arqon".to_owned(), fsync: JournalFsync::Interval, fsync_interval_ms: 50 }
    );
    assert_eq!(config.storage.redis.cache_bytes, 1024);
    assert_fails_naming(load_env(&[("ARQON_STORAGE__JOURNAL__FSYNC", "sometimes")]), &["storage.journal.fsync"]);
    assert_fails_naming(load_env(&[("ARQON_STORAGE__JOURNAL__FSYNC_INTERVAL_MS", "0")]), &["fsync_interval_ms", "0"]);
    let file = toml_file("[storage.journal]\npath = \"\"\n");
    assert_fails_naming(Config::load(Some(file.path()), vars(&[])), &["storage.journal.path"]);
}

#[test]
fn redb_settings_load_and_the_path_is_required_by_the_redb_backend() {
    assert_eq!(
        Config::default().storage.redb,
        RedbConfig { path: String::new(), max_len: 10_000, fsync: JournalFsync::Always, fsync_interval_ms: 1000 }
    );
    let file = toml_file("[storage]\nbackend = \"redb\"\n[storage.redb]\npath = \"/var/lib/arqon/history.redb\"\n");
    let env = vars(&[("ARQON_STORAGE__REDB__FSYNC", "interval"), ("ARQON_STORAGE__REDB__MAX_LEN", "500")]);
    let config = Config::load(Some(file.path()), env).unwrap();
    assert_eq!((config.storage.backend, config.storage.backend.to_string()), (StorageBackend::Redb, "redb".to_owned()));
    assert_eq!(
        config.storage.redb,
        RedbConfig {
            path: "/var/lib/arqon/history.redb".to_owned(),
            max_len: 500,
            fsync: JournalFsync::Interval,
            fsync_interval_ms: 1000,
        }
    );
    // No path: start-up fails naming the key, and only for this backend.
    let error = assert_fails_naming(load_env(&[("ARQON_STORAGE__BACKEND", "redb")]), &["storage.redb.path"]);
    assert!(error.to_string().contains(r#"storage.backend = "redb""#), "{error}");
    load_env(&[("ARQON_STORAGE__BACKEND", "memory")]).unwrap();
    let with_path = ("ARQON_STORAGE__REDB__PATH", "history.redb");
    load_env(&[("ARQON_STORAGE__BACKEND", "redb"), with_path]).unwrap();
    assert_fails_naming(load_env(&[with_path, ("ARQON_STORAGE__REDB__MAX_LEN", "0")]), &["storage.redb.max_len"]);
    assert_fails_naming(load_env(&[("ARQON_STORAGE__REDB__FSYNC", "never")]), &["storage.redb.fsync"]);
    assert_fails_naming(
        load_env(&[("ARQON_STORAGE__REDB__FSYNC_INTERVAL_MS", "60001")]),
        &["storage.redb.fsync_interval_ms", "60001"],
    );
    assert_fails_naming(load_env(&[("ARQON_STORAGE__BACKEND", "sqlite")]), &["storage.backend", "sqlite"]);
}

#[test]
fn unknown_nested_keys_and_variables_fail_naming_them() {
    let file = toml_file("[storage.redis]\nulr = \"redis://x\"\n");
    let error = assert_fails_naming(Config::load(Some(file.path()), vars(&[])), &["`storage.redis.ulr`"]);
    assert!(matches!(error, ConfigError::UnknownKey { .. }), "{error:?}");
    for var in ["ARQON_STORAGE__REDIS__ULR", "ARQON_STORAGE__REDIS", "ARQON_STORAGE__REDIS__URL__HOST"] {
        let error = assert_fails_naming(load_env(&[(var, "1")]), &[var]);
        assert!(matches!(error, ConfigError::UnknownVar { .. }), "{error:?}");
    }
}

#[test]
fn each_redis_rule_names_key_and_value() {
    for (env, key, value) in [
        (&[("ARQON_STORAGE__REDIS__URL", "rediss://h:6379")][..], "storage.redis.url", "\"rediss://h:6379\""),
        (&[("ARQON_STORAGE__REDIS__URL", "127.0.0.1:6379")], "storage.redis.url", "\"127.0.0.1:6379\""),
        (&[("ARQON_STORAGE__REDIS__KEY_PREFIX", "a b")], "storage.redis.key_prefix", "\"a b\""),
        (&[("ARQON_STORAGE__REDIS__MAX_LEN", "0")], "storage.redis.max_len", "0"),
        (&[("ARQON_STORAGE__REDIS__CONNECT_TIMEOUT_MS", "0")], "storage.redis.connect_timeout_ms", "0"),
        (&[("ARQON_STORAGE__REDIS__COMMAND_TIMEOUT_MS", "0")], "storage.redis.command_timeout_ms", "0"),
        (&[("ARQON_STORAGE__REDIS__POOL_SIZE", "0")], "storage.redis.pool_size", "0"),
        (&[("ARQON_STORAGE__REDIS__POOL_SIZE", "65")], "storage.redis.pool_size", "65"),
        (&[("ARQON_STORAGE__REDIS__CACHE_PER_CHANNEL", "10001")], "storage.redis.cache_per_channel", "10001"),
    ] {
        let quoted = format!("`{key}`");
        let error = assert_fails_naming(load_env(env), &[&quoted, value]);
        assert!(matches!(&error, ConfigError::Invalid { key: named, .. } if *named == key), "{error:?}");
    }
    // The bounds themselves are accepted; an empty journal is allowed (refuse at once).
    let config = load_env(&[
        ("ARQON_STORAGE__REDIS__POOL_SIZE", "64"),
        ("ARQON_STORAGE__REDIS__MAX_LEN", "1"),
        ("ARQON_STORAGE__REDIS__CACHE_PER_CHANNEL", "1"),
        ("ARQON_STORAGE__REDIS__JOURNAL_CAPACITY", "0"),
    ])
    .unwrap();
    assert_eq!((config.storage.redis.pool_size, config.storage.redis.journal_capacity), (64, 0));
}

#[test]
fn each_cluster_rule_names_key_and_value() {
    for (env, key, value) in [
        (&[("ARQON_CLUSTER__ENABLED", "true")][..], "cluster.enabled", "true"),
        (&[("ARQON_CLUSTER__NODE_ID", "node 1")], "cluster.node_id", "\"node 1\""),
        (&[("ARQON_CLUSTER__NODE_ID", "n:1")], "cluster.node_id", "\"n:1\""),
        (&[("ARQON_CLUSTER__REDIS_URL", "tcp://h:6379")], "cluster.redis_url", "\"tcp://h:6379\""),
        (&[("ARQON_CLUSTER__REGISTRY_TTL_MS", "499")], "cluster.registry_ttl_ms", "499"),
        (&[("ARQON_CLUSTER__FORWARD_QUEUE", "0")], "cluster.forward_queue", "0"),
    ] {
        let quoted = format!("`{key}`");
        let error = assert_fails_naming(load_env(env), &[&quoted, value]);
        assert!(matches!(&error, ConfigError::Invalid { key: named, .. } if *named == key), "{error:?}");
    }
    let long = "n".repeat(65);
    assert_fails_naming(load_env(&[("ARQON_CLUSTER__NODE_ID", &long)]), &["`cluster.node_id`"]);
    // Bounds are accepted, and a cluster over Redis storage is valid.
    let config = load_env(&[
        ("ARQON_STORAGE__BACKEND", "redis"),
        ("ARQON_CLUSTER__ENABLED", "true"),
        ("ARQON_CLUSTER__NODE_ID", &"n".repeat(64)),
        ("ARQON_CLUSTER__REDIS_URL", "redis://10.0.0.1:6380"),
        ("ARQON_CLUSTER__REGISTRY_TTL_MS", "500"),
        ("ARQON_CLUSTER__FORWARD_QUEUE", "1"),
    ])
    .unwrap();
    assert!(config.cluster.enabled);
    assert_eq!((config.cluster.registry_ttl_ms, config.cluster.forward_queue), (500, 1));
    assert_eq!(config.cluster.redis_url, "redis://10.0.0.1:6380");
}

#[test]
fn a_short_hs256_secret_fails_naming_the_key_not_the_secret() {
    let jwt = |secret: &str| load_env(&[("ARQON_AUTH__MODE", "jwt"), ("ARQON_AUTH__JWT__SECRET", secret)]);
    for (secret, shown) in [("k", "of 1 bytes"), ("0123456789abcdef0123456789abcde", "of 31 bytes")] {
        let error = assert_fails_naming(jwt(secret), &["`auth.jwt.secret`", shown, "at least 32 bytes"]);
        assert!(!error.to_string().contains(secret), "the secret is not printed: {error}");
    }
    let config = jwt("0123456789abcdef0123456789abcdef").unwrap();
    assert_eq!(config.auth.jwt.secret.len(), 32, "32 bytes pass");
    // RS256 has no secret to check.
    let config = load_env(&[
        ("ARQON_AUTH__MODE", "jwt"),
        ("ARQON_AUTH__JWT__ALGORITHM", "RS256"),
        ("ARQON_AUTH__JWT__PUBLIC_KEY_FILE", "k.pem"),
    ]);
    assert_eq!(config.unwrap().auth.jwt.secret, "");
}

#[test]
fn jwt_claims_checks_default_to_exp_required_and_no_audience_or_issuer() {
    let jwt = Config::default().auth.jwt;
    assert_eq!((jwt.require_exp, jwt.audience.as_str(), jwt.issuer.as_str()), (true, "", ""));
    let config = load_env(&[
        ("ARQON_AUTH__JWT__REQUIRE_EXP", "false"),
        ("ARQON_AUTH__JWT__AUDIENCE", "bus"),
        ("ARQON_AUTH__JWT__ISSUER", "https://id.example"),
    ])
    .unwrap();
    let jwt = config.auth.jwt;
    assert_eq!((jwt.require_exp, jwt.audience.as_str(), jwt.issuer.as_str()), (false, "bus", "https://id.example"));
}

#[test]
fn a_monitoring_token_is_empty_or_long_and_is_never_printed() {
    let token = |value: &str| load_env(&[("ARQON_MONITORING__AUTH_TOKEN", value)]);
    for (value, shown) in [("short-token", "of 11 characters"), ("0123456789 abcdef", "of 17 characters")] {
        let error = assert_fails_naming(token(value), &["`monitoring.auth_token`", shown, "at least 16 characters"]);
        assert!(!error.to_string().contains(value), "the token is not printed: {error}");
    }
    assert_eq!(token("0123456789abcdef").unwrap().monitoring.auth_token, "0123456789abcdef", "16 pass");
    assert_eq!(Config::default().monitoring.auth_token, "", "none by default");
}

#[test]
fn api_keys_and_room_options_load_from_the_file() {
    let config = load_toml(
        "[[api.keys]]\nname = \"backend\"\nkey = \"0123456789abcdef0123\"\nrole = \"admin\"\n\n\
         [rooms.\"chat-*\"]\nhistory_size = 200\npresence = false\n\n[rooms.staff]\njoin_role = \"admin\"\n",
    )
    .unwrap();
    assert_eq!(config.api.keys.len(), 1);
    assert_eq!(config.api.keys[0].role, Role::Admin);
    assert_eq!(config.rooms["chat-*"].history_size, Some(200));
    assert_eq!(config.rooms["chat-*"].presence, Some(false));
    assert_eq!(config.rooms["staff"].join_role, Some(Role::Admin));
    assert!(!config.redacted().to_toml().unwrap().contains("0123456789abcdef"), "keys are redacted");
}

#[test]
fn bad_api_keys_and_room_options_stop_start_up_naming_them() {
    let key = |name: &str, key: &str, role: &str| {
        format!("[[api.keys]]\nname = \"{name}\"\nkey = \"{key}\"\nrole = \"{role}\"\n")
    };
    assert_fails_naming(load_toml(&key("short", "tooshort", "user")), &["api.keys.key", "16 bytes"]);
    assert_fails_naming(load_toml(&key("g", "0123456789abcdef", "guest")), &["api.keys.role", "user or admin"]);
    assert_fails_naming(load_toml(&key("g", "0123456789abcdef", "root")), &["api.keys", "root"]);
    let twice = key("a", "0123456789abcdef", "user") + &key("a", "fedcba9876543210", "user");
    assert_fails_naming(load_toml(&twice), &["api.keys", "unique"]);
    assert_fails_naming(load_toml("[[api.keys]]\nname = \"a\"\nkey = \"0123456789abcdef\"\n"), &["api.keys", "role"]);
    assert_fails_naming(load_toml("[rooms.\"chat room\"]\npresence = true\n"), &["rooms", "chat room"]);
    assert_fails_naming(load_toml("[rooms.chat]\npresense = true\n"), &["rooms", "presense"]);
    assert_fails_naming(load_toml("[rooms.chat]\nhistory_size = 0\n"), &["rooms.*.history_size", "chat: 0"]);
    assert_fails_naming(load_toml("[rooms.chat]\nhistory_size = 5000\n"), &["history_per_channel"]);
    assert_fails_naming(load_toml("[rooms.chat]\njoin_role = \"root\"\n"), &["rooms", "root"]);
    assert_fails_naming(load_toml("rooms = 3\n"), &["rooms"]);
}

#[test]
fn bad_webhook_settings_stop_start_up_naming_them() {
    assert_fails_naming(
        load_toml("[webhooks]\nurl = \"ftp://x/y\"\nsecret = \"0123456789abcdef\"\n"),
        &["webhooks.url", "https://"],
    );
    assert_fails_naming(
        load_toml("[webhooks]\nurl = \"https:///y\"\nsecret = \"0123456789abcdef\"\n"),
        &["webhooks.url", "with a host"],
    );
    assert_fails_naming(
        load_toml(
            "[webhooks]\nurl = \"https://x/y\"\nsecret = \"0123456789abcdef\"\nca_file = \"/nonexistent/ca.pem\"\n",
        ),
        &["webhooks.ca_file", "/nonexistent/ca.pem"],
    );
    let tls = load_toml("[webhooks]\nurl = \"https://hooks.example.com/y\"\nsecret = \"0123456789abcdef\"\n").unwrap();
    assert!(tls.webhooks.enabled());
    assert_fails_naming(
        load_toml("[webhooks]\nurl = \"http://x/y\"\nsecret = \"short\"\n"),
        &["webhooks.secret", "16 bytes"],
    );
    let events = "[webhooks]\nurl = \"http://x/y\"\nsecret = \"0123456789abcdef\"\nevents = [\"member_joined\"]\n";
    assert_fails_naming(load_toml(events), &["webhooks.events", "member_joined"]);
    assert_fails_naming(load_toml("[webhooks]\nqueue = 0\n"), &["webhooks.queue"]);
    let on = load_toml("[webhooks]\nurl = \"http://127.0.0.1:8080/h\"\nsecret = \"0123456789abcdef\"\n").unwrap();
    assert!(on.webhooks.enabled());
    assert!(!on.redacted().to_toml().unwrap().contains("0123456789abcdef"), "the secret is redacted");
}

#[test]
fn bad_hook_settings_stop_start_up_naming_them() {
    assert_fails_naming(load_toml("[hooks]\nconnect_url = \"app/x\"\n"), &["hooks.connect_url", "http://"]);
    assert_fails_naming(load_toml("[hooks]\nca_file = \"/nonexistent/ca.pem\"\n"), &["hooks.ca_file"]);
    let tls = load_toml("[hooks]\nconnect_url = \"https://app/x\"\n").unwrap();
    assert_eq!(tls.hooks.connect_url, "https://app/x");
    assert_fails_naming(load_toml("[hooks]\ntimeout_ms = 20000\n"), &["hooks.timeout_ms", "upgrade_timeout_ms"]);
    assert_fails_naming(load_toml("[hooks]\non_failure = \"open\"\n"), &["hooks.on_failure", "open"]);
    let hook = load_toml("[hooks]\nconnect_url = \"http://127.0.0.1:8080/c\"\non_failure = \"guest\"\n").unwrap();
    assert_eq!(hook.hooks.on_failure, arqon_config::HookFailure::Guest);
}

#[test]
fn a_room_with_a_join_hook_needs_the_hook() {
    assert_fails_naming(load_toml("[rooms.\"vip-*\"]\njoin_hook = true\n"), &["rooms.*.join_hook", "hooks.join_url"]);
    assert_fails_naming(load_toml("[hooks]\njoin_url = \"ftp://x\"\n"), &["hooks.join_url"]);
    let ok = load_toml("[hooks]\njoin_url = \"http://127.0.0.1:1/j\"\n[rooms.\"vip-*\"]\njoin_hook = true\n").unwrap();
    assert_eq!(ok.rooms["vip-*"].join_hook, Some(true));
}
