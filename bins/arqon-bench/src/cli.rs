//! Command-line parsing: scenarios, their options and defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::BenchError;
use crate::summarize::Request;

pub(crate) const USAGE: &str = "\
arqon-bench: load generator for ArqonBus (protocol v1 over WebSocket).

Usage:
  arqon-bench SCENARIO [OPTIONS]
  arqon-bench summarize [RESULTS] [--table TABLE.md] [--out DIR] [--reference FILE]

Scenarios (defaults in brackets):
  fanout    1 publisher -> N subscribers, M messages at max rate
            [--subscribers 100 --messages 20000]
  fanin     P publishers -> 1 subscriber, K messages each at max rate
            [--publishers 50 --messages 2000]
  latency   fixed rate R msg/s to N subscribers for D seconds
            [--rate 1000 --duration 5 --subscribers 100]
  conns     C idle connections, each joined to a channel; with --server-pid
            reports the server's RSS per connection [--connections 5000]
  commands  ping, or join_channel + leave_channel, round trips at a fixed rate
            [--command ping --rate 1000 --duration 5]
  api       P backends POST /api/publish (kept-alive HTTP, one request at a
            time each) -> N WebSocket subscribers; needs --api-key
            [--publishers 16 --subscribers 100 --messages 2000]
  readrate  no bus: how fast one subscriber of --subscriber's kind reads M
            deliveries from memory, then from a local socket that a writer
            of pre-encoded frames keeps full [--messages 100000]

Common options:
  --url URL            bus endpoint, an IP literal [ws://127.0.0.1:9100/ws]
  --sub-url URL        fanout/fanin/latency: subscribers connect here instead,
                       round-robin if given more than once (other cluster
                       nodes); publishers stay on --url
  --timeout SECS       hard bound on the whole run, set-up included [60]
  --server-pid PID     read the server's RSS and CPU time from /proc
  --threads N          tokio worker threads [available CPUs]
  --per-ip N           connections per local source address 127.0.0.x, from
                       127.0.0.1 up (0: let the OS pick) [1000]
  --label TEXT         configuration name in the results [scenario + sizes]
  --target TEXT        the goal, copied into the results table
  --allow-loss         exit 0 even when messages were lost or errors occurred
  --room NAME, --channel NAME   where the traffic goes [bench / c]

api:
  --api-key KEY        a server API key of the bus ([[api.keys]], role user)

fanout, fanin, latency, api:
  --subscribers N --publishers P --messages M (per publisher)
  --subscriber KIND    lean: the generator's own reader, millions of frames/s;
                       ordinary: reads like a typical application (tokio-
                       tungstenite, next() per message, each parsed into a
                       serde_json::Value) [lean]; also for readrate
  --payload BYTES      payload size [256]
  --rate R             messages/s per publisher (fanout/fanin: unlimited)
  --duration SECS      latency: messages = rate x duration
  --window W           at most W messages in flight between the publishers and
                       the slowest subscriber, so that the measured rate is
                       the rate the whole path sustains rather than how much
                       the bus buffers (64 MiB per client); 0 = open loop [512]
  --stalled K          K extra subscribers join and never read
  --compress           lean subscribers offer permessage-deflate and inflate
                       every compressed frame (as a browser does); the report
                       gives the bytes the subscribers read off the wire
  --text               pad payloads with varied words rather than x, so
                       that they compress like real messages
  --drain SECS         after publishing, give up after SECS without progress [3]
  --peer nats          fanout, fanin, latency: drive nats-server's WebSocket
                       listener instead of the bus (--url ws://IP:PORT), with
                       the same load, payloads and lean reader; the subject is
                       ROOM.CHANNEL [bus]

conns:
  --connections C --channels K (connection i joins channel idle-(i mod K)) [1]
  --concurrency N      handshakes in flight [256]
  --settle SECS        wait before reading the RSS after the last join [2]

commands:
  --command ping|join --rate R --duration SECS

summarize (run from the repository root):
  RESULTS, --results PATH   a results.jsonl, the directory run.sh wrote it to,
                       or a figures file [the newest benches/results/*.json]
  --table FILE         also write the median-and-range table there
  --out DIR            write deliveries.svg, latency.svg, memory.svg and
                       summary.md (and figures.json for raw results) there
  --reference FILE     peers' figures and targets [benches/reference.json]

Output: a human table, then one JSON line (the last line, starting with {).
Exit status: 0; 1 if anything was lost, errored or timed out (unless
--allow-loss); 2 on bad usage.
";

/// A load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    /// One publisher, many subscribers.
    Fanout,
    /// Many publishers, one subscriber.
    Fanin,
    /// Fixed-rate publishing, latency distribution.
    Latency,
    /// Idle connections and server memory.
    Conns,
    /// Command round trips.
    Commands,
    /// One subscriber's own read rate, without a bus.
    Readrate,
    /// Server API publishers (HTTP), WebSocket subscribers.
    Api,
}

impl Scenario {
    /// The name used on the command line and in results.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Fanin => "fanin",
            Scenario::Latency => "latency",
            Scenario::Conns => "conns",
            Scenario::Commands => "commands",
            Scenario::Readrate => "readrate",
            Scenario::Api => "api",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            Scenario::Fanout,
            Scenario::Fanin,
            Scenario::Latency,
            Scenario::Conns,
            Scenario::Commands,
            Scenario::Readrate,
            Scenario::Api,
        ]
        .into_iter()
        .find(|s| s.name() == text)
    }
}

/// How subscribers read their deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubscriberKind {
    /// The lean client ([`crate::lean`]): frames parsed in place, stamps read
    /// from the end of the frame.
    Lean,
    /// A typical application's client ([`crate::ordinary`]).
    Ordinary,
}

impl SubscriberKind {
    /// The name used on the command line and in results.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SubscriberKind::Lean => "lean",
            SubscriberKind::Ordinary => "ordinary",
        }
    }
}

/// The server a pub/sub scenario drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peer {
    /// ArqonBus, protocol v1.
    Bus,
    /// nats-server over its WebSocket listener (`pubsub/nats.rs`).
    Nats,
}

/// Which command the `commands` scenario times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommandKind {
    /// `ping`.
    Ping,
    /// `join_channel`, each followed by a `leave_channel` of the same channel.
    Join,
}

/// What the command line asked for.
#[derive(Debug)]
pub(crate) enum Invocation {
    /// Run one scenario.
    Run(Box<Options>),
    /// Summarize results: a table, and charts with `--out`.
    Summarize(Request),
    /// Print usage.
    Help,
}

/// Everything a run needs, defaults resolved.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) scenario: Scenario,
    pub(crate) url: String,
    pub(crate) addr: SocketAddr,
    /// Where subscribers connect (`--sub-url`, repeatable); empty: `url`.
    pub(crate) sub_urls: Vec<(String, SocketAddr)>,
    pub(crate) timeout: Duration,
    pub(crate) server_pid: Option<u32>,
    pub(crate) threads: Option<usize>,
    pub(crate) per_ip: usize,
    pub(crate) label: String,
    pub(crate) target: Option<String>,
    pub(crate) allow_loss: bool,
    /// Lean subscribers offer permessage-deflate and inflate what comes
    /// compressed.
    pub(crate) compress: bool,
    /// Payloads padded with varied words rather than `x`.
    pub(crate) text: bool,
    pub(crate) room: String,
    pub(crate) channel: String,
    pub(crate) subscribers: usize,
    pub(crate) subscriber: SubscriberKind,
    pub(crate) peer: Peer,
    pub(crate) publishers: usize,
    pub(crate) messages: u64,
    pub(crate) payload: usize,
    pub(crate) rate: Option<f64>,
    pub(crate) duration: Option<f64>,
    pub(crate) window: u64,
    pub(crate) stalled: usize,
    pub(crate) drain: Duration,
    pub(crate) connections: usize,
    pub(crate) channels: usize,
    pub(crate) concurrency: usize,
    pub(crate) settle: Duration,
    pub(crate) command: CommandKind,
    /// `api`: the server API key its publishers send.
    pub(crate) api_key: Option<String>,
}

fn usage(message: impl Into<String>) -> BenchError {
    BenchError::Usage(message.into())
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, BenchError> {
    value.parse().map_err(|_| usage(format!("{flag}: {value:?} is not a valid number")))
}

fn seconds(flag: &str, value: &str) -> Result<Duration, BenchError> {
    let secs: f64 = number(flag, value)?;
    Duration::try_from_secs_f64(secs).map_err(|_| usage(format!("{flag}: {value:?} is not a duration in seconds")))
}

/// `ws://IP:PORT/PATH` to the socket address (host names are not resolved:
/// the generator only ever talks to this machine).
pub(crate) fn parse_url(url: &str) -> Result<SocketAddr, BenchError> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| usage(format!("--url {url:?}: expected ws://IP:PORT/PATH")))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.parse().map_err(|_| usage(format!("--url {url:?}: expected an IP literal and a port")))
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// Parses the arguments after the program name.
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Invocation, BenchError> {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Err(usage("no scenario given"));
    };
    match first.as_str() {
        "-h" | "--help" | "help" => return Ok(Invocation::Help),
        "summarize" => {
            let mut request = Request { input: None, table: None, out: None, reference: None };
            while let Some(arg) = args.next() {
                let mut value =
                    |what: &str| args.next().map(PathBuf::from).ok_or_else(|| usage(format!("{arg} needs {what}")));
                match arg.as_str() {
                    "--results" => request.input = Some(value("a path")?),
                    "--table" => request.table = Some(value("a path")?),
                    // `--out TABLE.md` named the table before charts came:
                    // a Markdown path still means that.
                    "--out" => {
                        let path = value("a directory")?;
                        if path.extension().is_some_and(|e| e == "md") {
                            request.table = Some(path);
                        } else {
                            request.out = Some(path);
                        }
                    }
                    "--reference" => request.reference = Some(value("a path")?),
                    other if request.input.is_none() && !other.starts_with('-') => {
                        request.input = Some(PathBuf::from(other));
                    }
                    other => return Err(usage(format!("summarize: unexpected argument {other:?}"))),
                }
            }
            return Ok(Invocation::Summarize(request));
        }
        _ => {}
    }
    let scenario = Scenario::parse(&first).ok_or_else(|| usage(format!("unknown scenario {first:?}")))?;
    let mut o = Options {
        scenario,
        url: "ws://127.0.0.1:9100/ws".to_owned(),
        sub_urls: Vec::new(),
        addr: SocketAddr::from(([127, 0, 0, 1], 9100)),
        timeout: Duration::from_secs(60),
        server_pid: None,
        threads: None,
        per_ip: 1000,
        label: String::new(),
        target: None,
        allow_loss: false,
        compress: false,
        text: false,
        room: "bench".to_owned(),
        channel: "c".to_owned(),
        subscribers: match scenario {
            Scenario::Fanin => 1,
            _ => 100,
        },
        publishers: match scenario {
            Scenario::Fanin => 50,
            Scenario::Api => 16,
            _ => 1,
        },
        subscriber: SubscriberKind::Lean,
        peer: Peer::Bus,
        messages: match scenario {
            Scenario::Fanin | Scenario::Api => 2000,
            Scenario::Readrate => 100_000,
            _ => 20_000,
        },
        payload: 256,
        rate: match scenario {
            Scenario::Latency | Scenario::Commands => Some(1000.0),
            _ => None,
        },
        duration: match scenario {
            Scenario::Latency | Scenario::Commands => Some(5.0),
            _ => None,
        },
        window: 512,
        stalled: 0,
        drain: Duration::from_secs(3),
        connections: 5000,
        channels: 1,
        concurrency: 256,
        settle: Duration::from_secs(2),
        command: CommandKind::Ping,
        api_key: None,
    };
    let mut messages_given = false;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.to_owned())),
            _ => (arg.clone(), None),
        };
        if flag == "--allow-loss" {
            o.allow_loss = true;
            continue;
        }
        if flag == "--compress" {
            o.compress = true;
            continue;
        }
        if flag == "--text" {
            o.text = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Ok(Invocation::Help);
        }
        let value = match inline {
            Some(value) => value,
            None => args.next().ok_or_else(|| usage(format!("{flag} needs a value")))?,
        };
        let v = value.as_str();
        match flag.as_str() {
            "--url" => {
                o.addr = parse_url(v)?;
                o.url = value.clone();
            }
            "--sub-url" => o.sub_urls.push((value.clone(), parse_url(v)?)),
            "--timeout" => o.timeout = seconds(&flag, v)?,
            "--server-pid" => o.server_pid = Some(number(&flag, v)?),
            "--threads" => o.threads = Some(number::<usize>(&flag, v)?.max(1)),
            "--per-ip" => o.per_ip = number(&flag, v)?,
            "--label" => o.label = value.clone(),
            "--target" => o.target = Some(value.clone()),
            "--room" => o.room = value.clone(),
            "--channel" => o.channel = value.clone(),
            "--api-key" => o.api_key = Some(value.clone()),
            "--subscribers" => o.subscribers = number(&flag, v)?,
            "--subscriber" => {
                o.subscriber = match v {
                    "lean" => SubscriberKind::Lean,
                    "ordinary" => SubscriberKind::Ordinary,
                    other => return Err(usage(format!("--subscriber: {other:?} is not lean or ordinary"))),
                }
            }
            "--publishers" => o.publishers = number(&flag, v)?,
            "--messages" => {
                o.messages = number(&flag, v)?;
                messages_given = true;
            }
            "--payload" => o.payload = number(&flag, v)?,
            "--rate" => o.rate = Some(number(&flag, v)?).filter(|r: &f64| *r > 0.0),
            "--duration" => o.duration = Some(number(&flag, v)?),
            "--window" => o.window = number(&flag, v)?,
            "--stalled" => o.stalled = number(&flag, v)?,
            "--drain" => o.drain = seconds(&flag, v)?,
            "--connections" => o.connections = number(&flag, v)?,
            "--channels" => o.channels = number::<usize>(&flag, v)?.max(1),
            "--concurrency" => o.concurrency = number::<usize>(&flag, v)?.max(1),
            "--settle" => o.settle = seconds(&flag, v)?,
            "--peer" => {
                o.peer = match v {
                    "bus" | "arqonbus" => Peer::Bus,
                    "nats" => Peer::Nats,
                    other => return Err(usage(format!("--peer: {other:?} is not bus or nats"))),
                }
            }
            "--command" => {
                o.command = match v {
                    "ping" => CommandKind::Ping,
                    "join" | "join_channel" => CommandKind::Join,
                    other => return Err(usage(format!("--command: {other:?} is not ping or join"))),
                }
            }
            other => return Err(usage(format!("unknown option {other:?}"))),
        }
    }
    if !valid_name(&o.room) || !valid_name(&o.channel) {
        return Err(usage("--room and --channel must be 1 to 64 characters of A-Z a-z 0-9 _ - ."));
    }
    if o.per_ip > 0 && o.total_connections().div_ceil(o.per_ip) > 254 {
        return Err(usage("--per-ip too small: more than 254 source addresses (127.0.0.1-254) needed"));
    }
    // A fixed-rate run is bounded by its duration unless a count was given.
    if let (Some(rate), Some(duration), false) = (o.rate, o.duration, messages_given) {
        o.messages = (rate * duration).round().max(1.0) as u64;
    }
    if o.compress && o.subscriber == SubscriberKind::Ordinary {
        return Err(usage("--compress needs lean subscribers: tungstenite, the ordinary client, cannot inflate"));
    }
    if o.peer == Peer::Nats
        && (!matches!(o.scenario, Scenario::Fanout | Scenario::Fanin | Scenario::Latency)
            || o.subscriber != SubscriberKind::Lean
            || o.compress
            || o.stalled > 0
            || !o.sub_urls.is_empty())
    {
        return Err(usage(
            "--peer nats runs fanout, fanin and latency with lean subscribers (no --compress, --stalled or --sub-url)",
        ));
    }
    if o.scenario == Scenario::Api && o.api_key.is_none() {
        return Err(usage("api needs --api-key KEY (a key of the bus's [[api.keys]])"));
    }
    if matches!(o.scenario, Scenario::Fanout | Scenario::Fanin | Scenario::Latency | Scenario::Readrate | Scenario::Api)
        && (o.subscribers == 0 || o.publishers == 0 || o.messages == 0)
    {
        return Err(usage("--subscribers, --publishers and --messages must be at least 1"));
    }
    if o.label.is_empty() {
        o.label = o.default_label();
    }
    Ok(Invocation::Run(Box::new(o)))
}

impl Options {
    /// Connections the run opens (source addresses are assigned over these).
    pub(crate) fn total_connections(&self) -> usize {
        match self.scenario {
            Scenario::Conns => self.connections,
            Scenario::Commands | Scenario::Readrate => 1,
            _ => self.subscribers + self.stalled + self.publishers,
        }
    }

    fn default_label(&self) -> String {
        let label = self.scenario_label();
        match (self.scenario, self.subscriber) {
            (Scenario::Fanout | Scenario::Fanin | Scenario::Latency | Scenario::Api, SubscriberKind::Ordinary) => {
                format!("{label}, ordinary subscribers")
            }
            _ if self.compress => format!("{label}, compressed"),
            _ if self.peer == Peer::Nats => format!("{label}, nats-server"),
            _ => label,
        }
    }

    fn scenario_label(&self) -> String {
        match self.scenario {
            Scenario::Fanout | Scenario::Fanin => {
                format!("{} {}->{} x{}", self.scenario.name(), self.publishers, self.subscribers, self.messages)
            }
            Scenario::Latency => format!(
                "latency {}/s ->{} {}s",
                self.rate.unwrap_or(0.0),
                self.subscribers,
                self.duration.unwrap_or(0.0)
            ),
            Scenario::Conns => format!("conns {}", self.connections),
            Scenario::Commands => format!(
                "commands {} {}/s",
                match self.command {
                    CommandKind::Ping => "ping",
                    CommandKind::Join => "join",
                },
                self.rate.unwrap_or(0.0)
            ),
            Scenario::Readrate => format!("readrate {} x{}", self.subscriber.name(), self.messages),
            Scenario::Api => match self.rate {
                Some(rate) => format!("api {}x{rate}/s ->{}", self.publishers, self.subscribers),
                None => format!("api {}->{} x{}", self.publishers, self.subscribers, self.messages),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Options {
        match parse(args.iter().map(|s| (*s).to_owned())).unwrap() {
            Invocation::Run(o) => *o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn scenario_defaults() {
        let o = run(&["fanin"]);
        assert_eq!((o.publishers, o.subscribers, o.messages), (50, 1, 2000));
        let o = run(&["latency", "--rate", "10000", "--duration=2"]);
        assert_eq!(o.messages, 20_000);
        assert_eq!(o.label, "latency 10000/s ->100 2s");
        let o = run(&["commands", "--command", "join", "--url", "ws://127.0.0.1:4000/ws"]);
        assert_eq!(o.command, CommandKind::Join);
        assert_eq!(o.addr.port(), 4000);
        assert_eq!(o.messages, 5000);
        assert_eq!(run(&["fanout"]).subscriber, SubscriberKind::Lean);
        let o = run(&["fanin", "--subscriber", "ordinary"]);
        assert_eq!(o.subscriber, SubscriberKind::Ordinary);
        assert_eq!(o.label, "fanin 50->1 x2000, ordinary subscribers");
        let o = run(&["readrate", "--subscriber=ordinary"]);
        assert_eq!((o.scenario, o.messages, o.payload), (Scenario::Readrate, 100_000, 256));
        assert_eq!(o.label, "readrate ordinary x100000");
    }

    #[test]
    fn subscribers_may_connect_to_other_nodes() {
        let o = run(&["fanout", "--sub-url", "ws://127.0.0.1:4001/ws", "--sub-url=ws://127.0.0.1:4002/ws"]);
        let ports: Vec<u16> = o.sub_urls.iter().map(|(_, addr)| addr.port()).collect();
        assert_eq!(ports, [4001, 4002]);
        assert_eq!(o.sub_urls[0].0, "ws://127.0.0.1:4001/ws");
        assert!(run(&["fanout"]).sub_urls.is_empty());
        assert!(parse(["fanout", "--sub-url", "localhost:1"].iter().map(|s| (*s).to_owned())).is_err());
    }

    #[test]
    fn bad_usage_is_refused() {
        for args in [
            &["nope"][..],
            &["fanout", "--subscribers"],
            &["fanout", "--subscribers", "x"],
            &["fanout", "--url", "http://localhost/"],
            &["conns", "--connections", "100000", "--per-ip", "10"],
            &["fanout", "--room", "bad room"],
            &["fanout", "--subscriber", "fast"],
            &["readrate", "--messages", "0"],
            &[],
        ] {
            assert!(parse(args.iter().map(|s| (*s).to_owned())).is_err(), "{args:?}");
        }
        assert!(matches!(parse(["summarize".to_owned(), "r.jsonl".to_owned()]), Ok(Invocation::Summarize { .. })));
    }

    #[test]
    fn summarize_takes_results_charts_and_a_table() {
        let args = |a: &[&str]| parse(a.iter().map(|s| (*s).to_owned()));
        let Ok(Invocation::Summarize(r)) =
            args(&["summarize", "--results", "d", "--out", "img", "--reference", "x.json"])
        else {
            panic!("not a summarize")
        };
        let expected =
            Request { input: Some("d".into()), table: None, out: Some("img".into()), reference: Some("x.json".into()) };
        assert_eq!(r, expected);
        let Ok(Invocation::Summarize(r)) = args(&["summarize", "r.jsonl", "--out", "t.md"]) else {
            panic!("not a summarize")
        };
        assert_eq!((r.table, r.out), (Some("t.md".into()), None), "--out TABLE.md still names the table");
        let Ok(Invocation::Summarize(r)) = args(&["summarize"]) else { panic!("not a summarize") };
        assert_eq!(r.input, None, "the newest checked-in figures by default");
        assert!(args(&["summarize", "--out"]).is_err());
        assert!(args(&["summarize", "a", "b"]).is_err());
    }
}
