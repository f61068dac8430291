/** The server API (docs/protocol.md 8.2 and 8.3): ServerApi against the real bus, users, presence. */

import assert from "node:assert/strict";
import { after, afterEach, before, describe, test } from "node:test";

import { ArqonError, Forbidden, InvalidName, NotFound, ServerApi, Unauthorized, UnknownCommand } from "arqonbus";
import { BusServer, Resources, nextItem, unique } from "./support.js";

const T = { timeout: 60_000 };

const ADMIN_KEY = "test-admin-key-0123456789";
const USER_KEY = "test-user-key-0123456789";
const ALICE = "alice-token-0123456789";
const BOB = "bob-token-0123456789";

const CONFIG = `
[auth]
mode = "token"
allow_anonymous = true

[[auth.tokens]]
token = "${ALICE}"
role = "user"
client = "alice"

[[auth.tokens]]
token = "${BOB}"
role = "user"
client = "bob"

[[api.keys]]
name = "backend-admin"
key = "${ADMIN_KEY}"
role = "admin"

[[api.keys]]
name = "backend-user"
key = "${USER_KEY}"
role = "user"
`;

/** Resolves with the error `promise` rejects with; fails if it resolves. */
async function refusal(promise: Promise<unknown>): Promise<ArqonError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ArqonError, String(error));
    return error;
  }
  assert.fail("expected a refusal");
}

describe("server API", () => {
  let bus: BusServer;
  let api: ServerApi;
  let admin: ServerApi;
  const r = new Resources();

  before(async () => {
    bus = await BusServer.start({ role: "user", config: CONFIG });
    api = new ServerApi(bus.httpUrl, USER_KEY);
    admin = new ServerApi(bus.url, ADMIN_KEY); // the ws:// URL names the same listener
  });
  after(async () => {
    await bus?.stop();
  });
  afterEach(() => r.close());

  test("a backend publish reaches a WebSocket client from server", T, async () => {
    const alice = await r.client(bus.url, { token: ALICE });
    const [room, channel] = [unique("room"), unique("ch")];
    await alice.join(room, channel);
    const sent = await api.publish(room, channel, { text: "deploy done" }, { meta: { trace: "t1" } });
    const got = await nextItem(alice, "message");
    assert.deepEqual([got.id, got.from, got.user], [sent, "server", undefined]);
    assert.deepEqual([got.room, got.channel, got.payload, got.meta], [room, channel, { text: "deploy done" }, { trace: "t1" }]);
    assert.equal(await api.publish(room, channel, "again", { id: sent }), sent);
    const history = await api.call("history", { room, channel });
    assert.deepEqual(
      history.messages.map((m: { id: string }) => m.id),
      [sent],
    );
  });

  test("welcome and messages carry the user", T, async () => {
    const alice = await r.client(bus.url, { token: ALICE });
    const bob = await r.client(bus.url, { token: BOB });
    const anonymous = await r.client(bus.url);
    assert.equal(alice.welcome?.user, "alice");
    assert.equal(anonymous.welcome?.user, null);
    const [room, channel] = [unique("room"), unique("ch")];
    await bob.join(room, channel);
    await alice.join(room, channel);
    const joined = await nextItem(bob, "event", { predicate: (e) => e.name === "member_joined" });
    assert.deepEqual([joined.payload.client_id, joined.payload.user], [alice.clientId, "alice"]);
    const sent = await alice.publish(room, channel, "hi");
    const got = await nextItem(bob, "message");
    assert.deepEqual([got.id, got.from, got.user], [sent, alice.clientId, "alice"]);
  });

  test("presence pages through members", T, async () => {
    const [room, channel] = [unique("room"), unique("ch")];
    const clients = [
      await r.client(bus.url, { token: ALICE }),
      await r.client(bus.url, { token: ALICE }), // a second tab
      await r.client(bus.url, { token: BOB }),
    ];
    for (const client of clients) await client.join(room, channel);
    const expected = clients.map((c) => c.clientId!).sort();
    const first = await clients[0]!.presence(room, channel, { limit: 2 });
    assert.deepEqual([first.total, first.users, first.members.length], [3, 2, 2]);
    const second = await clients[0]!.presence(room, channel, { limit: 2, after: first.members[1]!.clientId });
    assert.equal(second.members.length, 1);
    const members = [...first.members, ...second.members];
    assert.deepEqual(
      members.map((m) => m.clientId),
      expected,
    );
    const users = new Map(members.map((m) => [m.clientId, m.user]));
    assert.deepEqual(
      clients.map((c) => users.get(c.clientId!)),
      ["alice", "alice", "bob"],
    );
    assert.ok(members.every((m) => m.info === null && m.joinedAt.endsWith("Z")));
    const page = await api.presence(room, channel);
    assert.deepEqual(
      page.members.map((m) => m.clientId),
      expected,
    );
    assert.deepEqual(await api.presenceStats(room, channel), { total: 3, users: 2 });
  });

  test("refusals are typed, with the HTTP status", T, async () => {
    const wrong = new ServerApi(bus.httpUrl, "not-a-key-of-this-bus");
    const unauthorized = await refusal(wrong.publish("r", "c", 1));
    assert.ok(unauthorized instanceof Unauthorized);
    assert.deepEqual([unauthorized.code, unauthorized.status], ["UNAUTHORIZED", 401]);
    const forbidden = await refusal(api.disconnect({ user: "nobody" }));
    assert.ok(forbidden instanceof Forbidden);
    assert.equal(forbidden.status, 403);
    const unknown = await refusal(api.call("no_such_command"));
    assert.ok(unknown instanceof UnknownCommand);
    assert.equal(unknown.status, 404);
    const invalid = await refusal(api.publish("bad room", "c", 1));
    assert.ok(invalid instanceof InvalidName);
    assert.equal(invalid.status, 400);
    const missing = await refusal(api.send("user:nobody-here", "hello?"));
    assert.ok(missing instanceof NotFound);
    assert.equal(missing.status, 404);
  });

  test("send to a user reaches each of its connections; broadcast the room", T, async () => {
    const tabs = [await r.client(bus.url, { token: ALICE }), await r.client(bus.url, { token: ALICE })];
    const room = unique("room");
    await tabs[0]!.join(room, "one");
    await tabs[1]!.join(room, "two");
    assert.ok((await api.send("user:alice", { note: "for every tab" })) >= 2);
    for (const tab of tabs) {
      const got = await nextItem(tab, "message", {
        predicate: (m) => JSON.stringify(m.payload) === JSON.stringify({ note: "for every tab" }),
      });
      assert.deepEqual([got.from, got.room, got.channel], ["server", undefined, undefined]);
    }
    assert.equal(await api.send(tabs[0]!.clientId!, "only the first"), 1);
    assert.equal((await nextItem(tabs[0]!, "message")).payload, "only the first");
    assert.equal(await api.broadcast(room, "room-wide"), 2);
    for (const tab of tabs) {
      const got = await nextItem(tab, "message");
      assert.deepEqual([got.payload, got.room, got.channel, got.from], ["room-wide", room, undefined, "server"]);
    }
  });

  test("an admin key subscribes, unsubscribes and disconnects a client", T, async () => {
    const bob = await r.client(bus.url, { token: BOB, reconnect: false });
    const [room, channel] = [unique("room"), unique("ch")];
    await admin.call("create_channel", { room, channel });
    const joined = await admin.subscribe(bob.clientId!, room, channel);
    assert.deepEqual([joined.room, joined.channel, joined.members], [room, channel, 1]);
    const sent = await admin.publish(room, channel, "to the subscribed");
    assert.equal((await nextItem(bob, "message")).id, sent);
    assert.equal(await admin.unsubscribe(bob.clientId!, room, channel), true);
    const left = await nextItem(bob, "event", { predicate: (e) => e.name === "channel_left" });
    assert.deepEqual([left.payload.room, left.payload.channel], [room, channel]);
    assert.equal(await admin.unsubscribe(bob.clientId!, room, channel), false);
    assert.equal(await admin.disconnect({ clientId: bob.clientId!, code: 4001, reason: "bye" }), 1);
    const notice = await nextItem(bob, "event", { predicate: (e) => e.name === "disconnected" });
    assert.deepEqual([notice.payload.code, notice.payload.reason], [4001, "bye"]);
  });

  test("batch returns payloads and typed errors in order", T, async () => {
    const [room, channel] = [unique("room"), unique("ch")];
    const results = await api.batch([
      { command: "publish", args: { room, channel, payload: 1 } },
      { command: "publish", args: { room, channel, payload: 2 } },
      { command: "send", args: { to: "user:nobody-here", payload: 3 } },
      { command: "channel_info", args: { room, channel } },
    ]);
    assert.equal(results.length, 4);
    assert.ok(!(results[0] instanceof ArqonError) && !(results[1] instanceof ArqonError));
    assert.ok(results[2] instanceof NotFound);
    assert.equal((results[2] as NotFound).status, 404);
    assert.equal((results[3] as { stored: number }).stored, 2);
  });
});
