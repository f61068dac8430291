//! `arqon gentoken`: a JWT the bus will accept, signed with the secret (or
//! the private half of the key) of the bus's own configuration.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arqon_client::{Name, Role};
use arqon_config::{AuthMode, Config, JwtAlgorithm};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value, json};

use crate::Failure;
use crate::args::Invocation;
use crate::cmd::Command;
use crate::output::print_line;

pub(crate) const COMMAND: Command = Command {
    name: "gentoken",
    usage: "gentoken --sub NAME [--role ROLE] [--rooms a,b] [--ttl 1h]",
    summary: "print a JWT signed with the server config's auth.jwt secret (HS256) or --key (RS256)",
    options: &[
        ("--sub NAME", "the subject; the bus derives a stable client id from it"),
        ("--role ROLE", "guest, user or admin (default user)"),
        ("--rooms a,b", "the rooms it may use (default: all)"),
        ("--ttl 1h", "lifetime: 90s, 30m, 1h, 7d, or none (default 1h)"),
        ("--config FILE", "the server's config file; ARQON_* variables apply as for arqonbus"),
        ("--key FILE", "PEM private key, for auth.jwt.algorithm = \"RS256\""),
    ],
    valued: &["--sub", "--role", "--rooms", "--ttl", "--config", "-c", "--key"],
    operands: (0, 0),
};

pub(crate) fn run(invocation: &Invocation) -> Result<(), Failure> {
    let opts = &invocation.opts;
    let sub = opts.value("--sub").ok_or_else(|| Failure::Usage("gentoken needs --sub NAME".to_owned()))?;
    if sub.is_empty() {
        return Err(Failure::Usage("--sub must not be empty".to_owned()));
    }
    let role: Role =
        opts.value("--role").unwrap_or("user").parse().map_err(|e| Failure::Usage(format!("--role: {e}")))?;
    let rooms = match opts.value("--rooms") {
        None | Some("*") => None,
        Some(list) => Some(
            list.split(',')
                .map(|room| Name::parse(room.trim()).map(|n| n.as_str().to_owned()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Failure::Usage(format!("--rooms: {}", e.message)))?,
        ),
    };
    let ttl = ttl(opts.value("--ttl").unwrap_or("1h"))?;

    let path = opts.value("--config").or_else(|| opts.value("-c")).map(Path::new);
    let config = Config::from_env(path).map_err(|e| Failure::Usage(format!("reading the server config: {e}")))?;
    let jwt = &config.auth.jwt;
    if config.auth.mode != AuthMode::Jwt {
        eprintln!(
            "note: this config has auth.mode = \"{}\", so the bus will not read JWTs; \
             set auth.mode = \"jwt\" (ARQON_AUTH__MODE=jwt) on the server",
            if config.auth.mode == AuthMode::Token { "token" } else { "none" }
        );
    }
    let (algorithm, key) = match jwt.algorithm {
        JwtAlgorithm::HS256 => {
            if jwt.secret.is_empty() {
                return Err(Failure::Usage(
                    "auth.jwt.secret is empty: set it in the config file (--config FILE) or ARQON_AUTH__JWT__SECRET"
                        .to_owned(),
                ));
            }
            let key = EncodingKey::from_secret(jwt.secret.as_bytes())
                .map_err(|e| Failure::Usage(format!("auth.jwt.secret: {e}")))?;
            (Algorithm::HS256, key)
        }
        JwtAlgorithm::RS256 => {
            let Some(key) = opts.value("--key") else {
                return Err(Failure::Usage(
                    "auth.jwt.algorithm is RS256 and the config names only the public key \
                     (auth.jwt.public_key_file): pass the private key with --key FILE"
                        .to_owned(),
                ));
            };
            let pem = std::fs::read(key).map_err(|e| Failure::Usage(format!("--key {key}: {e}")))?;
            let key = EncodingKey::from_rsa_pem(&pem).map_err(|e| Failure::Usage(format!("--key {key}: {e}")))?;
            (Algorithm::RS256, key)
        }
    };

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(sub));
    claims.insert("role".into(), json!(role.as_str()));
    claims.insert("iat".into(), json!(now));
    if let Some(rooms) = &rooms {
        claims.insert("rooms".into(), json!(rooms));
    }
    let exp = ttl.map(|ttl| now.saturating_add(ttl.as_secs()));
    if let Some(exp) = exp {
        claims.insert("exp".into(), json!(exp));
    }
    let token = jsonwebtoken::encode(&Header::new(algorithm), &Value::Object(claims), &key)
        .map_err(|e| Failure::Usage(format!("cannot sign the token: {e}")))?;
    if invocation.json {
        let out = json!({"token": token, "sub": sub, "role": role.as_str(), "rooms": rooms, "exp": exp});
        print_line(&out.to_string());
    } else {
        print_line(&token);
    }
    Ok(())
}

/// `90s`, `30m`, `1h`, `7d`, a number of seconds, or `none` (no `exp`).
fn ttl(text: &str) -> Result<Option<Duration>, Failure> {
    if text == "none" {
        return Ok(None);
    }
    let bad = || Failure::Usage(format!("--ttl takes e.g. 90s, 30m, 1h, 7d or none, not {text:?}"));
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match number.checked_mul(scale) {
        Some(secs) if secs > 0 => Ok(Some(Duration::from_secs(secs))),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ttls_read_with_units() {
        assert_eq!(ttl("90").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(ttl("90s").unwrap(), Some(Duration::from_secs(90)));
        assert_eq!(ttl("30m").unwrap(), Some(Duration::from_secs(1800)));
        assert_eq!(ttl("1h").unwrap(), Some(Duration::from_secs(3600)));
        assert_eq!(ttl("7d").unwrap(), Some(Duration::from_secs(604_800)));
        assert_eq!(ttl("none").unwrap(), None);
        for bad in ["", "0", "h", "1w", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(matches!(ttl(bad), Err(Failure::Usage(_))), "{bad}");
        }
    }
}
