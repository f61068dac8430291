/**
 * Test support: the real server as a child process, a TCP proxy that can cut
 * or freeze its connections, a scripted fake server, and small helpers for
 * bounded waiting. Mirrors sdks/python/tests/support.py.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as net from "node:net";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { WebSocket as WsClient, WebSocketServer, type WebSocket as WsSocket } from "ws";

import { connect, newId, type Client, type ClientOptions, type Incoming } from "arqonbus";

/** build-test/test -> the repository root. */
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..", "..");

export function serverBinary(): string {
  return process.env.ARQONBUS_BIN || path.join(REPO, "target", "debug", "arqonbus");
}

/** Fast reconnects for tests. */
export const FAST: ClientOptions = { backoffInitialMs: 50, backoffMaxMs: 500 };

/** `arqonbus` on a free port (or a given one), with one role for everyone. */
export class BusServer {
  url = "";
  port = 0;
  process: ChildProcess | undefined;
  private stderr = "";
  private exited: Promise<number | null> | undefined;

  /** `--config FILE` when the server was started with a TOML config. */
  private args: string[] = [];
  private configDir: string | undefined;

  private constructor(
    readonly role: string,
    readonly heartbeatS: number,
    private readonly extraEnv: Record<string, string | undefined>,
  ) {}

  /**
   * Starts a server; `env` overrides the test settings (undefined removes
   * one); `config` is TOML for a `--config` file (e.g. `[[api.keys]]`), under
   * the variables.
   */
  static async start(
    options: {
      role?: string;
      heartbeatS?: number;
      env?: Record<string, string | undefined>;
      port?: number;
      config?: string;
    } = {},
  ): Promise<BusServer> {
    const server = new BusServer(options.role ?? "user", options.heartbeatS ?? 1, options.env ?? {});
    if (options.config !== undefined) {
      server.configDir = mkdtempSync(path.join(os.tmpdir(), "arqonbus-ts-"));
      const file = path.join(server.configDir, "arqonbus.toml");
      writeFileSync(file, options.config);
      server.args = ["--config", file];
    }
    await server.launch(options.port ?? 0);
    return server;
  }

  /** The server API's base URL (same listener as the WebSocket). */
  get httpUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  private async launch(port: number): Promise<void> {
    const binary = serverBinary();
    if (!existsSync(binary)) {
      throw new Error(`server binary ${binary} not found: build it with \`cargo build -p arqonbus\` or set ARQONBUS_BIN`);
    }
    const env: Record<string, string | undefined> = {
      ...process.env,
      ARQON_SERVER__PORT: String(port),
      ARQON_LIMITS__RATE_PER_S: "0",
      ARQON_LIMITS__BYTES_PER_S: "0",
      ARQON_SERVER__HEARTBEAT_S: String(this.heartbeatS),
      ARQON_AUTH__DEFAULT_ROLE: this.role,
      // A short drain so SIGTERM at teardown is quick.
      ARQON_SERVER__SHUTDOWN_GRACE_MS: "1000",
      // The monitoring listener defaults to the fixed port 9101.
      ARQON_MONITORING__PORT: "0",
      ...this.extraEnv,
    };
    for (const key of Object.keys(env)) if (env[key] === undefined) delete env[key];
    // A port just released may still be held for a moment: try a few times.
    for (let attempt = 1; ; attempt++) {
      const line = await this.spawnOnce(binary, env as Record<string, string>);
      const prefix = "ArqonBus listening on ";
      if (line.startsWith(prefix)) {
        this.url = line.slice(prefix.length).trim();
        this.port = Number(new URL(this.url).port);
        return;
      }
      await this.stop();
      if (port === 0 || attempt >= 20) {
        throw new Error(`unexpected ready line ${JSON.stringify(line)}; server log:\n${this.stderr.slice(-4000)}`);
      }
      await sleep(250);
    }
  }

  /** Starts the process; resolves with its first stdout line ('' if it exited first). */
  private spawnOnce(binary: string, env: Record<string, string>): Promise<string> {
    this.stderr = "";
    const child = spawn(binary, this.args, { env, stdio: ["ignore", "pipe", "pipe"] });
    this.process = child;
    this.exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
    child.stderr!.on("data", (chunk: Buffer) => {
      this.stderr = (this.stderr + chunk.toString("utf8")).slice(-16_000);
    });
    return new Promise((resolve, reject) => {
      let out = "";
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`arqonbus printed no ready line within 60 s; log:\n${this.stderr.slice(-4000)}`));
      }, 60_000);
      const onData = (chunk: Buffer) => {
        out += chunk.toString("utf8");
        const nl = out.indexOf("\n");
        if (nl >= 0) {
          clearTimeout(timer);
          child.stdout!.off("data", onData);
          child.stdout!.resume(); // keep draining
          resolve(out.slice(0, nl));
        }
      };
      child.stdout!.on("data", onData);
      child.once("exit", () => {
        clearTimeout(timer);
        resolve("");
      });
    });
  }

  /** SIGTERM: the server sends `shutdown` and closes with 1001. */
  terminate(): void {
    if (this.process && this.process.exitCode === null && this.process.signalCode === null) this.process.kill("SIGTERM");
  }

  /** SIGKILL: the server vanishes without a word. */
  kill(): void {
    if (this.process && this.process.exitCode === null && this.process.signalCode === null) this.process.kill("SIGKILL");
  }

  /** SIGTERM, then waits (SIGKILL after 15 s); resolves with the exit code. */
  async stop(): Promise<number | null> {
    if (this.process === undefined) return null;
    this.terminate();
    try {
      return await within(15_000, this.exited!);
    } catch {
      this.kill();
      return this.exited!;
    } finally {
      if (this.configDir !== undefined) rmSync(this.configDir, { recursive: true, force: true });
      this.configDir = undefined;
    }
  }

  /** Waits for the process to end (after kill()). */
  async waitExit(): Promise<void> {
    await this.exited;
  }

  /** Starts the server again on the same port (after kill or stop). */
  async restart(): Promise<void> {
    await this.waitExit();
    await this.launch(this.port);
  }
}

interface Pair {
  client: net.Socket;
  upstream: net.Socket;
  frozen: boolean;
  dropDown: boolean;
}

/**
 * A TCP proxy to 127.0.0.1:`port` that tests can sabotage.
 *
 * - `killAll()` destroys every live connection (both sides see a reset).
 * - `freezeAll()` makes every live connection silently stop forwarding in
 *   both directions, without closing anything: a dead network path.
 * - `dropDownstreamAll()` keeps forwarding client to server but discards
 *   server to client: requests are carried out, answers are lost.
 * - `accepting = false` makes new connections close at once.
 */
export class TcpProxy {
  accepting = true;
  accepted = 0;
  /** Bytes from clients swallowed by frozen connections. */
  swallowedUpstream = 0;
  readonly pairs = new Set<Pair>();
  private server: net.Server | undefined;
  private all = new Set<net.Socket>();

  constructor(private readonly targetPort: number) {}

  async start(): Promise<this> {
    this.server = net.createServer((socket) => this.handle(socket));
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    return this;
  }

  get port(): number {
    return (this.server!.address() as net.AddressInfo).port;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  private handle(client: net.Socket): void {
    this.all.add(client);
    client.on("close", () => this.all.delete(client));
    client.on("error", () => {});
    if (!this.accepting) {
      client.resetAndDestroy();
      return;
    }
    client.pause();
    const upstream = net.connect(this.targetPort, "127.0.0.1");
    this.all.add(upstream);
    upstream.on("close", () => this.all.delete(upstream));
    upstream.on("error", () => {});
    const pair: Pair = { client, upstream, frozen: false, dropDown: false };
    upstream.once("connect", () => {
      this.accepted++;
      this.pairs.add(pair);
      client.resume();
    });
    client.on("data", (data) => {
      if (pair.frozen) this.swallowedUpstream += data.length;
      else upstream.write(data);
    });
    upstream.on("data", (data) => {
      if (!pair.frozen && !pair.dropDown) client.write(data);
    });
    const end = () => {
      this.pairs.delete(pair);
      // A frozen path shows nothing, not even a close.
      if (!pair.frozen) {
        client.destroy();
        upstream.destroy();
      }
    };
    client.on("close", end);
    upstream.on("close", end);
  }

  killAll(): number {
    const pairs = [...this.pairs];
    for (const pair of pairs) {
      pair.frozen = false;
      pair.client.resetAndDestroy();
      pair.upstream.resetAndDestroy();
    }
    return pairs.length;
  }

  freezeAll(): number {
    for (const pair of this.pairs) pair.frozen = true;
    return this.pairs.size;
  }

  dropDownstreamAll(): number {
    for (const pair of this.pairs) pair.dropDown = true;
    return this.pairs.size;
  }

  async close(): Promise<void> {
    for (const socket of this.all) socket.destroy();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }
}

/**
 * A scripted server: `handler` gets each connection (after the welcome was
 * sent, unless `welcome: false`) and its parsed frames.
 */
export class FakeServer {
  readonly connections: WsSocket[] = [];
  private wss!: WebSocketServer;

  static async start(
    handler: (ws: WsSocket, frame: any, index: number) => void,
    options: { heartbeatS?: number; welcome?: boolean; role?: string } = {},
  ): Promise<FakeServer> {
    const server = new FakeServer();
    server.wss = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    await new Promise<void>((resolve) => server.wss.once("listening", () => resolve()));
    server.wss.on("connection", (ws) => {
      const index = server.connections.length;
      server.connections.push(ws);
      if (options.welcome !== false) ws.send(welcomeFrame(options.heartbeatS ?? 30, options.role ?? "user"));
      ws.on("message", (data) => handler(ws, JSON.parse(data.toString()), index));
    });
    return server;
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.wss.address() as net.AddressInfo).port}/ws`;
  }

  async close(): Promise<void> {
    for (const ws of this.wss.clients) ws.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }
}

export function welcomeFrame(heartbeatS: number, role = "user"): string {
  return JSON.stringify({
    version: 1,
    id: newId(),
    type: "event",
    timestamp: "2026-01-01T00:00:00.000Z",
    payload: {
      event: "welcome",
      client_id: newId(),
      role,
      server_version: "fake",
      heartbeat_s: heartbeatS,
      limits: { max_message_bytes: 1048576, rate_per_s: 0, burst: 200 },
    },
  });
}

/** A server frame answering `requestId`. */
export function reply(type: "response" | "error", requestId: string, fields: Record<string, unknown>): string {
  return JSON.stringify({ version: 1, id: newId(), type, request_id: requestId, ...fields });
}

/** Clients, proxies and servers made by a test, closed after it. */
export class Resources {
  private clients: Client[] = [];
  private closers: Array<() => Promise<unknown>> = [];

  async client(url: string, options: ClientOptions = {}): Promise<Client> {
    const client = await connect(url, { requestTimeoutMs: 15_000, ...options });
    this.clients.push(client);
    return client;
  }

  async proxy(port: number): Promise<TcpProxy> {
    const proxy = await new TcpProxy(port).start();
    this.closers.push(() => proxy.close());
    return proxy;
  }

  add(close: () => Promise<unknown>): void {
    this.closers.push(close);
  }

  async close(): Promise<void> {
    await Promise.all(this.clients.splice(0).map((c) => c.close()));
    for (const close of this.closers.splice(0).reverse()) await close();
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A fresh room/channel name (tests share servers). */
export function unique(prefix = "t"): string {
  return `${prefix}-${randomUUID().slice(0, 12)}`;
}

type KindOf<K extends Incoming["kind"]> = Extract<Incoming, { kind: K }>;

/**
 * The next item of `kind` (matching `predicate`) from `client.receive()`;
 * other items are skipped (and appended to `skipped` if given).
 */
export async function nextItem<K extends Incoming["kind"]>(
  client: Client,
  kind: K,
  options: { predicate?: (item: KindOf<K>) => boolean; timeoutMs?: number; skipped?: Incoming[] } = {},
): Promise<KindOf<K>> {
  const deadline = Date.now() + (options.timeoutMs ?? 15_000);
  while (true) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`no ${kind} item within ${options.timeoutMs ?? 15_000} ms`);
    const item = await client.receive(left);
    if (item.kind === kind && (options.predicate === undefined || options.predicate(item as KindOf<K>))) {
      return item as KindOf<K>;
    }
    options.skipped?.push(item);
  }
}

/** Waits until `check()` is truthy. */
export async function eventually(check: () => unknown, timeoutMs = 15_000, intervalMs = 20): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(intervalMs);
  }
}

/** Rejects if `promise` takes longer than `ms`. */
export async function within<T>(ms: number, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`not done within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A standard (browser-shaped) WebSocket built on `ws`: `onopen`,
 * `onmessage`, `onclose`, `readyState`, `send`, `close`, and nothing else.
 * Like a browser's, it answers the server's pings without showing them, and
 * it cannot be paused, so it drives the SDK's browser code path in Node.
 */
export class StandardWebSocket {
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  /** Every URL opened, to check where the token went. */
  static readonly urls: string[] = [];
  private readonly inner: WsSocket;

  constructor(url: string) {
    StandardWebSocket.urls.push(url);
    this.inner = new WsClient(url, { perMessageDeflate: false, maxPayload: 0 });
    this.inner.on("open", () => this.onopen?.({}));
    this.inner.on("message", (data: Buffer, isBinary: boolean) =>
      this.onmessage?.({ data: isBinary ? new ArrayBuffer(0) : data.toString("utf8") }),
    );
    this.inner.on("close", (code: number, reason: Buffer) => this.onclose?.({ code, reason: reason.toString("utf8") }));
    this.inner.on("error", () => this.onerror?.({}));
  }

  get readyState(): number {
    return this.inner.readyState;
  }

  send(data: string): void {
    this.inner.send(data);
  }

  close(code?: number, reason?: string): void {
    this.inner.close(code, reason);
  }
}
