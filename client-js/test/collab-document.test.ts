// CollabDocument against a fake server: the frames of loading (history of
// snap:<doc>, subscribe with since), conditional publishes and their outcomes, a
// resume that is not complete (filled from history), and the helpers diffOperation
// and pickSnapshot.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TidingsClient } from '../src/client.js';
import { diffOperation, Operation, openDocument, pickSnapshot, type CollabDocument } from '../src/collab/index.js';
import type { Message } from '../src/types.js';
import { fakeWebSocket, type FakeSocket } from './fake-ws.js';
import { signJwt, waitFor } from './harness.js';

const TOKEN = signJwt({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 3600 });

async function setup(): Promise<{ client: TidingsClient; ws: FakeSocket; fake: ReturnType<typeof fakeWebSocket> }> {
  const fake = fakeWebSocket();
  const client = new TidingsClient({ url: 'ws://gw.test/ws', token: TOKEN, WebSocket: fake.WS, random: () => 0 });
  const ws = await fake.nth(0);
  ws.welcome();
  return { client, ws, fake };
}

const op = (offset: number, o: unknown[], client = 'other', seq = offset) => ({
  type: 'message',
  channel: 'doc:1',
  event: 'op',
  payload: { op: o, client, seq },
  offset,
  epoch: 'E',
  ts: 1,
});

/** Loads doc:1 from a snapshot at revision 2 ("ab") and a replay of one operation. */
async function loaded(ws: FakeSocket, client: TidingsClient): Promise<CollabDocument> {
  const doc = openDocument(client, 'doc:1', { editorId: 'me', cursors: false, presence: false });
  const h = await ws.next('history');
  assert.deepEqual(h, { type: 'history', id: h.id, channel: 'snap:doc:1', limit: 10 });
  ws.reply(h.id, { channel: 'snap:doc:1', epoch: 'S', offset: 1, publications: [{ event: 'snapshot', payload: { rev: 2, epoch: 'E', text: 'ab' }, offset: 1, ts: 1 }] });
  const s = await ws.next('subscribe');
  assert.deepEqual(s, { type: 'subscribe', id: s.id, channel: 'doc:1', since: { offset: 2, epoch: 'E' } });
  ws.reply(s.id, { channel: 'doc:1', epoch: 'E', offset: 3, recovered: true });
  assert.equal(doc.status, 'syncing');
  ws.push(op(3, [2, 'c']));
  await doc.ready;
  assert.equal(doc.status, 'ready');
  assert.equal(doc.text, 'abc');
  return doc;
}

test('loads from the newest snapshot, resumes after it, publishes conditionally, rebases after a conflict', async () => {
  const { client, ws } = await setup();
  const doc = await loaded(ws, client);
  const changes: boolean[] = [];
  doc.on('change', (c) => changes.push(c.remote));
  doc.replace(3, 3, '!');
  const p = await ws.next('publish');
  assert.deepEqual(p, { type: 'publish', id: p.id, channel: 'doc:1', event: 'op', payload: { op: [3, '!'], client: 'me', seq: 1 }, expect: { offset: 3, epoch: 'E' } });
  doc.replace(0, 0, '>');
  assert.equal(doc.text, '>abc!');
  // Someone else got offset 4 first.
  ws.push({ type: 'reply', id: p.id, ok: false, error: { code: 'conflict', message: 'm', offset: 4, epoch: 'E' } });
  ws.push(op(4, [3, '?']));
  const again = await ws.next('publish');
  // At the same position the operation in the log first: "?" then "!".
  assert.deepEqual(again.payload, { op: [4, '!'], client: 'me', seq: 1 }, 'rebased');
  assert.deepEqual(again.expect, { offset: 4, epoch: 'E' });
  assert.equal(doc.text, '>abc?!');
  ws.reply(again.id, { nodes: 1, offset: 5, epoch: 'E' });
  ws.push(op(5, [4, '!'], 'me', 1));
  const buffered = await ws.next('publish');
  assert.deepEqual(buffered.payload, { op: ['>', 5], client: 'me', seq: 2 });
  assert.deepEqual(buffered.expect, { offset: 5, epoch: 'E' });
  ws.push(op(6, ['>', 5], 'me', 2));
  await waitFor(() => !doc.pending, 1000, 'acknowledged');
  assert.equal(doc.revision, 6);
  assert.deepEqual(changes, [false, false, true, false, false]);
  doc.close();
  await client.close();
});

test('a resume that is not complete is filled from history; offline edits are sent after it and reported', async () => {
  const { client, ws, fake } = await setup();
  const doc = await loaded(ws, client);
  const reports: unknown[] = [];
  doc.on('resynced', (r) => reports.push(r));
  ws.drop();
  await waitFor(() => doc.status === 'offline', 1000, 'offline');
  doc.replace(0, 0, 'x');
  const ws2 = await fake.nth(1);
  ws2.welcome();
  const s = await ws2.next('subscribe');
  assert.deepEqual(s.since, { offset: 3, epoch: 'E' });
  // More was missed than the server replays: not recovered, the rest from history.
  ws2.reply(s.id, { channel: 'doc:1', epoch: 'E', offset: 5, recovered: false });
  const h = await ws2.next('history');
  assert.deepEqual(h, { type: 'history', id: h.id, channel: 'doc:1', since: { offset: 3, epoch: 'E' }, limit: 100 });
  ws2.push(op(6, [5, '6'])); // live, while the history is read: waits
  ws2.reply(h.id, {
    channel: 'doc:1',
    epoch: 'E',
    offset: 5,
    publications: [
      { event: 'op', payload: { op: [3, '4'], client: 'o', seq: 1 }, offset: 4, ts: 1 },
      { event: 'op', payload: { op: [4, '5'], client: 'o', seq: 2 }, offset: 5, ts: 1 },
    ],
  });
  const p = await ws2.next('publish');
  assert.deepEqual(p.payload, { op: ['x', 5], client: 'me', seq: 1 });
  assert.deepEqual(p.expect, { offset: 5, epoch: 'E' }, 'sent once caught up with history');
  await waitFor(() => doc.revision === 6, 1000, 'the live one applied after');
  assert.equal(doc.text, 'xabc456');
  ws2.push({ type: 'reply', id: p.id, ok: false, error: { code: 'conflict', message: 'm', offset: 6, epoch: 'E' } });
  const q = await ws2.next('publish');
  assert.deepEqual(q.expect, { offset: 6, epoch: 'E' });
  ws2.push(op(7, ['x', 6], 'me', 1));
  await waitFor(() => reports.length === 1, 1000, 'the report');
  assert.deepEqual(reports, [{ remoteOps: 3, offlineEdits: 1 }]);
  doc.close();
  await client.close();
});

test('a document channel without history is an error', async () => {
  const { client, ws } = await setup();
  const doc = openDocument(client, 'doc:2', { cursors: false, presence: false });
  ws.replyError((await ws.next('history')).id, 'bad_request', 'no history');
  const s = await ws.next('subscribe');
  assert.deepEqual(s.since, { offset: 0, epoch: '' });
  ws.reply(s.id, { channel: 'doc:2', recovered: false });
  await assert.rejects(doc.ready, /keeps no history/);
  assert.equal(doc.status, 'error');
  assert.throws(() => doc.replace(0, 0, 'x'), /error/);
  await client.close();
});

test('diffOperation: the replacement the user made, from the selection before and the caret after', () => {
  const d = (a: string, b: string, hints = {}) => diffOperation(a, b, hints)?.toJSON();
  assert.equal(d('same', 'same'), undefined);
  // Typing "a" at the start of "aa" (caret was at 0): not at the end.
  assert.deepEqual(d('aa', 'aaa', { before: { anchor: 0, head: 0 }, caret: 1 }), ['a', 2]);
  assert.deepEqual(d('aa', 'aaa'), [2, 'a']);
  // Backspace in "aaa" at 2: the second a goes.
  assert.deepEqual(d('aaa', 'aa', { before: { anchor: 2, head: 2 }, caret: 1 }), [1, -1, 1]);
  // Delete (forward) at 1.
  assert.deepEqual(d('abc', 'ac', { before: { anchor: 1, head: 1 }, caret: 1 }), [1, -1, 1]);
  // Pasting over a selection.
  assert.deepEqual(d('hello world', 'hello there', { before: { anchor: 6, head: 11 }, caret: 11 }), [6, 'there', -5]);
  // Code points: an emoji is one.
  assert.deepEqual(d('a😀b', 'a😀😀b', { before: { anchor: 2, head: 2 }, caret: 3 }), [2, '😀', 1]);
  // A change the selection does not explain (another field's undo): by the caret.
  assert.deepEqual(d('abcdef', 'abXYef', { before: { anchor: 0, head: 0 }, caret: 4 }), [2, 'XY', -2, 2]);
  for (const [a, b] of [
    ['', 'x'],
    ['xyz', ''],
    ['abab', 'ab'],
    ['😀😀', '😀'],
  ] as const) {
    assert.equal(Operation.fromJSON(d(a, b) ?? []).apply(a), b);
  }
});

test('pickSnapshot: the highest revision of the newest entry epoch; entries that are not snapshots are ignored', () => {
  const m = (payload: unknown, event = 'snapshot'): Message => ({ channel: 'snap:d', event, payload: payload as Message['payload'], ts: 0 });
  assert.equal(pickSnapshot([]), undefined);
  assert.deepEqual(
    pickSnapshot([m({ rev: 900, epoch: 'A', text: 'old epoch' }), m({ rev: 1000, epoch: 'B', text: 'b1000' }), m({ rev: 500, epoch: 'B', text: 'late' }), m('junk'), m({ rev: 3 }, 'other')]),
    { rev: 1000, epoch: 'B', text: 'b1000' },
  );
  assert.deepEqual(pickSnapshot([m({ rev: 5, epoch: 'B', text: 'x' }), m({ rev: 1, epoch: 'C', text: 'c' })]), { rev: 1, epoch: 'C', text: 'c' });
});
