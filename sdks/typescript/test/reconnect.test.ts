/**
 * Reconnection, replay without gaps or duplicates, retries, heartbeat.
 *
 * The connection under test goes through a {@link TcpProxy} that can cut
 * (reset) or freeze its live connections; other clients talk to the server
 * directly.
 */

import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import { ConnectionLost, NotFound, isValidId, newId, type Disconnected, type Incoming, type Reconnected } from "arqonbus";
import { BusServer, FAST, Resources, eventually, nextItem, sleep, unique, within } from "./support.js";

const T = { timeout: 120_000 };

function messageIds(items: Incoming[]): string[] {
  return items.flatMap((i) => (i.kind === "message" ? [i.id] : []));
}

describe("reconnect", () => {
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

  test("cut and frozen connections lose nothing and duplicate nothing", T, async () => {
    const proxy = await r.proxy(bus.port);
    const subscriber = await r.client(proxy.url, FAST);
    const publisher = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await subscriber.join(room, channel);
    const total = 400;

    const received: number[] = [];
    const ids: string[] = [];
    const reconnects: Reconnected[] = [];
    const disconnects: Disconnected[] = [];

    const publish = async () => {
      const sent: string[] = [];
      for (let n = 0; n < total; n++) {
        sent.push(await publisher.publish(room, channel, { n }));
        await sleep(10);
      }
      return sent;
    };
    subscriber.on("reconnected", (item) => reconnects.push(item));
    subscriber.on("disconnected", (item) => disconnects.push(item));
    const consume = async () => {
      while (received.length < total) {
        const item = await subscriber.receive(60_000);
        if (item.kind === "message") {
          received.push((item.payload as { n: number }).n);
          ids.push(item.id);
        }
      }
    };
    // Cut at 40, freeze at 150 (the watchdog must notice), cut again at 260,
    // each while the publisher keeps publishing.
    const sabotage = async () => {
      const done: string[] = [];
      for (const [threshold, how] of [
        [40, "cut"],
        [150, "freeze"],
        [260, "cut"],
      ] as const) {
        await eventually(() => received.length >= threshold && subscriber.connected, 60_000);
        const hit = how === "cut" ? proxy.killAll() : proxy.freezeAll();
        if (hit > 0) done.push(how);
      }
      return done;
    };

    const publishing = publish();
    const consuming = consume();
    const sabotaged = await within(90_000, sabotage());
    const sent = await within(90_000, publishing);
    await within(90_000, consuming);

    assert.deepEqual(sabotaged, ["cut", "freeze", "cut"]);
    assert.deepEqual(received, [...Array(total).keys()], "every message exactly once, in order");
    assert.deepEqual(ids, sent);
    // The last cut may land after the last message: its reconnect still comes.
    await eventually(() => reconnects.length >= 3, 30_000);
    assert.ok(disconnects.length >= 3 && reconnects.length >= 3, `${disconnects.length} / ${reconnects.length}`);
    assert.ok(disconnects.some((d) => /no frame/.test(d.reason)), "the freeze was detected by the watchdog");
    assert.ok(subscriber.reconnects >= 3);
    for (const rec of reconnects) {
      assert.deepEqual(rec.rejoined, [[room, channel]]);
      assert.deepEqual([rec.truncated, rec.failed], [[], []]);
    }
    // Nothing more is pending: a marker published now is the next message.
    const marker = await publisher.publish(room, channel, "marker");
    assert.equal((await nextItem(subscriber, "message")).id, marker);
  });

  test("messages stored while away are replayed once", T, async () => {
    // Joined an empty channel, saw nothing, then was away while others published.
    const proxy = await r.proxy(bus.port);
    const subscriber = await r.client(proxy.url, FAST);
    const publisher = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await subscriber.join(room, channel); // the channel does not even exist yet

    proxy.accepting = false;
    proxy.killAll();
    await nextItem(subscriber, "disconnected");
    const sent: string[] = [];
    for (let n = 0; n < 5; n++) sent.push(await publisher.publish(room, channel, n));
    proxy.accepting = true;

    const skipped: Incoming[] = [];
    const reconnected = await nextItem(subscriber, "reconnected", { timeoutMs: 30_000, skipped });
    assert.deepEqual(reconnected.truncated, []); // the empty-channel anchor is not a loss
    const got = messageIds(skipped);
    while (got.length < 5) got.push((await nextItem(subscriber, "message")).id);
    assert.deepEqual(got, sent);
    const live = await publisher.publish(room, channel, "live");
    assert.equal((await nextItem(subscriber, "message")).id, live);
  });

  test("a frozen connection is detected by the heartbeat", T, async () => {
    const proxy = await r.proxy(bus.port);
    const subscriber = await r.client(proxy.url, FAST);
    const publisher = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await subscriber.join(room, channel);
    assert.equal(subscriber.welcome?.heartbeatS, bus.heartbeatS);

    assert.equal(proxy.freezeAll(), 1);
    // Published while the path is dead: must arrive after the reconnect.
    const during: string[] = [];
    for (let n = 0; n < 3; n++) during.push(await publisher.publish(room, channel, n));
    const gone = await nextItem(subscriber, "disconnected", { timeoutMs: 30_000 });
    assert.match(gone.reason, /no frame/);

    const skipped: Incoming[] = [];
    await nextItem(subscriber, "reconnected", { timeoutMs: 30_000, skipped });
    const got = messageIds(skipped);
    while (got.length < 3) got.push((await nextItem(subscriber, "message")).id);
    assert.deepEqual(got, during);
    assert.equal(proxy.accepted, 2);
    assert.ok((await subscriber.ping()) >= 0);
  });

  test("a publish whose answer was lost is retried and stored once", T, async () => {
    const proxy = await r.proxy(bus.port);
    const publisher = await r.client(proxy.url, FAST);
    const observer = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await observer.join(room, channel);

    proxy.dropDownstreamAll();
    const own = newId();
    let settled = false;
    const publishing = publisher.publish(room, channel, "exactly once", { id: own }).finally(() => {
      settled = true;
    });
    const first = await nextItem(observer, "message");
    assert.equal(first.id, own); // stored and delivered, answer swallowed
    assert.equal(settled, false);
    proxy.killAll();

    assert.equal(await within(30_000, publishing), own);
    const marker = await publisher.publish(room, channel, "marker");
    const between: Incoming[] = [];
    await nextItem(observer, "message", { predicate: (m) => m.id === marker, skipped: between });
    assert.deepEqual(messageIds(between), []);
    assert.deepEqual(
      (await observer.history(room, channel)).map((m) => m.id),
      [own, marker],
    );
  });

  test("a publish sent into a dead link is retried", T, async () => {
    const proxy = await r.proxy(bus.port);
    const publisher = await r.client(proxy.url, FAST);
    const observer = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await observer.join(room, channel);
    proxy.freezeAll();
    const publishing = publisher.publish(room, channel, "late but there");
    await eventually(() => proxy.swallowedUpstream > 0); // sent into the dead link
    proxy.killAll();
    const sent = await within(30_000, publishing);
    const got = await nextItem(observer, "message");
    assert.deepEqual([got.id, got.payload], [sent, "late but there"]);
    assert.deepEqual(
      (await observer.history(room, channel)).map((m) => m.id),
      [sent],
    );
  });

  test("a request not safe to repeat fails with ConnectionLost", T, async () => {
    const proxy = await r.proxy(bus.port);
    const client = await r.client(proxy.url, FAST);
    const [room, channel] = [unique("room"), unique("ch")];
    proxy.freezeAll();
    const creating = client.createChannel(room, channel);
    creating.catch(() => {});
    await eventually(() => proxy.swallowedUpstream > 0);
    proxy.killAll();
    const error = await within(30_000, creating).catch((e) => e);
    assert.ok(error instanceof ConnectionLost, String(error));
    assert.ok(isValidId(error.requestId));
    // Requests made while reconnecting wait for the new connection.
    assert.equal(await client.createChannel(room, channel), true);
  });

  test("requests wait for the reconnect", T, async () => {
    const proxy = await r.proxy(bus.port);
    const client = await r.client(proxy.url, FAST);
    proxy.accepting = false;
    proxy.killAll();
    await nextItem(client, "disconnected");
    assert.equal(client.connected, false);
    let done = false;
    const pinging = client.ping().finally(() => {
      done = true;
    });
    await sleep(500);
    assert.equal(done, false);
    proxy.accepting = true;
    assert.ok((await within(30_000, pinging)) >= 0);
    assert.equal(client.connected, true);
  });

  test("without reconnect the client stops", T, async () => {
    const proxy = await r.proxy(bus.port);
    const client = await r.client(proxy.url, { reconnect: false });
    assert.ok((await client.ping()) >= 0);
    proxy.killAll();
    await assert.rejects(
      (async () => {
        for await (const _ of client.messages()) {
          // nothing to see
        }
      })(),
      ConnectionLost,
    );
    await assert.rejects(client.ping(), ConnectionLost);
    assert.equal(client.connected, false);
  });

  test("a channel deleted while away is reported truncated", T, async () => {
    // Auto-create re-creates it; the replay cursor is gone, which the
    // reconnected notice reports.
    const proxy = await r.proxy(adminBus.port);
    const member = await r.client(proxy.url, FAST);
    const admin = await r.client(adminBus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await member.join(room, channel);
    await admin.publish(room, channel, "seen");
    await nextItem(member, "message");
    proxy.accepting = false;
    proxy.killAll();
    await nextItem(member, "disconnected");
    await admin.deleteChannel(room, channel);
    proxy.accepting = true;
    const reconnected = await nextItem(member, "reconnected", { timeoutMs: 30_000 });
    assert.deepEqual(reconnected.truncated, [[room, channel]]);
    assert.deepEqual(member.channels, [[room, channel]]);
  });

  test("own messages are not replayed after a reconnect", T, async () => {
    // Live, a sender never gets its own messages; the replay must not send them either.
    const proxy = await r.proxy(bus.port);
    const alice = await r.client(proxy.url, FAST);
    const bob = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await alice.join(room, channel);
    await bob.join(room, channel);
    await alice.publish(room, channel, "alice 1");
    await alice.send({ room, channel, payload: "alice 2 (fire and forget)" });
    const fromBob = await bob.publish(room, channel, "bob 1");
    assert.equal((await nextItem(alice, "message")).id, fromBob);
    await alice.send({ room, channel, payload: "alice 3 (fire and forget)" });
    await alice.publish(room, channel, "alice 4");
    const last = await alice.send({ room, channel, payload: "alice 5 (fire and forget)" });
    await nextItem(bob, "message", { predicate: (m) => m.id === last }); // stored

    proxy.accepting = false;
    proxy.killAll();
    await nextItem(alice, "disconnected");
    const whileAway: string[] = [];
    for (let n = 0; n < 2; n++) whileAway.push(await bob.publish(room, channel, `bob away ${n}`));
    proxy.accepting = true;

    const skipped: Incoming[] = [];
    await nextItem(alice, "reconnected", { timeoutMs: 30_000, skipped });
    const got = messageIds(skipped);
    while (got.length < 2) got.push((await nextItem(alice, "message")).id);
    assert.deepEqual(got, whileAway);
    const marker = await bob.publish(room, channel, "marker");
    assert.equal((await nextItem(alice, "message")).id, marker);
  });
});

describe("server restart", () => {
  test("a killed and restarted server: reconnect, truncation reported, live again", T, async () => {
    const bus = await BusServer.start();
    const r = new Resources();
    try {
      const subscriber = await r.client(bus.url, FAST);
      const publisher = await r.client(bus.url, FAST);
      const [room, channel] = [unique("room"), unique("ch")];
      await subscriber.join(room, channel);
      const before = await publisher.publish(room, channel, "before");
      assert.equal((await nextItem(subscriber, "message")).id, before);

      bus.kill(); // no shutdown event, no close frame
      const gone = await nextItem(subscriber, "disconnected", { timeoutMs: 30_000 });
      assert.ok(gone.reason);
      // A request made while the server is down waits for it.
      const pinging = subscriber.ping();
      await bus.restart();

      // Memory backend: the history is gone, so the cursor is unknown.
      const reconnected = await nextItem(subscriber, "reconnected", { timeoutMs: 30_000 });
      assert.deepEqual(reconnected.rejoined, [[room, channel]]);
      assert.deepEqual(reconnected.truncated, [[room, channel]]);
      assert.ok(isValidId(reconnected.clientId));
      assert.ok((await within(30_000, pinging)) >= 0);
      const after = await publisher.publish(room, channel, "after");
      assert.equal((await nextItem(subscriber, "message")).id, after);
      await assert.rejects(publisher.history(unique("room"), unique("ch")), NotFound);
    } finally {
      await r.close();
      await bus.stop();
    }
  });
});
