// Unit tests of the client's own logic against a fake WebSocket, with node's
// test runner and mocked timers: `node --test clients/js/test/*.test.js`.
import { test, beforeEach, afterEach, mock } from "node:test";
import assert from "node:assert/strict";
import { connect, TERMINAL_CODES, TidingsError } from "../tidings.js";

/** A fake WebSocket: records what the client sends; the test plays the server. */
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = null;
    this.onmessage = this.onclose = this.onerror = null;
    FakeSocket.all.push(this);
  }
  static get last() {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }
  send(text) {
    if (this.closed) throw new Error("socket is closed");
    this.sent.push(JSON.parse(text));
  }
  close(code, reason) {
    this.closed = { code, reason };
  }
  // ---- the server's side ----
  receive(frame) {
    this.onmessage && this.onmessage({ data: JSON.stringify(frame) });
  }
  welcome(extra = {}) {
    this.receive({ type: "welcome", protocol: 1, connection: "1", user: null, channels: [], patterns: [], ...extra });
  }
  serverClose(code, reason = "") {
    this.closed = { code, reason };
    this.onclose && this.onclose({ code, reason });
  }
  sentOfType(type) {
    return this.sent.filter((f) => f.type === type);
  }
  reply(type, extra = {}) {
    const req = this.sent.filter((f) => f.type === type).at(-1);
    this.receive({ ...extra, type: extra.type || replyType(type), id: req.id, channel: req.channel });
  }
}

function replyType(type) {
  return { subscribe: "subscribed", unsubscribe: "unsubscribed", publish: "published", ping: "pong", rpc: "rpc_result" }[type];
}

/** A fake window: `navigator.onLine` and the `online` event. */
function fakeGlobals(online = true) {
  const listeners = {};
  return {
    navigator: { onLine: online },
    addEventListener(ev, fn) {
      (listeners[ev] ||= []).push(fn);
    },
    removeEventListener(ev, fn) {
      listeners[ev] = (listeners[ev] || []).filter((f) => f !== fn);
    },
    fire(ev) {
      for (const fn of listeners[ev] || []) fn();
    },
  };
}

// Let the client's async connect step (getToken) run.
const flush = () => new Promise((r) => setImmediate(r));

let clients = [];
// A client whose first attempt has started (connect() starts it right
// after the caller's own synchronous code).
async function client(opts = {}) {
  const c = connect("ws://gw.test/ws", { WebSocket: FakeSocket, globals: fakeGlobals(), ...opts });
  clients.push(c);
  await Promise.resolve();
  return c;
}

beforeEach(() => {
  FakeSocket.all = [];
  try {
    mock.timers.enable({ apis: ["setTimeout"] });
  } catch (_) {
    mock.timers.enable(["setTimeout"]); // node 18's signature
  }
});
afterEach(() => {
  for (const c of clients) c.close();
  clients = [];
  mock.timers.reset();
});

test("connects, reports its state, and subscribes once welcomed", async () => {
  const c = await client();
  const events = [];
  c.on("connected", (e) => events.push(["connected", e.reconnect]));
  assert.equal(c.state, "connecting");
  const sub = c.subscribe("/app/room/1");
  assert.equal(FakeSocket.last.sent.length, 0, "nothing is sent before welcome");
  FakeSocket.last.welcome();
  assert.equal(c.state, "connected");
  assert.deepEqual(events, [["connected", false]]);
  assert.deepEqual(FakeSocket.last.sentOfType("subscribe").map((f) => f.channel), ["/app/room/1"]);
  FakeSocket.last.reply("subscribe");
  assert.equal(sub.state, "subscribed");
  const got = [];
  sub.on("message", (m) => got.push(m.data));
  FakeSocket.last.receive({ type: "message", channel: "/app/room/1", data: { n: 1 } });
  FakeSocket.last.receive({ type: "message", channel: "/app/room/2", data: { n: 2 } });
  FakeSocket.last.receive({ type: "message", channel: "/app/room/1", pattern: "/app/room/*", data: { n: 3 } });
  assert.deepEqual(got, [{ n: 1 }], "only its own channel, and not the pattern copy");
});

test("backoff is full jitter under an exponential cap", async () => {
  // random() = 0.999...: the delay is just under the cap each time.
  const c = await client({ random: () => 0.9999, minDelay: 100, maxDelay: 1000 });
  const delays = [];
  c.on("disconnected", (e) => delays.push(e.delay));
  for (let i = 0; i < 6; i++) {
    FakeSocket.last.serverClose(1006);
    mock.timers.tick(delays.at(-1));
  }
  assert.deepEqual(delays, [99, 199, 399, 799, 999, 999]);
  assert.equal(FakeSocket.all.length, 7, "one new socket per retry");

  // random() = 0: retry at once; the cap stays the bound.
  const c2 = await client({ random: () => 0, minDelay: 100, maxDelay: 1000 });
  const d2 = [];
  c2.on("disconnected", (e) => d2.push(e.delay));
  FakeSocket.last.serverClose(1006);
  assert.deepEqual(d2, [0]);
});

test("random jitter stays within [0, cap)", async () => {
  const c = await client({ minDelay: 100, maxDelay: 1600 });
  const seen = [];
  c.on("disconnected", (e) => seen.push(e.delay));
  for (let i = 0; i < 40; i++) {
    FakeSocket.last.serverClose(1006);
    mock.timers.tick(seen.at(-1));
  }
  seen.forEach((d, i) => {
    const cap = Math.min(1600, 100 * 2 ** i);
    assert.ok(d >= 0 && d < cap, `attempt ${i}: ${d} not in [0, ${cap})`);
  });
});

test("a stable connection resets the backoff; an unstable one does not", async () => {
  const c = await client({ random: () => 0.9999, minDelay: 100, maxDelay: 10000, stableAfter: 5000 });
  const delays = [];
  c.on("disconnected", (e) => delays.push(e.delay));
  FakeSocket.last.serverClose(1006);
  mock.timers.tick(delays.at(-1));
  FakeSocket.last.serverClose(1006);
  mock.timers.tick(delays.at(-1));
  // Connected, but lost before stableAfter: the backoff keeps growing.
  FakeSocket.last.welcome();
  mock.timers.tick(4999);
  FakeSocket.last.serverClose(1012);
  mock.timers.tick(delays.at(-1));
  assert.deepEqual(delays, [99, 199, 399]);
  // Connected for stableAfter: back to the first step.
  FakeSocket.last.welcome();
  mock.timers.tick(5000);
  FakeSocket.last.serverClose(1012);
  assert.deepEqual(delays, [99, 199, 399, 99]);
});

test("terminal close codes stop reconnecting; 1012, 4000, 4001 and 1006 do not", async () => {
  for (const code of [1006, 1012, 4000, 4001, 1009, 1011, 4002, 4004]) {
    const c = await client({ random: () => 0 });
    let last;
    c.on("disconnected", (e) => (last = e));
    FakeSocket.last.welcome();
    const before = FakeSocket.all.length;
    FakeSocket.last.serverClose(code, "x");
    assert.equal(last.terminal, false, `code ${code}`);
    mock.timers.tick(0);
    assert.equal(FakeSocket.all.length, before + 1, `code ${code} reconnects`);
    c.close();
  }
  for (const code of TERMINAL_CODES) {
    const c = await client({ random: () => 0 });
    let last;
    c.on("disconnected", (e) => (last = e));
    FakeSocket.last.welcome();
    const before = FakeSocket.all.length;
    FakeSocket.last.serverClose(code, "rate limit exceeded");
    assert.deepEqual(last, { code, reason: "rate limit exceeded", terminal: true });
    assert.equal(c.state, "closed");
    mock.timers.tick(60000);
    assert.equal(FakeSocket.all.length, before, `code ${code} does not reconnect`);
  }
  // A 1008 for a frame that did not arrive in time is the network's fault.
  const slow = await client({ random: () => 0 });
  FakeSocket.last.welcome();
  FakeSocket.last.serverClose(1008, "frame not completed in time");
  assert.equal(slow.state, "disconnected");
  // An application may add its own.
  const c = await client({ random: () => 0, terminalCodes: [4001] });
  FakeSocket.last.serverClose(4001);
  assert.equal(c.state, "closed");
});

test("every reconnect resubscribes everything and reports a gap", async () => {
  const c = await client({ random: () => 0 });
  const a = c.subscribe("/a");
  const b = c.subscribe("/b");
  const gone = c.subscribe("/gone");
  FakeSocket.last.welcome();
  gone.unsubscribe();
  assert.deepEqual(FakeSocket.last.sentOfType("unsubscribe").map((f) => f.channel), ["/gone"]);
  const gaps = [];
  a.on("gap", (g) => gaps.push(["a", g.reason]));
  b.on("gap", (g) => gaps.push(["b", g.reason]));
  FakeSocket.last.serverClose(1012);
  mock.timers.tick(0);
  const ws = FakeSocket.last;
  ws.welcome();
  assert.deepEqual(ws.sentOfType("subscribe").map((f) => f.channel), ["/a", "/b"]);
  assert.ok(ws.sentOfType("subscribe").every((f) => f.offset === undefined), "no positions without history support");
  for (const f of ws.sentOfType("subscribe")) ws.receive({ type: "subscribed", channel: f.channel, id: f.id });
  assert.deepEqual(gaps, [["a", "reconnected"], ["b", "reconnected"]]);
  assert.equal(a.state, "subscribed");
});

test("positions are kept and sent on resubscribe only when the welcome advertises recovery", async () => {
  const c = await client({ random: () => 0 });
  const sub = c.subscribe("/h");
  FakeSocket.last.welcome({ recovery: true });
  FakeSocket.last.reply("subscribe");
  FakeSocket.last.receive({ type: "message", channel: "/h", data: 1, offset: 7, epoch: "e1" });
  assert.deepEqual(sub.position, { offset: 7, epoch: "e1" });
  const gaps = [];
  sub.on("gap", (g) => gaps.push(g.reason));
  FakeSocket.last.serverClose(1006);
  mock.timers.tick(0);
  FakeSocket.last.welcome({ recovery: true });
  const f = FakeSocket.last.sentOfType("subscribe")[0];
  assert.equal(f.offset, 7);
  assert.equal(f.epoch, "e1");
  FakeSocket.last.reply("subscribe", { recovered: true });
  assert.deepEqual(gaps, [], "recovered: no gap");
  FakeSocket.last.serverClose(1006);
  mock.timers.tick(0);
  FakeSocket.last.welcome({ recovery: true });
  FakeSocket.last.reply("subscribe", { recovered: false });
  assert.deepEqual(gaps, ["not_recovered"]);
  // A gateway without recovery gets no position.
  FakeSocket.last.serverClose(1006);
  mock.timers.tick(0);
  FakeSocket.last.welcome();
  assert.equal(FakeSocket.last.sentOfType("subscribe")[0].offset, undefined);
});

test("joined channels send their positions on reconnect (since) and hear whether they were recovered", async () => {
  const c = await client({ random: () => 0 });
  const gaps = [];
  c.on("gap", (g) => gaps.push([g.channels, g.reason, g.why]));
  FakeSocket.last.welcome({ recovery: true, channels: ["/j", "/b"], positions: { "/j": { offset: 3, epoch: "e" } } });
  assert.ok(!FakeSocket.last.url.includes("since="), "nothing to send on the first connect");
  FakeSocket.last.receive({ type: "message", channel: "/j", data: 1, offset: 4, epoch: "e" });
  FakeSocket.last.receive({ type: "message", channel: "/b", data: 1 });
  FakeSocket.last.serverClose(1012);
  mock.timers.tick(0);
  const url = new URL(FakeSocket.last.url);
  assert.deepEqual(JSON.parse(url.searchParams.get("since")), { "/j": { offset: 4, epoch: "e" } });
  FakeSocket.last.welcome({ recovery: true, channels: ["/j", "/b"], positions: { "/j": { offset: 6, epoch: "e", recovered: true } } });
  assert.deepEqual(gaps, [], "recovered: no gap");
  FakeSocket.last.receive({ type: "message", channel: "/j", data: 5, offset: 5, epoch: "e" });
  FakeSocket.last.receive({ type: "message", channel: "/j", data: 6, offset: 6, epoch: "e" });
  FakeSocket.last.serverClose(1006);
  mock.timers.tick(0);
  assert.deepEqual(JSON.parse(new URL(FakeSocket.last.url).searchParams.get("since")), { "/j": { offset: 6, epoch: "e" } });
  FakeSocket.last.welcome({ recovery: true, channels: ["/j"], positions: { "/j": { offset: 1, epoch: "f", recovered: false, reason: "epoch_changed" } } });
  assert.deepEqual(gaps, [[["/j"], "not_recovered", "epoch_changed"]]);
  FakeSocket.last.serverClose(1006);
  mock.timers.tick(0);
  assert.deepEqual(JSON.parse(new URL(FakeSocket.last.url).searchParams.get("since")), { "/j": { offset: 1, epoch: "f" } });
  // A gateway without recovery gets no positions.
  FakeSocket.last.welcome({ channels: ["/j"] });
  FakeSocket.last.serverClose(1006);
  mock.timers.tick(0);
  assert.ok(!FakeSocket.last.url.includes("since="));
});

test("gap and dropped notices reach the subscriptions they name", async () => {
  const c = await client();
  const a = c.subscribe("/a");
  const b = c.subscribe("/b");
  FakeSocket.last.welcome();
  const got = [];
  a.on("gap", (g) => got.push(["a", g.reason]));
  b.on("gap", (g) => got.push(["b", g.reason]));
  FakeSocket.last.receive({ type: "gap", channels: ["/a"], patterns: [], reason: "broker_reconnected" });
  FakeSocket.last.receive({ type: "dropped", count: 3 });
  assert.deepEqual(got, [["a", "broker_reconnected"], ["a", "dropped"], ["b", "dropped"]]);
});

test("the heartbeat watchdog notices a dead connection without a close event", async () => {
  const c = await client({ random: () => 0, pingInterval: 1000, pongTimeout: 500 });
  const events = [];
  c.on("disconnected", (e) => events.push(e.code));
  const ws = FakeSocket.last;
  ws.welcome();
  mock.timers.tick(1000);
  assert.equal(ws.sentOfType("ping").length, 1);
  ws.reply("ping");
  mock.timers.tick(1000);
  assert.equal(ws.sentOfType("ping").length, 2);
  // No pong: dead after pongTimeout, and the socket is closed by the client.
  mock.timers.tick(499);
  assert.deepEqual(events, []);
  mock.timers.tick(1);
  assert.deepEqual(events, [4000]);
  assert.equal(ws.closed.code, 4000);
  mock.timers.tick(0);
  assert.equal(FakeSocket.all.length, 2, "reconnected");
  assert.equal(c.state, "connecting");
});

test("an attempt that never gets a welcome is abandoned", async () => {
  const c = await client({ random: () => 0, connectTimeout: 3000 });
  const events = [];
  c.on("disconnected", (e) => events.push(e.code));
  mock.timers.tick(3000);
  assert.deepEqual(events, [4000]);
  mock.timers.tick(0);
  assert.equal(FakeSocket.all.length, 2);
});

test("publish and rpc resolve on their replies and reject with the protocol's code", async () => {
  const c = await client();
  FakeSocket.last.welcome();
  const p = c.publish("/app/room/lobby", { text: "hi" });
  const f = FakeSocket.last.sentOfType("publish")[0];
  assert.deepEqual({ ...f, id: 0 }, { type: "publish", channel: "/app/room/lobby", data: { text: "hi" }, id: 0 });
  FakeSocket.last.reply("publish");
  assert.equal(await p, undefined);

  const refused = c.publish("/app/broadcast", 1);
  FakeSocket.last.reply("publish", { type: "error", code: "forbidden", message: "not allowed" });
  await assert.rejects(refused, (e) => e instanceof TidingsError && e.code === "forbidden" && e.message === "not allowed");

  const r = c.rpc("/api/echo", { a: 1 });
  const rf = FakeSocket.last.sentOfType("rpc")[0];
  assert.equal(rf.method, "POST");
  assert.deepEqual(rf.data, { a: 1 });
  FakeSocket.last.reply("rpc", { status: 201, data: { ok: true } });
  assert.deepEqual(await r, { status: 201, data: { ok: true } });

  const r2 = c.rpc("/api/x", undefined, { method: "GET" });
  FakeSocket.last.reply("rpc", { type: "error", code: "rpc_disabled", message: "no" });
  await assert.rejects(r2, { code: "rpc_disabled" });
});

test("publish with echo: false asks the gateway to leave this client out", async () => {
  const c = await client();
  FakeSocket.last.welcome();
  const p = c.publish("/r", { a: 1 }, { echo: false });
  const f = FakeSocket.last.sentOfType("publish").at(-1);
  assert.equal(f.echo, false);
  FakeSocket.last.reply("publish");
  await p;
  c.publish("/r", 2).catch(() => {});
  assert.equal(FakeSocket.last.sentOfType("publish").at(-1).echo, undefined);
});

test("requests time out, and in-flight ones fail on disconnect", async () => {
  const c = await client({ random: () => 0, requestTimeout: 2000 });
  FakeSocket.last.welcome();
  const p = c.publish("/a", 1);
  mock.timers.tick(2000);
  await assert.rejects(p, { code: "timeout" });
  const r = c.rpc("/api/slow", null, { timeout: 100000 });
  FakeSocket.last.serverClose(1006);
  await assert.rejects(r, { code: "disconnected" });
});

test("requests made while disconnected wait for the connection (within their timeout)", async () => {
  const c = await client({ random: () => 0 });
  const p = c.publish("/a", 1, { timeout: 5000 });
  assert.equal(FakeSocket.last.sent.length, 0);
  FakeSocket.last.welcome();
  FakeSocket.last.reply("publish");
  await p;
  FakeSocket.last.serverClose(1006);
  const late = c.publish("/a", 2, { timeout: 100 });
  mock.timers.tick(100);
  await assert.rejects(late, { code: "timeout" });
});

test("getToken is called for every attempt and the token goes in the query", async () => {
  let n = 0;
  const c = await client({ random: () => 0, getToken: async () => "tok" + ++n });
  await flush();
  assert.equal(FakeSocket.last.url, "ws://gw.test/ws?token=tok1");
  FakeSocket.last.welcome();
  FakeSocket.last.serverClose(1012);
  mock.timers.tick(0);
  await flush();
  assert.equal(FakeSocket.last.url, "ws://gw.test/ws?token=tok2");
  assert.equal(n, 2);
  assert.equal(c.state, "connecting");
});

test("a failing getToken is retried with backoff", async () => {
  let n = 0;
  const c = connect("ws://gw.test/ws", {
    WebSocket: FakeSocket,
    globals: fakeGlobals(),
    random: () => 0.9999,
    minDelay: 100,
    getToken: async () => {
      if (++n < 3) throw new Error("backend down");
      return "ok";
    },
  });
  clients.push(c);
  const delays = [];
  c.on("disconnected", (e) => delays.push(e.delay));
  await flush();
  mock.timers.tick(delays.at(-1));
  await flush();
  mock.timers.tick(delays.at(-1));
  await flush();
  assert.deepEqual(delays, [99, 199]);
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(FakeSocket.last.url, "ws://gw.test/ws?token=ok");
});

test("handlers attached right after connect() see the first attempt", async () => {
  const c = connect("ws://gw.test/ws", { WebSocket: FakeSocket, globals: fakeGlobals() });
  clients.push(c);
  const events = [];
  c.on("connecting", (e) => events.push(["connecting", e.attempt]));
  c.on("connected", () => events.push(["connected"]));
  assert.equal(c.state, "connecting");
  await Promise.resolve();
  FakeSocket.last.welcome();
  assert.deepEqual(events, [["connecting", 0], ["connected"]]);
});

test("offline pauses reconnecting until the online event", async () => {
  const globals = fakeGlobals(true);
  const c = await client({ random: () => 0.5, minDelay: 1000, globals });
  FakeSocket.last.welcome();
  globals.navigator.onLine = false;
  FakeSocket.last.serverClose(1006);
  mock.timers.tick(60000);
  assert.equal(FakeSocket.all.length, 1, "no attempt while offline");
  assert.equal(c.state, "disconnected");
  globals.navigator.onLine = true;
  globals.fire("online");
  assert.equal(FakeSocket.all.length, 2, "reconnects when back online");
  assert.equal(c.state, "connecting");
});

test("close() stops everything", async () => {
  const c = await client({ random: () => 0 });
  FakeSocket.last.welcome();
  const events = [];
  c.on("disconnected", (e) => events.push(e));
  c.close();
  assert.equal(FakeSocket.last.closed.code, 1000);
  assert.deepEqual(events, [{ code: 1000, reason: "client closed", terminal: true }]);
  mock.timers.tick(60000);
  assert.equal(FakeSocket.all.length, 1);
  await assert.rejects(c.publish("/a", 1), { code: "closed" });
  assert.throws(() => c.subscribe("/a"), { code: "closed" });
});

test("subscription errors: final codes fail the subscription, others retry", async () => {
  const c = await client({ random: () => 0, minDelay: 100 });
  const bad = c.subscribe("/secret");
  const busy = c.subscribe("/busy");
  FakeSocket.last.welcome();
  const errors = [];
  bad.on("error", (e) => errors.push(e.code));
  busy.on("error", (e) => errors.push(e.code));
  const [fs, fb] = FakeSocket.last.sentOfType("subscribe");
  FakeSocket.last.receive({ type: "error", code: "forbidden", message: "no", id: fs.id });
  FakeSocket.last.receive({ type: "error", code: "broker_unavailable", message: "later", id: fb.id });
  assert.deepEqual(errors, ["forbidden", "broker_unavailable"]);
  assert.equal(bad.state, "failed");
  mock.timers.tick(200);
  assert.deepEqual(FakeSocket.last.sentOfType("subscribe").map((f) => f.channel), ["/secret", "/busy", "/busy"]);
  // The failed one is not asked for again after a reconnect.
  FakeSocket.last.serverClose(1006);
  mock.timers.tick(0);
  FakeSocket.last.welcome();
  assert.deepEqual(FakeSocket.last.sentOfType("subscribe").map((f) => f.channel), ["/busy"]);
});

test("the default URL is /ws on the page's host", async () => {
  const globals = { ...fakeGlobals(), location: { href: "https://app.example.com/page?x=1" } };
  const c = connect(undefined, { WebSocket: FakeSocket, globals });
  clients.push(c);
  assert.equal(c.url, "wss://app.example.com/ws");
  const c2 = connect("/realtime", { WebSocket: FakeSocket, globals: { location: { href: "http://127.0.0.1:8080/" } } });
  clients.push(c2);
  assert.equal(c2.url, "ws://127.0.0.1:8080/realtime");
});
