// Against real gateway processes (and a real Redis), in Node with the `ws` package.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { TidingsClient } from '../src/client.js';
import { ServerError, UnauthorizedError } from '../src/errors.js';
import { msgpackCodec } from '../src/msgpack.js';
import type { ClientOptions, Message, RecoveredEvent } from '../src/types.js';
import { httpPublish, startGateway, startRedis, token, waitFor, type Gateway, type Proc } from './harness.js';

const HISTORY = ['--history', '$user:* 100 24h,room:* 100 1h'];
const clients: TidingsClient[] = [];

function client(gw: Gateway, opts: Partial<ClientOptions> = {}): TidingsClient {
  // `ws` satisfies the WebSocket option as it is: no cast needed.
  const c = new TidingsClient({ url: gw.ws, token: token('alice'), WebSocket, ...opts });
  clients.push(c);
  return c;
}

function collect(c: TidingsClient): Message[] {
  const got: Message[] = [];
  c.on('message', (m) => got.push(m));
  return got;
}

const connected = (c: TidingsClient): Promise<void> =>
  waitFor(() => c.state.status === 'connected', 10_000, 'connected');

describe('against a gateway', { timeout: 60_000 }, () => {
  let redis: { port: number; proc: Proc };
  let gw: Gateway;
  before(async () => {
    redis = await startRedis();
    gw = await startGateway({ redisPort: redis.port, args: [...HISTORY, '--heartbeat-interval', '1s', '--drain-period', '500ms'] });
  });
  after(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await gw?.proc.stop('SIGKILL');
    await redis?.proc.stop('SIGKILL');
  });

  test('JSON and MessagePack clients chat on a room and see each other', async () => {
    const alice = client(gw);
    const bob = client(gw, { token: token('bob'), codec: msgpackCodec });
    const [ga, gb] = [collect(alice), collect(bob)];
    const ra = await alice.subscribe('room:int').ready;
    const rb = await bob.subscribe('room:int').ready;
    assert.equal(typeof ra.epoch, 'string');
    assert.equal(rb.offset, ra.offset);
    const receipt = await alice.publish('room:int', 'chat', { text: 'hi bob', n: [1, 2.5, null, true] });
    assert.equal(receipt.nodes, 1);
    await bob.publish('room:int', 'chat', { text: 'hi alice' });
    await waitFor(() => ga.length === 2 && gb.length === 2, 5000, 'both messages on both sides');
    for (const got of [ga, gb]) {
      assert.deepEqual(
        got.map((m) => m.payload),
        [{ text: 'hi bob', n: [1, 2.5, null, true] }, { text: 'hi alice' }],
      );
      assert.equal(got[1]?.offset, (got[0]?.offset ?? 0) + 1);
      assert.ok((got[0]?.ts ?? 0) > 1.7e12);
    }
  });

  test('a notification from the HTTP API arrives on the personal channel and can be acked', async () => {
    const carol = client(gw, { token: token('carol') });
    const got = collect(carol);
    await connected(carol);
    assert.equal(carol.personalChannel, '$user:carol');
    await httpPublish(gw, { user: 'carol', event: 'notice', payload: { text: 'hello' }, id: 'n-1' });
    await waitFor(() => got.length === 1, 5000, 'the notification');
    assert.equal(got[0]?.channel, '$user:carol');
    assert.equal(got[0]?.msgId, 'n-1');
    const offset = got[0]?.offset ?? 0;
    assert.equal(await carol.ack(offset), offset);
  });

  test('a refused subscription and a refused token', async () => {
    const c = client(gw);
    await assert.rejects(c.subscribe('secret').ready, (e: ServerError) => e.code === 'forbidden');
    const bad = client(gw, { token: token('mallory', { exp: 1 }) });
    await waitFor(() => bad.state.status === 'stopped', 5000, 'stopped');
    const s = bad.state;
    assert.ok(s.status === 'stopped' && s.error instanceof UnauthorizedError, JSON.stringify(s));
  });

  test('survives a gateway restart: drain (1001), messages published meanwhile are recovered once, in order', async () => {
    const dave = client(gw, { token: token('dave'), backoff: { initialMs: 200, maxMs: 1000 } });
    const got = collect(dave);
    const recovered: RecoveredEvent[] = [];
    dave.on('recovered', (r) => recovered.push(r));
    const codes: (number | undefined)[] = [];
    dave.on('disconnected', (d) => codes.push(d.code));
    await dave.subscribe('room:restart').ready;
    await httpPublish(gw, { user: 'dave', event: 'n', payload: 1 });
    await dave.publish('room:restart', 'chat', 'before');
    await waitFor(() => got.length === 2, 5000, 'messages before the restart');

    const port = gw.port;
    await gw.proc.stop('SIGTERM');
    assert.equal(codes[0], 1001, 'the draining node closed with going away');
    // Published while the client's node is down, through another node on the same Redis.
    const other = await startGateway({ redisPort: redis.port, args: HISTORY });
    try {
      await httpPublish(other, { user: 'dave', event: 'n', payload: 2 });
      await httpPublish(other, { channel: 'room:restart', event: 'chat', payload: 'during' });
    } finally {
      await other.proc.stop('SIGKILL');
    }
    const queued = dave.publish('room:restart', 'chat', 'queued while offline');
    gw = await startGateway({ port, redisPort: redis.port, args: [...HISTORY, '--heartbeat-interval', '1s', '--drain-period', '500ms'] });
    await queued;
    await waitFor(() => got.length === 5, 15_000, 'the missed messages');
    assert.deepEqual(
      got.map((m) => `${m.channel}:${JSON.stringify(m.payload)}`),
      ['$user:dave:1', 'room:restart:"before"', '$user:dave:2', 'room:restart:"during"', 'room:restart:"queued while offline"'],
    );
    assert.deepEqual(recovered, [
      { channel: '$user:dave', recovered: true },
      { channel: 'room:restart', recovered: true },
    ]);
  });

  test('the first notification ever, sent while offline, is delivered after the reconnect (empty epoch)', async () => {
    // A user with no history yet gets epoch "" offset 0 in the welcome; resuming from
    // there must deliver the replay (the Rust client drops it as a duplicate).
    const gina = client(gw, { token: token('gina'), backoff: { initialMs: 100, maxMs: 400 } });
    const got = collect(gina);
    await connected(gina);
    assert.deepEqual(gina.position('$user:gina'), { epoch: '', offset: 0 });
    const port = gw.port;
    await gw.proc.stop('SIGTERM');
    const other = await startGateway({ redisPort: redis.port, args: HISTORY });
    try {
      await httpPublish(other, { user: 'gina', event: 'welcome', payload: 'first' });
    } finally {
      await other.proc.stop('SIGKILL');
    }
    gw = await startGateway({ port, redisPort: redis.port, args: [...HISTORY, '--heartbeat-interval', '1s', '--drain-period', '500ms'] });
    await waitFor(() => got.length === 1, 15_000, 'the first notification');
    assert.equal(got[0]?.payload, 'first');
    assert.equal(got[0]?.offset, 1);
  });

  test('a gateway without Redis loses history on restart: new epoch, not recovered, offsets restart', async () => {
    let solo = await startGateway({ args: HISTORY });
    try {
      const erin = client(solo, { token: token('erin'), backoff: { initialMs: 100, maxMs: 300 } });
      const got = collect(erin);
      const recovered: RecoveredEvent[] = [];
      erin.on('recovered', (r) => recovered.push(r));
      await erin.subscribe('room:solo').ready;
      for (const n of [1, 2, 3]) await erin.publish('room:solo', 'chat', n);
      await waitFor(() => got.length === 3, 5000, 'three messages');
      const before = erin.position('room:solo');
      const port = solo.port;
      await solo.proc.stop('SIGKILL');
      solo = await startGateway({ port, args: HISTORY });
      await waitFor(() => recovered.some((r) => r.channel === 'room:solo'), 10_000, 'the resubscription');
      assert.deepEqual(
        recovered.find((r) => r.channel === 'room:solo'),
        { channel: 'room:solo', recovered: false },
      );
      assert.notEqual(erin.position('room:solo')?.epoch, before?.epoch);
      await erin.publish('room:solo', 'chat', 4);
      await waitFor(() => got.length === 4, 5000, 'a message in the new epoch');
      assert.equal(got[3]?.offset, 1);
    } finally {
      await solo.proc.stop('SIGKILL');
    }
  });
});
