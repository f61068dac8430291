/** Errors surface as typed exceptions; timeouts, refusals and dead servers too. */

import assert from "node:assert/strict";
import * as http from "node:http";
import * as net from "node:net";
import { after, afterEach, before, describe, test } from "node:test";

import {
  ArqonError,
  ConnectFailed,
  Forbidden,
  InvalidArgs,
  InvalidEnvelope,
  InvalidName,
  NotFound,
  RateLimited,
  RequestTimeout,
  Unauthorized,
  UnknownCommand,
  errorFromWire,
  isValidId,
  newId,
} from "arqonbus";
import { BusServer, FakeServer, Resources, nextItem, unique } from "./support.js";

const T = { timeout: 60_000 };

describe("errors", () => {
  let bus: BusServer;
  let guestBus: BusServer;
  const r = new Resources();

  before(async () => {
    [bus, guestBus] = await Promise.all([BusServer.start({ role: "user" }), BusServer.start({ role: "guest" })]);
  });
  after(async () => {
    await Promise.all([bus?.stop(), guestBus?.stop()]);
  });
  afterEach(() => r.close());

  test("history of an unknown channel is NotFound, with code, text and request id", T, async () => {
    const client = await r.client(bus.url);
    const error = await client.history(unique("room"), unique("ch")).catch((e) => e);
    assert.ok(error instanceof NotFound);
    assert.ok(error instanceof ArqonError);
    assert.equal(error.code, "NOT_FOUND");
    assert.ok(error.text);
    assert.ok(isValidId(error.requestId));
  });

  test("channel_info of an unknown channel, history before an unknown id: NotFound", T, async () => {
    const client = await r.client(bus.url);
    await assert.rejects(client.channelInfo(unique("room"), unique("ch")), NotFound);
    const [room, channel] = [unique("room"), unique("ch")];
    await client.publish(room, channel, 1);
    await assert.rejects(client.history(room, channel, { before: newId() }), NotFound);
  });

  test("delete_channel as user is Forbidden", T, async () => {
    const client = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await client.createChannel(room, channel);
    await assert.rejects(client.deleteChannel(room, channel), (e: unknown) => e instanceof Forbidden && e.code === "FORBIDDEN");
  });

  test("a guest may read but not publish or create", T, async () => {
    const client = await r.client(guestBus.url);
    assert.equal(client.role, "guest");
    await assert.rejects(client.publish(unique("room"), unique("ch"), "x"), Forbidden);
    await assert.rejects(client.createChannel(unique("room"), unique("ch")), Forbidden);
    assert.ok((await client.ping()) >= 0);
  });

  test("bad arguments are InvalidArgs", T, async () => {
    const client = await r.client(bus.url);
    const [room, channel] = [unique("room"), unique("ch")];
    await client.publish(room, channel, 1);
    for (const limit of [0, 1001]) await assert.rejects(client.history(room, channel, { limit }), InvalidArgs);
    await assert.rejects(client.command("create_channel", { room }), InvalidArgs); // channel missing
    await assert.rejects(client.command("ping", { surprise: true }), InvalidArgs); // unknown argument
    await assert.rejects(client.command("join_channel", { room, channel, since: "not-an-id" }), InvalidArgs);
  });

  test("bad names are InvalidName", T, async () => {
    const client = await r.client(bus.url);
    await assert.rejects(client.createChannel("no spaces", "ch"), InvalidName);
    await assert.rejects(client.publish("r", "x".repeat(65), 1), InvalidName);
  });

  test("an unknown command is UnknownCommand", T, async () => {
    const client = await r.client(bus.url);
    await assert.rejects(client.command("no_such_command"), UnknownCommand);
  });

  test("a fire-and-forget error is delivered as an error item", T, async () => {
    const client = await r.client(bus.url);
    const seen: ArqonError[] = [];
    client.on("error", (item) => seen.push(item.error));
    // A room-wide message to a room without channels: NOT_FOUND.
    const sent = await client.send({ room: unique("empty"), payload: "hello?" });
    const item = await nextItem(client, "error");
    assert.ok(item.error instanceof NotFound);
    assert.equal(item.error.requestId, sent);
    assert.deepEqual(seen, [item.error]);
    assert.ok((await client.ping()) >= 0); // the connection stays usable
  });

  test("send checks the target locally", T, async () => {
    const client = await r.client(bus.url);
    await assert.rejects(client.send({ payload: "nowhere" }), InvalidEnvelope);
    await assert.rejects(client.send({ room: "r", to: newId(), payload: "both" }), InvalidEnvelope);
    await assert.rejects(client.send({ channel: "c", payload: "no room" }), InvalidEnvelope);
  });

  test("rate limiting is typed, with retryAfterMs and the request id", { timeout: 90_000 }, async () => {
    const limited = await BusServer.start({ env: { ARQON_LIMITS__RATE_PER_S: "1", ARQON_LIMITS__BURST: "2" } });
    r.add(() => limited.stop());
    const client = await r.client(limited.url);
    assert.equal(client.welcome?.limits.rate_per_s, 1);
    const results = await Promise.allSettled(Array.from({ length: 10 }, () => client.ping()));
    const refused = results.flatMap((x) => (x.status === "rejected" ? [x.reason] : []));
    assert.ok(refused.length > 0);
    for (const e of refused) {
      assert.ok(e instanceof RateLimited, String(e));
      assert.equal(e.code, "RATE_LIMITED");
      assert.ok(e.retryAfterMs! > 0);
      assert.ok(isValidId(e.requestId));
    }
  });
});

describe("errors without the real server", () => {
  const r = new Resources();
  afterEach(() => r.close());

  test("wire codes map to classes; unknown codes keep their code", () => {
    const error = errorFromWire({ code: "RATE_LIMITED", message: "slow down", retry_after_ms: 250 }, "arq_x");
    assert.ok(error instanceof RateLimited);
    assert.deepEqual([error.code, error.text, error.requestId, error.retryAfterMs], [
      "RATE_LIMITED",
      "slow down",
      "arq_x",
      250,
    ]);
    assert.equal(error.message, "RATE_LIMITED: slow down");
    assert.ok(errorFromWire({ code: "FORBIDDEN", message: "" }) instanceof Forbidden);
    const unknown = errorFromWire({ code: "SOMETHING_NEW", message: "future" });
    assert.equal(unknown.constructor, ArqonError);
    assert.equal(unknown.code, "SOMETHING_NEW");
    assert.equal(errorFromWire("nonsense").code, "PROTOCOL_VIOLATION");
  });

  test("a mute server makes requests time out", T, async () => {
    const received: any[] = [];
    const server = await FakeServer.start((_ws, frame) => received.push(frame));
    r.add(() => server.close());
    const client = await r.client(server.url, { requestTimeoutMs: 500, heartbeatTimeoutMs: 60_000 });
    const error = await client.ping().catch((e) => e);
    assert.ok(error instanceof RequestTimeout);
    assert.equal(error.code, "REQUEST_TIMEOUT");
    assert.ok(isValidId(error.requestId));
    await assert.rejects(client.status({ timeoutMs: 200 }), RequestTimeout);
    assert.deepEqual(
      received.map((f) => f.command),
      ["ping", "status"],
    );
    assert.equal(received[0].id, error.requestId);
    assert.equal(received[0].type, "command");
  });

  test("a server that falls silent is detected and replaced", T, async () => {
    // Sends its welcome and then nothing at all: no pings, no answers to probes.
    const server = await FakeServer.start(() => {}, { heartbeatS: 0.5 });
    r.add(() => server.close());
    const client = await r.client(server.url, { backoffInitialMs: 50, backoffMaxMs: 200 });
    const gone = await nextItem(client, "disconnected", { timeoutMs: 20_000 });
    assert.match(gone.reason, /no frame/);
    await nextItem(client, "reconnected", { timeoutMs: 20_000 });
    assert.ok(server.connections.length >= 2);
  });

  test("an idle link is kept alive by probes answered", T, async () => {
    // Answers pings but never sends a frame of its own: the probes keep it alive.
    const server = await FakeServer.start(
      (ws, frame) => ws.send(JSON.stringify({ version: 1, id: newId(), type: "response", request_id: frame.id, payload: { pong: true } })),
      { heartbeatS: 1 },
    );
    r.add(() => server.close());
    const client = await r.client(server.url, FAST_LOCAL);
    await new Promise((resolve) => setTimeout(resolve, 5000)); // 2.5 x the dead-after silence
    assert.equal(client.connected, true);
    assert.equal(client.reconnects, 0);
    assert.equal(server.connections.length, 1);
  });

  test("HTTP 401 at the upgrade is Unauthorized with the server's message", T, async () => {
    const server = http.createServer();
    server.on("upgrade", (_req, socket) => {
      const body = JSON.stringify({ error: { code: "UNAUTHORIZED", message: "bad token" } });
      socket.end(
        `HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`,
      );
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    r.add(() => new Promise((resolve) => server.close(resolve)));
    const port = (server.address() as net.AddressInfo).port;
    const error = await r.client(`ws://127.0.0.1:${port}/ws`, { token: "nope" }).catch((e) => e);
    assert.ok(error instanceof Unauthorized, String(error));
    assert.equal(error.text, "bad token");
  });

  test("an unreachable server fails to connect", T, async () => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    const port = (server.address() as net.AddressInfo).port;
    await new Promise((resolve) => server.close(resolve));
    await assert.rejects(r.client(`ws://127.0.0.1:${port}/ws`, { requestTimeoutMs: 5000 }), ConnectFailed);
  });
});

const FAST_LOCAL = { backoffInitialMs: 50, backoffMaxMs: 200 };
