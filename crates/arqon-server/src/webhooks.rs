//! Webhooks (`[webhooks]`, docs/webhooks.md): membership changes (and, if
//! asked, published messages) POSTed to the application in signed batches.
//!
//! The bus only hands events over: [`WebhookSink`] is an observer that
//! copies the events wanted into a bounded queue and never waits. One task
//! drains it: it gathers a batch, signs it (HMAC-SHA256 of the body in
//! `X-Arqon-Signature`), POSTs it, and retries with backoff; past the
//! queue's bound or the retries, events are dropped and counted. At
//! shutdown, [`WebhookTask::close`] has it send what is queued (the
//! disconnects of the shutdown among it) within the grace.

use std::sync::Arc;
use std::time::Duration;

use arqon_config::WebhooksConfig;
use arqon_protocol::{ChannelKey, Timestamp};
use arqon_routing::{BusEvent, Observer};
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::http_client::Target;
use crate::observer::Telemetry;

/// First retry's wait; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// One event as the receiver gets it.
#[derive(Debug, Clone, Serialize)]
struct Event {
    event: &'static str,
    room: String,
    channel: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<Box<RawValue>>,
    time_ms: i64,
}

impl Event {
    /// An event about channel `key`, now.
    fn about(event: &'static str, key: &ChannelKey) -> Self {
        Event {
            event,
            room: key.room.to_string(),
            channel: key.channel.to_string(),
            user: None,
            client_id: None,
            message: None,
            time_ms: now_ms(),
        }
    }

    /// Names the member: its user, or its client id when it has none.
    fn member(self, user: Option<&str>, client_id: arqon_protocol::ClientId) -> Self {
        let client_id = user.is_none().then(|| client_id.to_string());
        Event { user: user.map(str::to_owned), client_id, ..self }
    }
}

/// Which events are wanted.
#[derive(Debug, Clone, Copy, Default)]
struct Wanted {
    occupied: bool,
    vacated: bool,
    added: bool,
    removed: bool,
    published: bool,
}

impl Wanted {
    fn of(events: &[String]) -> Self {
        let has = |name: &str| events.iter().any(|e| e == name);
        Wanted {
            occupied: has("channel_occupied"),
            vacated: has("channel_vacated"),
            added: has("member_added"),
            removed: has("member_removed"),
            published: has("message_published"),
        }
    }
}

/// The observer half: cheap, never blocks.
#[derive(Debug)]
pub(crate) struct WebhookSink {
    wanted: Wanted,
    queue: mpsc::Sender<Event>,
    telemetry: Arc<Telemetry>,
}

impl WebhookSink {
    /// The sink, and the running task that delivers what it queues.
    pub(crate) fn start(config: &WebhooksConfig, telemetry: Arc<Telemetry>) -> (WebhookSink, WebhookTask) {
        let (queue, events) = mpsc::channel(config.queue);
        let (close, closing) = oneshot::channel();
        let task = WebhookTask {
            close,
            queue: queue.clone(),
            task: tokio::spawn(Sender::new(config, Arc::clone(&telemetry)).run(events, closing)),
        };
        let sink = WebhookSink { wanted: Wanted::of(&config.events), queue, telemetry };
        (sink, task)
    }

    fn push(&self, event: Event) {
        if self.queue.try_send(event).is_err() {
            self.telemetry.metrics.webhook_dropped("queue_full", 1);
        }
    }
}

fn now_ms() -> i64 {
    Timestamp::now().unix_ms()
}

impl Observer for WebhookSink {
    fn observe(&self, event: &BusEvent<'_>) {
        let w = self.wanted;
        match *event {
            BusEvent::MemberAdded { key, client_id, user, occupied, new_user } => {
                if occupied && w.occupied {
                    self.push(Event::about("channel_occupied", key));
                }
                if new_user && w.added {
                    self.push(Event::about("member_added", key).member(user, client_id));
                }
            }
            BusEvent::MemberRemoved { key, client_id, user, vacated, user_gone } => {
                if user_gone && w.removed {
                    self.push(Event::about("member_removed", key).member(user, client_id));
                }
                if vacated && w.vacated {
                    self.push(Event::about("channel_vacated", key));
                }
            }
            BusEvent::MessagePublished { key, frame } if w.published => {
                let message = RawValue::from_string(frame.as_str().to_owned()).ok();
                self.push(Event { message, ..Event::about("message_published", key) });
            }
            _ => {}
        }
    }
}

/// The delivering task, for the shutdown.
#[derive(Debug)]
pub(crate) struct WebhookTask {
    close: oneshot::Sender<Instant>,
    /// To tell how many events were left behind.
    queue: mpsc::Sender<Event>,
    task: JoinHandle<()>,
}

impl WebhookTask {
    /// Sends every event queued so far (no more waiting for a batch to
    /// fill), then stops; gives up after `grace`, counting what was left as
    /// dropped (`shutdown`).
    pub(crate) async fn close(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let _ = self.close.send(deadline);
        if tokio::time::timeout_at(deadline, self.task).await.is_err() {
            let left = self.queue.max_capacity() - self.queue.capacity();
            tracing::warn!(events = left, "webhook events still queued at the end of the shutdown grace");
        }
    }
}

/// The delivering half.
struct Sender {
    target: Target,
    secret: Vec<u8>,
    batch_max: usize,
    flush: Duration,
    timeout: Duration,
    retries: u32,
    telemetry: Arc<Telemetry>,
}

#[derive(Serialize)]
struct Batch<'a> {
    events: &'a [Event],
}

impl Sender {
    fn new(config: &WebhooksConfig, telemetry: Arc<Telemetry>) -> Self {
        Sender {
            target: Target::parse(&config.url),
            secret: config.secret.clone().into_bytes(),
            batch_max: config.batch_max,
            flush: Duration::from_millis(config.flush_ms),
            timeout: Duration::from_millis(config.timeout_ms),
            retries: config.retries,
            telemetry,
        }
    }

    async fn run(self, mut events: mpsc::Receiver<Event>, mut closing: oneshot::Receiver<Instant>) {
        let mut batch = Vec::with_capacity(self.batch_max);
        let deadline = 'running: loop {
            tokio::select! {
                at = &mut closing => break 'running at.ok(),
                first = events.recv() => match first {
                    Some(event) => batch.push(event),
                    None => return,
                },
            }
            let flush_at = Instant::now() + self.flush;
            while batch.len() < self.batch_max {
                tokio::select! {
                    at = &mut closing => break 'running at.ok(),
                    next = tokio::time::timeout_at(flush_at, events.recv()) => match next {
                        Ok(Some(event)) => batch.push(event),
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            self.deliver(&batch).await;
            batch.clear();
        };
        // Closing: what is queued now goes, in full batches, until the deadline.
        let Some(deadline) = deadline else { return };
        events.close();
        loop {
            while batch.len() < self.batch_max
                && let Ok(event) = events.try_recv()
            {
                batch.push(event);
            }
            if batch.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, self.deliver(&batch)).await.is_err() {
                let left = batch.len() + events.len();
                tracing::warn!(events = left, "webhook events not sent within the shutdown grace");
                self.telemetry.metrics.webhook_dropped("shutdown", left as u64);
                return;
            }
            batch.clear();
        }
    }

    /// POSTs one batch, retrying with backoff; counts the outcome.
    async fn deliver(&self, batch: &[Event]) {
        let body = match serde_json::to_vec(&Batch { events: batch }) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                tracing::warn!(error = %e, "a webhook batch could not be encoded");
                return;
            }
        };
        let signature = signature(&self.secret, &body);
        let count = batch.len() as u64;
        let mut backoff = FIRST_BACKOFF;
        for attempt in 0..=self.retries {
            let headers = [("x-arqon-signature", signature.as_str())];
            match tokio::time::timeout(self.timeout, self.target.post(body.clone(), &headers)).await {
                Ok(Ok((status, _))) if status.is_success() => {
                    self.telemetry.metrics.webhook_sent(count);
                    return;
                }
                Ok(Ok((status, _))) => tracing::warn!(%status, attempt, "the webhook receiver refused a batch"),
                Ok(Err(e)) => tracing::warn!(error = %e, attempt, "a webhook POST failed"),
                Err(_) => tracing::warn!(attempt, "a webhook POST timed out"),
            }
            if attempt < self.retries {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        tracing::warn!(events = count, "dropping a webhook batch after its retries");
        self.telemetry.metrics.webhook_dropped("failed", count);
    }
}

/// The `X-Arqon-Signature` header of a webhook body under `secret`:
/// `sha256=` and the hex HMAC-SHA256. A receiver computes the same over the
/// raw body it got and compares (in constant time) before trusting it.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex(&hmac_sha256(secret, body)))
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    outer.into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(hex(&mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }
}
