/**
 * ArqonBus: a client for the ArqonBus real-time message bus, for browsers and
 * Node.
 *
 * Implements wire protocol version 1 (docs/protocol.md): request/response
 * correlation by id with timeouts, typed errors per wire code, a helper per
 * command, an async iterator and callbacks for messages and events, and
 * automatic reconnection that rejoins channels without gaps or duplicates.
 *
 * ```ts
 * import { connect } from "arqonbus";
 *
 * const client = await connect("ws://127.0.0.1:9100/ws");
 * await client.join("lobby", "general");
 * await client.publish("lobby", "general", { text: "hello" });
 * for await (const item of client) {
 *   if (item.kind === "message") console.log(item.from, item.payload);
 * }
 * ```
 *
 * A Node backend publishes to the same channels over HTTP with an API key:
 *
 * ```ts
 * import { ServerApi } from "arqonbus";
 *
 * const api = new ServerApi("http://127.0.0.1:9100", process.env.ARQON_API_KEY!);
 * await api.publish("lobby", "general", { text: "deploy done" });
 * ```
 *
 * Layout: `client` (the Client and its reconnect machinery), `socket` (the
 * two WebSocket implementations behind one interface), `inbox` (the bounded
 * queue `messages()` reads), `errors`, `models`, `ids`, `environment`
 * (browser online/visibility signals), `api` (the server API's
 * {@link ServerApi}, over `fetch`).
 */

export { Client, connect, jwtExpiry } from "./client.js";
export { ServerApi } from "./api.js";
export type { BatchCommand, ServerApiOptions } from "./api.js";
export type { ClientOptions, ItemKind, Logger, RequestOptions, TokenProvider, TokenResult } from "./client.js";
export { ZERO_ID, isValidId, newId } from "./ids.js";
export {
  ArqonError,
  ClientClosed,
  ConnectFailed,
  ConnectionLost,
  Forbidden,
  InternalError,
  InvalidArgs,
  InvalidEnvelope,
  InvalidId,
  InvalidJson,
  InvalidName,
  InvalidTimestamp,
  MessageTooLarge,
  NotFound,
  ProtocolViolation,
  RateLimited,
  RequestTimeout,
  StorageUnavailable,
  Unauthorized,
  UnknownCommand,
  UnsupportedFrame,
  UnsupportedVersion,
  HTTP_STATUS,
  errorFromWire,
} from "./errors.js";
export type {
  ChannelInfo,
  ChannelKey,
  ChannelSummary,
  CommandArg,
  CommandHelp,
  Disconnected,
  ErrorReceived,
  Incoming,
  JoinResult,
  Message,
  Presence,
  PresenceMember,
  PresenceStats,
  Reconnected,
  Resynced,
  ServerEvent,
  Status,
  Welcome,
} from "./models.js";
export type { Environment } from "./environment.js";
export type { WebSocketConstructor } from "./socket.js";

/** This package's version. */
export const VERSION = "0.1.0";
