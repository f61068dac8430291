/**
 * The client: one WebSocket connection at a time, kept alive and rejoined.
 *
 * Layout:
 *
 * - {@link Client} owns everything: the current link, the pending requests
 *   (keyed by request id), the joined channels with their replay cursors, the
 *   callbacks and the inbox that {@link Client.messages} reads.
 * - A *link* is one WebSocket connection and its watchdog timer, which
 *   declares the link dead after `heartbeatTimeoutMs` (default
 *   `2 x heartbeat_s`) without a frame from the server. Halfway through that
 *   silence it sends a `ping` command as a probe: browsers never show the
 *   server's WebSocket pings to JavaScript, so an idle but healthy link is
 *   told apart from a dead one by the probe's answer.
 * - When the current link dies, a reconnect loop opens a new one with
 *   exponential backoff and jitter, rejoins every channel with `since` = the
 *   last message id seen there, and only then lets requests through again.
 *
 * Retry policy when a link dies with requests in flight: requests whose repeat
 * gives the same answer (`ping`, `status`, `help`, `list_channels`,
 * `channel_info`, `history`, `presence`, `join_channel`, and `publish`, which the server
 * de-duplicates by its id) are sent again, with the same id, once the client
 * has reconnected. The others (`create_channel`, `delete_channel`,
 * `leave_channel` and everything sent through {@link Client.command}) fail
 * with {@link ConnectionLost}: they may or may not have been carried out.
 * {@link Client.send} is fire-and-forget and never retried.
 */

import { ZERO_ID, newId } from "./ids.js";
import {
  ArqonError,
  ClientClosed,
  ConnectFailed,
  ConnectionLost,
  Forbidden,
  InvalidArgs,
  InvalidEnvelope,
  InvalidId,
  InvalidName,
  NotFound,
  ProtocolViolation,
  RateLimited,
  RequestTimeout,
  Unauthorized,
  copyError,
  errorFromWire,
} from "./errors.js";
import { Inbox } from "./inbox.js";
import {
  channelInfoFromPayload,
  commandHelpFromPayload,
  messageFromEnvelope,
  presenceFromPayload,
  statusFromPayload,
  welcomeFromPayload,
  type ChannelInfo,
  type ChannelKey,
  type ChannelSummary,
  type CommandHelp,
  type Incoming,
  type JoinResult,
  type Message,
  type Presence,
  type Status,
  type Welcome,
} from "./models.js";
import { openSocket, resolveWebSocket, type Socket, type WebSocketConstructor } from "./socket.js";
import { browserEnvironment, type Environment } from "./environment.js";

/** What a token provider returns: the token, optionally with when it expires. */
export type TokenResult = string | { readonly token: string; readonly expiresAt?: number | Date };

/**
 * Called before every connection attempt (the first and each reconnect) for a
 * fresh credential. May be async (fetch it from your backend).
 */
export type TokenProvider = () => TokenResult | Promise<TokenResult>;

/** Where the client reports what it does; `console` works. Default: silent. */
export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
}

/** Options of {@link Client}; every one is optional. */
export interface ClientOptions {
  /**
   * A static token, or a function called for a fresh one before every
   * (re)connect. Sent as `Authorization: Bearer TOKEN` with the `ws` package
   * (Node), as `?token=TOKEN` with a standard WebSocket (browsers). When the
   * token's expiry is known (a JWT's `exp`, or `expiresAt` from the
   * provider), the client reconnects with a fresh token shortly before it
   * expires, and at once when the server says `token_expired`. Default: none.
   */
  token?: string | TokenProvider;
  /**
   * How long before a token's expiry the client reconnects with a fresh one,
   * in ms; at most a quarter of the token's lifetime is used. Default: `30000`.
   */
  tokenRefreshLeadMs?: number;
  /**
   * Milliseconds a request may take in all, reconnects and retries included,
   * before it fails with {@link RequestTimeout}; also bounds opening a
   * connection and waiting for its `welcome`. Default: `10000`.
   */
  requestTimeoutMs?: number;
  /**
   * Reconnect automatically when the connection drops. With `false` a drop
   * ends {@link Client.messages} with {@link ConnectionLost} and every later
   * call raises it. Default: `true`.
   */
  reconnect?: boolean;
  /**
   * Delay before the first reconnect attempt, in ms; it doubles on each
   * failed attempt, with jitter (each delay is drawn from `[d/2, d]`).
   * Default: `100`.
   */
  backoffInitialMs?: number;
  /** Cap on that delay, in ms. Default: `5000`. */
  backoffMaxMs?: number;
  /**
   * Milliseconds without any frame from the server after which the
   * connection is considered dead; a `ping` probe goes out halfway. Default:
   * `2 x heartbeat_s` from the server's `welcome`.
   */
  heartbeatTimeoutMs?: number;
  /**
   * Items buffered for {@link Client.messages} before the client stops
   * reading from the socket. Default: `10000`.
   */
  maxQueue?: number;
  /**
   * Buffer items for {@link Client.messages} / {@link Client.receive}. Set to
   * `false` when you only use callbacks ({@link Client.on}), so nothing
   * accumulates. Default: `true`.
   */
  queue?: boolean;
  /**
   * The WebSocket class to use. Default: the `ws` package in Node (if
   * installed), else the global `WebSocket`.
   */
  WebSocket?: WebSocketConstructor;
  /**
   * Network and page-visibility signals: reconnect at once when the browser
   * comes back online or the page becomes visible, probe the link when it
   * goes offline. Default: `navigator.onLine` and `document.visibilityState`
   * in a browser, nothing elsewhere; `null` turns it off.
   */
  environment?: Environment | null;
  /** Default: silent. */
  logger?: Logger;
}

/** Options of a single request. */
export interface RequestOptions {
  /** Overrides `requestTimeoutMs` for this call. */
  timeoutMs?: number;
}

/** Callback kinds of {@link Client.on}: an item kind, or `"*"` for every item. */
export type ItemKind = Incoming["kind"] | "*";
type ItemOf<K extends ItemKind> = K extends "*" ? Incoming : Extract<Incoming, { kind: K }>;

/** Message ids remembered per joined channel to drop a message seen twice.
 * Larger than the server's default history (1,000), so a full replay of a
 * channel's kept history is always covered. */
const DEDUPE_WINDOW = 2048;

/** Rejoin errors that make a repeat pointless: the channel is dropped and
 * reported in `Reconnected.failed`. */
const PERMANENT_JOIN_ERRORS = [NotFound, Forbidden, InvalidName, InvalidArgs, InvalidId];

/** How long {@link Client.close} waits for the closing handshake. */
const CLOSE_TIMEOUT_MS = 2000;

/** The shortest time between a connection and its token refresh. */
const MIN_REFRESH_DELAY_MS = 1000;

/** Internal: the link a request was sent on died before the answer came. */
const LINK_LOST = Symbol("link lost");

const SILENT: Logger = { debug() {}, info() {}, warn() {} };

/** A request waiting for its `response` or `error`. */
interface Pending {
  readonly link: Link;
  resolve(payload: unknown): void;
  reject(reason: unknown): void;
  /** Runs in the dispatcher, before any later frame is handled: join uses it
   * to start tracking a channel before its replay arrives. */
  readonly onResponse?: (payload: unknown) => void;
}

/** One WebSocket connection. */
class Link {
  socket!: Socket;
  welcome!: Welcome;
  readonly openedAt = Date.now();
  lastRx = Date.now();
  /** When the last probe went out (0: none since the last frame). */
  probedAt = 0;
  lastTick = Date.now();
  /** Ids of the probes in flight: their answers are not anyone's. */
  readonly probes = new Set<string>();
  /** Requests other than the rejoin wait for this. */
  ready = false;
  /** Set when a token refresh retires this link: new requests wait for the next. */
  draining = false;
  /** Reading is paused because the inbox is full. */
  blocked = false;
  lost = false;
  watchdog: ReturnType<typeof setInterval> | undefined;
  refresh: ReturnType<typeof setTimeout> | undefined;
  /** Resolves when the socket has closed (either side). */
  socketClosed!: Promise<void>;
  /** Until the welcome: where frames go. */
  onWelcome: ((frame: Record<string, unknown>) => void) | undefined;
  onEarlyClose: ((reason: string) => void) | undefined;
  tokenExpiresAt: number | undefined;
  tokenFetchedAt = Date.now();

}

/** A channel the user joined: where to resume, and what was already seen. */
class Subscription {
  /** Ids of recently handled messages, oldest first (a Set keeps insertion order). */
  private readonly recent = new Set<string>();
  /**
   * While a `channel_gap` repair is unanswered: the cursor stays at the gap's
   * `last_id`, and live copies are dropped, since the replay right after the
   * answer brings them in history's order.
   */
  repairing = false;
  /** Bumped per repair, so a stale answer does not end a newer one. */
  repairs = 0;
  /** The `since` of the latest join on the current link (the resume point when a gap's `last_id` is null). */
  joinedFrom: string;

  constructor(
    /** The id to pass as `since` when rejoining: the last message handled
     * in this channel, or the anchor taken when it was joined. */
    public cursor: string,
    /** True while the cursor is ZERO_ID because the channel was empty when
     * joined: a rejoin then replays everything kept, and the server's
     * `truncated: true` is expected, not a loss. */
    public zeroAnchor: boolean,
  ) {
    this.joinedFrom = cursor;
  }

  seen(id: string): boolean {
    return this.recent.has(id);
  }

  /** Marks an id as seen without moving the cursor (our own messages: the
   * sender never gets them live, so it must not get them in a replay). */
  remember(id: string): void {
    if (this.recent.has(id)) return;
    this.recent.add(id);
    if (this.recent.size > DEDUPE_WINDOW) {
      const oldest = this.recent.values().next().value;
      if (oldest !== undefined) this.recent.delete(oldest);
    }
  }

  /** A message of this channel was handled: resume after it. */
  record(id: string): void {
    this.cursor = id;
    this.zeroAnchor = false;
    this.remember(id);
  }
}

function keyOf(room: string, channel: string): string {
  return JSON.stringify([room, channel]);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A JWT's `exp`, in ms since the epoch, if `token` is a JWT that has one. */
export function jwtExpiry(token: string): number | undefined {
  const parts = token.split(".");
  if (parts.length !== 3) return undefined;
  try {
    const base64 = parts[1]!.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const claims = JSON.parse(atob(padded));
    return typeof claims?.exp === "number" ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * An ArqonBus client. Create it with {@link connect}, or `new Client(url)`
 * followed by `await client.start()`; end it with `await client.close()`.
 */
export class Client {
  readonly url: string;

  private readonly opts: Required<
    Pick<
      ClientOptions,
      "tokenRefreshLeadMs" | "requestTimeoutMs" | "reconnect" | "backoffInitialMs" | "backoffMaxMs" | "maxQueue" | "queue"
    >
  > &
    ClientOptions;
  private readonly log: Logger;
  private link: Link | undefined;
  private readonly pending = new Map<string, Pending>();
  /** Insertion-ordered: channels are rejoined in the order joined. */
  private readonly subs = new Map<string, { key: ChannelKey; sub: Subscription }>();
  private readonly inbox: Inbox | undefined;
  private readonly listeners = new Map<ItemKind, Set<(item: any) => void>>();
  private changeWaiters: Array<() => void> = [];
  private started: Promise<void> | undefined;
  private closed = false;
  private failure: ArqonError | undefined;
  private reconnecting = false;
  private reconnectCount = 0;
  private attempts = 0;
  /** Wakes the reconnect loop's backoff sleep (online / visible). */
  private wake: (() => void) | undefined;
  private readonly environment: Environment | null;
  private unsubscribeEnvironment: (() => void) | undefined;

  constructor(url: string, options: ClientOptions = {}) {
    const opts = {
      tokenRefreshLeadMs: 30_000,
      requestTimeoutMs: 10_000,
      reconnect: true,
      backoffInitialMs: 100,
      backoffMaxMs: 5_000,
      maxQueue: 10_000,
      queue: true,
      ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)),
    } as Client["opts"];
    if (!(opts.requestTimeoutMs > 0)) throw new RangeError("requestTimeoutMs must be positive");
    if (!(opts.backoffInitialMs >= 0 && opts.backoffMaxMs >= opts.backoffInitialMs)) {
      throw new RangeError("need 0 <= backoffInitialMs <= backoffMaxMs");
    }
    if (opts.heartbeatTimeoutMs !== undefined && !(opts.heartbeatTimeoutMs > 0)) {
      throw new RangeError("heartbeatTimeoutMs must be positive");
    }
    if (!(opts.maxQueue >= 1)) throw new RangeError("maxQueue must be at least 1");
    this.url = url;
    this.opts = opts;
    this.log = options.logger ?? SILENT;
    this.inbox = opts.queue ? new Inbox(opts.maxQueue, () => this.resumeReading()) : undefined;
    this.environment = options.environment === undefined ? browserEnvironment() : options.environment;
  }

  // ------------------------------------------------------------------ life

  /**
   * Connects (once) and waits for the server's `welcome`.
   *
   * @throws {@link Unauthorized} the server refused the credentials (HTTP 401; Node only).
   * @throws {@link ConnectFailed} the server could not be reached or did not
   *   speak the protocol within `requestTimeoutMs`.
   */
  start(): Promise<void> {
    if (this.closed) return Promise.reject(new ClientClosed("the client is closed"));
    if (this.started === undefined) {
      this.started = (async () => {
        const link = await this.open();
        if (this.closed) {
          this.dropLink(link, "client closed", undefined, true);
          throw new ClientClosed("the client is closed");
        }
        link.ready = true;
        this.link = link;
        this.unsubscribeEnvironment = this.environment?.subscribe((change) => this.onEnvironment(change));
      })();
      // A failed start may be tried again.
      this.started.catch(() => {
        this.started = undefined;
      });
    }
    return this.started;
  }

  /**
   * Closes the connection; pending requests fail with {@link ClientClosed},
   * and {@link messages} ends after the items already received. Safe to call
   * more than once.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribeEnvironment?.();
    this.wake?.();
    this.notify();
    const link = this.link;
    if (link !== undefined && !link.lost) {
      this.dropLink(link, "client closed", undefined, true);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([link.socketClosed, new Promise((resolve) => (timer = setTimeout(resolve, CLOSE_TIMEOUT_MS)))]);
      clearTimeout(timer);
      link.socket.abort();
    }
    for (const [rid, pending] of this.pending) {
      pending.reject(new ClientClosed("the client is closed", { requestId: rid }));
    }
    this.pending.clear();
    this.inbox?.end(null);
  }

  // ------------------------------------------------------------ properties

  /** The current connection's `welcome` (undefined before connecting). */
  get welcome(): Welcome | undefined {
    return this.link?.welcome;
  }

  /** This connection's client id (a new one after each reconnect). */
  get clientId(): string | undefined {
    return this.link?.welcome.clientId;
  }

  /** The role the server gave this connection. */
  get role(): string | undefined {
    return this.link?.welcome.role;
  }

  /** Whether a connection is up and ready for requests. */
  get connected(): boolean {
    const link = this.link;
    return link !== undefined && link.ready && !link.lost && !this.closed;
  }

  /** How many times the client has reconnected. */
  get reconnects(): number {
    return this.reconnectCount;
  }

  /** The channels joined through this client (rejoined on reconnect). */
  get channels(): ChannelKey[] {
    return [...this.subs.values()].map((s) => s.key);
  }

  // ------------------------------------------------------------- incoming

  /**
   * Calls `callback` for every item of `kind` (`"message"`, `"event"`,
   * `"error"`, `"disconnected"`, `"reconnected"`, `"resynced"`, or `"*"` for all), in
   * order, as it arrives, before it is queued for {@link messages}. Returns a
   * function that removes the callback. A callback that throws is logged and
   * does not stop delivery.
   */
  on<K extends ItemKind>(kind: K, callback: (item: ItemOf<K>) => void): () => void {
    let set = this.listeners.get(kind);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(kind, set);
    }
    set.add(callback);
    return () => set!.delete(callback);
  }

  /**
   * Yields delivered messages, events and the SDK's notices, in order.
   * Several consumers may iterate at once; each item goes to one of them.
   * The iteration ends after {@link close} (once the items already received
   * are yielded) and throws the error that stopped the client otherwise
   * (e.g. {@link ConnectionLost} with `reconnect: false`).
   */
  async *messages(): AsyncGenerator<Incoming, void, undefined> {
    while (true) {
      let item: Incoming;
      try {
        item = await this.receive();
      } catch (e) {
        if (e instanceof ClientClosed) return;
        throw e;
      }
      yield item;
    }
  }

  /** Iterating the client iterates {@link messages}. */
  [Symbol.asyncIterator](): AsyncGenerator<Incoming, void, undefined> {
    return this.messages();
  }

  /**
   * The next item {@link messages} would yield.
   *
   * @throws {@link ClientClosed} the client was closed and everything was received.
   * @throws {@link RequestTimeout} nothing arrived within `timeoutMs`.
   */
  receive(timeoutMs?: number): Promise<Incoming> {
    if (this.inbox === undefined) {
      return Promise.reject(new ClientClosed("this client was made with `queue: false`: use callbacks (on)"));
    }
    return this.inbox.get(timeoutMs);
  }

  // -------------------------------------------------------------- requests

  /**
   * Sends a command and resolves with the response's `payload`.
   *
   * @param retry send again (same id) after a reconnect if the connection
   *   drops before the answer; only for commands safe to repeat.
   * @param id the frame's id; default: a fresh one.
   * @throws {@link ArqonError} the typed error the server answered with.
   * @throws {@link RequestTimeout} no answer within the timeout.
   * @throws {@link ConnectionLost} the connection dropped and `retry` is false
   *   (or reconnecting is off).
   * @throws {@link ClientClosed} the client is closed.
   */
  async request(
    command: string,
    args?: Record<string, unknown>,
    options: RequestOptions & { retry?: boolean; id?: string; onResponse?: (payload: unknown) => void } = {},
  ): Promise<any> {
    const rid = options.id ?? newId();
    const limit = options.timeoutMs ?? this.opts.requestTimeoutMs;
    const frame: Record<string, unknown> = { type: "command", id: rid, command };
    if (args !== undefined) frame.args = args;
    const text = JSON.stringify(frame);
    let timedOut = false;

    const attempt = async (): Promise<unknown> => {
      while (true) {
        const link = await this.readyLink();
        if (timedOut) throw LINK_LOST;
        try {
          return await this.exchange(link, rid, text, options.onResponse);
        } catch (e) {
          if (e !== LINK_LOST) throw e;
          if (this.closed) throw new ClientClosed(`client closed during ${command}`, { requestId: rid });
          if (!options.retry || !this.opts.reconnect) {
            throw new ConnectionLost(`connection lost before the answer to ${command}`, { requestId: rid });
          }
          this.log.debug(`retrying ${command} (${rid}) after reconnect`);
        }
      }
    };

    const work = attempt();
    work.catch(() => {}); // settles after a timeout with nobody listening
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        timedOut = true;
        this.pending.delete(rid);
        reject(new RequestTimeout(`no answer to ${command} within ${limit} ms`, { requestId: rid }));
      }, limit);
    });
    try {
      return await Promise.race([work, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Sends any command; resolves with the payload. Never retried after a reconnect. */
  command(name: string, args?: Record<string, unknown>, options: RequestOptions = {}): Promise<any> {
    return this.request(name, args, options);
  }

  /** Round trip to the server; resolves with the round-trip time in ms. */
  async ping(options: RequestOptions = {}): Promise<number> {
    const started = performance.now();
    const payload = await this.request("ping", undefined, { ...options, retry: true });
    if (!(isObject(payload) && payload.pong === true)) {
      throw new ProtocolViolation(`unexpected ping answer: ${JSON.stringify(payload)}`);
    }
    return performance.now() - started;
  }

  /** The server's version, uptime, counts and storage health. */
  async status(options: RequestOptions = {}): Promise<Status> {
    return statusFromPayload(await this.request("status", undefined, { ...options, retry: true }));
  }

  /** Every command the server knows, with whether this client may use it. */
  async help(options: RequestOptions = {}): Promise<CommandHelp[]> {
    const payload = await this.request("help", undefined, { ...options, retry: true });
    return (payload.commands as Record<string, unknown>[]).map(commandHelpFromPayload);
  }

  /** Creates a channel (role `user`); `false` if it already existed. */
  async createChannel(room: string, channel: string, options: RequestOptions = {}): Promise<boolean> {
    const payload = await this.request("create_channel", { room, channel }, options);
    return payload.created === true;
  }

  /** Deletes a channel (role `admin`); its members get `channel_deleted`. */
  async deleteChannel(room: string, channel: string, options: RequestOptions = {}): Promise<boolean> {
    const payload = await this.request("delete_channel", { room, channel }, options);
    this.subs.delete(keyOf(room, channel));
    return payload.deleted === true;
  }

  /**
   * Joins a channel; its messages then arrive through {@link messages} and
   * the callbacks.
   *
   * With `since` (a message id), every stored message after it is delivered
   * first. Without it, delivery starts with the messages stored from this
   * call on. Either way the channel is rejoined after a reconnect from the
   * last message seen in it, so nothing the channel still keeps is missed or
   * delivered twice.
   */
  async join(room: string, channel: string, options: RequestOptions & { since?: string } = {}): Promise<JoinResult> {
    const key = keyOf(room, channel);
    let anchor = options.since;
    if (anchor === undefined) {
      // Anchor the replay cursor now: the channel's newest message, or
      // ZERO_ID (= everything kept) if it has none or does not exist yet.
      // Joining with `since` makes the server replay whatever was stored
      // between this look-up and the join, so there is no gap.
      try {
        anchor = (await this.channelInfo(room, channel, options)).lastId ?? ZERO_ID;
      } catch (e) {
        if (!(e instanceof NotFound)) throw e;
        anchor = ZERO_ID;
      }
    }
    const cursor = anchor;
    const track = () => {
      const existing = this.subs.get(key);
      if (existing === undefined) {
        const sub = new Subscription(cursor, options.since === undefined && cursor === ZERO_ID);
        this.subs.set(key, { key: [room, channel], sub });
      }
    };
    const payload = await this.request(
      "join_channel",
      { room, channel, since: anchor },
      { timeoutMs: options.timeoutMs, retry: true, onResponse: track },
    );
    return {
      room: typeof payload.room === "string" ? payload.room : room,
      channel: typeof payload.channel === "string" ? payload.channel : channel,
      members: typeof payload.members === "number" ? payload.members : 0,
      truncated: options.since !== undefined && payload.truncated === true,
    };
  }

  /** Alias of {@link join}, named as the wire command. */
  joinChannel(room: string, channel: string, options: RequestOptions & { since?: string } = {}): Promise<JoinResult> {
    return this.join(room, channel, options);
  }

  /**
   * Leaves a channel; `false` if this connection was not a member. The
   * channel is forgotten at once (not rejoined after a reconnect), even if
   * the request then fails.
   */
  async leave(room: string, channel: string, options: RequestOptions = {}): Promise<boolean> {
    this.subs.delete(keyOf(room, channel));
    const payload = await this.request("leave_channel", { room, channel }, options);
    return payload.left === true;
  }

  /** Alias of {@link leave}, named as the wire command. */
  leaveChannel(room: string, channel: string, options: RequestOptions = {}): Promise<boolean> {
    return this.leave(room, channel, options);
  }

  /** Every channel, or those of `room`, with member counts. */
  async listChannels(room?: string, options: RequestOptions = {}): Promise<ChannelSummary[]> {
    const payload = await this.request("list_channels", room !== undefined ? { room } : undefined, {
      ...options,
      retry: true,
    });
    return (payload.channels as Record<string, unknown>[]).map((c) => ({
      room: String(c.room),
      channel: String(c.channel),
      members: Number(c.members),
    }));
  }

  /** A channel's member count, creation time, stored count and last id. */
  async channelInfo(room: string, channel: string, options: RequestOptions = {}): Promise<ChannelInfo> {
    return channelInfoFromPayload(await this.request("channel_info", { room, channel }, { ...options, retry: true }));
  }

  /**
   * Who is in a channel: at most `limit` (1..1000, server default 100)
   * members ordered by client id, after the client id `after` (the last one
   * of the previous page), with the channel's `total` connections and
   * distinct `users`. A room whose `presence` option is off rejects with
   * {@link Forbidden}.
   */
  async presence(
    room: string,
    channel: string,
    options: RequestOptions & { limit?: number; after?: string } = {},
  ): Promise<Presence> {
    const args: Record<string, unknown> = { room, channel };
    if (options.limit !== undefined) args.limit = options.limit;
    if (options.after !== undefined) args.after = options.after;
    return presenceFromPayload(await this.request("presence", args, { timeoutMs: options.timeoutMs, retry: true }));
  }

  /**
   * The newest `limit` (1..1000, server default 50) stored messages, older
   * than `before` if given, oldest first.
   */
  async history(
    room: string,
    channel: string,
    options: RequestOptions & { limit?: number; before?: string } = {},
  ): Promise<Message[]> {
    const args: Record<string, unknown> = { room, channel };
    if (options.limit !== undefined) args.limit = options.limit;
    if (options.before !== undefined) args.before = options.before;
    const payload = await this.request("history", args, { timeoutMs: options.timeoutMs, retry: true });
    return (payload.messages as Record<string, unknown>[]).map(messageFromEnvelope);
  }

  /**
   * Publishes to a channel (role `user`) and resolves with the message id
   * once the server has stored it.
   *
   * The request's id becomes the message's id, so it is safe to retry: the
   * SDK resends it with the same id after a reconnect, and the server stores
   * and delivers it only once. Pass your own `id` (from {@link newId}) to make
   * your own retries idempotent too.
   */
  async publish(
    room: string,
    channel: string,
    payload: unknown,
    options: RequestOptions & { meta?: Record<string, string>; id?: string } = {},
  ): Promise<string> {
    const args: Record<string, unknown> = { room, channel, payload };
    if (options.meta !== undefined) args.meta = options.meta;
    const rid = options.id ?? newId();
    const key = keyOf(room, channel);
    // The server does not send us our own message; keep a replay after a
    // reconnect from sending it either.
    this.subs.get(key)?.sub.remember(rid);
    const advance = (result: unknown) => {
      // Runs in the dispatcher: every message of the channel stored before
      // ours was queued to us before this response (the server appends and
      // delivers in one order per channel), so resuming after ours skips
      // nothing, and the replay gets shorter.
      const current = this.subs.get(key);
      if (current !== undefined && isObject(result) && typeof result.id === "string") current.sub.record(result.id);
    };
    const result = await this.request("publish", args, {
      timeoutMs: options.timeoutMs,
      retry: true,
      id: rid,
      onResponse: advance,
    });
    return String(result.id);
  }

  /**
   * Sends a message without waiting for any confirmation; resolves with its
   * id once it is written to the socket.
   *
   * Target: `room` + `channel` (the channel's members), `room` alone (every
   * member of the room's channels) or `to` (one client). A failure comes back
   * later as an `"error"` item with `error.requestId` = the returned id.
   * Waits up to the request timeout for a connection; never retried.
   */
  async send(
    target: { room?: string; channel?: string; to?: string; payload?: unknown; meta?: Record<string, string>; id?: string },
    options: RequestOptions = {},
  ): Promise<string> {
    const { room, channel, to } = target;
    if (to !== undefined && (room !== undefined || channel !== undefined)) {
      throw new InvalidEnvelope("`to` cannot be combined with `room` or `channel`");
    }
    if (to === undefined && room === undefined) {
      throw new InvalidEnvelope("a message needs `room` (with or without `channel`) or `to`");
    }
    if (channel !== undefined && room === undefined) throw new InvalidEnvelope("`channel` needs `room`");
    const rid = target.id ?? newId();
    const frame: Record<string, unknown> = { type: "message", id: rid };
    if (room !== undefined) frame.room = room;
    if (channel !== undefined) frame.channel = channel;
    if (to !== undefined) frame.to = to;
    if ("payload" in target) frame.payload = target.payload;
    if (target.meta !== undefined) frame.meta = target.meta;
    if (room !== undefined && channel !== undefined) {
      this.subs.get(keyOf(room, channel))?.sub.remember(rid); // never replayed back to us (see publish)
    }
    const limit = options.timeoutMs ?? this.opts.requestTimeoutMs;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const ready = this.readyLink();
    ready.catch(() => {});
    const link = await Promise.race([
      ready,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new ConnectionLost(`not connected within ${limit} ms`, { requestId: rid })),
          limit,
        );
      }),
    ]).finally(() => clearTimeout(timer));
    if (!link.socket.send(JSON.stringify(frame))) {
      throw new ConnectionLost("connection lost while sending", { requestId: rid });
    }
    return rid;
  }

  // ------------------------------------------------------------- internals

  private emit(item: Incoming): void {
    for (const kind of [item.kind, "*"] as const) {
      const set = this.listeners.get(kind);
      if (set === undefined) continue;
      for (const callback of [...set]) {
        try {
          callback(item);
        } catch (e) {
          this.log.warn(`arqonbus: a ${kind} callback threw: ${(e as Error)?.stack ?? e}`);
        }
      }
    }
    this.inbox?.push(item);
  }

  /** Delivers what the server sent on `link`, with backpressure. */
  private deliver(link: Link, item: Incoming): void {
    this.emit(item);
    const inbox = this.inbox;
    if (inbox === undefined || !inbox.full() || link.blocked || link.lost) return;
    if (link.socket.pause()) {
      link.blocked = true;
      this.log.debug("inbox full: reading paused");
    } else {
      // A standard WebSocket cannot be paused: drop the link and resume it
      // with `since` once the consumer has caught up (the reconnect loop
      // waits for room in the inbox). Only channel messages are replayed.
      this.dropLink(link, "inbox full: the consumer is behind", undefined, false);
    }
  }

  /** The inbox drained to half: read again. */
  private resumeReading(): void {
    const link = this.link;
    if (link !== undefined && link.blocked && !link.lost) {
      link.blocked = false;
      link.lastRx = Date.now();
      link.socket.resume();
    }
  }

  /** Wakes everything waiting in {@link readyLink}. */
  private notify(): void {
    for (const waiter of this.changeWaiters.splice(0)) waiter();
  }

  private terminalError(): ArqonError | undefined {
    if (this.closed) return new ClientClosed("the client is closed");
    if (this.failure !== undefined) return copyError(this.failure);
    if (this.started === undefined) return new ClientClosed("the client is not started: use `await connect(...)`");
    return undefined;
  }

  /** The current link once it is ready (connected and rejoined). */
  private async readyLink(): Promise<Link> {
    while (true) {
      const error = this.terminalError();
      if (error !== undefined) throw error;
      const link = this.link;
      if (link !== undefined && link.ready && !link.lost && !link.draining) return link;
      if (this.link === undefined) await this.started;
      else await new Promise<void>((resolve) => this.changeWaiters.push(resolve));
    }
  }

  /** Sends one request frame on `link` and waits for its answer. */
  private exchange(link: Link, rid: string, text: string, onResponse?: (payload: unknown) => void): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (link.lost) {
        reject(LINK_LOST);
        return;
      }
      const entry: Pending = {
        link,
        resolve: (payload) => {
          if (this.pending.get(rid) === entry) this.pending.delete(rid);
          resolve(payload);
        },
        reject: (reason) => {
          if (this.pending.get(rid) === entry) this.pending.delete(rid);
          reject(reason);
        },
        onResponse,
      };
      this.pending.set(rid, entry);
      if (!link.socket.send(text)) entry.reject(LINK_LOST);
    });
  }

  private async fetchToken(): Promise<{ token: string | undefined; expiresAt: number | undefined }> {
    const source = this.opts.token;
    if (source === undefined) return { token: undefined, expiresAt: undefined };
    let result: TokenResult;
    if (typeof source === "function") {
      try {
        result = await source();
      } catch (e) {
        throw new ConnectFailed(`the token provider failed: ${(e as Error)?.message ?? e}`);
      }
    } else {
      result = source;
    }
    const token = typeof result === "string" ? result : result.token;
    let expiresAt = typeof result === "string" ? undefined : result.expiresAt;
    if (expiresAt instanceof Date) expiresAt = expiresAt.getTime();
    return { token, expiresAt: expiresAt ?? jwtExpiry(token) };
  }

  /** Opens a connection and reads its `welcome`; starts its watchdog. */
  private async open(): Promise<Link> {
    const ctor = await resolveWebSocket(this.opts.WebSocket);
    const { token, expiresAt } = await this.fetchToken();
    const link = new Link();
    link.tokenExpiresAt = expiresAt;
    let socketClosed!: () => void;
    link.socketClosed = new Promise<void>((resolve) => (socketClosed = resolve));
    const welcome = new Promise<Record<string, unknown>>((resolve, reject) => {
      link.onWelcome = resolve;
      link.onEarlyClose = (reason) => reject(new ConnectFailed(`no welcome from ${this.url}: ${reason}`));
    });
    welcome.catch(() => {});
    link.socket = await openSocket(ctor, this.url, token, this.opts.requestTimeoutMs, {
      frame: (text) => this.onFrame(link, text),
      alive: () => {
        link.lastRx = Date.now();
      },
      closed: (code, reason) => {
        socketClosed();
        if (link.onEarlyClose !== undefined) link.onEarlyClose(reason);
        else this.dropLink(link, reason, code, false);
      },
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    let payload: Record<string, unknown>;
    try {
      payload = await Promise.race([
        welcome,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new ConnectFailed(`no welcome from ${this.url} within ${this.opts.requestTimeoutMs} ms`)),
            this.opts.requestTimeoutMs,
          );
        }),
      ]);
    } catch (e) {
      link.socket.abort();
      throw e instanceof ConnectFailed ? e : new ConnectFailed(String((e as Error)?.message ?? e));
    } finally {
      clearTimeout(timer);
      link.onWelcome = undefined;
      link.onEarlyClose = undefined;
    }
    link.welcome = welcomeFromPayload(payload);
    link.lastRx = Date.now();
    this.startWatchdog(link);
    this.scheduleRefresh(link);
    this.log.debug(`connected to ${this.url} as ${link.welcome.clientId}`);
    return link;
  }

  private onFrame(link: Link, text: string): void {
    if (link.lost) return;
    let frame: unknown;
    try {
      frame = JSON.parse(text);
    } catch {
      this.log.warn(`arqonbus: ignoring a frame that is not JSON: ${text.slice(0, 200)}`);
      return;
    }
    if (!isObject(frame)) return;
    if (link.onWelcome !== undefined) {
      const payload = frame.payload;
      if (frame.type === "event" && isObject(payload) && payload.event === "welcome") {
        link.onWelcome(payload);
      } else {
        link.onEarlyClose?.(`expected the welcome event first, got ${text.slice(0, 200)}`);
      }
      return;
    }
    this.dispatch(link, frame);
  }

  private dispatch(link: Link, frame: Record<string, unknown>): void {
    const kind = frame.type;
    if (kind === "response" || kind === "error") {
      const rid = typeof frame.request_id === "string" ? frame.request_id : undefined;
      if (rid !== undefined && link.probes.delete(rid)) return; // a probe's answer: the link is alive
      const pending = rid !== undefined ? this.pending.get(rid) : undefined;
      if (kind === "response") {
        if (pending !== undefined && pending.link === link) {
          const payload = frame.payload;
          if (pending.onResponse !== undefined) {
            try {
              pending.onResponse(payload);
            } catch (e) {
              this.log.warn(`arqonbus: response hook failed: ${e}`);
            }
          }
          pending.resolve(payload);
        }
        // else: the answer to a request that gave up; nobody wants it.
        return;
      }
      const error = errorFromWire(frame.error, rid);
      if (pending !== undefined && pending.link === link) pending.reject(error);
      else this.deliver(link, { kind: "error", error });
    } else if (kind === "message") {
      const message = messageFromEnvelope(frame);
      const entry =
        message.room !== undefined && message.channel !== undefined
          ? this.subs.get(keyOf(message.room, message.channel))
          : undefined;
      if (entry !== undefined && entry.sub.seen(message.id)) {
        this.log.debug(`dropping duplicate ${message.id} in ${message.room}/${message.channel}`);
        return;
      }
      if (entry !== undefined && entry.sub.repairing) {
        this.log.debug(`dropping ${message.id} in ${message.room}/${message.channel}: the gap repair's replay brings it`);
        return;
      }
      entry?.sub.record(message.id);
      this.deliver(link, message);
    } else if (kind === "event") {
      const payload = isObject(frame.payload) ? frame.payload : { event: null, value: frame.payload };
      const name = String(payload.event);
      if (name === "welcome") return; // handled in open(); not part of the stream
      // Deleted, or the application's backend took this client out (server
      // API `unsubscribe`): not rejoined any more.
      const gone = name === "channel_deleted" || name === "channel_left";
      if (gone && typeof payload.room === "string" && typeof payload.channel === "string") {
        this.subs.delete(keyOf(payload.room, payload.channel));
      }
      const event: Incoming = {
        kind: "event",
        name,
        payload,
        ...(typeof frame.id === "string" ? { id: frame.id } : {}),
        ...(typeof frame.timestamp === "string" ? { timestamp: frame.timestamp } : {}),
      };
      this.deliver(link, event);
      if (name === "channel_gap") this.repairGap(link, payload);
      if (name === "token_expired") void this.retire(link, "token expired", 1000);
    } else {
      this.log.warn(`arqonbus: ignoring a frame of unknown type ${JSON.stringify(kind)}`);
    }
  }

  /**
   * `channel_gap`: what this connection received in a channel after
   * `last_id` is not the channel's history (a cluster node lost Redis). Join
   * again with `since = last_id` (or from where this connection joined, when
   * it is null): the replay is the channel's order from there, and ids
   * already delivered are skipped. Until the answer the cursor stays at the
   * gap and live copies are dropped (the replay brings them, in order). The
   * event itself has reached the user first. A repair that fails reconnects,
   * and the rejoin starts from the cursor still held at the gap.
   */
  private repairGap(link: Link, payload: Record<string, unknown>): void {
    const { room, channel } = payload;
    if (typeof room !== "string" || typeof channel !== "string") return;
    const entry = this.subs.get(keyOf(room, channel));
    if (entry === undefined) return;
    const sub = entry.sub;
    const since = typeof payload.last_id === "string" ? payload.last_id : sub.joinedFrom;
    sub.cursor = since;
    sub.zeroAnchor = since === ZERO_ID;
    sub.repairing = true;
    const generation = ++sub.repairs;
    sub.joinedFrom = since;
    const rid = newId();
    const text = JSON.stringify({ type: "command", id: rid, command: "join_channel", args: { room, channel, since } });
    // The notice goes out from the response hook, so it comes before the
    // replay's messages, which may be parsed in the same tick.
    this.exchange(link, rid, text, (result) => {
      if (sub.repairs !== generation) return;
      sub.repairing = false;
      const truncated = isObject(result) && result.truncated === true && !sub.zeroAnchor;
      this.emit({ kind: "resynced", room, channel, since, truncated });
    }).catch((e) => {
      // LINK_LOST: the rejoin after the reconnect resumes from the same cursor.
      if (e === LINK_LOST || link.lost) return;
      this.log.warn(`arqonbus: could not repair the gap in ${room}/${channel}: ${(e as Error)?.message ?? e}`);
      this.dropLink(link, `repairing ${room}/${channel} failed: ${(e as Error)?.message ?? e}`, undefined, false);
    });
  }

  private deadAfter(link: Link): number {
    return this.opts.heartbeatTimeoutMs ?? 2000 * link.welcome.heartbeatS;
  }

  /**
   * The watchdog: probes the link after half the dead-after silence and
   * declares it dead after all of it. A tick that comes late (a background
   * tab's throttled timers, a suspended laptop) is no evidence against the
   * server: it probes and gives the answer half the deadline.
   */
  private startWatchdog(link: Link): void {
    const limit = this.deadAfter(link);
    const period = Math.max(50, Math.min(1000, limit / 8));
    link.lastTick = Date.now();
    link.watchdog = setInterval(() => {
      if (link.lost) {
        clearInterval(link.watchdog);
        return;
      }
      const now = Date.now();
      const late = now - link.lastTick > Math.max(4 * period, limit / 2);
      link.lastTick = now;
      if (link.blocked) {
        link.lastRx = now; // the silence is the consumer's doing, not the server's
        return;
      }
      if (late) link.lastRx = Math.max(link.lastRx, now - limit / 2);
      const silent = now - link.lastRx;
      if (silent > limit) {
        this.log.warn(`arqonbus: no frame from ${this.url} for ${(silent / 1000).toFixed(1)} s: reconnecting`);
        this.dropLink(link, `no frame from the server for ${(silent / 1000).toFixed(1)} s`, undefined, false);
      } else if (silent > limit / 2 && link.probedAt <= link.lastRx) {
        this.probe(link);
      }
    }, period);
  }

  /** Sends a `ping` whose answer only shows that the link is alive. */
  private probe(link: Link): void {
    if (link.lost || link.onWelcome !== undefined) return;
    const rid = newId();
    link.probes.add(rid);
    link.probedAt = Date.now();
    link.socket.send(JSON.stringify({ type: "command", id: rid, command: "ping" }));
  }

  /** Arms the token refresh: a new connection with a fresh token before this one's expires. */
  private scheduleRefresh(link: Link): void {
    const expiresAt = link.tokenExpiresAt;
    if (expiresAt === undefined || typeof this.opts.token !== "function") return;
    const lifetime = Math.max(0, expiresAt - link.tokenFetchedAt);
    const lead = Math.min(this.opts.tokenRefreshLeadMs, lifetime / 4);
    // At least a second apart, so that a provider handing out a token about
    // to expire (or a clock far off) cannot make the client reconnect in a loop.
    const delay = Math.min(2 ** 31 - 1, Math.max(MIN_REFRESH_DELAY_MS, expiresAt - lead - Date.now()));
    link.refresh = setTimeout(() => void this.retire(link, "token refresh", this.opts.requestTimeoutMs), delay);
  }

  /**
   * Replaces `link` on purpose (token refresh or expiry): new requests wait
   * for the next link, those in flight get up to `drainMs` to be answered,
   * then the link is closed and the client reconnects at once.
   */
  private async retire(link: Link, reason: string, drainMs: number): Promise<void> {
    if (link.lost || link.draining || link !== this.link) return;
    link.draining = true;
    const deadline = Date.now() + drainMs;
    while (!link.lost && Date.now() < deadline && [...this.pending.values()].some((p) => p.link === link)) {
      await sleep(20);
    }
    if (link.lost) return;
    this.log.info(`arqonbus: ${reason}: reconnecting`);
    this.dropLink(link, reason, undefined, true, true);
  }

  /** Stops `link` and its timers; starts the reconnect (or fails the client) if it was the current link. */
  private dropLink(link: Link, reason: string, code: number | undefined, graceful: boolean, immediate = false): void {
    if (link.lost) return;
    link.lost = true;
    clearInterval(link.watchdog);
    clearTimeout(link.refresh);
    if (graceful) link.socket.close(1000, "");
    else link.socket.abort();
    for (const pending of [...this.pending.values()]) {
      if (pending.link === link) pending.reject(LINK_LOST);
    }
    if (link !== this.link || this.closed) return;
    if (this.reconnecting) return; // a candidate died while rejoining: the loop carries on
    this.log.info(`arqonbus: connection to ${this.url} lost: ${reason}`);
    if (!this.opts.reconnect) {
      this.fail(new ConnectionLost(`connection lost: ${reason}`));
      return;
    }
    this.emit({ kind: "disconnected", reason, ...(code !== undefined ? { code } : {}) });
    void this.reconnectLoop(link, immediate);
  }

  /** Stops the client for good with `error`. */
  private fail(error: ArqonError): void {
    this.log.warn(`arqonbus: client stopped: ${error.message}`);
    this.failure = error;
    this.notify();
    this.inbox?.end(error);
  }

  private backoff(attempt: number): number {
    const ceiling = Math.min(this.opts.backoffMaxMs, this.opts.backoffInitialMs * 2 ** Math.min(attempt - 1, 30));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  /** Sleeps `ms`, or less if woken (back online, page visible, client closed). */
  private pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    }).finally(() => {
      this.wake = undefined;
    }) as Promise<void>;
  }

  private async reconnectLoop(old: Link, immediate: boolean): Promise<void> {
    this.reconnecting = true;
    try {
      // A link that died young does not reset the backoff, so a server that
      // accepts and drops at once is not hammered.
      if (Date.now() - old.openedAt >= this.opts.backoffMaxMs) this.attempts = 0;
      let first = true;
      while (!this.closed) {
        this.attempts++;
        const offline = this.environment !== null && !this.environment.isOnline();
        const delay = first && immediate ? 0 : offline ? this.opts.backoffMaxMs : this.backoff(this.attempts);
        first = false;
        if (delay > 0) await this.pause(delay);
        if (this.inbox !== undefined) await this.inbox.waitForSpace();
        if (this.closed) return;
        let candidate: Link;
        try {
          candidate = await this.open();
        } catch (e) {
          if (e instanceof Unauthorized) {
            this.fail(e);
            return;
          }
          this.log.info(`arqonbus: reconnect attempt ${this.attempts} failed: ${(e as Error)?.message ?? e}`);
          continue;
        }
        if (this.closed) {
          candidate.lost = true;
          candidate.socket.abort();
          return;
        }
        this.link = candidate;
        let outcome: Awaited<ReturnType<Client["rejoin"]>>;
        try {
          outcome = await this.rejoin(candidate);
        } catch (e) {
          if (e !== LINK_LOST) throw e;
          this.log.info("arqonbus: connection lost again while rejoining");
          continue;
        }
        if (candidate.lost) continue;
        candidate.ready = true;
        this.reconnectCount++;
        const attempts = this.attempts;
        this.reconnecting = false;
        this.notify();
        this.emit({ kind: "reconnected", attempts, clientId: candidate.welcome.clientId, ...outcome });
        this.log.info(`arqonbus: reconnected to ${this.url} after ${attempts} attempt(s)`);
        return;
      }
    } catch (e) {
      // A bug; stop loudly rather than hang.
      this.fail(new ConnectionLost(`reconnecting failed: ${(e as Error)?.stack ?? e}`));
    } finally {
      this.reconnecting = false;
    }
  }

  /** Joins every tracked channel again on `link`, each from its cursor. */
  private async rejoin(link: Link): Promise<{
    rejoined: ChannelKey[];
    truncated: ChannelKey[];
    failed: (readonly [ChannelKey, ArqonError])[];
  }> {
    const rejoined: ChannelKey[] = [];
    const truncated: ChannelKey[] = [];
    const failed: (readonly [ChannelKey, ArqonError])[] = [];
    for (const [id, entry] of [...this.subs]) {
      const { key, sub } = entry;
      while (this.subs.get(id) === entry) {
        // else: left meanwhile
        const zeroAnchor = sub.zeroAnchor;
        const since = sub.cursor;
        sub.joinedFrom = since;
        const rid = newId();
        const text = JSON.stringify({
          type: "command",
          id: rid,
          command: "join_channel",
          args: { room: key[0], channel: key[1], since },
        });
        let payload: unknown;
        let timer: ReturnType<typeof setTimeout> | undefined;
        try {
          payload = await Promise.race([
            this.exchange(link, rid, text, () => {
              sub.repairing = false; // the replay that follows is the channel's order
            }),
            new Promise<never>((_, reject) => {
              timer = setTimeout(() => reject(new RequestTimeout("no answer to join_channel while rejoining")), this.opts.requestTimeoutMs);
            }),
          ]);
        } catch (e) {
          if (e === LINK_LOST) throw e;
          if (e instanceof RequestTimeout) {
            this.dropLink(link, e.text, undefined, false);
            throw LINK_LOST;
          }
          if (e instanceof RateLimited) {
            // Not processed: try the same channel again when allowed.
            await sleep(Math.max(e.retryAfterMs ?? 100, 10));
            if (link.lost) throw LINK_LOST;
            continue;
          }
          if (PERMANENT_JOIN_ERRORS.some((cls) => e instanceof cls)) {
            this.log.warn(`arqonbus: could not rejoin ${key[0]}/${key[1]}: ${(e as Error).message}`);
            this.subs.delete(id);
            failed.push([key, e as ArqonError]);
            break;
          }
          // Transient (storage unavailable, internal error...): keep the
          // channel and try the whole reconnect again later.
          this.dropLink(link, `rejoining ${key[0]}/${key[1]} failed: ${(e as Error)?.message ?? e}`, undefined, false);
          throw LINK_LOST;
        } finally {
          clearTimeout(timer);
        }
        rejoined.push(key);
        if (isObject(payload) && payload.truncated === true && !zeroAnchor) truncated.push(key);
        break;
      }
    }
    return { rejoined, truncated, failed };
  }

  /** Browser signals: back online or visible again → reconnect now; offline → probe the link. */
  private onEnvironment(change: "online" | "offline" | "visible"): void {
    if (this.closed) return;
    const link = this.link;
    if (this.reconnecting) {
      if (change !== "offline") this.wake?.();
      return;
    }
    if (link !== undefined && !link.lost && link.ready) this.probe(link);
  }
}

/**
 * Creates a {@link Client} and connects it; resolves once the server's
 * `welcome` has arrived.
 *
 * ```ts
 * const client = await connect("ws://127.0.0.1:9100/ws");
 * await client.join("lobby", "general");
 * for await (const item of client) {
 *   if (item.kind === "message") console.log(item.from, item.payload);
 * }
 * ```
 */
export async function connect(url: string, options: ClientOptions = {}): Promise<Client> {
  const client = new Client(url, options);
  await client.start();
  return client;
}
