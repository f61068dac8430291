/**
 * channel_gap handling, token providers and refresh, and the browser's
 * online/visibility signals (through an injected environment).
 */

import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { afterEach, describe, test } from "node:test";

import { Unauthorized, ZERO_ID, newId, type Environment, type Incoming } from "arqonbus";
import { BusServer, FAST, FakeServer, Resources, eventually, nextItem, reply, sleep, unique, within } from "./support.js";

const T = { timeout: 120_000 };

function messageFrame(room: string, channel: string, id: string, n: number): string {
  return JSON.stringify({
    version: 1,
    id,
    type: "message",
    timestamp: "2026-01-01T00:00:00.000Z",
    room,
    channel,
    from: "arq_01JDQ0BBBBBBBBBBBBBBBBBBBB",
    payload: n,
  });
}

describe("channel_gap", () => {
  const r = new Resources();
  afterEach(() => r.close());

  test("is surfaced, and repaired by rejoining since last_id: nothing twice, live copies in history order", T, async () => {
    const [room, channel] = ["r", "c"];
    const [m1, m2, m3, m4, m5, m6] = Array.from({ length: 6 }, () => newId());
    const joins: Array<Record<string, unknown>> = [];
    const server = await FakeServer.start((ws, frame) => {
      if (frame.command === "channel_info") {
        ws.send(reply("error", frame.id, { error: { code: "NOT_FOUND", message: "no such channel" } }));
      } else if (frame.command === "join_channel" && joins.length === 0) {
        joins.push(frame.args);
        ws.send(reply("response", frame.id, { payload: { room, channel, members: 1, truncated: true } }));
        ws.send(messageFrame(room, channel, m1!, 1));
        ws.send(messageFrame(room, channel, m2!, 2));
        ws.send(messageFrame(room, channel, m3!, 3));
        // m4 was stored between m1 and m2 through another node; this one missed it.
        ws.send(JSON.stringify({ version: 1, id: newId(), type: "event", payload: { event: "channel_gap", room, channel, last_id: m1 } }));
        // A live copy while the repair is unanswered: dropped, the replay brings it.
        ws.send(messageFrame(room, channel, m6!, 6));
      } else if (frame.command === "join_channel") {
        joins.push(frame.args);
        ws.send(reply("response", frame.id, { payload: { room, channel, members: 1, truncated: false } }));
        // History's order after m1: m4, m2, m3, m6; then live m5.
        for (const [id, n] of [[m4, 4], [m2, 2], [m3, 3], [m6, 6], [m5, 5]] as const) {
          ws.send(messageFrame(room, channel, id!, n));
        }
      }
    });
    r.add(() => server.close());
    const client = await r.client(server.url, FAST);
    await client.join(room, channel);
    const items: Incoming[] = [];
    while (items.length < 8) items.push(await client.receive(15_000));
    assert.deepEqual(
      items.map((i) => (i.kind === "message" ? i.payload : i.kind === "event" ? i.name : i.kind)),
      [1, 2, 3, "channel_gap", "resynced", 4, 6, 5],
    );
    assert.deepEqual(items[4], { kind: "resynced", room, channel, since: m1, truncated: false });
    assert.deepEqual(joins, [
      { room, channel, since: ZERO_ID },
      { room, channel, since: m1 },
    ]);
    // The connection stays, and nothing else arrives.
    assert.equal(client.reconnects, 0);
    await assert.rejects(client.receive(300));
  });

  test("a repair the server refuses reconnects and rejoins from the gap", T, async () => {
    const [room, channel] = ["r", "c"];
    const [m1, m2] = [newId(), newId()];
    const joins: Array<Record<string, unknown>> = [];
    const server = await FakeServer.start((ws, frame, index) => {
      if (frame.command === "channel_info") {
        ws.send(reply("response", frame.id, { payload: { room, channel, members: 0, created_at: "", stored: 1, last_id: m1 } }));
      } else if (frame.command === "join_channel") {
        joins.push({ connection: index, ...frame.args });
        if (index === 0 && joins.length === 1) {
          ws.send(reply("response", frame.id, { payload: { room, channel, members: 1 } }));
          ws.send(messageFrame(room, channel, m2!, 2));
          ws.send(JSON.stringify({ version: 1, id: newId(), type: "event", payload: { event: "channel_gap", room, channel, last_id: m1 } }));
        } else if (index === 0) {
          ws.send(reply("error", frame.id, { error: { code: "STORAGE_UNAVAILABLE", message: "redis is down" } }));
        } else {
          ws.send(reply("response", frame.id, { payload: { room, channel, members: 1, truncated: false } }));
          ws.send(messageFrame(room, channel, m2!, 2)); // already delivered: skipped
        }
      }
    });
    r.add(() => server.close());
    const client = await r.client(server.url, FAST);
    await client.join(room, channel);
    const skipped: Incoming[] = [];
    const reconnected = await nextItem(client, "reconnected", { skipped });
    assert.match(
      skipped.map((i) => (i.kind === "disconnected" ? i.reason : "")).join(""),
      /repairing r\/c failed: STORAGE_UNAVAILABLE/,
    );
    assert.deepEqual(reconnected.rejoined, [[room, channel]]);
    assert.deepEqual(joins, [
      { connection: 0, room, channel, since: m1 },
      { connection: 0, room, channel, since: m1 },
      { connection: 1, room, channel, since: m1 },
    ]);
    assert.deepEqual(
      skipped.map((i) => (i.kind === "message" ? i.payload : i.kind === "event" ? i.name : i.kind)),
      [2, "channel_gap", "disconnected"],
    );
    await assert.rejects(client.receive(300)); // m2 was not delivered twice
  });
});

const SECRET = "arqonbus-typescript-sdk-test-secret-0123456789";

function jwt(claims: Record<string, unknown>): string {
  const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

function expiringIn(seconds: number, sub: string): string {
  return jwt({ sub, role: "user", exp: Math.floor(Date.now() / 1000) + seconds });
}

describe("tokens", () => {
  const r = new Resources();
  afterEach(() => r.close());

  async function jwtBus(): Promise<BusServer> {
    const bus = await BusServer.start({
      env: { ARQON_AUTH__MODE: "jwt", ARQON_AUTH__JWT__SECRET: SECRET, ARQON_AUTH__EXPIRY_GRACE_MS: "1000" },
    });
    r.add(() => bus.stop());
    return bus;
  }

  test("the provider is called per connection and the token refreshed before it expires", T, async () => {
    const bus = await jwtBus();
    let calls = 0;
    const subscriber = await r.client(bus.url, {
      ...FAST,
      token: () => {
        calls++;
        return expiringIn(4, "subscriber");
      },
    });
    const publisher = await r.client(bus.url, { token: expiringIn(3600, "publisher") });
    const [room, channel] = [unique("room"), unique("ch")];
    await subscriber.join(room, channel);
    const seen: Incoming[] = [];
    subscriber.on("*", (item) => seen.push(item));

    // Publish through at least one refresh (about 3 s after each connect).
    const sent: string[] = [];
    while (subscriber.reconnects < 2 || sent.length < 20) {
      sent.push(await publisher.publish(room, channel, sent.length));
      await sleep(50);
      assert.ok(sent.length < 1000, "no refresh happened");
    }
    const got: string[] = [];
    while (got.length < sent.length) {
      const item = await subscriber.receive(30_000);
      if (item.kind === "message") got.push(item.id);
    }
    assert.deepEqual(got, sent, "every message exactly once, in order, across refreshes");
    const reasons = seen.flatMap((i) => (i.kind === "disconnected" ? [i.reason] : []));
    assert.ok(reasons.length >= 2);
    assert.ok(reasons.every((reason) => reason === "token refresh"), reasons.join(", "));
    assert.ok(!seen.some((i) => i.kind === "event" && i.name === "token_expired"), "refreshed before expiry");
    assert.ok(calls >= 3, `provider called ${calls} times`);
  });

  test("token_expired from the server makes it reconnect with a fresh token at once", T, async () => {
    const bus = await jwtBus();
    let calls = 0;
    // The provider claims a far expiry, so only the server's event can trigger the refresh.
    const client = await r.client(bus.url, {
      ...FAST,
      token: async () => {
        calls++;
        return { token: expiringIn(2, `expiring-${calls}`), expiresAt: Date.now() + 3_600_000 };
      },
    });
    const expired = await nextItem(client, "event", { predicate: (e) => e.name === "token_expired", timeoutMs: 30_000 });
    assert.equal(expired.name, "token_expired");
    const gone = await nextItem(client, "disconnected", { timeoutMs: 30_000 });
    assert.equal(gone.reason, "token expired");
    await nextItem(client, "reconnected", { timeoutMs: 30_000 });
    assert.ok(calls >= 2);
    assert.ok((await client.ping()) >= 0);
  });

  test("a refused token is Unauthorized with the server's message", T, async () => {
    const bus = await jwtBus();
    const error = await r.client(bus.url, { token: "not-a-jwt" }).catch((e) => e);
    assert.ok(error instanceof Unauthorized, String(error));
    assert.ok(error.text);
    const anonymous = await r.client(bus.url).catch((e) => e);
    assert.ok(anonymous instanceof Unauthorized, String(anonymous));
  });
});

/** An environment the test drives, as a browser's window and document would. */
class FakeEnvironment implements Environment {
  online = true;
  private listeners = new Set<(change: "online" | "offline" | "visible") => void>();
  isOnline(): boolean {
    return this.online;
  }
  subscribe(listener: (change: "online" | "offline" | "visible") => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  fire(change: "online" | "offline" | "visible"): void {
    this.online = change === "online" ? true : change === "offline" ? false : this.online;
    for (const listener of this.listeners) listener(change);
  }
  get subscribed(): number {
    return this.listeners.size;
  }
}

describe("environment", () => {
  const r = new Resources();
  let bus: BusServer;
  afterEach(async () => {
    await r.close();
    await bus?.stop();
  });

  test("coming back online skips the backoff; close unsubscribes", T, async () => {
    bus = await BusServer.start();
    const proxy = await r.proxy(bus.port);
    const env = new FakeEnvironment();
    // A backoff so long that only the online signal can bring it back in time.
    const client = await r.client(proxy.url, { environment: env, backoffInitialMs: 60_000, backoffMaxMs: 120_000 });
    assert.equal(env.subscribed, 1);
    env.fire("offline");
    proxy.accepting = false;
    proxy.killAll();
    await nextItem(client, "disconnected");
    proxy.accepting = true;
    await sleep(200);
    assert.equal(client.connected, false);
    env.fire("online");
    await nextItem(client, "reconnected", { timeoutMs: 20_000 });
    assert.equal(client.connected, true);
    await client.close();
    assert.equal(env.subscribed, 0);
  });

  test("a page that becomes visible probes its link at once", T, async () => {
    // The server pings every 30 s and the dead-after silence is 60 s, so the
    // watchdog's own probe would not go out for 30 s: only the signal sends one now.
    bus = await BusServer.start({ heartbeatS: 30 });
    const proxy = await r.proxy(bus.port);
    const env = new FakeEnvironment();
    const client = await r.client(proxy.url, { ...FAST, environment: env, heartbeatTimeoutMs: 60_000 });
    assert.ok((await client.ping()) >= 0);
    proxy.freezeAll();
    env.fire("visible");
    await eventually(() => proxy.swallowedUpstream > 0, 10_000); // the probe went out
    assert.equal(client.reconnects, 0);
  });
});
