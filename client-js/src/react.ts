// `tidings-client/react`: hooks over a TidingsClient. React (>= 18) is a peer
// dependency; create the client once, outside components (or in a module), and pass
// it in.

import { useCallback, useEffect, useLayoutEffect, useRef, useState, useSyncExternalStore } from 'react';
import type { TidingsClient } from './client.js';
import {
  codePointIndex,
  openDocument,
  utf16Index,
  type CollabDocument,
  type DocumentCursor,
  type DocumentOptions,
  type DocumentStatus,
  type ReloadEvent,
  type ResyncReport,
} from './collab/document.js';
import { codePointLength, transformSelection, type Operation, type Selection } from './collab/ot.js';
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

/** Counts a user of the channel without subscribing (the user subscribes itself, e.g. with `since`). */
function reserve(client: TidingsClient, channel: string): void {
  let m = refs.get(client);
  if (!m) refs.set(client, (m = new Map()));
  m.set(channel, (m.get(channel) ?? 0) + 1);
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

/** The props that bind a `<textarea>` to a document (`<textarea {...doc.textarea} />`). */
export interface TextareaBinding {
  ref: (el: HTMLTextAreaElement | null) => void;
  value: string;
  /** True until the document is loaded, and when it cannot be edited. */
  readOnly: boolean;
  onChange: (e: { currentTarget: HTMLTextAreaElement }) => void;
  onSelect: (e: { currentTarget: HTMLTextAreaElement }) => void;
}

export interface DocumentState {
  /** The document (undefined when `channel` is null). */
  doc: CollabDocument | undefined;
  text: string;
  revision: number;
  status: DocumentStatus | 'idle';
  /** Local edits not in the log yet. */
  pending: boolean;
  error?: Error;
  /** The other editors' selections in `text` (code points), with names. */
  remoteCursors: DocumentCursor[];
  /** The last reload (the history was gone): whether local edits were lost, and when. */
  reloaded?: ReloadEvent & { at: number };
  /** The last report of being back in sync after being offline. */
  resynced?: ResyncReport & { at: number };
  /** A local edit (code points); ignored while the document is not loaded. */
  applyLocal(op: Operation, selection?: Selection): void;
  /** Props for a `<textarea>`: its value, and its input and selection turned into edits (UTF-16 offsets converted to code points). */
  textarea: TextareaBinding;
}

/** The selection of a text field, in code points of its value. */
export function fieldSelection(el: { value: string; selectionStart: number | null; selectionEnd: number | null; selectionDirection?: string | null }): Selection {
  const start = codePointIndex(el.value, el.selectionStart ?? 0);
  const end = codePointIndex(el.value, el.selectionEnd ?? el.selectionStart ?? 0);
  return el.selectionDirection === 'backward' ? { anchor: end, head: start } : { anchor: start, head: end };
}

type DocView = Omit<DocumentState, 'applyLocal' | 'textarea' | 'doc'>;

/**
 * Writes the document's text into the bound field at once, not at React's next
 * render: an input event that came in between would otherwise be read against a
 * value without the remote change, and diffing it against the document would undo
 * that change. The caret goes where the document moved it (a new value puts it at
 * the end).
 */
function syncField(t: HTMLTextAreaElement | null, d: CollabDocument, op?: Operation): void {
  if (!t || t.value === d.text) return;
  const focused = typeof document !== 'undefined' && document.activeElement === t;
  // The field's own selection is the truth (the document hears of it a little later,
  // from the selection events): moved through the change when it applies to the field.
  let sel = d.selection;
  if (focused && op && op.baseLen === codePointLength(t.value)) {
    sel = transformSelection(fieldSelection(t), op, false);
    d.select(sel);
  }
  t.value = d.text;
  if (!focused) return;
  const a = utf16Index(d.text, sel.anchor);
  const h = utf16Index(d.text, sel.head);
  if (a <= h) t.setSelectionRange(a, h, 'forward');
  else t.setSelectionRange(h, a, 'backward');
}

function docView(d: CollabDocument, prev: DocView): DocView {
  return { ...prev, text: d.text, revision: d.revision, status: d.status, pending: d.pending, error: d.error, remoteCursors: d.cursors };
}

/**
 * A collaborative document on `channel` (e.g. `doc:notes`) while the component is
 * mounted (nothing when `channel` is null): loaded from its newest snapshot, kept in
 * sync, its local edits sent (see CollabDocument in `tidings-client/collab`). Needs a
 * `--history` rule for the channel and `snap:<channel>`, and rights on both and on
 * `cursor:<channel>`.
 *
 *   const doc = useDocument(client, 'doc:notes');
 *   <textarea {...doc.textarea} />
 *   doc.remoteCursors.map(c => ...)   // code point positions in doc.text
 */
export function useDocument(client: TidingsClient, channel: string | null | undefined, opts: DocumentOptions = {}): DocumentState {
  const empty: DocView = { text: '', revision: 0, status: channel ? 'loading' : 'idle', pending: false, remoteCursors: [] };
  const [s, setS] = useState<DocView>(empty);
  const [doc, setDoc] = useState<CollabDocument | undefined>(undefined);
  const optsRef = useRef(opts);
  optsRef.current = opts;
  const el = useRef<HTMLTextAreaElement | null>(null);
  useEffect(() => {
    if (!channel) {
      setDoc(undefined);
      setS({ text: '', revision: 0, status: 'idle', pending: false, remoteCursors: [] });
      return;
    }
    // Shared with useChannel/usePresence on the same channels: the last one to go unsubscribes.
    reserve(client, channel);
    reserve(client, `cursor:${channel}`);
    const d = openDocument(client, channel, { ...optsRef.current, unsubscribeOnClose: false });
    setDoc(d);
    setS((p) => docView(d, { ...p, reloaded: undefined, resynced: undefined }));
    const update = (): void => setS((p) => docView(d, p));
    const offs = [
      d.on('change', (c) => {
        syncField(el.current, d, c.op);
        update();
      }),
      d.on('status', update),
      d.on('cursors', update),
      d.on('error', update),
      d.on('reload', (r) => setS((p) => ({ ...docView(d, p), reloaded: { ...r, at: Date.now() } }))),
      d.on('resynced', (r) => setS((p) => ({ ...docView(d, p), resynced: { ...r, at: Date.now() } }))),
    ];
    return () => {
      for (const off of offs) off();
      d.close();
      release(client, channel);
      release(client, `cursor:${channel}`);
    };
  }, [client, channel]);

  // The field may have been rendered before the document was open.
  useLayoutEffect(() => {
    if (doc) syncField(el.current, doc);
  }, [doc]);

  const applyLocal = useCallback(
    (op: Operation, selection?: Selection) => {
      if (doc?.isLoaded) doc.apply(op, selection);
    },
    [doc],
  );
  const ref = useCallback((t: HTMLTextAreaElement | null) => {
    el.current = t;
  }, []);
  const onChange = useCallback(
    (e: { currentTarget: HTMLTextAreaElement }) => {
      const t = e.currentTarget;
      if (!doc?.isLoaded) return;
      doc.setText(t.value, fieldSelection(t));
      // What React renders is the document's text; if it differs (an edit refused), the field follows it.
      setS((p) => docView(doc, p));
    },
    [doc],
  );
  const onSelect = useCallback(
    (e: { currentTarget: HTMLTextAreaElement }) => {
      const t = e.currentTarget;
      if (doc?.isLoaded && t.value === doc.text) doc.select(fieldSelection(t));
    },
    [doc],
  );
  const readOnly = !doc || !(s.status === 'ready' || s.status === 'syncing' || s.status === 'offline');
  return {
    ...s,
    doc,
    applyLocal,
    textarea: { ref, value: s.text, readOnly, onChange, onSelect },
  };
}
