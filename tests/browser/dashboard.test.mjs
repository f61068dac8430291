/**
 * The admin dashboard the monitoring listener serves at `/`, in headless
 * Chromium: it loads without console errors, its numbers move while a small
 * WebSocket client drives traffic, the channel search filters, errors and
 * top channels come from /telemetry; the monitoring token guards the page
 * and /telemetry; and, once the bus has its server API (PROTOCOL.md 8.3),
 * the admin actions go through it.
 */

import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, before, test } from "node:test";

import { WebSocket } from "ws";

import { Bus, WireClient, eventually, launchBrowser, newPage, screenshot, unique } from "./support.mjs";

let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

const text = (page, selector) => page.$eval(selector, (el) => el.textContent.trim());
const number = async (page, selector) => Number((await text(page, selector)).replace(/,/g, ""));

/** `count` messages published by `publisher`, one at a time. */
async function traffic(publisher, room, channel, count) {
  for (let i = 0; i < count; i++) {
    const answer = await publisher.command("publish", { room, channel, payload: { n: i } });
    assert.equal(answer.type, "response", JSON.stringify(answer));
  }
}

async function openDashboard(url) {
  const page = await newPage(browser, { width: 1280, height: 1100 });
  const response = await page.goto(url, { waitUntil: "load" });
  return { page, response };
}

test("dashboard: loads clean, numbers move with traffic, search, telemetry panels", { timeout: 180_000 }, async () => {
  const bus = await Bus.start({});
  const clients = [];
  const stops = [];
  try {
    const { page, response } = await openDashboard(`${bus.monitoringUrl}/`);
    assert.equal(response.status(), 200);
    assert.equal(response.headers()["cache-control"], "no-store");
    await eventually(async () => (await text(page, "#telemetry-state")) === "live", { what: "telemetry to connect" });
    await eventually(async () => (await text(page, "#status-state")) === "live", { what: "/status to answer" });
    assert.equal(await text(page, "#storage-backend"), "memory");
    assert.equal(await text(page, "#storage-health"), "healthy");
    assert.equal(await page.$eval("#api-url", (el) => el.value), `http://127.0.0.1:${bus.port}`);

    // Two subscribers in one channel, one in another, and a publisher.
    const room = unique("dash");
    for (const channel of ["news", "news", "weather"]) {
      const client = await WireClient.connect(bus.url);
      const joined = await client.command("join_channel", { room, channel });
      assert.equal(joined.type, "response", JSON.stringify(joined));
      clients.push(client);
    }
    await eventually(async () => (await number(page, "#connections")) >= 3, { what: "connections to show 3" });

    // Traffic: published in rounds until the page has seen a rate above zero
    // (the page samples once a second; how fast this machine is does not matter).
    const publisher = await WireClient.connect(bus.url);
    clients.push(publisher);
    let sent = 0;
    await eventually(
      async () => {
        await traffic(publisher, room, "news", 20);
        sent += 20;
        return (await number(page, "#rate-in")) > 0 && (await number(page, "#rate-out")) > 0;
      },
      { what: "message rates above zero", intervalMs: 200 },
    );
    await eventually(async () => Number(await page.$eval("#chart", (c) => c.dataset.max)) > 0, { what: "the chart to show traffic" });
    assert.ok(sent > 0);
    // A trickle from here on, so that the screenshot shows traffic in flight.
    const trickle = setInterval(() => publisher.send({ room, channel: "news", payload: { trickle: true } }), 50);
    stops.push(() => clearInterval(trickle));

    // An error frame (a bad name) shows in the errors panel, from telemetry.
    const bad = await clients[0].command("publish", { room: "no spaces allowed", channel: "x", payload: 1 });
    assert.equal(bad.type, "error");
    await eventually(async () => (await page.$$eval("#errors li", (items) => items.map((li) => li.textContent))).some((t) => t.includes(bad.error.code)), {
      what: `${bad.error.code} in the errors panel`,
    });
    await eventually(async () => (await number(page, "#errors-total")) >= 1, { what: "the error counter from /metrics" });

    // Channels with their members, and the search box.
    const members = () =>
      page.$$eval("#channels-table tbody tr", (rows) => Object.fromEntries(rows.map((r) => [r.dataset.key, Number(r.cells[2].textContent)])));
    await eventually(async () => (await members())[`${room}/news`] === 2 && (await members())[`${room}/weather`] === 1, {
      what: "both channels with their member counts",
    });
    await page.type("#channel-search", "weath");
    await eventually(async () => JSON.stringify(Object.keys(await members())) === JSON.stringify([`${room}/weather`]), { what: "the search to filter" });
    await page.$eval("#channel-search", (el) => {
      el.value = "";
      el.dispatchEvent(new Event("input"));
    });

    // Top channels by traffic, and the clients seen.
    await eventually(async () => (await page.$$eval("#top-table tr", (rows) => rows.map((r) => r.dataset.key)))[0] === `${room}/news`, {
      what: "news as the top channel",
    });
    const seen = () => page.$$eval("#clients-table tbody tr", (rows) => rows.map((r) => r.dataset.client));
    await eventually(async () => {
      const listed = await seen();
      return clients.slice(0, 3).every((c) => listed.includes(c.clientId));
    }, {
      what: "the subscribers among the clients seen",
    });

    await screenshot(page, "dashboard.png", { fullPage: true });
    assert.deepEqual(page.problems, []);
    await page.close();
  } finally {
    for (const stop of stops) stop();
    for (const client of clients) client.close();
    await bus.stop();
  }
});

test("dashboard: the monitoring token guards the page and /telemetry", { timeout: 120_000 }, async () => {
  const token = "dashboard-test-token-0123456789";
  const bus = await Bus.start({ ARQON_MONITORING__AUTH_TOKEN: token });
  try {
    // Without the token: the sign-in form, and /telemetry refused.
    const bare = await fetch(`${bus.monitoringUrl}/`);
    assert.equal(bare.status, 401);
    assert.match(await bare.text(), /monitoring token/);
    assert.equal((await fetch(`${bus.monitoringUrl}/status`)).status, 200, "/status stays open for scrapers");
    const refused = await new Promise((resolve) => {
      const ws = new WebSocket(`${bus.monitoringUrl.replace("http", "ws")}/telemetry`);
      ws.on("unexpected-response", (_, res) => resolve(res.statusCode));
      ws.on("open", () => resolve("open"));
      ws.on("error", () => {});
    });
    assert.equal(refused, 401);

    // Through the sign-in form: the page works, and the token leaves the address bar.
    const { page, response } = await openDashboard(`${bus.monitoringUrl}/`);
    assert.equal(response.status(), 401);
    await page.type("input[name=token]", token);
    await Promise.all([page.waitForNavigation({ waitUntil: "load" }), page.click("button[type=submit]")]);
    await eventually(async () => (await text(page, "#telemetry-state")) === "live", { what: "telemetry to connect with the token" });
    assert.equal(new URL(page.url()).search, "", "the token was removed from the address bar");
    // Telemetry flows: a client that connects shows up.
    const client = await WireClient.connect(bus.url);
    await eventually(async () => (await page.$$eval("#clients-table tbody tr", (rows) => rows.map((r) => r.dataset.client))).includes(client.clientId), {
      what: "the new client in the page",
    });
    client.close();
    assert.deepEqual(page.problems.filter((p) => !p.includes("401")), []);
    await page.close();
  } finally {
    await bus.stop();
  }

  // Beyond loopback without a token: refused, saying what to set.
  const open = await Bus.start({ ARQON_MONITORING__HOST: "0.0.0.0" });
  try {
    const port = new URL(open.monitoringUrl).port;
    const closed = await fetch(`http://127.0.0.1:${port}/`);
    assert.equal(closed.status, 403);
    assert.match(await closed.text(), /monitoring\.auth_token/);
  } finally {
    await open.stop();
  }
});

/**
 * The admin actions go through the bus's server API (POST /api/<command>).
 * A bus without it answers POST /api/publish with 404 (or with 426 Upgrade
 * Required, its answer to any plain HTTP request today): the check is then
 * skipped, saying so, and runs by itself once the API lands.
 */
test("dashboard: admin actions through the server API", { timeout: 180_000 }, async (t) => {
  const probe = await Bus.start({});
  let status;
  try {
    status = (await fetch(`http://127.0.0.1:${probe.port}/api/publish`, { method: "POST", body: "{}" })).status;
  } finally {
    await probe.stop();
  }
  if (status === 404 || status === 426) {
    const why = `SKIPPED admin actions: this bus has no server API yet (POST /api/publish answered ${status}); the check runs once it does`;
    console.log(why);
    t.skip(why);
    return;
  }

  const key = "dashboard-admin-key-0123456789";
  const dir = mkdtempSync(path.join(os.tmpdir(), "arqon-dashboard-"));
  const config = path.join(dir, "arqonbus.toml");
  writeFileSync(config, `[[api.keys]]\nname = "dashboard-test"\nkey = "${key}"\nrole = "admin"\n`);
  const bus = await Bus.start({}, ["--config", config]);
  const clients = [];
  try {
    const room = unique("admin");
    const listener = await WireClient.connect(bus.url);
    clients.push(listener);
    assert.equal((await listener.command("join_channel", { room, channel: "ops" })).type, "response");
    const victim = await WireClient.connect(bus.url);
    clients.push(victim);
    const victimClosed = new Promise((resolve) => victim.ws.once("close", (code) => resolve(code)));

    // The page is on the monitoring listener's origin: the API must answer its CORS preflight.
    const preflight = await fetch(`http://127.0.0.1:${bus.port}/api/publish`, {
      method: "OPTIONS",
      headers: { Origin: bus.monitoringUrl, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type" },
    });
    assert.equal(preflight.status, 204, "the server API answers the dashboard's CORS preflight");
    assert.equal(preflight.headers.get("access-control-allow-origin"), bus.monitoringUrl);

    const { page } = await openDashboard(`${bus.monitoringUrl}/`);
    await eventually(async () => (await page.$eval("#api-url", (el) => el.value)) !== "", { what: "the API URL from /status" });
    await page.type("#admin-key", key);

    // Publish a test message: the channel's member gets it.
    await page.type("#publish-room", room);
    await page.type("#publish-channel", "ops");
    await page.click("#publish-btn");
    await eventually(async () => (await page.$eval("#admin-result", (el) => el.className)) === "ok", { what: "publish to succeed" });
    await eventually(() => listener.frames.find((f) => f.type === "message" && f.payload?.text === "test message from the dashboard"), {
      what: "the test message to arrive",
    });

    // Disconnect a client.
    await page.type("#disconnect-id", victim.clientId);
    await page.click("#disconnect-btn");
    let timer;
    const late = new Promise((resolve) => (timer = setTimeout(() => resolve("still open"), 30_000)));
    assert.equal(await Promise.race([victimClosed, late]), 4000);
    clearTimeout(timer);

    // Delete the channel: it leaves the table.
    await page.type("#delete-room", room);
    await page.type("#delete-channel", "ops");
    await page.click("#delete-btn");
    await eventually(async () => (await page.$eval("#admin-result", (el) => el.textContent)).startsWith("delete_channel: {"), {
      what: "delete_channel to succeed",
    });
    await eventually(async () => !(await page.$$eval("#channels-table tbody tr", (rows) => rows.map((r) => r.dataset.key))).includes(`${room}/ops`), {
      what: "the channel to leave the table",
    });

    // A wrong key is refused, with the API's error shown.
    await page.$eval("#admin-key", (el) => (el.value = "not-the-key-0123456789"));
    await page.click("#publish-btn");
    await eventually(async () => (await page.$eval("#admin-result", (el) => el.textContent)).includes("UNAUTHORIZED"), {
      what: "the refusal to show",
    });
    assert.deepEqual(page.problems.filter((p) => !p.includes("401")), []);
    await page.close();
  } finally {
    for (const client of clients) client.close();
    await bus.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
