// The editing protocol's state machine (src/collab/editor.ts) against a simulated
// gateway: an in-memory ordered log with conditional append, N editors whose
// publishes, replies and deliveries are reordered between editors and delayed at
// random, with connections that drop (requests lost or processed with their reply
// lost, deliveries cut) and come back (replay from the editor's revision). fast-check
// drives the choices; at the end every editor must hold the same text as the log,
// every character typed must be there unless someone deleted it, and no two
// characters may ever change order.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import {
  Editor,
  Operation,
  codePointLength,
  splitOperation,
  compose,
  type EditorEffect,
  type LogEntry,
  type OpPayload,
  type SnapshotPayload,
} from '../src/collab/index.js';

const RUNS = Number(process.env.COLLAB_RUNS ?? 300);

// ---- the simulated gateway -----------------------------------------------------------

interface Request {
  seq: number;
  payload: OpPayload;
  expect: { offset: number; epoch: string };
}

type Reply = { seq: number; ok: true } | { seq: number; ok: false; offset: number; epoch: string };

class Log {
  readonly entries: LogEntry[] = [];
  readonly snapshots: SnapshotPayload[] = [];
  constructor(readonly epoch = 'E1') {}

  /** The conditional append of the gateway's publish script. */
  append(r: Request): Reply {
    const top = this.entries.length;
    const epoch = top === 0 ? '' : this.epoch;
    if (r.expect.offset !== top || (r.expect.epoch !== epoch && top !== 0)) {
      return { seq: r.seq, ok: false, offset: top, epoch };
    }
    this.entries.push({ offset: top + 1, epoch: this.epoch, event: 'op', payload: r.payload });
    return { seq: r.seq, ok: true };
  }

  /** The text after the first `rev` entries. */
  textAt(initial: string, rev: number): string {
    let t = initial;
    for (const e of this.entries.slice(0, rev)) {
      const p = e.payload as unknown as OpPayload;
      t = Operation.fromJSON(p.op).apply(t);
    }
    return t;
  }
}

interface Peer {
  ed: Editor;
  connected: boolean;
  /** Offset of the last log entry handed to the editor's connection (it delivers them in order). */
  delivered: number;
  requests: Request[];
  replies: Reply[];
  /** The local text after each own edit (for the order check). */
  seen: string[];
}

/** Unique characters: BMP CJK and astral (CJK Extension B) alternately, so code points matter. */
class Chars {
  private n = 0;
  readonly typed = new Set<string>();
  readonly deleted = new Set<string>();
  next(): string {
    this.n += 1;
    const c = this.n % 2 === 0 ? String.fromCodePoint(0x20000 + this.n) : String.fromCodePoint(0x4e00 + this.n);
    this.typed.add(c);
    return c;
  }
}

class Tape {
  private i = 0;
  constructor(private readonly xs: number[]) {}
  get done(): boolean {
    return this.i >= this.xs.length;
  }
  /** 0 <= n < k. */
  pick(k: number): number {
    const x = this.xs[this.i++] ?? 0;
    return k <= 1 ? 0 : x % k;
  }
}

class Sim {
  readonly log = new Log();
  readonly peers: Peer[] = [];
  readonly chars = new Chars();
  readonly effects: EditorEffect[] = [];
  readonly initial: string;
  drops = 0;

  constructor(n: number, opts: { snapshotInterval: number; maxOpBytes: number }) {
    let init = '';
    for (let i = 0; i < 4; i++) init += this.chars.next();
    this.initial = init;
    for (let i = 0; i < n; i++) {
      const ed = new Editor({ client: `ed${i}`, text: init, ...opts });
      this.peers.push({ ed, connected: false, delivered: 0, requests: [], replies: [], seen: [] });
    }
    for (const p of this.peers) this.reconnect(p);
  }

  private run(p: Peer, fx: EditorEffect[]): void {
    for (const e of fx) {
      this.effects.push(e);
      switch (e.type) {
        case 'publish':
          assert.ok(p.connected, 'publishes only while online');
          p.requests.push({ seq: e.seq, payload: e.payload, expect: e.expect });
          break;
        case 'snapshot':
          this.log.snapshots.push(e.snapshot);
          break;
        case 'gap':
        case 'reload':
        case 'skipped':
          assert.fail(`unexpected ${JSON.stringify(e)}`);
          break;
        default:
          break;
      }
    }
  }

  edit(p: Peer, t: Tape): void {
    const len = codePointLength(p.ed.text);
    const at = t.pick(len + 1);
    const op = new Operation().retain(at);
    const kind = t.pick(4);
    let del = 0;
    if (kind >= 2 && at < len) {
      del = 1 + t.pick(Math.min(3, len - at));
      for (const c of Array.from(p.ed.text).slice(at, at + del)) this.chars.deleted.add(c);
      op.delete(del);
    }
    if (kind !== 2) {
      let s = '';
      for (let k = t.pick(3); k >= 0; k--) s += this.chars.next();
      op.insert(s);
    }
    op.retain(len - at - del);
    this.run(p, p.ed.edit(op));
    p.seen.push(p.ed.text);
  }

  /** The gateway takes the peer's oldest request. */
  serve(p: Peer): void {
    const r = p.requests.shift();
    if (r) p.replies.push(this.log.append(r));
  }

  reply(p: Peer): void {
    const r = p.replies.shift();
    if (!r) return;
    this.run(p, r.ok ? p.ed.accepted(r.seq) : p.ed.conflict(r.seq, r.offset, r.epoch));
  }

  deliver(p: Peer): void {
    if (!p.connected || p.delivered >= this.log.entries.length) return;
    const e = this.log.entries[p.delivered] as LogEntry;
    p.delivered += 1;
    this.run(p, p.ed.receive(e));
  }

  /** The connection drops: each request not taken yet is lost or taken with its reply lost. */
  disconnect(p: Peer, t: Tape): void {
    if (!p.connected) return;
    p.connected = false;
    this.drops += 1;
    p.ed.offline();
    for (const r of p.requests) if (t.pick(2) === 0) this.log.append(r);
    const outstanding = [...p.requests.map((r) => r.seq), ...p.replies.map((r) => r.seq)];
    p.requests = [];
    p.replies = [];
    for (const seq of outstanding) this.run(p, p.ed.failed(seq));
  }

  /** Resubscribes from the editor's revision: the replay follows, then live entries. */
  reconnect(p: Peer): void {
    if (p.connected) return;
    p.connected = true;
    p.delivered = p.ed.revision;
    this.run(p, p.ed.online(this.log.entries.length));
  }

  step(t: Tape): void {
    const p = this.peers[t.pick(this.peers.length)] as Peer;
    const r = t.pick(100);
    if (r < 25) this.edit(p, t);
    else if (r < 45) this.serve(p);
    else if (r < 60) this.reply(p);
    else if (r < 93) this.deliver(p);
    else if (r < 97) this.disconnect(p, t);
    else this.reconnect(p);
  }

  /** Everybody back online; serve, reply and deliver until nothing moves. */
  settle(): void {
    for (const p of this.peers) this.reconnect(p);
    for (let guard = 0; guard < 100_000; guard++) {
      let moved = false;
      for (const p of this.peers) {
        if (p.requests.length) {
          this.serve(p);
          moved = true;
        }
        if (p.replies.length) {
          this.reply(p);
          moved = true;
        }
        if (p.delivered < this.log.entries.length) {
          this.deliver(p);
          moved = true;
        }
      }
      if (!moved) return;
    }
    assert.fail('no quiescence');
  }
}

function checkConverged(sim: Sim): void {
  const final = sim.log.textAt(sim.initial, sim.log.entries.length);
  for (const [i, p] of sim.peers.entries()) {
    assert.equal(p.ed.pending, false, `editor ${i} still has local edits`);
    assert.equal(p.ed.revision, sim.log.entries.length, `editor ${i}'s revision`);
    assert.equal(p.ed.text, final, `editor ${i}'s text`);
    assert.equal(p.ed.serverText, final);
  }
  // Every character typed is there exactly once unless someone deleted it.
  const chars = Array.from(final);
  assert.equal(new Set(chars).size, chars.length, 'a character twice');
  const want = [...sim.chars.typed].filter((c) => !sim.chars.deleted.has(c)).sort();
  assert.deepEqual([...chars].sort(), want);
  // No two characters ever swap: what an editor saw keeps its order in the result.
  const inFinal = new Set(chars);
  for (const p of sim.peers) {
    for (const seen of p.seen) {
      const s = Array.from(seen).filter((c) => inFinal.has(c));
      const inSeen = new Set(s);
      assert.deepEqual(s, chars.filter((c) => inSeen.has(c)), 'characters changed order');
    }
  }
  // Snapshots hold the log's text at their revision.
  for (const s of sim.log.snapshots) {
    assert.equal(s.epoch, 'E1');
    assert.equal(s.text, sim.log.textAt(sim.initial, s.rev), `snapshot at ${s.rev}`);
  }
}

test('N editors with random delays, reordering, drops and reconnects converge and keep every intention', (t) => {
  let publishes = 0;
  let entries = 0;
  let snapshots = 0;
  let drops = 0;
  fc.assert(
    fc.property(
      fc.integer({ min: 2, max: 5 }),
      fc.constantFrom(3, 7, 500),
      fc.constantFrom(16, 40, 32 * 1024),
      fc.array(fc.nat(), { minLength: 50, maxLength: 1500, size: 'max' }),
      (n, snapshotInterval, maxOpBytes, tape) => {
        const sim = new Sim(n, { snapshotInterval, maxOpBytes });
        const t = new Tape(tape);
        while (!t.done) sim.step(t);
        sim.settle();
        checkConverged(sim);
        // A late joiner loads the newest snapshot and replays the rest.
        const snap = sim.log.snapshots.reduce<SnapshotPayload | undefined>((a, s) => (a && a.rev >= s.rev ? a : s), undefined);
        const late = new Editor({ text: snap?.text ?? sim.initial, revision: snap?.rev ?? 0, epoch: snap?.epoch ?? '' });
        for (const e of sim.log.entries) late.receive(e);
        assert.equal(late.text, sim.log.textAt(sim.initial, sim.log.entries.length));
        publishes += sim.effects.filter((e) => e.type === 'publish').length;
        entries += sim.log.entries.length;
        snapshots += sim.log.snapshots.length;
        drops += sim.drops;
      },
    ),
    { numRuns: RUNS },
  );
  // The runs did what they are for: conflicts (more publishes than entries), snapshots, drops.
  assert.ok(publishes > entries * 1.2, `${publishes} publishes for ${entries} entries`);
  assert.ok(snapshots > RUNS && drops > RUNS, `${snapshots} snapshots, ${drops} dropped connections`);
  t.diagnostic(`${RUNS} runs: ${entries} log entries, ${publishes} publishes, ${snapshots} snapshots, ${drops} dropped connections`);
});

test('a conflict: the operation is rebased over what came first and sent again expecting the conflict offset', () => {
  const a = new Editor({ client: 'a', text: 'abc' });
  const b = new Editor({ client: 'b', text: 'abc' });
  const log = new Log();
  a.online(0);
  b.online(0);
  const [pa] = a.edit(Operation.fromJSON(['X', 3]));
  const [pb] = b.edit(Operation.fromJSON([3, 'Y']));
  assert.ok(pa?.type === 'publish' && pb?.type === 'publish');
  assert.deepEqual(pa.expect, { offset: 0, epoch: '' });
  assert.deepEqual(pa.payload, { op: ['X', 3], client: 'a', seq: 1 });
  assert.deepEqual(log.append(pa), { seq: 1, ok: true });
  const refused = log.append(pb);
  assert.deepEqual(refused, { seq: 1, ok: false, offset: 1, epoch: 'E1' });
  // b hears of the conflict before the operation that caused it: it waits.
  assert.deepEqual(b.conflict(1, 1, 'E1'), []);
  // While waiting, b types on: buffered.
  assert.deepEqual(b.edit(Operation.fromJSON([4, 'Z'])), []);
  assert.equal(b.text, 'abcYZ');
  const fx = b.receive(log.entries[0] as LogEntry);
  assert.deepEqual(
    fx.map((e) => e.type),
    ['remote', 'publish'],
  );
  const again = fx[1];
  assert.ok(again?.type === 'publish');
  assert.deepEqual(again.payload, { op: [4, 'Y'], client: 'b', seq: 1 }, 'rebased, same seq');
  assert.deepEqual(again.expect, { offset: 1, epoch: 'E1' });
  assert.equal(b.text, 'XabcYZ');
  assert.deepEqual(log.append(again), { seq: 1, ok: true });
  // a acknowledges its own and takes b's; b acknowledges and sends the buffer.
  assert.deepEqual(a.receive(log.entries[0] as LogEntry).map((e) => e.type), ['acked']);
  assert.deepEqual(a.receive(log.entries[1] as LogEntry).map((e) => e.type), ['remote']);
  const fb = b.receive(log.entries[1] as LogEntry);
  assert.deepEqual(fb.map((e) => e.type), ['acked', 'publish']);
  const third = fb[1];
  assert.ok(third?.type === 'publish');
  assert.deepEqual(third.payload, { op: [5, 'Z'], client: 'b', seq: 2 });
  assert.deepEqual(third.expect, { offset: 2, epoch: 'E1' });
  assert.equal(a.text, 'XabcY');
});

test('ties: at the same position the operation first in the log comes first, on every editor', () => {
  const a = new Editor({ client: 'a', text: '' });
  const b = new Editor({ client: 'b', text: '' });
  a.online();
  b.online();
  const log = new Log();
  const [pa] = a.edit(Operation.fromJSON(['a']));
  const [pb] = b.edit(Operation.fromJSON(['b']));
  assert.ok(pa?.type === 'publish' && pb?.type === 'publish');
  log.append(pb); // b first
  log.append(pa);
  a.receive(log.entries[0] as LogEntry);
  assert.equal(a.text, 'ba');
  const [resend] = a.conflict(1, 1, 'E1');
  assert.ok(resend?.type === 'publish');
  log.append(resend);
  b.receive(log.entries[0] as LogEntry);
  b.receive(log.entries[1] as LogEntry);
  a.receive(log.entries[1] as LogEntry);
  assert.equal(b.text, 'ba');
  assert.equal(a.text, 'ba');
});

test('a lost reply: the operation is sent again after the replay, and the first copy in the log acknowledges it', () => {
  const a = new Editor({ client: 'a', text: 'x' });
  a.online(0);
  const log = new Log();
  const [p] = a.edit(Operation.fromJSON([1, '!']));
  assert.ok(p?.type === 'publish');
  log.append(p); // accepted, but the connection drops before the reply
  a.offline();
  assert.deepEqual(a.failed(1), [], 'offline: nothing sent');
  assert.deepEqual(a.edit(Operation.fromJSON([2, '?'])), [], 'offline: buffered');
  // Back: the replay runs to offset 1; nothing is sent before it is done.
  assert.deepEqual(a.online(1), []);
  assert.deepEqual(
    a.receive(log.entries[0] as LogEntry).map((e) => e.type),
    ['acked', 'publish'],
  );
  assert.equal(a.text, 'x!?');
  assert.equal(a.serverText, 'x!');
  // Without the replay, the retry conflicts with the first copy and then finds it.
  const b = new Editor({ client: 'b', text: 'x' });
  b.online();
  const [q] = b.edit(Operation.fromJSON([1, '#']));
  assert.ok(q?.type === 'publish');
  const log2 = new Log();
  log2.append(q);
  const [again] = b.failed(1);
  assert.ok(again?.type === 'publish');
  const r = log2.append(again);
  assert.ok(!r.ok);
  assert.deepEqual(b.conflict(1, r.offset, r.epoch), []);
  assert.deepEqual(b.receive(log2.entries[0] as LogEntry).map((e) => e.type), ['acked']);
  assert.equal(b.text, 'x#');
  assert.equal(log2.entries.length, 1, 'once in the log');
});

test('operations that do not apply are skipped by every editor alike; duplicates are ignored; a gap is reported', () => {
  const a = new Editor({ text: 'ab', revision: 10, epoch: 'E' });
  const e = (offset: number, event: string, payload: unknown): LogEntry => ({ offset, epoch: 'E', event, payload: payload as LogEntry['payload'] });
  assert.deepEqual(a.receive(e(10, 'op', { op: [2, 'z'] })), [], 'a duplicate');
  const skipped = [
    e(11, 'op', { op: [5, 'z'] }),
    e(12, 'op', { op: [1.5] }),
    e(13, 'op', 'nope'),
    e(14, 'chat', { op: [2, 'z'] }),
    e(15, 'op', { op: [] }),
  ].flatMap((m) => a.receive(m));
  assert.deepEqual(
    skipped.map((x) => (x.type === 'skipped' ? x.reason : x.type)),
    ['base length 5, the document has 2', 'invalid_component', 'no operation in the payload', 'event chat', 'base length 0, the document has 2'],
  );
  assert.equal(a.revision, 15);
  assert.deepEqual(a.receive(e(17, 'op', { op: [2, 'z'] })), [{ type: 'gap', from: 15, to: 17 }]);
  assert.equal(a.revision, 15);
  // An operation without client and seq (e.g. from a backend) applies as a remote one.
  assert.deepEqual(a.receive(e(16, 'op', { op: [2, 'z'] })).map((x) => x.type), ['remote']);
  assert.equal(a.text, 'abz');
  // Another epoch: reload.
  assert.deepEqual(a.receive({ offset: 1, epoch: 'F', event: 'op', payload: { op: [3] } }), [
    { type: 'reload', reason: "the document's history is now epoch F", droppedLocal: false },
  ]);
  a.online();
  a.edit(Operation.fromJSON([3, '?']));
  const [r] = a.conflict(1, 0, '');
  assert.deepEqual(r, { type: 'reload', reason: "the document's history is now epoch (none)", droppedLocal: true });
  a.reset({ text: 'new', revision: 0, epoch: 'G' });
  assert.equal(a.text, 'new');
  assert.equal(a.pending, false);
});

test('a snapshot after an own operation at a multiple of the interval, with the log text (not the local edits)', () => {
  const a = new Editor({ client: 'a', text: '', revision: 3, epoch: 'E', snapshotInterval: 4 });
  a.online();
  const [p] = a.edit(Operation.fromJSON(['hi']));
  assert.ok(p?.type === 'publish');
  a.edit(Operation.fromJSON([2, '!']));
  const fx = a.receive({ offset: 4, epoch: 'E', event: 'op', payload: p.payload });
  assert.deepEqual(
    fx.map((e) => e.type),
    ['acked', 'snapshot', 'publish'],
  );
  assert.deepEqual(fx[1], { type: 'snapshot', snapshot: { rev: 4, epoch: 'E', text: 'hi' } });
  // Someone else's operation at a multiple: no snapshot from this editor.
  const b = new Editor({ text: '', revision: 7, epoch: 'E', snapshotInterval: 4 });
  assert.deepEqual(b.receive({ offset: 8, epoch: 'E', event: 'op', payload: { op: ['x'], client: 'z', seq: 1 } }).map((e) => e.type), ['remote']);
});

test('the first history of a document: an editor at revision 0 of no epoch takes the epoch of the first entry or conflict', () => {
  const a = new Editor({ client: 'a' });
  a.online(0);
  const [p] = a.edit(Operation.fromJSON(['a']));
  assert.ok(p?.type === 'publish');
  assert.deepEqual(a.conflict(1, 2, 'E'), [], 'waits for offset 2 of the new history');
  a.receive({ offset: 1, epoch: 'E', event: 'op', payload: { op: ['x'], client: 'b', seq: 1 } });
  assert.equal(a.epoch, 'E');
  const fx = a.receive({ offset: 2, epoch: 'E', event: 'op', payload: { op: [1, 'y'], client: 'b', seq: 2 } });
  assert.deepEqual(fx.map((e) => e.type), ['remote', 'publish']);
  assert.equal(a.text, 'xya', 'y (in the log first) before a (rebased behind x)');
});

test('large edits go out as several operations within the size limit, which compose to the edit', () => {
  fc.assert(
    fc.property(
      fc.array(fc.oneof(fc.integer({ min: 1, max: 50 }), fc.string({ unit: 'grapheme', minLength: 1, maxLength: 80 }), fc.integer({ min: -50, max: -1 }))),
      fc.integer({ min: 16, max: 200 }),
      (comps, maxBytes) => {
        const op = Operation.fromJSON(comps);
        const pieces: Operation[] = [];
        let rest: Operation | undefined = op;
        while (rest) {
          const [head, tail]: [Operation, Operation | undefined] = splitOperation(rest, maxBytes);
          assert.ok(tail === undefined || !head.isNoop(), 'every piece changes something');
          pieces.push(head);
          rest = tail;
          assert.ok(pieces.length < 10_000);
        }
        for (const p of pieces.slice(0, -1)) {
          // Beyond the limit only when the first change alone does not fit.
          const size = Buffer.byteLength(JSON.stringify(p));
          if (size > maxBytes) assert.ok(p.components.filter((c) => typeof c !== 'number' || c < 0).length === 1, JSON.stringify(p));
        }
        const all = pieces.reduce((x, y) => compose(x, y));
        assert.deepEqual(all.toJSON(), op.toJSON());
      },
    ),
    { numRuns: 300 },
  );
  // Through the editor: a 100 KB paste becomes several publishes, one at a time.
  const a = new Editor({ client: 'a', maxOpBytes: 32 * 1024 });
  a.online();
  const text = 'é'.repeat(50_000);
  const [first] = a.edit(new Operation().insert(text));
  assert.ok(first?.type === 'publish');
  assert.ok(Buffer.byteLength(JSON.stringify(first.payload.op)) <= 32 * 1024);
  const log = new Log();
  let next: typeof first | undefined = first;
  let n = 0;
  while (next) {
    log.append(next);
    n++;
    const fx = a.receive(log.entries.at(-1) as LogEntry);
    next = fx.find((e) => e.type === 'publish') as typeof first | undefined;
  }
  assert.equal(n, 4);
  assert.equal(log.textAt('', log.entries.length), text);
  // Another editor's insert at the paste's place, in the log between its pieces, stays outside the paste.
  const p = new Editor({ client: 'p', text: '<>', maxOpBytes: 64 });
  const q = new Editor({ client: 'q', text: '<>' });
  p.online();
  q.online();
  const paste = 'abcdefghij'.repeat(20);
  const log2 = new Log();
  const [p1] = p.edit(new Operation().retain(1).insert(paste).retain(1));
  const [q1] = q.edit(Operation.fromJSON([1, 'Q', 1]));
  assert.ok(p1?.type === 'publish' && q1?.type === 'publish');
  log2.append(p1);
  let fx = p.receive(log2.entries[0] as LogEntry);
  const [q2] = q.receive(log2.entries[0] as LogEntry);
  assert.equal(q2?.type, 'remote');
  const [q3] = q.conflict(1, 1, 'E1');
  assert.ok(q3?.type === 'publish');
  log2.append(q3);
  fx = [...fx, ...p.receive(log2.entries[1] as LogEntry)];
  const out = fx.filter((e) => e.type === 'publish');
  for (let e = out.shift(); e?.type === 'publish'; e = out.shift()) {
    const r = log2.append(e);
    const more = r.ok ? p.receive(log2.entries.at(-1) as LogEntry) : p.conflict(r.seq, r.offset, r.epoch);
    out.push(...more.filter((x) => x.type === 'publish'));
  }
  assert.ok(log2.entries.length > 3);
  const result = log2.textAt('<>', log2.entries.length);
  assert.ok(result === `<Q${paste}>` || result === `<${paste}Q>`, result);
  assert.equal(p.text, result);
});

test('cursors: sent in the log coordinates, moved through later operations, shown in the local text', () => {
  const a = new Editor({ client: 'a', text: 'hello', revision: 5, epoch: 'E' });
  const b = new Editor({ client: 'b', text: 'hello', revision: 5, epoch: 'E' });
  a.online();
  b.online();
  // b puts its caret after "hell" and publishes it.
  b.select({ anchor: 4, head: 4 });
  assert.deepEqual(b.cursorPayload('bob'), { client: 'b', user: 'bob', rev: 5, anchor: 4, head: 4 });
  // a typed "XY" at the start; the op is not in the log yet.
  const [p] = a.edit(Operation.fromJSON(['XY', 5]));
  assert.ok(p?.type === 'publish');
  assert.equal(a.receiveCursor(b.cursorPayload('bob')), true);
  assert.deepEqual(a.remoteCursors(), [{ client: 'b', user: 'bob', anchor: 6, head: 6 }]);
  // a's own caret, inside its unsent insert, is published where the insert goes.
  assert.deepEqual(a.selection, { anchor: 2, head: 2 });
  assert.deepEqual(a.cursorPayload('alice'), { client: 'a', user: 'alice', rev: 5, anchor: 0, head: 0 });
  // Another editor's op at 6 inserts before b's caret; b's cursor of revision 5 arrives late at c.
  const c = new Editor({ client: 'c', text: 'hello', revision: 5, epoch: 'E' });
  c.receive({ offset: 6, epoch: 'E', event: 'op', payload: p.payload });
  c.receive({ offset: 7, epoch: 'E', event: 'op', payload: { op: [7, '!'], client: 'z', seq: 1 } });
  assert.equal(c.text, 'XYhello!');
  c.receiveCursor({ client: 'b', user: 'bob', rev: 5, anchor: 4, head: 0 });
  // (the caret at 0 stays before text inserted there by someone else)
  assert.deepEqual(c.remoteCursors(), [{ client: 'b', user: 'bob', anchor: 6, head: 0 }]);
  // A cursor of a revision not reached yet waits, then moves along.
  c.receiveCursor({ client: 'd', user: 'dan', rev: 8, anchor: 0, head: 0 });
  assert.equal(c.remoteCursors().length, 1);
  c.receive({ offset: 8, epoch: 'E', event: 'op', payload: { op: ['>', 8], client: 'z', seq: 2 } });
  assert.deepEqual(c.remoteCursors(), [
    { client: 'b', user: 'bob', anchor: 7, head: 0 },
    { client: 'd', user: 'dan', anchor: 0, head: 0 },
  ]);
  c.receive({ offset: 9, epoch: 'E', event: 'op', payload: { op: ['<', 9], client: 'z', seq: 3 } });
  assert.deepEqual(c.remoteCursors()[1], { client: 'd', user: 'dan', anchor: 0, head: 0 }, 'a remote insert at the caret leaves it before');
  // Its own cursor and malformed ones are not taken; cursors go with their user.
  assert.equal(c.receiveCursor({ client: 'c', user: 'me', rev: 9, anchor: 0, head: 0 }), false);
  assert.equal(c.receiveCursor({ client: 'x', rev: 9, anchor: -1, head: 0 }), false);
  assert.equal(c.receiveCursor({ client: 'x', rev: 1, anchor: 0, head: 0 }), false, 'revision 1 is before the window: dropped');
  assert.equal(c.removeCursor({ user: 'bob' }), true);
  assert.deepEqual(c.remoteCursors().map((x) => x.client), ['d']);
  // An editor's caret moves past what that editor inserts at it (its cursor message after the edit may be missed).
  c.receiveCursor({ client: 'z', user: 'zoe', rev: 9, anchor: 0, head: 0 });
  c.receive({ offset: 10, epoch: 'E', event: 'op', payload: { op: ['zz', 10], client: 'z', seq: 4 } });
  assert.deepEqual(
    c.remoteCursors().map((x) => [x.client, x.head]),
    [
      ['d', 0],
      ['z', 2],
    ],
  );
});
