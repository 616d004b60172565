// The editing protocol of docs/collaboration.md ("The editing protocol") as a pure
// state machine: no I/O, no timers. Inputs are local edits, the document channel's
// messages in log order, and the outcomes of its own publishes; outputs are effects
// (publish this operation expecting that position, write a snapshot, the text
// changed, a gap to fill, reload) that a driver carries out: CollabDocument over a
// TidingsClient, or a simulation in the tests.
//
// One operation in flight, a buffer of the local edits made meanwhile, remote
// operations transformed against both (`transform(remote, inflight)`: the operation
// already in the log goes first at equal positions), a conflict rebased and sent
// again once the revision reaches the conflict's offset, the editor's own operation
// recognized in the log by `client` and `seq`.

import type { JsonValue, Since } from '../frames.js';
import {
  codePointLength,
  compose,
  invert,
  Operation,
  OtError,
  transform,
  transformPosition,
  type Selection,
  type WireComponent,
} from './ot.js';

/** The payload of an `op` message on a document channel. */
export type OpPayload = {
  op: WireComponent[];
  /** The editor instance that made it (random, one per open document). */
  client: string;
  /** Its sequence number within that editor: 1, 2, ... */
  seq: number;
};

/** The payload of a `snapshot` message on `snap:<doc>`: the text at revision `rev` of `epoch`. */
export type SnapshotPayload = {
  rev: number;
  epoch: string;
  text: string;
};

/** The payload of a `cursor` message on `cursor:<doc>`: a selection at revision `rev`. */
export type CursorPayload = {
  client: string;
  user: string;
  rev: number;
  anchor: number;
  head: number;
};

/** A message of the document channel, as the editor reads it. */
export interface LogEntry {
  offset: number;
  /** The history epoch of `offset`, when the message says. */
  epoch?: string;
  event: string;
  payload: JsonValue;
}

/** Another editor's selection, in the coordinates of this editor's text. */
export interface RemoteCursor {
  client: string;
  user: string;
  anchor: number;
  head: number;
}

export type EditorEffect =
  /** Publish `payload` (event `op`) on the document channel expecting `expect`; report the outcome with accepted/conflict/failed/rejected(seq). */
  | { type: 'publish'; seq: number; payload: OpPayload; expect: Since }
  /** Publish this snapshot (event `snapshot`) on `snap:<doc>` (a plain publish). */
  | { type: 'snapshot'; snapshot: SnapshotPayload }
  /** A remote operation changed the text: `op` is what was applied to the local text. */
  | { type: 'remote'; op: Operation; offset: number }
  /** The editor's own operation `seq` reached the log at `offset`. */
  | { type: 'acked'; seq: number; offset: number }
  /** The message at `offset` is not an operation that applies: skipped (by every editor alike). */
  | { type: 'skipped'; offset: number; reason: string }
  /** A message beyond the next offset arrived: the entries after `from` (up to `to`) are missing; fetch them and feed them in. */
  | { type: 'gap'; from: number; to: number }
  /**
   * The history the editor stands on is gone (another epoch): load the document again
   * from its newest snapshot and `reset()`. `droppedLocal`: local edits not yet in the
   * log are lost.
   */
  | { type: 'reload'; reason: string; droppedLocal: boolean };

export interface EditorOptions {
  /** The editor's id in its operations and cursors (default: random). */
  client?: string;
  /** The text at `revision` (default empty, revision 0). */
  text?: string;
  revision?: number;
  /** The history epoch of `revision` (default `""`: no history yet). */
  epoch?: string;
  /** A snapshot after each own operation whose revision is a multiple of this (default 500; 0: none). */
  snapshotInterval?: number;
  /**
   * The largest wire form of one published operation, in UTF-8 bytes (default 32 KiB):
   * a larger edit (a big paste) goes out as several operations, one after the other.
   */
  maxOpBytes?: number;
  /** How many recent log operations are kept to move late remote cursors (default 1000). */
  cursorWindow?: number;
}

interface Inflight {
  op: Operation;
  seq: number;
  /** A publish of it is out, its outcome not known yet. */
  sending: boolean;
  /** Send it (again) once the revision is at least this; undefined: wait. */
  resendAt: number | undefined;
}

/** A random editor id: 16 hex digits. */
export function randomClientId(random: () => number = Math.random): string {
  let s = '';
  for (let i = 0; i < 16; i++) s += Math.floor(random() * 16).toString(16);
  return s;
}

function isObj(v: JsonValue | undefined): v is { [key: string]: JsonValue } {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const isIndex = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** The UTF-8 bytes of code point `c` in the compact JSON form of a string. */
function jsonBytes(c: number): number {
  if (c === 0x22 || c === 0x5c || c === 0x08 || c === 0x09 || c === 0x0a || c === 0x0c || c === 0x0d) return 2;
  if (c < 0x20) return 6;
  if (c < 0x80) return 1;
  if (c < 0x800) return 2;
  if (c < 0x10000) return 3;
  return 4;
}

/** The size of `s` in the compact JSON form (quotes included), in UTF-8 bytes. */
function jsonSize(s: string): number {
  let bytes = 2;
  for (let i = 0; i < s.length; ) {
    const c = s.codePointAt(i) ?? 0;
    bytes += jsonBytes(c);
    i += c >= 0x10000 ? 2 : 1;
  }
  return bytes;
}

/** The longest end of `s` whose JSON form fits `budget` bytes: where it starts (UTF-16) and its code points. */
function jsonTail(s: string, budget: number): { from: number; points: number } {
  let bytes = 2;
  let from = s.length;
  let points = 0;
  while (from > 0) {
    const low = s.charCodeAt(from - 1);
    const w = from >= 2 && low >= 0xdc00 && low <= 0xdfff && s.charCodeAt(from - 2) >= 0xd800 && s.charCodeAt(from - 2) <= 0xdbff ? 2 : 1;
    const b = jsonBytes(s.codePointAt(from - w) ?? 0);
    if (bytes + b > budget) break;
    bytes += b;
    from -= w;
    points += 1;
  }
  return { from, points };
}

/**
 * Splits `op` into `[head, tail]` with `compose(head, tail)` equal to `op` and the wire
 * form of `head` within `maxBytes` (beyond only when its first change, one component
 * or one code point of an insert, with the retains before it does not fit: head always
 * changes something); `tail` is undefined when `op` fits.
 *
 * An insert too long for head is cut so that head inserts its **end** and tail the
 * rest before it: another editor's text inserted at the same place meanwhile then
 * lands before or after the whole insert (the operation first in the log goes first
 * at equal positions), never inside it, as it would between a first part and the rest.
 */
export function splitOperation(op: Operation, maxBytes: number): [Operation, Operation | undefined] {
  const comps = op.components;
  // Room for the retain that ends head.
  let size = 2 + 1 + String(op.baseLen).length;
  const head = new Operation();
  let base = 0; // base length consumed by head's components
  let target = 0; // target length produced by them
  let changed = false; // head inserts or deletes something (else it would make no progress)
  for (let k = 0; k < comps.length; k++) {
    const c = comps[k] as WireComponent;
    const sep = k > 0 ? 1 : 0;
    if (typeof c === 'number') {
      const b = String(c).length + sep;
      if (size + b > maxBytes && changed) return finish(k);
      size += b;
      if (c > 0) {
        head.retain(c);
        base += c;
        target += c;
      } else {
        head.delete(-c);
        base += -c;
        changed = true;
      }
      continue;
    }
    const bytes = jsonSize(c);
    if (size + sep + bytes <= maxBytes) {
      size += sep + bytes;
      head.insert(c);
      target += codePointLength(c);
      changed = true;
      continue;
    }
    // Cut the insert: head takes its end (at least one code point when head changes nothing yet).
    let { from, points } = jsonTail(c, maxBytes - size - sep);
    if (points === 0) {
      if (changed) return finish(k);
      const low = c.charCodeAt(c.length - 1);
      from = c.length - (c.length >= 2 && low >= 0xdc00 && low <= 0xdfff ? 2 : 1);
      points = 1;
    }
    head.insert(c.slice(from));
    return finish(k, { from, points });
  }
  return [op, undefined];

  /** head = components before k (and the end of an insert at k), then retain the rest. */
  function finish(k: number, cut?: { from: number; points: number }): [Operation, Operation] {
    head.retain(op.baseLen - base);
    const tail = new Operation().retain(target);
    for (let j = k; j < comps.length; j++) {
      const c = comps[j] as WireComponent;
      if (typeof c === 'string') {
        if (j === k && cut) tail.insert(c.slice(0, cut.from)).retain(cut.points);
        else tail.insert(c);
      } else if (c > 0) tail.retain(c);
      else tail.delete(-c);
    }
    return [head, tail];
  }
}

/**
 * One open document's editing state: the text, its revision and epoch, at most one
 * operation in flight and a buffer. Every method returns the effects it caused, in
 * order; the caller carries them out and reports back.
 */
export class Editor {
  readonly client: string;
  private local: string;
  /** The text at `revision`: the log applied in order (what a snapshot holds). */
  private server: string;
  private rev: number;
  private ep: string;
  private nextSeq = 1;
  private inflightOp: Inflight | undefined;
  private buffer: Operation | undefined;
  private sel: Selection = { anchor: 0, head: 0 };
  private connected = false;
  /** Send nothing before the revision reaches this (the end of a replay after a reconnect). */
  private syncTarget: number | undefined;
  private readonly snapshotInterval: number;
  private maxOpBytes: number;
  private readonly windowSize: number;
  /** The log operations at offsets windowStart + 1 ..= rev, with their editor (null: skipped). */
  private window: ({ op: Operation; client: unknown } | null)[] = [];
  private windowStart: number;
  private readonly cursors = new Map<string, CursorPayload>();
  private out: EditorEffect[] = [];

  constructor(opts: EditorOptions = {}) {
    this.client = opts.client ?? randomClientId();
    this.local = opts.text ?? '';
    this.server = this.local;
    this.rev = opts.revision ?? 0;
    this.ep = opts.epoch ?? '';
    this.windowStart = this.rev;
    this.snapshotInterval = opts.snapshotInterval ?? 500;
    this.maxOpBytes = Math.max(16, opts.maxOpBytes ?? 32 * 1024);
    this.windowSize = opts.cursorWindow ?? 1000;
  }

  /** The local text: the log up to `revision` plus the edits not yet in it. */
  get text(): string {
    return this.local;
  }

  /** The text at `revision` (without the local edits not yet in the log). */
  get serverText(): string {
    return this.server;
  }

  /** The offset of the last log entry applied (0 before the first). */
  get revision(): number {
    return this.rev;
  }

  /** The history epoch `revision` belongs to (`""` before the log has one). */
  get epoch(): string {
    return this.ep;
  }

  /** The local selection, in code points. */
  get selection(): Selection {
    return this.sel;
  }

  /** Local edits not yet seen in the log (in flight or buffered). */
  get pending(): boolean {
    return this.inflightOp !== undefined || this.buffer !== undefined;
  }

  /** The sequence number of the operation in flight, if any. */
  get inflightSeq(): number | undefined {
    return this.inflightOp?.seq;
  }

  /** Whether the editor may publish (online and caught up); see online()/offline(). */
  get canSend(): boolean {
    return this.connected && (this.syncTarget === undefined || this.rev >= this.syncTarget);
  }

  // ---- local input ---------------------------------------------------------------

  /**
   * A local edit: `op` applies to the current `text`. Applied at once; published when
   * nothing is in flight, else composed into the buffer. The selection moves with it
   * (as the typist's own) unless one is given.
   *
   * @throws {OtError} when `op` does not apply to the text (nothing changes then).
   */
  edit(op: Operation, selection?: Selection): EditorEffect[] {
    const text = op.apply(this.local);
    this.local = text;
    this.sel = selection ?? {
      anchor: transformPosition(this.sel.anchor, op, true),
      head: transformPosition(this.sel.head, op, true),
    };
    if (!op.isNoop()) {
      this.buffer = this.buffer ? compose(this.buffer, op) : op;
      this.trySend();
    }
    return this.flush();
  }

  /** Changes the largest wire form of one published operation (UTF-8 bytes, at least 16). */
  setMaxOpBytes(n: number): void {
    this.maxOpBytes = Math.max(16, n);
  }

  /** Sets the local selection (code points in `text`). */
  select(selection: Selection): void {
    const n = codePointLength(this.local);
    const clamp = (p: number): number => Math.max(0, Math.min(n, Math.floor(p)));
    this.sel = { anchor: clamp(selection.anchor), head: clamp(selection.head) };
  }

  // ---- the log ---------------------------------------------------------------------

  /**
   * The document channel's next message (live, replayed, or read from history). An
   * offset at or below `revision` is a duplicate and ignored; one beyond the next
   * offset is a `gap` (nothing applied). An `op` from this editor with the sequence
   * number in flight acknowledges it; any other operation is transformed against the
   * one in flight and the buffer and applied. A message that is not an operation
   * applying to the text at `revision` is skipped.
   */
  receive(m: LogEntry): EditorEffect[] {
    if (m.epoch !== undefined && m.epoch !== this.ep) {
      if (this.ep === '' && this.rev === 0) {
        this.ep = m.epoch; // the document's first history
      } else {
        this.out.push({ type: 'reload', reason: `the document's history is now epoch ${m.epoch}`, droppedLocal: this.pending });
        return this.flush();
      }
    }
    if (m.offset <= this.rev) return this.flush();
    if (m.offset > this.rev + 1) {
      this.out.push({ type: 'gap', from: this.rev, to: m.offset });
      return this.flush();
    }
    const parsed = this.parse(m);
    if (typeof parsed === 'string') {
      this.advance(null, undefined);
      this.out.push({ type: 'skipped', offset: this.rev, reason: parsed });
    } else {
      const p = m.payload as { client?: unknown; seq?: unknown };
      const f = this.inflightOp;
      if (f && p.client === this.client && p.seq === f.seq) this.ack(parsed, f);
      else this.applyRemote(parsed, p.client);
    }
    this.trySend();
    return this.flush();
  }

  /** The operation of a message, or why it does not apply. */
  private parse(m: LogEntry): Operation | string {
    if (m.event !== 'op') return `event ${m.event}`;
    if (!isObj(m.payload) || m.payload.op === undefined) return 'no operation in the payload';
    let op: Operation;
    try {
      op = Operation.fromJSON(m.payload.op);
    } catch (e) {
      return e instanceof OtError ? e.code : 'malformed';
    }
    const n = codePointLength(this.server);
    if (op.baseLen !== n) return `base length ${op.baseLen}, the document has ${n}`;
    return op;
  }

  private ack(op: Operation, f: Inflight): void {
    this.server = op.apply(this.server);
    this.advance(op, this.client);
    this.inflightOp = undefined;
    this.out.push({ type: 'acked', seq: f.seq, offset: this.rev });
    if (this.snapshotInterval > 0 && this.rev % this.snapshotInterval === 0) {
      this.out.push({ type: 'snapshot', snapshot: { rev: this.rev, epoch: this.ep, text: this.server } });
    }
  }

  private applyRemote(op: Operation, author: unknown): void {
    this.server = op.apply(this.server);
    let r = op;
    const f = this.inflightOp;
    if (f) {
      const [r2, f2] = transform(r, f.op);
      r = r2;
      f.op = f2;
    }
    if (this.buffer) {
      const [r3, b2] = transform(r, this.buffer);
      r = r3;
      this.buffer = b2;
    }
    this.local = r.apply(this.local);
    this.sel = {
      anchor: transformPosition(this.sel.anchor, r, false),
      head: transformPosition(this.sel.head, r, false),
    };
    this.advance(op, author);
    this.out.push({ type: 'remote', op: r, offset: this.rev });
  }

  /**
   * The revision moves on by one; `op` (null: skipped) of the editor `author` joins
   * the window; cursors move along (an editor's own caret after what it inserted at it).
   */
  private advance(op: Operation | null, author: unknown): void {
    this.rev += 1;
    this.window.push(op ? { op, client: author } : null);
    if (this.window.length > this.windowSize) {
      const drop = this.window.length - this.windowSize;
      this.window.splice(0, drop);
      this.windowStart += drop;
    }
    if (!op) {
      for (const c of this.cursors.values()) if (c.rev === this.rev - 1) c.rev = this.rev;
      return;
    }
    for (const c of this.cursors.values()) {
      if (c.rev !== this.rev - 1) continue;
      const own = c.client === author;
      c.anchor = transformPosition(c.anchor, op, own);
      c.head = transformPosition(c.head, op, own);
      c.rev = this.rev;
    }
  }

  // ---- outcomes of publishes ---------------------------------------------------------

  /** The publish of `seq` was accepted. Nothing changes until the operation shows up in the log. */
  accepted(seq: number): EditorEffect[] {
    const f = this.inflightOp;
    if (f?.seq === seq) f.sending = false;
    return this.flush();
  }

  /**
   * The publish of `seq` was refused with `conflict`: the channel is at `offset` of
   * `epoch`. The operation is sent again (rebased by then) once the revision reaches
   * `offset`. Another epoch means the history the editor stands on is gone: `reload`.
   */
  conflict(seq: number, offset: number, epoch: string): EditorEffect[] {
    const f = this.inflightOp;
    if (f?.seq !== seq) return this.flush();
    f.sending = false;
    const fresh = this.ep === '' && this.rev === 0;
    if (epoch !== this.ep && !fresh) {
      this.out.push({ type: 'reload', reason: `the document's history is now epoch ${epoch || '(none)'}`, droppedLocal: true });
      return this.flush();
    }
    f.resendAt = offset;
    this.trySend();
    return this.flush();
  }

  /**
   * The outcome of the publish of `seq` is unknown (the connection dropped, no reply
   * in time) or worth another try (rate limited): it is sent again expecting the
   * revision of the moment, as soon as the editor may send. Safe: if the first one
   * went through, it shows up in the log first and acknowledges the operation, and
   * two publishes expecting one position never both go through.
   */
  failed(seq: number): EditorEffect[] {
    const f = this.inflightOp;
    if (f?.seq !== seq) return this.flush();
    f.sending = false;
    f.resendAt = this.rev;
    this.trySend();
    return this.flush();
  }

  /** The publish of `seq` was refused for good (e.g. `forbidden`): it stays unsent until `retry()`. */
  rejected(seq: number): EditorEffect[] {
    const f = this.inflightOp;
    if (f?.seq === seq) {
      f.sending = false;
      f.resendAt = undefined;
    }
    return this.flush();
  }

  /** Sends the operation in flight again if it is waiting for nothing in particular (after `rejected`). */
  retry(): EditorEffect[] {
    const f = this.inflightOp;
    if (f && !f.sending && f.resendAt === undefined) f.resendAt = this.rev;
    this.trySend();
    return this.flush();
  }

  // ---- connection --------------------------------------------------------------------

  /** The connection is gone: publish nothing until `online()`; local edits go into the buffer. */
  offline(): void {
    this.connected = false;
  }

  /**
   * The document channel is subscribed (again) and its replay, up to `catchUpTo` (the
   * subscription's latest offset), follows: publishing resumes once the revision gets
   * there, with the operation in flight first.
   */
  online(catchUpTo?: number): EditorEffect[] {
    this.connected = true;
    this.syncTarget = catchUpTo !== undefined && catchUpTo > this.rev ? catchUpTo : undefined;
    this.trySend();
    return this.flush();
  }

  /**
   * Starts over from a loaded document (after a `reload`): the text at `revision` of
   * `epoch`. Local edits not in the log are dropped; cursors are forgotten.
   */
  reset(doc: { text: string; revision: number; epoch: string }): void {
    this.local = doc.text;
    this.server = doc.text;
    this.rev = doc.revision;
    this.ep = doc.epoch;
    this.inflightOp = undefined;
    this.buffer = undefined;
    this.syncTarget = undefined;
    this.window = [];
    this.windowStart = doc.revision;
    this.cursors.clear();
    const n = codePointLength(doc.text);
    this.sel = { anchor: Math.min(this.sel.anchor, n), head: Math.min(this.sel.head, n) };
  }

  private trySend(): void {
    if (!this.canSend) return;
    const f = this.inflightOp;
    if (f) {
      if (!f.sending && f.resendAt !== undefined && this.rev >= f.resendAt) this.send(f);
      return;
    }
    const b = this.buffer;
    if (!b) return;
    if (b.isNoop()) {
      this.buffer = undefined;
      return;
    }
    const [head, tail] = splitOperation(b, this.maxOpBytes);
    this.buffer = tail;
    const next: Inflight = { op: head, seq: this.nextSeq++, sending: false, resendAt: this.rev };
    this.inflightOp = next;
    this.send(next);
  }

  private send(f: Inflight): void {
    f.sending = true;
    f.resendAt = undefined;
    this.out.push({
      type: 'publish',
      seq: f.seq,
      payload: { op: [...f.op.components], client: this.client, seq: f.seq },
      expect: { offset: this.rev, epoch: this.ep },
    });
  }

  private flush(): EditorEffect[] {
    const out = this.out;
    this.out = [];
    return out;
  }

  // ---- cursors -----------------------------------------------------------------------

  /** The local edits not yet in the log, as one operation on `serverText` (undefined: none). */
  private pendingOp(): Operation | undefined {
    const f = this.inflightOp?.op;
    const b = this.buffer;
    if (f && b) return compose(f, b);
    return f ?? b;
  }

  /**
   * This editor's selection as a `cursor` payload: at `revision`, in the coordinates
   * of `serverText` (a caret inside text not yet in the log sits where that text goes).
   */
  cursorPayload(user: string): CursorPayload {
    let { anchor, head } = this.sel;
    const p = this.pendingOp();
    if (p) {
      const inv = invert(p, this.server);
      anchor = transformPosition(anchor, inv, false);
      head = transformPosition(head, inv, false);
    }
    return { client: this.client, user, rev: this.rev, anchor, head };
  }

  /**
   * Another editor's selection from `cursor:<doc>` (its own are ignored): moved through
   * the operations between its revision and this one, as a remote caret except through
   * that editor's own operations, which move it past what it inserted at it (kept for the last
   * `cursorWindow` revisions; older ones are dropped), or held until this editor
   * reaches its revision. Returns whether it was taken.
   */
  receiveCursor(payload: JsonValue): boolean {
    if (!isObj(payload)) return false;
    const { client, user, rev, anchor, head } = payload;
    if (typeof client !== 'string' || client === this.client || !isIndex(rev) || !isIndex(anchor) || !isIndex(head)) return false;
    const c: CursorPayload = { client, user: typeof user === 'string' ? user : '', rev, anchor, head };
    if (rev < this.rev) {
      if (rev < this.windowStart) return false;
      for (let r = rev; r < this.rev; r++) {
        const w = this.window[r - this.windowStart];
        if (!w) continue;
        const own = w.client === client;
        c.anchor = transformPosition(c.anchor, w.op, own);
        c.head = transformPosition(c.head, w.op, own);
      }
      c.rev = this.rev;
    }
    this.cursors.set(client, c);
    return true;
  }

  /** Forgets the cursor of an editor (`client`), or every cursor of a user (`{user}`). */
  removeCursor(who: string | { user: string }): boolean {
    if (typeof who === 'string') return this.cursors.delete(who);
    let any = false;
    for (const [k, c] of this.cursors) {
      if (c.user !== who.user) continue;
      this.cursors.delete(k);
      any = true;
    }
    return any;
  }

  /** The other editors' selections in the coordinates of `text` (those at a revision not reached yet are left out). */
  remoteCursors(): RemoteCursor[] {
    const p = this.pendingOp();
    const out: RemoteCursor[] = [];
    for (const c of this.cursors.values()) {
      if (c.rev !== this.rev) continue;
      const anchor = p ? transformPosition(c.anchor, p, false) : c.anchor;
      const head = p ? transformPosition(c.head, p, false) : c.head;
      out.push({ client: c.client, user: c.user, anchor, head });
    }
    return out.sort((a, b) => (a.client < b.client ? -1 : a.client > b.client ? 1 : 0));
  }
}
