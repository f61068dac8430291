"""The asyncio client: one WebSocket connection, kept alive and rejoined.

Layout:

- :class:`Client` owns everything: the current link, the pending requests
  (keyed by request id), the joined channels with their replay cursors, and
  the inbox that :meth:`Client.messages` reads.
- A *link* (:class:`_Link`) is one WebSocket connection; each has a reader
  task (frames to futures and to the inbox) and a watchdog task (declares the
  link dead after ``2 x heartbeat_s`` without a byte from the server).
- A supervisor task waits for the current link to die, then reconnects with
  exponential backoff and jitter, rejoins every channel with ``since`` = the
  last message id seen there, and only then lets requests through again.

Retry policy when a link dies with requests in flight: requests whose repeat
gives the same answer (``ping``, ``status``, ``help``, ``list_channels``,
``channel_info``, ``history``, ``presence``, ``join_channel`` and ``publish``, which the
server de-duplicates by its id) are sent again, with the same id, once the
client has reconnected. The others (``create_channel``, ``delete_channel``,
``leave_channel`` and everything sent through :meth:`Client.command`) fail
with :class:`~arqonbus.errors.ConnectionLost`: they may or may not have been
carried out. :meth:`Client.send` is fire-and-forget and never retried.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import random
import time
from collections import deque
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Deque,
    Dict,
    Generator,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
    Type,
)

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as _ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ._ids import ZERO_ID, new_id
from .errors import (
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
    error_from_wire,
)
from .models import (
    ChannelInfo,
    ChannelKey,
    ChannelSummary,
    CommandHelp,
    Disconnected,
    ErrorReceived,
    Event,
    Incoming,
    JoinResult,
    Message,
    Presence,
    Reconnected,
    Status,
    Welcome,
)

__all__ = ["Client", "connect"]

log = logging.getLogger("arqonbus")

# websockets >= 15 honours HTTP(S)_PROXY by default; a bus on localhost must
# not be reached through a proxy, so the client passes proxy=None there.
_WS_HAS_PROXY_ARG = "proxy" in inspect.signature(_ws_connect.__init__).parameters

#: Message ids remembered per joined channel to drop a message seen twice.
#: Larger than the server's default history (1,000), so a full replay of a
#: channel's kept history is always covered.
_DEDUPE_WINDOW = 2048

#: Errors that make a rejoin pointless to repeat: the channel is dropped from
#: the joined set and reported in :attr:`Reconnected.failed`.
_PERMANENT_JOIN_ERRORS = (NotFound, Forbidden, InvalidName, InvalidArgs, InvalidId)

#: How long :meth:`Client.close` waits for the closing handshake.
_CLOSE_TIMEOUT = 2.0


class _TrackedConnection(ClientConnection):
    """A websockets connection that notes when it last received any bytes.

    Data frames, pings, pongs and close frames all count: the watchdog only
    needs to know that the server (and the path to it) is alive.
    """

    last_rx: float = 0.0

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        super().data_received(data)


class _LinkLost(Exception):
    """Internal: the link a request was sent on died before the answer came."""


class _Link:
    """One WebSocket connection and its tasks."""

    def __init__(self, ws: _TrackedConnection, welcome: Welcome) -> None:
        loop = asyncio.get_running_loop()
        self.ws = ws
        self.welcome = welcome
        self.opened_at = loop.time()
        # Done (with the reason) once the link is unusable.
        self.lost: "asyncio.Future[Tuple[str, Optional[int]]]" = loop.create_future()
        # Requests other than the rejoin wait for this.
        self.ready = False
        # True while the reader waits for room in a full inbox: the silence
        # that follows is the consumer's doing, not the server's.
        self.blocked = False
        self.reader: Optional["asyncio.Task[None]"] = None
        self.watchdog: Optional["asyncio.Task[None]"] = None

    def mark_lost(self, reason: str, code: Optional[int] = None) -> None:
        if not self.lost.done():
            self.lost.set_result((reason, code))


class _Pending:
    """A request waiting for its ``response`` or ``error``."""

    __slots__ = ("future", "on_response")

    def __init__(self, future: "asyncio.Future[Any]", on_response: Optional[Callable[[Any], None]]) -> None:
        self.future = future
        # Runs in the reader, before any later frame is handled: join uses it
        # to start tracking a channel before its replay arrives.
        self.on_response = on_response


class _Subscription:
    """A channel the user joined: where to resume, and what was already seen."""

    def __init__(self, cursor: str, *, cursor_is_anchor_zero: bool = False) -> None:
        # The id to pass as `since` when rejoining: the last message received
        # in this channel, or the anchor taken when it was joined.
        self.cursor = cursor
        # True while the cursor is ZERO_ID (the channel was empty when joined
        # and nothing arrived since): a rejoin then replays everything kept,
        # and the server's `truncated: true` is expected, not a loss.
        self.zero_anchor = cursor_is_anchor_zero
        # Where this connection's (re)join started: what a `channel_gap`
        # with no `last_id` (nothing received here in history order) repairs
        # from.
        self.link_anchor = cursor
        # `channel_gap` re-joins sent and not yet answered: live copies are
        # dropped meanwhile, since the replay right after the answer holds
        # them in history's order (and the cursor stays at the gap).
        self.repairing = 0
        self._recent: Deque[str] = deque()
        self._recent_set: Set[str] = set()

    def seen(self, message_id: str) -> bool:
        return message_id in self._recent_set

    def remember(self, message_id: str) -> None:
        """Marks an id as seen without moving the cursor (our own messages:
        the sender never gets them live, so it must not get them in a replay)."""
        if message_id not in self._recent_set:
            self._recent.append(message_id)
            self._recent_set.add(message_id)
            if len(self._recent) > _DEDUPE_WINDOW:
                self._recent_set.discard(self._recent.popleft())

    def rewind(self, anchor: str) -> None:
        """The messages after ``anchor`` were not the channel's history
        (``channel_gap``): resume from there; ids already seen stay seen, so
        the repair's replay brings only what was missing."""
        self.cursor = anchor
        self.zero_anchor = anchor == ZERO_ID

    def record(self, message_id: str) -> None:
        """A message of this channel was handled: resume after it."""
        self.cursor = message_id
        self.zero_anchor = False
        self.remember(message_id)


class _End:
    """Inbox marker: no more items; ``error`` is raised to consumers if set."""

    def __init__(self, error: Optional[ArqonError]) -> None:
        self.error = error


class _Inbox:
    """What :meth:`Client.messages` reads.

    Bounded at ``maxsize`` items for what the server sends: when it is full
    the reader stops reading, so TCP pushes back on the server (which closes
    a client whose outbound queue overflows; the SDK then reconnects and
    replays from the last message delivered, so nothing is lost). The SDK's
    own notices and the end marker may go over the bound by a few items.
    """

    def __init__(self, maxsize: int) -> None:
        self._queue: "asyncio.Queue[object]" = asyncio.Queue()
        self._max = maxsize
        self._space = asyncio.Event()
        self._space.set()
        self._ended = False

    def full(self) -> bool:
        return self._queue.qsize() >= self._max

    async def put(self, item: object) -> None:
        while self.full() and not self._ended:
            self._space.clear()
            await self._space.wait()
        self._queue.put_nowait(item)

    def force(self, item: object) -> None:
        self._queue.put_nowait(item)

    def end(self, error: Optional[ArqonError]) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(_End(error))
            self._space.set()

    async def get(self) -> object:
        item = await self._queue.get()
        if isinstance(item, _End):
            # Leave it for any other consumer.
            self._queue.put_nowait(item)
        elif not self.full():
            self._space.set()
        return item


def _copy_error(error: ArqonError) -> ArqonError:
    """A fresh instance of ``error`` (raising one object twice grows its traceback)."""
    cls: Type[ArqonError] = type(error)
    return cls(error.code, error.message, error.request_id, error.retry_after_ms, error.details)


def _refusal_message(body: Optional[bytes | bytearray]) -> str:
    """The ``error.message`` of a refused upgrade's JSON body, if any."""
    if not body:
        return "the server refused the credentials"
    try:
        parsed = json.loads(body)
        message = parsed["error"]["message"]
        return str(message)
    except (ValueError, KeyError, TypeError):
        return bytes(body).decode("utf-8", "replace")[:200]


class Client:
    """An ArqonBus client. Create it with :func:`connect`.

    Use it as ``async with arqonbus.connect(url) as client:`` (it connects on
    entry and closes on exit) or ``client = await arqonbus.connect(url)``
    followed by ``await client.close()``.

    Args:
        url: the bus endpoint, e.g. ``ws://127.0.0.1:9100/ws``.
        token: sent as ``Authorization: Bearer TOKEN`` on every (re)connect.
            Default: none.
        request_timeout: seconds a request may take in all, reconnects and
            retries included, before it fails with
            :class:`~arqonbus.errors.RequestTimeout`; also bounds opening a
            connection. Default: ``10.0``.
        reconnect: reconnect automatically when the connection drops. With
            ``False`` a drop ends :meth:`messages` with
            :class:`~arqonbus.errors.ConnectionLost` and every later call
            raises it. Default: ``True``.
        backoff_initial: delay before the first reconnect attempt, in seconds;
            it doubles on each failed attempt, with jitter (each delay is drawn
            from ``[d/2, d]``). Default: ``0.1``.
        backoff_max: cap on that delay, in seconds. Default: ``5.0``.
        heartbeat_timeout: seconds without any frame from the server after
            which the connection is considered dead. Default: ``None``, meaning
            ``2 x heartbeat_s`` from the server's ``welcome``.
        max_queue: delivered items buffered for :meth:`messages` before the
            client stops reading from the socket. Default: ``10000``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Optional[str] = None,
        request_timeout: float = 10.0,
        reconnect: bool = True,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        heartbeat_timeout: Optional[float] = None,
        max_queue: int = 10_000,
    ) -> None:
        if request_timeout <= 0:
            raise ValueError("request_timeout must be positive")
        if backoff_initial < 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 <= backoff_initial <= backoff_max")
        if heartbeat_timeout is not None and heartbeat_timeout <= 0:
            raise ValueError("heartbeat_timeout must be positive")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self.url = url
        self._token = token
        self._request_timeout = request_timeout
        self._reconnect = reconnect
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._heartbeat_timeout = heartbeat_timeout
        self._max_queue = max_queue

        self._link: Optional[_Link] = None
        self._pending: Dict[str, _Pending] = {}
        # Insertion-ordered: channels are rejoined in the order joined.
        self._subs: Dict[ChannelKey, _Subscription] = {}
        # `channel_gap` repairs in flight (held so they are not collected).
        self._repairs: Set["asyncio.Task[None]"] = set()
        self._inbox: Optional[_Inbox] = None
        self._changed: Optional["asyncio.Future[None]"] = None
        self._supervisor: Optional["asyncio.Task[None]"] = None
        self._start_lock: Optional[asyncio.Lock] = None
        self._started = False
        self._closed = False
        self._failure: Optional[ArqonError] = None
        self._reconnects = 0

    # ------------------------------------------------------------------ life

    def __await__(self) -> Generator[Any, None, "Client"]:
        return self._start_and_return().__await__()

    async def _start_and_return(self) -> "Client":
        await self.start()
        return self

    async def __aenter__(self) -> "Client":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connects (once) and waits for the server's ``welcome``.

        Raises:
            Unauthorized: the server refused the credentials (HTTP 401).
            ConnectFailed: the server could not be reached or did not speak
                the protocol within ``request_timeout``.
        """
        if self._started:
            return
        if self._closed:
            raise ClientClosed(message="the client is closed")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            loop = asyncio.get_running_loop()
            self._inbox = _Inbox(self._max_queue)
            self._changed = loop.create_future()
            link = await self._open()
            link.ready = True
            self._link = link
            self._started = True
            self._supervisor = loop.create_task(self._supervise(link))

    async def close(self) -> None:
        """Closes the connection; pending requests fail with
        :class:`~arqonbus.errors.ClientClosed`, and :meth:`messages` ends after
        the items already received. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._notify()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        link = self._link
        if link is not None:
            link.mark_lost("client closed")
            await self._shut_link(link, graceful=True)
        if self._inbox is not None:
            self._inbox.end(None)

    # ------------------------------------------------------------ properties

    @property
    def welcome(self) -> Optional[Welcome]:
        """The current connection's ``welcome`` (``None`` before connecting)."""
        return self._link.welcome if self._link is not None else None

    @property
    def client_id(self) -> Optional[str]:
        """This connection's client id (a new one after each reconnect)."""
        welcome = self.welcome
        return welcome.client_id if welcome is not None else None

    @property
    def role(self) -> Optional[str]:
        """The role the server gave this connection."""
        welcome = self.welcome
        return welcome.role if welcome is not None else None

    @property
    def connected(self) -> bool:
        """Whether a connection is up and ready for requests."""
        link = self._link
        return link is not None and link.ready and not link.lost.done() and not self._closed

    @property
    def reconnects(self) -> int:
        """How many times the client has reconnected."""
        return self._reconnects

    @property
    def channels(self) -> List[ChannelKey]:
        """The channels joined through this client (rejoined on reconnect)."""
        return list(self._subs)

    # -------------------------------------------------------------- messages

    async def messages(self) -> AsyncIterator[Incoming]:
        """Yields delivered messages, events and the SDK's notices, in order.

        Several consumers may iterate at once; each item goes to one of them.
        The iteration ends after :meth:`close` (once the items already
        received are yielded) and raises the error that stopped the client
        otherwise (e.g. :class:`~arqonbus.errors.ConnectionLost` with
        ``reconnect=False``).
        """
        self._require_inbox()
        while True:
            try:
                item = await self.receive()
            except ClientClosed:
                return
            yield item

    async def receive(self, timeout: Optional[float] = None) -> Incoming:
        """Returns the next item :meth:`messages` would yield.

        Raises:
            ClientClosed: the client was closed and everything was received.
            asyncio.TimeoutError: nothing arrived within ``timeout``.
        """
        inbox = self._require_inbox()
        item = await asyncio.wait_for(inbox.get(), timeout) if timeout is not None else await inbox.get()
        if isinstance(item, _End):
            if item.error is not None:
                raise _copy_error(item.error)
            raise ClientClosed(message="the client is closed")
        return item  # type: ignore[return-value]

    # -------------------------------------------------------------- requests

    async def request(
        self,
        command: str,
        args: Optional[Mapping[str, Any]] = None,
        *,
        timeout: Optional[float] = None,
        retry: bool = False,
        id: Optional[str] = None,
        on_response: Optional[Callable[[Any], None]] = None,
    ) -> Any:
        """Sends a command and returns the response's ``payload``.

        Args:
            command: the command name.
            args: its arguments (omitted from the frame when ``None``).
            timeout: overrides ``request_timeout`` for this call.
            retry: send again (same id) after a reconnect if the connection
                drops before the answer; only for commands safe to repeat.
            id: the frame's id; default: a fresh one.
            on_response: called with the payload from the reader task, before
                any later frame is handled.

        Raises:
            ArqonError: the typed error the server answered with.
            RequestTimeout: no answer within the timeout.
            ConnectionLost: the connection dropped and ``retry`` is false (or
                reconnecting is off).
            ClientClosed: the client is closed.
        """
        self._require_inbox()
        rid = id if id is not None else new_id()
        limit = self._request_timeout if timeout is None else timeout
        frame: Dict[str, Any] = {"type": "command", "id": rid, "command": command}
        if args is not None:
            frame["args"] = dict(args)
        text = json.dumps(frame)

        async def attempt() -> Any:
            while True:
                link = await self._ready_link()
                try:
                    return await self._exchange(link, rid, text, on_response)
                except _LinkLost:
                    if self._closed:
                        raise ClientClosed(message=f"client closed during {command}", request_id=rid) from None
                    if not retry or not self._reconnect:
                        raise ConnectionLost(
                            message=f"connection lost before the answer to {command}", request_id=rid
                        ) from None
                    log.debug("retrying %s (%s) after reconnect", command, rid)

        try:
            return await asyncio.wait_for(attempt(), limit)
        except asyncio.TimeoutError:
            raise RequestTimeout(message=f"no answer to {command} within {limit:g} s", request_id=rid) from None

    async def command(self, name: str, /, **args: Any) -> Any:
        """Sends any command with keyword arguments; returns the payload.

        Never retried after a reconnect (see the module docs).
        """
        return await self.request(name, args if args else None)

    async def ping(self, *, timeout: Optional[float] = None) -> float:
        """Round trip to the server; returns the round-trip time in seconds."""
        started = time.perf_counter()
        payload = await self.request("ping", timeout=timeout, retry=True)
        if not (isinstance(payload, dict) and payload.get("pong") is True):
            raise ProtocolViolation(message=f"unexpected ping answer: {payload!r}")
        return time.perf_counter() - started

    async def status(self, *, timeout: Optional[float] = None) -> Status:
        """The server's version, uptime, counts and storage health."""
        return Status.from_payload(await self.request("status", timeout=timeout, retry=True))

    async def help(self, *, timeout: Optional[float] = None) -> List[CommandHelp]:
        """Every command the server knows, with whether this client may use it."""
        payload = await self.request("help", timeout=timeout, retry=True)
        return [CommandHelp.from_payload(c) for c in payload["commands"]]

    async def create_channel(self, room: str, channel: str, *, timeout: Optional[float] = None) -> bool:
        """Creates a channel (role ``user``); ``False`` if it already existed."""
        payload = await self.request("create_channel", {"room": room, "channel": channel}, timeout=timeout)
        return bool(payload["created"])

    async def delete_channel(self, room: str, channel: str, *, timeout: Optional[float] = None) -> bool:
        """Deletes a channel (role ``admin``); its members get ``channel_deleted``."""
        payload = await self.request("delete_channel", {"room": room, "channel": channel}, timeout=timeout)
        self._subs.pop((room, channel), None)
        return bool(payload["deleted"])

    async def join(
        self, room: str, channel: str, since: Optional[str] = None, *, timeout: Optional[float] = None
    ) -> JoinResult:
        """Joins a channel; its messages then arrive through :meth:`messages`.

        With ``since`` (a message id), every stored message after it is
        delivered first. Without it, delivery starts with the messages stored
        from this call on. Either way the channel is rejoined after a
        reconnect from the last message seen in it, so nothing the channel
        still keeps is missed or delivered twice.
        """
        key = (room, channel)
        anchor = since
        if anchor is None:
            # Anchor the replay cursor now: the channel's newest message, or
            # ZERO_ID (= everything kept) if it has none or does not exist
            # yet. Joining with `since` makes the server replay whatever was
            # stored between this look-up and the join, so there is no gap.
            try:
                info = await self.channel_info(room, channel, timeout=timeout)
                anchor = info.last_id or ZERO_ID
            except NotFound:
                anchor = ZERO_ID
        cursor = anchor

        def track(_payload: Any) -> None:
            if key not in self._subs:
                self._subs[key] = _Subscription(cursor, cursor_is_anchor_zero=(since is None and cursor == ZERO_ID))

        payload = await self.request(
            "join_channel",
            {"room": room, "channel": channel, "since": anchor},
            timeout=timeout,
            retry=True,
            on_response=track,
        )
        return JoinResult(
            room=str(payload.get("room", room)),
            channel=str(payload.get("channel", channel)),
            members=int(payload.get("members", 0)),
            truncated=bool(payload.get("truncated")) if since is not None else False,
        )

    #: Alias of :meth:`join`, named as the wire command.
    join_channel = join

    async def leave(self, room: str, channel: str, *, timeout: Optional[float] = None) -> bool:
        """Leaves a channel; ``False`` if this connection was not a member.

        The channel is forgotten at once (not rejoined after a reconnect),
        even if the request then fails.
        """
        self._subs.pop((room, channel), None)
        payload = await self.request("leave_channel", {"room": room, "channel": channel}, timeout=timeout)
        return bool(payload["left"])

    #: Alias of :meth:`leave`, named as the wire command.
    leave_channel = leave

    async def list_channels(
        self, room: Optional[str] = None, *, timeout: Optional[float] = None
    ) -> List[ChannelSummary]:
        """Every channel, or those of ``room``, with member counts."""
        args = {"room": room} if room is not None else None
        payload = await self.request("list_channels", args, timeout=timeout, retry=True)
        return [
            ChannelSummary(room=str(c["room"]), channel=str(c["channel"]), members=int(c["members"]))
            for c in payload["channels"]
        ]

    async def channel_info(self, room: str, channel: str, *, timeout: Optional[float] = None) -> ChannelInfo:
        """A channel's member count, creation time, stored count and last id."""
        payload = await self.request("channel_info", {"room": room, "channel": channel}, timeout=timeout, retry=True)
        return ChannelInfo.from_payload(payload)

    async def history(
        self,
        room: str,
        channel: str,
        limit: Optional[int] = None,
        before: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
    ) -> List[Message]:
        """The newest ``limit`` (1..1000, server default 50) stored messages,
        older than ``before`` if given, oldest first."""
        args: Dict[str, Any] = {"room": room, "channel": channel}
        if limit is not None:
            args["limit"] = limit
        if before is not None:
            args["before"] = before
        payload = await self.request("history", args, timeout=timeout, retry=True)
        return [Message.from_envelope(m) for m in payload["messages"]]

    async def presence(
        self,
        room: str,
        channel: str,
        limit: Optional[int] = None,
        after: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
    ) -> Presence:
        """Who is in a channel: at most ``limit`` (1..1000, server default 100)
        members ordered by client id, after the client id ``after`` (the last
        one of the previous page), with the channel's ``total`` connections and
        distinct ``users``. A room whose ``presence`` option is off raises
        :class:`~arqonbus.errors.Forbidden`."""
        args: Dict[str, Any] = {"room": room, "channel": channel}
        if limit is not None:
            args["limit"] = limit
        if after is not None:
            args["after"] = after
        return Presence.from_payload(await self.request("presence", args, timeout=timeout, retry=True))

    async def publish(
        self,
        room: str,
        channel: str,
        payload: Any,
        *,
        meta: Optional[Mapping[str, str]] = None,
        id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> str:
        """Publishes to a channel (role ``user``) and returns the message id
        once the server has stored it.

        The request's id becomes the message's id, so it is safe to retry:
        the SDK resends it with the same id after a reconnect, and the server
        stores and delivers it only once. Pass your own ``id`` (from
        :func:`arqonbus.new_id`) to make your own retries idempotent too.
        """
        args: Dict[str, Any] = {"room": room, "channel": channel, "payload": payload}
        if meta is not None:
            args["meta"] = dict(meta)
        rid = id if id is not None else new_id()
        key = (room, channel)
        sub = self._subs.get(key)
        if sub is not None:
            # The server does not send us our own message; keep a replay
            # after a reconnect from sending it either.
            sub.remember(rid)

        def advance(result: Any) -> None:
            # Runs in the reader: every message of the channel stored before
            # ours was queued to us before this response (the server appends
            # and delivers under one per-channel lock), so resuming after
            # ours skips nothing, and the replay gets shorter.
            current = self._subs.get(key)
            if current is not None and isinstance(result, dict) and isinstance(result.get("id"), str):
                current.record(result["id"])

        result = await self.request("publish", args, timeout=timeout, retry=True, id=rid, on_response=advance)
        return str(result["id"])

    async def send(
        self,
        *,
        room: Optional[str] = None,
        channel: Optional[str] = None,
        to: Optional[str] = None,
        payload: Any = None,
        meta: Optional[Mapping[str, str]] = None,
        id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> str:
        """Sends a message without waiting for any confirmation; returns its id.

        Target: ``room`` + ``channel`` (the channel's members), ``room`` alone
        (every member of the room's channels) or ``to`` (one client). A
        failure comes back later as :class:`~arqonbus.models.ErrorReceived`
        in :meth:`messages`, with ``error.request_id`` = the returned id.
        Waits up to ``timeout`` for a connection; never retried.
        """
        if to is not None and (room is not None or channel is not None):
            raise InvalidEnvelope(message="`to` cannot be combined with `room` or `channel`")
        if to is None and room is None:
            raise InvalidEnvelope(message="a message needs `room` (with or without `channel`) or `to`")
        if channel is not None and room is None:
            raise InvalidEnvelope(message="`channel` needs `room`")
        self._require_inbox()
        rid = id if id is not None else new_id()
        frame: Dict[str, Any] = {"type": "message", "id": rid}
        if room is not None:
            frame["room"] = room
        if channel is not None:
            frame["channel"] = channel
        if to is not None:
            frame["to"] = to
        frame["payload"] = payload
        if meta is not None:
            frame["meta"] = dict(meta)
        if room is not None and channel is not None:
            sub = self._subs.get((room, channel))
            if sub is not None:
                sub.remember(rid)  # never replayed back to us (see publish)
        limit = self._request_timeout if timeout is None else timeout
        try:
            link = await asyncio.wait_for(self._ready_link(), limit)
        except asyncio.TimeoutError:
            raise ConnectionLost(message=f"not connected within {limit:g} s", request_id=rid) from None
        try:
            await link.ws.send(json.dumps(frame))
        except ConnectionClosed:
            raise ConnectionLost(message="connection lost while sending", request_id=rid) from None
        return rid

    # ------------------------------------------------------------- internals

    def _require_inbox(self) -> _Inbox:
        if self._inbox is None:
            raise ClientClosed(message="the client is not started: use `async with` or `await connect(...)`")
        return self._inbox

    def _notify(self) -> None:
        """Wakes everything waiting in :meth:`_ready_link`."""
        changed = self._changed
        if changed is not None and not changed.done():
            changed.set_result(None)
        if changed is not None:
            self._changed = asyncio.get_running_loop().create_future()

    def _terminal_error(self) -> Optional[ArqonError]:
        if self._closed:
            return ClientClosed(message="the client is closed")
        if self._failure is not None:
            return _copy_error(self._failure)
        return None

    async def _ready_link(self) -> _Link:
        """The current link once it is ready (connected and rejoined)."""
        while True:
            error = self._terminal_error()
            if error is not None:
                raise error
            link = self._link
            if link is not None and link.ready and not link.lost.done():
                return link
            changed = self._changed
            assert changed is not None
            # Shielded: a cancelled waiter must not cancel the shared future.
            await asyncio.shield(changed)

    async def _exchange(
        self, link: _Link, rid: str, text: str, on_response: Optional[Callable[[Any], None]] = None
    ) -> Any:
        """Sends one request frame on ``link`` and waits for its answer."""
        future: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(future, on_response)
        try:
            try:
                await link.ws.send(text)
            except ConnectionClosed:
                raise _LinkLost() from None
            if not future.done():
                await asyncio.wait({future, link.lost}, return_when=asyncio.FIRST_COMPLETED)
            if future.done():
                return future.result()
            raise _LinkLost()
        finally:
            if self._pending.get(rid) is not None and self._pending[rid].future is future:
                del self._pending[rid]

    async def _open(self) -> _Link:
        """Opens a connection and reads its ``welcome``; starts its tasks."""
        kwargs: Dict[str, Any] = {
            # The bus pings us; liveness is the watchdog's job (no frame for
            # 2 x heartbeat), so websockets' own keepalive stays off.
            "ping_interval": None,
            # Server frames can be large (a history of 1,000 messages).
            "max_size": None,
            # The bus does not negotiate compression.
            "compression": None,
            "open_timeout": self._request_timeout,
            "close_timeout": _CLOSE_TIMEOUT,
            "create_connection": _TrackedConnection,
        }
        if self._token is not None:
            kwargs["additional_headers"] = {"Authorization": f"Bearer {self._token}"}
        if _WS_HAS_PROXY_ARG:
            kwargs["proxy"] = None
        try:
            ws = await _ws_connect(self.url, **kwargs)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401:
                raise Unauthorized(message=_refusal_message(exc.response.body)) from None
            raise ConnectFailed(message=f"upgrade refused with HTTP {status}") from exc
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectFailed(message=f"cannot connect to {self.url}: {exc or type(exc).__name__}") from exc
        except Exception as exc:  # InvalidURI, InvalidHandshake, ...
            raise ConnectFailed(message=f"cannot connect to {self.url}: {exc}") from exc
        assert isinstance(ws, _TrackedConnection)
        try:
            raw = await asyncio.wait_for(ws.recv(), self._request_timeout)
            frame = json.loads(raw)
            payload = frame.get("payload") if isinstance(frame, dict) else None
            if not (
                isinstance(frame, dict)
                and frame.get("type") == "event"
                and isinstance(payload, dict)
                and payload.get("event") == "welcome"
            ):
                raise ProtocolViolation(message=f"expected the welcome event first, got {str(raw)[:200]!r}")
        except BaseException as exc:
            ws.transport.abort()
            if isinstance(exc, ArqonError):
                raise ConnectFailed(message=exc.message) from exc
            if isinstance(exc, (asyncio.TimeoutError, ConnectionClosed, ValueError)):
                raise ConnectFailed(message=f"no welcome from {self.url}: {exc or type(exc).__name__}") from exc
            raise
        link = _Link(ws, Welcome.from_payload(payload))
        ws.last_rx = asyncio.get_running_loop().time()
        loop = asyncio.get_running_loop()
        link.reader = loop.create_task(self._read(link))
        link.watchdog = loop.create_task(self._watch(link))
        log.debug("connected to %s as %s", self.url, link.welcome.client_id)
        return link

    async def _read(self, link: _Link) -> None:
        """The reader: every frame of ``link``, in order."""
        ws = link.ws
        try:
            async for raw in ws:
                if not isinstance(raw, str):
                    continue  # the protocol has no binary frames from the server
                try:
                    frame = json.loads(raw)
                except ValueError:
                    log.warning("ignoring a frame that is not JSON: %.200r", raw)
                    continue
                if isinstance(frame, dict):
                    await self._dispatch(link, frame)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not leave the link half-alive
            log.exception("arqonbus reader failed")
            ws.transport.abort()
        finally:
            # Through the sans-I/O protocol: `ws.close_code` is not in 14.0.
            code = ws.protocol.close_code
            reason = ws.protocol.close_reason or ("connection closed" if code is not None else "connection dropped")
            link.mark_lost(reason, code)

    async def _dispatch(self, link: _Link, frame: Dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "response" or kind == "error":
            rid = frame.get("request_id")
            pending = self._pending.get(rid) if isinstance(rid, str) else None
            if kind == "response":
                if pending is not None and not pending.future.done():
                    payload = frame.get("payload")
                    if pending.on_response is not None:
                        try:
                            pending.on_response(payload)
                        except Exception:
                            log.exception("arqonbus response hook failed")
                    pending.future.set_result(payload)
                # else: the answer to a request that gave up; nobody wants it.
                return
            error = error_from_wire(frame.get("error"), rid if isinstance(rid, str) else None)
            if pending is not None and not pending.future.done():
                pending.future.set_exception(error)
            else:
                await self._deliver(link, ErrorReceived(error))
        elif kind == "message":
            message = Message.from_envelope(frame)
            sub = None
            if message.room is not None and message.channel is not None:
                sub = self._subs.get((message.room, message.channel))
                if sub is not None and sub.seen(message.id):
                    log.debug("dropping duplicate %s in %s/%s", message.id, message.room, message.channel)
                    return
                if sub is not None and sub.repairing:
                    return  # the repair's replay brings it, in order
            await self._deliver(link, message)
            # Only once it is in the inbox: a message lost with a dying
            # reader is then replayed by the rejoin.
            if sub is not None:
                sub.record(message.id)
        elif kind == "event":
            payload = frame.get("payload")
            if not isinstance(payload, dict):
                payload = {"event": None, "value": payload}
            name = payload.get("event")
            if name == "welcome":
                return  # handled in _open; not part of the stream
            if name == "channel_deleted" or name == "channel_left":
                # Deleted, or the application's backend took this client
                # out (server API `unsubscribe`): not rejoined any more.
                room, channel = payload.get("room"), payload.get("channel")
                if isinstance(room, str) and isinstance(channel, str):
                    self._subs.pop((room, channel), None)
            event = Event(name=str(name), payload=payload, id=frame.get("id"), timestamp=frame.get("timestamp"))
            await self._deliver(link, event)
            if name == "channel_gap":
                self._repair_gap(payload)
        else:
            log.warning("ignoring a frame of unknown type %r", kind)

    async def _deliver(self, link: _Link, item: Incoming) -> None:
        inbox = self._inbox
        assert inbox is not None
        if not inbox.full():
            inbox.force(item)
            return
        link.blocked = True
        try:
            await inbox.put(item)
        finally:
            link.blocked = False
            link.ws.last_rx = asyncio.get_running_loop().time()

    def _dead_after(self, link: _Link) -> float:
        if self._heartbeat_timeout is not None:
            return self._heartbeat_timeout
        return 2.0 * link.welcome.heartbeat_s

    async def _watch(self, link: _Link) -> None:
        """The watchdog: declares ``link`` dead after a silence of
        ``heartbeat_timeout`` (default 2 x heartbeat_s)."""
        loop = asyncio.get_running_loop()
        limit = self._dead_after(link)
        period = max(0.05, min(1.0, limit / 8))
        ws = link.ws
        while not link.lost.done():
            await asyncio.sleep(period)
            now = loop.time()
            if link.blocked:
                ws.last_rx = now
                continue
            silent = now - ws.last_rx
            if silent > limit:
                log.warning("no frame from %s for %.1f s: reconnecting", self.url, silent)
                self._abort(link, f"no frame from the server for {silent:.1f} s")
                return

    async def _shut_link(self, link: _Link, *, graceful: bool) -> None:
        """Stops ``link``'s tasks and socket."""
        if link.watchdog is not None:
            link.watchdog.cancel()
        if graceful and link.ws.protocol.close_code is None:
            try:
                await asyncio.wait_for(link.ws.close(), _CLOSE_TIMEOUT + 1)
            except Exception:
                pass
        link.ws.transport.abort()
        if link.reader is not None:
            if graceful:
                link.reader.cancel()
            await asyncio.gather(link.reader, return_exceptions=True)
        if link.watchdog is not None:
            await asyncio.gather(link.watchdog, return_exceptions=True)

    def _abort(self, link: _Link, reason: str) -> None:
        """Declares ``link`` dead and drops its socket."""
        link.mark_lost(reason)
        link.ws.transport.abort()

    def _fail(self, error: ArqonError) -> None:
        """Stops the client for good with ``error``."""
        log.warning("arqonbus client stopped: %s", error)
        self._failure = error
        self._notify()
        if self._inbox is not None:
            self._inbox.end(error)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._backoff_max, self._backoff_initial * (2 ** min(attempt - 1, 30)))
        return random.uniform(ceiling / 2, ceiling)

    async def _supervise(self, link: _Link) -> None:
        """Waits for each link to die and replaces it."""
        inbox = self._inbox
        assert inbox is not None
        attempts = 0
        try:
            while True:
                reason, code = await asyncio.shield(link.lost)
                # Waits for the reader to finish: its last messages reach the
                # inbox (or are left to the replay) before the new link's do.
                await self._shut_link(link, graceful=False)
                if self._closed:
                    return
                log.info("connection to %s lost: %s", self.url, reason)
                if not self._reconnect:
                    self._fail(ConnectionLost(message=f"connection lost: {reason}"))
                    return
                inbox.force(Disconnected(reason=reason, code=code))
                # A link that died young does not reset the backoff, so a
                # server that accepts and drops at once is not hammered.
                loop = asyncio.get_running_loop()
                if loop.time() - link.opened_at >= self._backoff_max:
                    attempts = 0
                new_link: Optional[_Link] = None
                while new_link is None:
                    attempts += 1
                    await asyncio.sleep(self._backoff(attempts))
                    if self._closed:
                        return
                    try:
                        candidate = await self._open()
                    except Unauthorized as exc:
                        self._fail(exc)
                        return
                    except ConnectFailed as exc:
                        log.info("reconnect attempt %d failed: %s", attempts, exc.message)
                        continue
                    self._link = candidate
                    try:
                        rejoined, truncated, failed = await self._rejoin(candidate)
                    except _LinkLost:
                        log.info("connection lost again while rejoining")
                        await self._shut_link(candidate, graceful=False)
                        continue
                    new_link = candidate
                    new_link.ready = True
                    self._reconnects += 1
                    self._notify()
                    inbox.force(
                        Reconnected(
                            attempts=attempts,
                            client_id=new_link.welcome.client_id,
                            rejoined=rejoined,
                            truncated=truncated,
                            failed=failed,
                        )
                    )
                    log.info("reconnected to %s after %d attempt(s)", self.url, attempts)
                link = new_link
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug; stop loudly rather than hang
            log.exception("arqonbus supervisor failed")
            self._fail(ConnectionLost(message=f"supervisor failed: {exc!r}"))

    def _repair_gap(self, payload: Dict[str, Any]) -> None:
        """``channel_gap``: what arrived after ``last_id`` in that channel was
        not its history (a cluster node lost Redis). Rejoin from ``last_id``
        (or from where this connection joined, when it is null): the replay
        brings what was missing, and the ids already seen are skipped. The
        event itself has reached the user first, so an application that
        cares about order knows the earlier deliveries were out of it."""
        key = (payload.get("room"), payload.get("channel"))
        sub = self._subs.get(key)  # type: ignore[arg-type]
        if sub is None:
            return
        last = payload.get("last_id")
        anchor = last if isinstance(last, str) else sub.link_anchor
        sub.rewind(anchor)
        sub.repairing += 1
        task = asyncio.get_running_loop().create_task(self._rejoin_one(key, sub, anchor))  # type: ignore[arg-type]
        self._repairs.add(task)
        task.add_done_callback(self._repairs.discard)

    async def _rejoin_one(self, key: ChannelKey, sub: _Subscription, anchor: str) -> None:
        answered = False

        def replay_follows(_payload: Any) -> None:
            # In the reader, before the replay's first frame.
            nonlocal answered
            answered = True
            sub.repairing -= 1

        try:
            if self._subs.get(key) is not sub:
                return  # left meanwhile
            args = {"room": key[0], "channel": key[1], "since": anchor}
            await self.request("join_channel", args, retry=True, on_response=replay_follows)
        except ClientClosed:
            pass
        except ArqonError as exc:
            # Live copies were dropped while waiting: reconnect, whose rejoin
            # starts from the cursor still held at the gap.
            log.warning("could not repair the gap in %s/%s: %s; reconnecting", key[0], key[1], exc)
            link = self._link
            if link is not None:
                self._abort(link, f"repairing {key[0]}/{key[1]} failed: {exc}")
        finally:
            if not answered:
                sub.repairing -= 1

    async def _rejoin(
        self, link: _Link
    ) -> Tuple[List[ChannelKey], List[ChannelKey], Dict[ChannelKey, ArqonError]]:
        """Joins every tracked channel again on ``link``, each from its cursor."""
        rejoined: List[ChannelKey] = []
        truncated: List[ChannelKey] = []
        failed: Dict[ChannelKey, ArqonError] = {}
        for key, sub in list(self._subs.items()):
            while self._subs.get(key) is sub:  # else: left meanwhile
                zero_anchor = sub.zero_anchor
                sub.link_anchor = sub.cursor
                rid = new_id()
                args = {"room": key[0], "channel": key[1], "since": sub.cursor}
                text = json.dumps({"type": "command", "id": rid, "command": "join_channel", "args": args})
                try:
                    payload = await asyncio.wait_for(self._exchange(link, rid, text), self._request_timeout)
                except asyncio.TimeoutError:
                    self._abort(link, "no answer to join_channel while rejoining")
                    raise _LinkLost() from None
                except RateLimited as exc:
                    # Not processed: try the same channel again when allowed.
                    await asyncio.sleep(max(exc.retry_after_ms or 100, 10) / 1000)
                    continue
                except _PERMANENT_JOIN_ERRORS as exc:
                    log.warning("could not rejoin %s/%s: %s", key[0], key[1], exc)
                    del self._subs[key]
                    failed[key] = exc
                    break
                except ArqonError as exc:
                    # Transient (storage unavailable, internal error...): keep
                    # the channel and try the whole reconnect again later.
                    self._abort(link, f"rejoining {key[0]}/{key[1]} failed: {exc}")
                    raise _LinkLost() from None
                rejoined.append(key)
                if isinstance(payload, dict) and payload.get("truncated") and not zero_anchor:
                    truncated.append(key)
                break
        return rejoined, truncated, failed


def connect(
    url: str,
    *,
    token: Optional[str] = None,
    request_timeout: float = 10.0,
    reconnect: bool = True,
    backoff_initial: float = 0.1,
    backoff_max: float = 5.0,
    heartbeat_timeout: Optional[float] = None,
    max_queue: int = 10_000,
) -> Client:
    """Creates a :class:`Client`; it connects on ``async with`` or ``await``.

    ::

        async with arqonbus.connect("ws://127.0.0.1:9100/ws") as client:
            await client.join("lobby", "general")
            async for item in client.messages():
                ...

    See :class:`Client` for the arguments.
    """
    return Client(
        url,
        token=token,
        request_timeout=request_timeout,
        reconnect=reconnect,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        heartbeat_timeout=heartbeat_timeout,
        max_queue=max_queue,
    )
