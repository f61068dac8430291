//! Issue 16 part 4: the connect hook against a real local HTTP application:
//! it admits with an identity, refuses, and when it is slow, down or answers
//! garbage the bus fails closed (503) or admits a guest, as configured.

use std::time::Duration;

use arqon_config::HookFailure;
use arqon_e2e::{TestClient, TestServer, test_config};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite;

/// The application: decides by the token it is sent.
async fn application() -> String {
    application_on(None).await
}

/// The application over https with `tls`, or plain http.
async fn application_on(tls: Option<tokio_rustls::TlsAcceptor>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = match tls {
        Some(_) => format!("https://localhost:{port}/connect"),
        None => format!("http://127.0.0.1:{port}/connect"),
    };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(tls) => {
                        if let Ok(mut stream) = tls.accept(stream).await {
                            decide(&mut stream).await;
                        }
                    }
                    None => decide(&mut { stream }).await,
                }
            });
        }
    });
    url
}

/// Reads one connect-hook request and answers it by its token.
async fn decide<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let body = arqon_e2e::app::read_request(stream).await.1;
    let ask: Value = serde_json::from_slice(&body).unwrap();
    let token = ask["token"].as_str().unwrap_or_default().to_owned();
    let (status, answer) = match token.as_str() {
        "ann" => {
            ("200 OK", json!({"user": "ann", "role": "user", "info": {"plan": "pro"}, "rooms": ["chat"]}).to_string())
        }
        "cookie" => {
            let session = ask["cookies"]["session"].as_str().unwrap_or_default().to_owned();
            ("200 OK", json!({"user": session, "rooms": "*"}).to_string())
        }
        "banned" => ("403 Forbidden", json!({"error": {"message": "you are banned"}}).to_string()),
        "garbage" => ("200 OK", "{not json".to_owned()),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            ("200 OK", "{}".to_owned())
        }
        _ => ("401 Unauthorized", "{}".to_owned()),
    };
    let response =
        format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}", answer.len());
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The HTTP status of a refused upgrade, or 101.
async fn status(url: &str, cookie: Option<&str>) -> u16 {
    use tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    if let Some(cookie) = cookie {
        request.headers_mut().insert("cookie", cookie.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("unexpected failure: {e}"),
    }
}

fn config(url: &str, on_failure: HookFailure) -> arqon_config::Config {
    let mut config = test_config();
    config.hooks.connect_url = url.to_owned();
    config.hooks.timeout_ms = 500;
    config.hooks.on_failure = on_failure;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_admits_with_an_identity_or_refuses() {
    let server = TestServer::start_with(config(&application().await, HookFailure::Refuse)).await;
    let url = server.url();
    let mut ann = TestClient::connect(&format!("{url}?token=ann")).await;
    assert_eq!(ann.welcome["payload"]["user"], "ann");
    assert_eq!(ann.welcome["payload"]["role"], "user");
    ann.join("chat", "main").await;
    assert_eq!(
        ann.err("join_channel", json!({"room": "other", "channel": "c"})).await,
        "FORBIDDEN",
        "rooms from the hook"
    );
    let presence = ann.ok("presence", json!({"room": "chat", "channel": "main"})).await;
    assert_eq!(presence["members"][0]["info"], json!({"plan": "pro"}));
    // Cookies reach the hook.
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("{url}?token=cookie").into_client_request().unwrap();
    request.headers_mut().insert("cookie", "theme=dark; session=grace".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let grace = TestClient::from_ws(ws).await;
    assert_eq!(grace.welcome["payload"]["user"], "grace");
    assert_eq!(status(&format!("{url}?token=banned"), None).await, 403);
    assert_eq!(status(&format!("{url}?token=nobody"), None).await, 401);
    assert_eq!(status(&url, None).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_hook_goes_over_https_to_an_application_whose_ca_is_configured() {
    let cert = arqon_e2e::tls::SelfSigned::new("connect-hook-https");
    let hook = application_on(Some(cert.acceptor())).await;
    let mut trusted = config(&hook, HookFailure::Refuse);
    trusted.hooks.ca_file = cert.cert_path.display().to_string();
    let server = TestServer::start_with(trusted).await;
    let ann = server.client_as("ann").await;
    assert_eq!(ann.welcome["payload"]["user"], "ann", "{}", ann.welcome);
    assert_eq!(status(&format!("{}?token=stranger", server.url()), None).await, 401);
    // Without the CA, the application's certificate does not check out: a
    // failed hook, so the connection is refused (503), not admitted.
    let untrusted = TestServer::start_with(config(&hook, HookFailure::Refuse)).await;
    assert_eq!(status(&format!("{}?token=ann", untrusted.url()), None).await, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_fails_refuses_with_503_or_admits_guests_as_configured() {
    let app = application().await;
    let closed = TestServer::start_with(config(&app, HookFailure::Refuse)).await;
    let url = closed.url();
    assert_eq!(status(&format!("{url}?token=garbage"), None).await, 503);
    assert_eq!(status(&format!("{url}?token=slow"), None).await, 503);
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let down = TestServer::start_with(config(&format!("http://127.0.0.1:{port}/x"), HookFailure::Refuse)).await;
    assert_eq!(status(&down.url(), None).await, 503);
    // The bus itself is unharmed: a good client still gets in at once.
    let mut ann = TestClient::connect(&format!("{url}?token=ann")).await;
    ann.ok("ping", json!({})).await;

    let open = TestServer::start_with(config(&app, HookFailure::Guest)).await;
    let guest = TestClient::connect(&format!("{}?token=garbage", open.url())).await;
    assert_eq!(guest.welcome["payload"]["role"], "guest");
    assert_eq!(status(&format!("{}?token=banned", open.url()), None).await, 403, "a refusal is still a refusal");
}

/// The application's join hook: decides by channel name.
async fn join_application() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/join", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let ask: Value = serde_json::from_slice(&arqon_e2e::app::read_request(&mut stream).await.1).unwrap();
                assert!(ask["client_id"].as_str().is_some_and(|id| id.starts_with("arq_")), "{ask}");
                let (status, answer) = match ask["channel"].as_str().unwrap_or_default() {
                    "closed" => ("403 Forbidden", json!({"error": {"message": "members only"}}).to_string()),
                    "broken" => ("500 Internal Server Error", String::new()),
                    _ => ("200 OK", String::new()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_with_a_join_hook_ask_the_application_and_fail_closed() {
    let mut config = test_config();
    config.hooks.join_url = join_application().await;
    config.hooks.timeout_ms = 500;
    config.rooms.insert("vip-*".to_owned(), arqon_config::RoomConfig { join_hook: Some(true), ..Default::default() });
    let key = "join-hook-key-0123456789";
    let api_key = arqon_config::ApiKey::new("b", key, arqon_protocol::Role::Admin);
    config.api.keys = vec![api_key];
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    client.join("vip-1", "open").await;
    let refused = client.command("join_channel", json!({"room": "vip-1", "channel": "closed"})).await;
    assert_eq!(refused["error"]["code"], "FORBIDDEN", "{refused}");
    assert_eq!(refused["error"]["message"], "members only");
    assert_eq!(client.err("join_channel", json!({"room": "vip-1", "channel": "broken"})).await, "INTERNAL");
    client.join("plain", "closed").await; // no hook outside vip-*
    // The API's subscribe goes through the same hook.
    let mut api = arqon_e2e::api::ApiConn::connect(server.addr).await;
    let args = json!({"client_id": client.id, "room": "vip-2", "channel": "closed"}).to_string();
    let answer = api.post("subscribe", Some(key), &args).await;
    assert_eq!((answer.status, answer.body["error"]["code"].as_str()), (403, Some("FORBIDDEN")), "{}", answer.text);
}
