//! Frames on the socket: opening a connection (upgrade, token, `welcome`)
//! and reading the envelopes the bus sends.

use std::borrow::Cow;
use std::collections::BTreeMap;

use arqon_protocol::{MessageId, Name, RawValue, Target, Timestamp};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite};

use crate::error::WireError;
use crate::types::null_payload;
use crate::{ClientError, ClientOptions, Message, ServerInfo};

/// One open connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects, sends the token, and waits for `welcome`, all within
/// `connect_timeout`.
pub(crate) async fn open(url: &str, options: &ClientOptions) -> Result<(Ws, ServerInfo), ClientError> {
    let attempt = async {
        let mut request = url.into_client_request()?;
        if let Some(token) = &options.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::Transport("the token is not a valid HTTP header value".to_owned()))?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let connector = crate::tls::connector(request.uri(), options)?;
        let (mut ws, _response) =
            tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector).await?;
        let info = read_welcome(&mut ws).await?;
        Ok((ws, info))
    };
    match tokio::time::timeout(options.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout(options.connect_timeout)),
    }
}

/// The first frame after connect must be the `welcome` event.
async fn read_welcome(ws: &mut Ws) -> Result<ServerInfo, ClientError> {
    loop {
        let text = match ws.next().await {
            Some(Ok(tungstenite::Message::Text(text))) => text,
            Some(Ok(tungstenite::Message::Close(close))) => {
                let why = close.map(|c| format!("{} {}", c.code, c.reason)).unwrap_or_default();
                return Err(ClientError::Transport(format!("closed before welcome {why}")));
            }
            None => return Err(ClientError::Transport("closed before welcome".to_owned())),
            Some(Ok(tungstenite::Message::Binary(_))) => {
                return Err(ClientError::Decode("binary frame before welcome".to_owned()));
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
        };
        let frame: Inbound<'_> = serde_json::from_str(text.as_str())
            .map_err(|e| ClientError::Decode(format!("first frame is not an envelope: {e}")))?;
        if frame.kind == "error" {
            return Err(frame.into_error());
        }
        let payload = frame.payload.map_or("null", RawValue::get);
        #[derive(Deserialize)]
        struct Welcome {
            event: String,
            #[serde(flatten)]
            info: ServerInfo,
        }
        return match serde_json::from_str::<Welcome>(payload) {
            Ok(welcome) if frame.kind == "event" && welcome.event == "welcome" => Ok(welcome.info),
            _ => Err(ClientError::Decode(format!("expected the welcome event first, got {}", text.as_str()))),
        };
    }
}

/// Any frame the bus sends. Unknown fields are ignored, so a newer bus can add
/// some without breaking this client.
#[derive(Debug, Deserialize)]
pub(crate) struct Inbound<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: Cow<'a, str>,
    #[serde(default)]
    pub(crate) id: Option<MessageId>,
    #[serde(default)]
    pub(crate) request_id: Option<MessageId>,
    #[serde(default, borrow)]
    pub(crate) payload: Option<&'a RawValue>,
    #[serde(default)]
    pub(crate) error: Option<WireError>,
    #[serde(default)]
    pub(crate) room: Option<Name>,
    #[serde(default)]
    pub(crate) channel: Option<Name>,
    #[serde(default, borrow)]
    pub(crate) from: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) user: Option<String>,
    #[serde(default, borrow)]
    pub(crate) timestamp: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) meta: Option<BTreeMap<String, String>>,
}

impl Inbound<'_> {
    /// The refusal an `error` frame carries.
    pub(crate) fn into_error(self) -> ClientError {
        match self.error {
            Some(error) => error.into_client_error(),
            None => ClientError::Decode("error frame without an error object".to_owned()),
        }
    }

    /// A `message` frame as a [`Message`].
    pub(crate) fn into_message(self) -> Result<Message, ClientError> {
        let missing = |field: &str| ClientError::Decode(format!("message frame without {field}"));
        let timestamp = self.timestamp.ok_or_else(|| missing("timestamp"))?;
        Ok(Message {
            id: self.id.ok_or_else(|| missing("id"))?,
            room: self.room,
            channel: self.channel,
            from: crate::types::parse_sender(&self.from.ok_or_else(|| missing("from"))?)
                .map_err(|e| ClientError::Decode(format!("message frame with a bad from: {e}")))?,
            user: self.user,
            payload: self.payload.map_or_else(null_payload, RawValue::to_owned),
            meta: self.meta.unwrap_or_default(),
            timestamp: Timestamp::parse(&timestamp).map_err(|e| ClientError::Decode(e.message))?,
        })
    }
}

/// A `command` frame.
#[derive(Serialize)]
struct CommandFrame<'a, A: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: MessageId,
    command: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<&'a A>,
}

/// Encodes a command frame with the given id.
pub(crate) fn command_frame<A: Serialize>(id: MessageId, name: &str, args: Option<&A>) -> Result<String, ClientError> {
    let frame = CommandFrame { kind: "command", id, command: name, args };
    serde_json::to_string(&frame).map_err(|e| ClientError::Encode(e.to_string()))
}

/// A fire-and-forget `message` frame.
#[derive(Serialize)]
struct MessageFrame<'a, P: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: MessageId,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a Name>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    payload: &'a P,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    meta: &'a BTreeMap<String, String>,
}

/// Encodes a message frame to `target`.
pub(crate) fn message_frame<P: Serialize>(
    id: MessageId,
    target: &Target,
    payload: &P,
    meta: &BTreeMap<String, String>,
) -> Result<String, ClientError> {
    let (room, channel, to) = match target {
        Target::Channel(key) => (Some(&key.room), Some(&key.channel), None),
        Target::Room(room) => (Some(room), None, None),
        Target::Client(client) => (None, None, Some(client.to_string())),
        Target::User(user) => (None, None, Some(format!("{}{user}", arqon_protocol::USER_PREFIX))),
    };
    let frame = MessageFrame { kind: "message", id, room, channel, to, payload, meta };
    serde_json::to_string(&frame).map_err(|e| ClientError::Encode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use arqon_protocol::{ChannelKey, IdGenerator};

    use super::*;

    #[test]
    fn frames_decode_as_the_bus_would() {
        let mut ids = IdGenerator::new();
        let id = ids.message_id();
        let key = ChannelKey::parse("r", "c").unwrap();
        let text = message_frame(id, &Target::Channel(key), &serde_json::json!({"a": 1}), &BTreeMap::new()).unwrap();
        let frame = arqon_protocol::decode(&text, Timestamp::now()).unwrap();
        assert_eq!(frame.id, Some(id));
        let text = command_frame(id, "ping", None::<&()>).unwrap();
        assert!(arqon_protocol::decode(&text, Timestamp::now()).is_ok(), "{text}");
    }

    #[test]
    fn message_frames_become_messages() {
        let text = r#"{"version":1,"id":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P","type":"message",
            "timestamp":"2026-11-29T12:00:00.123Z","room":"r","channel":"c",
            "from":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1Q","payload":{ "x" : [1, 2] },"meta":{"t":"1"}}"#;
        let frame: Inbound<'_> = serde_json::from_str(text).unwrap();
        let message = frame.into_message().unwrap();
        assert_eq!(message.payload.get(), r#"{ "x" : [1, 2] }"#);
        assert_eq!(message.meta["t"], "1");
        assert_eq!(message.channel_key(), Some(ChannelKey::parse("r", "c").unwrap()));
        let again: Message = serde_json::from_str(text).unwrap();
        assert_eq!(again.id, message.id);
        assert_eq!(again.timestamp, message.timestamp);
        assert_eq!(message.user, None);
    }

    #[test]
    fn messages_from_the_server_api_and_from_users_are_read() {
        let text = r#"{"version":1,"id":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P","type":"message",
            "timestamp":"2026-11-29T12:00:00.123Z","room":"r","channel":"c","from":"server","payload":1}"#;
        let message = serde_json::from_str::<Inbound<'_>>(text).unwrap().into_message().unwrap();
        assert_eq!(message.from, arqon_protocol::Sender::Server);
        assert_eq!(message.from_client(), None);
        assert_eq!(message.from_label(), "server");
        let text = r#"{"version":1,"id":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1P","type":"message",
            "timestamp":"2026-11-29T12:00:00.123Z","to":"x","from":"arq_01JDQ8Z6W3T7M5KX2C9V4B8N1Q",
            "user":"ana","payload":1}"#;
        let message = serde_json::from_str::<Inbound<'_>>(text).unwrap().into_message().unwrap();
        assert_eq!(message.user.as_deref(), Some("ana"));
        assert_eq!(message.from_label(), "arq_01JDQ8Z6W3T7M5KX2C9V4B8N1Q");
        let again: Message = serde_json::from_str(text).unwrap();
        assert_eq!(again.user.as_deref(), Some("ana"));
        let bad = text.replace("arq_01JDQ8Z6W3T7M5KX2C9V4B8N1Q", "nobody");
        assert!(serde_json::from_str::<Inbound<'_>>(&bad).unwrap().into_message().is_err());
    }
}
