//! The server API (PROTOCOL.md section 8.3): API keys to roles, the body to
//! a command's args, and the routing core's answer to an HTTP status.

use arqon_config::ApiConfig;
use arqon_protocol::{ProtocolError, RawValue, Role};
use arqon_routing::{CallLimiter, RateLimit, Router};
use arqon_transport::{ApiRequest, ApiResponse};

use crate::auth::constant_time_eq;

/// One configured key.
struct Key {
    name: String,
    secret: Vec<u8>,
    role: Role,
    /// Its rate, if it has one.
    limiter: Option<CallLimiter>,
}

/// The configured keys.
pub(crate) struct ApiKeys {
    keys: Vec<Key>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: a key is never printed.
        f.debug_list().entries(self.keys.iter().map(|k| (&k.name, k.role))).finish()
    }
}

impl ApiKeys {
    pub(crate) fn new(config: &ApiConfig) -> Self {
        let key = |k: &arqon_config::ApiKey| Key {
            name: k.name.clone(),
            secret: k.key.clone().into_bytes(),
            role: k.role,
            limiter: (k.rate_per_s > 0).then(|| {
                let burst = if k.burst == 0 { k.rate_per_s.saturating_mul(2) } else { k.burst };
                CallLimiter::new(RateLimit { rate_per_s: k.rate_per_s, burst })
            }),
        };
        ApiKeys { keys: config.keys.iter().map(key).collect() }
    }

    /// The name and role of `given`. Every key is compared, each in
    /// constant time, so the answer's timing tells nothing about the keys.
    fn find(&self, given: &[u8]) -> Option<&Key> {
        let mut found = None;
        for key in &self.keys {
            if constant_time_eq(&key.secret, given) && found.is_none() {
                found = Some(key);
            }
        }
        found
    }
}

/// The wire's error object, with `retry_after_ms` when the error has one.
fn error_response(error: &ProtocolError) -> ApiResponse {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        code: &'static str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    }
    let body = Body { code: error.code.as_str(), message: &error.message, retry_after_ms: error.retry_after_ms };
    match serde_json::to_string(&serde_json::json!({ "error": body })) {
        Ok(body) => ApiResponse { status: error.code.http_status(), body },
        Err(_) => ApiResponse::error(error.code.http_status(), error.code.as_str(), &error.message),
    }
}

/// Answers one API call.
pub(crate) async fn call(router: &Router, keys: &ApiKeys, request: ApiRequest) -> ApiResponse {
    let Some(given) = request.key.as_deref() else {
        return ApiResponse::error(401, "UNAUTHORIZED", "an API key is required (Authorization: Bearer <key>)");
    };
    let Some(key) = keys.find(given.as_bytes()) else {
        tracing::info!(peer = %request.peer, command = %request.command, "server API call with an unknown key");
        return ApiResponse::error(401, "UNAUTHORIZED", "unknown API key");
    };
    let (name, role) = (key.name.as_str(), key.role);
    if let Some(Err(refused)) = key.limiter.as_ref().map(CallLimiter::admit) {
        return error_response(&refused);
    }
    let args = match std::str::from_utf8(&request.body).ok().and_then(|text| {
        serde_json::from_str::<&RawValue>(text).ok().filter(|raw| raw.get().trim_start().starts_with('{'))
    }) {
        Some(args) => args,
        None => return ApiResponse::error(400, "INVALID_ARGS", "the body must be a JSON object: the command's args"),
    };
    let mut session = router.api_session(role);
    let result = session.call(&request.command, Some(args.into())).await;
    match result {
        Ok(body) => ApiResponse { status: 200, body },
        Err(error) => {
            tracing::debug!(key = name, command = %request.command, code = %error.code.as_str(), "server API call refused");
            error_response(&error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arqon_protocol::ErrorCode;

    #[test]
    fn every_code_has_the_documented_status() {
        let table = [
            (ErrorCode::InvalidArgs, 400),
            (ErrorCode::InvalidName, 400),
            (ErrorCode::InvalidEnvelope, 400),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::NotFound, 404),
            (ErrorCode::UnknownCommand, 404),
            (ErrorCode::MessageTooLarge, 413),
            (ErrorCode::RateLimited, 429),
            (ErrorCode::StorageUnavailable, 503),
            (ErrorCode::Internal, 500),
        ];
        for (code, status) in table {
            assert_eq!(code.http_status(), status, "{code:?}");
        }
    }

    #[test]
    fn keys_are_found_by_secret_and_never_printed() {
        let key = |name: &str, key: &str, role| arqon_config::ApiKey::new(name, key, role);
        let config = ApiConfig {
            keys: vec![key("backend", "0123456789abcdef", Role::Admin), key("reports", "fedcba9876543210", Role::User)],
        };
        let keys = ApiKeys::new(&config);
        let found = |given: &[u8]| keys.find(given).map(|k| (k.name.as_str(), k.role));
        assert_eq!(found(b"fedcba9876543210"), Some(("reports", Role::User)));
        assert_eq!(found(b"0123456789abcdef"), Some(("backend", Role::Admin)));
        assert_eq!(found(b"0123456789abcde"), None);
        assert!(!format!("{keys:?}").contains("0123"));
    }
}
