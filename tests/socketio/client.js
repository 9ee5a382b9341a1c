// Drives the stock socket.io client against a Tidings gateway, for
// tests/tests/socketio.rs. Usage: node client.js URL MODE [cookie]
// MODE: "polling" (the defaults: long-polling, then the upgrade) or
// "websocket" (transports: ["websocket"]). Prints one JSON line per thing
// that happens; reads commands (JSON lines) on stdin:
//   {"emit": [name, ...args]}         emit, printing the ack
//   {"close": true}                   disconnect and exit
const { io } = require("socket.io-client");
const readline = require("readline");

const [url, mode, cookie] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const opts = { reconnectionDelay: 100, reconnectionDelayMax: 300 };
if (mode === "websocket") opts.transports = ["websocket"];
if (cookie) opts.extraHeaders = { Cookie: cookie };
const socket = io(url, opts);
socket.on("connect", () => out({ ev: "connect", id: socket.id, transport: socket.io.engine.transport.name }));
socket.io.engine.on("upgrade", (t) => out({ ev: "upgrade", transport: t.name }));
socket.on("disconnect", (reason) => out({ ev: "disconnect", reason }));
socket.on("connect_error", (e) => out({ ev: "connect_error", message: e.message }));
socket.on("notification", (data, meta) => out({ ev: "notification", data, meta }));
socket.on("chat", (data, meta) => out({ ev: "chat", data, meta }));
socket.on("tidings", (frame) => out({ ev: "tidings", frame }));
socket.io.on("reconnect", () => out({ ev: "reconnect" }));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.emit) {
    socket.emit(...cmd.emit, (reply) => out({ ev: "ack", name: cmd.emit[0], reply }));
  } else if (cmd.close) {
    socket.close();
    process.exit(0);
  }
});
