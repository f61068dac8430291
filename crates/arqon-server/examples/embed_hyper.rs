//! The bus inside a hyper service of one's own: the service answers
//! `GET /hello` itself and mounts the bus on `/bus`, on one listener.
//!
//! Run it: `cargo run -p arqon-server --example embed_hyper [ADDR]` (default
//! `127.0.0.1:9300`), then `curl http://127.0.0.1:9300/hello` and
//! `arqon --url ws://127.0.0.1:9300/bus sub demo/news`. The bus's clients get
//! what the bus's own listener gives them (authentication from the
//! configuration, frame size limit and close 1009, heartbeat, slow-consumer
//! close, close 1001 at shutdown): only the HTTP side of the upgrade is the
//! service's. docs/embedding.md walks through it.

use std::convert::Infallible;
use std::net::SocketAddr;

use arqon_server::{Bus, Config, Endpoint, Refusal, UpgradeRequest, websocket_accept};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Every route of the service.
async fn route(
    request: Request<Incoming>,
    bus: Endpoint,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match request.uri().path() {
        "/hello" => text(StatusCode::OK, "text/plain", "hello from the service\n".to_owned()),
        "/bus" => mount(request, &bus, peer).await,
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
    })
}

/// `/bus`: the WebSocket upgrade. The endpoint admits the client (limits,
/// origin, the connect hook if configured, credentials); hyper switches
/// protocols; the upgraded stream is then the bus's.
async fn mount(request: Request<Incoming>, bus: &Endpoint, peer: SocketAddr) -> Response<Full<Bytes>> {
    let accept = match websocket_accept(request.headers()).map(HeaderValue::try_from) {
        Ok(Ok(accept)) => accept,
        Ok(Err(_)) => return text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "bad accept key\n".to_owned()),
        Err(refusal) => return refused(&refusal),
    };
    let upgrade =
        UpgradeRequest { path: request.uri().path(), query: request.uri().query(), headers: request.headers(), peer };
    let mut admitted = match bus.admit(&upgrade).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refused(&refusal),
    };
    // permessage-deflate, if the client offered it: the 101 must say so.
    let extensions = admitted.accept_compression().and_then(|value| HeaderValue::try_from(value).ok());
    let upgraded = hyper::upgrade::on(request);
    tokio::spawn(async move {
        match upgraded.await {
            Ok(upgraded) => admitted.serve(TokioIo::new(upgraded)).await,
            Err(e) => eprintln!("upgrade of {peer} failed: {e}"),
        }
    });
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(extensions) = extensions {
        headers.insert(SEC_WEBSOCKET_EXTENSIONS, extensions);
    }
    response
}

/// A refusal as the bus's own listener sends it: the status and a JSON body
/// `{"error":{"code":…,"message":…}}`.
fn refused(refusal: &Refusal) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": {"code": refusal.code, "message": refusal.message}}).to_string();
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
    text(status, "application/json", body)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The service's accept loop: one hyper connection per TCP connection, with
/// upgrades enabled. Runs until dropped.
async fn serve_http(listener: TcpListener, bus: Endpoint) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let bus = bus.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| route(request, bus.clone(), peer));
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades();
            if let Err(e) = connection.await {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9300".to_owned());
    // The bus's settings as the server binary reads them (ARQON_* variables
    // included); its own listener is not bound.
    let config = Config::from_env(None)?;
    let bus = Bus::builder(&config).embedded().bind().await?;
    let listener = TcpListener::bind(&addr).await?;
    println!("service on http://{addr}/hello, bus on ws://{addr}/bus");
    let http = tokio::spawn(serve_http(listener, bus.endpoint()));
    bus.serve(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    http.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use super::*;

    type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

    /// The service on 127.0.0.1, port 0, with a bus that allows 4 KiB frames.
    async fn start() -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let mut config = Config::default();
        config.limits.max_message_bytes = 4096;
        start_with(config).await
    }

    async fn start_with(
        mut config: Config,
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        config.monitoring.enabled = false;
        let bus = Bus::builder(&config).embedded().bind().await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let http = tokio::spawn(serve_http(listener, bus.endpoint()));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let bus = tokio::spawn(async move {
            bus.serve(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
            http.abort();
        });
        (addr, stop, bus)
    }

    /// A plain HTTP/1.1 GET; the whole response as text.
    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    async fn next_json(ws: &mut Ws, kind: &str) -> Value {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == kind {
                    return frame;
                }
            }
        }
    }

    async fn command(ws: &mut Ws, command: &str, args: Value) -> Value {
        let frame = json!({"type": "command", "command": command, "args": args});
        ws.send(Message::text(frame.to_string())).await.unwrap();
        next_json(ws, "response").await
    }

    /// The code of the server's close frame, after answering it (reading
    /// on until the stream ends sends the reply) and seeing TCP close.
    async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
        let mut code = None;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap() {
                Some(Ok(Message::Close(frame))) => code = frame.map(|f| f.code),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return code,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hello_and_the_bus_share_one_listener() {
        let (addr, stop, bus) = start().await;

        let hello = get(addr, "/hello").await;
        assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
        assert!(hello.ends_with("hello from the service\n"), "{hello}");
        let plain = get(addr, "/bus").await;
        assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");

        // A client offering permessage-deflate gets it through the embedder's
        // 101 as through the bus's own listener.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let offer = format!(
            "GET /bus HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        );
        raw.write_all(offer.as_bytes()).await.unwrap();
        let mut head = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut head)).await.unwrap().unwrap();
        let head = String::from_utf8_lossy(&head[..n]).to_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains("sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
            "{head}"
        );
        drop(raw);

        // Two clients on /bus: one publishes, the other receives.
        let url = format!("ws://{addr}/bus");
        let (mut alice, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let (mut bob, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        next_json(&mut alice, "event").await; // welcome
        next_json(&mut bob, "event").await;
        let channel = json!({"room": "demo", "channel": "news"});
        for ws in [&mut alice, &mut bob] {
            command(ws, "join_channel", channel.clone()).await;
        }
        let stored =
            command(&mut alice, "publish", json!({"room": "demo", "channel": "news", "payload": {"text": "hi"}})).await;
        let delivered = next_json(&mut bob, "message").await;
        assert_eq!(delivered["payload"]["text"], "hi");
        assert_eq!(delivered["id"], stored["payload"]["id"], "{stored}");

        // A frame over limits.max_message_bytes: MESSAGE_TOO_LARGE, then
        // close 1009, as on the bus's own listener.
        alice.send(Message::text("x".repeat(5000))).await.unwrap();
        let error = next_json(&mut alice, "error").await;
        assert_eq!(error["error"]["code"], "MESSAGE_TOO_LARGE", "{error}");
        assert_eq!(close_code(&mut alice).await, Some(CloseCode::Size));
        drop(alice);

        // Shutdown: Bob gets close 1001 (going away) and the bus returns.
        stop.send(()).unwrap();
        assert_eq!(close_code(&mut bob).await, Some(CloseCode::Away));
        drop(bob);
        tokio::time::timeout(Duration::from_secs(10), bus).await.unwrap().unwrap();
    }

    /// A connect hook: admits `?token=ok` as ann, refuses anything else (401).
    async fn hook() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/connect", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head and body: the bus sends both in one short write, closing nothing.
                while !String::from_utf8_lossy(&request).contains("\"path\"") {
                    let n = stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0);
                    request.extend_from_slice(&chunk[..n]);
                }
                let answer = if String::from_utf8_lossy(&request).contains("\"token\":\"ok\"") {
                    let body = r#"{"user":"ann"}"#;
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
                } else {
                    "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
                };
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        url
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_connect_hook_decides_on_the_mounted_path_too() {
        let mut config = Config::default();
        config.hooks.connect_url = hook().await;
        let (addr, stop, bus) = start_with(config).await;
        let (mut ann, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/bus?token=ok")).await.unwrap();
        let welcome = next_json(&mut ann, "event").await;
        assert_eq!(welcome["payload"]["user"], "ann", "{welcome}");
        let refused = tokio_tungstenite::connect_async(format!("ws://{addr}/bus?token=bad")).await.unwrap_err();
        let tokio_tungstenite::tungstenite::Error::Http(response) = refused else { panic!("{refused}") };
        assert_eq!(response.status(), 401);
        drop(ann);
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), bus).await.unwrap().unwrap();
    }
}
