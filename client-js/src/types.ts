// Public types of the client: options, events, connection state, and the minimal
// WebSocket shape the client needs (satisfied by the browser's WebSocket and by the
// `ws` package in Node).

import type { BackoffOptions } from './backoff.js';
import type { Codec } from './codec.js';
import type { ServerError, TidingsError } from './errors.js';
import type { JsonValue, Limits, PresenceJoin, PresenceLeave, Since } from './frames.js';

// Method-style signature: parameters are checked bivariantly, so both the DOM's
// `(ev: MessageEvent) => any` and ws's `(event: WebSocket.MessageEvent) => void`
// handlers fit.
type Handler<E> = { bivarianceHack(ev: E): void }['bivarianceHack'];

/** The part of the WebSocket API the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onerror: Handler<unknown> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ClientOptions {
  /** `ws://host:port/ws` or `wss://...`; with several, each attempt uses the next. */
  url: string | string[];
  /** The JWT to connect with. Sent as the `tidings.token.<jwt>` subprotocol. */
  token?: string;
  /**
   * Returns a new token from your backend. Called before the first connect when no
   * `token` is given, before the token expires (see `autoRefresh`), after a `4001`
   * or `4004` close (or a 401 handshake, where it can be seen), before connecting
   * with a token that is about to expire, and once after the second consecutive
   * failure before `welcome` (a browser cannot tell a refused token from a network
   * error). If it fails after the server refused the token, or the server refuses the
   * token it just returned, the client stops instead of retrying in a loop.
   */
  getToken?: () => Promise<string>;
  /** The encoding: `jsonCodec` (default) or `msgpackCodec` from `tidings-client/msgpack`. */
  codec?: Codec;
  /** A WebSocket implementation; defaults to `globalThis.WebSocket` (in Node 20: pass `ws`). */
  WebSocket?: WebSocketConstructor;
  /** How long a request may wait for its reply once sent (default 10000 ms). */
  requestTimeoutMs?: number;
  /** How long the upgrade and the `welcome` may take (default 10000 ms). */
  connectTimeoutMs?: number;
  /** Backoff caps: 1 s doubling up to 30 s, reset after 10 s up (the defaults). */
  backoff?: BackoffOptions;
  /** Largest random delay before reconnecting after `1001` going away (default 1000 ms). */
  goingAwayDelayMs?: number;
  /** Capacity of the outgoing queue of publishes and acks (default 1024). */
  queueCapacity?: number;
  /** Refresh the token on the open connection before it expires (default true, needs `getToken`). */
  autoRefresh?: boolean;
  /** Positions stored by the application (e.g. in localStorage) to resume from. */
  resume?: {
    /** The personal channel's position, used at the first connect (`?since=&epoch=`). */
    personal?: Since;
    /** Public channels: used when they are subscribed. */
    channels?: Record<string, Since>;
  };
  /** Random source in [0, 1) for the jitter (tests). */
  random?: () => number;
}

/** A notification. Duplicates (by offset) have already been dropped. */
export interface Message {
  channel: string;
  event: string;
  payload: JsonValue;
  /** Position in the channel's history, when the channel keeps history. */
  offset?: number;
  /** The history epoch of `offset`, when the server says (live and replayed messages). */
  epoch?: string;
  /** The publisher's message id, if it set one. */
  msgId?: string;
  /** Publish time, milliseconds since the Unix epoch (publisher's clock). */
  ts: number;
}

/** The answer to a subscription. */
export interface SubscribeResult {
  channel: string;
  /** The channel's history epoch, when it keeps history. */
  epoch?: string;
  /** The channel's latest offset at the time of the subscription. */
  offset?: number;
  /** Present when the subscription resumed from a position. */
  recovered?: boolean;
}

/**
 * A subscribe the server refused for now (`unavailable`: the Redis instance or cluster
 * partition holding the channel is down while the rest of the node works): the
 * subscription is kept and the subscribe is sent again after `delayMs` while connected
 * (at once after a reconnect).
 */
export interface SubscribeRetry {
  /** The refusal (`code` is `unavailable`). */
  error: ServerError;
  delayMs: number;
  /** Wall-clock time (ms) of the next subscribe. */
  retryAt: number;
  /** Consecutive refusals so far (1 for the first). */
  attempt: number;
}

/** A successful publish. */
export interface Receipt {
  /** Gateway nodes that had subscribers for the channel. */
  nodes?: number;
  /** Connections reached (single-node gateways only). */
  sessions?: number;
  /** A conditional publish (`expect`): the publication's offset in the channel's history. */
  offset?: number;
  /** A conditional publish: the epoch of that offset. */
  epoch?: string;
  /** The reply's whole `result`, for fields added later. */
  raw: JsonValue;
}

/** Options of `client.publish()`. */
export interface PublishOptions {
  /**
   * A conditional publish, on a channel with history: accepted only if the channel's
   * latest offset and epoch are these (`{offset: 0, epoch: ''}`, or any epoch with
   * offset 0, on a channel with no history yet); otherwise it rejects with a
   * ConflictError carrying where the channel is. The receipt then has the
   * publication's `offset` and `epoch`. Two publishes expecting the same position
   * never both go through, so retrying one whose reply was lost is safe.
   */
  expect?: Since;
}

/**
 * The answer to `client.history()`: the channel's position (its `epoch` and latest
 * `offset`; `""` and 0 before its first message) and entries of its history, oldest
 * first (each with its `offset`).
 */
export interface HistoryResult {
  channel: string;
  epoch: string;
  offset: number;
  publications: Message[];
}

/** One member of a channel's presence: a connection of a user. */
export interface PresenceMember {
  user: string;
  /** The connection's presence id (`<node>/<session>`), unique across nodes. */
  client: string;
  /** The token's public `info` claim (e.g. `{ name: 'Alice' }`); absent when it has none. */
  info?: JsonValue;
}

/** One page of a channel's presence (`client.presence()`). */
export interface PresenceResult {
  channel: string;
  /** Connections present. */
  clients: number;
  /** Distinct users among them. */
  users: number;
  /** This page's members, ordered by client id. */
  members: PresenceMember[];
  /** Pass it back to get the next page; absent on the last page. */
  cursor?: string;
}

/** A channel's presence counts (`client.presenceStats()`). */
export interface PresenceStats {
  channel: string;
  clients: number;
  users: number;
}

/**
 * Users who joined or left a channel (`presence_diff`, only on channels whose presence
 * rule has `events`). Per user: a user joins when their first connection subscribes and
 * leaves when their last one has been gone for the server's grace period. A join of a
 * user already present is possible (e.g. re-announced after a Redis restart): treat
 * joins as idempotent.
 */
export interface PresenceDiff {
  channel: string;
  joins: PresenceJoin[];
  leaves: PresenceLeave[];
}

/** A user present on a channel, with their connections grouped (PresenceTracker, usePresence). */
export interface PresenceUser {
  user: string;
  /** The `info` of the user's token (the latest seen). */
  info?: JsonValue;
  /**
   * The user's connections on the channel as of the last snapshot (at least 1). Join
   * and leave events are per user, so connections opened or closed since by a user
   * who stays present are counted at the next snapshot.
   */
  clients: number;
}

export interface ConnectedEvent {
  node: string;
  session: string;
  user: string;
  /** The personal channel `$user:<id>`, always subscribed. */
  channel: string;
  url: string;
  heartbeatMs: number;
  /** Token expiry, Unix seconds. */
  expiresAt: number;
  limits?: Limits;
}

export interface DisconnectedEvent {
  /** The close code, when the server sent one (browsers report 1006 for a lost connection). */
  code?: number;
  reason: string;
  /** Whether the client will try again by itself. */
  willReconnect: boolean;
  /** The delay before the next attempt, when there is one. */
  retryInMs?: number;
}

export interface ReconnectingEvent {
  delayMs: number;
  /** Wall-clock time (ms) of the next attempt. */
  retryAt: number;
  /** Consecutive failed attempts so far (the backoff counter). */
  attempt: number;
}

/**
 * The result of resuming a channel (a resubscription with `since`, or the personal
 * channel at connect). `true`: every missed message follows. `false`: some could not
 * be replayed; refetch the channel's state from your backend.
 */
export interface RecoveredEvent {
  channel: string;
  recovered: boolean;
}

export type ConnectionState =
  | { status: 'connecting'; attempt: number }
  | { status: 'connected'; node: string; session: string; user: string; since: number }
  | { status: 'reconnecting'; delayMs: number; retryAt: number; attempt: number }
  | { status: 'stopped'; error?: TidingsError };

export interface ClientEvents {
  message: Message;
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  reconnecting: ReconnectingEvent;
  recovered: RecoveredEvent;
  /** Users joined or left a channel the client holds (channels with presence events). */
  presence: PresenceDiff;
  /** Problems that are not the answer to a request; a terminal one comes last. */
  error: TidingsError;
  /** Every change of `client.state`. */
  state: ConnectionState;
}
