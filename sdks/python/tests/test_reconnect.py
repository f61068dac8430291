"""Reconnection, replay without gaps or duplicates, retries, heartbeat.

The connection under test goes through :class:`support.TcpProxy`, which can
cut (reset) or freeze its live connections; other clients talk to the
server directly.
"""

from __future__ import annotations

import asyncio
from typing import List

import pytest

import arqonbus
from arqonbus import ConnectionLost, Disconnected, Message, Reconnected
from support import bounded, eventually, next_item, unique

FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}


@bounded(120)
async def test_cut_connection_loses_nothing_and_duplicates_nothing(bus, make_client, make_proxy) -> None:
    proxy = await make_proxy(bus.port)
    subscriber = await make_client(proxy.url, **FAST)
    publisher = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await subscriber.join(room, channel)
    total = 200

    received: List[int] = []
    ids: List[str] = []
    reconnects: List[Reconnected] = []
    disconnects: List[Disconnected] = []

    async def publish() -> List[str]:
        sent = []
        for n in range(total):
            sent.append(await publisher.publish(room, channel, {"n": n}))
            await asyncio.sleep(0.01)
        return sent

    async def consume() -> None:
        while len(received) < total:
            item = await subscriber.receive()
            if isinstance(item, Message):
                received.append(item.payload["n"])
                ids.append(item.id)
            elif isinstance(item, Reconnected):
                reconnects.append(item)
            elif isinstance(item, Disconnected):
                disconnects.append(item)

    async def sabotage() -> int:
        cuts = 0
        for threshold in (40, 120):
            await eventually(lambda: len(received) >= threshold and subscriber.connected, timeout=60)
            cuts += proxy.kill_all()
        return cuts

    publisher_task = asyncio.ensure_future(publish())
    consumer_task = asyncio.ensure_future(consume())
    cuts = await asyncio.wait_for(sabotage(), 90)
    sent = await asyncio.wait_for(publisher_task, 90)
    await asyncio.wait_for(consumer_task, 90)

    assert cuts == 2
    assert received == list(range(total)), "every message exactly once, in order"
    assert ids == sent
    assert len(disconnects) >= 2 and len(reconnects) >= 2
    assert subscriber.reconnects >= 2
    assert all(r.rejoined == [(room, channel)] for r in reconnects)
    assert all(r.truncated == [] and r.failed == {} for r in reconnects)
    # Nothing more is pending: a marker published now is the next message.
    marker = await publisher.publish(room, channel, "marker")
    assert (await next_item(subscriber, Message)).id == marker


@bounded(120)
async def test_messages_stored_while_away_are_replayed(bus, make_client, make_proxy) -> None:
    """Joined an empty channel, saw nothing, then was away while others
    published: the rejoin replays all of it, once."""
    proxy = await make_proxy(bus.port)
    subscriber = await make_client(proxy.url, **FAST)
    publisher = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await subscriber.join(room, channel)  # channel does not even exist yet

    proxy.accepting = False
    proxy.kill_all()
    await next_item(subscriber, Disconnected)
    sent = [await publisher.publish(room, channel, n) for n in range(5)]
    proxy.accepting = True

    skipped: list = []
    reconnected = await next_item(subscriber, Reconnected, timeout=30, skipped=skipped)
    assert reconnected.truncated == []  # the empty-channel anchor is not a loss
    got = [m.id for m in skipped if isinstance(m, Message)]
    while len(got) < 5:
        got.append((await next_item(subscriber, Message)).id)
    assert got == sent
    live = await publisher.publish(room, channel, "live")
    assert (await next_item(subscriber, Message)).id == live


@bounded(120)
async def test_frozen_connection_is_detected_by_heartbeat(bus, make_client, make_proxy) -> None:
    proxy = await make_proxy(bus.port)
    subscriber = await make_client(proxy.url, **FAST)
    publisher = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await subscriber.join(room, channel)
    heartbeat = subscriber.welcome.heartbeat_s
    assert heartbeat == bus.heartbeat_s

    loop = asyncio.get_running_loop()
    frozen_at = loop.time()
    assert proxy.freeze_all() == 1
    # Published while the path is dead: must arrive after the reconnect.
    during = [await publisher.publish(room, channel, n) for n in range(3)]

    gone = await next_item(subscriber, Disconnected, timeout=30)
    detected_after = loop.time() - frozen_at
    assert "no frame" in gone.reason
    # The last ping may have come up to one interval before the freeze, so
    # detection comes between 1 and 2 intervals after it; generous slack
    # for a busy machine, but never before the silence could have lasted
    # one full interval.
    assert 0.9 * heartbeat <= detected_after <= 2 * heartbeat + 5, detected_after

    skipped: list = []
    await next_item(subscriber, Reconnected, timeout=30, skipped=skipped)
    got = [m.id for m in skipped if isinstance(m, Message)]
    while len(got) < 3:
        got.append((await next_item(subscriber, Message)).id)
    assert got == during
    assert proxy.accepted == 2
    assert await subscriber.ping() >= 0


@bounded(120)
async def test_publish_retried_after_reconnect_is_stored_once(bus, make_client, make_proxy) -> None:
    """The server stores the publish but the answer is lost with the
    connection: the SDK resends it with the same id and the server
    recognises the retry."""
    proxy = await make_proxy(bus.port)
    publisher = await make_client(proxy.url, **FAST)
    observer = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await observer.join(room, channel)

    proxy.drop_downstream_all()
    own = arqonbus.new_id()
    task = asyncio.ensure_future(publisher.publish(room, channel, "exactly once", id=own))
    first = await next_item(observer, Message)
    assert first.id == own  # stored and delivered, answer swallowed
    assert not task.done()
    proxy.kill_all()

    assert await asyncio.wait_for(task, 30) == own
    marker = await publisher.publish(room, channel, "marker")
    after: list = []
    await next_item(observer, Message, lambda m: m.id == marker, skipped=after)
    assert [m for m in after if isinstance(m, Message)] == []
    assert [m.id for m in await observer.history(room, channel)] == [own, marker]


@bounded(120)
async def test_publish_sent_into_a_dead_link_is_retried(bus, make_client, make_proxy) -> None:
    proxy = await make_proxy(bus.port)
    publisher = await make_client(proxy.url, **FAST)
    observer = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await observer.join(room, channel)
    proxy.freeze_all()
    task = asyncio.ensure_future(publisher.publish(room, channel, "late but there"))
    await eventually(lambda: proxy.swallowed_upstream > 0)  # sent into the dead link
    proxy.kill_all()
    sent = await asyncio.wait_for(task, 30)
    got = await next_item(observer, Message)
    assert (got.id, got.payload) == (sent, "late but there")
    assert [m.id for m in await observer.history(room, channel)] == [sent]


@bounded(120)
async def test_non_idempotent_request_fails_with_connection_lost(bus, make_client, make_proxy) -> None:
    proxy = await make_proxy(bus.port)
    client = await make_client(proxy.url, **FAST)
    room, channel = unique("room"), unique("ch")
    proxy.freeze_all()
    task = asyncio.ensure_future(client.create_channel(room, channel))
    await eventually(lambda: proxy.swallowed_upstream > 0)  # sent into the dead link
    proxy.kill_all()
    with pytest.raises(ConnectionLost) as caught:
        await asyncio.wait_for(task, 30)
    assert arqonbus.is_valid_id(caught.value.request_id)
    # Requests made while reconnecting wait for the new connection.
    assert await client.create_channel(room, channel) is True


@bounded(120)
async def test_requests_wait_for_the_reconnect(bus, make_client, make_proxy) -> None:
    proxy = await make_proxy(bus.port)
    client = await make_client(proxy.url, **FAST)
    proxy.accepting = False
    proxy.kill_all()
    await next_item(client, Disconnected)
    assert not client.connected
    ping = asyncio.ensure_future(client.ping())
    await asyncio.sleep(0.5)
    assert not ping.done()
    proxy.accepting = True
    assert await asyncio.wait_for(ping, 30) >= 0
    assert client.connected


@bounded(120)
async def test_without_reconnect_the_client_stops(bus, make_client, make_proxy) -> None:
    proxy = await make_proxy(bus.port)
    client = await make_client(proxy.url, reconnect=False)
    assert await client.ping() >= 0
    proxy.kill_all()
    with pytest.raises(ConnectionLost):
        async for _ in client.messages():
            pass
    with pytest.raises(ConnectionLost):
        await client.ping()
    assert not client.connected


@bounded(120)
async def test_channel_deleted_while_away_is_reported_truncated(admin_bus, make_client, make_proxy) -> None:
    """Auto-create re-creates a channel deleted while we were away; the
    replay cursor is gone, which the Reconnected notice reports."""
    proxy = await make_proxy(admin_bus.port)
    member = await make_client(proxy.url, **FAST)
    admin = await make_client(admin_bus.url)
    room, channel = unique("room"), unique("ch")
    await member.join(room, channel)
    await admin.publish(room, channel, "seen")
    await next_item(member, Message)
    proxy.accepting = False
    proxy.kill_all()
    await next_item(member, Disconnected)
    await admin.delete_channel(room, channel)
    proxy.accepting = True
    reconnected = await next_item(member, Reconnected, timeout=30)
    assert reconnected.truncated == [(room, channel)]
    assert member.channels == [(room, channel)]


@bounded(120)
async def test_own_messages_are_not_replayed_after_reconnect(bus, make_client, make_proxy) -> None:
    """Live, a sender never gets its own messages; the replay after a
    reconnect must not send them either."""
    proxy = await make_proxy(bus.port)
    alice = await make_client(proxy.url, **FAST)
    bob = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await alice.join(room, channel)
    await bob.join(room, channel)
    await alice.publish(room, channel, "alice 1")
    await alice.send(room=room, channel=channel, payload="alice 2 (fire and forget)")
    from_bob = await bob.publish(room, channel, "bob 1")
    assert (await next_item(alice, Message)).id == from_bob
    await alice.send(room=room, channel=channel, payload="alice 3 (fire and forget)")
    await alice.publish(room, channel, "alice 4")
    last = await alice.send(room=room, channel=channel, payload="alice 5 (fire and forget)")
    await next_item(bob, Message, lambda m: m.id == last)  # stored

    proxy.accepting = False
    proxy.kill_all()
    await next_item(alice, Disconnected)
    while_away = [await bob.publish(room, channel, f"bob away {n}") for n in range(2)]
    proxy.accepting = True

    skipped: list = []
    await next_item(alice, Reconnected, timeout=30, skipped=skipped)
    got = [m for m in skipped if isinstance(m, Message)]
    while len(got) < 2:
        got.append(await next_item(alice, Message))
    assert [m.id for m in got] == while_away
    marker = await bob.publish(room, channel, "marker")
    assert (await next_item(alice, Message)).id == marker


@bounded(60)
async def test_channel_that_cannot_be_rejoined_is_reported_failed(make_client) -> None:
    """Against a scripted server: the first connection accepts the join and
    then drops; the second refuses it (as the real bus does for a guest whose
    channel was deleted meanwhile)."""
    import json

    from websockets.asyncio.server import ServerConnection, serve

    connections: List[ServerConnection] = []

    def frame(kind: str, request_id: str, **fields: object) -> str:
        return json.dumps({"version": 1, "id": arqonbus.new_id(), "type": kind, "request_id": request_id, **fields})

    async def scripted(ws: ServerConnection) -> None:
        connections.append(ws)
        first = len(connections) == 1
        welcome = {"event": "welcome", "client_id": arqonbus.new_id(), "role": "guest", "server_version": "fake",
                   "heartbeat_s": 30, "limits": {}}
        await ws.send(json.dumps({"version": 1, "id": arqonbus.new_id(), "type": "event", "payload": welcome}))
        async for raw in ws:
            request = json.loads(raw)
            name = request["command"]
            if name == "channel_info":
                await ws.send(frame("error", request["id"], error={"code": "NOT_FOUND", "message": "no channel"}))
            elif name == "join_channel" and first:
                await ws.send(frame("response", request["id"], payload={"room": "r", "channel": "c", "members": 1}))
                await ws.close()
            elif name == "join_channel":
                await ws.send(frame("error", request["id"], error={"code": "NOT_FOUND", "message": "deleted"}))
            else:
                await ws.send(frame("response", request["id"], payload={"pong": True}))

    async with serve(scripted, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = await make_client(f"ws://127.0.0.1:{port}/ws", **FAST)
        await client.join("r", "c")
        reconnected = await next_item(client, Reconnected, timeout=30)
        assert reconnected.rejoined == []
        assert list(reconnected.failed) == [("r", "c")]
        assert isinstance(reconnected.failed[("r", "c")], arqonbus.NotFound)
        assert client.channels == []
        assert await client.ping() >= 0
        await client.close()


def _frame(kind: str, **fields: object) -> str:
    import json

    return json.dumps({"version": 1, "type": kind, "timestamp": "2026-01-01T00:00:00.000Z", **fields})


@bounded(60)
async def test_channel_gap_is_repaired_from_last_id(make_client) -> None:
    """A cluster node that lost Redis says `channel_gap`: the SDK hands the
    event on, rejoins from `last_id`, and of the replay delivers only what was
    missing; live messages after it go on. Scripted server: m2 never came
    live, m3 did (out of history's order)."""
    import json

    from websockets.asyncio.server import ServerConnection, serve

    ids = [arqonbus.new_id() for _ in range(5)]
    m1, m2, m3, m4, m5 = sorted(ids)
    joins: List[dict] = []

    def message(mid: str, n: int) -> str:
        return _frame("message", id=mid, room="r", channel="c", **{"from": "other"}, payload={"n": n})

    async def node(ws: ServerConnection) -> None:
        welcome = {"event": "welcome", "client_id": arqonbus.new_id(), "role": "user", "server_version": "fake",
                   "heartbeat_s": 20, "limits": {"max_message_bytes": 1048576, "rate_per_s": 0, "burst": 200}}
        await ws.send(_frame("event", id=arqonbus.new_id(), payload=welcome))
        async for text in ws:
            frame = json.loads(text)
            if frame.get("command") != "join_channel":
                continue
            joins.append(frame["args"])
            if len(joins) == 1:
                await ws.send(_frame("response", id=arqonbus.new_id(), request_id=frame["id"],
                                     payload={"room": "r", "channel": "c", "members": 2}))
                await ws.send(message(m1, 1))
                await ws.send(message(m3, 3))
                gap = {"event": "channel_gap", "room": "r", "channel": "c", "last_id": m1}
                await ws.send(_frame("event", id=arqonbus.new_id(), payload=gap))
            else:
                # A live copy before the answer (dropped: the replay holds
                # it), the answer, the replay since m1, then live traffic.
                await ws.send(message(m4, 4))
                await ws.send(_frame("response", id=arqonbus.new_id(), request_id=frame["id"],
                                     payload={"room": "r", "channel": "c", "members": 2}))
                for n, mid in enumerate((m2, m3, m4), start=2):
                    await ws.send(message(mid, n))
                await ws.send(message(m5, 5))

    async with serve(node, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        client = await make_client(f"ws://127.0.0.1:{port}/ws")
        await client.join("r", "c", since=arqonbus.ZERO_ID)
        got: List[object] = []
        while len([item for item in got if isinstance(item, Message)]) < 5:
            got.append(await asyncio.wait_for(client.receive(), 15))
        seen = [item.id if isinstance(item, Message) else item.name for item in got]  # type: ignore[attr-defined]
        assert seen == [m1, m3, "channel_gap", m2, m4, m5]
        assert [join.get("since") for join in joins] == [arqonbus.ZERO_ID, m1]
