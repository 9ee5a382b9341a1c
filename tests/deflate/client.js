// Drives the real `ws` client (npm) against a Tidings gateway, for
// tests/tests/deflate.rs. Usage: node client.js URL DEFLATE THRESHOLD
// DEFLATE: "on" (offer permessage-deflate, ws's default offer) or "off".
// THRESHOLD: messages this client sends of at least this many bytes are
// compressed (when negotiated).
// Prints one JSON line per thing that happens, with the bytes read from and
// written to the TCP socket so far (what went over the wire, compressed or
// not); reads commands (JSON lines) on stdin:
//   {"send": "text"}   send a text message
//   {"close": true}    close and exit
const WebSocket = require("ws");
const readline = require("readline");

const [url, deflate, threshold] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const perMessageDeflate = deflate === "on" ? { threshold: Number(threshold) } : false;
const ws = new WebSocket(url, { perMessageDeflate });
const wire = () => ({ read: ws._socket ? ws._socket.bytesRead : 0, written: ws._socket ? ws._socket.bytesWritten : 0 });

ws.on("upgrade", (res) => out({ ev: "upgrade", extensions: res.headers["sec-websocket-extensions"] || null }));
ws.on("open", () => out({ ev: "open", extensions: ws.extensions, ...wire() }));
ws.on("message", (data, isBinary) => out({ ev: "message", text: data.toString(), binary: isBinary, ...wire() }));
ws.on("close", (code, reason) => { out({ ev: "close", code, reason: reason.toString() }); process.exit(0); });
ws.on("error", (e) => out({ ev: "error", message: e.message }));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.send !== undefined) {
    const before = wire();
    ws.send(cmd.send, () => out({ ev: "sent", bytes: Buffer.byteLength(cmd.send), before: before.written, ...wire() }));
  } else if (cmd.close) {
    ws.close();
    setTimeout(() => process.exit(0), 2000);
  }
});
