/// Limits and policies of one router. Plain data; the server fills it from
/// the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// Publishing to (and, for role `user` and above, joining) a missing
    /// channel creates it. Default: true.
    pub auto_create: bool,
    /// Frames per second per client; 0 means unlimited. Default: 100.
    pub rate_per_s: u32,
    /// Frames a client may send at once before the rate applies. Default: 200.
    pub burst: u32,
    /// Outbound queue capacity per client, in frames. Default: 1024.
    pub outbound_queue: usize,
    /// Member events are sent only while a channel has at most this many
    /// members. Default: 1000.
    pub member_events_max: usize,
    /// Largest frame a client may send; reported in `welcome`. Default: 1 MiB.
    pub max_message_bytes: usize,
    /// Heartbeat interval; reported in `welcome`. Default: 20.
    pub heartbeat_s: u64,
    /// Reported in `welcome` and `status`. Default: this crate's version.
    pub server_version: String,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            auto_create: true,
            rate_per_s: 100,
            burst: 200,
            outbound_queue: 1024,
            member_events_max: 1000,
            max_message_bytes: 1_048_576,
            heartbeat_s: 20,
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}
