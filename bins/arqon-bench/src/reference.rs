//! Reference figures: what the peers measured and what the issues ask for,
//! per configuration (`benches/reference.json`).
//!
//! They are not measured by the suite (the peers were run once, by hand, on
//! the same machine; the targets are decisions), so they live in a small
//! checked-in file, each number with its source, and the charts and the
//! summary table draw them beside ArqonBus's own figures.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::BenchError;
use crate::figures::Metric;

/// Another system's figure for the same configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Peer {
    /// The system, e.g. `nats-server 2.9 (WebSocket)`.
    pub(crate) name: String,
    /// What the value measures.
    pub(crate) metric: Metric,
    /// The value, in the metric's unit.
    pub(crate) value: f64,
    /// Where the number comes from.
    pub(crate) source: String,
}

/// What a configuration is asked to reach.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Target {
    /// What the value bounds.
    pub(crate) metric: Metric,
    /// The bound, in the metric's unit: a floor for throughput, a ceiling
    /// for latency and memory. Absent for a target that is not a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) value: Option<f64>,
    /// The target also requires no lost message and no closed subscriber.
    #[serde(default)]
    pub(crate) no_loss: bool,
    /// The target in words, as the table shows it.
    pub(crate) text: String,
    /// Where it was set.
    pub(crate) source: String,
}

/// The reference figures of one configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Case {
    /// The `benches/run.sh` label; also matches that label followed by a
    /// parenthesis (`conns 100000 idle (capped at …)`).
    pub(crate) label: String,
    /// A short title for charts and the table.
    pub(crate) title: String,
    /// Peers' figures.
    #[serde(default)]
    pub(crate) peers: Vec<Peer>,
    /// Targets, at most one per metric.
    #[serde(default)]
    pub(crate) targets: Vec<Target>,
}

impl Case {
    /// Whether a result label is this configuration.
    fn matches(&self, label: &str) -> bool {
        label == self.label || label.strip_prefix(self.label.as_str()).is_some_and(|rest| rest.starts_with(" ("))
    }

    /// The target on `metric`, if any.
    pub(crate) fn target(&self, metric: Metric) -> Option<&Target> {
        self.targets.iter().find(|t| t.metric == metric)
    }
}

/// A reference file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Reference {
    /// What the file is, for its reader.
    #[serde(default)]
    pub(crate) about: String,
    /// The configurations.
    pub(crate) cases: Vec<Case>,
}

impl Reference {
    /// Parses a reference file.
    pub(crate) fn parse(text: &str) -> Result<Self, BenchError> {
        serde_json::from_str(text).map_err(|e| BenchError::Results(format!("bad reference file: {e}")))
    }

    /// Reads a reference file.
    pub(crate) fn load(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BenchError::Results(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// The case of a result label.
    pub(crate) fn case(&self, label: &str) -> Option<&Case> {
        self.cases.iter().find(|c| c.matches(label))
    }

    /// Every peer's name, in order of first appearance: one legend entry and
    /// one table column each.
    pub(crate) fn peer_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for peer in self.cases.iter().flat_map(|c| &c.peers) {
            if !names.contains(&peer.name) {
                names.push(peer.name.clone());
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_exactly_or_before_a_parenthesis() {
        let text = r#"{"cases":[
            {"label":"fanout 1->100, 20k msgs","title":"fan-out","peers":[
                {"name":"nats","metric":"deliveries_per_s","value":2.7e6,"source":"issue 7"}],
             "targets":[{"metric":"deliveries_per_s","value":6e6,"text":">= 6 M/s","source":"issue 14"}]},
            {"label":"conns 100000 idle","title":"idle","peers":[
                {"name":"socket.io","metric":"rss_per_conn_kib","value":18,"source":"issue 7"}]}]}"#;
        let reference = Reference::parse(text).unwrap();
        let fanout = reference.case("fanout 1->100, 20k msgs").unwrap();
        assert_eq!(fanout.target(Metric::DeliveriesPerS).and_then(|t| t.value), Some(6e6));
        assert!(fanout.target(Metric::P99Us).is_none());
        assert!(reference.case("fanout 1->100, 20k msgs, ordinary").is_none());
        assert_eq!(reference.case("conns 100000 idle (capped at 19900: nofile 20000)").unwrap().title, "idle");
        assert_eq!(reference.peer_names(), ["nats", "socket.io"]);
        assert!(Reference::parse(r#"{"cases":[{"label":"x"}]}"#).is_err());
    }

    #[test]
    fn the_checked_in_reference_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/reference.json");
        let reference = Reference::load(&path).unwrap();
        assert!(reference.case("fanin 50->1, 2k each").is_some());
        assert!(reference.cases.iter().flat_map(|c| &c.peers).all(|p| !p.source.is_empty()));
        assert!(reference.cases.iter().flat_map(|c| &c.targets).all(|t| !t.source.is_empty()));
    }
}
