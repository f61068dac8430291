/**
 * A real browser on the TypeScript SDK: headless Chromium opens two chat
 * pages (tests/browser/chat, importing sdks/typescript/dist as plain ES
 * modules), they talk both ways, the bus is killed and restarted, and the
 * pages show what that cost:
 *
 * - memory storage: the history is gone, so each page says that messages
 *   may be missing (the SDK's `reconnected.truncated`);
 * - Redis storage: nothing is missed; what was sent while Bob's page was
 *   offline is replayed to it, exactly once, and no page warns.
 */

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, test } from "node:test";

import {
  Bus,
  HERE,
  REPO,
  Redis,
  StaticServer,
  WireClient,
  eventually,
  launchBrowser,
  newPage,
  screenshot,
  unique,
} from "./support.mjs";

const SDK_DIST = path.join(REPO, "sdks", "typescript", "dist");
const CHAT_DIR = path.join(HERE, "chat");

let browser;
let files;

before(async () => {
  files = await StaticServer.start({ "/sdk/": SDK_DIST, "/": CHAT_DIR });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await files?.close();
});

async function openChat(bus, name, room, channel) {
  const page = await newPage(browser, { width: 640, height: 560 });
  const query = new URLSearchParams({ bus: bus.url, name, room, channel });
  await page.goto(`${files.url}/?${query}`, { waitUntil: "load" });
  await eventually(() => page.evaluate(() => window.chat?.ready === true), { what: `${name}'s page to join` });
  return page;
}

async function say(page, text) {
  // Input goes to the tab in front (a background tab's frames are paused).
  await page.bringToFront();
  await page.type("#text", text);
  await page.click("#send");
  // Shown as one's own once the bus confirmed it was stored.
  await eventually(async () => (await shown(page)).some((m) => m.mine && m.text === text), {
    what: `"${text}" to be confirmed`,
  });
}

function shown(page) {
  return page.$$eval("#log li.msg", (items) =>
    items.map((item) => ({
      who: item.querySelector(".who").textContent,
      text: item.querySelector(".text").textContent,
      mine: item.classList.contains("mine"),
    })),
  );
}

function notices(page, kind) {
  return page.$$eval(`#log li.notice.${kind}`, (items) => items.map((item) => item.textContent));
}

function state(page) {
  return page.$eval("#status", (status) => status.dataset.state);
}

/** Waits until `page` shows `text` from someone else; returns how many times it shows it. */
async function received(page, text) {
  await eventually(async () => (await shown(page)).some((m) => !m.mine && m.text === text), {
    what: `"${text}" to reach the page`,
  });
  return (await shown(page)).filter((m) => !m.mine && m.text === text);
}

/** Problems a page reported, minus the browser's own notes about the sockets the killed bus dropped. */
function problems(page) {
  return page.problems.filter((p) => !/WebSocket connection to .* failed/.test(p));
}

async function chatAcrossRestart(bus, storage) {
  const room = unique("chat");
  const channel = "general";
  const alice = await openChat(bus, "alice", room, channel);
  const bob = await openChat(bus, "bob", room, channel);
  try {
    await say(alice, "hello bob");
    assert.equal((await received(bob, "hello bob")).length, 1);
    await say(bob, "hi alice");
    assert.equal((await received(alice, "hi alice")).length, 1);

    // The bus dies; both pages notice and keep trying.
    bus.kill();
    await eventually(async () => (await state(alice)) === "reconnecting" && (await state(bob)) === "reconnecting", {
      what: "both pages to see the bus gone",
    });
    // Bob's browser goes offline, so that he misses what follows live.
    await bob.setOfflineMode(true);
    await bus.restart();
    await eventually(async () => (await state(alice)) === "connected", { what: "alice to reconnect" });

    // Alice writes while Bob is away, and so does a backend.
    await say(alice, "while bob was away");
    const backend = await WireClient.connect(bus.url);
    const answer = await backend.command("publish", { room, channel, payload: { name: "backend", text: "from the backend" } });
    assert.equal(answer.type, "response", JSON.stringify(answer));
    backend.close();

    // Bob's page has had no connection since the restart: it has seen neither.
    assert.equal(await state(bob), "reconnecting");
    assert.deepEqual((await shown(bob)).map((m) => m.text), ["hello bob", "hi alice"]);
    await bob.setOfflineMode(false);
    await eventually(async () => (await state(bob)) === "connected", { what: "bob to reconnect" });

    if (storage === "redis") {
      // Nothing missed: both messages reach Bob once, in order, from the rejoin's replay.
      for (const text of ["while bob was away", "from the backend"]) {
        const copies = await received(bob, text);
        assert.equal(copies.length, 1, `${text}: ${JSON.stringify(copies)}`);
      }
      assert.deepEqual(
        (await shown(bob)).map((m) => m.text),
        ["hello bob", "hi alice", "while bob was away", "from the backend"],
      );
      for (const page of [alice, bob]) {
        assert.deepEqual(await notices(page, "truncated"), []);
        assert.ok((await notices(page, "resumed")).length >= 1);
      }
      // The earlier conversation is not delivered again.
      assert.equal((await shown(bob)).filter((m) => m.text === "hello bob").length, 1);
    } else {
      // History lost with the process: each page says messages may be missing.
      for (const [who, page] of [["alice", alice], ["bob", bob]]) {
        await eventually(async () => (await notices(page, "truncated")).length >= 1, {
          what: `${who}'s page to warn about lost history`,
        });
      }
    }

    // And the conversation goes on, both ways.
    await say(bob, "after the restart");
    assert.equal((await received(alice, "after the restart")).length, 1);
    await say(alice, "welcome back");
    assert.equal((await received(bob, "welcome back")).length, 1);

    await screenshot(bob, `browser-chat-${storage}.png`);
    assert.deepEqual(problems(alice), []);
    assert.deepEqual(problems(bob), []);
  } finally {
    await alice.close();
    await bob.close();
  }
}

test("chat in Chromium: memory storage, the bus restarts, the pages say history was lost", { timeout: 180_000 }, async () => {
  const bus = await Bus.start({ ARQON_STORAGE__BACKEND: "memory" });
  try {
    await chatAcrossRestart(bus, "memory");
  } finally {
    await bus.stop();
  }
});

test("chat in Chromium: Redis storage, the bus restarts, nothing is missed", { timeout: 180_000 }, async (t) => {
  if (!Redis.available()) {
    if (process.env.CI === "true") assert.fail("redis-server is required in CI");
    t.skip("redis-server not installed");
    return;
  }
  const redis = await Redis.start();
  const journal = mkdtempSync(path.join(os.tmpdir(), "arqon-journal-"));
  const bus = await Bus.start({
    ARQON_STORAGE__JOURNAL__PATH: journal,
    ARQON_STORAGE__BACKEND: "redis",
    ARQON_STORAGE__REDIS__URL: redis.url,
    ARQON_STORAGE__REDIS__KEY_PREFIX: `${unique("browser")}:`,
  });
  try {
    await chatAcrossRestart(bus, "redis");
  } finally {
    await bus.stop();
    await redis.stop();
    rmSync(journal, { recursive: true, force: true });
  }
});
