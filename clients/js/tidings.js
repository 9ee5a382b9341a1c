// Tidings browser client: an ES module with no dependencies.
// Protocol v1, see docs/protocol.md of the gateway. Licensed MIT OR Apache-2.0.

/** The client's version, in step with the gateway's. */
export const VERSION = "0.1.0";

/**
 * Close codes after which the client does not reconnect: the gateway sends
 * them when the client itself is at fault (protocol error, invalid payload,
 * policy violation such as flooding past the rate limit), so reconnecting
 * would only repeat the fault, and 4003 when the backend revoked the session
 * (signing in again is needed). Every other code (1006, 1012 restart, 4000
 * heartbeat timeout, 4001 slow consumer, ...) reconnects with backoff, and so
 * does a 1008 with the reason "frame not completed in time" (a slow network).
 */
export const TERMINAL_CODES = Object.freeze([1002, 1003, 1007, 1008, 4003]);

// The one 1008 that is the network's fault, not the client's (a frame that
// did not arrive in time): it reconnects.
const SLOW_FRAME = "frame not completed in time";

const DEFAULTS = {
  minDelay: 500,
  maxDelay: 10000,
  stableAfter: 5000,
  connectTimeout: 10000,
  pingInterval: 20000,
  pongTimeout: 10000,
  requestTimeout: 10000,
  rpcTimeout: 15000,
  tokenParam: "token",
};

// Subscription errors after which the client stops asking for the channel.
const FINAL_SUBSCRIBE_ERRORS = new Set([
  "bad_request",
  "invalid_channel",
  "forbidden",
  "too_many_subscriptions",
]);

/** An error from the gateway (its protocol `code`) or from the client. */
export class TidingsError extends Error {
  /**
   * @param {string} code a protocol error code, or `timeout`, `disconnected`, `closed`
   * @param {string} message
   */
  constructor(code, message) {
    super(message || code);
    this.name = "TidingsError";
    this.code = code;
  }
}

class Emitter {
  constructor() {
    this._handlers = new Map();
  }
  /** Adds a handler; returns a function that removes it. */
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return () => this.off(event, fn);
  }
  /** Removes a handler. */
  off(event, fn) {
    const set = this._handlers.get(event);
    if (set) set.delete(fn);
  }
  _emit(event, arg) {
    const set = this._handlers.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (e) {
        // A failing handler must not break the client or the other handlers.
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

/** One channel the application listens to; survives reconnects. */
export class Subscription extends Emitter {
  constructor(client, channel) {
    super();
    this._client = client;
    /** The channel name. */
    this.channel = channel;
    /** `pending`, `subscribed`, `failed` or `unsubscribed`. */
    this.state = "pending";
    /**
     * The last position this client has on the channel (`{offset, epoch}`),
     * on channels with history: sent back on reconnect so the gateway
     * replays what was missed.
     */
    this.position = null;
  }
  /** Stops listening; idempotent. */
  unsubscribe() {
    if (this.state === "unsubscribed") return;
    this.state = "unsubscribed";
    this._client._removeSubscription(this);
  }
}

/** A connection to the gateway that reconnects until closed. */
export class Client extends Emitter {
  constructor(url, options = {}) {
    super();
    this._opts = { ...DEFAULTS, ...options };
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._random = options.random || Math.random;
    this._env = options.globals || globalThis;
    this.url = resolveUrl(url, this._env);
    /** `connecting`, `connected`, `disconnected` (waiting to reconnect) or `closed`. */
    this.state = "connecting";
    /** The last `welcome` frame, or null. */
    this.welcome = null;
    this._subs = new Set();
    /** channel -> {offset, epoch}: the last position on each history channel. */
    this._positions = new Map();
    this._attempt = 0;
    this._connections = 0;
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> request
    this._queue = []; // requests waiting for a connection
    this._timers = {};
    this._waitingOnline = false;
    this._onOnline = () => {
      if (this._waitingOnline) {
        this._waitingOnline = false;
        this._open();
      } else if (this.state === "disconnected" && this._timers.retry) {
        // Back online while waiting out a backoff: try now.
        this._clear("retry");
        this._open();
      }
    };
    if (typeof this._env.addEventListener === "function") {
      this._env.addEventListener("online", this._onOnline);
    }
    // Start once the caller had the chance to attach its handlers, so that
    // the first `connecting` event is seen too.
    this.state = "connecting";
    Promise.resolve().then(() => this._open());
  }

  /** Listens to `channel`; the subscription is renewed on every reconnect. */
  subscribe(channel) {
    if (this.state === "closed") throw new TidingsError("closed", "the client is closed");
    const sub = new Subscription(this, channel);
    this._subs.add(sub);
    if (this.state === "connected") this._sendSubscribe(sub);
    return sub;
  }

  /**
   * Publishes `data` on `channel`; resolves once the broker accepted it.
   * `echo: false`: this client gets no copy of its own message.
   */
  publish(channel, data, { timeout, echo } = {}) {
    const frame = { type: "publish", channel, data: data === undefined ? null : data };
    if (echo === false) frame.echo = false;
    return this._request(frame, timeout ?? this._opts.requestTimeout).then(() => undefined);
  }

  /**
   * Calls the backend through the gateway (`rpc.url` + `path`); resolves with
   * `{status, data}` whatever the HTTP status.
   */
  rpc(path, body, { method = "POST", timeout } = {}) {
    const frame = { type: "rpc", method, path };
    if (body !== undefined) frame.data = body;
    return this._request(frame, timeout ?? this._opts.rpcTimeout).then((f) => {
      const out = { status: f.status, data: f.data === undefined ? null : f.data };
      if (f.encoding) out.encoding = f.encoding;
      return out;
    });
  }

  /** An application-level ping; resolves on the gateway's `pong`. */
  ping({ timeout } = {}) {
    return this._request({ type: "ping" }, timeout ?? this._opts.pongTimeout).then(() => undefined);
  }

  /** Closes the connection for good: no more reconnects. */
  close() {
    if (this.state === "closed") return;
    const ws = this._ws;
    this._teardown(new TidingsError("closed", "the client was closed"));
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
      ws.close(1000, "client closed");
    }
    this._rejectQueued(new TidingsError("closed", "the client was closed"));
    this._waitingOnline = false;
    this._clear("retry");
    if (typeof this._env.removeEventListener === "function") {
      this._env.removeEventListener("online", this._onOnline);
    }
    this._setState("closed");
    this._emit("disconnected", { code: 1000, reason: "client closed", terminal: true });
  }

  // ---- connection lifecycle ----

  async _open() {
    if (this.state === "closed") return;
    if (this._env.navigator && this._env.navigator.onLine === false) {
      // Offline: wait for the `online` event instead of burning attempts.
      this._waitingOnline = true;
      this._setState("disconnected");
      return;
    }
    this._setState("connecting");
    this._emit("connecting", { attempt: this._attempt });
    let url = this.url;
    if (this._opts.getToken) {
      let token;
      try {
        token = await this._opts.getToken();
      } catch (e) {
        if (this.state === "closed") return;
        this._emit("error", e);
        this._lost(0, "getToken failed: " + (e && e.message ? e.message : e));
        return;
      }
      if (this.state === "closed") return;
      if (token != null && token !== "") {
        url += (url.includes("?") ? "&" : "?") + encodeURIComponent(this._opts.tokenParam) + "=" + encodeURIComponent(token);
      }
    }
    const since = this._since();
    if (since) url += (url.includes("?") ? "&" : "?") + "since=" + encodeURIComponent(since);
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (e) {
      this._emit("error", e);
      this._lost(0, String(e && e.message ? e.message : e));
      return;
    }
    this._ws = ws;
    // If neither `welcome` nor `close` comes, give up on this attempt.
    this._set("connect", this._opts.connectTimeout, () => this._dead(4000, "connect timeout"));
    ws.onmessage = (ev) => this._frame(ev.data);
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._lost(ev.code, ev.reason || "");
    };
    ws.onerror = () => {};
  }

  // The socket is considered dead (no close event may ever come): drop it.
  _dead(code, reason) {
    const ws = this._ws;
    if (!ws) return;
    try {
      ws.close(4000, reason);
    } catch (_) {
      /* already closing */
    }
    this._lost(code, reason);
  }

  _lost(code, reason) {
    const ws = this._ws;
    if (ws) {
      ws.onmessage = ws.onclose = ws.onerror = null;
    }
    this._teardown(new TidingsError("disconnected", "the connection was lost (" + code + ")"));
    const terminal =
      (TERMINAL_CODES.includes(code) && !(code === 1008 && reason === SLOW_FRAME)) ||
      (this._opts.terminalCodes || []).includes(code);
    // Consecutive failures; a stable connection reset it to 0.
    this._attempt++;
    if (terminal) {
      this._rejectQueued(new TidingsError("closed", "closed by the gateway (" + code + ")"));
      this._setState("closed");
      this._emit("disconnected", { code, reason, terminal: true });
      return;
    }
    this._setState("disconnected");
    const delay = this.nextDelay();
    this._emit("disconnected", { code, reason, terminal: false, delay });
    this._set("retry", delay, () => this._open());
  }

  /** The delay before the next attempt: full jitter over an exponential cap. */
  nextDelay() {
    const n = Math.max(0, this._attempt - 1);
    const cap = Math.min(this._opts.maxDelay, this._opts.minDelay * Math.pow(2, n));
    return Math.floor(this._random() * cap);
  }

  _teardown(err) {
    for (const name of ["connect", "ping", "pong", "stable"]) this._clear(name);
    this._ws = null;
    this._stable = false;
    for (const [, req] of this._pending) {
      clearTimeout(req.timer);
      if (!req.internal) req.fail(err);
    }
    this._pending.clear();
    for (const sub of this._subs) if (sub.state === "subscribed") sub.state = "pending";
  }

  _rejectQueued(err) {
    for (const req of this._queue) {
      clearTimeout(req.timer);
      req.fail(err);
    }
    this._queue = [];
  }

  // The positions of the channels the last welcome joined, as the `since`
  // query parameter (JSON), or null: the gateway replays what was missed
  // on them before anything else.
  _since() {
    const w = this.welcome;
    if (!w || !this._recovers()) return null;
    const since = {};
    let n = 0;
    for (const ch of w.channels || []) {
      const p = this._positions.get(ch);
      if (p && n < 64) {
        since[ch] = { offset: p.offset, epoch: p.epoch };
        n++;
      }
    }
    return n ? JSON.stringify(since) : null;
  }

  _setPosition(channel, offset, epoch) {
    if (offset === undefined || typeof epoch !== "string") return;
    const p = { offset, epoch };
    this._positions.set(channel, p);
    for (const sub of this._subs) if (sub.channel === channel) sub.position = p;
  }

  _connected(welcome) {
    this._clear("connect");
    const reconnect = this._connections > 0;
    this._connections++;
    this.welcome = welcome;
    // Joined channels: where the gateway put us (after any replay, which
    // follows the welcome), and whether it recovered what we missed.
    for (const [ch, at] of Object.entries(welcome.positions || {})) {
      const had = this._positions.has(ch);
      if (!had || at.recovered === false || at.recovered === undefined) this._setPosition(ch, at.offset, at.epoch);
      // Subscriptions of this channel hear it from their `subscribed`.
      if (at.recovered === false) this._emit("gap", { type: "gap", channels: [ch], patterns: [], reason: "not_recovered", why: at.reason });
    }
    for (const ch of this._positions.keys()) {
      if (!(welcome.channels || []).includes(ch) && !this._hasSub(ch)) this._positions.delete(ch);
    }
    this._setState("connected");
    this._set("stable", this._opts.stableAfter, () => {
      // A stable connection: the next loss starts backing off from scratch.
      this._stable = true;
      this._attempt = 0;
    });
    this._schedulePing();
    this._emit("connected", { welcome, reconnect });
    for (const sub of this._subs) this._sendSubscribe(sub, reconnect);
    const queued = this._queue;
    this._queue = [];
    for (const req of queued) this._send(req);
  }

  // ---- heartbeat ----

  _schedulePing() {
    this._set("ping", this._opts.pingInterval, () => {
      const req = this._makeRequest(
        { type: "ping" },
        this._opts.pongTimeout,
        () => this._schedulePing(),
        (e) => {
          if (e.code === "timeout") this._dead(4000, "heartbeat timeout");
          else this._schedulePing(); // an error reply (rate_limited): still alive
        },
        true,
      );
      this._send(req);
    });
  }

  // ---- frames ----

  _frame(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch (_) {
      return;
    }
    if (!f || typeof f !== "object") return;
    if (f.type === "welcome") return this._connected(f);
    if (f.id !== undefined && f.id !== null && this._pending.has(f.id)) {
      const req = this._pending.get(f.id);
      this._pending.delete(f.id);
      clearTimeout(req.timer);
      if (f.type === "error") {
        const err = new TidingsError(f.code, f.message);
        err.frame = f;
        req.fail(err);
      } else req.ok(f);
      return;
    }
    switch (f.type) {
      case "message":
        return this._message(f);
      case "gap":
        this._emit("gap", f);
        for (const sub of this._subs) {
          if ((f.channels || []).includes(sub.channel)) sub._emit("gap", { reason: f.reason, frame: f });
        }
        return;
      case "dropped":
        this._emit("gap", f);
        for (const sub of this._subs) sub._emit("gap", { reason: "dropped", frame: f });
        return;
      default:
        this._emit("frame", f);
    }
  }

  _message(f) {
    this._emit("message", f);
    if (f.pattern !== undefined) return; // exact subscriptions get the exact copy
    if (f.offset !== undefined) this._setPosition(f.channel, f.offset, f.epoch);
    for (const sub of this._subs) {
      if (sub.channel !== f.channel || sub.state === "unsubscribed") continue;
      sub._emit("message", f);
    }
  }

  _hasSub(channel) {
    for (const sub of this._subs) if (sub.channel === channel) return true;
    return false;
  }

  // Whether the gateway replays from a position (it keeps history).
  _recovers() {
    const w = this.welcome;
    return !!(w && w.recovery === true);
  }

  _joined(channel) {
    const w = this.welcome;
    return !!(w && (w.channels || []).includes(channel));
  }

  _sendSubscribe(sub, reconnect = false) {
    const frame = { type: "subscribe", channel: sub.channel };
    // A joined channel was recovered on connect (`since`); others recover
    // here, from the last position.
    const joined = this._joined(sub.channel);
    const at = this._positions.get(sub.channel);
    const recovering = !joined && reconnect && !!at && this._recovers();
    if (recovering) {
      frame.offset = at.offset;
      frame.epoch = at.epoch;
    }
    const req = this._makeRequest(
      frame,
      this._opts.requestTimeout,
      (reply) => {
        if (sub.state === "unsubscribed") return;
        sub.state = "subscribed";
        if (!joined && reply.offset !== undefined && (!recovering || reply.recovered !== true)) {
          this._setPosition(sub.channel, reply.offset, reply.epoch);
        }
        let recovered = reply.recovered;
        if (joined) {
          const w = (this.welcome.positions || {})[sub.channel];
          recovered = w ? w.recovered : undefined;
        }
        sub._emit("subscribed", { reconnect, recovered });
        if (reconnect && recovered !== true) {
          // Messages published while disconnected were not replayed.
          sub._emit("gap", { reason: recovered === false ? "not_recovered" : "reconnected", frame: reply });
        }
      },
      (e) => {
        if (sub.state === "unsubscribed" || e.code === "disconnected") return;
        if (FINAL_SUBSCRIBE_ERRORS.has(e.code)) {
          sub.state = "failed";
          this._subs.delete(sub);
          sub._emit("error", e);
        } else {
          sub._emit("error", e);
          // broker_unavailable, rate_limited, timeout: ask again shortly.
          setTimeout(() => {
            if (this.state === "connected" && this._subs.has(sub) && sub.state === "pending") this._sendSubscribe(sub, reconnect);
          }, this._opts.minDelay + Math.floor(this._random() * this._opts.minDelay));
        }
      },
      true,
    );
    this._send(req);
  }

  _removeSubscription(sub) {
    this._subs.delete(sub);
    for (const other of this._subs) if (other.channel === sub.channel) return; // still wanted
    if (this.state === "connected") {
      const ignore = () => {};
      this._send(this._makeRequest({ type: "unsubscribe", channel: sub.channel }, this._opts.requestTimeout, ignore, ignore, true));
    }
  }

  // ---- requests ----

  // A request: `ok(reply)` on its reply, `fail(error)` on an error frame or
  // timeout. Internal ones (subscribe, ping) are simply forgotten when the
  // connection is lost; the application's fail with `disconnected`.
  _makeRequest(frame, timeout, ok, fail, internal = false) {
    const req = { frame, internal, timer: null, ok, fail };
    req.timer = setTimeout(() => {
      this._pending.delete(req.frame.id);
      const i = this._queue.indexOf(req);
      if (i >= 0) this._queue.splice(i, 1);
      req.fail(new TidingsError("timeout", frame.type + " timed out after " + timeout + " ms"));
    }, timeout);
    return req;
  }

  _request(frame, timeout) {
    if (this.state === "closed") return Promise.reject(new TidingsError("closed", "the client is closed"));
    return new Promise((resolve, reject) => {
      const req = this._makeRequest(frame, timeout, resolve, reject);
      if (this.state === "connected") this._send(req);
      else this._queue.push(req);
    });
  }

  _send(req) {
    const id = this._nextId++;
    req.frame.id = id;
    this._pending.set(id, req);
    try {
      this._ws.send(JSON.stringify(req.frame));
    } catch (e) {
      this._pending.delete(id);
      clearTimeout(req.timer);
      req.fail(new TidingsError("disconnected", "could not send: " + (e && e.message)));
    }
  }

  // ---- helpers ----

  _setState(state) {
    this.state = state;
  }
  _set(name, ms, fn) {
    this._clear(name);
    this._timers[name] = setTimeout(() => {
      this._timers[name] = null;
      fn();
    }, ms);
  }
  _clear(name) {
    if (this._timers[name]) clearTimeout(this._timers[name]);
    this._timers[name] = null;
  }
}

function resolveUrl(url, env) {
  const loc = env.location;
  if (!url) {
    if (!loc) throw new TidingsError("bad_request", "connect() needs a URL outside a browser");
    url = "/ws";
  }
  if (/^wss?:\/\//i.test(url)) return url;
  if (loc && typeof URL === "function") {
    const u = new URL(url, loc.href);
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    return u.toString();
  }
  return url.replace(/^http/i, "ws");
}

/**
 * Opens a connection to the gateway (default: `/ws` on the page's own host)
 * and keeps it open, reconnecting with backoff, until `client.close()`.
 */
export function connect(url, options) {
  if (url && typeof url === "object") {
    options = url;
    url = undefined;
  }
  return new Client(url, options);
}
