//! The one HTTP client of the server: a POST of a JSON body to the
//! application (webhooks, the connect hook), one connection per request,
//! `http://` only (these receivers sit on the application's private network).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Largest answer body read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why a POST failed.
pub(crate) type PostError = Box<dyn std::error::Error + Send + Sync>;

/// An `http://HOST:PORT/PATH` target, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `HOST:PORT` to connect to.
    connect: String,
    /// The `Host` header.
    authority: String,
    path: String,
}

impl Target {
    /// Parses `url`; configuration validation already checked the scheme.
    pub(crate) fn parse(url: &str) -> Self {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
        let connect = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
        Target { connect, authority: authority.to_owned(), path }
    }

    /// POSTs `body` with `headers`; returns the status and (at most 64 KiB
    /// of) the answer.
    pub(crate) async fn post(&self, body: Bytes, headers: &[(&str, &str)]) -> Result<(StatusCode, Bytes), PostError> {
        let stream = tokio::net::TcpStream::connect(&self.connect).await?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let mut request = Request::post(&self.path)
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender.send_request(request.body(Full::new(body))?).await?;
        let status = response.status();
        let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await?.to_bytes();
        connection.abort();
        Ok((status, answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_host_and_path() {
        let t = Target::parse("http://10.0.0.5:8080/hooks/arqon");
        assert_eq!(
            (t.connect.as_str(), t.authority.as_str(), t.path.as_str()),
            ("10.0.0.5:8080", "10.0.0.5:8080", "/hooks/arqon")
        );
        let t = Target::parse("http://app.internal");
        assert_eq!((t.connect.as_str(), t.path.as_str()), ("app.internal:80", "/"));
    }
}
