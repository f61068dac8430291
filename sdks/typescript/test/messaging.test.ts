/** Delivery between clients, fire-and-forget, events, the iterator and callbacks. */

import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import { ClientClosed, connect, type Incoming, type Message } from "arqonbus";
import { BusServer, Resources, eventually, nextItem, unique } from "./support.js";

const T = { timeout: 60_000 };

describe("messaging", () => {
  let bus: BusServer;
  const r = new Resources();

  before(async () => {
    bus = await BusServer.start({ role: "user" });
  });
  after(async () => {
    await bus?.stop();
  });
  afterEach(() => r.close());

  test("publish reaches members, not the sender", T, async () => {
    const alice = await r.client(bus.url);
    const bob = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await alice.join(room, channel);
    await bob.join(room, channel);
    const sent = await alice.publish(room, channel, { text: "hi" }, { meta: { trace: "abc" } });
    const got = await nextItem(bob, "message");
    assert.equal(got.id, sent);
    assert.deepEqual([got.room, got.channel, got.from], [room, channel, alice.clientId]);
    assert.deepEqual(got.payload, { text: "hi" });
    assert.deepEqual(got.meta, { trace: "abc" });
    assert.ok(got.timestamp.endsWith("Z"));
    // Alice does not get her own message; her next message is Bob's reply.
    const answer = await bob.publish(room, channel, "hello alice");
    assert.equal((await nextItem(alice, "message")).id, answer);
  });

  test("fire-and-forget to a channel is delivered in order and stored", T, async () => {
    const alice = await r.client(bus.url);
    const bob = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await bob.join(room, channel);
    const ids: string[] = [];
    for (let n = 0; n < 20; n++) ids.push(await alice.send({ room, channel, payload: n }));
    const got: Message[] = [];
    for (let n = 0; n < 20; n++) got.push(await nextItem(bob, "message"));
    assert.deepEqual(
      got.map((m) => m.id),
      ids,
    );
    assert.deepEqual(
      got.map((m) => m.payload),
      [...Array(20).keys()],
    );
    assert.deepEqual(
      (await alice.history(room, channel, { limit: 20 })).map((m) => m.id),
      ids,
    );
  });

  test("a payload-less message and a null payload are told apart", T, async () => {
    const alice = await r.client(bus.url);
    const bob = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await bob.join(room, channel);
    await alice.send({ room, channel });
    await alice.send({ room, channel, payload: null });
    const first = await nextItem(bob, "message");
    const second = await nextItem(bob, "message");
    assert.equal("payload" in first, false);
    assert.equal(second.payload, null);
  });

  test("a room-wide message reaches each member once", T, async () => {
    const alice = await r.client(bus.url);
    const bob = await r.client(bus.url);
    const room = unique("room");
    await bob.join(room, "one");
    await bob.join(room, "two");
    const sent = await alice.send({ room, payload: "everyone" });
    const got = await nextItem(bob, "message");
    assert.deepEqual([got.id, got.room, got.channel, got.payload], [sent, room, undefined, "everyone"]);
    const marker = await alice.publish(room, "one", "marker");
    assert.equal((await nextItem(bob, "message")).id, marker); // no second copy before it
  });

  test("a direct message", T, async () => {
    const alice = await r.client(bus.url);
    const bob = await r.client(bus.url);
    const sent = await alice.send({ to: bob.clientId!, payload: { secret: 1 } });
    const got = await nextItem(bob, "message");
    assert.deepEqual([got.id, got.from, got.payload, got.room, got.channel], [
      sent,
      alice.clientId,
      { secret: 1 },
      undefined,
      undefined,
    ]);
  });

  test("member events", T, async () => {
    const alice = await r.client(bus.url);
    const bob = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await alice.join(room, channel);
    await bob.join(room, channel);
    const joined = await nextItem(alice, "event", { predicate: (e) => e.name === "member_joined" });
    // Anonymous: no user, no info (docs/protocol.md 8.2).
    assert.deepEqual(joined.payload, {
      event: "member_joined",
      room,
      channel,
      client_id: bob.clientId,
      user: null,
      info: null,
    });
    await bob.leave(room, channel);
    const left = await nextItem(alice, "event", { predicate: (e) => e.name === "member_left" });
    assert.equal(left.payload.client_id, bob.clientId);
  });

  test("callbacks see every item, in order, before the iterator", T, async () => {
    const alice = await r.client(bus.url);
    const bob = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    const viaMessage: unknown[] = [];
    const viaAll: string[] = [];
    const stop = bob.on("message", (m) => viaMessage.push(m.payload));
    bob.on("*", (item) => viaAll.push(item.kind));
    bob.on("message", () => {
      throw new Error("a broken callback does not stop delivery");
    });
    await bob.join(room, channel);
    await alice.join(room, channel);
    for (let n = 0; n < 3; n++) await alice.publish(room, channel, n);
    await eventually(() => viaMessage.length === 3);
    assert.deepEqual(viaMessage, [0, 1, 2]);
    assert.deepEqual(viaAll, ["event", "message", "message", "message"]); // member_joined first
    stop();
    await alice.publish(room, channel, 3);
    const items: Incoming[] = [];
    for (let n = 0; n < 5; n++) items.push(await bob.receive(15_000));
    assert.deepEqual(
      items.map((i) => (i.kind === "message" ? i.payload : i.kind)),
      ["event", 0, 1, 2, 3],
    );
    assert.deepEqual(viaMessage, [0, 1, 2]); // removed before 3
  });

  test("queue: false delivers to callbacks only", T, async () => {
    const alice = await r.client(bus.url);
    const bob = await r.client(bus.url, { queue: false });
    const [room, channel] = [unique("room"), unique("ch")];
    const got: unknown[] = [];
    bob.on("message", (m) => got.push(m.payload));
    await bob.join(room, channel);
    await alice.publish(room, channel, "only a callback");
    await eventually(() => got.length === 1);
    await assert.rejects(bob.receive(10), ClientClosed);
  });

  test("the async iterator, and close ends it", T, async () => {
    const [room, channel] = [unique("room"), unique("ch")];
    const alice = await connect(bus.url);
    const bob = await connect(bus.url);
    try {
      await bob.join(room, channel);
      for (let n = 0; n < 3; n++) await alice.publish(room, channel, n);
      const got: unknown[] = [];
      for await (const item of bob) {
        if (item.kind === "message") {
          got.push(item.payload);
          if (got.length === 3) break;
        }
      }
      assert.deepEqual(got, [0, 1, 2]);
    } finally {
      await alice.close();
      await bob.close();
    }
    assert.equal(bob.connected, false);
    // After close, the iteration ends and requests fail with ClientClosed.
    const rest: Incoming[] = [];
    for await (const item of bob.messages()) rest.push(item);
    assert.deepEqual(rest, []);
    await assert.rejects(bob.ping(), ClientClosed);
  });

  test("a slow consumer with a tiny inbox gets everything once, in order", { timeout: 90_000 }, async () => {
    // The reader stops reading while the inbox is full (backpressure); a
    // consumer that pauses longer than two heartbeats still gets every
    // message once (the SDK may reconnect meanwhile and replay from its cursor).
    const publisher = await r.client(bus.url);
    const slow = await r.client(bus.url, { maxQueue: 4, backoffInitialMs: 50, backoffMaxMs: 500 });
    const [room, channel] = [unique("room"), unique("ch")];
    await slow.join(room, channel);
    const sent: string[] = [];
    for (let n = 0; n < 300; n++) sent.push(await publisher.publish(room, channel, { n, pad: "x".repeat(2000) }));
    await new Promise((resolve) => setTimeout(resolve, 3000 * bus.heartbeatS));
    const got: string[] = [];
    while (got.length < sent.length) {
      const item = await slow.receive(30_000);
      if (item.kind === "message") got.push(item.id);
    }
    assert.deepEqual(got, sent);
  });
});

describe("server shutdown", () => {
  test("the shutdown event, then disconnected with 1001", T, async () => {
    const bus = await BusServer.start();
    const client = await connect(bus.url, { backoffInitialMs: 50, backoffMaxMs: 200 });
    try {
      bus.terminate();
      const event = await nextItem(client, "event", { predicate: (e) => e.name === "shutdown" });
      assert.ok(event.payload.reason);
      const gone = await nextItem(client, "disconnected");
      assert.equal(gone.code, 1001);
      assert.equal(await bus.stop(), 0);
    } finally {
      await client.close();
      await bus.stop();
    }
  });
});
