/**
 * Typed errors: one class per wire error code, plus the SDK's own.
 *
 * Every error the SDK raises on purpose is an {@link ArqonError}. Errors the
 * server sent keep its `code` (`NOT_FOUND`, `FORBIDDEN`, ...), the
 * `requestId` they answer and, for `RATE_LIMITED`, `retryAfterMs`. Errors the
 * SDK raises itself ({@link RequestTimeout}, {@link ConnectionLost},
 * {@link ConnectFailed}, {@link ClientClosed}, {@link ProtocolViolation}) use
 * codes that never appear on the wire.
 */

/** Base of every ArqonBus error. */
export class ArqonError extends Error {
  /** The code this class stands for (`undefined` on the base class). */
  static readonly CODE: string | undefined = undefined;

  /** The wire error code (`"NOT_FOUND"`...), or an SDK code such as `"REQUEST_TIMEOUT"`. */
  readonly code: string;
  /** The server's (or the SDK's) human-readable text, without the code; may change between versions. */
  readonly text: string;
  /** The id of the frame this error answers, when known. */
  readonly requestId: string | undefined;
  /** For `RATE_LIMITED`: milliseconds to wait before sending the frame again. */
  readonly retryAfterMs: number | undefined;
  /** Every field of the wire `error` object, as received. */
  readonly details: Readonly<Record<string, unknown>>;
  /** The HTTP status, for errors of the server API ({@link ServerApi}); undefined otherwise. */
  readonly status: number | undefined;

  constructor(
    message = "",
    init: {
      code?: string;
      requestId?: string;
      retryAfterMs?: number;
      details?: Record<string, unknown>;
      status?: number;
    } = {},
  ) {
    const code = init.code ?? (new.target as typeof ArqonError).CODE ?? "UNKNOWN";
    super(message ? `${code}: ${message}` : code);
    this.name = new.target.name;
    this.code = code;
    this.text = message;
    this.requestId = init.requestId;
    this.retryAfterMs = init.retryAfterMs;
    this.details = { ...(init.details ?? {}) };
    this.status = init.status;
  }

}

/** `INVALID_JSON`: the frame was not a JSON object (or nested too deep). */
export class InvalidJson extends ArqonError {
  static override readonly CODE = "INVALID_JSON";
}
/** `INVALID_ENVELOPE`: missing/unknown/wrong-typed field or impossible combination. */
export class InvalidEnvelope extends ArqonError {
  static override readonly CODE = "INVALID_ENVELOPE";
}
/** `UNSUPPORTED_VERSION`: a protocol version other than 1. */
export class UnsupportedVersion extends ArqonError {
  static override readonly CODE = "UNSUPPORTED_VERSION";
}
/** `UNSUPPORTED_FRAME`: a binary frame. */
export class UnsupportedFrame extends ArqonError {
  static override readonly CODE = "UNSUPPORTED_FRAME";
}
/** `INVALID_ID`: an id not of the form `arq_` + ULID. */
export class InvalidId extends ArqonError {
  static override readonly CODE = "INVALID_ID";
}
/** `INVALID_NAME`: a room or channel name outside `[A-Za-z0-9_.-]{1,64}`. */
export class InvalidName extends ArqonError {
  static override readonly CODE = "INVALID_NAME";
}
/** `INVALID_TIMESTAMP`: unparsable or more than 300 s off server time. */
export class InvalidTimestamp extends ArqonError {
  static override readonly CODE = "INVALID_TIMESTAMP";
}
/** `UNKNOWN_COMMAND`: the server has no command of that name. */
export class UnknownCommand extends ArqonError {
  static override readonly CODE = "UNKNOWN_COMMAND";
}
/** `INVALID_ARGS`: missing, unknown or wrong-typed command arguments. */
export class InvalidArgs extends ArqonError {
  static override readonly CODE = "INVALID_ARGS";
}
/**
 * `UNAUTHORIZED`: no identity. Also raised when the upgrade gets HTTP 401
 * (in Node; a browser hides the status of a refused upgrade, so there it is
 * a {@link ConnectFailed}).
 */
export class Unauthorized extends ArqonError {
  static override readonly CODE = "UNAUTHORIZED";
}
/** `FORBIDDEN`: the caller's role is too low, a spoofed `from`, or a channel cap. */
export class Forbidden extends ArqonError {
  static override readonly CODE = "FORBIDDEN";
}
/** `NOT_FOUND`: no such channel, client or message id. */
export class NotFound extends ArqonError {
  static override readonly CODE = "NOT_FOUND";
}
/** `RATE_LIMITED`: over the client's rate; see {@link ArqonError.retryAfterMs}. The frame was not processed. */
export class RateLimited extends ArqonError {
  static override readonly CODE = "RATE_LIMITED";
}
/** `MESSAGE_TOO_LARGE`: a frame over `max_message_bytes` (the server then closes with 1009). */
export class MessageTooLarge extends ArqonError {
  static override readonly CODE = "MESSAGE_TOO_LARGE";
}
/** `STORAGE_UNAVAILABLE`: no history backend can serve the request. */
export class StorageUnavailable extends ArqonError {
  static override readonly CODE = "STORAGE_UNAVAILABLE";
}
/** `INTERNAL`: a server bug; details are in the server's log. */
export class InternalError extends ArqonError {
  static override readonly CODE = "INTERNAL";
}

/**
 * No response within the request timeout (SDK code `REQUEST_TIMEOUT`). The
 * request may or may not have been carried out by the server.
 */
export class RequestTimeout extends ArqonError {
  static override readonly CODE = "REQUEST_TIMEOUT";
}
/**
 * The connection dropped while a request that is not safe to repeat was in
 * flight, or the client cannot reconnect (SDK code `CONNECTION_LOST`). The
 * request may or may not have been carried out by the server.
 */
export class ConnectionLost extends ArqonError {
  static override readonly CODE = "CONNECTION_LOST";
}
/**
 * The client could not open a connection: the server is unreachable, the
 * upgrade was refused (other than 401), or no `welcome` came within the
 * request timeout (SDK code `CONNECT_FAILED`).
 */
export class ConnectFailed extends ArqonError {
  static override readonly CODE = "CONNECT_FAILED";
}
/** The client was closed (SDK code `CLIENT_CLOSED`). */
export class ClientClosed extends ArqonError {
  static override readonly CODE = "CLIENT_CLOSED";
}
/** The server sent something the protocol does not allow (SDK code `PROTOCOL_VIOLATION`). */
export class ProtocolViolation extends ArqonError {
  static override readonly CODE = "PROTOCOL_VIOLATION";
}

type ErrorClass = new (message?: string, init?: ConstructorParameters<typeof ArqonError>[1]) => ArqonError;

/** The one mapping from wire error codes to classes. */
const BY_CODE: ReadonlyMap<string, ErrorClass> = new Map(
  [
    InvalidJson,
    InvalidEnvelope,
    UnsupportedVersion,
    UnsupportedFrame,
    InvalidId,
    InvalidName,
    InvalidTimestamp,
    UnknownCommand,
    InvalidArgs,
    Unauthorized,
    Forbidden,
    NotFound,
    RateLimited,
    MessageTooLarge,
    StorageUnavailable,
    InternalError,
  ].map((cls) => [cls.CODE, cls] as const),
);

/** The HTTP status the server API gives each wire code (docs/protocol.md section 8.3). */
export const HTTP_STATUS: Readonly<Record<string, number>> = {
  INVALID_JSON: 400,
  INVALID_ENVELOPE: 400,
  UNSUPPORTED_VERSION: 400,
  UNSUPPORTED_FRAME: 400,
  INVALID_ID: 400,
  INVALID_NAME: 400,
  INVALID_TIMESTAMP: 400,
  INVALID_ARGS: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  UNKNOWN_COMMAND: 404,
  MESSAGE_TOO_LARGE: 413,
  RATE_LIMITED: 429,
  STORAGE_UNAVAILABLE: 503,
  INTERNAL: 500,
};

/**
 * Builds the typed error for a wire `error` object. An unknown code gives a
 * plain {@link ArqonError} that keeps the code. `status` (the server API's
 * HTTP status) is kept as {@link ArqonError.status}.
 */
export function errorFromWire(error: unknown, requestId?: string, status?: number): ArqonError {
  if (typeof error !== "object" || error === null || Array.isArray(error)) {
    return new ProtocolViolation(`malformed error object: ${JSON.stringify(error)}`, { requestId, status });
  }
  const fields = error as Record<string, unknown>;
  const code = typeof fields.code === "string" && fields.code ? fields.code : "UNKNOWN";
  const message = typeof fields.message === "string" ? fields.message : "";
  const retry = fields.retry_after_ms;
  const retryAfterMs = typeof retry === "number" && Number.isFinite(retry) ? retry : undefined;
  const cls = BY_CODE.get(code) ?? ArqonError;
  return new cls(message, { code, requestId, retryAfterMs, details: fields, status });
}

/** A fresh error of the same class and fields (for reporting one failure to several callers). */
export function copyError(error: ArqonError): ArqonError {
  const cls = error.constructor as ErrorClass;
  return new cls(error.text, {
    code: error.code,
    requestId: error.requestId,
    retryAfterMs: error.retryAfterMs,
    details: { ...error.details },
    status: error.status,
  });
}
