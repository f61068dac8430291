"""ArqonBus: an asyncio client for the ArqonBus real-time message bus.

Implements wire protocol version 1: request/response correlation by id,
typed errors, typed helpers for every command, fire-and-forget messages, and
automatic reconnection that rejoins channels without gaps or duplicates.

::

    import arqonbus

    async with arqonbus.connect("ws://127.0.0.1:9100/ws") as client:
        await client.join("lobby", "general")
        await client.publish("lobby", "general", {"text": "hello"})
        async for item in client.messages():
            if isinstance(item, arqonbus.Message):
                print(item.from_, item.payload)

A backend publishes to the same channels over HTTP with an API key::

    async with arqonbus.ServerApi("http://127.0.0.1:9100", "the-backend-key-0123") as api:
        await api.publish("lobby", "general", {"text": "deploy done"})
"""

from ._ids import ZERO_ID, is_valid_id, new_id
from .api import BatchCommand, ServerApi
from .client import Client, connect
from .errors import (
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
    PresenceMember,
    PresenceStats,
    Reconnected,
    Status,
    StorageStatus,
    Welcome,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "connect",
    "ServerApi",
    "BatchCommand",
    "new_id",
    "is_valid_id",
    "ZERO_ID",
    # errors
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
    # models
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
    "__version__",
]
