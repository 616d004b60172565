// `tidings-client/react`: hooks over a TidingsClient. React (>= 18) is a peer
// dependency; create the client once, outside components (or in a module), and pass
// it in.

import { useCallback, useEffect, useRef, useState, useSyncExternalStore } from 'react';
import type { TidingsClient } from './client.js';
import type { TidingsError } from './errors.js';
import type { JsonValue } from './frames.js';
import type { PresenceSnapshot, PresenceTracker } from './presence.js';
import type { Subscription } from './subscription.js';
import type { ClientEvents, ConnectionState, Message, PresenceUser, Receipt, SubscribeResult } from './types.js';

/** The client's connection state, re-rendering on every change. */
export function useConnectionState(client: TidingsClient): ConnectionState {
  const subscribe = useCallback((cb: () => void) => client.on('state', cb), [client]);
  return useSyncExternalStore(subscribe, () => client.state, () => client.state);
}

/** Calls `handler` for every `type` event of the client (the latest handler is used). */
export function useClientEvent<K extends keyof ClientEvents>(
  client: TidingsClient,
  type: K,
  handler: (ev: ClientEvents[K]) => void,
): void {
  const ref = useRef(handler);
  ref.current = handler;
  useEffect(() => client.on(type, (ev) => ref.current(ev)), [client, type]);
}

// Several components may use the same channel: the last one to let go unsubscribes.
const refs = new WeakMap<TidingsClient, Map<string, number>>();

function acquire(client: TidingsClient, channel: string): Subscription {
  let m = refs.get(client);
  if (!m) refs.set(client, (m = new Map()));
  m.set(channel, (m.get(channel) ?? 0) + 1);
  return client.subscribe(channel);
}

function release(client: TidingsClient, channel: string): void {
  const m = refs.get(client);
  const n = (m?.get(channel) ?? 1) - 1;
  if (n > 0) return void m?.set(channel, n);
  m?.delete(channel);
  // Deferred so a remount in the same tick (React StrictMode) keeps the subscription.
  setTimeout(() => {
    if (!m?.has(channel)) client.unsubscribe(channel).catch(() => undefined);
  }, 0);
}

export interface ChannelState {
  /** Messages received since the hook subscribed (the newest last), at most `limit`. */
  messages: Message[];
  /**
   * `error` (with `error` set): the subscribe failed. A subscription still held (a
   * refusal that is retried, `unavailable`, or a timeout) becomes `subscribed` again,
   * with `error` cleared, once a subscribe succeeds.
   */
  status: 'idle' | 'subscribing' | 'subscribed' | 'error';
  /** The latest confirmation (epoch, offset, recovered). */
  result?: SubscribeResult;
  /** The last resume result: false means messages were missed; refetch. */
  recovered?: boolean;
  error?: TidingsError;
  publish(event: string, payload?: JsonValue): Promise<Receipt>;
}

/**
 * Subscribes to `channel` while the component is mounted (none when `channel` is
 * null) and collects its last `limit` messages (0: keep none, e.g. when
 * `onMessage` handles them).
 *
 *   const room = useChannel(client, 'room:lobby');
 *   room.messages.map(m => <li key={m.offset}>{String(m.payload)}</li>)
 *   room.publish('message', { text: 'hi' })
 */
export function useChannel(
  client: TidingsClient,
  channel: string | null | undefined,
  opts: { limit?: number; onMessage?: (m: Message) => void } = {},
): ChannelState {
  const limit = opts.limit ?? 100;
  const onMessage = useRef(opts.onMessage);
  onMessage.current = opts.onMessage;
  type S = Omit<ChannelState, 'publish'>;
  const [s, setS] = useState<S>({ messages: [], status: channel ? 'subscribing' : 'idle' });
  useEffect(() => {
    if (!channel) {
      setS({ messages: [], status: 'idle' });
      return;
    }
    setS({ messages: [], status: 'subscribing' });
    const sub = acquire(client, channel);
    const retry = sub.retrying;
    if (retry) setS((p) => ({ ...p, status: 'error', error: retry.error }));
    else if (sub.result) setS((p) => ({ ...p, status: 'subscribed', result: sub.result }));
    const offs = [
      sub.on('message', (m) => {
        onMessage.current?.(m);
        if (limit > 0) setS((p) => ({ ...p, messages: [...p.messages, m].slice(-limit) }));
      }),
      sub.on('subscribed', (r) => setS((p) => ({ ...p, status: 'subscribed', result: r, error: undefined }))),
      sub.on('recovered', (recovered) => setS((p) => ({ ...p, recovered }))),
      // Refused for now: still held, retried in the background.
      sub.on('retrying', ({ error }) => setS((p) => ({ ...p, status: 'error', error }))),
      sub.on('error', (error) => setS((p) => ({ ...p, status: 'error', error }))),
    ];
    sub.ready.catch((error: TidingsError) => {
      // A shared subscription whose first subscribe failed may be confirmed since.
      if (sub.active && sub.result && !sub.retrying) return;
      if (sub.active || error.kind !== 'cancelled') setS((p) => ({ ...p, status: 'error', error }));
    });
    return () => {
      for (const off of offs) off();
      release(client, channel);
    };
  }, [client, channel, limit]);
  const publish = useCallback(
    (event: string, payload: JsonValue = null) =>
      channel ? client.publish(channel, event, payload) : Promise.reject(new Error('no channel')),
    [client, channel],
  );
  return { ...s, publish };
}

export interface PresenceState {
  /** The users present on the channel, in order of user id. */
  members: PresenceUser[];
  /** Connections and distinct users among `members`; undefined until the first snapshot. */
  count: { clients: number; users: number } | undefined;
  /**
   * `loading`: the first snapshot (or a new one after a reconnect) is on its way, the
   * members shown are the last known. `ready`: current. `error` (with `error` set):
   * the channel or its presence was refused; a refusal for now is tried again.
   */
  status: 'idle' | 'loading' | 'ready' | 'error';
  error?: TidingsError;
  /** Takes a new snapshot now (e.g. on a channel whose presence has no events). */
  refresh(): Promise<void>;
}

function presenceView(s: PresenceSnapshot): Omit<PresenceState, 'refresh'> {
  const v: Omit<PresenceState, 'refresh'> = {
    members: s.members,
    count: s.count,
    status: s.status === 'stopped' ? 'idle' : s.status,
  };
  if (s.error) v.error = s.error;
  return v;
}

/**
 * Who is on `channel` while the component is mounted (nothing when `channel` is null):
 * subscribes to it (shared with `useChannel` on the same channel), takes a snapshot of
 * its presence and follows its join and leave events; a new snapshot after every
 * reconnect. Live updates need a presence rule with `events` on the gateway.
 *
 *   const { members, count } = usePresence(client, 'room:lobby');
 *   members.map(m => <li key={m.user}>{m.user}</li>)
 */
export function usePresence(client: TidingsClient, channel: string | null | undefined): PresenceState {
  type S = Omit<PresenceState, 'refresh'>;
  const [s, setS] = useState<S>({ members: [], count: undefined, status: channel ? 'loading' : 'idle' });
  const tracker = useRef<PresenceTracker | undefined>(undefined);
  useEffect(() => {
    if (!channel) {
      setS({ members: [], count: undefined, status: 'idle' });
      return;
    }
    acquire(client, channel);
    const t = client.trackPresence(channel);
    tracker.current = t;
    setS(presenceView(t.snapshot));
    const off = t.on('change', (snap) => setS(presenceView(snap)));
    return () => {
      off();
      t.stop();
      if (tracker.current === t) tracker.current = undefined;
      release(client, channel);
    };
  }, [client, channel]);
  const refresh = useCallback(() => tracker.current?.refresh() ?? Promise.resolve(), []);
  return { ...s, refresh };
}

export interface NotificationsState {
  /** Personal-channel (and, unless disabled, broadcast) messages, newest last. */
  messages: Message[];
  /** Messages received since the last `markRead()`. */
  unread: number;
  /** Acknowledges the newest personal message (shared by all the user's devices). */
  markRead(): Promise<void>;
}

/** The user's notifications: messages on the personal channel `$user:<id>`. */
export function useNotifications(
  client: TidingsClient,
  opts: { limit?: number; broadcast?: boolean } = {},
): NotificationsState {
  const limit = opts.limit ?? 50;
  const broadcast = opts.broadcast ?? true;
  const [s, setS] = useState<{ messages: Message[]; unread: number }>({ messages: [], unread: 0 });
  const lastOffset = useRef<number | undefined>(undefined);
  useEffect(
    () =>
      client.on('message', (m) => {
        const personal = m.channel === client.personalChannel;
        if (!personal && !(broadcast && m.channel === '$broadcast')) return;
        if (personal && m.offset !== undefined) lastOffset.current = m.offset;
        setS((p) => ({ messages: [...p.messages, m].slice(-limit), unread: p.unread + 1 }));
      }),
    [client, limit, broadcast],
  );
  const markRead = useCallback(async () => {
    setS((p) => ({ ...p, unread: 0 }));
    if (lastOffset.current !== undefined) await client.ack(lastOffset.current);
  }, [client]);
  return { ...s, markRead };
}
