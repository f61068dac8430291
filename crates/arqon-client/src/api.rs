//! [`ServerApi`]: the bus's HTTP API for application backends (PROTOCOL.md
//! section 8.3), `POST /api/<command>` on the bus listener with an API key.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arqon_protocol::{ClientId, ErrorCode, IdGenerator, MessageId, Name, Target};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tracing::debug;

use crate::client::{KeyArgs, PresenceArgs, channel_key};
use crate::error::WireError;
use crate::types::Published;
use crate::{ClientError, ClientOptions, Joined, Presence, PresenceStats, PublishOptions};

/// A kept-alive connection idle for longer is not reused: the bus drops an
/// API connection that sends nothing for its `upgrade_timeout_ms` (10 s by
/// default), and a request written as it does so would be lost.
const MAX_IDLE: Duration = Duration::from_secs(4);

/// A client of the bus's server API, for application backends: publish to
/// channels, message rooms, users and clients, see and manage who is
/// connected, all over HTTP with an API key (`[[api.keys]]` in the bus's
/// configuration).
///
/// Cheap to clone; clones share one kept-alive HTTP/1.1 connection (calls
/// made at the same time open more, and one is kept). Every refusal is a
/// [`ClientError::Api`] with the HTTP status and the wire error code.
///
/// ```no_run
/// # async fn run() -> Result<(), arqon_client::ClientError> {
/// use arqon_client::ServerApi;
///
/// let api = ServerApi::new("http://127.0.0.1:9100", "the-backend-key-0123")?;
/// // Delivered to every member of lobby/general with `from: "server"`.
/// let id = api.publish("lobby", "general", &serde_json::json!({"text": "deploy done"})).await?;
/// let who = api.presence("lobby", "general", None, None).await?;
/// println!("{id}: {} connections, {} users", who.total, who.users);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerApi {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    /// `Host` header value.
    authority: HeaderValue,
    /// Path before `/api/`, without a trailing slash (usually empty).
    base: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// `Bearer <key>`.
    credential: HeaderValue,
    request_timeout: Duration,
    connect_timeout: Duration,
    idle: Mutex<Option<(SendRequest<Full<Bytes>>, Instant)>>,
    ids: Mutex<IdGenerator>,
}

impl fmt::Debug for ServerApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("ServerApi")
            .field("host", &self.inner.host)
            .field("port", &self.inner.port)
            .field("base", &self.inner.base)
            .field("tls", &self.inner.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// One command of a [`ServerApi::batch`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchCommand {
    /// The command's name, e.g. `publish`.
    pub command: String,
    /// Its arguments, a JSON object.
    pub args: serde_json::Value,
}

impl BatchCommand {
    /// `command` with `args`.
    pub fn new(command: impl Into<String>, args: serde_json::Value) -> Self {
        BatchCommand { command: command.into(), args }
    }
}

#[derive(Serialize)]
struct MessageArgs<'a, P: Serialize> {
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    payload: &'a P,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    meta: &'a BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Delivered {
    delivered: u64,
}

impl ServerApi {
    /// A client of the API at `url`: the bus's address, `http://HOST:PORT`
    /// or `https://HOST:PORT` (a `ws://…/ws` or `wss://…/ws` URL names the
    /// same listener and is accepted too), with the API key `key`. Nothing
    /// is sent until the first call. Default [`ClientOptions`].
    pub fn new(url: &str, key: &str) -> Result<ServerApi, ClientError> {
        ServerApi::with_options(url, key, &ClientOptions::default())
    }

    /// As [`ServerApi::new`], with `options`' `request_timeout` (the whole
    /// call, connecting included), `connect_timeout` and `tls_roots_pem`.
    pub fn with_options(url: &str, key: &str, options: &ClientOptions) -> Result<ServerApi, ClientError> {
        let bad = |why: &str| ClientError::Transport(format!("server API URL {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let secure = match uri.scheme_str() {
            Some("http" | "ws") => false,
            Some("https" | "wss") => true,
            _ => return Err(bad("the scheme must be http or https")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
        let authority = HeaderValue::from_str(authority).map_err(|_| bad("the host is not a valid header"))?;
        let path = uri.path().trim_end_matches('/');
        let base = path.strip_suffix("/ws").or_else(|| path.strip_suffix("/api")).unwrap_or(path).to_owned();
        // `[::1]` in a URL, `::1` to connect and for TLS.
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let tls = if secure {
            let name = ServerName::try_from(host.clone()).map_err(|_| bad("the host is not a TLS server name"))?;
            Some((TlsConnector::from(crate::tls::client_config(options)?), name))
        } else {
            None
        };
        let credential = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| ClientError::Transport("the API key is not a valid HTTP header value".to_owned()))?;
        Ok(ServerApi {
            inner: Arc::new(Inner {
                host,
                port,
                authority,
                base,
                tls,
                credential,
                request_timeout: options.request_timeout,
                connect_timeout: options.connect_timeout,
                idle: Mutex::new(None),
                ids: Mutex::new(IdGenerator::new()),
            }),
        })
    }

    /// Any command with `args` (a JSON object; `null` for none): its
    /// response payload.
    pub async fn call(&self, command: &str, args: serde_json::Value) -> Result<serde_json::Value, ClientError> {
        let args = if args.is_null() { serde_json::Value::Object(serde_json::Map::new()) } else { args };
        self.typed(command, &args).await
    }

    /// `publish`: stores the message in the channel's history and delivers it
    /// to its members with `from: "server"`. Returns its id. See
    /// [`ServerApi::publish_with`].
    pub async fn publish(
        &self,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
        payload: &impl Serialize,
    ) -> Result<MessageId, ClientError> {
        self.publish_with(room, channel, payload, PublishOptions::default()).await
    }

    /// `publish` with an explicit id and/or metadata. The call always sends
    /// an id (a fresh one if `options` has none), so the bus stores the
    /// message once even if the connection fails and the call is repeated
    /// with the same id.
    pub async fn publish_with(
        &self,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
        payload: &impl Serialize,
        options: PublishOptions,
    ) -> Result<MessageId, ClientError> {
        let key = channel_key(room, channel)?;
        #[derive(Serialize)]
        struct Args<'a, P: Serialize> {
            id: MessageId,
            room: &'a Name,
            channel: &'a Name,
            payload: &'a P,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            meta: &'a BTreeMap<String, String>,
        }
        let id =
            options.id.unwrap_or_else(|| self.inner.ids.lock().unwrap_or_else(PoisonError::into_inner).message_id());
        let args = Args { id, room: &key.room, channel: &key.channel, payload, meta: &options.meta };
        self.typed::<Published>("publish", &args).await.map(|p| p.id)
    }

    /// `broadcast`: a room-wide message to every connection in any channel
    /// of `room`, live only (not stored). Returns the connections reached.
    pub async fn broadcast(&self, room: impl AsRef<str>, payload: &impl Serialize) -> Result<u64, ClientError> {
        self.broadcast_with_meta(room, payload, &BTreeMap::new()).await
    }

    /// `broadcast` with pass-through metadata.
    pub async fn broadcast_with_meta(
        &self,
        room: impl AsRef<str>,
        payload: &impl Serialize,
        meta: &BTreeMap<String, String>,
    ) -> Result<u64, ClientError> {
        let room = Name::parse(room.as_ref())?;
        let args = MessageArgs { room: Some(&room), to: None, payload, meta };
        self.typed::<Delivered>("broadcast", &args).await.map(|d| d.delivered)
    }

    /// `send`: a direct message to `to`, a client id or `user:NAME` (every
    /// connection of that user). Returns the connections reached; no
    /// connection is `NOT_FOUND`.
    pub async fn send(&self, to: impl AsRef<str>, payload: &impl Serialize) -> Result<u64, ClientError> {
        self.send_with_meta(to, payload, &BTreeMap::new()).await
    }

    /// `send` with pass-through metadata.
    pub async fn send_with_meta(
        &self,
        to: impl AsRef<str>,
        payload: &impl Serialize,
        meta: &BTreeMap<String, String>,
    ) -> Result<u64, ClientError> {
        let args = MessageArgs { room: None, to: Some(to.as_ref()), payload, meta };
        self.typed::<Delivered>("send", &args).await.map(|d| d.delivered)
    }

    /// `disconnect` (admin key): closes a client's connection
    /// ([`Target::Client`]) or every connection of a user
    /// ([`Target::User`]) with `code` (4000 to 4999; the bus's default is
    /// 4000), after a `disconnected` event carrying `reason`. Returns how many
    /// connections were closed.
    pub async fn disconnect(&self, who: &Target, code: Option<u16>, reason: Option<&str>) -> Result<u64, ClientError> {
        #[derive(Serialize)]
        struct Args<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            client_id: Option<ClientId>,
            #[serde(skip_serializing_if = "Option::is_none")]
            user: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            code: Option<u16>,
            #[serde(skip_serializing_if = "Option::is_none")]
            reason: Option<&'a str>,
        }
        let (client_id, user) = match who {
            Target::Client(id) => (Some(*id), None),
            Target::User(user) => (None, Some(user.as_str())),
            _ => {
                return Err(ClientError::rejected(ErrorCode::InvalidArgs, "disconnect takes a client or a user"));
            }
        };
        #[derive(serde::Deserialize)]
        struct Disconnected {
            disconnected: u64,
        }
        let args = Args { client_id, user, code, reason };
        self.typed::<Disconnected>("disconnect", &args).await.map(|d| d.disconnected)
    }

    /// `presence`: one page of a channel's members, as
    /// [`Client::presence`](crate::Client::presence).
    pub async fn presence(
        &self,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
        limit: Option<u32>,
        after: Option<ClientId>,
    ) -> Result<Presence, ClientError> {
        let key = channel_key(room, channel)?;
        self.typed("presence", &PresenceArgs::new(&key, limit, after)).await
    }

    /// `presence_stats`: the channel's connection and distinct user counts.
    pub async fn presence_stats(
        &self,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
    ) -> Result<PresenceStats, ClientError> {
        let key = channel_key(room, channel)?;
        self.typed("presence_stats", &KeyArgs::new(&key)).await
    }

    /// `subscribe` (admin key): joins the connected client `client_id` to a
    /// channel, with a replay after `since` as `join_channel` does. It gets
    /// the channel's messages from then on (a Rust [`Client`](crate::Client)
    /// does not re-join such a channel after a reconnect).
    pub async fn subscribe(
        &self,
        client_id: ClientId,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
        since: Option<MessageId>,
    ) -> Result<Joined, ClientError> {
        let key = channel_key(room, channel)?;
        #[derive(Serialize)]
        struct Args<'a> {
            client_id: ClientId,
            room: &'a Name,
            channel: &'a Name,
            #[serde(skip_serializing_if = "Option::is_none")]
            since: Option<MessageId>,
        }
        self.typed("subscribe", &Args { client_id, room: &key.room, channel: &key.channel, since }).await
    }

    /// `unsubscribe` (admin key): takes `client_id` out of a channel; it gets
    /// a `channel_left` event. `false` if it was not a member.
    pub async fn unsubscribe(
        &self,
        client_id: ClientId,
        room: impl AsRef<str>,
        channel: impl AsRef<str>,
    ) -> Result<bool, ClientError> {
        let key = channel_key(room, channel)?;
        #[derive(Serialize)]
        struct Args<'a> {
            client_id: ClientId,
            room: &'a Name,
            channel: &'a Name,
        }
        #[derive(serde::Deserialize)]
        struct Left {
            left: bool,
        }
        let left: Left = self.typed("unsubscribe", &Args { client_id, room: &key.room, channel: &key.channel }).await?;
        Ok(left.left)
    }

    /// `batch`: up to 100 commands in one request, run in order. The outer
    /// result fails only if the batch itself was refused; each command's
    /// payload or refusal (a [`ClientError::Api`] with the status the API
    /// gives its code) comes back in the commands' order.
    pub async fn batch(
        &self,
        commands: &[BatchCommand],
    ) -> Result<Vec<Result<serde_json::Value, ClientError>>, ClientError> {
        #[derive(Serialize)]
        struct Args<'a> {
            commands: &'a [BatchCommand],
        }
        #[derive(serde::Deserialize)]
        struct Results {
            results: Vec<serde_json::Value>,
        }
        let results: Results = self.typed("batch", &Args { commands }).await?;
        Ok(results.results.into_iter().map(batch_item).collect())
    }

    /// Calls `command` and decodes its payload.
    async fn typed<T: DeserializeOwned>(&self, command: &str, args: &impl Serialize) -> Result<T, ClientError> {
        let body = serde_json::to_vec(args).map_err(|e| ClientError::Encode(e.to_string()))?;
        let timeout = self.inner.request_timeout;
        let (status, body) = match tokio::time::timeout(timeout, self.exchange(command, Bytes::from(body))).await {
            Ok(answer) => answer?,
            Err(_) => return Err(ClientError::Timeout(timeout)),
        };
        if status == StatusCode::OK {
            return serde_json::from_slice(&body).map_err(|e| ClientError::Decode(format!("{command} answer: {e}")));
        }
        Err(api_error(status.as_u16(), &body))
    }

    /// One request and its whole answer, on the kept-alive connection if it
    /// is fresh enough, else on a new one.
    async fn exchange(&self, command: &str, body: Bytes) -> Result<(StatusCode, Bytes), ClientError> {
        let idle = self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner).take();
        let idle = idle.filter(|(sender, since)| since.elapsed() < MAX_IDLE && !sender.is_closed());
        let (mut sender, reused) = match idle {
            Some((mut sender, _)) => match sender.ready().await {
                Ok(()) => (sender, true),
                Err(_) => (self.open().await?, false),
            },
            None => (self.open().await?, false),
        };
        let response = match sender.try_send_request(self.request(command, body.clone())?).await {
            Ok(response) => response,
            Err(mut failed) => {
                // Sent again on a new connection only when this one was
                // kept alive and it is certain the bus did not process the
                // request: it was not written at all, or the connection
                // ended without a byte of answer (the bus drops a
                // connection idle for its upgrade timeout, and it closed
                // this one as the request went out).
                let unsent = failed.take_message().is_some();
                let dropped = failed.error().is_incomplete_message() || failed.error().is_canceled();
                if !(unsent || (reused && dropped)) {
                    return Err(http_error(failed.into_error()));
                }
                debug!(error = %failed.error(), "server API connection closed; sending again on a new one");
                sender = self.open().await?;
                sender.send_request(self.request(command, body)?).await.map_err(http_error)?
            }
        };
        let status = response.status();
        let body = response.into_body().collect().await.map_err(http_error)?.to_bytes();
        let mut idle = self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.is_none() {
            *idle = Some((sender, Instant::now()));
        }
        Ok((status, body))
    }

    fn request(&self, command: &str, body: Bytes) -> Result<Request<Full<Bytes>>, ClientError> {
        let path = format!("{}/api/{command}", self.inner.base);
        Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, self.inner.authority.clone())
            .header(header::AUTHORIZATION, self.inner.credential.clone())
            .header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))
            .map_err(|e| ClientError::Encode(format!("the request for {command:?}: {e}")))
    }

    /// A new connection (TCP, then TLS for `https`), ready for a request.
    async fn open(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let inner = &self.inner;
        let connect = async {
            let tcp = TcpStream::connect((inner.host.as_str(), inner.port))
                .await
                .map_err(|e| ClientError::Transport(format!("connect to {}:{}: {e}", inner.host, inner.port)))?;
            let _ = tcp.set_nodelay(true);
            match &inner.tls {
                None => handshake(tcp).await,
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| ClientError::Transport(format!("TLS: {e}")))?;
                    handshake(tls).await
                }
            }
        };
        match tokio::time::timeout(inner.connect_timeout, connect).await {
            Ok(sender) => sender,
            Err(_) => Err(ClientError::Timeout(inner.connect_timeout)),
        }
    }
}

/// HTTP/1.1 on `io`; the connection is driven by a task of its own, which
/// ends when the connection closes.
async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, ClientError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io)).await.map_err(http_error)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%error, "server API connection ended");
        }
    });
    Ok(sender)
}

fn http_error(error: hyper::Error) -> ClientError {
    ClientError::Transport(format!("HTTP: {error}"))
}

/// A refusal's body, `{"error": {"code", "message"}}`; anything else (a proxy's
/// page) keeps the status and gets the code the API gives that status.
fn api_error(status: u16, body: &[u8]) -> ClientError {
    #[derive(serde::Deserialize)]
    struct Body {
        error: WireError,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(body) => body.error.into_api_error(status),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.chars().take(200).collect();
            ClientError::Api { status, code: code_of_status(status), message: text, retry_after_ms: None }
        }
    }
}

/// One item of a batch's `results`: a payload, or `{"error": {…}}`.
fn batch_item(item: serde_json::Value) -> Result<serde_json::Value, ClientError> {
    let error = match &item {
        serde_json::Value::Object(map) if map.len() == 1 => map.get("error").filter(|e| e.get("code").is_some()),
        _ => None,
    };
    let Some(error) = error else { return Ok(item) };
    match serde_json::from_value::<WireError>(error.clone()) {
        Ok(error) => {
            let status = error.code().map_or(500, ErrorCode::http_status);
            Err(error.into_api_error(status))
        }
        Err(e) => Err(ClientError::Decode(format!("batch result: {e}"))),
    }
}

/// The code for a refusal whose body says none.
fn code_of_status(status: u16) -> ErrorCode {
    match status {
        400 => ErrorCode::InvalidArgs,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        413 => ErrorCode::MessageTooLarge,
        429 => ErrorCode::RateLimited,
        503 => ErrorCode::StorageUnavailable,
        _ => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn urls_name_the_listener_and_the_api_prefix() {
        let api = ServerApi::new("http://127.0.0.1:9100", "k").unwrap();
        assert_eq!((api.inner.host.as_str(), api.inner.port, api.inner.base.as_str()), ("127.0.0.1", 9100, ""));
        let api = ServerApi::new("ws://localhost:9100/ws", "k").unwrap();
        assert_eq!((api.inner.host.as_str(), api.inner.base.as_str()), ("localhost", ""));
        let api = ServerApi::new("https://bus.example/prefix/api/", "k").unwrap();
        assert_eq!((api.inner.port, api.inner.base.as_str(), api.inner.tls.is_some()), (443, "/prefix", true));
        let api = ServerApi::new("http://[::1]:9", "secret-key-never-shown").unwrap();
        assert_eq!(api.inner.host, "::1");
        assert!(!format!("{api:?}").contains("secret"));
        assert!(ServerApi::new("ftp://x", "k").is_err());
        assert!(ServerApi::new("http://x", "bad\nkey").is_err());
    }

    #[test]
    fn refusals_keep_status_and_code() {
        let error = api_error(401, br#"{"error":{"code":"UNAUTHORIZED","message":"bad key"}}"#);
        assert_eq!((error.status(), error.code()), (Some(401), Some(ErrorCode::Unauthorized)));
        assert_eq!(error.to_string(), "HTTP 401 UNAUTHORIZED: bad key");
        let error = api_error(502, b"<html>bad gateway</html>");
        assert_eq!((error.status(), error.code()), (Some(502), Some(ErrorCode::Internal)));
        let items = [
            serde_json::json!({"id": "x"}),
            serde_json::json!({"error": {"code": "NOT_FOUND", "message": "no such client"}}),
        ];
        let results: Vec<_> = items.into_iter().map(batch_item).collect();
        assert!(results[0].is_ok());
        let error = results[1].as_ref().unwrap_err();
        assert_eq!((error.status(), error.code()), (Some(404), Some(ErrorCode::NotFound)));
    }
}
