// Against real gateway processes (and a real Redis), in Node with the `ws` package.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { TidingsClient } from '../src/client.js';
import { ServerError, UnauthorizedError } from '../src/errors.js';
import { msgpackCodec } from '../src/msgpack.js';
import type { PresenceTracker } from '../src/presence.js';
import type { ClientOptions, Message, PresenceDiff, RecoveredEvent } from '../src/types.js';
import { httpPublish, sleep, startGateway, startRedis, token, waitFor, type Gateway, type Proc } from './harness.js';

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

describe('presence against two gateway nodes', { timeout: 60_000 }, () => {
  // Short timings: a leave is announced 500 ms after the user's last connection went.
  const GRACE_MS = 500;
  const PRESENCE = ['--presence', 'room:* events,quiet:*,watch:*', '--presence-grace', `${GRACE_MS}ms`, '--presence-refresh', '1s'];
  let redis: { port: number; proc: Proc };
  let nodes: Gateway[] = [];
  const mine: TidingsClient[] = [];
  before(async () => {
    redis = await startRedis();
    nodes = await Promise.all([1, 2].map(() => startGateway({ redisPort: redis.port, args: PRESENCE })));
  });
  after(async () => {
    await Promise.all(mine.map((c) => c.close()));
    await Promise.all(nodes.map((n) => n.proc.stop('SIGKILL')));
    await redis?.proc.stop('SIGKILL');
  });

  function on(node: number, user: string, opts: Partial<ClientOptions> = {}, claims: Record<string, unknown> = {}): TidingsClient {
    const gw = nodes[node] as Gateway;
    const c = new TidingsClient({ url: gw.ws, token: token(user, { info: { name: user.toUpperCase() }, ...claims }), WebSocket, ...opts });
    mine.push(c);
    return c;
  }

  const names = (t: PresenceTracker): string[] => t.members.map((m) => `${m.user}:${JSON.stringify(m.info)}:${m.clients}`);

  test('two clients on two nodes see each other (info, client ids, counts); a leave arrives after the grace period', async () => {
    const alice = on(0, 'alice');
    const bob = on(1, 'bob', { codec: msgpackCodec });
    const ta = alice.trackPresence('room:pres');
    const diffs: PresenceDiff[] = [];
    alice.on('presence', (d) => diffs.push(d));
    await waitFor(() => ta.status === 'ready' && ta.members.length === 1, 10_000, "alice's own entry");
    const tb = bob.trackPresence('room:pres');
    await waitFor(() => names(ta).length === 2 && names(tb).length === 2, 10_000, 'both members on both sides');
    const want = ['alice:{"name":"ALICE"}:1', 'bob:{"name":"BOB"}:1'];
    assert.deepEqual(names(ta), want);
    assert.deepEqual(names(tb), want);
    assert.deepEqual(ta.count, { clients: 2, users: 2 });
    assert.ok(diffs.some((d) => d.joins.some((j) => j.user === 'bob' && JSON.stringify(j.info) === '{"name":"BOB"}')), JSON.stringify(diffs));

    // The listing itself: client ids are <node>/<session> of each connection's welcome.
    const page = await bob.presence('room:pres', { limit: 1 });
    assert.deepEqual([page.clients, page.users, page.members.length], [2, 2, 1]);
    assert.equal(typeof page.cursor, 'string');
    const all = await bob.presenceAll('room:pres');
    const sessions = [alice, bob].map((c) => (c.state.status === 'connected' ? `${c.state.node}/${c.state.session}` : ''));
    assert.deepEqual(all.members.map((m) => m.client).sort(), sessions.sort());
    assert.deepEqual(await alice.presenceStats('room:pres'), { channel: 'room:pres', clients: 2, users: 2 });

    // bob leaves: gone from alice's list once the grace period is over, not before.
    await bob.close();
    const gone = Date.now();
    await waitFor(() => names(ta).length === 1, 10_000, "bob's leave");
    const after = Date.now() - gone;
    assert.ok(after >= GRACE_MS - 50, `the leave came ${after} ms after the close, within the grace period`);
    assert.deepEqual(names(ta), ['alice:{"name":"ALICE"}:1']);
    assert.ok(diffs.some((d) => d.leaves.some((l) => l.user === 'bob')));
    assert.deepEqual(await alice.presenceStats('room:pres'), { channel: 'room:pres', clients: 1, users: 1 });
  });

  test('a user with two connections is one member; closing one of them is no leave', async () => {
    const carol1 = on(0, 'carol');
    const carol2 = on(1, 'carol');
    const dave = on(0, 'dave');
    const td = dave.trackPresence('room:two');
    await waitFor(() => td.status === 'ready', 10_000, "dave's snapshot");
    await carol1.subscribe('room:two').ready;
    await carol2.subscribe('room:two').ready;
    await waitFor(async () => (await dave.presenceStats('room:two')).clients === 3, 10_000, 'three connections');
    await td.refresh();
    assert.deepEqual(names(td), ['carol:{"name":"CAROL"}:2', 'dave:{"name":"DAVE"}:1']);
    assert.deepEqual(td.count, { clients: 3, users: 2 });
    const leaves: string[] = [];
    dave.on('presence', (d) => leaves.push(...d.leaves.map((l) => l.user)));
    await carol1.close();
    await sleep(GRACE_MS * 3);
    assert.equal(leaves.length, 0, 'carol is still here on her other connection');
    assert.deepEqual(await dave.presenceStats('room:two'), { channel: 'room:two', clients: 2, users: 2 });
    await carol2.unsubscribe('room:two');
    await waitFor(() => leaves.includes('carol'), 10_000, "carol's leave after her last connection left the room");
    assert.deepEqual(names(td), ['dave:{"name":"DAVE"}:1']);
  });

  test('rights and rules: forbidden without a pattern, bad_request without a presence rule, the presence claim reads without subscribing', async () => {
    const erin = on(0, 'erin', {}, { subscribe: ['room:*', 'news'], presence: ['watch:*'] });
    await assert.rejects(erin.presence('secret:1'), (e: ServerError) => e.code === 'forbidden');
    await assert.rejects(erin.presenceStats('news'), (e: ServerError) => e.code === 'bad_request');
    await assert.rejects(erin.presence('room:x', { limit: 0 }), (e: ServerError) => e.code === 'bad_request');
    // No subscribe right on watch:*, but the presence claim names it.
    assert.deepEqual(await erin.presenceStats('watch:1'), { channel: 'watch:1', clients: 0, users: 0 });
    await assert.rejects(on(1, 'hank').presenceStats('watch:1'), (e: ServerError) => e.code === 'forbidden');
    // Quiet rooms: listings without events.
    const frank = on(1, 'frank', {}, { subscribe: ['quiet:*'] });
    const tf = frank.trackPresence('quiet:1');
    await waitFor(() => tf.status === 'ready', 10_000, 'the snapshot');
    const diffs: PresenceDiff[] = [];
    frank.on('presence', (d) => diffs.push(d));
    const gina = on(0, 'gina', {}, { subscribe: ['quiet:*'] });
    await gina.subscribe('quiet:1').ready;
    await waitFor(async () => (await frank.presenceStats('quiet:1')).users === 2, 10_000, 'gina listed');
    await sleep(300);
    assert.equal(diffs.length, 0, 'no events on a channel whose rule has none');
    await tf.refresh();
    assert.deepEqual(tf.members.map((m) => m.user), ['frank', 'gina']);
  });

  test('a node is killed: its user reconnects to another node within the grace period, nobody sees a leave, the snapshot is taken again', async () => {
    const doomed = await startGateway({ redisPort: redis.port, args: PRESENCE });
    try {
      const ivan = new TidingsClient({
        url: [doomed.ws, (nodes[1] as Gateway).ws],
        token: token('ivan', { info: { name: 'IVAN' } }),
        WebSocket,
        backoff: { initialMs: 50, maxMs: 100 },
      });
      mine.push(ivan);
      const judy = on(0, 'judy');
      const ti = ivan.trackPresence('room:fail');
      const tj = judy.trackPresence('room:fail');
      await waitFor(() => ti.members.length === 2 && tj.members.length === 2, 10_000, 'both members on both sides');
      const seen: PresenceDiff[] = [];
      judy.on('presence', (d) => seen.push(d));
      let snapshots = 0;
      ti.on('change', (c) => void (c.status === 'loading' && snapshots++));
      await doomed.proc.stop('SIGKILL');
      await waitFor(() => ivan.state.status === 'connected' && snapshots > 0 && ti.status === 'ready', 10_000, "ivan's new snapshot on the other node");
      // The dead node's entries expire within 2 x refresh; a leave would follow the grace period.
      await sleep(3000);
      assert.equal(seen.filter((d) => d.leaves.length > 0).length, 0, JSON.stringify(seen));
      assert.deepEqual(tj.members.map((m) => m.user), ['ivan', 'judy']);
      assert.deepEqual(ti.members.map((m) => m.user), ['ivan', 'judy']);
      assert.deepEqual(await judy.presenceStats('room:fail'), { channel: 'room:fail', clients: 2, users: 2 });
    } finally {
      await doomed.proc.stop('SIGKILL');
    }
  });

  test('a node drains: its users reconnect elsewhere within the grace period, and every list shows everybody again', async () => {
    const draining = await startGateway({ redisPort: redis.port, args: [...PRESENCE, '--drain-period', '200ms'] });
    try {
      const movers = ['kate', 'liam'].map((user) => {
        const c = new TidingsClient({
          url: [draining.ws, (nodes[1] as Gateway).ws],
          token: token(user, { info: { name: user.toUpperCase() } }),
          WebSocket,
          goingAwayDelayMs: 100,
        });
        mine.push(c);
        return c;
      });
      const mia = on(0, 'mia');
      const trackers = [...movers, mia].map((c) => c.trackPresence('room:drain', { settleMs: 1500 }));
      const everybody = 'kate,liam,mia';
      const lists = (): string[] => trackers.map((t) => t.members.map((m) => m.user).join());
      // Every first snapshot taken (a listing taken while a member reconnects misses them).
      await waitFor(() => lists().every((l) => l === everybody) && trackers.every((t) => t.status === 'ready'), 10_000, 'everybody on every list');
      const leaves: string[] = [];
      const t0 = Date.now();
      const log: string[] = [];
      mia.on('presence', (d) => {
        leaves.push(...d.leaves.map((l) => l.user));
        log.push(`${Date.now() - t0} mia diff ${JSON.stringify(d)}`);
      });
      // What happened, for a failure's message.
      for (const [i, t] of trackers.entries()) {
        t.on('change', (x) => log.push(`${Date.now() - t0} tracker ${i} ${x.status} ${x.members.map((m) => m.user).join()}`));
      }
      for (const [i, c] of movers.entries()) {
        c.on('connected', (w) => log.push(`${Date.now() - t0} mover ${i} connected ${w.url}`));
        c.on('disconnected', (w) => log.push(`${Date.now() - t0} mover ${i} disconnected ${w.code}`));
      }
      await draining.proc.stop('SIGTERM');
      log.push(`${Date.now() - t0} drained`);
      await waitFor(() => movers.every((c) => c.state.status === 'connected'), 10_000, 'both movers reconnected');
      await waitFor(
        () => lists().every((l) => l === everybody) && trackers.every((t) => t.status === 'ready'),
        10_000,
        'everybody on every list again',
      ).catch((e: Error) => {
        throw new Error(`${e.message}: ${JSON.stringify(trackers.map((t) => [t.status, t.members.map((m) => m.user)]))}\n${log.join('\n')}`);
      });
      await sleep(2500); // past the grace period, the entries' expiry and the settle snapshot
      assert.deepEqual(lists(), [everybody, everybody, everybody]);
      assert.deepEqual(leaves, [], 'nobody left');
    } finally {
      await draining.proc.stop('SIGKILL');
    }
  });
});
