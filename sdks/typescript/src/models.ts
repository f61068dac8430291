/**
 * What the client delivers and returns: plain, readonly data.
 *
 * {@link Client.messages} yields {@link Incoming} items, told apart by
 * `kind`: delivered messages (`"message"`), server events (`"event"`),
 * errors answering fire-and-forget sends (`"error"`) and the SDK's own
 * `"disconnected"` / `"reconnected"` notices.
 */

import type { ArqonError } from "./errors.js";

/** A joined channel: `[room, channel]`. */
export type ChannelKey = readonly [room: string, channel: string];

/** A delivered (or stored) message. */
export interface Message {
  readonly kind: "message";
  readonly id: string;
  /** Absent for a direct message. */
  readonly room?: string;
  /** Absent for a room-wide or direct message. */
  readonly channel?: string;
  /** The sender's client id, or `"server"` for a message the application's backend sent through the server API. */
  readonly from?: string;
  /**
   * The sender's user (the identity of its credential, set by the server);
   * absent when the sender is anonymous or the server API.
   */
  readonly user?: string;
  /** The body; absent when the sender sent none (`null` is kept as `null`). */
  readonly payload?: unknown;
  readonly meta?: Readonly<Record<string, string>>;
  /** RFC 3339 UTC with milliseconds, stamped by the server when it received the message. */
  readonly timestamp: string;
}

/** A server event (docs/protocol.md section 5), e.g. `member_joined`. */
export interface ServerEvent {
  readonly kind: "event";
  /** `payload.event`: `member_joined`, `channel_deleted`, `channel_gap`, `shutdown`... */
  readonly name: string;
  /** The whole event payload, `event` key included. */
  readonly payload: Readonly<Record<string, unknown>>;
  readonly id?: string;
  readonly timestamp?: string;
}

/**
 * An error the server sent that answers no pending request: typically a
 * failed fire-and-forget {@link Client.send} (`error.requestId` is the id
 * `send` returned).
 */
export interface ErrorReceived {
  readonly kind: "error";
  readonly error: ArqonError;
}

/** The SDK lost the connection and is about to reconnect. */
export interface Disconnected {
  readonly kind: "disconnected";
  /** A short human-readable description (`"no frame from the server for 2.1 s"`, `"token refresh"`...). */
  readonly reason: string;
  /** The WebSocket close code when there was one (1001 on server shutdown). */
  readonly code?: number;
}

/** The SDK reconnected and rejoined the channels. */
export interface Reconnected {
  readonly kind: "reconnected";
  /** Connection attempts it took. */
  readonly attempts: number;
  /** The new connection's client id (it changes on every reconnect). */
  readonly clientId: string;
  /** Channels joined again, each replayed from the last message seen in it. */
  readonly rejoined: readonly ChannelKey[];
  /**
   * Rejoined channels whose history no longer held the last message seen:
   * messages may have been missed there.
   */
  readonly truncated: readonly ChannelKey[];
  /** Channels that could not be rejoined (e.g. deleted meanwhile), with the error; they are no longer joined. */
  readonly failed: readonly (readonly [ChannelKey, ArqonError])[];
}

/**
 * The SDK repaired a channel after a `channel_gap` event: it joined the
 * channel again with `since` = the event's `last_id` (or where this
 * connection joined, when that is null); the replay that follows this notice
 * is the channel's order from there (ids already delivered are skipped).
 */
export interface Resynced {
  readonly kind: "resynced";
  readonly room: string;
  readonly channel: string;
  /** The `since` used. */
  readonly since: string;
  /** The history no longer held `since`: messages may have been missed. */
  readonly truncated: boolean;
}

/** Everything {@link Client.messages} yields. */
export type Incoming = Message | ServerEvent | ErrorReceived | Disconnected | Reconnected | Resynced;

/** The `welcome` event that opens every connection. */
export interface Welcome {
  readonly clientId: string;
  readonly role: string;
  /** The connection's user: its credential's identity (a static token's `client`, a JWT's `sub`); null when anonymous. */
  readonly user: string | null;
  readonly serverVersion: string;
  /** Seconds between the server's pings. */
  readonly heartbeatS: number;
  /** `max_message_bytes`, `rate_per_s`, `burst`, `max_backlog_bytes`... as sent. */
  readonly limits: Readonly<Record<string, unknown>>;
  /** The whole event payload, as sent. */
  readonly payload: Readonly<Record<string, unknown>>;
}

/** The `status` command's answer. */
export interface Status {
  readonly version: string;
  readonly uptimeS: number;
  readonly connections: number;
  readonly rooms: number;
  readonly channels: number;
  readonly storage: { readonly backend: string; readonly healthy: boolean };
}

/** One argument in a `help` entry. */
export interface CommandArg {
  readonly name: string;
  /** `name`, `message_id`, `limit`, `json`, `meta`, `bool`... */
  readonly type: string;
  readonly required: boolean;
  readonly description: string;
}

/** One entry of the `help` command's answer. */
export interface CommandHelp {
  readonly name: string;
  readonly description: string;
  readonly args: readonly CommandArg[];
  /** Least role allowed to run it. */
  readonly role: string;
  /** Whether this connection's role may run it. */
  readonly allowed: boolean;
  /** Only the server API has it (`POST /api/<name>`), not a WebSocket. */
  readonly apiOnly: boolean;
}

/** The `join_channel` command's answer. */
export interface JoinResult {
  readonly room: string;
  readonly channel: string;
  /** Members, this connection included. */
  readonly members: number;
  /**
   * True when a `since` was given and the channel's history no longer holds
   * it: everything kept was replayed, older messages are gone.
   */
  readonly truncated: boolean;
}

/** One element of `list_channels`. */
export interface ChannelSummary {
  readonly room: string;
  readonly channel: string;
  readonly members: number;
}

/** The `channel_info` command's answer. */
export interface ChannelInfo {
  readonly room: string;
  readonly channel: string;
  readonly members: number;
  readonly createdAt: string;
  /** Messages currently kept. */
  readonly stored: number;
  /** The newest kept message's id, or `null` when none is kept. */
  readonly lastId: string | null;
}

type Json = Record<string, unknown>;

function str(value: unknown, fallback = ""): string {
  return typeof value === "string" ? value : fallback;
}

function num(value: unknown, fallback = 0): number {
  return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}

/** Builds a {@link Message} from a wire envelope of `type: message`. */
export function messageFromEnvelope(frame: Json): Message {
  const message: { -readonly [K in keyof Message]: Message[K] } = {
    kind: "message",
    id: str(frame.id),
    timestamp: str(frame.timestamp),
  };
  if (typeof frame.room === "string") message.room = frame.room;
  if (typeof frame.channel === "string") message.channel = frame.channel;
  if (typeof frame.from === "string") message.from = frame.from;
  if (typeof frame.user === "string") message.user = frame.user;
  if ("payload" in frame) message.payload = frame.payload;
  if (typeof frame.meta === "object" && frame.meta !== null) message.meta = frame.meta as Record<string, string>;
  return message;
}

/** Builds a {@link Welcome} from the event's payload. */
export function welcomeFromPayload(p: Json): Welcome {
  const heartbeat = num(p.heartbeat_s);
  return {
    clientId: str(p.client_id),
    role: str(p.role),
    user: typeof p.user === "string" ? p.user : null,
    serverVersion: str(p.server_version),
    heartbeatS: heartbeat > 0 ? heartbeat : 20,
    limits: typeof p.limits === "object" && p.limits !== null ? (p.limits as Json) : {},
    payload: p,
  };
}

/** Builds a {@link Status} from the response payload. */
export function statusFromPayload(p: Json): Status {
  const storage = (typeof p.storage === "object" && p.storage !== null ? p.storage : {}) as Json;
  return {
    version: str(p.version),
    uptimeS: num(p.uptime_s),
    connections: num(p.connections),
    rooms: num(p.rooms),
    channels: num(p.channels),
    storage: { backend: str(storage.backend), healthy: storage.healthy === true },
  };
}

/** Builds a {@link CommandHelp} from one element of `commands`. */
export function commandHelpFromPayload(p: Json): CommandHelp {
  const args = Array.isArray(p.args) ? (p.args as Json[]) : [];
  return {
    name: str(p.name),
    description: str(p.description),
    args: args.map((a) => ({
      name: str(a.name),
      type: str(a.type),
      required: a.required === true,
      description: str(a.description),
    })),
    role: str(p.role),
    allowed: p.allowed === true,
    apiOnly: p.api_only === true,
  };
}

/** Builds a {@link ChannelInfo} from the response payload. */
export function channelInfoFromPayload(p: Json): ChannelInfo {
  return {
    room: str(p.room),
    channel: str(p.channel),
    members: num(p.members),
    createdAt: str(p.created_at),
    stored: num(p.stored),
    lastId: typeof p.last_id === "string" ? p.last_id : null,
  };
}

/** One member in {@link Presence}. */
export interface PresenceMember {
  readonly clientId: string;
  /** Its user, or null when anonymous. */
  readonly user: string | null;
  /** Its JWT's `info` claim as sent, or null. */
  readonly info: Readonly<Record<string, unknown>> | null;
  /** When it joined the channel (RFC 3339 UTC). */
  readonly joinedAt: string;
}

/**
 * The `presence` command's answer: one page of a channel's members, ordered
 * by client id (the next page starts `after` the last one's `clientId`).
 */
export interface Presence {
  readonly members: readonly PresenceMember[];
  /** Connections in the channel (all pages). */
  readonly total: number;
  /** Distinct users; each anonymous connection counts as one. */
  readonly users: number;
}

/** The server API's `presence_stats` answer. */
export interface PresenceStats {
  readonly total: number;
  readonly users: number;
}

/** Builds a {@link Presence} from the response payload. */
export function presenceFromPayload(p: Json): Presence {
  const members = Array.isArray(p.members) ? (p.members as Json[]) : [];
  return {
    members: members.map((m) => ({
      clientId: str(m.client_id),
      user: typeof m.user === "string" ? m.user : null,
      info: typeof m.info === "object" && m.info !== null && !Array.isArray(m.info) ? (m.info as Json) : null,
      joinedAt: str(m.joined_at),
    })),
    total: num(p.total),
    users: num(p.users),
  };
}
