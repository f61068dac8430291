"""The server API (PROTOCOL.md section 8.3): the bus's HTTP interface for
application backends, ``POST /api/<command>`` on the bus listener with an API
key from the server's ``[[api.keys]]``.

::

    import arqonbus

    async with arqonbus.ServerApi("http://127.0.0.1:9100", "the-backend-key-0123") as api:
        # Every member of lobby/general gets it, with from_ == "server".
        await api.publish("lobby", "general", {"text": "deploy done"})

Plain asyncio and the standard library: a small HTTP/1.1 client over
:func:`asyncio.open_connection` that keeps one connection alive between calls.
A refusal raises the SDK's typed error for its wire code
(:class:`~arqonbus.errors.Unauthorized`, :class:`~arqonbus.errors.NotFound`,
...), with the HTTP status in :attr:`~arqonbus.errors.ArqonError.status`.
"""

from __future__ import annotations

import asyncio
import json
import ssl as _ssl
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

from ._ids import new_id
from .errors import (
    HTTP_STATUS,
    ArqonError,
    ConnectFailed,
    ConnectionLost,
    InvalidArgs,
    ProtocolViolation,
    RequestTimeout,
    error_from_wire,
)
from .models import JoinResult, Presence, PresenceStats

__all__ = ["ServerApi", "BatchCommand"]

#: One command of :meth:`ServerApi.batch`: ``(command, args)`` or
#: ``{"command": ..., "args": {...}}``.
BatchCommand = Union[Tuple[str, Mapping[str, Any]], Mapping[str, Any]]

#: A kept-alive connection idle for longer is not reused: the bus drops an API
#: connection that sends nothing for its ``upgrade_timeout_ms`` (10 s by default).
_MAX_IDLE = 4.0

#: Largest response body read (a history page of 1,000 large messages fits).
_MAX_BODY = 256 * 1024 * 1024

_CODE_OF_STATUS = {
    400: "INVALID_ARGS",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    413: "MESSAGE_TOO_LARGE",
    429: "RATE_LIMITED",
    503: "STORAGE_UNAVAILABLE",
}


class _NotAnswered(Exception):
    """A reused connection closed without a byte of answer: the bus had
    dropped it while idle, so the request was not processed."""


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def usable(self) -> bool:
        return (
            not self.writer.is_closing()
            and not self.reader.at_eof()
            and time.monotonic() - self.idle_since < _MAX_IDLE
        )

    def close(self) -> None:
        self.writer.close()


class ServerApi:
    """A client of the bus's server API.

    Args:
        url: the bus's address, ``http://HOST:PORT`` or ``https://HOST:PORT``
            (the WebSocket URL ``ws://HOST:PORT/ws`` names the same listener
            and is accepted too).
        key: an API key of the bus's ``[[api.keys]]``; its role (``user`` or
            ``admin``) decides which commands it may run.
        timeout: seconds a call may take, connecting included.
        ssl: for ``https``: an :class:`ssl.SSLContext` (e.g. one that trusts a
            self-signed bus), default: the system's trust store.

    One connection is kept alive between calls; calls made at the same time
    open more. :meth:`close` (or ``async with``) closes it.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 10.0,
        ssl: Optional[_ssl.SSLContext] = None,
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https", "ws", "wss"):
            raise ValueError(f"server API URL {url!r}: the scheme must be http or https")
        if not parts.hostname:
            raise ValueError(f"server API URL {url!r}: no host")
        if any(c in key for c in "\r\n"):
            raise ValueError("the API key is not a valid HTTP header value")
        secure = scheme in ("https", "wss")
        self.host: str = parts.hostname
        self.port: int = parts.port or (443 if secure else 80)
        self._authority = parts.netloc.rsplit("@", 1)[-1]
        path = parts.path.rstrip("/")
        for suffix in ("/ws", "/api"):
            if path.endswith(suffix):
                path = path[: -len(suffix)]
                break
        self._base = path
        self._ssl: Optional[_ssl.SSLContext] = (ssl or _ssl.create_default_context()) if secure else None
        self._key = key
        self.timeout = timeout
        self._idle: Optional[_Conn] = None

    def __repr__(self) -> str:
        # Never show the key.
        scheme = "https" if self._ssl else "http"
        return f"ServerApi({scheme}://{self._authority}{self._base})"

    async def __aenter__(self) -> "ServerApi":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the kept-alive connection (a later call opens a new one)."""
        conn, self._idle = self._idle, None
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.writer.wait_closed(), 2.0)
            except (OSError, asyncio.TimeoutError):
                pass

    # ------------------------------------------------------------ commands

    async def call(
        self, command: str, args: Optional[Mapping[str, Any]] = None, *, timeout: Optional[float] = None
    ) -> Any:
        """Runs any command with ``args``; returns its response payload."""
        limit = self.timeout if timeout is None else timeout
        body = json.dumps(dict(args or {})).encode()
        try:
            status, answer = await asyncio.wait_for(self._exchange(command, body), limit)
        except asyncio.TimeoutError:
            raise RequestTimeout(message=f"no answer to {command} within {limit:g} s") from None
        try:
            decoded = json.loads(answer) if answer else None
        except ValueError:
            decoded = None
        if status == 200:
            if decoded is None and answer.strip() != b"null":
                raise ProtocolViolation(message=f"{command}: the answer is not JSON: {answer[:200]!r}")
            return decoded
        if isinstance(decoded, dict) and isinstance(decoded.get("error"), dict):
            raise error_from_wire(decoded["error"], status=status)
        code = _CODE_OF_STATUS.get(status, "INTERNAL")
        text = answer[:200].decode("utf-8", "replace")
        raise error_from_wire({"code": code, "message": f"HTTP {status}: {text}"}, status=status)

    async def publish(
        self,
        room: str,
        channel: str,
        payload: Any,
        *,
        meta: Optional[Mapping[str, str]] = None,
        id: Optional[str] = None,
    ) -> str:
        """Stores a message in the channel's history and delivers it to its
        members with ``from: "server"``; returns its id.

        Always sent with an id (a fresh one unless ``id`` is given), which the
        bus stores once: repeating a call with the same ``id`` is safe.
        """
        args: Dict[str, Any] = {"id": id or new_id(), "room": room, "channel": channel, "payload": payload}
        if meta is not None:
            args["meta"] = dict(meta)
        return str((await self.call("publish", args))["id"])

    async def broadcast(self, room: str, payload: Any, *, meta: Optional[Mapping[str, str]] = None) -> int:
        """A room-wide message to every connection in any channel of ``room``,
        live only; returns the connections reached."""
        args: Dict[str, Any] = {"room": room, "payload": payload}
        if meta is not None:
            args["meta"] = dict(meta)
        return int((await self.call("broadcast", args))["delivered"])

    async def send(self, to: str, payload: Any, *, meta: Optional[Mapping[str, str]] = None) -> int:
        """A direct message to ``to``: a client id, or ``"user:NAME"`` for
        every connection of that user. Returns the connections reached;
        raises :class:`~arqonbus.errors.NotFound` when there is none."""
        args: Dict[str, Any] = {"to": to, "payload": payload}
        if meta is not None:
            args["meta"] = dict(meta)
        return int((await self.call("send", args))["delivered"])

    async def disconnect(
        self,
        *,
        client_id: Optional[str] = None,
        user: Optional[str] = None,
        code: Optional[int] = None,
        reason: Optional[str] = None,
    ) -> int:
        """(admin key) Closes one client's connection, or every connection of
        ``user``, with ``code`` (4000..4999, server default 4000) after a
        ``disconnected`` event carrying ``reason``. Returns how many closed."""
        if (client_id is None) == (user is None):
            raise InvalidArgs(message="give exactly one of client_id and user")
        args: Dict[str, Any] = {"client_id": client_id} if client_id is not None else {"user": user}
        if code is not None:
            args["code"] = code
        if reason is not None:
            args["reason"] = reason
        return int((await self.call("disconnect", args))["disconnected"])

    async def presence(
        self, room: str, channel: str, limit: Optional[int] = None, after: Optional[str] = None
    ) -> Presence:
        """One page of a channel's members; see :meth:`arqonbus.Client.presence`."""
        args: Dict[str, Any] = {"room": room, "channel": channel}
        if limit is not None:
            args["limit"] = limit
        if after is not None:
            args["after"] = after
        return Presence.from_payload(await self.call("presence", args))

    async def presence_stats(self, room: str, channel: str) -> PresenceStats:
        """A channel's connection count and distinct user count."""
        payload = await self.call("presence_stats", {"room": room, "channel": channel})
        return PresenceStats(total=int(payload["total"]), users=int(payload["users"]))

    async def subscribe(self, client_id: str, room: str, channel: str, since: Optional[str] = None) -> JoinResult:
        """(admin key) Joins the connected client ``client_id`` to a channel,
        replaying what was stored after ``since`` first, as ``join_channel``."""
        args: Dict[str, Any] = {"client_id": client_id, "room": room, "channel": channel}
        if since is not None:
            args["since"] = since
        p = await self.call("subscribe", args)
        return JoinResult(
            room=str(p["room"]), channel=str(p["channel"]), members=int(p["members"]), truncated=bool(p.get("truncated"))
        )

    async def unsubscribe(self, client_id: str, room: str, channel: str) -> bool:
        """(admin key) Takes ``client_id`` out of a channel (it gets a
        ``channel_left`` event); ``False`` if it was not a member."""
        payload = await self.call("unsubscribe", {"client_id": client_id, "room": room, "channel": channel})
        return bool(payload["left"])

    async def batch(self, commands: Iterable[BatchCommand]) -> List[Union[Any, ArqonError]]:
        """Up to 100 commands in one request, run in order. Returns, in order,
        each command's payload or its typed error (returned, not raised; its
        :attr:`~arqonbus.errors.ArqonError.status` is the one the API gives
        that code). Raises only if the batch itself is refused."""
        items: List[Dict[str, Any]] = []
        for command in commands:
            if isinstance(command, Mapping):
                items.append({"command": command["command"], "args": dict(command.get("args") or {})})
            else:
                name, args = command
                items.append({"command": name, "args": dict(args or {})})
        payload = await self.call("batch", {"commands": items})
        results: List[Union[Any, ArqonError]] = []
        for result in payload["results"]:
            error = result.get("error") if isinstance(result, dict) and len(result) == 1 else None
            if isinstance(error, dict) and "code" in error:
                results.append(error_from_wire(error, status=HTTP_STATUS.get(str(error["code"]), 500)))
            else:
                results.append(result)
        return results

    # ------------------------------------------------------------ HTTP/1.1

    async def _exchange(self, command: str, body: bytes) -> Tuple[int, bytes]:
        conn, self._idle = self._idle, None
        if conn is not None and not conn.usable():
            conn.close()
            conn = None
        if conn is not None:
            try:
                return await self._roundtrip(conn, command, body, reused=True)
            except _NotAnswered:
                conn.close()  # dropped while idle; the request was not processed
        return await self._roundtrip(await self._open(), command, body, reused=False)

    async def _open(self) -> _Conn:
        try:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self._ssl, server_hostname=self.host if self._ssl else None
            )
        except (OSError, _ssl.SSLError) as exc:
            raise ConnectFailed(message=f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return _Conn(reader, writer)

    async def _roundtrip(self, conn: _Conn, command: str, body: bytes, *, reused: bool) -> Tuple[int, bytes]:
        head = (
            f"POST {self._base}/api/{command} HTTP/1.1\r\n"
            f"Host: {self._authority}\r\n"
            f"Authorization: Bearer {self._key}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        keep = False
        try:
            conn.writer.write(head.encode() + body)
            await conn.writer.drain()
            status_line = await conn.reader.readline()
            if not status_line:
                if reused:
                    raise _NotAnswered()
                raise ConnectionLost(message=f"{command}: the bus closed the connection without an answer")
            status, headers = await self._read_head(status_line, conn.reader)
            answer = await self._read_body(headers, conn.reader)
            keep = headers.get("connection", "").lower() != "close"
            return status, answer
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if reused and isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                raise _NotAnswered() from exc
            raise ConnectionLost(message=f"{command}: connection lost: {exc}") from exc
        finally:
            if keep and self._idle is None:
                conn.idle_since = time.monotonic()
                self._idle = conn
            else:
                conn.close()

    @staticmethod
    async def _read_head(status_line: bytes, reader: asyncio.StreamReader) -> Tuple[int, Dict[str, str]]:
        parts = status_line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ProtocolViolation(message=f"not an HTTP response: {status_line[:100]!r}")
        headers: Dict[str, str] = {}
        while True:
            line = await reader.readline()
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    @staticmethod
    async def _read_body(headers: Mapping[str, str], reader: asyncio.StreamReader) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: List[bytes] = []
            while True:
                size_line = await reader.readline()
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
        length = int(headers.get("content-length", "0") or 0)
        if length > _MAX_BODY:
            raise ProtocolViolation(message=f"an answer of {length} bytes is over the SDK's limit")
        return await reader.readexactly(length) if length else b""
