//! CORS for the server API: a browser page on another origin (the
//! monitoring dashboard, an operator's tool) may call `/api/` once the
//! origin passes `server.allowed_origins` (empty: any origin, as for
//! WebSocket upgrades). The API's credential is a key the caller sends
//! (`Authorization` / `X-API-Key`), never a cookie, so answering another
//! origin lends it nothing it does not already hold.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};

use crate::admission::check_origin;

/// The request's `Origin` if it is allowed to read the answer.
pub(crate) fn allowed_origin(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    check_origin(Some(origin.to_str().ok()?), allowed).ok()?;
    Some(origin.clone())
}

/// Lets `origin` read `response`.
pub(crate) fn expose(response: &mut Response<Full<Bytes>>, origin: Option<HeaderValue>) {
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The answer to a preflight (`OPTIONS` with `Access-Control-Request-Method`):
/// 204 allowing POST with the API's headers when the origin is allowed, 403
/// otherwise.
pub(crate) fn preflight(origin: Option<HeaderValue>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    let Some(origin) = origin else {
        *response.status_mut() = StatusCode::FORBIDDEN;
        return response;
    };
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, x-api-key"),
    );
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    expose(&mut response, Some(origin));
    response
}

/// Whether a request is a CORS preflight.
pub(crate) fn is_preflight(method: &hyper::Method, headers: &HeaderMap) -> bool {
    method == hyper::Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(origin: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        headers
    }

    #[test]
    fn origins_pass_as_for_websocket_upgrades() {
        let dashboard = "http://127.0.0.1:9101";
        assert_eq!(allowed_origin(&with_origin(dashboard), &[]).unwrap(), dashboard);
        let list = vec!["https://ops.example".to_owned()];
        assert!(allowed_origin(&with_origin(dashboard), &list).is_none());
        assert!(allowed_origin(&with_origin("https://ops.example"), &list).is_some());
        assert!(allowed_origin(&HeaderMap::new(), &[]).is_none(), "no Origin: not a browser, no CORS headers");
    }

    #[test]
    fn a_preflight_allows_post_with_the_api_headers_or_is_refused() {
        let response = preflight(Some(HeaderValue::from_static("http://a.example")));
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let headers = response.headers();
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "http://a.example");
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_METHODS], "POST");
        assert!(headers[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().contains("authorization"));
        assert_eq!(preflight(None).status(), StatusCode::FORBIDDEN);
        let mut headers = HeaderMap::new();
        assert!(!is_preflight(&hyper::Method::OPTIONS, &headers));
        headers.insert(header::ACCESS_CONTROL_REQUEST_METHOD, HeaderValue::from_static("POST"));
        assert!(is_preflight(&hyper::Method::OPTIONS, &headers));
        assert!(!is_preflight(&hyper::Method::POST, &headers));
    }
}
