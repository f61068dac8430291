//! Who may open the monitoring listener's dashboard (`/`) and `/telemetry`.

use std::fmt;

use hyper::HeaderMap;
use hyper::header;

/// Access to the dashboard and the telemetry stream; the other monitoring
/// endpoints are always open.
#[derive(Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone who reaches the listener (it is bound to loopback).
    Open,
    /// Requests presenting this token, as `Authorization: Bearer TOKEN` or
    /// `?token=TOKEN`.
    Token(String),
    /// Nobody; the reason tells the operator what to configure.
    Closed(String),
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Open => f.write_str("Open"),
            // Never the token itself.
            Access::Token(_) => f.write_str("Token(<redacted>)"),
            Access::Closed(reason) => f.debug_tuple("Closed").field(reason).finish(),
        }
    }
}

/// Why a request is turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No credential, or a wrong one: HTTP 401.
    Unauthorized,
    /// Closed to everyone: HTTP 403, with the reason.
    Closed(String),
}

impl Access {
    /// Whether a request with these headers and query may pass.
    pub(crate) fn check(&self, headers: &HeaderMap, query: Option<&str>) -> Result<(), Denied> {
        match self {
            Access::Open => Ok(()),
            Access::Closed(reason) => Err(Denied::Closed(reason.clone())),
            Access::Token(expected) => match credential(headers, query) {
                Some(given) if same(given.as_bytes(), expected.as_bytes()) => Ok(()),
                _ => Err(Denied::Unauthorized),
            },
        }
    }
}

/// `Authorization: Bearer …`, else `?token=…` (browsers cannot set headers
/// on a page load or a WebSocket).
fn credential(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|v| v.trim().to_owned());
    header.or_else(|| query?.split('&').find_map(|pair| pair.strip_prefix("token=").map(percent_decode)))
}

/// Equality that takes as long whatever the first differing byte (the
/// length may show).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (hex, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, byte) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn a_token_passes_in_the_header_or_the_query_and_nothing_else_does() {
        let access = Access::Token("s3cret/token+0123456".to_owned());
        assert_eq!(access.check(&headers(Some("Bearer s3cret/token+0123456")), None), Ok(()));
        assert_eq!(access.check(&headers(None), Some("events=error&token=s3cret%2Ftoken%2B0123456")), Ok(()));
        for (authorization, query) in [
            (None, None),
            (None, Some("events=error")),
            (Some("Bearer s3cret/token+012345"), None),
            (Some("Basic s3cret/token+0123456"), None),
            (None, Some("token=s3cret/token 0123456")),
        ] {
            assert_eq!(access.check(&headers(authorization), query), Err(Denied::Unauthorized), "{query:?}");
        }
    }

    #[test]
    fn open_and_closed_are_what_they_say_and_debug_hides_the_token() {
        assert_eq!(Access::Open.check(&headers(None), None), Ok(()));
        let closed = Access::Closed("set monitoring.auth_token".to_owned());
        assert_eq!(
            closed.check(&headers(Some("Bearer x")), Some("token=x")),
            Err(Denied::Closed("set monitoring.auth_token".to_owned()))
        );
        assert_eq!(format!("{:?}", Access::Token("hunter2hunter2hunter2".to_owned())), "Token(<redacted>)");
    }

    #[test]
    fn comparison_and_decoding() {
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"abcd"));
        assert_eq!(percent_decode("a%2Fb+c%zz%4"), "a/b c%zz%4");
    }
}
