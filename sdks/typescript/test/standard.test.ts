/**
 * The browser code path, in Node: a standard WebSocket (no headers, no
 * visible pings, no pause). The token travels in the URL, liveness rests on
 * frames and the client's own probes, and a full inbox drops the link and
 * resumes it with `since` once the consumer has caught up.
 */

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { after, afterEach, before, describe, test } from "node:test";

import type { ClientOptions, Incoming } from "arqonbus";
import { BusServer, FAST, Resources, StandardWebSocket, eventually, nextItem, sleep, unique, within } from "./support.js";

const T = { timeout: 120_000 };
const STANDARD: ClientOptions = { ...FAST, WebSocket: StandardWebSocket };

describe("standard WebSocket", () => {
  let bus: BusServer;
  const r = new Resources();

  before(async () => {
    bus = await BusServer.start({ role: "user", heartbeatS: 1 });
  });
  after(async () => {
    await bus?.stop();
  });
  afterEach(() => r.close());

  test("commands and messages round-trip", T, async () => {
    const alice = await r.client(bus.url, STANDARD);
    const bob = await r.client(bus.url, STANDARD);
    const [room, channel] = [unique("room"), unique("ch")];
    assert.ok((await alice.ping()) >= 0);
    await bob.join(room, channel);
    const sent = await alice.publish(room, channel, { text: "hi" });
    const got = await nextItem(bob, "message");
    assert.deepEqual([got.id, got.from, got.payload], [sent, alice.clientId, { text: "hi" }]);
    assert.deepEqual(
      (await alice.history(room, channel)).map((m) => m.id),
      [sent],
    );
  });

  test("an idle link stays up on probes alone, and a frozen one is replaced", T, async () => {
    const proxy = await r.proxy(bus.port);
    const client = await r.client(proxy.url, STANDARD);
    const publisher = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await client.join(room, channel);
    // The server's pings are invisible here: only probe answers show life.
    await sleep(5000);
    assert.equal(client.reconnects, 0);
    proxy.freezeAll();
    const during = await publisher.publish(room, channel, "while frozen");
    const gone = await nextItem(client, "disconnected", { timeoutMs: 30_000 });
    assert.match(gone.reason, /no frame/);
    const skipped: Incoming[] = [];
    await nextItem(client, "reconnected", { timeoutMs: 30_000, skipped });
    const got = skipped.flatMap((i) => (i.kind === "message" ? [i.id] : []));
    if (got.length === 0) got.push((await nextItem(client, "message")).id);
    assert.deepEqual(got, [during]);
  });

  test("cut and frozen connections lose nothing and duplicate nothing", T, async () => {
    const proxy = await r.proxy(bus.port);
    const subscriber = await r.client(proxy.url, STANDARD);
    const publisher = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await subscriber.join(room, channel);
    const total = 300;
    const received: number[] = [];
    const consuming = (async () => {
      while (received.length < total) {
        const item = await subscriber.receive(60_000);
        if (item.kind === "message") received.push((item.payload as { n: number }).n);
      }
    })();
    const publishing = (async () => {
      for (let n = 0; n < total; n++) {
        await publisher.publish(room, channel, { n });
        await sleep(10);
      }
    })();
    for (const [threshold, how] of [
      [40, "cut"],
      [120, "freeze"],
      [200, "cut"],
    ] as const) {
      await eventually(() => received.length >= threshold && subscriber.connected, 60_000);
      if (how === "cut") proxy.killAll();
      else proxy.freezeAll();
    }
    await within(90_000, publishing);
    await within(90_000, consuming);
    assert.deepEqual(received, [...Array(total).keys()], "every message exactly once, in order");
    // The last cut may land after the last message: its reconnect still comes.
    await eventually(() => subscriber.reconnects >= 3, 30_000);
  });

  test("a full inbox drops the link and resumes it when drained: everything once, in order", { timeout: 90_000 }, async () => {
    const publisher = await r.client(bus.url);
    const slow = await r.client(bus.url, { ...STANDARD, maxQueue: 8 });
    const [room, channel] = [unique("room"), unique("ch")];
    await slow.join(room, channel);
    const sent: string[] = [];
    for (let n = 0; n < 200; n++) sent.push(await publisher.publish(room, channel, { n }));
    const got: string[] = [];
    const reasons: string[] = [];
    while (got.length < sent.length) {
      const item = await slow.receive(30_000);
      if (item.kind === "message") got.push(item.id);
      if (item.kind === "disconnected") reasons.push(item.reason);
    }
    assert.deepEqual(got, sent);
    assert.ok(reasons.length >= 1 && reasons.every((x) => /inbox full/.test(x)), reasons.join(", "));
  });
});

describe("standard WebSocket with a token", () => {
  const r = new Resources();
  afterEach(() => r.close());

  test("the token goes in the URL (browsers cannot set headers)", T, async () => {
    const secret = "arqonbus-typescript-sdk-test-secret-0123456789";
    const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
    const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: "browser", exp: Math.floor(Date.now() / 1000) + 3600 })}`;
    const token = `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
    const bus = await BusServer.start({ env: { ARQON_AUTH__MODE: "jwt", ARQON_AUTH__JWT__SECRET: secret } });
    r.add(() => bus.stop());
    const client = await r.client(bus.url, { ...STANDARD, token: () => token });
    assert.equal(client.role, "user");
    assert.ok((await client.ping()) >= 0);
    assert.equal(new URL(StandardWebSocket.urls.at(-1)!).searchParams.get("token"), token);
  });
});
