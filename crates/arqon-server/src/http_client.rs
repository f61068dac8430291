//! The one HTTP client of the server: a POST of a JSON body to the
//! application (webhooks, the connect and join hooks), over `http://` or
//! `https://` (the web's public roots plus the CA file configured beside the
//! URL). Connections are kept alive and reused for a few seconds, so that a
//! burst of upgrades does not open (and, over https, handshake) one
//! connection per client.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

use crate::ServerError;

/// Largest answer body read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Idle connections kept per target, at most.
const IDLE_MAX: usize = 8;
/// How long an idle connection is reused: below the shortest keep-alive
/// timeout common servers use (Node's 5 s), so that the application rarely
/// closes one just as it is picked.
const IDLE_FOR: Duration = Duration::from_secs(4);

/// Why a POST failed.
pub(crate) type PostError = Box<dyn std::error::Error + Send + Sync>;

/// A kept-alive connection and since when it is idle.
type Idle = (SendRequest<Full<Bytes>>, Instant);

/// An `http://` or `https://HOST[:PORT]/PATH` target, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `HOST:PORT` to connect to.
    connect: String,
    /// The `Host` header.
    authority: String,
    path: String,
    /// For `https://`: the TLS settings and the name the certificate must have.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    /// Kept-alive connections, the most recently used last; shared by clones.
    idle: Arc<Mutex<Vec<Idle>>>,
}

impl Target {
    /// Parses `url` (configuration validation checked its scheme and host);
    /// for `https://`, loads the roots: the web's, and those of `ca_file`
    /// (the config key `ca_key` names it in errors).
    pub(crate) fn parse(url: &str, ca_file: &str, ca_key: &str) -> Result<Self, ServerError> {
        let (rest, https) = match url.strip_prefix("https://") {
            Some(rest) => (rest, true),
            None => (url.strip_prefix("http://").unwrap_or(url), false),
        };
        let (authority, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
        // A port follows the last colon, unless it closes an IPv6 literal.
        let has_port = authority.rsplit_once(':').is_some_and(|(_, port)| !port.contains(']'));
        let connect = match (has_port, https) {
            (true, _) => authority.to_owned(),
            (false, true) => format!("{authority}:443"),
            (false, false) => format!("{authority}:80"),
        };
        let tls = if https {
            let host = connect.rsplit_once(':').map_or(connect.as_str(), |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| ServerError::Tls(format!("{url}: {host:?} is not a host name: {e}")))?;
            Some((client_config(ca_file, ca_key)?, name))
        } else {
            None
        };
        Ok(Target { connect, authority: authority.to_owned(), path, tls, idle: Arc::default() })
    }

    /// POSTs `body` with `headers`; returns the status and (at most 64 KiB
    /// of) the answer.
    pub(crate) async fn post(&self, body: Bytes, headers: &[(&str, &str)]) -> Result<(StatusCode, Bytes), PostError> {
        let request = || {
            let mut request = Request::post(&self.path)
                .header(hyper::header::HOST, &self.authority)
                .header(hyper::header::CONTENT_TYPE, "application/json");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.body(Full::new(body.clone()))
        };
        if let Some(sender) = self.take_idle() {
            // The application may have closed it meanwhile: then once more on
            // a fresh connection.
            if let Ok(answer) = self.exchange(sender, request()?).await {
                return Ok(answer);
            }
        }
        let sender = self.open().await?;
        self.exchange(sender, request()?).await
    }

    /// An idle connection still open and young enough, if any.
    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some((sender, since)) = idle.pop() {
            if since.elapsed() < IDLE_FOR && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// A new connection (TLS for `https://`), its task running.
    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, PostError> {
        let stream = tokio::net::TcpStream::connect(&self.connect).await?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => handshake(stream).await,
            Some((config, name)) => {
                handshake(TlsConnector::from(Arc::clone(config)).connect(name.clone(), stream).await?).await
            }
        }
    }

    /// One request and its whole answer on `sender`'s connection, which is
    /// kept for the next request if it stays open.
    async fn exchange(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
        request: Request<Full<Bytes>>,
    ) -> Result<(StatusCode, Bytes), PostError> {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await?.to_bytes();
        if sender.is_ready() {
            let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            idle.retain(|(sender, since)| since.elapsed() < IDLE_FOR && !sender.is_closed());
            if idle.len() < IDLE_MAX {
                idle.push((sender, Instant::now()));
            }
        }
        Ok((status, answer))
    }
}

/// The HTTP/1.1 handshake on `io`; the connection's task ends when the
/// last sender is dropped or the application closes it.
async fn handshake<S>(io: S) -> Result<SendRequest<Full<Bytes>>, PostError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// The TLS client settings: the web's public roots, and the certificates
/// of `ca_file` if set (a private CA).
fn client_config(ca_file: &str, ca_key: &str) -> Result<Arc<ClientConfig>, ServerError> {
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if !ca_file.is_empty() {
        let bad = |why: String| ServerError::Tls(format!("{ca_key} = {ca_file:?}: {why}"));
        let pem = std::fs::read(ca_file).map_err(|e| bad(e.to_string()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.map_err(|e| bad(format!("not PEM: {e}")))?).map_err(|e| bad(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(bad("holds no certificate".to_owned()));
        }
    }
    let config = ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Target {
        Target::parse(url, "", "webhooks.ca_file").unwrap()
    }

    #[test]
    fn urls_split_into_address_host_and_path() {
        let t = parse("http://10.0.0.5:8080/hooks/arqon");
        assert_eq!(
            (t.connect.as_str(), t.authority.as_str(), t.path.as_str()),
            ("10.0.0.5:8080", "10.0.0.5:8080", "/hooks/arqon")
        );
        assert!(t.tls.is_none());
        let t = parse("http://app.internal");
        assert_eq!((t.connect.as_str(), t.path.as_str()), ("app.internal:80", "/"));
        let t = parse("https://hooks.example.com/in");
        assert_eq!((t.connect.as_str(), t.path.as_str()), ("hooks.example.com:443", "/in"));
        assert!(matches!(&t.tls, Some((_, ServerName::DnsName(name))) if name.as_ref() == "hooks.example.com"));
        let t = parse("https://[::1]:8443/in");
        assert_eq!(t.connect, "[::1]:8443");
        assert!(matches!(&t.tls, Some((_, ServerName::IpAddress(_)))));
        assert_eq!(parse("https://[::1]/in").connect, "[::1]:443");
    }

    #[test]
    fn a_ca_file_that_cannot_be_used_is_named() {
        let missing = Target::parse("https://x/y", "/nonexistent/ca.pem", "webhooks.ca_file").unwrap_err();
        assert!(missing.to_string().contains("webhooks.ca_file = \"/nonexistent/ca.pem\""), "{missing}");
        let empty = std::env::temp_dir().join(format!("arqon-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let none = Target::parse("https://x/y", &empty.display().to_string(), "hooks.ca_file").unwrap_err();
        assert!(none.to_string().contains("holds no certificate"), "{none}");
        let _ = std::fs::remove_file(empty);
    }
}

#[cfg(test)]
mod keep_alive {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;

    /// An application that keeps connections alive: its URL, how many it
    /// accepted, and the connections' tasks (abort them to close them).
    async fn application() -> (String, Arc<AtomicUsize>, Arc<Mutex<Vec<JoinHandle<()>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let (count, live) = (Arc::clone(&accepted), Arc::clone(&tasks));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(|_: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{}"))))
                });
                let connection =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                live.lock().unwrap().push(tokio::spawn(async move {
                    let _ = connection.await;
                }));
            }
        });
        (url, accepted, tasks)
    }

    #[tokio::test]
    async fn connections_are_reused_and_a_closed_one_is_replaced() {
        let (url, accepted, tasks) = application().await;
        let target = Target::parse(&url, "", "hooks.ca_file").unwrap();
        for _ in 0..3 {
            let (status, answer) = target.post(Bytes::from_static(b"{}"), &[]).await.unwrap();
            assert_eq!((status, &answer[..]), (StatusCode::OK, &b"{}"[..]));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for three requests");
        // The application closes its idle connections: the next request
        // still succeeds, on a new one.
        for task in tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        let (status, _) = target.post(Bytes::from_static(b"{}"), &[]).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
