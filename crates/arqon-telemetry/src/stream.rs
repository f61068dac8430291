//! The telemetry event stream: bus events as JSON lines for live observers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arqon_protocol::Timestamp;
use futures_util::Stream;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

/// Every event type the stream carries (see docs/telemetry.md).
pub const EVENT_TYPES: [&str; 14] = [
    "connection_opened",
    "connection_closed",
    "message_routed",
    "command_executed",
    "error",
    "rate_limited",
    "slow_consumer",
    "channel_created",
    "channel_deleted",
    "storage_degraded",
    "storage_recovered",
    "cluster_degraded",
    "cluster_recovered",
    "dropped",
];

/// Fan-out point for telemetry events.
///
/// A bounded broadcast: publishing never waits for observers. An observer
/// that falls more than `capacity` events behind loses the oldest ones and
/// is told how many (a `dropped` event). With no observer, publishing costs
/// one atomic load: events are serialized only when someone listens.
#[derive(Debug, Clone)]
pub struct TelemetryHub {
    tx: broadcast::Sender<(&'static str, Arc<str>)>,
    /// Live observers. The broadcast's own receiver count takes a lock, and
    /// every routed message asks.
    observers: Arc<AtomicUsize>,
}

/// Counts one observer while it lives.
#[derive(Debug)]
struct Observing(Arc<AtomicUsize>);

impl Observing {
    fn new(observers: &Arc<AtomicUsize>) -> Self {
        observers.fetch_add(1, Ordering::Relaxed);
        Observing(Arc::clone(observers))
    }
}

impl Drop for Observing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Default number of events buffered per hub.
pub const DEFAULT_CAPACITY: usize = 4096;

impl Default for TelemetryHub {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl TelemetryHub {
    /// A hub buffering up to `capacity` events for slow observers.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        TelemetryHub { tx, observers: Arc::default() }
    }

    /// Whether anyone listens; check before building an expensive event.
    pub fn is_observed(&self) -> bool {
        self.observers.load(Ordering::Relaxed) > 0
    }

    /// Publishes an event `name` with `fields` (an object; `event` and
    /// `timestamp` are added).
    pub fn publish(&self, name: &'static str, fields: Value) {
        if !self.is_observed() {
            return;
        }
        let text = render(name, fields);
        // No receivers left between the check and the send is fine.
        let _ = self.tx.send((name, Arc::from(text)));
    }

    /// A new observer, seeing events published from now on, optionally only
    /// those whose type is in `only`.
    pub fn subscribe(&self, only: Option<Vec<String>>) -> impl Stream<Item = String> + Send + 'static {
        let rx = self.tx.subscribe();
        let observing = Observing::new(&self.observers);
        futures_util::stream::unfold((rx, only, observing), |(mut rx, only, observing)| async move {
            loop {
                match rx.recv().await {
                    Ok((name, text)) => {
                        if only.as_ref().is_none_or(|o| o.iter().any(|t| t == name)) {
                            return Some((text.to_string(), (rx, only, observing)));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(count)) => {
                        let dropped = render("dropped", serde_json::json!({ "count": count }));
                        return Some((dropped, (rx, only, observing)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

fn render(name: &'static str, fields: Value) -> String {
    let mut object = Map::new();
    object.insert("event".to_owned(), Value::from(name));
    object.insert("timestamp".to_owned(), Value::from(Timestamp::now().to_string()));
    if let Value::Object(fields) = fields {
        object.extend(fields);
    }
    Value::Object(object).to_string()
}

/// Parses a `?events=a,b` query into a filter; unknown types are an error.
pub fn parse_filter(query: Option<&str>) -> Result<Option<Vec<String>>, String> {
    let Some(query) = query else { return Ok(None) };
    for pair in query.split('&') {
        if let Some(list) = pair.strip_prefix("events=") {
            let types: Vec<String> = list.split(',').filter(|t| !t.is_empty()).map(str::to_owned).collect();
            if let Some(bad) = types.iter().find(|t| !EVENT_TYPES.contains(&t.as_str())) {
                return Err(format!("unknown event type {bad:?}; known: {}", EVENT_TYPES.join(", ")));
            }
            return Ok(Some(types));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn observers_get_events_in_order_and_filtered() {
        let hub = TelemetryHub::new(16);
        assert!(!hub.is_observed());
        let all = hub.subscribe(None);
        let errors = hub.subscribe(Some(vec!["error".into()]));
        tokio::pin!(all, errors);
        hub.publish("connection_opened", serde_json::json!({"client_id": "a"}));
        hub.publish("error", serde_json::json!({"code": "NOT_FOUND"}));
        let first: Value = serde_json::from_str(&all.next().await.unwrap()).unwrap();
        assert_eq!(first["event"], "connection_opened");
        assert_eq!(first["client_id"], "a");
        assert!(first["timestamp"].is_string());
        let second: Value = serde_json::from_str(&all.next().await.unwrap()).unwrap();
        assert_eq!(second["event"], "error");
        let only: Value = serde_json::from_str(&errors.next().await.unwrap()).unwrap();
        assert_eq!(only["code"], "NOT_FOUND");
    }

    #[tokio::test]
    async fn an_observer_counts_while_its_stream_lives() {
        let hub = TelemetryHub::new(4);
        let first = hub.subscribe(None);
        let second = hub.subscribe(None);
        assert!(hub.is_observed());
        drop(first);
        assert!(hub.is_observed());
        drop(second);
        assert!(!hub.is_observed());
        // With nobody watching, publishing is a no-op (and must not fail).
        hub.publish("error", serde_json::json!({}));
    }

    #[tokio::test]
    async fn a_lagging_observer_is_told_how_many_it_missed() {
        let hub = TelemetryHub::new(4);
        let stream = hub.subscribe(None);
        tokio::pin!(stream);
        for i in 0..10 {
            hub.publish("error", serde_json::json!({"n": i}));
        }
        let dropped: Value = serde_json::from_str(&stream.next().await.unwrap()).unwrap();
        assert_eq!(dropped["event"], "dropped");
        assert_eq!(dropped["count"], 6);
        let next: Value = serde_json::from_str(&stream.next().await.unwrap()).unwrap();
        assert_eq!(next["n"], 6);
    }

    #[test]
    fn filters_parse() {
        assert_eq!(parse_filter(None).unwrap(), None);
        assert_eq!(
            parse_filter(Some("events=error,rate_limited")).unwrap(),
            Some(vec!["error".into(), "rate_limited".into()])
        );
        assert!(parse_filter(Some("events=bogus")).is_err());
    }
}
