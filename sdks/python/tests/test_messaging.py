"""messages(): delivery between clients, fire-and-forget, events."""

from __future__ import annotations

import asyncio
from typing import List

import pytest

import arqonbus
from arqonbus import Disconnected, Event, Message
from support import bounded, next_item, unique


@bounded(60)
async def test_publish_reaches_members_not_the_sender(bus, make_client) -> None:
    alice = await make_client(bus.url)
    bob = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await alice.join(room, channel)
    await bob.join(room, channel)
    sent = await alice.publish(room, channel, {"text": "hi"}, meta={"trace": "abc"})
    got = await next_item(bob, Message)
    assert got.id == sent
    assert (got.room, got.channel, got.from_) == (room, channel, alice.client_id)
    assert got.payload == {"text": "hi"}
    assert got.meta == {"trace": "abc"}
    assert got.timestamp.endswith("Z")
    # Alice does not get her own message; her next message is Bob's reply.
    reply = await bob.publish(room, channel, "hello alice")
    assert (await next_item(alice, Message)).id == reply


@bounded(60)
async def test_fire_and_forget_to_a_channel(bus, make_client) -> None:
    alice = await make_client(bus.url)
    bob = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await bob.join(room, channel)
    ids = [await alice.send(room=room, channel=channel, payload=n) for n in range(20)]
    got = [await next_item(bob, Message) for _ in range(20)]
    assert [m.id for m in got] == ids
    assert [m.payload for m in got] == list(range(20))
    # Channel messages sent fire-and-forget are stored like published ones.
    assert [m.id for m in await alice.history(room, channel, limit=20)] == ids


@bounded(60)
async def test_room_wide_message_reaches_each_member_once(bus, make_client) -> None:
    alice = await make_client(bus.url)
    bob = await make_client(bus.url)
    room = unique("room")
    await bob.join(room, "one")
    await bob.join(room, "two")
    sent = await alice.send(room=room, payload="everyone")
    got = await next_item(bob, Message)
    assert (got.id, got.room, got.channel, got.payload) == (sent, room, None, "everyone")
    marker = await alice.publish(room, "one", "marker")
    assert (await next_item(bob, Message)).id == marker  # no second copy before it


@bounded(60)
async def test_direct_message(bus, make_client) -> None:
    alice = await make_client(bus.url)
    bob = await make_client(bus.url)
    sent = await alice.send(to=bob.client_id, payload={"secret": 1})
    got = await next_item(bob, Message)
    assert (got.id, got.from_, got.payload, got.room, got.channel) == (sent, alice.client_id, {"secret": 1}, None, None)


@bounded(60)
async def test_member_events(bus, make_client) -> None:
    alice = await make_client(bus.url)
    bob = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await alice.join(room, channel)
    await bob.join(room, channel)
    joined = await next_item(alice, Event, lambda e: e.name == "member_joined")
    assert joined.payload == {
        "event": "member_joined",
        "room": room,
        "channel": channel,
        "client_id": bob.client_id,
        "user": None,  # anonymous (PROTOCOL.md 8.2)
        "info": None,
    }
    await bob.leave(room, channel)
    left = await next_item(alice, Event, lambda e: e.name == "member_left")
    assert left.payload["client_id"] == bob.client_id


@bounded(60)
async def test_messages_iterator_and_close(bus) -> None:
    room, channel = unique("room"), unique("ch")
    async with arqonbus.connect(bus.url) as alice, arqonbus.connect(bus.url) as bob:
        await bob.join(room, channel)
        for n in range(3):
            await alice.publish(room, channel, n)
        got = []
        async for item in bob.messages():
            if isinstance(item, Message):
                got.append(item.payload)
                if len(got) == 3:
                    break
        assert got == [0, 1, 2]
    assert not bob.connected
    # After close, the iteration ends and requests fail with ClientClosed.
    assert [item async for item in bob.messages()] == []
    with pytest.raises(arqonbus.ClientClosed):
        await bob.ping()


@bounded(60)
async def test_server_shutdown_event(fresh_bus, make_client) -> None:
    client = await make_client(fresh_bus.url, backoff_initial=0.05, backoff_max=0.2)
    fresh_bus.terminate()
    event = await next_item(client, Event, lambda e: e.name == "shutdown")
    assert event.payload.get("reason")
    gone = await next_item(client, Disconnected)
    assert gone.code == 1001
    assert await asyncio.get_running_loop().run_in_executor(None, fresh_bus.stop) == 0


@bounded(90)
async def test_slow_consumer_gets_everything_once(bus, make_client) -> None:
    """With a tiny inbox the reader stops reading (backpressure); a consumer
    that pauses for longer than two heartbeats still gets every message once,
    in order (the SDK may reconnect meanwhile and replay from its cursor)."""
    publisher = await make_client(bus.url)
    slow = await make_client(bus.url, max_queue=4, backoff_initial=0.05, backoff_max=0.5)
    room, channel = unique("room"), unique("ch")
    await slow.join(room, channel)
    sent = [await publisher.publish(room, channel, {"n": n, "pad": "x" * 2000}) for n in range(300)]
    await asyncio.sleep(3 * bus.heartbeat_s)
    got: List[str] = []
    while len(got) < len(sent):
        item = await slow.receive(timeout=30)
        if isinstance(item, Message):
            got.append(item.id)
    assert got == sent
