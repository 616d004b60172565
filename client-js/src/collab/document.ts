// CollabDocument: the editing protocol of docs/collaboration.md run over a
// TidingsClient. It loads the newest snapshot of `snap:<doc>` (the `history`
// request), subscribes to the document channel resuming from the snapshot's revision,
// feeds the Editor state machine (editor.ts) with the replayed and live operations,
// carries out its effects (conditional publishes, snapshots), fills gaps and
// incomplete resumes from history, reloads when the history it stands on is gone, and
// exchanges cursors on `cursor:<doc>`.

import type { TidingsClient } from '../client.js';
import { Emitter } from '../emitter.js';
import { ConflictError, DisconnectedError, ServerError, TidingsError, TimeoutError } from '../errors.js';
import type { JsonValue } from '../frames.js';
import { MAX_HISTORY_PAGE } from '../history.js';
import type { PresenceTracker } from '../presence.js';
import type { Subscription } from '../subscription.js';
import type { HistoryResult, Message, SubscribeResult } from '../types.js';
import { Editor, type EditorEffect, type SnapshotPayload } from './editor.js';
import { codePointLength, Operation, type Selection } from './ot.js';

export type DocumentStatus =
  /** Reading the snapshot and the operations after it (the first time, or after a reload). */
  | 'loading'
  /** Connected again, catching up with what was missed; edits wait in the buffer. */
  | 'syncing'
  /** Live: local edits are sent, remote ones applied as they come. */
  | 'ready'
  /** The connection is down: editing goes on locally, sent after the reconnect. */
  | 'offline'
  /** Cannot go on (see `error`): the channel is refused or keeps no history, or reloads keep failing. */
  | 'error'
  | 'closed';

/** Another editor's selection in this document's text (code points), with a display name. */
export interface DocumentCursor {
  /** The editor instance (one per open document). */
  client: string;
  /** Its user id (the token's subject). */
  user: string;
  /** The `name` of the user's presence info when there is one, else the user id. */
  name: string;
  anchor: number;
  head: number;
}

export interface DocumentChange {
  text: string;
  revision: number;
  /** Changed by another editor's operation (false: a local edit, an acknowledgement or a load). */
  remote: boolean;
  /** The operation applied to the text, when the text changed by one. */
  op?: Operation;
}

/** What happened while the document was offline, once it is in sync again. */
export interface ResyncReport {
  /** Operations of other editors applied since the connection was lost. */
  remoteOps: number;
  /** Local edits made while offline, now in the log. */
  offlineEdits: number;
}

export interface ReloadEvent {
  reason: string;
  /** Local edits that were not in the log yet were lost. */
  droppedLocal: boolean;
}

export interface DocumentEvents {
  /** The text or the revision changed. */
  change: DocumentChange;
  status: DocumentStatus;
  /** The remote cursors changed. */
  cursors: DocumentCursor[];
  /** The history the document stood on was gone: it was loaded again from the newest snapshot. */
  reload: ReloadEvent;
  /** Back in sync after being offline. */
  resynced: ResyncReport;
  /** A problem: fatal ones come with the status `error`; others (a snapshot not written) are reported only. */
  error: Error;
}

export interface DocumentOptions {
  /** The user id in this editor's cursors (default: the connection's user, the token's subject). */
  user?: string;
  /** The editor's id (default: random). */
  editorId?: string;
  /** A snapshot after each own operation at a multiple of this revision (default 500; 0: none). */
  snapshotInterval?: number;
  /** Exchange cursors on `cursor:<doc>` (default true). */
  cursors?: boolean;
  /** At most one cursor publish per this interval (default 50 ms). */
  cursorThrottleMs?: number;
  /**
   * The cursor is published again after this long without a change (default 10 s; 0:
   * never), so that editors who open the document later see it; remote cursors not
   * heard of for three times as long are dropped.
   */
  cursorKeepAliveMs?: number;
  /** Names and leaves from the document channel's presence (default true; needs a presence rule). */
  presence?: boolean;
  /** The largest wire form of one operation (default 32 KiB, or less when the server's payload limit is lower). */
  maxOpBytes?: number;
  /** Unsubscribe the channels on `close()` (default true; the React hook shares them instead). */
  unsubscribeOnClose?: boolean;
}

const RELOADS_PER_MINUTE = 5;

/** The snapshot to load from a page of `snap:<doc>`: the highest revision of the newest entry's epoch. */
export function pickSnapshot(entries: Message[]): SnapshotPayload | undefined {
  const valid: SnapshotPayload[] = [];
  for (const e of entries) {
    const p = e.payload;
    if (e.event !== 'snapshot' || typeof p !== 'object' || p === null || Array.isArray(p)) continue;
    const { rev, epoch, text } = p;
    if (typeof rev !== 'number' || !Number.isSafeInteger(rev) || rev < 0 || typeof epoch !== 'string' || typeof text !== 'string') continue;
    valid.push({ rev, epoch, text });
  }
  const newest = valid.at(-1);
  if (!newest) return undefined;
  return valid.filter((s) => s.epoch === newest.epoch).reduce((a, b) => (b.rev > a.rev ? b : a));
}

function nameOf(info: JsonValue | undefined, user: string): string {
  if (typeof info === 'object' && info !== null && !Array.isArray(info) && typeof info.name === 'string' && info.name) return info.name;
  return user;
}

/**
 * A collaboratively edited plain-text document on a channel with history (`doc:<id>`),
 * following docs/collaboration.md. Open one with `openDocument(client, 'doc:42')`.
 *
 *   const doc = openDocument(client, 'doc:42');
 *   doc.on('change', ({ text }) => render(text));
 *   await doc.ready;
 *   doc.replace(0, 0, 'Hello ');           // code point positions
 *   doc.setText(textarea.value);           // or diff a new text in
 */
export class CollabDocument extends Emitter<DocumentEvents> {
  readonly snapChannel: string;
  readonly cursorChannel: string;
  /** Resolves when the document is first loaded; rejects if it cannot be (status `error` or `closed` first). */
  readonly ready: Promise<void>;
  private readonly editor: Editor;
  private state: DocumentStatus = 'loading';
  private err: Error | undefined;
  private sub: Subscription | undefined;
  private ownsSub = false;
  private cursorSub: Subscription | undefined;
  private tracker: PresenceTracker | undefined;
  private readonly offs: (() => void)[] = [];
  /** Bumped by close() and every (re)load: async work of an older one stops. */
  private gen = 0;
  private loaded = false;
  /** A load (snapshot) or catch-up (history) is running: live messages wait in `queue`. */
  private busy = false;
  private queue: Message[] = [];
  /** The revision a replay after a (re)subscription reaches. */
  private syncTarget: number | undefined;
  private resync: ResyncReport | undefined;
  private reloads: number[] = [];
  private settleReady: { resolve(): void; reject(e: Error): void } | undefined;
  private readonly opts: Required<Omit<DocumentOptions, 'user' | 'editorId' | 'maxOpBytes'>> & { user: string | undefined };
  private cursorTimer: ReturnType<typeof setTimeout> | undefined;
  private keepAliveTimer: ReturnType<typeof setInterval> | undefined;
  private lastCursorAt = 0;
  private lastCursorKey = '';
  private readonly cursorSeen = new Map<string, number>();
  private names = new Map<string, string>();
  private cursorView: DocumentCursor[] = [];

  constructor(
    readonly client: TidingsClient,
    readonly channel: string,
    opts: DocumentOptions = {},
  ) {
    super();
    this.snapChannel = `snap:${channel}`;
    this.cursorChannel = `cursor:${channel}`;
    this.opts = {
      user: opts.user,
      snapshotInterval: opts.snapshotInterval ?? 500,
      cursors: opts.cursors ?? true,
      cursorThrottleMs: opts.cursorThrottleMs ?? 50,
      cursorKeepAliveMs: opts.cursorKeepAliveMs ?? 10_000,
      presence: opts.presence ?? true,
      unsubscribeOnClose: opts.unsubscribeOnClose ?? true,
    };
    const editorOpts: ConstructorParameters<typeof Editor>[0] = { snapshotInterval: this.opts.snapshotInterval };
    if (opts.editorId !== undefined) editorOpts.client = opts.editorId;
    if (opts.maxOpBytes !== undefined) editorOpts.maxOpBytes = opts.maxOpBytes;
    this.editor = new Editor(editorOpts);
    this.ready = new Promise((resolve, reject) => (this.settleReady = { resolve, reject }));
    this.ready.catch(() => undefined);
    this.offs.push(
      client.on('state', (s) => {
        if (s.status !== 'connected') this.wentOffline();
      }),
      client.on('connected', (c) => {
        // A lower payload limit than the operations' default size: stay under it.
        const max = c.limits?.max_payload_bytes;
        if (max !== undefined && opts.maxOpBytes === undefined) this.editor.setMaxOpBytes(Math.max(256, Math.min(32 * 1024, max - 512)));
      }),
    );
    if (this.opts.cursors) this.startCursors();
    void this.load();
  }

  // ---- state -------------------------------------------------------------------------

  get text(): string {
    return this.editor.text;
  }

  get revision(): number {
    return this.editor.revision;
  }

  get epoch(): string {
    return this.editor.epoch;
  }

  get status(): DocumentStatus {
    return this.state;
  }

  /** Why the status is `error`. */
  get error(): Error | undefined {
    return this.err;
  }

  /** Local edits not in the log yet. */
  get pending(): boolean {
    return this.editor.pending;
  }

  /** Whether the document was loaded (edits are possible). */
  get isLoaded(): boolean {
    return this.loaded && this.state !== 'loading' && this.state !== 'closed' && this.state !== 'error';
  }

  /** The local selection, in code points. */
  get selection(): Selection {
    return this.editor.selection;
  }

  /** This editor's id in operations and cursors. */
  get editorId(): string {
    return this.editor.client;
  }

  /** The other editors' selections, in code points of `text`. */
  get cursors(): DocumentCursor[] {
    return this.cursorView;
  }

  // ---- editing -----------------------------------------------------------------------

  /**
   * A local edit: `op` applies to `text` (code points). Applied at once, sent when
   * possible (offline: after the reconnect). The selection moves with it unless given.
   *
   * @throws {Error} while the document is not loaded; {OtError} when `op` does not apply.
   */
  apply(op: Operation, selection?: Selection): void {
    if (!this.isLoaded) throw new Error(`the document is ${this.state}: no edits now`);
    const fx = this.editor.edit(op, selection);
    if (this.resync && this.state === 'offline' && !op.isNoop()) this.resync.offlineEdits += 1;
    this.emit('change', { text: this.editor.text, revision: this.editor.revision, remote: false, op });
    this.run(fx);
    this.refreshCursors();
    this.cursorMoved();
  }

  /** Replaces the code points `from` up to `to` with `insert`. */
  replace(from: number, to: number, insert: string, selection?: Selection): void {
    const n = codePointLength(this.editor.text);
    const a = Math.max(0, Math.min(from, to, n));
    const b = Math.min(Math.max(from, to), n);
    this.apply(new Operation().retain(a).delete(b - a).insert(insert).retain(n - b), selection);
  }

  /**
   * Makes the text `next` with one replacement (see diffOperation): what a text field
   * reports after an input. `selection`, the field's selection after the input (code
   * points), becomes the document's; with the selection before (the document's), it
   * tells where the edit was when several replacements would do (typing "a" in "aa").
   */
  setText(next: string, selection?: Selection): void {
    const hints: { before: Selection; caret?: number } = { before: this.editor.selection };
    if (selection) hints.caret = selection.head;
    const op = diffOperation(this.editor.text, next, hints);
    if (op) this.apply(op, selection);
    else if (selection) this.select(selection);
  }

  /** Sets the local selection (code points); published to the other editors. */
  select(selection: Selection): void {
    this.editor.select(selection);
    this.cursorMoved();
  }

  /** Stops: no more events; the channels are left unless `unsubscribeOnClose` is false. */
  close(): void {
    if (this.state === 'closed') return;
    this.gen += 1;
    for (const off of this.offs) off();
    this.offs.length = 0;
    clearTimeout(this.cursorTimer);
    clearInterval(this.keepAliveTimer);
    this.tracker?.stop();
    if (this.opts.unsubscribeOnClose) {
      if (this.ownsSub) this.client.unsubscribe(this.channel).catch(() => undefined);
      if (this.cursorSub) this.client.unsubscribe(this.cursorChannel).catch(() => undefined);
    }
    this.settleReady?.reject(new Error('the document was closed'));
    this.settleReady = undefined;
    this.setStatus('closed');
    this.removeAllListeners();
  }

  // ---- loading -----------------------------------------------------------------------

  /** Reads the newest snapshot, resets the editor to it and gets the operations after it. */
  private async load(reason?: ReloadEvent): Promise<void> {
    const gen = ++this.gen;
    this.busy = true;
    this.queue = [];
    this.loaded = false;
    this.syncTarget = undefined;
    this.setStatus('loading');
    let snap: SnapshotPayload | undefined;
    try {
      snap = await this.retrying(gen, () => this.client.history(this.snapChannel, { limit: 10 }), true).then((r) =>
        r ? pickSnapshot(r.publications) : undefined,
      );
    } catch (e) {
      return this.fail(gen, e);
    }
    if (gen !== this.gen) return;
    const doc = { text: snap?.text ?? '', revision: snap?.rev ?? 0, epoch: snap?.epoch ?? '' };
    this.editor.reset(doc);
    // Whatever arrived before is in history too; what arrives from now on waits.
    this.queue = [];
    if (reason) this.emit('reload', reason);
    this.emit('change', { text: doc.text, revision: doc.revision, remote: false });
    this.refreshCursors();
    if (!this.sub) {
      const held = this.client.subscriptions.find((s) => s.channel === this.channel && s.active);
      this.sub = held ?? this.client.subscribe(this.channel, { since: { offset: doc.revision, epoch: doc.epoch } });
      this.ownsSub = !held;
      this.watch(this.sub);
      if (!held) {
        // The confirmation (recovered or not) decides: see onSubscribed.
        this.busy = false;
        return;
      }
    }
    // Already subscribed (a reload, or the channel held by someone else): from history.
    this.busy = false;
    await this.catchUp(gen, true);
  }

  private watch(sub: Subscription): void {
    this.offs.push(
      sub.on('message', (m) => this.onMessage(m)),
      sub.on('subscribed', (r) => this.onSubscribed(r)),
      sub.on('presence', (d) => {
        for (const j of d.joins) this.names.set(j.user, nameOf(j.info, j.user));
        let changed = false;
        for (const l of d.leaves) changed = this.editor.removeCursor({ user: l.user }) || changed;
        if (changed) this.refreshCursors();
      }),
      sub.on('error', (e) => this.fail(this.gen, e)),
      sub.on('ended', () => {
        if (this.state !== 'closed') this.fail(this.gen, new Error(`the subscription to ${this.channel} ended`));
      }),
    );
    if (this.opts.presence) {
      const t = this.client.trackPresence(this.channel);
      this.tracker = t;
      this.offs.push(
        t.on('change', (s) => {
          for (const m of s.members) this.names.set(m.user, nameOf(m.info, m.user));
          this.refreshCursors();
        }),
      );
    }
    if (sub.result) this.onSubscribed(sub.result, true);
  }

  /** A confirmation of the document channel: the first one, or after a reconnect. */
  private onSubscribed(r: SubscribeResult, alreadyHeld = false): void {
    if (this.state === 'closed' || this.state === 'error') return;
    if (r.epoch === undefined || r.offset === undefined) {
      this.fail(this.gen, new Error(`${this.channel} keeps no history: a document needs a --history rule for it`));
      return;
    }
    if (alreadyHeld || this.busy) return; // the load in progress reads from history
    const first = !this.loaded;
    const ed = this.editor;
    this.syncTarget = undefined;
    const sameHistory = r.epoch === ed.epoch || (ed.epoch === '' && ed.revision === 0);
    if (r.recovered === true && sameHistory) {
      // Everything missed follows the reply.
      this.syncTarget = r.offset;
      this.loaded = true;
      this.setStatus(ed.revision >= r.offset ? 'ready' : 'syncing');
      this.run(ed.online(r.offset));
      return;
    }
    if (sameHistory || first) {
      // Not all of it replayed (e.g. more than the recovery limit, or the snapshot's
      // epoch is gone): read the rest from history.
      void this.catchUp(this.gen, first);
    } else {
      this.reload({ reason: `the document's history changed (epoch ${r.epoch || '(none)'})`, droppedLocal: ed.pending });
    }
  }

  /**
   * Reads the operations after the revision from history, page by page, up to the
   * channel's latest offset, then goes live. `restart`: a history of another epoch
   * than the snapshot's starts over from the snapshot as its revision 0 (a load);
   * otherwise it means a reload.
   */
  private async catchUp(gen: number, restart: boolean): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    if (this.loaded) this.setStatus('syncing');
    const ed = this.editor;
    try {
      for (;;) {
        const since = { offset: ed.revision, epoch: ed.epoch };
        const page: HistoryResult | undefined = await this.retrying(gen, () =>
          this.client.history(this.channel, { since, limit: MAX_HISTORY_PAGE }),
        );
        if (gen !== this.gen || !page) return;
        if (page.epoch !== ed.epoch && !(ed.epoch === '' && ed.revision === 0)) {
          if (restart) {
            restart = false;
            ed.reset({ text: ed.serverText, revision: 0, epoch: page.epoch });
            this.emit('change', { text: ed.text, revision: 0, remote: false });
            continue;
          }
          this.busy = false;
          return this.reload({ reason: `the document's history changed (epoch ${page.epoch || '(none)'})`, droppedLocal: ed.pending });
        }
        restart = false;
        for (const m of page.publications) {
          this.feed({ ...m, epoch: page.epoch }, true);
          if (gen !== this.gen) return;
        }
        if (ed.revision >= page.offset) {
          this.busy = false;
          this.syncTarget = undefined;
          this.loaded = true;
          const online = this.client.state.status === 'connected';
          this.setStatus(online ? 'ready' : 'offline');
          if (online) this.run(ed.online());
          this.drain();
          return;
        }
        if (page.publications.length === 0 || ed.revision !== (page.publications.at(-1)?.offset ?? -1)) {
          // History no longer holds the revision (trimmed or expired).
          this.busy = false;
          return this.reload({ reason: `the history no longer holds revision ${ed.revision}`, droppedLocal: ed.pending });
        }
      }
    } catch (e) {
      this.busy = false;
      this.fail(gen, e);
    }
  }

  /** Calls `f` until it answers, waiting after refusals for now; undefined once stale. `optional`: `bad_request` (no history rule) reads as nothing. */
  private async retrying<T>(gen: number, f: () => Promise<T>, optional = false): Promise<T | undefined> {
    let delay = 250;
    for (;;) {
      if (gen !== this.gen) return undefined;
      try {
        return await f();
      } catch (e) {
        if (optional && e instanceof ServerError && e.code === 'bad_request') return undefined;
        const transient =
          e instanceof DisconnectedError ||
          e instanceof TimeoutError ||
          (e instanceof ServerError && ['rate_limited', 'unavailable', 'internal'].includes(e.code)) ||
          (e instanceof TidingsError && e.kind === 'queue_full');
        if (!transient) throw e;
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }

  private reload(ev: ReloadEvent): void {
    const now = Date.now();
    this.reloads = this.reloads.filter((t) => now - t < 60_000);
    if (this.reloads.length >= RELOADS_PER_MINUTE) {
      this.fail(this.gen, new Error(`${this.channel}: reloaded ${RELOADS_PER_MINUTE} times within a minute; giving up (${ev.reason})`));
      return;
    }
    this.reloads.push(now);
    this.busy = false;
    void this.load(ev);
  }

  private fail(gen: number, e: unknown): void {
    if (gen !== this.gen || this.state === 'closed') return;
    const error = e instanceof Error ? e : new Error(String(e));
    this.err = error;
    this.gen += 1;
    this.busy = false;
    this.setStatus('error');
    this.settleReady?.reject(error);
    this.settleReady = undefined;
    this.emit('error', error);
  }

  // ---- the log -----------------------------------------------------------------------

  private onMessage(m: Message): void {
    if (this.state === 'closed' || this.state === 'error') return;
    if (this.busy) {
      this.queue.push(m);
      return;
    }
    this.feed(m, false);
  }

  private drain(): void {
    while (this.queue.length > 0 && !this.busy) {
      const m = this.queue.shift() as Message;
      this.feed(m, false);
    }
  }

  private feed(m: Message, fromHistory: boolean): void {
    if (m.offset === undefined) return;
    const fx = this.editor.receive({ offset: m.offset, ...(m.epoch !== undefined ? { epoch: m.epoch } : {}), event: m.event, payload: m.payload });
    if (fromHistory && fx.some((e) => e.type === 'gap')) {
      // History skipped offsets: it no longer holds them.
      const ed = this.editor;
      this.gen += 1;
      this.reload({ reason: `the history no longer holds revision ${ed.revision + 1}`, droppedLocal: ed.pending });
      return;
    }
    this.run(fx);
    if (this.syncTarget !== undefined && this.editor.revision >= this.syncTarget) {
      this.syncTarget = undefined;
      if (this.state === 'syncing') this.setStatus('ready');
    }
  }

  /** Carries out the editor's effects. */
  private run(fx: EditorEffect[]): void {
    for (const e of fx) {
      switch (e.type) {
        case 'publish':
          this.publish(e.seq, e.payload, e.expect);
          break;
        case 'snapshot':
          this.client.publish(this.snapChannel, 'snapshot', e.snapshot).catch((err: unknown) => {
            this.emit('error', new Error(`snapshot at revision ${e.snapshot.rev} not written: ${err instanceof Error ? err.message : String(err)}`));
          });
          break;
        case 'remote':
          if (this.resync) this.resync.remoteOps += 1;
          this.emit('change', { text: this.editor.text, revision: this.editor.revision, remote: true, op: e.op });
          this.refreshCursors();
          break;
        case 'acked':
          this.emit('change', { text: this.editor.text, revision: this.editor.revision, remote: false });
          this.refreshCursors();
          this.cursorMoved();
          this.maybeSynced();
          break;
        case 'skipped':
          this.emit('change', { text: this.editor.text, revision: this.editor.revision, remote: true });
          this.refreshCursors();
          break;
        case 'gap':
          if (!this.busy) void this.catchUp(this.gen, false);
          break;
        case 'reload':
          this.gen += 1;
          this.reload({ reason: e.reason, droppedLocal: e.droppedLocal });
          return;
      }
    }
  }

  private publish(seq: number, payload: JsonValue, expect: { offset: number; epoch: string }): void {
    const gen = this.gen;
    this.client.publish(this.channel, 'op', payload, { expect }).then(
      () => {
        if (gen === this.gen) this.run(this.editor.accepted(seq));
      },
      (e: unknown) => {
        if (gen !== this.gen) return;
        const ed = this.editor;
        if (e instanceof ConflictError) return this.run(ed.conflict(seq, e.offset, e.epoch));
        if (e instanceof DisconnectedError) {
          ed.offline();
          return this.run(ed.failed(seq));
        }
        if (e instanceof TimeoutError) return this.run(ed.failed(seq));
        const later = (e instanceof ServerError && ['rate_limited', 'unavailable', 'internal'].includes(e.code)) || (e instanceof TidingsError && e.kind === 'queue_full');
        if (later) {
          setTimeout(() => {
            if (gen === this.gen) this.run(ed.failed(seq));
          }, 1000);
          return;
        }
        if (e instanceof TidingsError && e.kind === 'closed') return;
        this.run(ed.rejected(seq));
        this.emit('error', e instanceof Error ? e : new Error(String(e)));
      },
    );
  }

  // ---- connection ----------------------------------------------------------------------

  private wentOffline(): void {
    if (this.state === 'closed' || this.state === 'error') return;
    this.editor.offline();
    if (!this.loaded) return;
    this.resync ??= { remoteOps: 0, offlineEdits: 0 };
    if (this.state !== 'loading') this.setStatus('offline');
  }

  /** In sync again after being offline: reported once nothing typed meanwhile is pending. */
  private maybeSynced(): void {
    const r = this.resync;
    if (!r || this.state !== 'ready' || this.editor.pending) return;
    this.resync = undefined;
    this.emit('resynced', r);
    this.cursorMoved();
  }

  private setStatus(s: DocumentStatus): void {
    if (this.state === s || this.state === 'closed') return;
    this.state = s;
    this.emit('status', s);
    if (s !== 'ready') return;
    if (this.settleReady) {
      // The first load: nothing to report about being offline before it.
      this.settleReady.resolve();
      this.settleReady = undefined;
      this.resync = undefined;
    }
    this.cursorMoved();
    this.maybeSynced();
  }

  // ---- cursors -------------------------------------------------------------------------

  private startCursors(): void {
    const held = this.client.subscriptions.find((s) => s.channel === this.cursorChannel && s.active);
    const sub = held ?? this.client.subscribe(this.cursorChannel);
    this.cursorSub = held ? undefined : sub;
    this.offs.push(
      sub.on('message', (m) => {
        if (m.event !== 'cursor' || !this.loaded) return;
        if (!this.editor.receiveCursor(m.payload)) return;
        const p = m.payload as { client: string; user: string };
        this.cursorSeen.set(p.client, Date.now());
        this.refreshCursors();
      }),
    );
    const every = this.opts.cursorKeepAliveMs;
    if (every > 0) {
      this.keepAliveTimer = setInterval(() => {
        const now = Date.now();
        let gone = false;
        for (const [client, at] of this.cursorSeen) {
          if (now - at < 3 * every) continue;
          this.cursorSeen.delete(client);
          gone = this.editor.removeCursor(client) || gone;
        }
        if (gone) this.refreshCursors();
        if (now - this.lastCursorAt >= every) this.publishCursor();
      }, every);
      (this.keepAliveTimer as { unref?: () => void }).unref?.();
    }
  }

  private refreshCursors(): void {
    if (!this.opts.cursors) return;
    const next = this.editor.remoteCursors().map((c) => ({ ...c, name: this.names.get(c.user) ?? c.user }));
    const same =
      next.length === this.cursorView.length &&
      next.every((c, i) => {
        const o = this.cursorView[i] as DocumentCursor;
        return o.client === c.client && o.anchor === c.anchor && o.head === c.head && o.name === c.name;
      });
    if (same) return;
    this.cursorView = next;
    this.emit('cursors', next);
  }

  /** The selection or the revision changed: publish the cursor, at most once per throttle interval. */
  private cursorMoved(): void {
    if (!this.opts.cursors || this.cursorTimer !== undefined) return;
    const wait = this.lastCursorAt + this.opts.cursorThrottleMs - Date.now();
    if (wait <= 0) return this.publishCursor(true);
    this.cursorTimer = setTimeout(() => {
      this.cursorTimer = undefined;
      this.publishCursor(true);
    }, wait);
  }

  private publishCursor(onlyIfChanged = false): void {
    if (!this.isLoaded || this.client.state.status !== 'connected') return;
    const state = this.client.state;
    const user = this.opts.user ?? state.user;
    const payload = this.editor.cursorPayload(user);
    const key = `${payload.rev}:${payload.anchor}:${payload.head}`;
    if (onlyIfChanged && key === this.lastCursorKey) return;
    this.lastCursorKey = key;
    this.lastCursorAt = Date.now();
    this.client.publish(this.cursorChannel, 'cursor', payload).catch(() => undefined);
  }
}

/**
 * The operation turning `prev` into `next` by one replacement, or undefined when they
 * are equal. Positions are code points. Several replacements can give the same text
 * (typing "a" in "aa"); the hints pick the one the user made: `before`, the selection
 * before the change (typing or pasting replaces it), and `caret`, where the caret is
 * in `next` (after typing, or after Backspace).
 */
export function diffOperation(prev: string, next: string, hints: { before?: Selection; caret?: number } = {}): Operation | undefined {
  if (prev === next) return undefined;
  const a = Array.from(prev);
  const b = Array.from(next);
  const sel = hints.before;
  if (sel) {
    // Typing or pasting over the selection [s, e): next = a[..s] + inserted + a[e..].
    const s = Math.min(sel.anchor, sel.head, a.length);
    const e = Math.min(Math.max(sel.anchor, sel.head), a.length);
    const tail = a.length - e;
    const fits =
      b.length >= s + tail &&
      (e > s || b.length > a.length) &&
      a.slice(0, s).every((c, i) => b[i] === c) &&
      a.slice(e).every((c, i) => b[b.length - tail + i] === c);
    if (fits) {
      return new Operation()
        .retain(s)
        .delete(e - s)
        .insert(b.slice(s, b.length - tail).join(''))
        .retain(tail);
    }
  }
  const caret = hints.caret;
  // The change starts at or before the caret and ends at or after it (in `next`).
  const startLimit = Math.min(a.length, b.length, caret ?? Infinity);
  let start = 0;
  while (start < startLimit && a[start] === b[start]) start++;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1] && (caret === undefined || endB > caret)) {
    endA--;
    endB--;
  }
  return new Operation()
    .retain(start)
    .delete(endA - start)
    .insert(b.slice(start, endB).join(''))
    .retain(a.length - endA);
}

/** The code point position of the UTF-16 offset `i` of `text` (a DOM selection offset). */
export function codePointIndex(text: string, i: number): number {
  return codePointLength(text.slice(0, Math.max(0, Math.min(i, text.length))));
}

/** The UTF-16 offset of the code point position `p` of `text` (for a DOM selection). */
export function utf16Index(text: string, p: number): number {
  let i = 0;
  for (let k = 0; k < p && i < text.length; k++) {
    const c = text.charCodeAt(i);
    i += c >= 0xd800 && c <= 0xdbff && i + 1 < text.length ? 2 : 1;
  }
  return i;
}

/** Opens a collaborative document on `channel` (e.g. `doc:42`); see CollabDocument. */
export function openDocument(client: TidingsClient, channel: string, opts: DocumentOptions = {}): CollabDocument {
  return new CollabDocument(client, channel, opts);
}
