"""Errors surface as typed exceptions; timeouts and refusals too."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

import arqonbus
from arqonbus import (
    ArqonError,
    ConnectFailed,
    ErrorReceived,
    Forbidden,
    InvalidArgs,
    InvalidEnvelope,
    InvalidName,
    NotFound,
    RateLimited,
    RequestTimeout,
    Unauthorized,
    UnknownCommand,
    error_from_wire,
)
from support import BusServer, bounded, next_item, unique


@bounded(60)
async def test_history_of_unknown_channel_is_not_found(bus, make_client) -> None:
    client = await make_client(bus.url)
    with pytest.raises(NotFound) as caught:
        await client.history(unique("room"), unique("ch"))
    error = caught.value
    assert error.code == "NOT_FOUND"
    assert error.message
    assert arqonbus.is_valid_id(error.request_id)


@bounded(60)
async def test_channel_info_of_unknown_channel_is_not_found(bus, make_client) -> None:
    client = await make_client(bus.url)
    with pytest.raises(NotFound):
        await client.channel_info(unique("room"), unique("ch"))


@bounded(60)
async def test_history_before_unknown_id_is_not_found(bus, make_client) -> None:
    client = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await client.publish(room, channel, 1)
    with pytest.raises(NotFound):
        await client.history(room, channel, before=arqonbus.new_id())


@bounded(60)
async def test_delete_channel_as_user_is_forbidden(bus, make_client) -> None:
    client = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await client.create_channel(room, channel)
    with pytest.raises(Forbidden) as caught:
        await client.delete_channel(room, channel)
    assert caught.value.code == "FORBIDDEN"


@bounded(60)
async def test_guest_may_not_publish_or_create(guest_bus, make_client) -> None:
    client = await make_client(guest_bus.url)
    assert client.role == "guest"
    with pytest.raises(Forbidden):
        await client.publish(unique("room"), unique("ch"), "x")
    with pytest.raises(Forbidden):
        await client.create_channel(unique("room"), unique("ch"))
    # Guests may read.
    assert await client.ping() >= 0


@bounded(60)
async def test_bad_args_are_invalid_args(bus, make_client) -> None:
    client = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await client.publish(room, channel, 1)
    for limit in (0, 1001):
        with pytest.raises(InvalidArgs):
            await client.history(room, channel, limit=limit)
    with pytest.raises(InvalidArgs):
        await client.command("create_channel", room=room)  # channel missing
    with pytest.raises(InvalidArgs):
        await client.command("ping", surprise=True)  # unknown argument
    with pytest.raises(InvalidArgs):
        await client.command("join_channel", room=room, channel=channel, since="not-an-id")


@bounded(60)
async def test_bad_names_are_invalid_name(bus, make_client) -> None:
    client = await make_client(bus.url)
    with pytest.raises(InvalidName):
        await client.create_channel("no spaces", "ch")
    with pytest.raises(InvalidName):
        await client.publish("r", "x" * 65, 1)


@bounded(60)
async def test_unknown_command(bus, make_client) -> None:
    client = await make_client(bus.url)
    with pytest.raises(UnknownCommand):
        await client.command("no_such_command")


@bounded(60)
async def test_fire_and_forget_error_is_yielded(bus, make_client) -> None:
    client = await make_client(bus.url)
    # A room-wide message to a room without channels: NOT_FOUND.
    sent = await client.send(room=unique("empty"), payload="hello?")
    item = await next_item(client, ErrorReceived)
    assert isinstance(item.error, NotFound)
    assert item.error.request_id == sent
    # The connection stays usable.
    assert await client.ping() >= 0


@bounded(30)
async def test_send_checks_the_target_locally(bus, make_client) -> None:
    client = await make_client(bus.url)
    with pytest.raises(InvalidEnvelope):
        await client.send(payload="nowhere")
    with pytest.raises(InvalidEnvelope):
        await client.send(room="r", to=arqonbus.new_id(), payload="both")
    with pytest.raises(InvalidEnvelope):
        await client.send(channel="c", payload="no room")


def test_error_codes_map_to_classes() -> None:
    error = error_from_wire({"code": "RATE_LIMITED", "message": "slow down", "retry_after_ms": 250}, "arq_x")
    assert isinstance(error, RateLimited)
    assert (error.code, error.message, error.request_id, error.retry_after_ms) == (
        "RATE_LIMITED",
        "slow down",
        "arq_x",
        250,
    )
    assert isinstance(error_from_wire({"code": "FORBIDDEN", "message": ""}), Forbidden)
    unknown = error_from_wire({"code": "SOMETHING_NEW", "message": "future"})
    assert type(unknown) is ArqonError and unknown.code == "SOMETHING_NEW"
    assert isinstance(RequestTimeout(), TimeoutError)


def _welcome(heartbeat_s: float = 20) -> str:
    return json.dumps(
        {
            "version": 1,
            "id": arqonbus.new_id(),
            "type": "event",
            "timestamp": "2026-01-01T00:00:00.000Z",
            "payload": {
                "event": "welcome",
                "client_id": arqonbus.new_id(),
                "role": "user",
                "server_version": "fake",
                "heartbeat_s": heartbeat_s,
                "limits": {"max_message_bytes": 1048576, "rate_per_s": 0, "burst": 200},
            },
        }
    )


@bounded(60)
async def test_request_timeout_against_a_mute_server(make_client) -> None:
    received: list = []

    async def mute(ws: ServerConnection) -> None:
        await ws.send(_welcome())
        async for frame in ws:  # reads, never answers
            received.append(json.loads(frame))

    async with serve(mute, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = await make_client(f"ws://127.0.0.1:{port}/ws", request_timeout=0.5)
        with pytest.raises(RequestTimeout) as caught:
            await client.ping()
        assert caught.value.code == "REQUEST_TIMEOUT"
        assert arqonbus.is_valid_id(caught.value.request_id)
        with pytest.raises(RequestTimeout):
            await client.status(timeout=0.2)
        assert [f["command"] for f in received] == ["ping", "status"]
        assert received[0]["id"] == caught.value.request_id
        assert received[0]["type"] == "command"


@bounded(60)
async def test_dead_silent_server_is_detected(make_client) -> None:
    """A server that sends its welcome and then nothing at all, not even a
    ping, is declared dead after 2 x heartbeat_s."""
    connections = []

    async def silent(ws: ServerConnection) -> None:
        connections.append(ws)
        await ws.send(_welcome(heartbeat_s=0.5))
        await ws.wait_closed()

    async with serve(silent, "127.0.0.1", 0, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = await make_client(f"ws://127.0.0.1:{port}/ws", backoff_initial=0.05, backoff_max=0.2)
        item = await next_item(client, arqonbus.Disconnected, timeout=20)
        assert "no frame" in item.reason
        await next_item(client, arqonbus.Reconnected, timeout=20)
        assert len(connections) >= 2


@bounded(60)
async def test_401_raises_unauthorized(make_client) -> None:
    def refuse(connection: ServerConnection, request: Any) -> Any:
        response = connection.respond(401, json.dumps({"error": {"code": "UNAUTHORIZED", "message": "bad token"}}))
        return response

    async def never(ws: ServerConnection) -> None:  # pragma: no cover - refused before
        await ws.close()

    async with serve(never, "127.0.0.1", 0, process_request=refuse) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        with pytest.raises(Unauthorized) as caught:
            await make_client(f"ws://127.0.0.1:{port}/ws", token="nope")
        assert caught.value.message == "bad token"


@bounded(60)
async def test_unreachable_server_fails_to_connect(make_client) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectFailed):
        await make_client(f"ws://127.0.0.1:{port}/ws", request_timeout=5)


@bounded(90)
async def test_rate_limited_is_typed(make_client) -> None:
    server = await asyncio.get_running_loop().run_in_executor(
        None, lambda: BusServer(extra_env={"ARQON_LIMITS__RATE_PER_S": "1", "ARQON_LIMITS__BURST": "2"})
    )
    try:
        client = await make_client(server.url)
        assert client.welcome is not None and client.welcome.limits["rate_per_s"] == 1
        results = await asyncio.gather(*[client.ping() for _ in range(10)], return_exceptions=True)
        limited = [r for r in results if isinstance(r, RateLimited)]
        assert limited, results
        assert all(e.code == "RATE_LIMITED" for e in limited)
        assert all(e.retry_after_ms is not None and e.retry_after_ms > 0 for e in limited)
        assert all(arqonbus.is_valid_id(e.request_id) for e in limited)
        assert not [r for r in results if not isinstance(r, (float, RateLimited))]
    finally:
        await asyncio.get_running_loop().run_in_executor(None, server.stop)
