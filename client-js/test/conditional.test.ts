// Conditional publish (`expect`, ConflictError) and the `history` request against a
// fake server: the frames sent, the replies read, errors, queueing while offline.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TidingsClient } from '../src/client.js';
import { jsonCodec } from '../src/codec.js';
import { ConflictError, DisconnectedError, ProtocolError, ServerError } from '../src/errors.js';
import { parseServerFrame, type ClientFrame } from '../src/frames.js';
import { msgpackCodec } from '../src/msgpack.js';
import type { ClientOptions } from '../src/types.js';
import { fakeWebSocket } from './fake-ws.js';
import { signJwt } from './harness.js';

const TOKEN = signJwt({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 3600 });

function setup(opts: Partial<ClientOptions> = {}) {
  const fake = fakeWebSocket();
  const client = new TidingsClient({ url: 'ws://gw.test/ws', token: TOKEN, WebSocket: fake.WS, random: () => 0, ...opts });
  return { client, fake };
}

async function connected(opts: Partial<ClientOptions> = {}) {
  const s = setup(opts);
  const ws = await s.fake.nth(0);
  ws.welcome();
  return { ...s, ws };
}

test('publish with expect sends the position; the receipt carries the offset and epoch', async () => {
  const { client, ws } = await connected();
  const p = client.publish('doc:1', 'op', { op: [1] }, { expect: { offset: 4, epoch: 'e1' } });
  const f = await ws.next('publish');
  assert.deepEqual(f, { type: 'publish', id: f.id, channel: 'doc:1', event: 'op', payload: { op: [1] }, expect: { offset: 4, epoch: 'e1' } });
  ws.reply(f.id, { nodes: 1, offset: 5, epoch: 'e1' });
  assert.deepEqual(await p, { nodes: 1, offset: 5, epoch: 'e1', raw: { nodes: 1, offset: 5, epoch: 'e1' } });
  // Without expect nothing changes on the wire.
  const q = client.publish('room:1', 'chat', 'hi');
  const g = await ws.next('publish');
  assert.deepEqual(Object.keys(g), ['type', 'id', 'channel', 'event', 'payload']);
  ws.reply(g.id, { nodes: 0 });
  assert.deepEqual(await q, { nodes: 0, raw: { nodes: 0 } });
  await client.close();
});

test('a conflict rejects with ConflictError (a ServerError with code conflict) carrying the offset and epoch', async () => {
  const { client, ws } = await connected();
  const p = client.publish('doc:1', 'op', { op: [1] }, { expect: { offset: 4, epoch: 'e1' } });
  const f = await ws.next('publish');
  ws.push({
    type: 'reply',
    id: f.id,
    ok: false,
    error: { code: 'conflict', message: 'the channel is at offset 7 of epoch `e1`, not at the expected position', offset: 7, epoch: 'e1' },
  });
  const e = await p.then(
    () => assert.fail('resolved'),
    (x: unknown) => x,
  );
  assert.ok(e instanceof ConflictError);
  assert.ok(e instanceof ServerError);
  assert.equal(e.kind, 'server');
  assert.equal(e.code, 'conflict');
  assert.equal(e.offset, 7);
  assert.equal(e.epoch, 'e1');
  assert.match(e.serverMessage, /offset 7/);
  // Through a Subscription as well; an empty history reports epoch "".
  const sub = client.subscribe('doc:1');
  ws.reply((await ws.next('subscribe')).id, { channel: 'doc:1', epoch: '', offset: 0 });
  await sub.ready;
  const q = sub.publish('op', null, { expect: { offset: 3, epoch: 'x' } });
  const g = await ws.next('publish');
  assert.deepEqual(g.expect, { offset: 3, epoch: 'x' });
  ws.push({ type: 'reply', id: g.id, ok: false, error: { code: 'conflict', message: 'm', offset: 0, epoch: '' } });
  await assert.rejects(q, (x: ConflictError) => x instanceof ConflictError && x.offset === 0 && x.epoch === '');
  // Another refusal is a plain ServerError.
  const r = client.publish('doc:1', 'op', null, { expect: { offset: 0, epoch: '' } });
  ws.replyError((await ws.next('publish')).id, 'bad_request', 'a conditional publish needs a channel with history');
  await assert.rejects(r, (x: ServerError) => x instanceof ServerError && !(x instanceof ConflictError) && x.code === 'bad_request');
  await client.close();
});

test('a conditional publish is queued while offline like any publish, and fails with DisconnectedError when in flight at a drop', async () => {
  const { client, fake } = setup();
  const queued = client.publish('doc:1', 'op', 1, { expect: { offset: 0, epoch: '' } });
  const ws = await fake.nth(0);
  ws.welcome();
  const f = await ws.next('publish');
  assert.deepEqual(f.expect, { offset: 0, epoch: '' });
  ws.reply(f.id, { nodes: 0, offset: 1, epoch: 'e' });
  assert.equal((await queued).offset, 1);
  const lost = client.publish('doc:1', 'op', 2, { expect: { offset: 1, epoch: 'e' } });
  await ws.next('publish');
  ws.drop();
  await assert.rejects(lost, (e: unknown) => e instanceof DisconnectedError);
  await client.close();
});

test('history: limit and since go out as given; entries are read as messages of the channel', async () => {
  const { client, ws } = await connected();
  const p = client.history('snap:doc:1', { limit: 1 });
  const f = await ws.next('history');
  assert.deepEqual(f, { type: 'history', id: f.id, channel: 'snap:doc:1', limit: 1 });
  ws.reply(f.id, {
    channel: 'snap:doc:1',
    epoch: 'e9',
    offset: 3,
    publications: [{ event: 'snapshot', payload: { rev: 500, epoch: 'e1', text: 'hi' }, offset: 3, ts: 1767225600123 }],
  });
  assert.deepEqual(await p, {
    channel: 'snap:doc:1',
    epoch: 'e9',
    offset: 3,
    publications: [{ channel: 'snap:doc:1', event: 'snapshot', payload: { rev: 500, epoch: 'e1', text: 'hi' }, offset: 3, ts: 1767225600123 }],
  });
  const q = client.history('doc:1', { since: { offset: 4, epoch: 'e1' }, limit: 2 });
  const g = await ws.next('history');
  assert.deepEqual(g, { type: 'history', id: g.id, channel: 'doc:1', limit: 2, since: { offset: 4, epoch: 'e1' } });
  ws.reply(g.id, {
    channel: 'doc:1',
    epoch: 'e1',
    offset: 9,
    publications: [
      { event: 'op', payload: [1], msg_id: 'm5', offset: 5, ts: 1 },
      { event: 'op', payload: null, offset: 6, ts: 2 },
    ],
  });
  const r = await q;
  assert.deepEqual(
    r.publications.map((m) => [m.offset, m.msgId, m.payload]),
    [
      [5, 'm5', [1]],
      [6, undefined, null],
    ],
  );
  // An empty history: epoch "" and offset 0, no entries (a missing list reads as empty).
  const e = client.history('doc:2');
  const h = await ws.next('history');
  assert.deepEqual(h, { type: 'history', id: h.id, channel: 'doc:2' });
  ws.reply(h.id, { channel: 'doc:2', epoch: '', offset: 0 });
  assert.deepEqual(await e, { channel: 'doc:2', epoch: '', offset: 0, publications: [] });
  await client.close();
});

test('history: refusals reject with the code; a result that does not read as documented is a ProtocolError', async () => {
  const { client, ws } = await connected();
  const p = client.history('secret');
  ws.replyError((await ws.next('history')).id, 'forbidden', 'token does not allow subscribing to this channel');
  await assert.rejects(p, (e: ServerError) => e.code === 'forbidden');
  for (const bad of [
    null,
    { channel: 'doc:1', offset: 1, publications: [] },
    { channel: 'doc:1', epoch: 'e', offset: -1, publications: [] },
    { channel: 'doc:1', epoch: 'e', offset: 1, publications: {} },
    { channel: 'doc:1', epoch: 'e', offset: 1, publications: [{ payload: 1, offset: 1, ts: 1 }] },
    { channel: 'doc:1', epoch: 'e', offset: 1, publications: [{ event: 'op', payload: 1, ts: 1 }] },
  ]) {
    const q = client.history('doc:1');
    ws.reply((await ws.next('history')).id, bad);
    await assert.rejects(q, (e: unknown) => e instanceof ProtocolError, JSON.stringify(bad));
  }
  await client.close();
});

test('history is queued while offline and sent after the reconnect', async () => {
  const { client, fake } = setup();
  const p = client.history('doc:1', { limit: 5 });
  const ws = await fake.nth(0);
  ws.welcome();
  const f = await ws.next('history');
  ws.reply(f.id, { channel: 'doc:1', epoch: 'e', offset: 0, publications: [] });
  assert.equal((await p).epoch, 'e');
  await client.close();
});

test('the new frames in both encodings: field order type, id, then the request fields; the conflict body decodes from either', () => {
  const frames: ClientFrame[] = [
    { type: 'publish', id: 30, channel: 'doc:1', event: 'op', payload: [1], expect: { offset: 0, epoch: '' } },
    { type: 'history', id: 9, channel: 'snap:doc:1', limit: 1 },
    { type: 'history', id: 10, channel: 'doc:1', since: { offset: 4, epoch: 'e' } },
  ];
  assert.deepEqual(
    frames.map((f) => jsonCodec.encode(f)),
    [
      '{"type":"publish","id":30,"channel":"doc:1","event":"op","payload":[1],"expect":{"offset":0,"epoch":""}}',
      '{"type":"history","id":9,"channel":"snap:doc:1","limit":1}',
      '{"type":"history","id":10,"channel":"doc:1","since":{"offset":4,"epoch":"e"}}',
    ],
  );
  for (const f of frames) assert.deepEqual(msgpackCodec.decode(msgpackCodec.encode(f) as Uint8Array), f);
  const reply = { type: 'reply', id: 3, ok: false, error: { code: 'conflict', message: 'm', offset: 18, epoch: 'd41e' } };
  const fromJson = parseServerFrame(jsonCodec.decode(JSON.stringify(reply)));
  const fromPack = parseServerFrame(msgpackCodec.decode(msgpackCodec.encode(reply as unknown as ClientFrame) as Uint8Array));
  assert.deepEqual(fromJson, reply);
  assert.deepEqual(fromPack, reply);
});
