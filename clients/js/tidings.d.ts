// Type definitions for the Tidings browser client (tidings.js).

/** The client's version, in step with the gateway's. */
export declare const VERSION: string;

/** Close codes after which the client does not reconnect (1002, 1003, 1007, 1008, 4003 revoked). */
export declare const TERMINAL_CODES: readonly number[];

/** Protocol error codes (docs/protocol.md) plus the client's own. */
export type ErrorCode =
  | "bad_json"
  | "bad_request"
  | "unknown_type"
  | "binary_unsupported"
  | "invalid_channel"
  | "forbidden"
  | "too_many_subscriptions"
  | "rate_limited"
  | "broker_unavailable"
  | "rpc_disabled"
  | "rpc_timeout"
  | "rpc_unavailable"
  | "too_many_requests"
  | "internal"
  | "timeout"
  | "disconnected"
  | "closed"
  | (string & {});

/** An error from the gateway (its protocol `code`) or from the client. */
export declare class TidingsError extends Error {
  constructor(code: ErrorCode, message?: string);
  readonly code: ErrorCode;
  /** The gateway's `error` frame, when the gateway sent one. */
  frame?: ServerFrame;
}

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A server frame, as received (unknown fields kept). */
export interface ServerFrame {
  type: string;
  [field: string]: unknown;
}

/** The first frame on every socket. */
export interface Welcome extends ServerFrame {
  type: "welcome";
  protocol: number;
  connection: string;
  user: string | null;
  channels: string[];
  patterns: string[];
}

/** A message published on a channel. */
export interface Message extends ServerFrame {
  type: "message";
  channel: string;
  data: Json;
  pattern?: string;
  from?: string | null;
  encoding?: "base64";
  /** The message's position, on channels with history. */
  offset?: number;
  epoch?: string;
}

/** Messages may have been missed: reload what you derive from them. */
export interface GapEvent {
  /** `reconnected`, `not_recovered`, `dropped`, or the `gap` frame's reason (`broker_reconnected`, `lagged`). */
  reason: string;
  frame: ServerFrame;
}

export interface SubscribedEvent {
  /** True when this confirmation follows a reconnect. */
  reconnect: boolean;
  /** On reconnect, on a channel with history: whether what was missed was replayed (`false`: reload). */
  recovered?: boolean;
}

export interface ConnectingEvent {
  /** Consecutive failed attempts before this one. */
  attempt: number;
}

export interface ConnectedEvent {
  welcome: Welcome;
  /** False for the first connection, true after a reconnect. */
  reconnect: boolean;
}

export interface DisconnectedEvent {
  /** The WebSocket close code (1006 for a dropped connection, 4000 for a heartbeat or connect timeout, 0 when no socket was opened). */
  code: number;
  reason: string;
  /** True when the client will not reconnect (a terminal code or `close()`). */
  terminal: boolean;
  /** Milliseconds until the next attempt, when it will reconnect. */
  delay?: number;
}

export interface RpcResult {
  status: number;
  data: Json;
  encoding?: "base64";
}

export type ClientState = "connecting" | "connected" | "disconnected" | "closed";

/** A channel the application listens to; renewed on every reconnect. */
export declare class Subscription {
  readonly channel: string;
  /** `pending`, `subscribed`, `failed` or `unsubscribed`. */
  readonly state: "pending" | "subscribed" | "failed" | "unsubscribed";
  /** The last position this client has on the channel (channels with history), sent back on reconnect. */
  readonly position: { offset: number; epoch: string } | null;
  on(event: "message", fn: (message: Message) => void): () => void;
  on(event: "gap", fn: (gap: GapEvent) => void): () => void;
  on(event: "subscribed", fn: (ev: SubscribedEvent) => void): () => void;
  on(event: "error", fn: (error: TidingsError) => void): () => void;
  off(event: string, fn: (arg: any) => void): void;
  /** Stops listening; idempotent. */
  unsubscribe(): void;
}

export interface ConnectOptions {
  /**
   * Called before every connection attempt, reconnects included; the token it
   * returns is sent as `?token=` (one-time tokens, docs/identity.md).
   * Without it the browser's cookies identify the socket.
   */
  getToken?: () => Promise<string | null | undefined> | string | null | undefined;
  /** The query parameter carrying the token (gateway's `identity.token.query`). Default `token`. */
  tokenParam?: string;
  /** Backoff: the first retry waits up to this many ms (full jitter). Default 500. */
  minDelay?: number;
  /** Backoff cap in ms. Default 10000. */
  maxDelay?: number;
  /** A connection that lasted this long (ms) resets the backoff. Default 5000. */
  stableAfter?: number;
  /** An attempt without `welcome` within this many ms is abandoned. Default 10000. */
  connectTimeout?: number;
  /** Heartbeat: an application-level `ping` every this many ms. Default 20000. */
  pingInterval?: number;
  /** Heartbeat: the connection is dead without a `pong` within this many ms. Default 10000. */
  pongTimeout?: number;
  /** Default timeout of `publish()` and `ping()` in ms. Default 10000. */
  requestTimeout?: number;
  /** Default timeout of `rpc()` in ms. Default 15000. */
  rpcTimeout?: number;
  /** More close codes after which not to reconnect. */
  terminalCodes?: number[];
  /** The WebSocket class (for tests or non-browser runtimes). */
  WebSocket?: { new (url: string): WebSocket };
  /** The random source for jitter, returning [0, 1). */
  random?: () => number;
  /** Where `navigator.onLine`, `location` and the `online` event come from. Default `globalThis`. */
  globals?: any;
}

/** A connection to the gateway that reconnects until closed. */
export declare class Client {
  /** The WebSocket URL (without the token). */
  readonly url: string;
  readonly state: ClientState;
  /** The last `welcome` frame. */
  readonly welcome: Welcome | null;
  subscribe(channel: string): Subscription;
  /** `echo: false`: this client gets no copy of its own message. */
  publish(channel: string, data: Json, options?: { timeout?: number; echo?: boolean }): Promise<void>;
  rpc(path: string, body?: Json, options?: { method?: "GET" | "POST" | "PUT" | "PATCH" | "DELETE"; timeout?: number }): Promise<RpcResult>;
  ping(options?: { timeout?: number }): Promise<void>;
  /** The delay the next reconnect would wait, in ms. */
  nextDelay(): number;
  /** Closes for good; no more reconnects. */
  close(): void;
  on(event: "connecting", fn: (ev: ConnectingEvent) => void): () => void;
  on(event: "connected", fn: (ev: ConnectedEvent) => void): () => void;
  on(event: "disconnected", fn: (ev: DisconnectedEvent) => void): () => void;
  on(event: "message", fn: (message: Message) => void): () => void;
  on(event: "gap", fn: (frame: ServerFrame) => void): () => void;
  on(event: "frame", fn: (frame: ServerFrame) => void): () => void;
  on(event: "error", fn: (error: unknown) => void): () => void;
  off(event: string, fn: (arg: any) => void): void;
}

/** Opens a connection (default: `/ws` on the page's host) and keeps it open. */
export declare function connect(url?: string, options?: ConnectOptions): Client;
export declare function connect(options: ConnectOptions): Client;
