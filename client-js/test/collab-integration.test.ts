// Collaborative documents (CollabDocument) against real gateway processes: two nodes
// on one Redis with the document rules of docs/collaboration.md, JSON and MessagePack
// clients typing at once, a node stopping under one of them while it types on, a late
// loader from a snapshot, cursors with names from presence, and a gateway without
// Redis that loses the history (reload).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { TidingsClient } from '../src/client.js';
import { ConflictError } from '../src/errors.js';
import { msgpackCodec } from '../src/msgpack.js';
import {
  CollabDocument,
  Operation,
  codePointLength,
  openDocument,
  type DocumentOptions,
  type ReloadEvent,
  type ResyncReport,
} from '../src/collab/index.js';
import type { ClientOptions } from '../src/types.js';
import { sleep, startGateway, startRedis, token, waitFor, type Gateway, type Proc } from './harness.js';

const RIGHTS = ['doc:*', 'snap:*', 'cursor:*'];
const DOC_ARGS = ['--history', 'doc:* 100000 7d,snap:* 10 30d', '--presence', 'doc:* events', '--presence-grace', '500ms', '--drain-period', '200ms'];

function docToken(user: string): string {
  return token(user, { subscribe: RIGHTS, publish: RIGHTS, info: { name: user.toUpperCase() } });
}

/** A small deterministic random source. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** One random edit: insert 1-3 characters (some astral), or delete 1-2, at a random place. */
function randomEdit(doc: CollabDocument, r: () => number, tag: string): void {
  const n = codePointLength(doc.text);
  const at = Math.floor(r() * (n + 1));
  if (n > 0 && r() < 0.3) {
    const del = Math.min(n - at, 1 + Math.floor(r() * 2));
    if (del > 0) return doc.apply(new Operation().retain(at).delete(del).retain(n - at - del));
  }
  const s = Array.from({ length: 1 + Math.floor(r() * 3) }, (_, i) => (i === 1 ? '😀' : tag)).join('');
  doc.apply(new Operation().retain(at).insert(s).retain(n - at));
}

const settled = (docs: CollabDocument[], timeoutMs = 20_000): Promise<void> =>
  waitFor(
    () => docs.every((d) => d.status === 'ready' && !d.pending && d.revision === docs[0]?.revision && d.text === docs[0]?.text),
    timeoutMs,
    'every document ready, nothing pending, the same text',
  ).catch((e: Error) => {
    throw new Error(`${e.message}: ${JSON.stringify(docs.map((d) => [d.status, d.pending, d.revision, d.text.length]))}`);
  });

describe('collaborative documents against gateways', { timeout: 120_000 }, () => {
  let redis: { port: number; proc: Proc };
  let nodes: Gateway[] = [];
  const clients: TidingsClient[] = [];
  const docs: CollabDocument[] = [];

  before(async () => {
    redis = await startRedis();
    nodes = await Promise.all([1, 2].map(() => startGateway({ redisPort: redis.port, args: DOC_ARGS })));
  });
  after(async () => {
    for (const d of docs) d.close();
    await Promise.all(clients.map((c) => c.close()));
    await Promise.all(nodes.map((n) => n.proc.stop('SIGKILL')));
    await redis?.proc.stop('SIGKILL');
  });

  function client(user: string, url: string | string[], opts: Partial<ClientOptions> = {}): TidingsClient {
    const c = new TidingsClient({ url, token: docToken(user), WebSocket, backoff: { initialMs: 100, maxMs: 500 }, goingAwayDelayMs: 50, ...opts });
    clients.push(c);
    return c;
  }

  function open(c: TidingsClient, channel: string, opts: DocumentOptions = {}): CollabDocument {
    const d = openDocument(c, channel, opts);
    docs.push(d);
    return d;
  }

  test('three editors on two nodes type at once (JSON and MessagePack) and converge; a new one loads the same text', async () => {
    const ws = (nodes as [Gateway, Gateway]).map((n) => n.ws);
    const cs = [client('ann', ws[0] ?? ''), client('ben', ws[1] ?? '', { codec: msgpackCodec }), client('cat', ws[0] ?? '')];
    const ds = cs.map((c) => open(c, 'doc:race'));
    await Promise.all(ds.map((d) => d.ready));
    const conflicts: number[] = [];
    for (const c of cs) {
      // Count the conflicts the editors met, through the client's publish path.
      const orig = c.publish.bind(c);
      let n = 0;
      conflicts.push(0);
      const i = conflicts.length - 1;
      c.publish = (...args: Parameters<typeof c.publish>) =>
        orig(...args).catch((e: unknown) => {
          if (e instanceof ConflictError) conflicts[i] = ++n;
          throw e;
        });
    }
    const tags = ['a', 'b', 'c'];
    await Promise.all(
      ds.map(async (d, i) => {
        const r = rng(i + 1);
        for (let k = 0; k < 60; k++) {
          randomEdit(d, r, tags[i] ?? '?');
          if (k % 3 === 0) await sleep(Math.floor(r() * 8));
        }
      }),
    );
    await settled(ds);
    const text = ds[0]?.text ?? '';
    assert.ok(codePointLength(text) > 20, text);
    assert.ok(conflicts.reduce((a, b) => a + b, 0) > 0, 'some publishes conflicted');
    // Every editor recognized its own operations: the log has one entry per operation.
    const late = open(client('dan', ws[1] ?? ''), 'doc:race');
    await late.ready;
    assert.equal(late.text, text);
    assert.equal(late.revision, ds[0]?.revision);
  });

  test('snapshots every N revisions: a loader starts from the newest and replays only the rest', async () => {
    const c = client('eve', nodes[0]?.ws ?? '');
    const d = open(c, 'doc:snap', { snapshotInterval: 10 });
    await d.ready;
    for (let k = 0; k < 25; k++) {
      d.replace(k, k, String.fromCharCode(97 + k));
      await waitFor(() => !d.pending, 5000, 'the edit in the log');
    }
    assert.equal(d.revision, 25);
    await waitFor(async () => (await c.history('snap:doc:snap')).publications.length === 2, 5000, 'two snapshots');
    const snaps = await c.history('snap:doc:snap');
    assert.deepEqual(
      snaps.publications.map((p) => (p.payload as { rev: number }).rev),
      [10, 20],
    );
    assert.equal((snaps.publications[1]?.payload as { text: string }).text, 'abcdefghijklmnopqrst');
    // A loader subscribes from revision 20: only 5 operations come.
    const other = client('fay', nodes[1]?.ws ?? '');
    const seen: number[] = [];
    other.on('message', (m) => {
      if (m.channel === 'doc:snap' && m.offset !== undefined) seen.push(m.offset);
    });
    const l = open(other, 'doc:snap');
    await l.ready;
    assert.equal(l.text, d.text);
    assert.deepEqual(seen, [21, 22, 23, 24, 25]);
  });

  test('offline: a node stops under an editor who types on; after the reconnect the edits are sent and the missed ones applied', async () => {
    const spare = await startGateway({ redisPort: redis.port, args: DOC_ARGS });
    nodes.push(spare);
    // Reconnects 1.5 s after the drop (no jitter): offline long enough to type.
    const mover = client('gus', [spare.ws, nodes[0]?.ws ?? ''], { backoff: { initialMs: 1500, maxMs: 1500 }, random: () => 0.999 });
    const stayer = client('hal', nodes[1]?.ws ?? '');
    const m = open(mover, 'doc:offline');
    const s = open(stayer, 'doc:offline');
    await Promise.all([m.ready, s.ready]);
    s.replace(0, 0, 'shared base. ');
    await settled([m, s]);
    const reports: ResyncReport[] = [];
    m.on('resynced', (r) => reports.push(r));
    const statuses: string[] = [];
    m.on('status', (st) => statuses.push(st));
    await spare.proc.stop('SIGKILL');
    await waitFor(() => m.status === 'offline', 5000, 'offline');
    // Both type while the mover is offline.
    for (const ch of ['x', 'y', 'z']) m.replace(codePointLength(m.text), codePointLength(m.text), ch);
    for (const ch of ['1', '2']) s.replace(0, 0, ch);
    await waitFor(() => !s.pending, 5000, "the stayer's edits in the log");
    assert.equal(m.pending, true);
    await settled([m, s], 20_000);
    assert.equal(m.text, '21shared base. xyz');
    assert.deepEqual(reports, [{ remoteOps: 2, offlineEdits: 3 }]);
    assert.ok(statuses.includes('offline') && statuses.at(-1) === 'ready', statuses.join());
  });

  test('cursors: published on cursor:<doc>, moved by the edits, named from presence info; a user who leaves takes theirs along', async () => {
    const a = open(client('ivy', nodes[0]?.ws ?? ''), 'doc:cursors');
    const bc = client('jon', nodes[1]?.ws ?? '');
    const b = open(bc, 'doc:cursors');
    await Promise.all([a.ready, b.ready]);
    a.replace(0, 0, 'hello world');
    await settled([a, b]);
    b.select({ anchor: 6, head: 11 }); // "world"
    await waitFor(() => a.cursors.length === 1 && a.cursors[0]?.anchor === 6, 5000, "jon's selection at ivy's");
    assert.equal(a.cursors[0]?.name, 'JON');
    assert.equal(a.cursors[0]?.user, 'jon');
    // ivy types before it: the selection moves along, at once locally.
    a.replace(0, 0, '>> ');
    assert.deepEqual([a.cursors[0]?.anchor, a.cursors[0]?.head], [9, 14]);
    await settled([a, b]);
    // ivy's caret followed her own typing: after "hello world", moved by ">> ".
    await waitFor(() => b.cursors[0]?.anchor === 14 && b.cursors[0]?.head === 14, 5000, "ivy's caret at jon's");
    assert.equal(b.cursors[0]?.name, 'IVY');
    // jon goes: gone from ivy's cursors after the presence grace period.
    b.close();
    await bc.close();
    await waitFor(() => a.cursors.length === 0, 5000, "jon's cursor gone");
  });

  test('a 200 KB paste goes out as several operations within the payload limit, and a concurrent insert at its place stays outside it', async () => {
    const a = open(client('max', nodes[0]?.ws ?? ''), 'doc:paste');
    const b = open(client('ned', nodes[1]?.ws ?? ''), 'doc:paste');
    await Promise.all([a.ready, b.ready]);
    const big = 'ça va? '.repeat(30_000);
    a.replace(0, 0, big);
    b.replace(0, 0, '[b]');
    await settled([a, b], 30_000);
    assert.ok(a.text === `[b]${big}` || a.text === `${big}[b]`, a.text.slice(0, 20));
    assert.ok(a.revision >= 5, `one paste in ${a.revision - 1} operations`);
  });

  test('a gateway without Redis restarts and loses the history: the editors reload and go on together', async () => {
    const args = ['--history', 'doc:* 100000 7d,snap:* 10 30d'];
    let solo = await startGateway({ args });
    try {
      const url = solo.ws;
      const a = open(client('kim', url), 'doc:lost');
      const b = open(client('lee', url), 'doc:lost');
      await Promise.all([a.ready, b.ready]);
      a.replace(0, 0, 'before');
      await settled([a, b]);
      const reloads: ReloadEvent[] = [];
      a.on('reload', (r) => reloads.push(r));
      const port = solo.port;
      await solo.proc.stop('SIGKILL');
      await waitFor(() => a.status === 'offline', 5000, 'offline');
      a.replace(0, 0, 'lost: ');
      solo = await startGateway({ port, args });
      await waitFor(() => reloads.length > 0, 15_000, 'the reload');
      assert.equal(reloads[0]?.droppedLocal, true);
      await settled([a, b]);
      assert.equal(a.text, '', 'the history and the snapshots went with the memory broker');
      a.replace(0, 0, 'after');
      b.replace(0, 0, 'B:');
      await settled([a, b]);
      const text: string = b.text;
      assert.ok(text === 'B:after' || text === 'afterB:', text);
    } finally {
      await solo.proc.stop('SIGKILL');
    }
  });
});
