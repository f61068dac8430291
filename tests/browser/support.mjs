/**
 * Shared by the browser tests: the real `arqonbus` binary as a child process,
 * a redis-server on a free loopback port, a tiny static file server, headless
 * Chromium (Debian's /usr/bin/chromium driven by puppeteer-core), and bounded
 * waiting. Every wait has a deadline; nothing asserts on elapsed time.
 */

import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, readFileSync, mkdirSync, copyFileSync } from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

import puppeteer from "puppeteer-core";
import { WebSocket } from "ws";

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, "..", "..");

export function serverBinary() {
  return process.env.ARQONBUS_BIN || path.join(REPO, "target", "debug", "arqonbus");
}

export function chromiumPath() {
  return process.env.CHROMIUM_BIN || "/usr/bin/chromium";
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A fresh room/channel name. */
export function unique(prefix = "t") {
  return `${prefix}-${randomUUID().slice(0, 12)}`;
}

/** Waits until `check()` resolves truthy (it may be async); returns its value. */
export async function eventually(check, { timeoutMs = 30_000, intervalMs = 50, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (true) {
    try {
      const value = await check();
      if (value) return value;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`${what} not met within ${timeoutMs} ms${last ? `: ${last.message}` : ""}`);
    }
    await sleep(intervalMs);
  }
}

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** `arqonbus` on free ports (bus and monitoring), configured by `env`. */
export class Bus {
  url = "";
  port = 0;
  monitoringUrl = "";
  #child;
  #exited;
  #stderr = "";

  constructor(env, args) {
    this.env = env;
    this.args = args;
  }

  /** Starts a bus with these `ARQON_*` variables (undefined removes one) and command-line arguments. */
  static async start(env = {}, args = []) {
    const bus = new Bus(env, args);
    await bus.#launch(0);
    return bus;
  }

  async #launch(port) {
    const binary = serverBinary();
    if (!existsSync(binary)) {
      throw new Error(`server binary ${binary} not found: build it with \`cargo build -p arqonbus\` or set ARQONBUS_BIN`);
    }
    const env = {
      ...process.env,
      ARQON_SERVER__PORT: String(port),
      ARQON_MONITORING__PORT: "0",
      ARQON_LIMITS__RATE_PER_S: "0",
      ARQON_LIMITS__BYTES_PER_S: "0",
      // Pages on a busy machine may stall for a moment: no reconnect for that.
      ARQON_SERVER__HEARTBEAT_S: "5",
      ARQON_SERVER__SHUTDOWN_GRACE_MS: "1000",
      ...this.env,
    };
    for (const key of Object.keys(env)) if (env[key] === undefined) delete env[key];
    // A port just released may still be held for a moment: try a few times.
    for (let attempt = 1; ; attempt++) {
      const lines = await this.#spawnOnce(binary, env);
      const [bus, monitoring] = lines;
      if (bus?.startsWith("ArqonBus listening on ")) {
        this.url = bus.slice("ArqonBus listening on ".length).trim();
        this.port = Number(new URL(this.url).port);
        this.monitoringUrl = monitoring?.startsWith("Monitoring on ") ? monitoring.slice("Monitoring on ".length).trim().split(" ")[0] : "";
        return;
      }
      await this.stop();
      if (port === 0 || attempt >= 20) {
        throw new Error(`arqonbus did not start (${JSON.stringify(lines)}); log:\n${this.#stderr.slice(-4000)}`);
      }
      await sleep(250);
    }
  }

  /** Starts the process; resolves with its first stdout lines (two if monitoring is on). */
  #spawnOnce(binary, env) {
    this.#stderr = "";
    const wanted = env.ARQON_MONITORING__ENABLED === "false" ? 1 : 2;
    const child = spawn(binary, this.args, { env, stdio: ["ignore", "pipe", "pipe"] });
    this.#child = child;
    this.#exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
    child.stderr.on("data", (chunk) => {
      this.#stderr = (this.#stderr + chunk.toString("utf8")).slice(-16_000);
    });
    return new Promise((resolve, reject) => {
      let out = "";
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        reject(new Error(`arqonbus printed no ready line within 60 s; log:\n${this.#stderr.slice(-4000)}`));
      }, 60_000);
      const onData = (chunk) => {
        out += chunk.toString("utf8");
        const lines = out.split("\n");
        if (lines.length > wanted) {
          clearTimeout(timer);
          child.stdout.off("data", onData);
          child.stdout.resume();
          resolve(lines.slice(0, wanted));
        }
      };
      child.stdout.on("data", onData);
      // "close": stdout and stderr are read to the end, for the error message.
      child.once("close", () => {
        clearTimeout(timer);
        resolve(out.split("\n").filter(Boolean));
      });
    });
  }

  get log() {
    return this.#stderr;
  }

  /** SIGKILL: the bus vanishes without a word. */
  kill() {
    if (this.#child && this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill("SIGKILL");
  }

  /** SIGTERM, then waits (SIGKILL after 15 s). */
  async stop() {
    if (!this.#child) return;
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill("SIGTERM");
    let timer;
    const timeout = new Promise((resolve) => (timer = setTimeout(() => resolve("timeout"), 15_000)));
    const outcome = await Promise.race([this.#exited, timeout]);
    clearTimeout(timer); // a pending timer would keep the test process alive
    if (outcome === "timeout") {
      this.kill();
      await this.#exited;
    }
  }

  /** Starts the bus again on the same port (after kill or stop). */
  async restart() {
    await this.#exited;
    await this.#launch(this.port);
  }
}

/** A redis-server of our own on a free loopback port, without persistence. */
export class Redis {
  port = 0;
  #child;

  static available() {
    const dirs = (process.env.PATH || "").split(path.delimiter);
    return dirs.some((dir) => existsSync(path.join(dir, "redis-server")));
  }

  static async start() {
    const redis = new Redis();
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const child = spawn(
        "redis-server",
        ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      const ready = await new Promise((resolve) => {
        let out = "";
        const timer = setTimeout(() => resolve(false), 30_000);
        child.stdout.on("data", (chunk) => {
          out += chunk.toString("utf8");
          if (out.includes("Ready to accept connections")) {
            clearTimeout(timer);
            resolve(true);
          }
        });
        child.once("exit", () => {
          clearTimeout(timer);
          resolve(false);
        });
      });
      if (ready) {
        child.stdout.resume();
        child.stderr.resume();
        redis.#child = child;
        redis.port = port;
        return redis;
      }
      child.kill("SIGKILL");
      if (attempt >= 10) throw new Error("redis-server did not start");
    }
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  async stop() {
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGKILL");
    await exited;
  }
}

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".map": "application/json",
  ".json": "application/json",
};

/**
 * A static file server on 127.0.0.1: `mounts` maps a URL prefix (`/sdk/`) to
 * a directory. Only files inside a mounted directory are served.
 */
export class StaticServer {
  #server;

  static async start(mounts) {
    const server = new StaticServer();
    server.#server = http.createServer((request, response) => {
      const url = new URL(request.url, "http://x");
      for (const [prefix, dir] of Object.entries(mounts)) {
        if (!url.pathname.startsWith(prefix)) continue;
        const rest = decodeURIComponent(url.pathname.slice(prefix.length)) || "index.html";
        const file = path.resolve(dir, rest);
        if (!file.startsWith(path.resolve(dir) + path.sep) || !existsSync(file)) break;
        response.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" });
        response.end(readFileSync(file));
        return;
      }
      response.writeHead(404, { "content-type": "text/plain" });
      response.end("not found");
    });
    await new Promise((resolve) => server.#server.listen(0, "127.0.0.1", resolve));
    return server;
  }

  get url() {
    return `http://127.0.0.1:${this.#server.address().port}`;
  }

  async close() {
    this.#server.closeAllConnections?.();
    await new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

/** Headless Chromium; throws with a clear message when it is not installed. */
export async function launchBrowser() {
  const executablePath = chromiumPath();
  if (!existsSync(executablePath)) {
    throw new Error(`${executablePath} not found: install Debian's chromium (apt-get install chromium) or set CHROMIUM_BIN`);
  }
  return puppeteer.launch({
    executablePath,
    headless: true,
    // Root in CI has no user namespaces for the sandbox; /dev/shm may be tiny in containers.
    args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--no-default-browser-check"],
    protocolTimeout: 120_000,
  });
}

/**
 * A new page that records console errors, uncaught exceptions and failed
 * requests in `page.problems` (a test asserts it stays empty).
 */
export async function newPage(browser, { width = 900, height = 640 } = {}) {
  // A context (window) of its own, like another user's browser: two tabs of
  // one window would leave one in the background, where Chromium may pause it.
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  const close = page.close.bind(page);
  page.close = async () => {
    await close();
    await context.close();
  };
  // Keeps the page focused as if in front, whatever else the browser shows.
  const session = await page.createCDPSession();
  await session.send("Emulation.setFocusEmulationEnabled", { enabled: true });
  await page.setViewport({ width, height, deviceScaleFactor: 1 });
  page.problems = [];
  page.on("console", (message) => {
    if (message.type() === "error") page.problems.push(`console error: ${message.text()}`);
  });
  page.on("pageerror", (error) => page.problems.push(`page error: ${error.message}`));
  page.on("requestfailed", (request) => {
    // WebSockets torn down by a killed server are expected; documents and scripts are not.
    if (request.resourceType() !== "websocket") {
      page.problems.push(`request failed: ${request.url()} ${request.failure()?.errorText ?? ""}`);
    }
  });
  return page;
}

/**
 * Saves a screenshot under $BROWSER_TEST_ARTIFACTS (default: a temp dir) and, with
 * UPDATE_SCREENSHOTS=1, also as docs/img/`name` (the committed copy).
 */
export async function screenshot(page, name, options = {}) {
  const dir = process.env.BROWSER_TEST_ARTIFACTS || path.join(os.tmpdir(), "arqonbus-browser-artifacts");
  mkdirSync(dir, { recursive: true });
  const file = path.join(dir, name);
  await page.screenshot({ path: file, ...options });
  if (process.env.UPDATE_SCREENSHOTS === "1") {
    copyFileSync(file, path.join(REPO, "docs", "img", name));
  }
  return file;
}

/** A raw WebSocket client of the bus: commands with their answers, and received frames. */
export class WireClient {
  frames = [];
  #pending = new Map();
  #seq = 0;

  static async connect(url, headers = {}) {
    const client = new WireClient();
    client.ws = new WebSocket(url, { headers });
    await new Promise((resolve, reject) => {
      client.ws.once("error", reject);
      client.ws.on("message", (data) => {
        const frame = JSON.parse(data.toString());
        if (frame.payload?.event === "welcome") {
          client.clientId = frame.payload.client_id;
          resolve();
          return;
        }
        const waiter = frame.request_id && client.#pending.get(frame.request_id);
        if (waiter) {
          client.#pending.delete(frame.request_id);
          waiter(frame);
        } else {
          client.frames.push(frame);
        }
      });
    });
    return client;
  }

  /** Sends a command; resolves with the response or error frame. */
  command(command, args = {}, timeoutMs = 15_000) {
    const id = newId();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`${command}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pending.set(id, (frame) => {
        clearTimeout(timer);
        resolve(frame);
      });
      this.ws.send(JSON.stringify({ type: "command", id, command, args }));
    });
  }

  /** Sends a `message` frame (no answer unless it fails). */
  send(fields) {
    this.ws.send(JSON.stringify({ type: "message", ...fields }));
  }

  close() {
    this.ws.close();
  }
}

const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/** An `arq_` + ULID id, monotonic enough for tests. */
export function newId() {
  let time = Date.now();
  let head = "";
  for (let i = 0; i < 10; i++) {
    head = CROCKFORD[time % 32] + head;
    time = Math.floor(time / 32);
  }
  let tail = "";
  for (let i = 0; i < 16; i++) tail += CROCKFORD[Math.floor(Math.random() * 32)];
  return `arq_${head}${tail}`;
}
