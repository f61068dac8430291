//! Client settings.

use std::fmt;
use std::time::Duration;

/// How a [`Client`](crate::Client) connects, waits and reconnects.
///
/// Plain data: build it with struct update syntax,
/// `ClientOptions { token: Some(t), ..ClientOptions::default() }`.
#[derive(Clone)]
pub struct ClientOptions {
    /// Credentials, sent as `Authorization: Bearer TOKEN` on every upgrade
    /// request (the first connect and each reconnect). Default: `None`.
    pub token: Option<String>,
    /// Longest a request (a command, or handing a `send` to the connection)
    /// waits for its answer, including time spent queued while the client
    /// reconnects. Default: 10 s.
    pub request_timeout: Duration,
    /// Longest one connection attempt may take, from TCP connect to the
    /// `welcome` event. Default: 10 s.
    pub connect_timeout: Duration,
    /// Delay before the first reconnect attempt; it doubles after each failed
    /// attempt, with jitter (each delay is drawn from its upper half).
    /// Default: 100 ms.
    pub backoff_initial: Duration,
    /// Upper bound of the reconnect delay. Default: 10 s.
    pub backoff_max: Duration,
    /// Whether to reconnect after the connection drops. Off: the client
    /// closes instead, and every later request fails with
    /// [`ClientError::Closed`](crate::ClientError::Closed). Default: `true`.
    pub reconnect: bool,
    /// Capacity of the incoming queue behind [`Events`](crate::Events), in
    /// items. When it is full, channel messages are not lost: the client
    /// stops taking that channel's messages and, once the queue has drained
    /// to half, re-joins the channel with `since` to replay them from
    /// history. Other items (events, room-wide and direct messages, errors)
    /// are dropped and counted in an
    /// [`Incoming::Lagged`](crate::Incoming::Lagged). Default: 1024.
    pub event_capacity: usize,
    /// Capacity of the queue from [`Client`](crate::Client) handles to the
    /// connection task, in requests; a full queue makes callers wait (within
    /// their `request_timeout`). Requests made while reconnecting wait in a
    /// second queue of the same size. Default: 256.
    pub command_capacity: usize,
    /// How many times [`Client::publish`](crate::Client::publish) sends a
    /// publish (always with the same id, so the bus stores it once) when the
    /// connection is lost, the answer times out or the bus says
    /// `RATE_LIMITED`. Default: 3.
    pub publish_attempts: u32,
    /// Certificates (PEM) trusted for `wss://` besides the web's public
    /// roots (the Mozilla set, built in): your own CA, or a self-signed
    /// bus's certificate. Default: `None` (public roots only).
    pub tls_roots_pem: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            token: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            reconnect: true,
            event_capacity: 1024,
            command_capacity: 256,
            publish_attempts: 3,
            tls_roots_pem: None,
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the token.
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("reconnect", &self.reconnect)
            .field("event_capacity", &self.event_capacity)
            .field("command_capacity", &self.command_capacity)
            .field("publish_attempts", &self.publish_attempts)
            .field("tls_roots_pem", &self.tls_roots_pem.as_ref().map(|pem| format!("{} bytes", pem.len())))
            .finish()
    }
}
