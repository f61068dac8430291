"""Every typed helper against the real server, with its response shape."""

from __future__ import annotations

import asyncio

import arqonbus
from arqonbus import ChannelInfo, ChannelSummary, CommandHelp, Event, JoinResult, Message, Status
from support import bounded, next_item, unique

ALL_COMMANDS = {
    "ping",
    "status",
    "help",
    "create_channel",
    "delete_channel",
    "join_channel",
    "leave_channel",
    "list_channels",
    "channel_info",
    "history",
    "publish",
}


@bounded(60)
async def test_welcome_is_exposed(bus, make_client) -> None:
    client = await make_client(bus.url)
    assert client.connected
    assert arqonbus.is_valid_id(client.client_id)
    assert client.role == "user"
    assert client.welcome is not None
    assert client.welcome.heartbeat_s == 1
    assert client.welcome.server_version
    assert "max_message_bytes" in client.welcome.limits


@bounded(60)
async def test_ping(bus, make_client) -> None:
    client = await make_client(bus.url)
    rtt = await client.ping()
    assert isinstance(rtt, float) and rtt >= 0


@bounded(60)
async def test_status(bus, make_client) -> None:
    client = await make_client(bus.url)
    status = await client.status()
    assert isinstance(status, Status)
    assert status.version
    assert status.uptime_s >= 0
    assert status.connections >= 1
    assert status.rooms >= 0 and status.channels >= 0
    assert status.storage.backend == "memory"
    assert status.storage.healthy is True


@bounded(60)
async def test_help_lists_every_command(bus, make_client) -> None:
    client = await make_client(bus.url)
    commands = await client.help()
    assert all(isinstance(c, CommandHelp) for c in commands)
    by_name = {c.name: c for c in commands}
    assert ALL_COMMANDS <= set(by_name)
    assert by_name["delete_channel"].role == "admin"
    assert by_name["delete_channel"].allowed is False  # we are `user`
    assert by_name["publish"].allowed is True
    assert by_name["presence"].api_only is False
    assert by_name["broadcast"].api_only is True  # the server API's alone
    assert by_name["ping"].description
    assert {a["name"] for a in by_name["history"].args} == {"room", "channel", "limit", "before"}


@bounded(60)
async def test_create_channel(bus, make_client) -> None:
    client = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    assert await client.create_channel(room, channel) is True
    assert await client.create_channel(room, channel) is False


@bounded(60)
async def test_join_leave_list_and_info(bus, make_client) -> None:
    a = await make_client(bus.url)
    b = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    joined = await a.join(room, channel)
    assert joined == JoinResult(room=room, channel=channel, members=1, truncated=False)
    assert a.channels == [(room, channel)]
    assert (await b.join_channel(room, channel)).members == 2

    channels = await a.list_channels(room)
    assert channels == [ChannelSummary(room=room, channel=channel, members=2)]
    everything = await a.list_channels()
    assert ChannelSummary(room=room, channel=channel, members=2) in everything

    info = await a.channel_info(room, channel)
    assert isinstance(info, ChannelInfo)
    assert (info.room, info.channel, info.members, info.stored, info.last_id) == (room, channel, 2, 0, None)
    assert info.created_at.endswith("Z")

    assert await b.leave(room, channel) is True
    assert await b.leave_channel(room, channel) is False
    assert b.channels == []
    assert (await a.channel_info(room, channel)).members == 1


@bounded(60)
async def test_publish_history_and_info(bus, make_client) -> None:
    client = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    ids = []
    for n in range(5):
        ids.append(await client.publish(room, channel, {"n": n}, meta={"trace": f"t{n}"}))
    assert all(arqonbus.is_valid_id(i) for i in ids)
    assert len(set(ids)) == 5

    info = await client.channel_info(room, channel)
    assert info.stored == 5
    assert info.last_id == ids[-1]

    history = await client.history(room, channel)
    assert [m.id for m in history] == ids
    first = history[0]
    assert isinstance(first, Message)
    assert (first.room, first.channel, first.payload, first.meta) == (room, channel, {"n": 0}, {"trace": "t0"})
    assert first.from_ == client.client_id
    assert first.time.year >= 2024

    assert [m.id for m in await client.history(room, channel, limit=2)] == ids[3:]
    assert [m.id for m in await client.history(room, channel, limit=2, before=ids[3])] == ids[1:3]
    assert [m.id for m in await client.history(room, channel, before=ids[1])] == ids[:1]


@bounded(60)
async def test_publish_with_own_id_is_idempotent(bus, make_client) -> None:
    publisher = await make_client(bus.url)
    subscriber = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await subscriber.join(room, channel)
    own = arqonbus.new_id()
    assert await publisher.publish(room, channel, "once", id=own) == own
    # A retry with the same id is recognised: same answer, not stored again.
    assert await publisher.publish(room, channel, "once", id=own) == own
    marker = await publisher.publish(room, channel, "marker")

    seen = []
    while True:
        item = await next_item(subscriber, Message)
        seen.append(item.id)
        if item.id == marker:
            break
    assert seen == [own, marker]
    assert [m.id for m in await publisher.history(room, channel)] == [own, marker]


@bounded(60)
async def test_join_with_since_replays_what_follows(bus, make_client) -> None:
    publisher = await make_client(bus.url)
    late = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    ids = [await publisher.publish(room, channel, n) for n in range(6)]
    result = await late.join(room, channel, since=ids[2])
    assert result.truncated is False
    replayed = [(await next_item(late, Message)).id for _ in range(3)]
    assert replayed == ids[3:]
    # Live messages follow the replay.
    live = await publisher.publish(room, channel, "live")
    assert (await next_item(late, Message)).id == live


@bounded(60)
async def test_join_with_unknown_since_is_truncated(bus, make_client) -> None:
    publisher = await make_client(bus.url)
    late = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    ids = [await publisher.publish(room, channel, n) for n in range(3)]
    result = await late.join(room, channel, since=arqonbus.new_id())
    assert result.truncated is True
    assert [(await next_item(late, Message)).id for _ in range(3)] == ids


@bounded(60)
async def test_join_without_since_gets_only_new_messages(bus, make_client) -> None:
    publisher = await make_client(bus.url)
    subscriber = await make_client(bus.url)
    room, channel = unique("room"), unique("ch")
    await publisher.publish(room, channel, "old")
    await subscriber.join(room, channel)
    new = await publisher.publish(room, channel, "new")
    item = await next_item(subscriber, Message)
    assert (item.id, item.payload) == (new, "new")


@bounded(60)
async def test_generic_command(bus, make_client) -> None:
    client = await make_client(bus.url)
    assert await client.command("ping") == {"pong": True}
    room, channel = unique("room"), unique("ch")
    created = await client.command("create_channel", room=room, channel=channel)
    assert created == {"room": room, "channel": channel, "created": True}
    payload = await client.request("list_channels", {"room": room})
    assert payload == {"channels": [{"room": room, "channel": channel, "members": 0}]}


@bounded(60)
async def test_delete_channel_as_admin_notifies_members(admin_bus, make_client) -> None:
    admin = await make_client(admin_bus.url)
    member = await make_client(admin_bus.url)
    room, channel = unique("room"), unique("ch")
    await admin.create_channel(room, channel)
    await member.join(room, channel)
    assert await admin.delete_channel(room, channel) is True
    event = await next_item(member, Event, lambda e: e.name == "channel_deleted")
    assert event.payload["room"] == room and event.payload["channel"] == channel
    # A deleted channel is not rejoined after a reconnect.
    await asyncio.sleep(0)
    assert member.channels == []
    info = await admin.list_channels(room)
    assert info == []
