"""The server API (PROTOCOL.md 8.2 and 8.3): ServerApi against the real bus,
users on welcome and messages, presence."""

from __future__ import annotations

import asyncio

import pytest

import arqonbus
from arqonbus import Disconnected, Event, Message, ServerApi
from conftest import ADMIN_KEY, ALICE_TOKEN, BOB_TOKEN, USER_KEY
from support import bounded, next_item, unique


def api_url(bus) -> str:
    return f"http://127.0.0.1:{bus.port}"


@bounded(60)
async def test_a_backend_publish_reaches_a_websocket_client_from_server(api_bus, make_client) -> None:
    alice = await make_client(api_bus.url, token=ALICE_TOKEN)
    room, channel = unique("room"), unique("ch")
    await alice.join(room, channel)
    async with ServerApi(api_url(api_bus), USER_KEY) as api:
        sent = await api.publish(room, channel, {"text": "deploy done"}, meta={"trace": "t1"})
        got = await next_item(alice, Message)
        assert (got.id, got.from_, got.user) == (sent, "server", None)
        assert (got.room, got.channel, got.payload, got.meta) == (room, channel, {"text": "deploy done"}, {"trace": "t1"})
        # The same id again is stored once (the publish is idempotent).
        assert await api.publish(room, channel, "again", id=sent) == sent
        history = await api.call("history", {"room": room, "channel": channel})
        assert [m["id"] for m in history["messages"]] == [sent]
        assert history["messages"][0]["from"] == "server"
        # Kept alive: many calls, one connection at a time.
        for _ in range(5):
            assert (await api.call("ping"))["pong"] is True


@bounded(60)
async def test_welcome_and_messages_carry_the_user(api_bus, make_client) -> None:
    alice = await make_client(api_bus.url, token=ALICE_TOKEN)
    bob = await make_client(api_bus.url, token=BOB_TOKEN)
    anonymous = await make_client(api_bus.url)
    assert alice.welcome is not None and alice.welcome.user == "alice"
    assert anonymous.welcome is not None and anonymous.welcome.user is None
    room, channel = unique("room"), unique("ch")
    await bob.join(room, channel)
    await alice.join(room, channel)
    joined = await next_item(bob, Event, lambda e: e.name == "member_joined")
    assert (joined.payload["client_id"], joined.payload["user"]) == (alice.client_id, "alice")
    assert "info" in joined.payload
    sent = await alice.publish(room, channel, "hi")
    got = await next_item(bob, Message)
    assert (got.id, got.from_, got.user) == (sent, alice.client_id, "alice")


@bounded(60)
async def test_presence_pages_through_members(api_bus, make_client) -> None:
    room, channel = unique("room"), unique("ch")
    clients = [
        await make_client(api_bus.url, token=ALICE_TOKEN),
        await make_client(api_bus.url, token=ALICE_TOKEN),  # a second tab
        await make_client(api_bus.url, token=BOB_TOKEN),
    ]
    for client in clients:
        await client.join(room, channel)
    expected = sorted(c.client_id for c in clients)
    first = await clients[0].presence(room, channel, limit=2)
    assert (first.total, first.users, len(first.members)) == (3, 2, 2)
    second = await clients[0].presence(room, channel, limit=2, after=first.members[-1].client_id)
    assert len(second.members) == 1
    members = first.members + second.members
    assert [m.client_id for m in members] == expected
    users = {m.client_id: m.user for m in members}
    assert users[clients[0].client_id] == users[clients[1].client_id] == "alice"
    assert users[clients[2].client_id] == "bob"
    assert all(m.info is None and m.joined_at.endswith("Z") for m in members)
    async with ServerApi(api_url(api_bus), USER_KEY) as api:
        page = await api.presence(room, channel)
        assert [m.client_id for m in page.members] == expected
        stats = await api.presence_stats(room, channel)
        assert (stats.total, stats.users) == (3, 2)


@bounded(60)
async def test_refusals_are_typed_with_the_http_status(api_bus) -> None:
    async with ServerApi(api_url(api_bus), "not-a-key-of-this-bus") as wrong:
        with pytest.raises(arqonbus.Unauthorized) as caught:
            await wrong.publish("r", "c", 1)
        assert (caught.value.code, caught.value.status) == ("UNAUTHORIZED", 401)
    async with ServerApi(api_url(api_bus), USER_KEY) as api:
        with pytest.raises(arqonbus.Forbidden) as forbidden:
            await api.disconnect(user="nobody")  # an admin command
        assert forbidden.value.status == 403
        with pytest.raises(arqonbus.UnknownCommand) as unknown:
            await api.call("no_such_command")
        assert unknown.value.status == 404
        with pytest.raises(arqonbus.InvalidName) as invalid:
            await api.publish("bad room", "c", 1)
        assert invalid.value.status == 400
        with pytest.raises(arqonbus.NotFound) as missing:
            await api.send("user:nobody-here", "hello?")
        assert missing.value.status == 404


@bounded(60)
async def test_send_to_a_user_reaches_each_connection_and_broadcast_the_room(api_bus, make_client) -> None:
    tabs = [await make_client(api_bus.url, token=ALICE_TOKEN) for _ in range(2)]
    room = unique("room")
    for tab, channel in zip(tabs, ("one", "two")):
        await tab.join(room, channel)
    async with ServerApi(api_url(api_bus), USER_KEY) as api:
        assert await api.send("user:alice", {"note": "for every tab"}) >= 2
        for tab in tabs:
            got = await next_item(tab, Message, lambda m: m.payload == {"note": "for every tab"})
            assert (got.from_, got.room, got.channel) == ("server", None, None)
        assert await api.send(tabs[0].client_id, "only the first") == 1
        assert (await next_item(tabs[0], Message)).payload == "only the first"
        assert await api.broadcast(room, "room-wide") == 2
        for tab in tabs:
            got = await next_item(tab, Message)
            assert (got.payload, got.room, got.channel, got.from_) == ("room-wide", room, None, "server")


@bounded(60)
async def test_admin_subscribes_unsubscribes_and_disconnects_a_client(api_bus, make_client) -> None:
    bob = await make_client(api_bus.url, token=BOB_TOKEN, reconnect=False)
    room, channel = unique("room"), unique("ch")
    async with ServerApi(api_url(api_bus), ADMIN_KEY) as api:
        await api.call("create_channel", {"room": room, "channel": channel})
        joined = await api.subscribe(bob.client_id, room, channel)
        assert (joined.room, joined.channel, joined.members) == (room, channel, 1)
        sent = await api.publish(room, channel, "to the subscribed")
        assert (await next_item(bob, Message)).id == sent
        assert await api.unsubscribe(bob.client_id, room, channel) is True
        left = await next_item(bob, Event, lambda e: e.name == "channel_left")
        assert (left.payload["room"], left.payload["channel"]) == (room, channel)
        assert (room, channel) not in bob.channels
        assert await api.unsubscribe(bob.client_id, room, channel) is False
        assert await api.disconnect(client_id=bob.client_id, code=4001, reason="bye") == 1
        notice = await next_item(bob, Event, lambda e: e.name == "disconnected")
        assert (notice.payload["code"], notice.payload["reason"]) == (4001, "bye")
        # Without reconnecting, the client stops: the stream ends with the close.
        with pytest.raises(arqonbus.ConnectionLost, match="disconnected by the application"):
            await next_item(bob, Disconnected)


@bounded(60)
async def test_batch_returns_payloads_and_typed_errors_in_order(api_bus) -> None:
    room, channel = unique("room"), unique("ch")
    async with ServerApi(api_url(api_bus), USER_KEY) as api:
        results = await api.batch(
            [
                ("publish", {"room": room, "channel": channel, "payload": 1}),
                {"command": "publish", "args": {"room": room, "channel": channel, "payload": 2}},
                ("send", {"to": "user:nobody-here", "payload": 3}),
                ("channel_info", {"room": room, "channel": channel}),
            ]
        )
        assert len(results) == 4
        assert isinstance(results[0], dict) and isinstance(results[1], dict)
        assert isinstance(results[2], arqonbus.NotFound) and results[2].status == 404
        assert results[3]["stored"] == 2


@bounded(60)
async def test_a_kept_alive_connection_dropped_by_the_bus_is_replaced(api_bus) -> None:
    async with ServerApi(api_url(api_bus), USER_KEY) as api:
        await api.call("ping")
        idle = api._idle
        assert idle is not None
        idle.writer.close()  # as if the bus had dropped it
        await asyncio.sleep(0.05)
        assert (await api.call("ping"))["pong"] is True
