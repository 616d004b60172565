// The client: keeps one WebSocket to a gateway alive (reconnect with backoff, close-code
// policy, token refresh, heartbeat watchdog), restores and resumes subscriptions,
// de-duplicates by offset, queues publishes and acks while offline, and matches
// replies to requests. Behaves like the Rust client in client/src (driver.rs).

import { Backoff, type BackoffOptions } from './backoff.js';
import { Bucket } from './bucket.js';
import { jsonCodec, type Codec, type WireData } from './codec.js';
import { deferred, type Conn, type Deferred, type Outgoing, type Pending, type Timer } from './conn.js';
import { closed, handshakeStatus, lost, refused, type Ended } from './ended.js';
import { Emitter } from './emitter.js';
import {
  CancelledError,
  ClosedError,
  ConflictError,
  ConfigError,
  DisconnectedError,
  ProtocolError,
  QueueFullError,
  ServerError,
  SubscriptionLostError,
  TimeoutError,
  TokenRefreshError,
  UnauthorizedError,
  type TidingsError,
} from './errors.js';
import {
  parseServerFrame,
  type ClientFrame,
  type JsonValue,
  type MessageFrame,
  type PresenceDiffFrame,
  type ReplyFrame,
  type Since,
  type WelcomeFrame,
} from './frames.js';
import { parseHistoryResult } from './history.js';
import { Positions, type Position } from './positions.js';
import {
  MAX_PRESENCE_PAGE,
  parsePresenceResult,
  parsePresenceStats,
  PresenceTracker,
  type PresenceHost,
  type PresenceTrackerOptions,
} from './presence.js';
import { OfflineQueue } from './queue.js';
import { Subscription, type SubscriptionHost } from './subscription.js';
import { jwtExpiry, refreshDelayMs } from './token.js';
import type {
  ClientEvents,
  ClientOptions,
  ConnectionState,
  DisconnectedEvent,
  HistoryResult,
  Message,
  PresenceDiff,
  PresenceResult,
  PresenceStats,
  PublishOptions,
  Receipt,
  SubscribeResult,
  WebSocketConstructor,
  WebSocketLike,
} from './types.js';

const OPEN = 1;
/** setTimeout's largest delay; longer waits are re-armed. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Fetch a new token before connecting when the current one expires this soon. */
const EXPIRY_MARGIN_MS = 15_000;
/**
 * Whether a refused subscribe is tried again instead of dropping the channel
 * (docs/protocol.md section 7): only `unavailable`, which says the connection is fine
 * and the Redis instance or partition that holds the channel will be back. Not
 * `rate_limited`: every refused frame is a strike, and a client that kept retrying
 * into an empty history-read bucket would be closed with `1008`, which stops it.
 * Same rule as the Rust client (client/src/driver/subscriptions.rs).
 */
function retried(code: string): boolean {
  return code === 'unavailable';
}

function connectUrl(url: string, since: Since | undefined): string {
  if (!since) return url;
  const sep = url.includes('?') ? '&' : '?';
  return `${url}${sep}since=${since.offset}&epoch=${encodeURIComponent(since.epoch)}`;
}

function obj(v: JsonValue | undefined): Record<string, JsonValue> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? v : {};
}

function numField(v: JsonValue | undefined): number | undefined {
  return typeof v === 'number' ? v : undefined;
}

/** The error of a refused reply: a ConflictError for `conflict` with a position. */
function replyError(r: ReplyFrame): ServerError {
  const e = r.error;
  if (e?.code === 'conflict' && e.offset !== undefined) return new ConflictError(e.offset, e.epoch ?? '', e.message);
  return new ServerError(e?.code ?? 'internal', e?.message ?? 'reply without ok or error');
}

function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export class TidingsClient extends Emitter<ClientEvents> implements SubscriptionHost, PresenceHost {
  private readonly urls: string[];
  private readonly codec: Codec;
  private readonly WS: WebSocketConstructor;
  private readonly getToken: (() => Promise<string>) | undefined;
  private readonly requestTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly goingAwayDelayMs: number;
  private readonly autoRefresh: boolean;
  private readonly random: () => number;
  private readonly backoff: Backoff;
  private readonly queue: OfflineQueue<Outgoing>;
  private readonly positionsMap = new Positions();
  private readonly subs = new Map<string, Subscription>();
  /** Refused subscribes waiting to be sent again on the open connection. */
  private readonly retries = new Map<Subscription, { backoff: Backoff; timer: Timer | undefined }>();
  /** The caps of those retries: the reconnect backoff's. */
  private readonly retryBackoff: BackoffOptions;

  private token: string | undefined;
  /** The token came from getToken and no server accepted it yet: if refused, stop. */
  private tokenUnproven = false;
  private personalSince: Since | undefined;
  private personal: string | undefined;
  private conn: Conn | undefined;
  private nextTarget = 0;
  private nextId = 0;
  private promptStreak = 0;
  /** Consecutive attempts that failed before `welcome` without a definite cause. */
  private ambiguousFailures = 0;
  private refreshBeforeConnect = false;
  private snapshot: ConnectionState = { status: 'connecting', attempt: 0 };
  private terminal: TidingsError | undefined;
  private closing = false;
  /** Resolves when close() is called, to abandon a pending getToken(). */
  private closeSignal: Promise<void>;
  private signalClose: () => void = () => undefined;
  /** Cancels whatever the run loop waits for (a sleep or a connection attempt). */
  private interrupt: (() => void) | undefined;
  private readonly stopped: Promise<void>;

  constructor(opts: ClientOptions) {
    super();
    this.urls = typeof opts.url === 'string' ? [opts.url] : [...opts.url];
    this.codec = opts.codec ?? jsonCodec;
    const WS = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.getToken = opts.getToken;
    this.token = opts.token;
    this.requestTimeoutMs = opts.requestTimeoutMs ?? 10_000;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
    this.goingAwayDelayMs = opts.goingAwayDelayMs ?? 1000;
    this.autoRefresh = opts.autoRefresh ?? true;
    this.random = opts.random ?? Math.random;
    this.backoff = new Backoff(opts.backoff, this.random);
    this.retryBackoff = { initialMs: this.backoff.initialMs, maxMs: this.backoff.maxMs };
    this.queue = new OfflineQueue(opts.queueCapacity ?? 1024);
    this.personalSince = opts.resume?.personal;
    for (const [ch, s] of Object.entries(opts.resume?.channels ?? {})) this.positionsMap.set(ch, s);

    if (this.urls.length === 0) throw new ConfigError('no URL');
    if (!WS) throw new ConfigError('no WebSocket implementation: pass the `WebSocket` option (e.g. the `ws` package in Node 20)');
    if (this.token === undefined && !this.getToken) throw new ConfigError('a token or getToken is needed');
    this.WS = WS;
    this.closeSignal = new Promise((r) => (this.signalClose = r));
    // Start after the caller had a chance to add listeners.
    this.stopped = Promise.resolve().then(() => this.run());
  }

  // ---- public API ------------------------------------------------------------

  /** The connection state (a new object on every change, for UI stores). */
  get state(): ConnectionState {
    return this.snapshot;
  }

  /** The personal channel (`$user:<id>`), once a connection was established. */
  get personalChannel(): string | undefined {
    return this.personal;
  }

  /** How many messages were dropped as duplicates (offset not above the last seen). */
  get duplicatesDropped(): number {
    return this.positionsMap.duplicates;
  }

  /** The channels held (restored after every reconnect). */
  get subscriptions(): Subscription[] {
    return [...this.subs.values()];
  }

  /** The last position the client knows for a channel: what it resumes from. */
  position(channel: string): Position | undefined {
    return this.positionsMap.get(channel);
  }

  /** The positions of every channel, the personal one included (to persist them). */
  positions(): Record<string, Position> {
    return this.positionsMap.all();
  }

  /**
   * Subscribes to a public channel and returns its Subscription at once; the channel
   * is subscribed again (resuming from its last position) after every reconnect until
   * `unsubscribe`. Subscribing to a channel already held returns the same object.
   * `since` resumes from a stored position.
   */
  subscribe(channel: string, opts: { since?: Since } = {}): Subscription {
    const existing = this.subs.get(channel);
    if (existing) {
      if (opts.since) this.positionsMap.set(channel, opts.since);
      return existing;
    }
    const sub = new Subscription(channel, this);
    if (this.terminal) {
      sub._end(this.terminal, false);
      return sub;
    }
    if (opts.since) this.positionsMap.set(channel, opts.since);
    this.subs.set(channel, sub);
    if (this.conn) this.sendSubscribe(this.conn, sub, opts.since);
    return sub;
  }

  /** Unsubscribes and forgets the channel's position. */
  unsubscribe(channel: string): Promise<void> {
    this.forget(channel, new CancelledError(), false);
    const conn = this.conn;
    if (!conn) return Promise.resolve();
    const { promise, d } = deferred<void>();
    conn.bucket.force();
    const id = this.id();
    this.request(conn, { type: 'unsubscribe', id, channel }, id, { kind: 'unsubscribe', d });
    return promise;
  }

  /**
   * Publishes `payload` as `event` on a public channel. While disconnected it waits
   * in the outgoing queue (rejects at once with QueueFullError when full) and is sent
   * after the reconnect, in order. With `expect` it is a conditional publish (see
   * PublishOptions): it rejects with a ConflictError (code `conflict`, with the
   * channel's `offset` and `epoch`) unless the channel's history is at that position.
   */
  publish(channel: string, event: string, payload: JsonValue = null, opts: PublishOptions = {}): Promise<Receipt> {
    const { promise, d } = deferred<Receipt>();
    const item: Extract<Outgoing, { kind: 'publish' }> = { kind: 'publish', channel, event, payload, d };
    if (opts.expect) item.expect = { offset: opts.expect.offset, epoch: opts.expect.epoch };
    this.enqueue(item);
    return promise;
  }

  /**
   * Entries of a channel's history without subscribing: the last `limit` (1 to 100,
   * default 100), or with `since` the first `limit` after that position (to page
   * forward: pass the last entry's offset and the result's epoch). A `since` of
   * another epoch returns no entries, only where the channel is. Allowed on channels
   * the token may subscribe to that keep history (else a ServerError `forbidden` or
   * `bad_request`); counts against the same budget as resuming a subscription.
   * Queued like a publish while disconnected.
   */
  history(channel: string, opts: { limit?: number; since?: Since } = {}): Promise<HistoryResult> {
    const { promise, d } = deferred<HistoryResult>();
    const item: Extract<Outgoing, { kind: 'history' }> = { kind: 'history', channel, d };
    if (opts.limit !== undefined) item.limit = opts.limit;
    if (opts.since !== undefined) item.since = { offset: opts.since.offset, epoch: opts.since.epoch };
    this.enqueue(item);
    return promise;
  }

  /**
   * Acknowledges the personal channel up to `offset` (the user's read position, shared
   * by all their devices). Queued like a publish. Resolves with the stored position.
   */
  ack(offset: number): Promise<number> {
    const { promise, d } = deferred<number>();
    this.enqueue({ kind: 'ack', offset, d });
    return promise;
  }

  /**
   * One page of a channel's presence: its counts (`clients` connections of `users`
   * distinct users) and at most `limit` members (server default 100, at most 1000)
   * ordered by client id, after `cursor` (the previous page's `cursor`; absent on the
   * last page). Allowed on channels the token may subscribe to or names in its
   * `presence` claim, whose presence the gateway tracks (`--presence`); otherwise a
   * ServerError with `forbidden` or `bad_request`. Queued like a publish while
   * disconnected.
   */
  presence(channel: string, opts: { limit?: number; cursor?: string } = {}): Promise<PresenceResult> {
    const { promise, d } = deferred<PresenceResult>();
    const item: Extract<Outgoing, { kind: 'presence' }> = { kind: 'presence', channel, d };
    if (opts.limit !== undefined) item.limit = opts.limit;
    if (opts.cursor !== undefined) item.cursor = opts.cursor;
    this.enqueue(item);
    return promise;
  }

  /**
   * Every member of a channel's presence: `presence()` page after page (1000 at a
   * time) until the last. The counts are the last page's; pages are separate requests,
   * so members that joined or left meanwhile may be missing or listed.
   */
  async presenceAll(channel: string): Promise<PresenceResult> {
    const members: PresenceResult['members'] = [];
    let cursor: string | undefined;
    for (;;) {
      const page = await this.presence(channel, cursor === undefined ? { limit: MAX_PRESENCE_PAGE } : { limit: MAX_PRESENCE_PAGE, cursor });
      members.push(...page.members);
      if (page.cursor === undefined) return { channel: page.channel, clients: page.clients, users: page.users, members };
      // A cursor that does not move on would page forever.
      if (page.cursor === cursor) throw new ProtocolError(`presence of ${channel}: the server returned the same cursor twice`);
      cursor = page.cursor;
    }
  }

  /** A channel's presence counts without the members. Allowed and queued like `presence()`. */
  presenceStats(channel: string): Promise<PresenceStats> {
    const { promise, d } = deferred<PresenceStats>();
    this.enqueue({ kind: 'presence_stats', channel, d });
    return promise;
  }

  /**
   * Subscribes to `channel` (or takes the Subscription already held) and keeps a live
   * list of the users present on it: a snapshot after every confirmation of the
   * subscription, then the channel's join and leave events (see PresenceTracker).
   * `stop()` the tracker when done; it leaves the channel subscribed.
   *
   *   const room = client.trackPresence('room:1');
   *   room.on('change', ({ members, count }) => render(members, count));
   */
  trackPresence(channel: string, opts: PresenceTrackerOptions = {}): PresenceTracker {
    return new PresenceTracker(this, this.subscribe(channel), { random: this.random, ...opts });
  }

  /**
   * Replaces the token: on the open connection with a `refresh` request (resolving
   * with the new expiry, Unix seconds), and for later connections. While disconnected
   * it only stores the token (resolving with undefined).
   */
  refreshToken(token: string): Promise<number | undefined> {
    if (this.terminal) return Promise.reject(this.terminal);
    const conn = this.conn;
    if (!conn) {
      this.token = token;
      this.tokenUnproven = false;
      return Promise.resolve(undefined);
    }
    const { promise, d } = deferred<number | undefined>();
    this.sendRefresh(conn, token, d);
    return promise;
  }

  /** Closes the connection (code 1000) and stops; queued requests reject with ClosedError. */
  close(): Promise<void> {
    if (!this.terminal && !this.closing) {
      this.closing = true;
      this.signalClose();
      const conn = this.conn;
      if (conn) {
        try {
          conn.ws.close(1000, 'client closed');
        } catch {
          // already closing
        }
        // Wait for the server's echo, but not forever.
        const t = setTimeout(() => conn.end({ code: 1000, reason: 'closed by the client', action: 'stop' }), 1000);
        void this.stopped.then(() => clearTimeout(t));
      } else {
        this.interrupt?.();
      }
    }
    return this.stopped;
  }

  // ---- the run loop ----------------------------------------------------------

  private async run(): Promise<void> {
    let delay: number | undefined;
    let terminal: TidingsError | undefined;
    while (!terminal) {
      if (delay !== undefined) {
        const retryAt = Date.now() + delay;
        const attempt = this.backoff.attempt;
        this.setState({ status: 'reconnecting', delayMs: delay, retryAt, attempt });
        this.emit('reconnecting', { delayMs: delay, retryAt, attempt });
        await this.sleep(delay);
      }
      if (this.closing) break;
      const ready = await this.untilClosed(this.prepareToken());
      if (this.closing || ready === undefined) break;
      if (ready instanceof Error) {
        terminal = ready;
        break;
      }
      if (!ready) {
        // The token is known to be expired and no new one could be had: a failure.
        delay = this.backoff.nextDelay();
        continue;
      }
      const url = this.urls[this.nextTarget] ?? '';
      const since = this.personal ? this.positionsMap.since(this.personal) : this.personalSince;
      this.setState({ status: 'connecting', attempt: this.backoff.attempt });
      const ended = await this.attempt(url, since);
      if (this.closing) break;
      this.nextTarget = (this.nextTarget + 1) % this.urls.length;
      if (ended.ambiguous) {
        this.ambiguousFailures += 1;
        // A browser cannot see a 401: after the second failure in a row before the
        // welcome, maybe the token is bad, so get a fresh one (and keep backing off).
        if (this.ambiguousFailures === 2) this.refreshBeforeConnect = true;
      }
      let next: number | TidingsError;
      switch (ended.action) {
        case 'promptly':
          this.promptStreak += 1;
          next =
            this.promptStreak > this.urls.length
              ? this.backoff.nextDelay()
              : Math.floor(this.random() * this.goingAwayDelayMs);
          break;
        case 'backoff':
          next = this.backoff.nextDelay();
          break;
        case 'new_token':
          next = (await this.untilClosed(this.fetchToken(ended.reason))) ?? 0;
          break;
        case 'stop':
          next = ended.terminal ?? new ClosedError();
          break;
      }
      if (this.closing) break;
      const ev: DisconnectedEvent = { reason: ended.reason, willReconnect: typeof next === 'number' };
      if (ended.code !== undefined) ev.code = ended.code;
      if (typeof next === 'number') ev.retryInMs = next;
      this.emit('disconnected', ev);
      if (typeof next === 'number') delay = next;
      else terminal = next;
    }
    this.stop(terminal ?? new ClosedError());
  }

  /** `p`'s value, or undefined as soon as close() is called. */
  private untilClosed<T>(p: Promise<T>): Promise<T | undefined> {
    return Promise.race([p, this.closeSignal.then(() => undefined)]);
  }

  /** Sleeps, unless close() interrupts. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done(): void {
        clearTimeout(t);
        resolve();
      }
      this.interrupt = done;
    });
  }

  /**
   * Makes sure there is a token worth connecting with. Returns true to go on, false
   * when this attempt counts as a failure, or an error that stops the client.
   */
  private async prepareToken(): Promise<boolean | TidingsError> {
    if (this.token === undefined) return (await this.fetchToken('no token yet')) ?? true;
    if (!this.getToken) return true;
    const exp = jwtExpiry(this.token);
    const expiring = exp !== undefined && exp * 1000 - Date.now() < EXPIRY_MARGIN_MS;
    if (!expiring && !this.refreshBeforeConnect) return true;
    this.refreshBeforeConnect = false;
    try {
      const t = await this.getToken();
      if (t !== this.token) {
        this.token = t;
        this.tokenUnproven = false;
      }
      return true;
    } catch (e) {
      this.emit('error', new TokenRefreshError(`getToken failed: ${describe(e)}`));
      // Only an expired token makes connecting pointless; otherwise try with it.
      return !(exp !== undefined && exp * 1000 <= Date.now());
    }
  }

  /** After the server refused the token: a new one, or the error that stops the client. */
  private async fetchToken(reason: string): Promise<TidingsError | undefined> {
    if (this.tokenUnproven) return new UnauthorizedError(`${reason} (with a token getToken had just returned)`);
    if (!this.getToken) return new UnauthorizedError(`${reason}; no getToken is configured`);
    let t: string;
    try {
      t = await this.getToken();
    } catch (e) {
      return new UnauthorizedError(`${reason}; getToken failed: ${describe(e)}`);
    }
    if (t === this.token) return new UnauthorizedError(`${reason}; getToken returned the same token`);
    this.token = t;
    this.tokenUnproven = true;
    return undefined;
  }

  /** One connection attempt; resolves when the attempt fails or the connection ends. */
  private attempt(url: string, since: Since | undefined): Promise<Ended> {
    return new Promise<Ended>((resolve) => {
      let ws: WebSocketLike;
      try {
        ws = new this.WS(connectUrl(url, since), [this.codec.subprotocol, `tidings.token.${this.token ?? ''}`]);
        ws.binaryType = 'arraybuffer';
      } catch (e) {
        resolve(lost(`cannot open ${url}: ${describe(e)}`));
        return;
      }
      let conn: Conn | undefined;
      let status: number | undefined;
      let done = false;
      const connectTimer = setTimeout(
        () => finish(lost(`no welcome from ${url} within ${this.connectTimeoutMs} ms`, true)),
        this.connectTimeoutMs,
      );
      const finish = (ended: Ended): void => {
        if (done) return;
        done = true;
        clearTimeout(connectTimer);
        // No-ops rather than null: Node's ws throws on an 'error' without a listener
        // (e.g. closing a socket that is still connecting).
        ws.onopen = ws.onmessage = ws.onerror = ws.onclose = () => undefined;
        if (ws.readyState <= OPEN) {
          try {
            ws.close(1000, ended.reason.slice(0, 100));
          } catch {
            // already closed
          }
        }
        if (conn) this.connectionLost(conn);
        this.interrupt = undefined;
        resolve(ended);
      };
      this.interrupt = () => finish({ code: 1000, reason: 'closed by the client', action: 'stop' });
      ws.onerror = (ev) => {
        status ??= handshakeStatus(ev);
      };
      ws.onclose = (ev) => {
        if (this.closing) return finish({ code: 1000, reason: 'closed by the client', action: 'stop' });
        if (!conn && status !== undefined) return finish(refused(status));
        // 1005/1006: no close frame (network, refused handshake in a browser).
        if (ev.code === 1005 || ev.code === 1006) {
          return finish(lost(conn ? 'connection lost' : `could not connect to ${url}`, !conn));
        }
        finish(closed(ev.code, ev.reason));
      };
      ws.onmessage = (ev) => {
        const data = ev.data as WireData;
        if (conn) return this.onData(conn, data);
        let w;
        try {
          w = parseServerFrame(this.codec.decode(data));
        } catch (e) {
          return finish(lost(`undecodable welcome: ${describe(e)}`));
        }
        if (w.type !== 'welcome') return finish(lost(`expected welcome, got ${w.type}`));
        clearTimeout(connectTimer);
        conn = this.onWelcome(ws, w, since, url, finish);
      };
    });
  }

  // ---- an open connection ----------------------------------------------------

  private onWelcome(
    ws: WebSocketLike,
    w: WelcomeFrame,
    since: Since | undefined,
    url: string,
    end: (e: Ended) => void,
  ): Conn {
    this.backoff.onConnected();
    this.promptStreak = 0;
    this.ambiguousFailures = 0;
    this.tokenUnproven = false;
    this.personal = w.channel;
    if (this.personalSince && !this.positionsMap.get(w.channel)) this.positionsMap.set(w.channel, this.personalSince);
    this.personalSince = undefined;
    // `recovered` is present whenever the server resumed the personal channel: from
    // our `since`, or by itself from the user's acknowledged position.
    if (since || w.recovered !== undefined) this.positionsMap.resumed(w.channel, w.epoch, w.offset);
    else this.positionsMap.fresh(w.channel, w.epoch, w.offset);

    const conn: Conn = {
      ws,
      url,
      personal: w.channel,
      heartbeatMs: Math.max(1, w.heartbeat_ms),
      lastRx: Date.now(),
      inflight: new Map(),
      bucket: new Bucket(w.limits),
      end: (e) => end(e),
      ended: false,
    };
    this.conn = conn;
    this.watchHeartbeat(conn);
    this.scheduleRefresh(conn, w.expires_at);
    this.setState({ status: 'connected', node: w.node, session: w.session, user: w.user, since: Date.now() });
    this.emit('connected', {
      node: w.node,
      session: w.session,
      user: w.user,
      channel: w.channel,
      url,
      heartbeatMs: w.heartbeat_ms,
      expiresAt: w.expires_at,
      ...(w.limits ? { limits: w.limits } : {}),
    });
    if (w.recovered !== undefined) this.emit('recovered', { channel: w.channel, recovered: w.recovered });
    // Restore the subscriptions, then send what waited in the queue.
    for (const sub of this.subs.values()) {
      if (conn.ended) break;
      this.sendSubscribe(conn, sub, undefined);
    }
    this.pump(conn);
    return conn;
  }

  /** Two heartbeat intervals without any frame: the connection is dead. */
  private watchHeartbeat(conn: Conn): void {
    const check = (): void => {
      const idle = Date.now() - conn.lastRx;
      const limit = conn.heartbeatMs * 2;
      if (idle >= limit) {
        conn.end(lost(`no frame from the server for ${limit} ms (2 heartbeat intervals)`));
      } else {
        conn.hbTimer = setTimeout(check, limit - idle);
      }
    };
    conn.hbTimer = setTimeout(check, conn.heartbeatMs * 2);
  }

  private scheduleRefresh(conn: Conn, expiresAt: number): void {
    clearTimeout(conn.refreshTimer);
    conn.refreshTimer = undefined;
    const getToken = this.getToken;
    if (!this.autoRefresh || !getToken) return;
    const delay = refreshDelayMs(expiresAt, Date.now());
    if (delay === undefined) return;
    conn.refreshTimer = setTimeout(
      () => {
        if (delay > MAX_TIMER_MS) return this.scheduleRefresh(conn, expiresAt);
        getToken().then(
          (token) => {
            if (!conn.ended) this.sendRefresh(conn, token, undefined);
          },
          (e: unknown) => this.emit('error', new TokenRefreshError(`getToken failed: ${describe(e)}`)),
        );
      },
      Math.min(delay, MAX_TIMER_MS),
    );
  }

  private id(): number {
    this.nextId += 1;
    return this.nextId;
  }

  private send(conn: Conn, frame: ClientFrame): void {
    if (conn.ended) return;
    try {
      conn.ws.send(this.codec.encode(frame));
    } catch (e) {
      conn.end(lost(`write failed: ${describe(e)}`));
    }
  }

  private request(conn: Conn, frame: ClientFrame, id: number, p: Pending): void {
    const timer = setTimeout(() => this.expire(conn, id), this.requestTimeoutMs);
    conn.inflight.set(id, { p, timer });
    this.send(conn, frame);
  }

  /** `paced`: the caller took a token of the rate budget already. */
  private sendSubscribe(conn: Conn, sub: Subscription, since: Since | undefined, paced = false): void {
    const s = since ?? this.positionsMap.since(sub.channel);
    const id = this.id();
    if (!paced) conn.bucket.force();
    const frame: ClientFrame = s
      ? { type: 'subscribe', id, channel: sub.channel, since: { offset: s.offset, epoch: s.epoch } }
      : { type: 'subscribe', id, channel: sub.channel };
    this.request(conn, frame, id, { kind: 'subscribe', channel: sub.channel, resumed: s !== undefined, sub });
  }

  private sendRefresh(conn: Conn, token: string, d: Deferred<number | undefined> | undefined): void {
    const id = this.id();
    conn.bucket.force();
    this.request(conn, { type: 'refresh', id, token }, id, d ? { kind: 'refresh', token, d } : { kind: 'refresh', token });
  }

  private enqueue(item: Outgoing): void {
    if (this.terminal) return item.d.reject(this.terminal);
    if (!this.queue.push(item)) return item.d.reject(new QueueFullError(this.queue.capacity));
    if (this.conn) this.pump(this.conn);
  }

  /** Sends queued publishes, acks and presence queries while the rate budget allows. */
  private pump(conn: Conn): void {
    while (this.queue.length > 0 && !conn.ended && conn.bucket.tryTake()) {
      const item = this.queue.shift();
      if (!item) break;
      const id = this.id();
      switch (item.kind) {
        case 'publish': {
          const frame: Extract<ClientFrame, { type: 'publish' }> = { type: 'publish', id, channel: item.channel, event: item.event, payload: item.payload };
          if (item.expect) frame.expect = item.expect;
          this.request(conn, frame, id, { kind: 'publish', d: item.d });
          break;
        }
        case 'ack':
          this.request(conn, { type: 'ack', id, offset: item.offset }, id, { kind: 'ack', offset: item.offset, d: item.d });
          break;
        case 'presence': {
          const frame: Extract<ClientFrame, { type: 'presence' }> = { type: 'presence', id, channel: item.channel };
          if (item.limit !== undefined) frame.limit = item.limit;
          if (item.cursor !== undefined) frame.cursor = item.cursor;
          this.request(conn, frame, id, { kind: 'presence', d: item.d });
          break;
        }
        case 'presence_stats':
          this.request(conn, { type: 'presence_stats', id, channel: item.channel }, id, { kind: 'presence_stats', d: item.d });
          break;
        case 'history': {
          const frame: Extract<ClientFrame, { type: 'history' }> = { type: 'history', id, channel: item.channel };
          if (item.limit !== undefined) frame.limit = item.limit;
          if (item.since !== undefined) frame.since = item.since;
          this.request(conn, frame, id, { kind: 'history', d: item.d });
          break;
        }
      }
    }
    if (this.queue.length > 0 && !conn.ended && conn.paceTimer === undefined) {
      conn.paceTimer = setTimeout(() => {
        conn.paceTimer = undefined;
        this.pump(conn);
      }, conn.bucket.waitMs());
    }
  }

  private expire(conn: Conn, id: number): void {
    const entry = conn.inflight.get(id);
    if (!entry) return;
    conn.inflight.delete(id);
    const e = new TimeoutError(this.requestTimeoutMs);
    const p = entry.p;
    switch (p.kind) {
      case 'subscribe':
        // The channel stays held: it is subscribed again after the next reconnect,
        // or, when it was being retried, after its next delay.
        if (p.sub._pending) p.sub._reject(e);
        else this.emit('error', e);
        if (this.retries.has(p.sub) && this.subs.get(p.channel) === p.sub && !conn.ended) this.armRetry(conn, p.sub);
        break;
      case 'refresh':
        if (p.d) p.d.reject(e);
        else this.emit('error', new TokenRefreshError('no reply to the refresh request'));
        break;
      default:
        p.d.reject(e);
    }
  }

  private onData(conn: Conn, data: WireData): void {
    conn.lastRx = Date.now();
    let frame;
    try {
      frame = parseServerFrame(this.codec.decode(data));
    } catch (e) {
      this.emit('error', e instanceof ProtocolError ? e : new ProtocolError(describe(e)));
      return;
    }
    switch (frame.type) {
      case 'ping':
        conn.bucket.force();
        this.send(conn, { type: 'pong' });
        break;
      case 'message':
        this.onMessage(frame);
        break;
      case 'reply':
        this.onReply(conn, frame);
        break;
      case 'presence_diff':
        this.onPresenceDiff(frame);
        break;
      default: // a second welcome, or a frame type from a newer server: ignored
        break;
    }
  }

  private onMessage(m: MessageFrame): void {
    const sub = this.subs.get(m.channel);
    // Messages of a channel we left may still arrive after the unsubscribe reply.
    if (!sub && !m.channel.startsWith('$')) return;
    if (!this.positionsMap.accept(m.channel, m.offset, m.epoch)) return;
    const msg: Message = { channel: m.channel, event: m.event, payload: m.payload, ts: m.ts };
    if (m.offset !== undefined) msg.offset = m.offset;
    if (m.epoch !== undefined) msg.epoch = m.epoch;
    if (m.msg_id !== undefined) msg.msgId = m.msg_id;
    this.emit('message', msg);
    sub?._message(msg);
  }

  private onPresenceDiff(f: PresenceDiffFrame): void {
    const sub = this.subs.get(f.channel);
    // Diffs of a channel we left may still arrive after the unsubscribe reply.
    if (!sub) return;
    const diff: PresenceDiff = { channel: f.channel, joins: f.joins, leaves: f.leaves };
    this.emit('presence', diff);
    sub._presence(diff);
  }

  private onReply(conn: Conn, r: ReplyFrame): void {
    if (r.id === undefined) {
      // Answers a frame whose id could not be read: a client bug worth reporting.
      if (!r.ok) this.emit('error', new ServerError(r.error?.code ?? 'internal', r.error?.message ?? ''));
      return;
    }
    const entry = conn.inflight.get(r.id);
    if (!entry) return; // timed out already
    conn.inflight.delete(r.id);
    clearTimeout(entry.timer);
    const err = r.ok ? undefined : replyError(r);
    const result = obj(r.result);
    const p = entry.p;
    switch (p.kind) {
      case 'subscribe':
        return this.onSubscribed(conn, p.channel, p.resumed, p.sub, err, result);
      case 'unsubscribe':
        if (err && err.code !== 'not_subscribed') return p.d.reject(err);
        return p.d.resolve();
      case 'publish': {
        if (err) return p.d.reject(err);
        const receipt: Receipt = { raw: r.result ?? null };
        const nodes = numField(result.nodes);
        const sessions = numField(result.sessions);
        if (nodes !== undefined) receipt.nodes = nodes;
        if (sessions !== undefined) receipt.sessions = sessions;
        const offset = numField(result.offset);
        if (offset !== undefined) receipt.offset = offset;
        if (typeof result.epoch === 'string') receipt.epoch = result.epoch;
        return p.d.resolve(receipt);
      }
      case 'ack':
        if (err) return p.d.reject(err);
        return p.d.resolve(numField(result.offset) ?? p.offset);
      case 'presence':
      case 'presence_stats': {
        if (err) return p.d.reject(err);
        try {
          if (p.kind === 'presence') p.d.resolve(parsePresenceResult(r.result));
          else p.d.resolve(parsePresenceStats(r.result));
        } catch (e) {
          p.d.reject(e instanceof ProtocolError ? e : new ProtocolError(describe(e)));
        }
        return;
      }
      case 'history':
        if (err) return p.d.reject(err);
        try {
          p.d.resolve(parseHistoryResult(r.result));
        } catch (e) {
          p.d.reject(e instanceof ProtocolError ? e : new ProtocolError(describe(e)));
        }
        return;
      case 'refresh':
        return this.onRefreshed(conn, p, err, result);
    }
  }

  private onRefreshed(
    conn: Conn,
    p: Extract<Pending, { kind: 'refresh' }>,
    err: ServerError | undefined,
    result: Record<string, JsonValue>,
  ): void {
    if (err) {
      if (p.d) p.d.reject(err);
      else this.emit('error', new TokenRefreshError(`refresh refused: ${err.message}`));
      return;
    }
    this.token = p.token;
    this.tokenUnproven = false;
    const exp = numField(result.expires_at);
    if (exp !== undefined) this.scheduleRefresh(conn, exp);
    const dropped = Array.isArray(result.unsubscribed) ? result.unsubscribed : [];
    for (const ch of dropped) {
      if (typeof ch !== 'string') continue;
      const e = new SubscriptionLostError(ch, 'forbidden', 'the refreshed token no longer allows this channel');
      this.forget(ch, e, true);
      this.emit('error', e);
    }
    p.d?.resolve(exp);
  }

  private onSubscribed(
    conn: Conn,
    channel: string,
    resumed: boolean,
    sub: Subscription,
    err: ServerError | undefined,
    result: Record<string, JsonValue>,
  ): void {
    // Unsubscribed (and maybe subscribed anew) while the request was in flight.
    if (this.subs.get(channel) !== sub) return;
    if (err && retried(err.code)) return this.retryLater(conn, sub, err);
    if (err && err.code !== 'already_subscribed') {
      const background = !sub._pending;
      const e = new SubscriptionLostError(channel, err.code, err.serverMessage);
      sub._reject(err);
      this.forget(channel, e, background);
      if (background) this.emit('error', e);
      return;
    }
    const r: SubscribeResult = { channel: typeof result.channel === 'string' ? result.channel : channel };
    if (typeof result.epoch === 'string') r.epoch = result.epoch;
    const offset = numField(result.offset);
    if (offset !== undefined) r.offset = offset;
    if (typeof result.recovered === 'boolean') r.recovered = result.recovered;
    if (resumed || r.recovered !== undefined) this.positionsMap.resumed(channel, r.epoch, r.offset);
    else this.positionsMap.fresh(channel, r.epoch, r.offset);
    if (r.recovered !== undefined) this.emit('recovered', { channel, recovered: r.recovered });
    this.cancelRetry(sub);
    sub._confirm(r);
  }

  /**
   * A subscribe refused for now: the channel stays held, and the subscribe (resuming
   * from the channel's position, like a resubscription) is sent again on this
   * connection after a backoff delay with full jitter (the reconnect's caps). A
   * reconnect cancels the wait and starts the backoff over: the channel is
   * resubscribed with the others.
   */
  private retryLater(conn: Conn, sub: Subscription, err: ServerError): void {
    const background = !sub._pending;
    const { delayMs, attempt } = this.armRetry(conn, sub);
    // A first subscribe: `ready` reports the refusal; the subscription goes on.
    sub._reject(err);
    sub._retrying({ error: err, delayMs, retryAt: Date.now() + delayMs, attempt });
    // Nobody waits for this answer (a resubscription or a retry): an event, like the
    // Rust client's Error::Subscription with code `unavailable`.
    if (background) this.emit('error', new SubscriptionLostError(sub.channel, err.code, err.serverMessage));
  }

  /** Plans the next subscribe of a refused channel on `conn`, after its next delay. */
  private armRetry(conn: Conn, sub: Subscription): { delayMs: number; attempt: number } {
    let r = this.retries.get(sub);
    if (!r) {
      r = { backoff: new Backoff(this.retryBackoff, this.random), timer: undefined };
      this.retries.set(sub, r);
    }
    clearTimeout(r.timer);
    const delayMs = r.backoff.nextDelay();
    r.timer = setTimeout(() => this.retrySubscribe(conn, sub), delayMs);
    return { delayMs, attempt: r.backoff.attempt };
  }

  private retrySubscribe(conn: Conn, sub: Subscription): void {
    const r = this.retries.get(sub);
    if (!r) return;
    r.timer = undefined;
    if (conn.ended || this.subs.get(sub.channel) !== sub) return;
    // Unlike a resubscription at connect, a retry can wait for the rate budget.
    if (!conn.bucket.tryTake()) {
      r.timer = setTimeout(() => this.retrySubscribe(conn, sub), Math.max(1, conn.bucket.waitMs()));
      return;
    }
    this.sendSubscribe(conn, sub, undefined, true);
  }

  private cancelRetry(sub: Subscription): void {
    const r = this.retries.get(sub);
    if (!r) return;
    clearTimeout(r.timer);
    this.retries.delete(sub);
  }

  /** Drops a channel from the set restored at reconnect, and its position. */
  private forget(channel: string, reason: TidingsError, lostIt: boolean): void {
    const sub = this.subs.get(channel);
    this.subs.delete(channel);
    this.positionsMap.remove(channel);
    if (sub) this.cancelRetry(sub);
    sub?._end(reason, lostIt);
  }

  /** Fails or keeps what was in flight on a connection that ended. */
  private connectionLost(conn: Conn): void {
    conn.ended = true;
    clearTimeout(conn.hbTimer);
    clearTimeout(conn.paceTimer);
    clearTimeout(conn.refreshTimer);
    if (this.conn === conn) this.conn = undefined;
    this.backoff.onDisconnected();
    // Refused subscribes are sent again after the reconnect, with the others.
    for (const [sub, r] of this.retries) {
      clearTimeout(r.timer);
      sub._retrying(undefined);
    }
    this.retries.clear();
    for (const { p, timer } of conn.inflight.values()) {
      clearTimeout(timer);
      switch (p.kind) {
        case 'subscribe': // confirmed after the reconnect instead
          break;
        case 'unsubscribe': // the channel is already out of the restored set
          p.d.resolve();
          break;
        case 'refresh':
          p.d?.reject(new DisconnectedError());
          break;
        default:
          p.d.reject(new DisconnectedError());
      }
    }
    conn.inflight.clear();
  }

  private stop(terminal: TidingsError): void {
    this.terminal = terminal;
    this.closing = false;
    for (const channel of [...this.subs.keys()]) this.forget(channel, terminal, false);
    for (const item of this.queue.drain()) item.d.reject(terminal);
    this.setState(terminal instanceof ClosedError ? { status: 'stopped' } : { status: 'stopped', error: terminal });
    if (terminal instanceof ClosedError) {
      this.emit('disconnected', { code: 1000, reason: 'closed by the client', willReconnect: false });
    } else {
      this.emit('error', terminal);
    }
  }

  private setState(s: ConnectionState): void {
    this.snapshot = s;
    this.emit('state', s);
  }
}
