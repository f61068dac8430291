// A small chat on the ArqonBus TypeScript SDK, loaded as plain ES modules
// (sdks/typescript/dist, no bundler). Query: ?bus=ws://HOST:PORT/ws&name=alice&room=lobby&channel=chat
import { connect } from "/sdk/index.js";

const params = new URLSearchParams(location.search);
const bus = params.get("bus") ?? `ws://${location.hostname}:9100/ws`;
const name = params.get("name") ?? "guest";
const room = params.get("room") ?? "lobby";
const channel = params.get("channel") ?? "chat";

const log = document.getElementById("log");
const status = document.getElementById("status");
document.getElementById("where").textContent = `#${room}/${channel}`;
document.getElementById("me").textContent = name;

function setStatus(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

function line(kind, build) {
  const item = document.createElement("li");
  item.className = kind;
  build(item);
  const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(item);
  if (atBottom) log.scrollTop = log.scrollHeight;
  return item;
}

function showMessage(id, who, text, mine) {
  line(`msg${mine ? " mine" : ""}`, (item) => {
    item.dataset.id = id;
    const author = document.createElement("div");
    author.className = "who";
    author.textContent = who;
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    item.append(author, body);
  });
}

function notice(kind, text) {
  line(`notice ${kind}`, (item) => (item.textContent = text));
}

const client = await connect(bus, { backoffInitialMs: 100, backoffMaxMs: 1000, queue: false });
client.on("message", (m) => {
  if (m.room !== room || m.channel !== channel) return;
  const payload = m.payload ?? {};
  showMessage(m.id, String(payload.name ?? m.from), String(payload.text ?? ""), false);
});
client.on("disconnected", (d) => {
  setStatus("reconnecting", "reconnecting…");
  notice("lost", `Connection lost (${d.reason}); reconnecting.`);
});
client.on("reconnected", (r) => {
  setStatus("connected", "connected");
  if (r.failed.length > 0) {
    notice("failed", `Could not rejoin ${r.failed.map(([c]) => `${c.room}/${c.channel}`).join(", ")}.`);
  } else if (r.truncated.length > 0) {
    notice("truncated", "Back online, but the server lost this channel's history: messages sent while you were away may be missing.");
  } else {
    notice("resumed", "Back online; nothing missed.");
  }
});
await client.join(room, channel);
setStatus("connected", "connected");
notice("joined", `You joined #${room}/${channel} as ${name}.`);

document.getElementById("compose").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("text");
  const text = input.value.trim();
  if (text === "") return;
  input.value = "";
  try {
    // Resolves once stored; retried with the same id across a reconnect.
    const id = await client.publish(room, channel, { name, text });
    showMessage(id, name, text, true);
  } catch (e) {
    notice("failed", `Not sent: ${e.message}`);
  }
});

// For tests and the curious.
window.chat = { client, ready: true };
