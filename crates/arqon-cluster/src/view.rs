//! This node's picture of the other nodes: who is alive, which clients each
//! holds, how many members each has per channel. Plain data, no I/O; the
//! broker answers the router's questions from it without touching Redis.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arqon_protocol::{ChannelKey, ClientId};

#[derive(Debug)]
struct NodeState {
    last_seen: Instant,
    clients: HashSet<ClientId>,
    members: HashMap<ChannelKey, usize>,
    /// Users with connections there.
    users: HashSet<String>,
}

impl NodeState {
    fn new(now: Instant) -> Self {
        NodeState { last_seen: now, clients: HashSet::new(), members: HashMap::new(), users: HashSet::new() }
    }
}

/// The other nodes, as last heard.
#[derive(Debug, Default)]
pub(crate) struct RemoteView {
    nodes: HashMap<Arc<str>, NodeState>,
    /// client → node, for direct messages (the newest claim wins).
    client_nodes: HashMap<ClientId, Arc<str>>,
    /// Channel → members on all other nodes together.
    totals: HashMap<ChannelKey, usize>,
}

impl RemoteView {
    /// Node `node` is alive as of `now`; returns whether it was unknown.
    pub(crate) fn seen(&mut self, node: &str, now: Instant) -> bool {
        match self.nodes.get_mut(node) {
            Some(state) => {
                state.last_seen = now;
                false
            }
            None => {
                self.nodes.insert(Arc::from(node), NodeState::new(now));
                true
            }
        }
    }

    fn node_mut(&mut self, node: &str, now: Instant) -> (Arc<str>, &mut NodeState) {
        let name = self.nodes.get_key_value(node).map_or_else(|| Arc::from(node), |(k, _)| Arc::clone(k));
        let state = self.nodes.entry(Arc::clone(&name)).or_insert_with(|| NodeState::new(now));
        state.last_seen = now;
        (name, state)
    }

    /// Clients connected to and disconnected from `node`.
    pub(crate) fn clients(&mut self, node: &str, joined: &[ClientId], left: &[ClientId], now: Instant) {
        let (name, state) = self.node_mut(node, now);
        for id in left {
            state.clients.remove(id);
        }
        state.clients.extend(joined.iter().copied());
        for id in left {
            if self.client_nodes.get(id).is_some_and(|n| *n == name) {
                self.client_nodes.remove(id);
            }
        }
        for id in joined {
            self.client_nodes.insert(*id, Arc::clone(&name));
        }
    }

    /// Users that came to and left `node`.
    pub(crate) fn users(&mut self, node: &str, present: &[String], gone: &[String], now: Instant) {
        let (_, state) = self.node_mut(node, now);
        for user in gone {
            state.users.remove(user);
        }
        state.users.extend(present.iter().cloned());
    }

    /// Whether `node` is another node alive as far as this one knows.
    pub(crate) fn is_alive(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// Whether another node has connections of `user`.
    pub(crate) fn knows_user(&self, user: &str) -> bool {
        self.nodes.values().any(|state| state.users.contains(user))
    }

    /// `node` now has `count` members in `key`.
    pub(crate) fn members(&mut self, node: &str, key: &ChannelKey, count: usize, now: Instant) {
        let (_, state) = self.node_mut(node, now);
        let old = if count == 0 { state.members.remove(key) } else { state.members.insert(key.clone(), count) };
        let old = old.unwrap_or(0);
        self.adjust_total(key, old, count);
    }

    /// Replaces everything known of `node` with a snapshot of its registry.
    pub(crate) fn replace(
        &mut self,
        node: &str,
        clients: HashSet<ClientId>,
        members: HashMap<ChannelKey, usize>,
        users: HashSet<String>,
        now: Instant,
    ) {
        self.remove(node);
        let name: Arc<str> = Arc::from(node);
        for id in &clients {
            self.client_nodes.insert(*id, Arc::clone(&name));
        }
        for (key, count) in &members {
            self.adjust_total(key, 0, *count);
        }
        self.nodes.insert(name, NodeState { last_seen: now, clients, members, users });
    }

    /// Forgets `node` (it left or died); returns whether it was known.
    pub(crate) fn remove(&mut self, node: &str) -> bool {
        let Some((name, state)) = self.nodes.remove_entry(node) else {
            return false;
        };
        for id in &state.clients {
            if self.client_nodes.get(id).is_some_and(|n| *n == name) {
                self.client_nodes.remove(id);
            }
        }
        for (key, count) in &state.members {
            self.adjust_total(key, *count, 0);
        }
        true
    }

    /// Forgets every node silent for longer than `ttl`; returns them.
    pub(crate) fn sweep(&mut self, now: Instant, ttl: Duration) -> Vec<Arc<str>> {
        let dead: Vec<Arc<str>> = self
            .nodes
            .iter()
            .filter(|(_, state)| now.saturating_duration_since(state.last_seen) > ttl)
            .map(|(name, _)| Arc::clone(name))
            .collect();
        for name in &dead {
            self.remove(name);
        }
        dead
    }

    /// The node holding `client`, if any other does.
    pub(crate) fn node_of(&self, client: ClientId) -> Option<Arc<str>> {
        self.client_nodes.get(&client).cloned()
    }

    /// Members of `key` on the other nodes.
    pub(crate) fn remote_members(&self, key: &ChannelKey) -> usize {
        self.totals.get(key).copied().unwrap_or(0)
    }

    /// Other nodes alive.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's id, sorted.
    pub(crate) fn node_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.nodes.keys().map(|n| n.to_string()).collect();
        ids.sort();
        ids
    }

    fn adjust_total(&mut self, key: &ChannelKey, old: usize, new: usize) {
        let total = self.totals.entry(key.clone()).or_insert(0);
        *total = (*total + new).saturating_sub(old);
        if *total == 0 {
            self.totals.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> ClientId {
        ClientId::from_ulid(ulid::Ulid(n))
    }

    fn key(c: &str) -> ChannelKey {
        ChannelKey::parse("r", c).unwrap()
    }

    #[test]
    fn counts_sum_over_nodes_and_drop_with_a_node() {
        let now = Instant::now();
        let mut view = RemoteView::default();
        view.members("a", &key("x"), 2, now);
        view.members("b", &key("x"), 3, now);
        view.members("b", &key("y"), 1, now);
        assert_eq!((view.remote_members(&key("x")), view.remote_members(&key("y"))), (5, 1));
        view.members("a", &key("x"), 1, now);
        assert_eq!(view.remote_members(&key("x")), 4);
        assert!(view.remove("b"));
        assert_eq!((view.remote_members(&key("x")), view.remote_members(&key("y"))), (1, 0));
        view.members("a", &key("x"), 0, now);
        assert_eq!(view.remote_members(&key("x")), 0);
        assert!(view.totals.is_empty());
    }

    #[test]
    fn clients_are_found_on_their_node_until_it_goes() {
        let now = Instant::now();
        let mut view = RemoteView::default();
        view.clients("a", &[id(1), id(2)], &[], now);
        view.clients("b", &[id(3)], &[], now);
        assert_eq!(view.node_of(id(1)).as_deref(), Some("a"));
        view.clients("a", &[], &[id(1)], now);
        assert_eq!(view.node_of(id(1)), None);
        // A client that moved to b stays on b when a is forgotten.
        view.clients("b", &[id(2)], &[], now);
        view.remove("a");
        assert_eq!(view.node_of(id(2)).as_deref(), Some("b"));
        assert_eq!(view.node_count(), 1);
    }

    #[test]
    fn silent_nodes_are_swept_after_the_ttl() {
        let start = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut view = RemoteView::default();
        view.clients("a", &[id(1)], &[], start);
        view.members("a", &key("x"), 1, start);
        view.seen("b", start + Duration::from_secs(8));
        assert!(view.sweep(start + ttl, ttl).is_empty());
        let dead = view.sweep(start + Duration::from_secs(11), ttl);
        assert_eq!(dead.iter().map(|n| n.to_string()).collect::<Vec<_>>(), ["a"]);
        assert_eq!((view.node_of(id(1)), view.remote_members(&key("x"))), (None, 0));
        assert_eq!(view.node_ids(), ["b"]);
    }

    #[test]
    fn a_snapshot_replaces_what_was_known() {
        let now = Instant::now();
        let mut view = RemoteView::default();
        view.clients("a", &[id(1)], &[], now);
        view.members("a", &key("x"), 4, now);
        view.users("a", &["ann".to_owned()], &[], now);
        assert!(view.knows_user("ann"));
        view.replace(
            "a",
            HashSet::from([id(2)]),
            HashMap::from([(key("y"), 2)]),
            HashSet::from(["bob".to_owned()]),
            now,
        );
        assert!(!view.knows_user("ann") && view.knows_user("bob"));
        assert_eq!(view.node_of(id(1)), None);
        assert_eq!(view.node_of(id(2)).as_deref(), Some("a"));
        assert_eq!((view.remote_members(&key("x")), view.remote_members(&key("y"))), (0, 2));
    }
}
