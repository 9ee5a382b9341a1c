// The app's side of a pusher-js page in a browser, for tests/tests/pusher_browser.rs
// and the webhook tests in tests/tests/pusher.rs: the real Pusher server SDK
// for Node behind a small HTTP server on a free loopback port.
// Usage: node server.js APP_ID KEY SECRET
// Serves:
//   GET  /?gw=HOST:PORT     the page: the pinned pusher-js browser build,
//                           connecting to the gateway at HOST:PORT, with its
//                           channelAuthorization and userAuthentication
//                           endpoints here
//   GET  /pusher.min.js     node_modules/pusher-js/dist/web/pusher.min.js
//   POST /auth?user=ID      channel authorization: the SDK's authorizeChannel
//                           (presence channels: user ID); 403 for channels
//                           starting with private-forbidden
//   POST /user-auth?user=ID user authentication: the SDK's authenticateUser
//   POST /webhook           records a webhook, checked with the SDK's
//                           webhook(request).isValid()
// Prints {"ev":"listening","port":N} first, then one JSON line per thing
// that happens; reads commands (JSON lines):
//   {"gateway": "HOST:PORT"}                   point the SDK at the gateway
//   {"trigger": {channels, event, data}}       the SDK's trigger
//   {"get": PATH, "params"?: {...}}            the SDK's get
//   {"terminate": USER_ID}                     the SDK's terminateUserConnections
const http = require("http");
const fs = require("fs");
const path = require("path");
const readline = require("readline");
const PusherServer = require("pusher");

const [appId, key, secret] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
let sdk = new PusherServer({ appId, key, secret, host: "127.0.0.1", port: "1", useTLS: false });
const script = fs.readFileSync(
  path.join(__dirname, "node_modules/pusher-js/dist/web/pusher.min.js")
);

const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>pusher-js</title>
<script src="/pusher.min.js"></script></head>
<body><pre id="log"></pre><script>
const params = new URLSearchParams(location.search);
const [wsHost, wsPort] = params.get("gw").split(":");
const user = params.get("user") || "7";
window.log = [];
const note = (o) => {
  window.log.push(o);
  document.getElementById("log").textContent += JSON.stringify(o) + "\\n";
};
window.client = new Pusher(${JSON.stringify(key)}, {
  wsHost, wsPort: Number(wsPort), forceTLS: false, enabledTransports: ["ws"],
  cluster: "mt1", disableStats: true,
  channelAuthorization: { endpoint: "/auth?user=" + user, transport: "ajax" },
  userAuthentication: { endpoint: "/user-auth?user=" + user, transport: "ajax" },
});
client.connection.bind("state_change", (s) => note({ ev: "state", state: s.current }));
client.connection.bind("connected", () => note({ ev: "connected", socket_id: client.connection.socket_id }));
client.connection.bind("error", (e) => note({ ev: "error", error: (e && e.data) || null }));
client.connection.bind("message", (m) => {
  if (m.event === "pusher:signin_success") note({ ev: "signed_in" });
});
window.sub = (name) => {
  const ch = client.subscribe(name);
  ch.bind_global((event, data) => {
    if (event === "pusher:subscription_succeeded" && ch.members) {
      const ids = [];
      ch.members.each((m) => ids.push(m.id));
      note({ ev: "event", channel: name, event, members: ids.sort(), me: ch.members.me.id });
    } else if (event === "pusher:subscription_error") {
      note({ ev: "event", channel: name, event, status: data && data.status });
    } else {
      note({ ev: "event", channel: name, event, data });
    }
  });
  return true;
};
note({ ev: "loaded" });
</script></body></html>`;

const body = (req) =>
  new Promise((resolve) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
  });

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, "http://127.0.0.1");
  const send = (status, type, text) => {
    res.writeHead(status, { "content-type": type });
    res.end(text);
  };
  try {
    if (req.method === "GET" && url.pathname === "/") {
      return send(200, "text/html; charset=utf-8", page);
    }
    if (req.method === "GET" && url.pathname === "/pusher.min.js") {
      return send(200, "text/javascript", script);
    }
    if (req.method === "GET" && url.pathname === "/favicon.ico") {
      return send(204, "text/plain", "");
    }
    if (req.method === "POST" && url.pathname === "/auth") {
      const form = new URLSearchParams(await body(req));
      const socketId = form.get("socket_id");
      const channel = form.get("channel_name");
      const user = url.searchParams.get("user");
      out({ ev: "auth", channel, user });
      if (channel.startsWith("private-forbidden")) {
        return send(403, "application/json", JSON.stringify({ error: "forbidden" }));
      }
      const member = channel.startsWith("presence-")
        ? { user_id: user, user_info: { name: "user " + user } }
        : undefined;
      return send(200, "application/json", JSON.stringify(sdk.authorizeChannel(socketId, channel, member)));
    }
    if (req.method === "POST" && url.pathname === "/user-auth") {
      const form = new URLSearchParams(await body(req));
      const user = url.searchParams.get("user");
      out({ ev: "user_auth", user });
      const auth = sdk.authenticateUser(form.get("socket_id"), { id: user, name: "user " + user });
      return send(200, "application/json", JSON.stringify(auth));
    }
    if (req.method === "POST" && url.pathname === "/webhook") {
      const rawBody = await body(req);
      const hook = sdk.webhook({ headers: req.headers, rawBody });
      const valid = hook.isValid();
      out({
        ev: "webhook",
        valid,
        key: req.headers["x-pusher-key"],
        events: valid ? hook.getEvents() : JSON.parse(rawBody).events,
      });
      return send(200, "application/json", "{}");
    }
    send(404, "text/plain", "not found");
  } catch (e) {
    out({ ev: "server_error", error: String(e) });
    send(500, "text/plain", String(e));
  }
});
server.listen(0, "127.0.0.1", () => out({ ev: "listening", port: server.address().port }));

readline.createInterface({ input: process.stdin }).on("line", async (line) => {
  const cmd = JSON.parse(line);
  try {
    if (cmd.gateway) {
      const [host, port] = cmd.gateway.split(":");
      sdk = new PusherServer({ appId, key, secret, host, port, useTLS: false });
      out({ ev: "gateway" });
    } else if (cmd.trigger) {
      const t = cmd.trigger;
      const res = await sdk.trigger(t.channels, t.event, t.data);
      out({ ev: "triggered", status: res.status });
    } else if (cmd.get) {
      const res = await sdk.get({ path: cmd.get, params: cmd.params || {} });
      out({ ev: "got", status: res.status, body: await res.json() });
    } else if (cmd.terminate) {
      const res = await sdk.terminateUserConnections(cmd.terminate);
      out({ ev: "terminated", status: res.status });
    }
  } catch (e) {
    const status = e.status || (e.response && e.response.status);
    out({ ev: "request_error", status, body: e.body });
  }
});
