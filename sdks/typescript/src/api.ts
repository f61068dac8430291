/**
 * The server API (docs/protocol.md section 8.3): the bus's HTTP interface for
 * application backends, `POST /api/<command>` on the bus listener with an API
 * key from the server's `[[api.keys]]`.
 *
 * For backends (Node 20+, Deno, Bun, workers): it uses the global `fetch`.
 * Never ship an API key to a browser.
 *
 * ```ts
 * import { ServerApi } from "arqonbus";
 *
 * const api = new ServerApi("http://127.0.0.1:9100", process.env.ARQON_API_KEY!);
 * // Every member of lobby/general gets it, with `from: "server"`.
 * await api.publish("lobby", "general", { text: "deploy done" });
 * ```
 */

import { ArqonError, ConnectFailed, HTTP_STATUS, InvalidArgs, ProtocolViolation, RequestTimeout, errorFromWire } from "./errors.js";
import { newId } from "./ids.js";
import {
  presenceFromPayload,
  type JoinResult,
  type Presence,
  type PresenceStats,
} from "./models.js";

/** Options of a {@link ServerApi}. */
export interface ServerApiOptions {
  /** Milliseconds a call may take, connecting included. Default: `10000`. */
  timeoutMs?: number;
  /** The `fetch` to use. Default: the global one. */
  fetch?: typeof fetch;
}

/** One command of {@link ServerApi.batch}. */
export interface BatchCommand {
  readonly command: string;
  readonly args?: Record<string, unknown>;
}

/** Pass-through metadata of a message. */
type Meta = Readonly<Record<string, string>>;

const CODE_OF_STATUS: Readonly<Record<number, string>> = {
  400: "INVALID_ARGS",
  401: "UNAUTHORIZED",
  403: "FORBIDDEN",
  404: "NOT_FOUND",
  413: "MESSAGE_TOO_LARGE",
  429: "RATE_LIMITED",
  503: "STORAGE_UNAVAILABLE",
};

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * A client of the bus's server API. A refusal rejects with the SDK's typed
 * error for its wire code ({@link Unauthorized}, {@link NotFound}, ...), with
 * the HTTP status in {@link ArqonError.status}.
 */
export class ServerApi {
  /** Where calls go: `<origin><prefix>/api/`. */
  readonly base: string;
  private readonly key: string;
  private readonly timeoutMs: number;
  private readonly fetchFn: typeof fetch;

  /**
   * @param url the bus's address, `http://HOST:PORT` or `https://HOST:PORT`
   *   (the WebSocket URL `ws://HOST:PORT/ws` names the same listener and is
   *   accepted too). For a self-signed bus in Node, trust its certificate
   *   with `NODE_EXTRA_CA_CERTS`.
   * @param key an API key of the bus's `[[api.keys]]`; its role (`user` or
   *   `admin`) decides which commands it may run.
   */
  constructor(url: string, key: string, options: ServerApiOptions = {}) {
    const parsed = new URL(url);
    const scheme = { "http:": "http:", "ws:": "http:", "https:": "https:", "wss:": "https:" }[parsed.protocol];
    if (scheme === undefined) throw new TypeError(`server API URL ${JSON.stringify(url)}: the scheme must be http or https`);
    if (/[\r\n]/.test(key)) throw new TypeError("the API key is not a valid HTTP header value");
    let path = parsed.pathname.replace(/\/+$/, "");
    for (const suffix of ["/ws", "/api"]) {
      if (path.endsWith(suffix)) {
        path = path.slice(0, -suffix.length);
        break;
      }
    }
    this.base = `${scheme}//${parsed.host}${path}/api/`;
    this.key = key;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    const fetchFn = options.fetch ?? globalThis.fetch;
    if (typeof fetchFn !== "function") throw new TypeError("no global fetch: pass options.fetch (Node 18+ has one)");
    this.fetchFn = fetchFn;
  }

  /** Runs any command with `args`; resolves with its response payload. */
  async call(command: string, args: Record<string, unknown> = {}, options: { timeoutMs?: number } = {}): Promise<any> {
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    let response: Response;
    let text: string;
    try {
      response = await this.fetchFn(this.base + command, {
        method: "POST",
        headers: {
          authorization: `Bearer ${this.key}`,
          "content-type": "application/json",
          accept: "application/json",
        },
        body: JSON.stringify(args),
        signal: AbortSignal.timeout(timeoutMs),
      });
      text = await response.text();
    } catch (error) {
      const name = (error as { name?: string } | undefined)?.name;
      if (name === "TimeoutError" || name === "AbortError") {
        throw new RequestTimeout(`no answer to ${command} within ${timeoutMs} ms`);
      }
      const cause = (error as { cause?: unknown } | undefined)?.cause;
      throw new ConnectFailed(`cannot reach ${this.base}: ${String(cause ?? error)}`);
    }
    let body: unknown;
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      body = undefined;
    }
    if (response.status === 200) {
      if (body === undefined) throw new ProtocolViolation(`${command}: the answer is not JSON: ${text.slice(0, 200)}`);
      return body;
    }
    if (isObject(body) && isObject(body.error)) throw errorFromWire(body.error, undefined, response.status);
    const code = CODE_OF_STATUS[response.status] ?? "INTERNAL";
    throw errorFromWire({ code, message: `HTTP ${response.status}: ${text.slice(0, 200)}` }, undefined, response.status);
  }

  /**
   * Stores a message in the channel's history and delivers it to its members
   * with `from: "server"`; resolves with its id. Always sent with an id (a
   * fresh one unless `options.id` is given), which the bus stores once:
   * repeating a call with the same id is safe.
   */
  async publish(room: string, channel: string, payload: unknown, options: { meta?: Meta; id?: string } = {}): Promise<string> {
    const args: Record<string, unknown> = { id: options.id ?? newId(), room, channel, payload };
    if (options.meta !== undefined) args.meta = options.meta;
    return String((await this.call("publish", args)).id);
  }

  /** A room-wide message to every connection in any channel of `room`, live only; resolves with the connections reached. */
  async broadcast(room: string, payload: unknown, options: { meta?: Meta } = {}): Promise<number> {
    const args: Record<string, unknown> = { room, payload };
    if (options.meta !== undefined) args.meta = options.meta;
    return Number((await this.call("broadcast", args)).delivered);
  }

  /**
   * A direct message to `to`: a client id, or `"user:NAME"` for every
   * connection of that user. Resolves with the connections reached; rejects
   * with {@link NotFound} when there is none.
   */
  async send(to: string, payload: unknown, options: { meta?: Meta } = {}): Promise<number> {
    const args: Record<string, unknown> = { to, payload };
    if (options.meta !== undefined) args.meta = options.meta;
    return Number((await this.call("send", args)).delivered);
  }

  /**
   * (admin key) Closes one client's connection, or every connection of
   * `user`, with `code` (4000..4999, server default 4000) after a
   * `disconnected` event carrying `reason`. Resolves with how many closed.
   */
  async disconnect(target: { clientId?: string; user?: string; code?: number; reason?: string }): Promise<number> {
    if ((target.clientId === undefined) === (target.user === undefined)) {
      throw new InvalidArgs("give exactly one of clientId and user");
    }
    const args: Record<string, unknown> =
      target.clientId !== undefined ? { client_id: target.clientId } : { user: target.user };
    if (target.code !== undefined) args.code = target.code;
    if (target.reason !== undefined) args.reason = target.reason;
    return Number((await this.call("disconnect", args)).disconnected);
  }

  /** One page of a channel's members; see {@link Client.presence}. */
  async presence(room: string, channel: string, options: { limit?: number; after?: string } = {}): Promise<Presence> {
    const args: Record<string, unknown> = { room, channel };
    if (options.limit !== undefined) args.limit = options.limit;
    if (options.after !== undefined) args.after = options.after;
    return presenceFromPayload(await this.call("presence", args));
  }

  /** A channel's connection count and distinct user count. */
  async presenceStats(room: string, channel: string): Promise<PresenceStats> {
    const p = await this.call("presence_stats", { room, channel });
    return { total: Number(p.total), users: Number(p.users) };
  }

  /**
   * (admin key) Joins the connected client `clientId` to a channel,
   * replaying what was stored after `since` first, as `join_channel`.
   */
  async subscribe(clientId: string, room: string, channel: string, options: { since?: string } = {}): Promise<JoinResult> {
    const args: Record<string, unknown> = { client_id: clientId, room, channel };
    if (options.since !== undefined) args.since = options.since;
    const p = await this.call("subscribe", args);
    return { room: String(p.room), channel: String(p.channel), members: Number(p.members), truncated: p.truncated === true };
  }

  /** (admin key) Takes `clientId` out of a channel (it gets `channel_left`); false if it was not a member. */
  async unsubscribe(clientId: string, room: string, channel: string): Promise<boolean> {
    return (await this.call("unsubscribe", { client_id: clientId, room, channel })).left === true;
  }

  /**
   * Up to 100 commands in one request, run in order. Resolves with each
   * command's payload or its typed error (returned, not thrown; its
   * `status` is the one the API gives that code), in order. Rejects only if
   * the batch itself is refused.
   */
  async batch(commands: readonly BatchCommand[]): Promise<(unknown | ArqonError)[]> {
    const items = commands.map((c) => ({ command: c.command, args: c.args ?? {} }));
    const payload = await this.call("batch", { commands: items });
    return (payload.results as unknown[]).map((result) => {
      if (isObject(result) && Object.keys(result).length === 1 && isObject(result.error) && "code" in result.error) {
        return errorFromWire(result.error, undefined, HTTP_STATUS[String(result.error.code)] ?? 500);
      }
      return result;
    });
  }
}
