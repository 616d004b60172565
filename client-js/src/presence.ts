// Presence (docs/protocol.md section 15): reading the `presence` and `presence_stats`
// replies, and PresenceTracker, which keeps a live list of the users present on a
// subscribed channel: a snapshot (every page of `presence`, grouped by user), then the
// channel's `presence_diff` joins and leaves, and a new snapshot whenever the channel
// is subscribed again (diffs sent while disconnected are lost).

import { Backoff, type BackoffOptions } from './backoff.js';
import { Emitter } from './emitter.js';
import { ProtocolError, ServerError, TimeoutError, type TidingsError } from './errors.js';
import type { JsonValue } from './frames.js';
import type { Subscription } from './subscription.js';
import type { PresenceDiff, PresenceMember, PresenceResult, PresenceStats, PresenceUser } from './types.js';

/** The protocol's largest page (`presence` `limit`). */
export const MAX_PRESENCE_PAGE = 1000;

type Obj = Record<string, JsonValue>;

function isObj(v: JsonValue | undefined): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function count(v: JsonValue | undefined, field: string, what: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) {
    throw new ProtocolError(`${what} result without a valid \`${field}\``);
  }
  return v;
}

function channelOf(r: Obj, what: string): string {
  if (typeof r.channel !== 'string') throw new ProtocolError(`${what} result without a valid \`channel\``);
  return r.channel;
}

/** A `presence` reply's result; throws ProtocolError when it does not read as documented. */
export function parsePresenceResult(v: JsonValue | undefined): PresenceResult {
  if (!isObj(v)) throw new ProtocolError('presence result is not an object');
  if (!Array.isArray(v.members)) throw new ProtocolError('presence result without a valid `members`');
  const members = v.members.map((m): PresenceMember => {
    if (!isObj(m) || typeof m.user !== 'string' || typeof m.client !== 'string') {
      throw new ProtocolError('presence result with a member without `user` and `client`');
    }
    const out: PresenceMember = { user: m.user, client: m.client };
    if (m.info !== undefined && m.info !== null) out.info = m.info;
    return out;
  });
  const r: PresenceResult = {
    channel: channelOf(v, 'presence'),
    clients: count(v.clients, 'clients', 'presence'),
    users: count(v.users, 'users', 'presence'),
    members,
  };
  if (typeof v.cursor === 'string') r.cursor = v.cursor;
  return r;
}

/** A `presence_stats` reply's result; throws ProtocolError when it does not read as documented. */
export function parsePresenceStats(v: JsonValue | undefined): PresenceStats {
  if (!isObj(v)) throw new ProtocolError('presence_stats result is not an object');
  return {
    channel: channelOf(v, 'presence_stats'),
    clients: count(v.clients, 'clients', 'presence_stats'),
    users: count(v.users, 'users', 'presence_stats'),
  };
}

/** Groups members (connections) by user, in order of user id. */
export function groupMembers(members: PresenceMember[]): Map<string, PresenceUser> {
  const users = new Map<string, PresenceUser>();
  for (const m of members) {
    const u = users.get(m.user);
    if (u) {
      u.clients += 1;
      if (u.info === undefined && m.info !== undefined) u.info = m.info;
    } else {
      users.set(m.user, m.info === undefined ? { user: m.user, clients: 1 } : { user: m.user, info: m.info, clients: 1 });
    }
  }
  return users;
}

/**
 * Applies a diff to users grouped by user: a join adds the user (one connection) or,
 * when present, updates their `info` (joins are idempotent); a leave removes the user.
 */
export function applyDiff(users: Map<string, PresenceUser>, diff: Pick<PresenceDiff, 'joins' | 'leaves'>): void {
  for (const j of diff.joins) {
    const u = users.get(j.user);
    const info = j.info;
    if (u) {
      if (info === undefined) delete u.info;
      else u.info = info;
    } else {
      users.set(j.user, info === undefined ? { user: j.user, clients: 1 } : { user: j.user, info, clients: 1 });
    }
  }
  for (const l of diff.leaves) users.delete(l.user);
}

/** What a PresenceTracker needs from its client (avoids an import cycle). */
export interface PresenceHost {
  presenceAll(channel: string): Promise<PresenceResult>;
}

/**
 * `loading`: the first snapshot (or a new one after a resubscription) is on its way;
 * the members shown are the last known. `ready`: the snapshot and the diffs since are
 * applied. `error`: the channel or its presence was refused (`error` says why; a
 * refusal for now is tried again). `stopped`: `stop()` was called or the subscription
 * ended.
 */
export type PresenceStatus = 'loading' | 'ready' | 'error' | 'stopped';

/** A PresenceTracker's state: a new object on every change (for UI stores). */
export interface PresenceSnapshot {
  /** The users present, in order of user id. */
  members: PresenceUser[];
  /** Connections and distinct users of `members`; undefined before the first snapshot. */
  count: { clients: number; users: number } | undefined;
  status: PresenceStatus;
  error?: TidingsError;
}

export interface PresenceTrackerEvents {
  /** Every change of the members, the counts, the status or the error. */
  change: PresenceSnapshot;
}

export interface PresenceTrackerOptions {
  /**
   * How long after a confirmation of the subscription the snapshot is taken (default
   * 100 ms): the gateway lists a new subscriber within its 50 ms batch window plus a
   * Redis round trip, so a listing taken at once can miss the client itself.
   */
  snapshotDelayMs?: number;
  /**
   * After a resubscription (a reconnect), a second snapshot between this long and
   * twice as long after the first (default 2000 ms; 0: none). Members who reconnect
   * at the same time as this client (e.g. every client of a restarted node) are
   * missing from a listing taken before they are back, and a reconnect within the
   * gateway's grace period announces no join, so only a later listing shows them.
   */
  settleMs?: number;
  /**
   * A new snapshot this long after the last one (default 300000 ms, 5 minutes, give
   * or take a quarter; 0: never), as docs/protocol.md section 15 advises for
   * long-lived views: members missed by a listing taken during their reconnect, and
   * diffs lost while the gateway's Redis was away, are only ever repaired by listing
   * again. Each page takes from the connection's history-read budget.
   */
  relistMs?: number;
  /**
   * Delays before asking again after a refusal for now (`unavailable`, `internal`) or
   * a timeout: backoff with full jitter, 1 s doubling up to 30 s by default. After
   * `rate_limited` (the history-read budget was empty, and the refusal was a strike)
   * the delay is at least 5 s, when the budget has refilled.
   */
  retry?: BackoffOptions;
  /** Random source in [0, 1) for the jitter (tests). */
  random?: () => number;
}

/** The least delay before asking again after `rate_limited` (the budget refills 20 tokens at 5/s). */
const RATE_LIMITED_MIN_MS = 5000;

/** Failures worth asking again after a delay; the others wait for the next subscription. */
function retryable(e: TidingsError): boolean {
  if (e instanceof TimeoutError) return true;
  return e instanceof ServerError && (e.code === 'unavailable' || e.code === 'rate_limited' || e.code === 'internal');
}

function byUser(a: PresenceUser, b: PresenceUser): number {
  return a.user < b.user ? -1 : a.user > b.user ? 1 : 0;
}

/**
 * The users present on a subscribed channel, kept current: created by
 * `client.trackPresence(channel)` (or the `usePresence` hook). Takes a snapshot (every
 * page of `presence`, grouped by user) shortly after each confirmation of the
 * subscription (the first time, and after every reconnect, since diffs sent while
 * disconnected are lost; after a reconnect a second one later, see `settleMs`), and
 * applies the channel's `presence_diff` joins and leaves in between (diffs that
 * arrive while a snapshot loads are applied after it). Needs a presence
 * rule with `events` on the server for live updates; without one, the members are
 * those of the last snapshot (call `refresh()`).
 */
export class PresenceTracker extends Emitter<PresenceTrackerEvents> {
  private users = new Map<string, PresenceUser>();
  private loaded = false;
  private state: PresenceSnapshot = { members: [], count: undefined, status: 'loading' };
  /** Diffs received while the current snapshot loads, applied after it. */
  private pending: PresenceDiff[] | undefined;
  /** Increases with every snapshot asked for: answers of older ones are dropped. */
  private generation = 0;
  private readonly backoff: Backoff;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private snapshotTimer: ReturnType<typeof setTimeout> | undefined;
  private settleTimer: ReturnType<typeof setTimeout> | undefined;
  private relistTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly relistMs: number;
  private readonly snapshotDelayMs: number;
  private readonly settleMs: number;
  private readonly random: () => number;
  /** A confirmation of the subscription was seen: the next one is a resubscription. */
  private confirmed = false;
  private readonly offs: (() => void)[];
  /** Stopped, or the subscription ended: nothing changes any more, but why it ended. */
  private done = false;
  /** `stop()` was called: not even that. */
  private stopped = false;

  constructor(
    private readonly host: PresenceHost,
    readonly subscription: Subscription,
    opts: PresenceTrackerOptions = {},
  ) {
    super();
    this.random = opts.random ?? Math.random;
    this.backoff = new Backoff(opts.retry, this.random);
    this.snapshotDelayMs = opts.snapshotDelayMs ?? 100;
    this.settleMs = opts.settleMs ?? 2000;
    this.relistMs = opts.relistMs ?? 300_000;
    const sub = subscription;
    this.offs = [
      sub.on('subscribed', () => this.onSubscribed()),
      sub.on('presence', (d) => this.onDiff(d)),
      // Refused for now: still held, subscribed again in the background.
      sub.on('retrying', ({ error }) => this.update({ status: 'error', error })),
      sub.on('error', (error) => this.update({ status: 'error', error })),
      sub.on('ended', () => this.finish()),
    ];
    sub.ready.catch((error: TidingsError) => {
      // A shared subscription whose first subscribe failed may be confirmed since.
      if (this.stopped || (sub.active && sub.result && !sub.retrying)) return;
      if (sub.active || error.kind !== 'cancelled') this.update({ status: 'error', error });
    });
    if (!sub.active) this.finish();
    else if (sub.retrying) this.update({ status: 'error', error: sub.retrying.error });
    else if (sub.result) this.onSubscribed();
  }

  get channel(): string {
    return this.subscription.channel;
  }

  /** The current state (the same object until the next change). */
  get snapshot(): PresenceSnapshot {
    return this.state;
  }

  get members(): PresenceUser[] {
    return this.state.members;
  }

  get count(): { clients: number; users: number } | undefined {
    return this.state.count;
  }

  get status(): PresenceStatus {
    return this.state.status;
  }

  get error(): TidingsError | undefined {
    return this.state.error;
  }

  /** Takes a new snapshot now (resolves once it is applied, or failed). */
  refresh(): Promise<void> {
    return this.load();
  }

  /** Stops tracking. The channel stays subscribed: unsubscribe it yourself if nothing else needs it. */
  stop(): void {
    this.stopped = true;
    this.finish();
  }

  /** The subscription is confirmed: a snapshot shortly, and after a resubscription another one later. */
  private onSubscribed(): void {
    if (this.done) return;
    const again = this.confirmed;
    this.confirmed = true;
    this.clearTimers();
    // Until the snapshot, the members shown are the last known.
    this.update({ status: 'loading', error: undefined });
    this.snapshotTimer = setTimeout(() => void this.load(), this.snapshotDelayMs);
    if (again && this.settleMs > 0) {
      // Jittered: after a node restart, every client of it gets here at once.
      const delay = this.snapshotDelayMs + this.settleMs * (1 + this.random());
      this.settleTimer = setTimeout(() => void this.load(true), delay);
    }
  }

  private clearTimers(): void {
    for (const t of [this.retryTimer, this.snapshotTimer, this.settleTimer, this.relistTimer]) clearTimeout(t);
    this.retryTimer = this.snapshotTimer = this.settleTimer = this.relistTimer = undefined;
  }

  /** `quiet`: a check of a current list (the settle and relist snapshots): the status stays `ready` meanwhile. */
  private async load(quiet = false): Promise<void> {
    if (this.done) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (!quiet) {
      clearTimeout(this.snapshotTimer);
      this.snapshotTimer = undefined;
    }
    const gen = ++this.generation;
    this.pending = [];
    if (!quiet || this.state.status !== 'ready') this.update({ status: 'loading', error: undefined });
    let snap: PresenceResult;
    try {
      snap = await this.host.presenceAll(this.channel);
    } catch (e) {
      if (gen !== this.generation || this.done) return;
      const error = e as TidingsError;
      this.pending = undefined;
      // Lost with the connection: the resubscription after the reconnect asks again.
      if (error.kind === 'disconnected') return;
      this.update({ status: 'error', error });
      if (retryable(error)) {
        const delay = this.backoff.nextDelay();
        const rateLimited = error instanceof ServerError && error.code === 'rate_limited';
        this.retryTimer = setTimeout(() => void this.load(), rateLimited ? Math.max(RATE_LIMITED_MIN_MS, delay) : delay);
      }
      return;
    }
    if (gen !== this.generation || this.done) return;
    const users = groupMembers(snap.members);
    for (const d of this.pending ?? []) applyDiff(users, d);
    this.pending = undefined;
    this.users = users;
    this.loaded = true;
    this.backoff.reset();
    clearTimeout(this.relistTimer);
    this.relistTimer = undefined;
    if (this.relistMs > 0) {
      this.relistTimer = setTimeout(() => void this.load(true), this.relistMs * (0.75 + 0.5 * this.random()));
    }
    this.update({ status: 'ready', error: undefined });
  }

  private onDiff(d: PresenceDiff): void {
    if (this.done) return;
    this.pending?.push(d);
    // Shown at once on the last known members; replayed on the snapshot being loaded.
    applyDiff(this.users, d);
    this.update({});
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.generation += 1;
    this.clearTimers();
    for (const off of this.offs) off();
    this.update(this.state.status === 'error' ? {} : { status: 'stopped' });
  }

  private update(change: { status?: PresenceStatus; error?: TidingsError | undefined }): void {
    const members = [...this.users.values()].map((u) => ({ ...u })).sort(byUser);
    const next: PresenceSnapshot = {
      members,
      count: this.loaded ? { clients: members.reduce((n, u) => n + u.clients, 0), users: members.length } : undefined,
      status: change.status ?? this.state.status,
    };
    const error = 'error' in change ? change.error : this.state.error;
    if (error !== undefined) next.error = error;
    this.state = next;
    this.emit('change', next);
  }
}
