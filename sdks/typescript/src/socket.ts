/**
 * One WebSocket, behind the few operations the client needs, on either of
 * the two WebSocket implementations it runs on:
 *
 * - the standard `WebSocket` (browsers, Node 22+, Deno, Bun): credentials go
 *   in the URL (`?token=`), since it cannot set headers; the server's pings
 *   are answered by the runtime and invisible to us, so liveness relies on
 *   frames and on the client's own `ping` probes; no way to pause reading;
 * - the `ws` package (Node 20, or when passed as `WebSocket`): credentials go
 *   in the `Authorization` header, a refused upgrade's status and body are
 *   read (401 becomes {@link Unauthorized}), server pings count as a sign of
 *   life, and reading can be paused (backpressure).
 */

import { ConnectFailed, Unauthorized } from "./errors.js";

/** What the client hears from a socket. */
export interface SocketHandlers {
  /** A text frame. */
  frame(text: string): void;
  /** Anything that shows the server is alive (a frame, a ping, a pong). */
  alive(): void;
  /** The socket is gone. Called once. */
  closed(code: number | undefined, reason: string): void;
}

/** An open socket. */
export interface Socket {
  /** Sends a text frame; returns false if the socket is no longer open. */
  send(text: string): boolean;
  /** Starts the closing handshake. */
  close(code?: number, reason?: string): void;
  /** Drops the connection at once, without a handshake. */
  abort(): void;
  /** Stops reading (only the `ws` package can); returns whether it did. */
  pause(): boolean;
  resume(): void;
}

/** The constructor of a standard-compatible WebSocket (or of `ws`'s). */
export type WebSocketConstructor = new (url: string, ...rest: any[]) => any;

let cachedWs: Promise<WebSocketConstructor | undefined> | undefined;

/**
 * The `ws` package if it can be imported (Node), else undefined. The module
 * name is a variable so that bundlers for the browser do not try to include it.
 */
function importWs(): Promise<WebSocketConstructor | undefined> {
  if (cachedWs === undefined) {
    const name = "ws";
    cachedWs = import(/* webpackIgnore: true */ /* @vite-ignore */ name).then(
      (mod: any) => (mod.WebSocket ?? mod.default) as WebSocketConstructor,
      () => undefined,
    );
  }
  return cachedWs;
}

/** Picks the implementation: the given one, else `ws` in Node, else the global `WebSocket`. */
export async function resolveWebSocket(given?: WebSocketConstructor): Promise<WebSocketConstructor> {
  if (given !== undefined) return given;
  const isNode = typeof (globalThis as any).process?.versions?.node === "string";
  if (isNode) {
    const ws = await importWs();
    if (ws !== undefined) return ws;
  }
  const standard = (globalThis as any).WebSocket as WebSocketConstructor | undefined;
  if (standard !== undefined) return standard;
  throw new ConnectFailed("no WebSocket implementation: install the `ws` package (npm install ws) or pass `WebSocket`");
}

/** Whether `ctor` is the `ws` package's class (it has Node-style `on` and `terminate`). */
function isWsPackage(ctor: WebSocketConstructor): boolean {
  const proto = ctor.prototype as Record<string, unknown> | undefined;
  return proto !== undefined && typeof proto.terminate === "function" && typeof proto.on === "function";
}

function withToken(url: string, token: string): string {
  const parsed = new URL(url);
  parsed.searchParams.set("token", token);
  return parsed.toString();
}

function refusalMessage(body: string): string {
  if (!body) return "the server refused the credentials";
  try {
    const parsed = JSON.parse(body);
    if (typeof parsed?.error?.message === "string") return parsed.error.message;
  } catch {
    // not JSON: the raw text below
  }
  return body.slice(0, 200);
}

/**
 * Opens a socket. Resolves once the WebSocket is open; rejects with
 * {@link Unauthorized} (HTTP 401, `ws` only) or {@link ConnectFailed}.
 */
export function openSocket(
  ctor: WebSocketConstructor,
  url: string,
  token: string | undefined,
  timeoutMs: number,
  handlers: SocketHandlers,
): Promise<Socket> {
  return isWsPackage(ctor)
    ? openWs(ctor, url, token, timeoutMs, handlers)
    : openStandard(ctor, url, token, timeoutMs, handlers);
}

function openWs(
  ctor: WebSocketConstructor,
  url: string,
  token: string | undefined,
  timeoutMs: number,
  handlers: SocketHandlers,
): Promise<Socket> {
  return new Promise((resolve, reject) => {
    let ws: any;
    try {
      ws = new ctor(url, {
        headers: token !== undefined ? { Authorization: `Bearer ${token}` } : {},
        // The bus does not negotiate compression.
        perMessageDeflate: false,
        // Server frames can be large (a history page of 1,000 messages).
        maxPayload: 0,
        handshakeTimeout: timeoutMs,
      });
    } catch (e) {
      reject(new ConnectFailed(`cannot connect to ${url}: ${(e as Error).message}`));
      return;
    }
    let open = false;
    let settled = false;
    let closed = false;
    const fail = (error: Error) => {
      if (settled) return;
      settled = true;
      reject(error);
    };
    ws.on("unexpected-response", (req: any, res: any) => {
      const decoder = new TextDecoder();
      let body = "";
      res.on("data", (c: Uint8Array) => {
        if (body.length < 4096) body += decoder.decode(c, { stream: true });
      });
      res.on("end", () => {
        fail(
          res.statusCode === 401
            ? new Unauthorized(refusalMessage(body))
            : new ConnectFailed(`upgrade refused with HTTP ${res.statusCode}`),
        );
        req.destroy();
      });
      res.on("error", () => fail(new ConnectFailed(`upgrade refused with HTTP ${res.statusCode}`)));
    });
    ws.on("error", (e: Error) => {
      // After open, 'close' follows and reports the end.
      if (!open) fail(new ConnectFailed(`cannot connect to ${url}: ${e.message}`));
    });
    ws.on("open", () => {
      open = true;
      settled = true;
      resolve(socket);
    });
    ws.on("message", (data: any, isBinary: boolean) => {
      handlers.alive();
      // The protocol has no binary frames from the server.
      if (!isBinary) handlers.frame(data.toString("utf8"));
    });
    ws.on("ping", () => handlers.alive());
    ws.on("pong", () => handlers.alive());
    ws.on("close", (code: number, reason: any) => {
      if (!open) {
        fail(new ConnectFailed(`cannot connect to ${url}: closed before opening`));
        return;
      }
      if (closed) return;
      closed = true;
      const text = reason.toString("utf8");
      // 1005: the close frame carried no code; 1006: no close frame at all.
      const known = code !== 1005 && code !== 1006 ? code : undefined;
      handlers.closed(known, text || (known !== undefined ? "connection closed" : "connection dropped"));
    });
    const socket: Socket = {
      send(text) {
        if (ws.readyState !== 1) return false;
        ws.send(text);
        return true;
      },
      close(code = 1000, reason = "") {
        try {
          ws.close(code, reason);
        } catch {
          ws.terminate();
        }
      },
      abort() {
        ws.terminate();
      },
      pause() {
        ws.pause();
        return true;
      },
      resume() {
        ws.resume();
      },
    };
  });
}

function openStandard(
  ctor: WebSocketConstructor,
  url: string,
  token: string | undefined,
  timeoutMs: number,
  handlers: SocketHandlers,
): Promise<Socket> {
  return new Promise((resolve, reject) => {
    let ws: any;
    try {
      ws = new ctor(token !== undefined ? withToken(url, token) : url);
    } catch (e) {
      reject(new ConnectFailed(`cannot connect to ${url}: ${(e as Error).message}`));
      return;
    }
    let open = false;
    let settled = false;
    let closed = false;
    // Frames that arrive after abort() (the standard API has no way to drop
    // a socket at once) must not reach the client.
    let dropped = false;
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      dropped = true;
      try {
        ws.close();
      } catch {
        // already closing
      }
      reject(new ConnectFailed(`cannot connect to ${url}: no upgrade within ${timeoutMs} ms`));
    }, timeoutMs);
    ws.onopen = () => {
      clearTimeout(timer);
      if (settled) return;
      open = true;
      settled = true;
      resolve(socket);
    };
    ws.onerror = () => {
      // The standard API says nothing about why (a 401 looks like any other
      // failure); 'close' follows.
    };
    ws.onmessage = (event: { data: unknown }) => {
      if (dropped) return;
      handlers.alive();
      if (typeof event.data === "string") handlers.frame(event.data);
    };
    ws.onclose = (event: { code: number; reason: string }) => {
      clearTimeout(timer);
      if (!open) {
        if (!settled) {
          settled = true;
          reject(new ConnectFailed(`cannot connect to ${url} (closed with ${event.code})`));
        }
        return;
      }
      if (closed) return;
      closed = true;
      const known = event.code !== 1005 && event.code !== 1006 ? event.code : undefined;
      handlers.closed(known, event.reason || (known !== undefined ? "connection closed" : "connection dropped"));
    };
    const socket: Socket = {
      send(text) {
        if (ws.readyState !== 1 || dropped) return false;
        ws.send(text);
        return true;
      },
      close(code = 1000, reason = "") {
        try {
          ws.close(code, reason);
        } catch {
          ws.close();
        }
      },
      abort() {
        // No abort in the standard API: stop listening and start closing;
        // the client treats the socket as gone from now on.
        dropped = true;
        try {
          ws.close();
        } catch {
          // already closed
        }
        if (!closed) {
          closed = true;
          handlers.closed(undefined, "connection dropped");
        }
      },
      pause() {
        return false;
      },
      resume() {},
    };
  });
}
