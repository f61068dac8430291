//! How connections end, seen from a client: the closing handshake in both
//! directions, and the close codes for broken frames (1002, 1007, 1009). The
//! Autobahn|Testsuite (`scripts/autobahn.sh`) checks the same in depth.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arqon_outbound::{Budget, Outbound, OutboundSender};
use arqon_protocol::{CloseReason, Frame};
use arqon_transport::{Accepted, Acceptor, Connection, Refusal, TransportConfig, UpgradeRequest};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame as RawFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const TIMEOUT: Duration = Duration::from_secs(5);

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Echoes text; `bye` makes the server close with 1008; an oversize message
/// is answered with a `too large` text frame before the transport's 1009.
struct Echo {
    frames: OutboundSender,
}

impl Connection for Echo {
    async fn on_text(&mut self, text: &str) {
        if text == "bye" {
            self.frames.close(CloseReason::ABUSE);
        } else {
            let _ = self.frames.try_send(Outbound::Frame(Frame::from_text(text)));
        }
    }

    fn on_binary(&mut self, _data: &[u8]) {}

    fn on_oversize(&mut self) {
        let _ = self.frames.try_send(Outbound::Frame(Frame::from_text("too large")));
    }
}

struct EchoAcceptor;

impl Acceptor for EchoAcceptor {
    type Conn = Echo;

    fn accept(&self, _request: &UpgradeRequest<'_>) -> Result<Accepted<Echo>, Refusal> {
        let (frames_tx, frames) = arqon_outbound::queue(64 * 1024, &Budget::unlimited());
        Ok(Accepted { conn: Echo { frames: frames_tx }, frames })
    }
}

async fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let config = TransportConfig { max_message_bytes: 1024, ..TransportConfig::default() };
    tokio::spawn(arqon_transport::serve(listener, Arc::new(EchoAcceptor), config, std::future::pending()));
    addr
}

async fn connect(addr: SocketAddr) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.expect("connect");
    ws
}

async fn next(ws: &mut Client) -> Option<Message> {
    tokio::time::timeout(TIMEOUT, ws.next()).await.expect("no frame in time").map(|m| m.expect("read failed"))
}

/// Reads the server's close frame, then checks the connection ends cleanly:
/// the stream ends without a reset or a protocol error.
async fn expect_close(ws: &mut Client, code: u16) {
    loop {
        match next(ws).await {
            Some(Message::Close(Some(CloseFrame { code: got, .. }))) => {
                assert_eq!(u16::from(got), code);
                break;
            }
            Some(Message::Ping(_) | Message::Pong(_)) => {}
            other => panic!("expected close {code}, got {other:?}"),
        }
    }
    assert!(next(ws).await.is_none(), "the connection did not end cleanly");
}

#[tokio::test]
async fn a_client_close_is_answered_before_the_socket_closes() {
    let addr = server().await;
    let mut ws = connect(addr).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("hi")));
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "done".into() }))).await.unwrap();
    expect_close(&mut ws, 1000).await;
}

#[tokio::test]
async fn a_close_right_after_a_ping_still_gets_its_reply() {
    let addr = server().await;
    for _ in 0..20 {
        let mut ws = connect(addr).await;
        ws.send(Message::Ping("p".into())).await.unwrap();
        ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "done".into() }))).await.unwrap();
        expect_close(&mut ws, 1000).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_right_after_a_ping_still_gets_its_reply_on_two_threads() {
    let addr = server().await;
    for _ in 0..50 {
        let mut ws = connect(addr).await;
        ws.send(Message::Ping("p".into())).await.unwrap();
        ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "done".into() }))).await.unwrap();
        expect_close(&mut ws, 1000).await;
    }
}

#[tokio::test]
async fn a_server_close_completes_the_handshake() {
    let addr = server().await;
    let mut ws = connect(addr).await;
    ws.send(Message::text("bye")).await.unwrap();
    expect_close(&mut ws, 1008).await;
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let addr = server().await;
    let mut ws = connect(addr).await;
    let frame = RawFrame::message(vec![b'a', 0xff, 0xfe], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    expect_close(&mut ws, 1007).await;
}

#[tokio::test]
async fn reserved_bits_close_1002() {
    let addr = server().await;
    let mut ws = connect(addr).await;
    let mut frame = RawFrame::message("hi", OpCode::Data(Data::Text), true);
    frame.header_mut().rsv1 = true;
    ws.send(Message::Frame(frame)).await.unwrap();
    expect_close(&mut ws, 1002).await;
}

#[tokio::test]
async fn an_oversize_message_gets_the_queued_error_then_1009() {
    let addr = server().await;
    let mut ws = connect(addr).await;
    ws.send(Message::text("x".repeat(64 * 1024))).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("too large")));
    expect_close(&mut ws, 1009).await;
}
