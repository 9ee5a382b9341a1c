// The reference the gateway's Socket.IO endpoint is measured against: the
// Node bridge of the seeds' design (../../../docs/transports.md, "Migrating
// from a Node socket.io bridge"), on the real socket.io 4.8 server.
//
// - Identity: the socket's cookies are forwarded to a whoami backend (the
//   Django view of the seeds; here tidings-bench's own), which answers
//   {"user":"<id>"}; no user, no connection.
// - Rooms: each socket joins its user's room, named after the user's Redis
//   channel; the default namespace holds everyone for broadcasts.
// - Redis: one subscriber connection. `/app/broadcast` is subscribed at
//   start and re-emitted to every socket; a user's channel is subscribed
//   when the user's first socket connects (before the socket is told it is
//   connected) and unsubscribed when the last one leaves.
// - Each message is emitted as `notification` with the parsed JSON payload
//   (text when it is not JSON) and {channel}, as the gateway does.
// - After the connect, a `tidings` event {type: "welcome", user} tells the
//   bench whose socket it is, as the gateway's welcome frame does.
//
// Configuration comes from the environment variables tidings-bench gives a
// gateway it launches: TIDINGS_LISTEN (host:port, port 0 for a free one),
// TIDINGS_REDIS_URL, TIDINGS_IDENTITY__COOKIE_PROXY__URL. It prints
// "listening on http://<addr>" and answers GET /readyz with 200 once Redis is
// subscribed.
//
//   TIDINGS_LISTEN=127.0.0.1:0 TIDINGS_REDIS_URL=redis://127.0.0.1:6379 \
//   TIDINGS_IDENTITY__COOKIE_PROXY__URL=http://127.0.0.1:8000/whoami node server.js
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createClient } = require("redis");

const listen = process.env.TIDINGS_LISTEN || "127.0.0.1:3000";
const redisUrl = process.env.TIDINGS_REDIS_URL || "redis://127.0.0.1:6379";
const whoamiUrl = new URL(process.env.TIDINGS_IDENTITY__COOKIE_PROXY__URL || "http://127.0.0.1:8000/whoami");
const BROADCAST = "/app/broadcast";
const version = JSON.parse(
  require("node:fs").readFileSync(require("node:path").join(__dirname, "node_modules/socket.io/package.json"), "utf8"),
).version;

const whoamiAgent = new http.Agent({ keepAlive: true, maxSockets: 64 });
let ready = false;

const server = http.createServer((req, res) => {
  if (req.url === "/readyz") {
    res.writeHead(ready ? 200 : 503, { "content-type": "text/plain" });
    res.end(ready ? "ready\n" : "starting\n");
    return;
  }
  res.writeHead(404, { "content-type": "text/plain" });
  res.end("not found\n");
});

const io = new Server(server, {
  serveClient: false,
  pingInterval: 25000,
  pingTimeout: 20000,
  maxHttpBufferSize: 1e6,
});

/** Asks the whoami backend who the cookies are: the user id, or null. */
function whoami(cookie) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      whoamiUrl,
      { method: "GET", agent: whoamiAgent, headers: { cookie } },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          if (res.statusCode !== 200) return resolve(null);
          try {
            const body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
            resolve(typeof body.user === "string" && body.user !== "" ? body.user : null);
          } catch (e) {
            reject(e);
          }
        });
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    req.end();
  });
}

function payload(message) {
  try {
    return JSON.parse(message);
  } catch {
    return message;
  }
}

const subscriber = createClient({ url: redisUrl });
subscriber.on("error", (e) => console.error("redis:", e.message));

/** Sockets per user channel, to subscribe once and unsubscribe at the end. */
const refs = new Map();

function onUserMessage(message, channel) {
  io.to(channel).emit("notification", payload(message), { channel });
}

async function join(channel) {
  const n = refs.get(channel) || 0;
  refs.set(channel, n + 1);
  if (n === 0) await subscriber.subscribe(channel, onUserMessage);
}

function leave(channel) {
  const n = (refs.get(channel) || 1) - 1;
  if (n > 0) {
    refs.set(channel, n);
    return;
  }
  refs.delete(channel);
  subscriber.unsubscribe(channel, onUserMessage).catch((e) => console.error("redis:", e.message));
}

io.use(async (socket, next) => {
  const cookie = socket.handshake.headers.cookie;
  if (!cookie) return next(new Error("unauthorized"));
  let user;
  try {
    user = await whoami(cookie);
  } catch (e) {
    return next(new Error("identity unavailable"));
  }
  if (user === null) return next(new Error("unauthorized"));
  socket.data.user = user;
  socket.data.channel = `/app/user/${user}/notifications`;
  await join(socket.data.channel);
  next();
});

io.on("connection", (socket) => {
  socket.join(socket.data.channel);
  socket.emit("tidings", { type: "welcome", user: socket.data.user });
  socket.on("disconnect", () => leave(socket.data.channel));
});

async function main() {
  await subscriber.connect();
  await subscriber.subscribe(BROADCAST, (message, channel) => {
    io.emit("notification", payload(message), { channel });
  });
  const at = listen.lastIndexOf(":");
  const host = listen.slice(0, at);
  const port = Number(listen.slice(at + 1));
  server.listen(port, host, () => {
    const a = server.address();
    ready = true;
    console.log(`socket.io ${version} baseline listening on http://${a.address}:${a.port}`);
  });
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
