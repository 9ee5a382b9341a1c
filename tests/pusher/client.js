// Drives the real pusher-js client and the real Pusher server SDK for Node
// against a Tidings gateway, for tests/tests/pusher.rs.
// Usage: node client.js HOST PORT APP_ID KEY SECRET
// Prints one JSON line per thing that happens; reads commands (JSON lines):
//   {"subscribe": NAME, "secret"?: S, "member"?: {user_id, user_info}}
//       subscribe; the authorization is signed by the server SDK (with
//       secret S instead of the app's when given: a wrong signature)
//   {"unsubscribe": NAME}
//   {"client_event": {channel, event, data}}      channel.trigger(...)
//   {"trigger": {channels, event, data, exclude_self?, secret?, skew_secs?}}
//       the server SDK's trigger (signed with `secret` if given; its clock
//       moved by skew_secs if given)
//   {"batch": [{channel, name, data}]}            the server SDK's triggerBatch
//   {"get": PATH, "params"?: {...}}               the server SDK's get
//   {"signin": {id, ...}}                          client.signin(), the user
//       authentication signed by the server SDK's authenticateUser
const Pusher = require("pusher-js");
const PusherServer = require("pusher");
const readline = require("readline");

const [host, port, appId, key, secret] = process.argv.slice(2);
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const sdk = (s) =>
  new PusherServer({ appId, key, secret: s || secret, host, port, useTLS: false });
const server = sdk();
const auth = {}; // channel -> {secret, member}
let signinUser = null;

const client = new Pusher(key, {
  wsHost: host,
  wsPort: Number(port),
  forceTLS: false,
  enabledTransports: ["ws"],
  cluster: "mt1",
  userAuthentication: {
    customHandler: ({ socketId }, callback) => {
      try {
        callback(null, server.authenticateUser(socketId, signinUser));
      } catch (e) {
        callback(e, null);
      }
    },
  },
  channelAuthorization: {
    customHandler: ({ socketId, channelName }, callback) => {
      const a = auth[channelName] || {};
      try {
        callback(null, sdk(a.secret).authorizeChannel(socketId, channelName, a.member));
      } catch (e) {
        callback(e, null);
      }
    },
  },
});
client.connection.bind("connected", () =>
  out({ ev: "connected", socket_id: client.connection.socket_id })
);
client.connection.bind("error", (e) =>
  // A pusher:error (data), or one met during the handshake (error.data).
  out({ ev: "error", error: (e && e.data) || (e && e.error && e.error.data) || { type: e && e.type } })
);
client.connection.bind("message", (m) => {
  if (m.event === "pusher:signin_success") out({ ev: "signed_in" });
});
client.connection.bind("state_change", (s) => out({ ev: "state", state: s.current }));

readline.createInterface({ input: process.stdin }).on("line", async (line) => {
  const cmd = JSON.parse(line);
  try {
    if (cmd.subscribe) {
      const name = cmd.subscribe;
      auth[name] = { secret: cmd.secret, member: cmd.member };
      const ch = client.subscribe(name);
      ch.bind_global((event, data) => {
        if (event === "pusher:subscription_succeeded" && ch.members) {
          out({ ev: "event", channel: name, event, members: ch.members.count, me: ch.members.me });
        } else {
          out({ ev: "event", channel: name, event, data });
        }
      });
    } else if (cmd.signin) {
      signinUser = cmd.signin;
      client.signin();
    } else if (cmd.unsubscribe) {
      client.unsubscribe(cmd.unsubscribe);
    } else if (cmd.client_event) {
      const c = cmd.client_event;
      out({ ev: "client_event_sent", ok: client.channel(c.channel).trigger(c.event, c.data) });
    } else if (cmd.trigger) {
      const t = cmd.trigger;
      const params = t.exclude_self ? { socket_id: client.connection.socket_id } : undefined;
      const realNow = Date.now;
      if (t.skew_secs) Date.now = () => realNow() + t.skew_secs * 1000;
      let p;
      try {
        p = sdk(t.secret).trigger(t.channels, t.event, t.data, params);
      } finally {
        Date.now = realNow;
      }
      const res = await p;
      out({ ev: "triggered", status: res.status });
    } else if (cmd.batch) {
      const res = await server.triggerBatch(cmd.batch);
      out({ ev: "triggered", status: res.status });
    } else if (cmd.get) {
      const res = await server.get({ path: cmd.get, params: cmd.params || {} });
      out({ ev: "got", status: res.status, body: await res.json() });
    }
  } catch (e) {
    const status = e.status || (e.response && e.response.status);
    out({ ev: "request_error", status, body: e.body });
  }
});
