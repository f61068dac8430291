//! `[webhooks]`: the bus tells the application what happened, in signed
//! batches over HTTP (docs/webhooks.md).

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::settings::rule;

/// Events a webhook may carry.
pub const WEBHOOK_EVENTS: [&str; 5] =
    ["channel_occupied", "channel_vacated", "member_added", "member_removed", "message_published"];

/// Shortest accepted signing secret.
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

/// `[webhooks]`: off while `url` is empty.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where batches are POSTed, `http://HOST:PORT/PATH` or `https://…`;
    /// empty: off. Default: empty.
    pub url: String,
    /// A PEM file of CA certificates to trust for an `https://` URL,
    /// besides the web's public roots (a private CA). Default: empty.
    pub ca_file: String,
    /// The HMAC-SHA256 key of the `X-Arqon-Signature` header; at least 16
    /// bytes when `url` is set. Default: empty.
    pub secret: String,
    /// Which events to send. Default: the four membership events
    /// (`message_published` is off: it sends every channel message).
    pub events: Vec<String>,
    /// Events in one POST at most. Default: `100`.
    pub batch_max: usize,
    /// Milliseconds a batch waits for more events before it goes. Default: `100`.
    pub flush_ms: u64,
    /// Events held in memory while the receiver is slow or down; past it new
    /// events are dropped and counted (`arqon_webhook_events_dropped_total`),
    /// never blocking the bus. Default: `10000`.
    pub queue: usize,
    /// Milliseconds one POST may take. Default: `5000`.
    pub timeout_ms: u64,
    /// Retries of a failed POST (backoff from 100 ms, doubling, at most
    /// 10 s) before the batch is dropped and counted. Default: `5`.
    pub retries: u32,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            url: String::new(),
            ca_file: String::new(),
            secret: String::new(),
            events: WEBHOOK_EVENTS[..4].iter().map(|e| (*e).to_owned()).collect(),
            batch_max: 100,
            flush_ms: 100,
            queue: 10_000,
            timeout_ms: 5_000,
            retries: 5,
        }
    }
}

impl WebhooksConfig {
    /// Whether webhooks are on.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        rule(
            self.url.is_empty() || crate::hooks::is_http_url(&self.url),
            "webhooks.url",
            format!("{:?}", self.url),
            "must be empty (off) or an http:// or https:// URL with a host",
        )?;
        crate::hooks::ca_file_rule("webhooks.ca_file", &self.ca_file)?;
        rule(
            !self.enabled() || self.secret.len() >= MIN_WEBHOOK_SECRET_BYTES,
            "webhooks.secret",
            format!("{} bytes", self.secret.len()),
            "must be at least 16 bytes when webhooks.url is set",
        )?;
        for event in &self.events {
            rule(
                WEBHOOK_EVENTS.contains(&event.as_str()),
                "webhooks.events",
                format!("{event:?}"),
                "must name channel_occupied, channel_vacated, member_added, member_removed or message_published",
            )?;
        }
        rule(self.batch_max >= 1, "webhooks.batch_max", self.batch_max, "must be at least 1")?;
        rule(self.queue >= 1, "webhooks.queue", self.queue, "must be at least 1")?;
        rule(self.timeout_ms >= 1, "webhooks.timeout_ms", self.timeout_ms, "must be at least 1")
    }
}
