//! permessage-deflate on the wire (RFC 7692): negotiated when offered,
//! large frames compressed for the clients that asked and plain for the
//! others, compressed client frames accepted, and a frame that inflates past
//! the size limit closed 1009 without harm to anyone else.
//!
//! tungstenite offers no compression, so the compressing client here is a
//! small raw one: it writes the upgrade and frames itself and inflates with
//! miniz_oxide.

use std::time::Duration;

use arqon_e2e::{TIMEOUT, TestServer, test_config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OFFER: &str = "permessage-deflate; client_max_window_bits";
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// A client frame's mask; any value does.
const MASK: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// A raw WebSocket client that may compress what it sends and inflates what
/// it receives.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` header of the server's answer.
    extensions: Option<String>,
}

/// One frame as received: RSV1 (compressed), opcode, payload as sent.
struct Received {
    compressed: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Received {
    /// The message's bytes, inflated if it was compressed.
    fn message(&self) -> Vec<u8> {
        if !self.compressed {
            return self.payload.clone();
        }
        // RFC 7692 7.2.2: put back the sync flush's tail; then an empty
        // final block, so that a one-shot inflater sees a complete stream.
        let mut data = self.payload.clone();
        data.extend_from_slice(&[0x00, 0x00, 0xff, 0xff, 0x03, 0x00]);
        miniz_oxide::inflate::decompress_to_vec(&data).expect("the server's frame inflates")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.message()).expect("a JSON envelope")
    }
}

impl RawClient {
    async fn connect(server: &TestServer, offer: Option<&str>) -> RawClient {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let mut request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            server.addr
        );
        if let Some(offer) = offer {
            request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(TIMEOUT, stream.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "the server hung up during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions = head
            .lines()
            .find_map(|line| {
                line.strip_prefix("sec-websocket-extensions: ").or(line.strip_prefix("Sec-WebSocket-Extensions: "))
            })
            .map(str::to_owned);
        RawClient { stream, buf: buf[end..].to_vec(), extensions }
    }

    /// Sends one masked frame with the given first byte.
    async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        let mut frame = vec![first];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, k)| b ^ k));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// Sends a text message compressed (a one-shot deflate stream, final
    /// block included, which RFC 7692 allows).
    async fn send_compressed(&mut self, value: &Value) {
        let deflated = miniz_oxide::deflate::compress_to_vec(value.to_string().as_bytes(), 6);
        self.send_frame(0xc1, &deflated).await;
    }

    async fn send_plain(&mut self, value: &Value) {
        self.send_frame(0x81, value.to_string().as_bytes()).await;
    }

    /// The next frame, pings included.
    async fn frame(&mut self) -> Received {
        loop {
            if let Some((received, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return received;
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n =
                tokio::time::timeout(TIMEOUT, self.stream.read(&mut chunk)).await.expect("a frame in time").unwrap();
            assert!(n > 0, "the server hung up");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next text message, as JSON.
    async fn recv(&mut self) -> (bool, Value) {
        loop {
            let frame = self.frame().await;
            if frame.opcode == 0x1 {
                return (frame.compressed, frame.json());
            }
            assert_eq!(frame.opcode, 0x9, "only pings between messages");
        }
    }

    /// The next text message whose `type` (or event name) is `kind`.
    async fn recv_type(&mut self, kind: &str) -> (bool, Value) {
        loop {
            let (compressed, value) = self.recv().await;
            if value["type"] == kind || value["payload"]["event"] == kind {
                return (compressed, value);
            }
        }
    }

    /// Runs a command (sent compressed or not) that must succeed: its
    /// response, and whether it came compressed.
    async fn command(&mut self, compressed: bool, name: &str, args: Value) -> (bool, Value) {
        let request = json!({"type": "command", "command": name, "id": "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P", "args": args});
        if compressed {
            self.send_compressed(&request).await;
        } else {
            self.send_plain(&request).await;
        }
        loop {
            let (compressed, value) = self.recv().await;
            if value["request_id"] == "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P" {
                assert_eq!(value["type"], "response", "{name} -> {value}");
                return (compressed, value);
            }
        }
    }

    /// The close code the server ends with.
    async fn close_code(&mut self) -> u16 {
        loop {
            let frame = self.frame().await;
            if frame.opcode == 0x8 {
                return u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
            }
        }
    }
}

/// A whole unmasked server frame at the start of `buf`, and its length.
fn parse(buf: &[u8]) -> Option<(Received, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    let (len, at) = match b1 & 0x7f {
        126 => (usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)), 4),
        127 => (usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?, 10),
        n => (usize::from(n), 2),
    };
    assert_eq!(b1 & 0x80, 0, "server frames are not masked");
    assert_eq!(b0 & 0x30, 0, "RSV2 and RSV3 are never set");
    let payload = buf.get(at..at + len)?.to_vec();
    Some((Received { compressed: b0 & 0x40 != 0, opcode: b0 & 0x0f, payload }, at + len))
}

fn big_payload() -> Value {
    json!({"text": "the quick brown fox jumps over the lazy dog ".repeat(40), "n": 7})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_frames_go_out_compressed_to_clients_that_offered_it_and_plain_to_others() {
    let server = TestServer::start_with(test_config()).await;
    let mut a = RawClient::connect(&server, Some(OFFER)).await;
    assert_eq!(a.extensions.as_deref(), Some(ACCEPTED));
    let mut b = RawClient::connect(&server, Some(OFFER)).await;
    let mut plain = RawClient::connect(&server, None).await;
    assert_eq!(plain.extensions, None);
    let mut ordinary = server.client().await;
    for client in [&mut a, &mut b, &mut plain] {
        let (_, welcome) = client.recv_type("welcome").await;
        assert!(welcome["payload"]["client_id"].is_string());
        client.command(false, "join_channel", json!({"room": "z", "channel": "c"})).await;
    }
    ordinary.join("z", "c").await;

    // A compressed publish from A reaches B compressed, the plain client
    // and the tungstenite client uncompressed, all with the same envelope.
    let payload = big_payload();
    a.send_compressed(&json!({"type": "message", "room": "z", "channel": "c", "payload": payload})).await;
    let (compressed, at_b) = b.recv_type("message").await;
    assert!(compressed, "a large frame goes out compressed to a client that negotiated it");
    assert_eq!(at_b["payload"], payload);
    let (compressed, at_plain) = plain.recv_type("message").await;
    assert!(!compressed);
    assert_eq!(at_plain, at_b);
    let at_ordinary = ordinary.recv_message().await;
    assert_eq!(at_ordinary, at_b);

    // A small frame is not worth compressing.
    a.send_compressed(&json!({"type": "message", "room": "z", "channel": "c", "payload": {"n": 1}})).await;
    let (compressed, small) = b.recv_type("message").await;
    assert!(!compressed, "{small}");
    assert_eq!(small["payload"], json!({"n": 1}));

    // History replayed to a compressing client comes compressed too, and
    // inflates to what was delivered live.
    let (compressed, history) = b.command(true, "history", json!({"room": "z", "channel": "c", "limit": 10})).await;
    assert!(compressed);
    let messages = history["payload"]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{history}");
    assert_eq!(messages[0], at_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_inflates_past_the_limit_is_closed_1009_and_nobody_else_notices() {
    let mut config = test_config();
    config.limits.max_message_bytes = 64 * 1024;
    let server = TestServer::start_with(config).await;
    let mut bomber = RawClient::connect(&server, Some(OFFER)).await;
    bomber.recv_type("welcome").await;
    let mut bystander = server.client().await;
    bystander.join("z", "c").await;
    // 16 MiB of one character: about 16 KiB on the wire, well under the
    // limit, 256 times over it once inflated.
    let text =
        format!("{{\"type\":\"message\",\"room\":\"z\",\"channel\":\"c\",\"payload\":\"{}\"}}", "a".repeat(16 << 20));
    let bomb = miniz_oxide::deflate::compress_to_vec(text.as_bytes(), 9);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    bomber.send_frame(0xc1, &bomb).await;
    assert_eq!(bomber.close_code().await, 1009);
    // Data that is not deflate at all is 1007.
    let mut garbage = RawClient::connect(&server, Some(OFFER)).await;
    garbage.recv_type("welcome").await;
    garbage.send_frame(0xc1, &[0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(garbage.close_code().await, 1007);
    // A compressed frame from a client that did not negotiate compression
    // breaks the protocol: 1002.
    let mut rogue = RawClient::connect(&server, None).await;
    rogue.recv_type("welcome").await;
    rogue.send_frame(0xc1, &miniz_oxide::deflate::compress_to_vec(b"{}", 1)).await;
    assert_eq!(rogue.close_code().await, 1002);
    // Nothing was delivered, and the bus serves on.
    assert_eq!(bystander.ok("ping", json!({})).await["pong"], true);
    bystander.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_off_in_the_configuration_declines_every_offer() {
    let mut config = test_config();
    config.compression.enabled = false;
    let server = TestServer::start_with(config).await;
    let mut client = RawClient::connect(&server, Some(OFFER)).await;
    assert_eq!(client.extensions, None);
    client.recv_type("welcome").await;
    // An offer the server cannot honour is declined the same way, and the
    // connection works uncompressed.
    let server = TestServer::start_with(test_config()).await;
    let mut odd = RawClient::connect(&server, Some("permessage-deflate; mystery_param")).await;
    assert_eq!(odd.extensions, None);
    odd.recv_type("welcome").await;
    // A client that narrows the server's window still gets compression
    // (Huffman-coded, without back-references).
    let mut narrow = RawClient::connect(&server, Some("permessage-deflate; server_max_window_bits=9")).await;
    assert_eq!(narrow.extensions.as_deref(), Some(&*format!("{ACCEPTED}; server_max_window_bits=9")));
    narrow.recv_type("welcome").await;
    narrow.command(false, "join_channel", json!({"room": "z", "channel": "c"})).await;
    let mut publisher = server.client().await;
    publisher.publish_ff("z", "c", big_payload()).await;
    let (compressed, message) = narrow.recv_type("message").await;
    assert!(compressed);
    assert_eq!(message["payload"], big_payload());
}
