"""Typed errors: one class per wire error code, plus the SDK's own.

Every exception the SDK raises on purpose is an :class:`ArqonError`. Errors
the server sent keep its ``code`` (``NOT_FOUND``, ``FORBIDDEN``, ...), the
``request_id`` they answer and, for ``RATE_LIMITED``, ``retry_after_ms``.
Errors the SDK raises itself (:class:`RequestTimeout`, :class:`ConnectionLost`,
:class:`ClientClosed`) use codes that never appear on the wire.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "ArqonError",
    "InvalidJson",
    "InvalidEnvelope",
    "UnsupportedVersion",
    "UnsupportedFrame",
    "InvalidId",
    "InvalidName",
    "InvalidTimestamp",
    "UnknownCommand",
    "InvalidArgs",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "RateLimited",
    "MessageTooLarge",
    "StorageUnavailable",
    "InternalError",
    "RequestTimeout",
    "ConnectionLost",
    "ConnectFailed",
    "ClientClosed",
    "ProtocolViolation",
    "error_from_wire",
]


class ArqonError(Exception):
    """Base of every ArqonBus error.

    Attributes:
        code: the wire error code (``"NOT_FOUND"``...), or an SDK code such as
            ``"REQUEST_TIMEOUT"`` for errors raised locally.
        message: human-readable text from the server (or the SDK).
        request_id: the id of the frame this error answers, when known.
        retry_after_ms: for ``RATE_LIMITED``: when to retry.
        details: every field of the wire ``error`` object, as received.
        status: the HTTP status, for errors of the server API
            (:class:`arqonbus.ServerApi`); ``None`` otherwise.
    """

    #: The code this class stands for (``None`` on the base class).
    CODE: Optional[str] = None

    def __init__(
        self,
        code: Optional[str] = None,
        message: str = "",
        request_id: Optional[str] = None,
        retry_after_ms: Optional[int] = None,
        details: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.code: str = code or self.CODE or "UNKNOWN"
        self.message = message
        self.request_id = request_id
        self.retry_after_ms = retry_after_ms
        self.details: Dict[str, Any] = dict(details or {})
        self.status: Optional[int] = None
        super().__init__(f"{self.code}: {message}" if message else self.code)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"request_id={self.request_id!r}, retry_after_ms={self.retry_after_ms!r})"
        )


class InvalidJson(ArqonError):
    """``INVALID_JSON``: the frame was not a JSON object."""

    CODE = "INVALID_JSON"


class InvalidEnvelope(ArqonError):
    """``INVALID_ENVELOPE``: missing/unknown/wrong-typed field or impossible combination."""

    CODE = "INVALID_ENVELOPE"


class UnsupportedVersion(ArqonError):
    """``UNSUPPORTED_VERSION``: a protocol version other than 1."""

    CODE = "UNSUPPORTED_VERSION"


class UnsupportedFrame(ArqonError):
    """``UNSUPPORTED_FRAME``: a binary frame."""

    CODE = "UNSUPPORTED_FRAME"


class InvalidId(ArqonError):
    """``INVALID_ID``: an id not of the form ``arq_`` + ULID."""

    CODE = "INVALID_ID"


class InvalidName(ArqonError):
    """``INVALID_NAME``: a room or channel name outside ``[A-Za-z0-9_.-]{1,64}``."""

    CODE = "INVALID_NAME"


class InvalidTimestamp(ArqonError):
    """``INVALID_TIMESTAMP``: unparsable or more than 300 s off server time."""

    CODE = "INVALID_TIMESTAMP"


class UnknownCommand(ArqonError):
    """``UNKNOWN_COMMAND``: the server has no command of that name."""

    CODE = "UNKNOWN_COMMAND"


class InvalidArgs(ArqonError):
    """``INVALID_ARGS``: missing, unknown or wrong-typed command arguments."""

    CODE = "INVALID_ARGS"


class Unauthorized(ArqonError):
    """``UNAUTHORIZED``: no identity (also raised when the upgrade gets HTTP 401)."""

    CODE = "UNAUTHORIZED"


class Forbidden(ArqonError):
    """``FORBIDDEN``: the caller's role is too low (or a spoofed ``from``)."""

    CODE = "FORBIDDEN"


class NotFound(ArqonError):
    """``NOT_FOUND``: no such channel, client or message id."""

    CODE = "NOT_FOUND"


class RateLimited(ArqonError):
    """``RATE_LIMITED``: over the client's rate; see :attr:`retry_after_ms`."""

    CODE = "RATE_LIMITED"


class MessageTooLarge(ArqonError):
    """``MESSAGE_TOO_LARGE``: a frame over ``max_message_bytes`` (the server closes with 1009)."""

    CODE = "MESSAGE_TOO_LARGE"


class StorageUnavailable(ArqonError):
    """``STORAGE_UNAVAILABLE``: no history backend can serve the request."""

    CODE = "STORAGE_UNAVAILABLE"


class InternalError(ArqonError):
    """``INTERNAL``: a server bug; details are in the server's log."""

    CODE = "INTERNAL"


class RequestTimeout(ArqonError, TimeoutError):
    """No response within the request timeout (SDK code ``REQUEST_TIMEOUT``).

    The request may or may not have been carried out by the server.
    """

    CODE = "REQUEST_TIMEOUT"


class ConnectionLost(ArqonError, ConnectionError):
    """The connection dropped while a non-retryable request was in flight, or
    the client cannot reconnect (SDK code ``CONNECTION_LOST``).

    The request may or may not have been carried out by the server.
    """

    CODE = "CONNECTION_LOST"


class ConnectFailed(ArqonError, ConnectionError):
    """The client could not open a connection: the server is unreachable, the
    upgrade was refused (other than 401), or no ``welcome`` came within the
    request timeout (SDK code ``CONNECT_FAILED``)."""

    CODE = "CONNECT_FAILED"


class ClientClosed(ArqonError):
    """The client was closed (SDK code ``CLIENT_CLOSED``)."""

    CODE = "CLIENT_CLOSED"


class ProtocolViolation(ArqonError):
    """The server sent something the protocol does not allow (SDK code ``PROTOCOL_VIOLATION``)."""

    CODE = "PROTOCOL_VIOLATION"


_BY_CODE: Dict[str, Type[ArqonError]] = {
    cls.CODE: cls
    for cls in (
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
    )
    if cls.CODE is not None
}


#: The HTTP status the server API gives each code (PROTOCOL.md section 8.3).
HTTP_STATUS: Dict[str, int] = {
    "INVALID_JSON": 400,
    "INVALID_ENVELOPE": 400,
    "UNSUPPORTED_VERSION": 400,
    "UNSUPPORTED_FRAME": 400,
    "INVALID_ID": 400,
    "INVALID_NAME": 400,
    "INVALID_TIMESTAMP": 400,
    "INVALID_ARGS": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "UNKNOWN_COMMAND": 404,
    "MESSAGE_TOO_LARGE": 413,
    "RATE_LIMITED": 429,
    "STORAGE_UNAVAILABLE": 503,
    "INTERNAL": 500,
}


def error_from_wire(error: Any, request_id: Optional[str] = None, status: Optional[int] = None) -> ArqonError:
    """Builds the typed error for a wire ``error`` object.

    An unknown code gives a plain :class:`ArqonError` that keeps the code.
    ``status`` (the server API's HTTP status) is kept as :attr:`ArqonError.status`.
    """
    if not isinstance(error, dict):
        violation = ProtocolViolation(message=f"malformed error object: {error!r}", request_id=request_id)
        violation.status = status
        return violation
    code = str(error.get("code") or "UNKNOWN")
    message = str(error.get("message") or "")
    retry = error.get("retry_after_ms")
    retry_after_ms = int(retry) if isinstance(retry, (int, float)) and not isinstance(retry, bool) else None
    cls = _BY_CODE.get(code, ArqonError)
    typed = cls(code, message, request_id, retry_after_ms, error)
    typed.status = status
    return typed
