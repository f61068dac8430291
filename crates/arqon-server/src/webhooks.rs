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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arqon_config::WebhooksConfig;
use arqon_protocol::{ChannelKey, ClientId, Timestamp};
use arqon_routing::{BusEvent, Observer};
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ServerError;
use crate::http_client::Target;
use crate::observer::Telemetry;

/// First retry's wait; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the sink queues: an event ready to send or, in a cluster, a
/// member's change on this node for the ledger to judge.
#[derive(Debug)]
enum Item {
    Ready(Event),
    /// This node's first (`present`) or last connection of a member.
    Member {
        key: ChannelKey,
        member: Member,
        present: bool,
        time_ms: i64,
    },
    /// A change the cluster's node found by itself.
    Found(Change),
}

/// A member of a channel, as the cluster's ledger counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Member {
    /// Every connection of a user is one member.
    User(String),
    /// A connection without a user is a member of its own.
    Client(ClientId),
}

/// A member change as the whole cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) key: ChannelKey,
    pub(crate) member: Member,
    /// Added (on no node before), or removed (on no node now).
    pub(crate) present: bool,
    /// The channel was occupied or vacated with it.
    pub(crate) channel: bool,
}

/// Tells which of this node's member changes are the cluster's.
pub(crate) trait Membership: Send + Sync + std::fmt::Debug + 'static {
    /// This node got `member`'s first connection in `key` (`present`) or
    /// lost its last: the cluster-wide change, if it is one.
    fn judge<'a>(
        &'a self,
        key: &'a ChannelKey,
        member: &'a Member,
        present: bool,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Change>, String>> + Send + 'a>>;
}

/// In a cluster, what the webhooks need of it.
#[derive(Debug)]
pub(crate) struct ClusterMembership {
    pub(crate) judge: Box<dyn Membership>,
    /// Changes the node finds by itself.
    pub(crate) found: mpsc::Receiver<Change>,
}

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
    fn member(self, user: Option<&str>, client_id: ClientId) -> Self {
        let client_id = user.is_none().then(|| client_id.to_string());
        Event { user: user.map(str::to_owned), client_id, ..self }
    }

    /// Names `member`.
    fn of(self, member: &Member) -> Self {
        match member {
            Member::User(user) => Event { user: Some(user.clone()), ..self },
            Member::Client(id) => Event { client_id: Some(id.to_string()), ..self },
        }
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
    /// Member changes go to the cluster's ledger first.
    clustered: bool,
    queue: mpsc::Sender<Item>,
    telemetry: Arc<Telemetry>,
}

impl WebhookSink {
    /// The sink, and the running task that delivers what it queues. In a
    /// cluster, `membership` decides which member changes are the
    /// cluster's.
    pub(crate) fn start(
        config: &WebhooksConfig,
        telemetry: Arc<Telemetry>,
        membership: Option<ClusterMembership>,
    ) -> Result<(WebhookSink, WebhookTask), ServerError> {
        let (queue, items) = mpsc::channel(config.queue);
        let (hurry, hurried) = watch::channel(None);
        let (finished, done) = oneshot::channel();
        let wanted = Wanted::of(&config.events);
        let clustered = membership.is_some();
        let sender = Sender::new(config, wanted, membership, Arc::clone(&telemetry))?;
        let task = tokio::spawn(sender.run(items, hurried, done));
        let task = WebhookTask { hurry: Arc::new(hurry), finished, queue: queue.clone(), task };
        Ok((WebhookSink { wanted, clustered, queue, telemetry }, task))
    }

    fn push(&self, event: Event) {
        self.push_item(Item::Ready(event));
    }

    fn push_item(&self, item: Item) {
        if self.queue.try_send(item).is_err() {
            self.telemetry.metrics.webhook_dropped("queue_full", 1);
        }
    }

    /// In a cluster: this node's first or last connection of a member
    /// (`edge`), if any member event is wanted.
    fn push_member(&self, key: &ChannelKey, user: Option<&str>, client_id: ClientId, present: bool, edge: bool) {
        let w = self.wanted;
        if edge && (w.occupied || w.vacated || w.added || w.removed) {
            let member = user.map_or(Member::Client(client_id), |u| Member::User(u.to_owned()));
            self.push_item(Item::Member { key: key.clone(), member, present, time_ms: now_ms() });
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
            // In a cluster the ledger decides; this node's first and last
            // connections of a member are what it judges.
            BusEvent::MemberAdded { key, client_id, user, new_user, .. } if self.clustered => {
                self.push_member(key, user, client_id, true, new_user);
            }
            BusEvent::MemberRemoved { key, client_id, user, user_gone, .. } if self.clustered => {
                self.push_member(key, user, client_id, false, user_gone);
            }
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
    /// Set when the shutdown begins, to its deadline.
    hurry: Arc<watch::Sender<Option<Instant>>>,
    /// Sent once every connection is closed: no more events come.
    finished: oneshot::Sender<()>,
    /// To tell how many events were left behind.
    queue: mpsc::Sender<Item>,
    task: JoinHandle<()>,
}

impl WebhookTask {
    /// What the shutdown calls as it begins, with its deadline: from then
    /// on every event goes at once (no more waiting for a batch to fill),
    /// while the connections close, so that clients slow to close cannot
    /// take the whole grace from the webhooks.
    pub(crate) fn hurry(&self) -> impl Fn(Instant) + Send + 'static {
        let hurry = Arc::clone(&self.hurry);
        move |deadline| {
            hurry.send_replace(Some(deadline));
        }
    }

    /// Once every connection is closed: sends what is still queued, then
    /// stops; gives up at the deadline given to [`WebhookTask::hurry`] (or
    /// after `grace` if none was), counting what was left as dropped
    /// (`shutdown`).
    pub(crate) async fn close(self, grace: Duration) {
        let deadline = match *self.hurry.borrow() {
            Some(deadline) => deadline,
            None => Instant::now() + grace,
        };
        self.hurry.send_replace(Some(deadline));
        let _ = self.finished.send(());
        if tokio::time::timeout_at(deadline, self.task).await.is_err() {
            let left = self.queue.max_capacity() - self.queue.capacity();
            tracing::warn!(events = left, "webhook events still queued at the end of the shutdown grace");
        }
    }
}

/// The delivering half.
struct Sender {
    wanted: Wanted,
    membership: Option<ClusterMembership>,
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
    fn new(
        config: &WebhooksConfig,
        wanted: Wanted,
        membership: Option<ClusterMembership>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Self, ServerError> {
        Ok(Sender {
            wanted,
            membership,
            target: Target::parse(&config.url, &config.ca_file, "webhooks.ca_file")?,
            secret: config.secret.clone().into_bytes(),
            batch_max: config.batch_max,
            flush: Duration::from_millis(config.flush_ms),
            timeout: Duration::from_millis(config.timeout_ms),
            retries: config.retries,
            telemetry,
        })
    }

    async fn run(
        mut self,
        mut items: mpsc::Receiver<Item>,
        mut hurry: watch::Receiver<Option<Instant>>,
        mut finished: oneshot::Receiver<()>,
    ) {
        let mut batch = Vec::with_capacity(self.batch_max);
        let hurried = |hurry: &watch::Receiver<Option<Instant>>| *hurry.borrow();
        let deadline = 'running: loop {
            tokio::select! {
                Ok(()) = hurry.changed() => if let Some(at) = hurried(&hurry) { break 'running at },
                first = self.next(&mut items) => match first {
                    Some(item) => self.resolve(item, &mut batch).await,
                    None => return,
                },
            }
            if batch.is_empty() {
                continue;
            }
            let flush_at = Instant::now() + self.flush;
            while batch.len() < self.batch_max {
                tokio::select! {
                    Ok(()) = hurry.changed() => if let Some(at) = hurried(&hurry) { break 'running at },
                    next = tokio::time::timeout_at(flush_at, self.next(&mut items)) => match next {
                        Ok(Some(item)) => self.resolve(item, &mut batch).await,
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            self.deliver(&batch).await;
            batch.clear();
        };
        // Shutting down: what is queued, and what the closing connections
        // add, goes at once in full batches, until every connection is
        // closed and nothing is left, or the deadline.
        let drain = async {
            let mut all_closed = false;
            loop {
                while batch.len() < self.batch_max
                    && let Ok(item) = items.try_recv()
                {
                    self.resolve(item, &mut batch).await;
                }
                if !batch.is_empty() {
                    self.deliver(&batch).await;
                    batch.clear();
                    continue;
                }
                if all_closed {
                    return;
                }
                tokio::select! {
                    item = items.recv() => match item {
                        Some(item) => self.resolve(item, &mut batch).await,
                        None => return,
                    },
                    _ = &mut finished => all_closed = true,
                }
            }
        };
        if tokio::time::timeout_at(deadline, drain).await.is_err() {
            let left = batch.len() + items.len();
            tracing::warn!(events = left, "webhook events not sent within the shutdown grace");
            self.telemetry.metrics.webhook_dropped("shutdown", left as u64);
        }
    }

    /// The next item: queued by the sink or, in a cluster, a change the
    /// node found by itself (a dead node's members, its rejoin's corrections).
    async fn next(&mut self, items: &mut mpsc::Receiver<Item>) -> Option<Item> {
        let Some(membership) = self.membership.as_mut() else { return items.recv().await };
        tokio::select! {
            item = items.recv() => item,
            Some(change) = membership.found.recv() => Some(Item::Found(change)),
        }
    }

    /// Turns `item` into the events it stands for, appended to `batch`.
    async fn resolve(&self, item: Item, batch: &mut Vec<Event>) {
        match item {
            Item::Ready(event) => batch.push(event),
            Item::Member { key, member, present, time_ms } => {
                let Some(membership) = &self.membership else { return };
                match membership.judge.judge(&key, &member, present).await {
                    Ok(Some(change)) => self.push_change(&change, time_ms, batch),
                    Ok(None) => {}
                    // The node's rejoin reports the net change.
                    Err(e) => tracing::debug!(error = %e, "the cluster's ledger could not judge a member change"),
                }
            }
            Item::Found(change) => self.push_change(&change, now_ms(), batch),
        }
    }

    /// The events of one cluster-wide change, in the order a single node
    /// sends them.
    fn push_change(&self, change: &Change, time_ms: i64, batch: &mut Vec<Event>) {
        let w = self.wanted;
        let event = |name: &'static str| Event { time_ms, ..Event::about(name, &change.key) };
        if change.present {
            if change.channel && w.occupied {
                batch.push(event("channel_occupied"));
            }
            if w.added {
                batch.push(event("member_added").of(&change.member));
            }
        } else {
            if w.removed {
                batch.push(event("member_removed").of(&change.member));
            }
            if change.channel && w.vacated {
                batch.push(event("channel_vacated"));
            }
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
