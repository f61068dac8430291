"""What the client yields and returns: plain dataclasses.

:meth:`Client.messages` yields :data:`Incoming` items: delivered
:class:`Message` objects, server :class:`Event` objects, errors answering
fire-and-forget sends (:class:`ErrorReceived`) and the SDK's own
:class:`Disconnected` / :class:`Reconnected` notices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .errors import ArqonError

__all__ = [
    "Message",
    "Event",
    "ErrorReceived",
    "Disconnected",
    "Reconnected",
    "Incoming",
    "Welcome",
    "Status",
    "StorageStatus",
    "CommandHelp",
    "JoinResult",
    "ChannelSummary",
    "ChannelInfo",
    "ChannelKey",
    "Presence",
    "PresenceMember",
    "PresenceStats",
]

#: ``(room, channel)``.
ChannelKey = Tuple[str, str]


def parse_timestamp(value: str) -> datetime:
    """Parses the server's RFC 3339 UTC timestamps (``2026-11-29T12:00:00.123Z``)."""
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    return datetime.fromisoformat(text).astimezone(timezone.utc)


@dataclass(frozen=True)
class Message:
    """A delivered (or stored) message.

    ``channel`` is ``None`` for a room-wide message; ``room`` and ``channel``
    are both ``None`` for a direct message. ``from_`` is the sender's client
    id (``from`` on the wire), or ``"server"`` for a message the application's
    backend sent through the server API. ``user`` is the sender's user (the
    identity of its credential, set by the server), ``None`` when the sender
    is anonymous or the server API.
    """

    id: str
    room: Optional[str]
    channel: Optional[str]
    from_: Optional[str]
    payload: Any
    meta: Optional[Dict[str, str]]
    timestamp: str
    to: Optional[str] = None
    user: Optional[str] = None

    @property
    def time(self) -> datetime:
        """:attr:`timestamp` as an aware UTC :class:`~datetime.datetime`."""
        return parse_timestamp(self.timestamp)

    @classmethod
    def from_envelope(cls, frame: Mapping[str, Any]) -> "Message":
        """Builds a message from a wire envelope of ``type: message``."""
        meta = frame.get("meta")
        return cls(
            id=str(frame.get("id", "")),
            room=frame.get("room"),
            channel=frame.get("channel"),
            from_=frame.get("from"),
            payload=frame.get("payload"),
            meta=dict(meta) if isinstance(meta, dict) else None,
            timestamp=str(frame.get("timestamp", "")),
            to=frame.get("to"),
            user=frame.get("user"),
        )


@dataclass(frozen=True)
class Event:
    """A server event (PROTOCOL.md section 5), e.g. ``member_joined``.

    ``payload`` is the whole event payload, ``event`` key included.
    """

    name: str
    payload: Dict[str, Any]
    id: Optional[str] = None
    timestamp: Optional[str] = None


@dataclass(frozen=True)
class ErrorReceived:
    """An error the server sent that answers no pending request, typically a
    failed fire-and-forget :meth:`Client.send` (``error.request_id`` is the id
    :meth:`Client.send` returned)."""

    error: ArqonError


@dataclass(frozen=True)
class Disconnected:
    """The SDK lost the connection and is about to reconnect.

    ``code`` is the WebSocket close code when there was one (``1001`` on
    server shutdown); ``reason`` is a short human-readable description.
    """

    reason: str
    code: Optional[int] = None


@dataclass(frozen=True)
class Reconnected:
    """The SDK reconnected and rejoined the channels.

    Attributes:
        attempts: connection attempts it took.
        client_id: the new connection's client id (it changes on reconnect).
        rejoined: channels joined again, each replayed from the last message
            seen in it.
        truncated: rejoined channels whose history no longer held the last
            message seen: messages may have been missed there.
        failed: channels that could not be rejoined (e.g. deleted meanwhile),
            with the error; they are no longer joined.
    """

    attempts: int
    client_id: Optional[str]
    rejoined: List[ChannelKey] = field(default_factory=list)
    truncated: List[ChannelKey] = field(default_factory=list)
    failed: Dict[ChannelKey, ArqonError] = field(default_factory=dict)


#: Everything :meth:`Client.messages` yields.
Incoming = Union[Message, Event, ErrorReceived, Disconnected, Reconnected]


@dataclass(frozen=True)
class Welcome:
    """The ``welcome`` event that opens every connection.

    ``user`` is the connection's user: the identity of its credential (a
    static token's ``client``, a JWT's ``sub``), ``None`` when anonymous.
    """

    client_id: str
    role: str
    server_version: str
    heartbeat_s: float
    limits: Dict[str, Any]
    user: Optional[str] = None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> "Welcome":
        """Builds it from the event's payload."""
        heartbeat = payload.get("heartbeat_s")
        return cls(
            client_id=str(payload.get("client_id", "")),
            role=str(payload.get("role", "")),
            server_version=str(payload.get("server_version", "")),
            heartbeat_s=float(heartbeat) if isinstance(heartbeat, (int, float)) and heartbeat > 0 else 20.0,
            limits=dict(payload.get("limits") or {}),
            user=payload.get("user") if isinstance(payload.get("user"), str) else None,
        )


@dataclass(frozen=True)
class StorageStatus:
    """``status.storage``."""

    backend: str
    healthy: bool


@dataclass(frozen=True)
class Status:
    """The ``status`` command's answer."""

    version: str
    uptime_s: int
    connections: int
    rooms: int
    channels: int
    storage: StorageStatus

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> "Status":
        """Builds it from the response payload."""
        storage = p.get("storage") or {}
        return cls(
            version=str(p["version"]),
            uptime_s=int(p["uptime_s"]),
            connections=int(p["connections"]),
            rooms=int(p["rooms"]),
            channels=int(p["channels"]),
            storage=StorageStatus(backend=str(storage.get("backend")), healthy=bool(storage.get("healthy"))),
        )


@dataclass(frozen=True)
class CommandHelp:
    """One entry of the ``help`` command's answer."""

    name: str
    description: str
    args: List[Dict[str, Any]]
    role: str
    allowed: bool
    #: Only the server API has it (``POST /api/<name>``), not a WebSocket.
    api_only: bool = False

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> "CommandHelp":
        """Builds it from one element of ``commands``."""
        return cls(
            name=str(p["name"]),
            description=str(p.get("description", "")),
            args=list(p.get("args") or []),
            role=str(p.get("role", "")),
            allowed=bool(p.get("allowed")),
            api_only=bool(p.get("api_only")),
        )


@dataclass(frozen=True)
class JoinResult:
    """The ``join_channel`` command's answer.

    ``truncated`` is true when a ``since`` was given and the channel's history
    no longer holds it: everything kept was replayed, older messages are gone.
    """

    room: str
    channel: str
    members: int
    truncated: bool = False


@dataclass(frozen=True)
class ChannelSummary:
    """One element of ``list_channels``."""

    room: str
    channel: str
    members: int


@dataclass(frozen=True)
class ChannelInfo:
    """The ``channel_info`` command's answer."""

    room: str
    channel: str
    members: int
    created_at: str
    stored: int
    last_id: Optional[str]

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> "ChannelInfo":
        """Builds it from the response payload."""
        return cls(
            room=str(p["room"]),
            channel=str(p["channel"]),
            members=int(p["members"]),
            created_at=str(p.get("created_at", "")),
            stored=int(p.get("stored", 0)),
            last_id=p.get("last_id"),
        )


@dataclass(frozen=True)
class PresenceMember:
    """One member in :class:`Presence`: a connection, its user (``None`` when
    anonymous), its JWT's ``info`` claim as sent (a dict, or ``None``) and when
    it joined the channel."""

    client_id: str
    user: Optional[str]
    info: Optional[Dict[str, Any]]
    joined_at: str

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> "PresenceMember":
        """Builds it from one element of ``members``."""
        info = p.get("info")
        return cls(
            client_id=str(p["client_id"]),
            user=p.get("user"),
            info=dict(info) if isinstance(info, dict) else None,
            joined_at=str(p.get("joined_at", "")),
        )


@dataclass(frozen=True)
class Presence:
    """The ``presence`` command's answer: one page of a channel's members,
    ordered by client id (the next page starts ``after`` the last one's
    ``client_id``), with the channel's ``total`` connections and distinct
    ``users`` (each anonymous connection counts as one)."""

    members: List[PresenceMember]
    total: int
    users: int

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> "Presence":
        """Builds it from the response payload."""
        return cls(
            members=[PresenceMember.from_payload(m) for m in p.get("members") or []],
            total=int(p["total"]),
            users=int(p["users"]),
        )


@dataclass(frozen=True)
class PresenceStats:
    """The server API's ``presence_stats`` answer."""

    total: int
    users: int
