/** Every typed helper against the real server, with its response shape. */

import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import { ZERO_ID, isValidId, newId } from "arqonbus";
import { BusServer, Resources, nextItem, unique } from "./support.js";

const ALL_COMMANDS = [
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
];

const T = { timeout: 60_000 };

describe("commands", () => {
  let bus: BusServer;
  let adminBus: BusServer;
  const r = new Resources();

  before(async () => {
    [bus, adminBus] = await Promise.all([BusServer.start({ role: "user" }), BusServer.start({ role: "admin" })]);
  });
  after(async () => {
    await Promise.all([bus?.stop(), adminBus?.stop()]);
  });
  afterEach(() => r.close());

  test("the welcome is exposed", T, async () => {
    const client = await r.client(bus.url);
    assert.equal(client.connected, true);
    assert.ok(isValidId(client.clientId));
    assert.equal(client.role, "user");
    assert.equal(client.welcome?.heartbeatS, 1);
    assert.ok(client.welcome?.serverVersion);
    assert.equal(typeof client.welcome?.limits.max_message_bytes, "number");
  });

  test("ping returns the round-trip time", T, async () => {
    const client = await r.client(bus.url);
    const rtt = await client.ping();
    assert.equal(typeof rtt, "number");
    assert.ok(rtt >= 0);
  });

  test("status", T, async () => {
    const client = await r.client(bus.url);
    const status = await client.status();
    assert.ok(status.version);
    assert.ok(status.uptimeS >= 0);
    assert.ok(status.connections >= 1);
    assert.equal(status.storage.backend, "memory");
    assert.equal(status.storage.healthy, true);
  });

  test("help lists every command, with roles and args", T, async () => {
    const client = await r.client(bus.url);
    const commands = await client.help();
    const byName = new Map(commands.map((c) => [c.name, c]));
    for (const name of ALL_COMMANDS) assert.ok(byName.has(name), `help lacks ${name}`);
    assert.equal(byName.get("delete_channel")!.role, "admin");
    assert.equal(byName.get("delete_channel")!.allowed, false); // we are `user`
    assert.equal(byName.get("publish")!.allowed, true);
    assert.equal(byName.get("presence")!.apiOnly, false);
    assert.equal(byName.get("broadcast")!.apiOnly, true); // the server API's alone
    assert.ok(byName.get("ping")!.description);
    assert.deepEqual(
      byName
        .get("history")!
        .args.map((a) => a.name)
        .sort(),
      ["before", "channel", "limit", "room"],
    );
  });

  test("create_channel says whether it created", T, async () => {
    const client = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    assert.equal(await client.createChannel(room, channel), true);
    assert.equal(await client.createChannel(room, channel), false);
  });

  test("join, leave, list_channels and channel_info", T, async () => {
    const a = await r.client(bus.url);
    const b = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    assert.deepEqual(await a.join(room, channel), { room, channel, members: 1, truncated: false });
    assert.deepEqual(a.channels, [[room, channel]]);
    assert.equal((await b.joinChannel(room, channel)).members, 2);

    assert.deepEqual(await a.listChannels(room), [{ room, channel, members: 2 }]);
    const everything = await a.listChannels();
    assert.ok(everything.some((c) => c.room === room && c.channel === channel && c.members === 2));

    const info = await a.channelInfo(room, channel);
    assert.deepEqual([info.room, info.channel, info.members, info.stored, info.lastId], [room, channel, 2, 0, null]);
    assert.ok(info.createdAt.endsWith("Z"));

    assert.equal(await b.leave(room, channel), true);
    assert.equal(await b.leaveChannel(room, channel), false);
    assert.deepEqual(b.channels, []);
    assert.equal((await a.channelInfo(room, channel)).members, 1);
  });

  test("publish, history (limit, before) and channel_info", T, async () => {
    const client = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    const ids: string[] = [];
    for (let n = 0; n < 5; n++) ids.push(await client.publish(room, channel, { n }, { meta: { trace: `t${n}` } }));
    assert.ok(ids.every(isValidId));
    assert.equal(new Set(ids).size, 5);

    const info = await client.channelInfo(room, channel);
    assert.equal(info.stored, 5);
    assert.equal(info.lastId, ids[4]);

    const history = await client.history(room, channel);
    assert.deepEqual(
      history.map((m) => m.id),
      ids,
    );
    const first = history[0]!;
    assert.deepEqual([first.kind, first.room, first.channel, first.payload, first.meta], [
      "message",
      room,
      channel,
      { n: 0 },
      { trace: "t0" },
    ]);
    assert.equal(first.from, client.clientId);
    assert.ok(first.timestamp.endsWith("Z"));

    assert.deepEqual(
      (await client.history(room, channel, { limit: 2 })).map((m) => m.id),
      ids.slice(3),
    );
    assert.deepEqual(
      (await client.history(room, channel, { limit: 2, before: ids[3] })).map((m) => m.id),
      ids.slice(1, 3),
    );
    assert.deepEqual(
      (await client.history(room, channel, { before: ids[1] })).map((m) => m.id),
      ids.slice(0, 1),
    );
  });

  test("publish with an own id is idempotent", T, async () => {
    const publisher = await r.client(bus.url);
    const subscriber = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await subscriber.join(room, channel);
    const own = newId();
    assert.equal(await publisher.publish(room, channel, "once", { id: own }), own);
    // A retry with the same id is recognised: same answer, not stored again.
    assert.equal(await publisher.publish(room, channel, "once", { id: own }), own);
    const marker = await publisher.publish(room, channel, "marker");
    const seen: string[] = [];
    for (let i = 0; i < 10; i++) {
      const item = await nextItem(subscriber, "message");
      seen.push(item.id);
      if (item.id === marker) break;
    }
    assert.deepEqual(seen, [own, marker]);
    assert.deepEqual(
      (await publisher.history(room, channel)).map((m) => m.id),
      [own, marker],
    );
  });

  test("join with since replays what follows, then live", T, async () => {
    const publisher = await r.client(bus.url);
    const late = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    const ids: string[] = [];
    for (let n = 0; n < 6; n++) ids.push(await publisher.publish(room, channel, n));
    const result = await late.join(room, channel, { since: ids[2] });
    assert.equal(result.truncated, false);
    const replayed: string[] = [];
    for (let i = 0; i < 3; i++) replayed.push((await nextItem(late, "message")).id);
    assert.deepEqual(replayed, ids.slice(3));
    const live = await publisher.publish(room, channel, "live");
    assert.equal((await nextItem(late, "message")).id, live);
  });

  test("join with an unknown since is reported truncated", T, async () => {
    const publisher = await r.client(bus.url);
    const late = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    const ids: string[] = [];
    for (let n = 0; n < 3; n++) ids.push(await publisher.publish(room, channel, n));
    const result = await late.join(room, channel, { since: newId() });
    assert.equal(result.truncated, true);
    const got: string[] = [];
    for (let i = 0; i < 3; i++) got.push((await nextItem(late, "message")).id);
    assert.deepEqual(got, ids);
    assert.equal((await late.join(unique("room"), unique("ch"), { since: ZERO_ID })).truncated, true);
  });

  test("join without since gets only new messages", T, async () => {
    const publisher = await r.client(bus.url);
    const subscriber = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await publisher.publish(room, channel, "old");
    await subscriber.join(room, channel);
    const fresh = await publisher.publish(room, channel, "new");
    const item = await nextItem(subscriber, "message");
    assert.deepEqual([item.id, item.payload], [fresh, "new"]);
  });

  test("the generic command and request", T, async () => {
    const client = await r.client(bus.url);
    assert.deepEqual(await client.command("ping"), { pong: true });
    const [room, channel] = [unique("room"), unique("ch")];
    assert.deepEqual(await client.command("create_channel", { room, channel }), { room, channel, created: true });
    assert.deepEqual(await client.request("list_channels", { room }), { channels: [{ room, channel, members: 0 }] });
  });

  test("delete_channel as admin notifies members, who stop tracking it", T, async () => {
    const admin = await r.client(adminBus.url);
    const member = await r.client(adminBus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await admin.createChannel(room, channel);
    await member.join(room, channel);
    assert.equal(await admin.deleteChannel(room, channel), true);
    const event = await nextItem(member, "event", { predicate: (e) => e.name === "channel_deleted" });
    assert.deepEqual([event.payload.room, event.payload.channel], [room, channel]);
    assert.deepEqual(member.channels, []);
    assert.deepEqual(await admin.listChannels(room), []);
  });
});
