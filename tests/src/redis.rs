//! Real `redis-server` processes for tests: each test spawns its own on a
//! free loopback port, so it can kill, freeze and restart it at will. Never
//! touches a Redis on 6379.
//!
//! Plain `std` only, so that other crates' tests can include this very file
//! (`#[path = ".../tests/src/redis.rs"] mod redis_process;`) without
//! depending on the whole end-to-end harness. Its calls block for at most a
//! few seconds; from a multi-threaded Tokio test wrap the waiting ones
//! (`start*`, `restart`) in `tokio::task::block_in_place`.
//!
//! When `redis-server` is missing, [`redis_available`] makes the test fail
//! under `CI=true` and skip (with a printed notice) elsewhere.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Longest a `redis-server` may take to answer `PING` after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The `redis-server` binary: `$ARQON_REDIS_SERVER` if set (and `None` if
/// that is not a file), else the first on `$PATH`, else
/// `/usr/bin/redis-server` (where Debian's package puts it).
pub fn redis_server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ARQON_REDIS_SERVER") {
        return Some(PathBuf::from(path)).filter(|path| path.is_file());
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-server"));
    on_path.chain([PathBuf::from("/usr/bin/redis-server")]).find(|path| path.is_file())
}

/// Whether a test that needs `redis-server` can run.
///
/// # Panics
///
/// When `redis-server` is missing and the environment has `CI=true`: CI must
/// never pass by skipping these tests silently.
pub fn redis_available(test: &str) -> bool {
    if redis_server_binary().is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!(
            "{test}: redis-server not found but CI=true; install it (apt-get install redis-server) \
             or set ARQON_REDIS_SERVER"
        );
    }
    // Straight to stderr: libtest captures `eprintln!` of passing tests, and
    // a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "NOTICE: skipping {test}: redis-server not found (apt-get install redis-server, or set ARQON_REDIS_SERVER)"
    );
    false
}

/// Whether the server writes every acknowledged write to disk first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// `--save '' --appendonly no`: data lives as long as the process.
    Ephemeral,
    /// `--appendonly yes --appendfsync always`: every write acknowledged is
    /// on disk, so a `kill -9` and restart lose nothing.
    Durable,
}

/// One `redis-server` child process on 127.0.0.1, with its own data
/// directory. Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub struct RedisProcess {
    port: u16,
    dir: PathBuf,
    durability: Durability,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts a server that keeps nothing on disk, and waits until it
    /// answers.
    pub fn start() -> RedisProcess {
        Self::launch_new(Durability::Ephemeral)
    }

    /// Starts a server with an append-only file synced on every write, so
    /// that [`RedisProcess::kill`] then [`RedisProcess::restart`] keeps every
    /// acknowledged write.
    pub fn start_durable() -> RedisProcess {
        Self::launch_new(Durability::Durable)
    }

    /// Picks a free port and a data directory but starts nothing: Redis is
    /// "down" until [`RedisProcess::restart`].
    pub fn reserve() -> RedisProcess {
        Self::unstarted(Durability::Ephemeral)
    }

    /// Like [`RedisProcess::reserve`], durable once started.
    pub fn reserve_durable() -> RedisProcess {
        Self::unstarted(Durability::Durable)
    }

    fn unstarted(durability: Durability) -> RedisProcess {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "arqon-redis-{}-{}-{port}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the redis data directory");
        RedisProcess { port, dir, durability, child: None }
    }

    fn launch_new(durability: Durability) -> RedisProcess {
        // Another process may grab the port between our probe and
        // redis-server's bind; try a few ports before giving up.
        for _ in 0..5 {
            let mut redis = Self::unstarted(durability);
            if redis.launch().is_ok() {
                return redis;
            }
        }
        panic!("could not start redis-server on a free port after 5 attempts");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the server (again) on the same port and data directory and
    /// waits until it answers `PING` (a durable one has reloaded its data by
    /// then).
    ///
    /// # Panics
    ///
    /// If it is running, or does not come up within 15 s.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server on port {} is already running", self.port);
        if let Err(why) = self.launch() {
            panic!("redis-server did not restart on port {}: {why}", self.port);
        }
    }

    /// `kill -9`, and waits for the process to end.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (`SIGSTOP`): connections stay open, nothing is
    /// answered.
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    /// Thaws a server frozen by [`RedisProcess::stop`] (`SIGCONT`).
    pub fn cont(&self) {
        self.signal("-CONT");
    }

    /// Sends one raw command (e.g. `"DBSIZE"`) and returns the reply line,
    /// for tests that look at Redis directly.
    pub fn command(&self, args: &[&str]) -> String {
        read_reply(&mut self.send(args))
    }

    /// Sends one raw command and returns its whole reply as text: an
    /// array's elements, one bulk string, or the reply line of the others.
    pub fn command_values(&self, args: &[&str]) -> Vec<String> {
        let mut values = Vec::new();
        read_values(&mut self.send(args), &mut values);
        values
    }

    /// A new connection with `args` sent on it as one command.
    fn send(&self, args: &[&str]) -> TcpStream {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect to redis-server");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set a read timeout");
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).expect("send the command");
        stream
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("redis-server is running");
        let status = Command::new("kill").arg(signal).arg(pid.to_string()).status().expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    fn launch(&mut self) -> Result<(), String> {
        let binary = redis_server_binary().ok_or("redis-server not found")?;
        let mut command = Command::new(binary);
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--daemonize", "no"])
            .args(["--save", "", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log"]);
        match self.durability {
            Durability::Ephemeral => command.args(["--appendonly", "no"]),
            Durability::Durable => command.args(["--appendonly", "yes", "--appendfsync", "always"]),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ping(self.port) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("redis-server exited with {status}; see {}", self.log().display()));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!("no PONG within {READY_TIMEOUT:?}; see {}", self.log().display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// The data directory (the append-only files of a durable server).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        // SIGKILL ends a frozen (SIGSTOPped) process too.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// Whether a server on `port` answers `PING` with `PONG` (not, e.g.,
/// `-LOADING` while a restarted server reads its data back).
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    stream.write_all(b"PING\r\n").is_ok() && read_reply(&mut stream).starts_with("+PONG")
}

/// Reads one reply (the first line of it) as text.
fn read_reply(stream: &mut TcpStream) -> String {
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => reply.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&reply).trim_end().to_owned()
}

/// Reads one reply, appending its values (an array's recursively).
fn read_values(stream: &mut TcpStream, values: &mut Vec<String>) {
    let line = read_reply(stream);
    let count = |line: &str| line[1..].parse::<i64>().unwrap_or(-1);
    match line.as_bytes().first() {
        Some(b'*') => {
            for _ in 0..count(&line).max(0) {
                read_values(stream, values);
            }
        }
        Some(b'$') if count(&line) >= 0 => {
            let mut body = vec![0u8; usize::try_from(count(&line)).unwrap_or(0) + 2];
            stream.read_exact(&mut body).expect("read a bulk string");
            body.truncate(body.len() - 2);
            values.push(String::from_utf8_lossy(&body).into_owned());
        }
        _ => values.push(line),
    }
}
