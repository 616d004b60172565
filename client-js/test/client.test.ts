// The client's behaviour against a fake server: queueing, resume, de-duplication,
// timeouts, close-code policy, heartbeats and tokens.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TidingsClient } from '../src/client.js';
import {
  ClosedError,
  DisconnectedError,
  QueueFullError,
  ServerClosedError,
  ServerError,
  SubscriptionLostError,
  TimeoutError,
  UnauthorizedError,
  type TidingsError,
} from '../src/errors.js';
import type { ClientEvents, ClientOptions, Message, SubscribeRetry } from '../src/types.js';
import { fakeWebSocket } from './fake-ws.js';
import { signJwt, sleep, waitFor } from './harness.js';

const TOKEN = signJwt({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 3600 });

function setup(opts: Partial<ClientOptions> = {}) {
  const fake = fakeWebSocket();
  const client = new TidingsClient({
    url: 'ws://gw.test/ws',
    token: TOKEN,
    WebSocket: fake.WS,
    random: () => 0, // reconnect at once unless a test says otherwise
    ...opts,
  });
  const events: { type: keyof ClientEvents; ev: unknown }[] = [];
  for (const type of ['connected', 'disconnected', 'reconnecting', 'recovered', 'error', 'message'] as const) {
    client.on(type, (ev) => events.push({ type, ev }));
  }
  const of = <K extends keyof ClientEvents>(type: K): ClientEvents[K][] =>
    events.filter((e) => e.type === type).map((e) => e.ev as ClientEvents[K]);
  return { client, fake, events, of };
}

test('connects with the encoding and the token as subprotocols, never the token in the URL; answers ping', async () => {
  const { client, fake, of } = setup();
  const ws = await fake.nth(0);
  assert.deepEqual(ws.protocols, ['tidings.json', `tidings.token.${TOKEN}`]);
  assert.equal(ws.url, 'ws://gw.test/ws');
  ws.welcome();
  assert.equal(client.state.status, 'connected');
  assert.equal(of('connected')[0]?.channel, '$user:alice');
  ws.push({ type: 'ping' });
  assert.deepEqual(await ws.next('pong'), { type: 'pong' });
  await client.close();
  assert.deepEqual(ws.closedWith, { code: 1000, reason: 'client closed' });
  assert.equal(client.state.status, 'stopped');
});

test('offline publishes and acks are queued and sent in order after the resubscriptions', async () => {
  const { client, fake } = setup();
  const sub = client.subscribe('room:1');
  const p1 = client.publish('room:1', 'chat', { n: 1 });
  const p2 = client.publish('room:2', 'chat', { n: 2 });
  const a = client.ack(5);
  const ws = await fake.nth(0);
  ws.welcome();
  assert.deepEqual(
    ws.sent.map((f) => [f.type, f.channel ?? f.offset]),
    [
      ['subscribe', 'room:1'],
      ['publish', 'room:1'],
      ['publish', 'room:2'],
      ['ack', 5],
    ],
  );
  const ids = ws.sent.map((f) => f.id);
  assert.equal(new Set(ids).size, 4, 'distinct correlation ids');
  // Replies out of order still reach the right promises.
  ws.reply(ids[3], { offset: 4 });
  ws.reply(ids[2], { nodes: 1, sessions: 2 });
  ws.reply(ids[1], { nodes: 1 });
  ws.reply(ids[0], { channel: 'room:1' });
  assert.deepEqual(await p2, { nodes: 1, sessions: 2, raw: { nodes: 1, sessions: 2 } });
  assert.deepEqual(await p1, { nodes: 1, raw: { nodes: 1 } });
  assert.equal(await a, 4);
  assert.deepEqual(await sub.ready, { channel: 'room:1' });
  await client.close();
});

test('a full offline queue rejects with QueueFullError; the queued ones survive', async () => {
  const { client, fake } = setup({ queueCapacity: 2 });
  const ok1 = client.publish('room:1', 'e', 1);
  const ok2 = client.publish('room:1', 'e', 2);
  await assert.rejects(client.publish('room:1', 'e', 3), (e: QueueFullError) => e.kind === 'queue_full' && e.capacity === 2);
  const ws = await fake.nth(0);
  ws.welcome();
  assert.deepEqual(
    ws.sent.map((f) => f.payload),
    [1, 2],
  );
  for (const f of ws.sent) ws.reply(f.id, { nodes: 0 });
  await Promise.all([ok1, ok2]);
  await client.close();
});

test('requests time out with TimeoutError; a late reply is ignored', async () => {
  const { client, fake } = setup({ requestTimeoutMs: 50 });
  const ws = await fake.nth(0);
  ws.welcome();
  const p = client.publish('room:1', 'e', null);
  const f = await ws.next('publish');
  await assert.rejects(p, (e: TimeoutError) => e instanceof TimeoutError && e.timeoutMs === 50);
  ws.reply(f.id, { nodes: 1 }); // no effect, no crash
  // Server errors reject with the code.
  const q = client.publish('$user:bob', 'e', null);
  const g = await ws.next('publish');
  ws.replyError(g.id, 'invalid_channel', 'reserved');
  await assert.rejects(q, (e: ServerError) => e instanceof ServerError && e.code === 'invalid_channel');
  await client.close();
});

test('in-flight requests fail with DisconnectedError when the connection drops; subscriptions wait for the reconnect', async () => {
  const { client, fake } = setup();
  const ws = await fake.nth(0);
  ws.welcome();
  const p = client.publish('room:1', 'e', null);
  const sub = client.subscribe('room:9');
  await ws.next('publish');
  ws.drop();
  await assert.rejects(p, DisconnectedError);
  const ws2 = await fake.nth(1);
  ws2.welcome();
  const s = await ws2.next('subscribe');
  ws2.reply(s.id, { channel: 'room:9' });
  assert.equal((await sub.ready).channel, 'room:9');
  await client.close();
});

test('resubscribes from the last offset and epoch, drops replayed duplicates, reports recovery', async () => {
  const { client, fake, of } = setup();
  const sub = client.subscribe('room:1');
  const got: Message[] = [];
  sub.on('message', (m) => got.push(m));
  const ws = await fake.nth(0);
  ws.welcome({ epoch: 'pe', offset: 3 });
  const s1 = await ws.next('subscribe');
  assert.equal(s1.since, undefined);
  ws.reply(s1.id, { channel: 'room:1', epoch: 'e1', offset: 10 });
  await sub.ready;
  ws.push({ type: 'message', channel: 'room:1', event: 'chat', payload: 'a', offset: 11, epoch: 'e1', ts: 1 });
  ws.push({ type: 'message', channel: '$user:alice', event: 'n', payload: 'p', offset: 4, epoch: 'pe', ts: 1 });
  ws.drop();

  const ws2 = await fake.nth(1);
  assert.equal(ws2.url, 'ws://gw.test/ws?since=4&epoch=pe', 'personal channel resumed at connect');
  ws2.welcome({ epoch: 'pe', offset: 4, recovered: true });
  const s2 = await ws2.next('subscribe');
  assert.deepEqual(s2.since, { offset: 11, epoch: 'e1' });
  ws2.reply(s2.id, { channel: 'room:1', epoch: 'e1', offset: 13, recovered: true });
  for (const offset of [11, 12, 13]) {
    ws2.push({ type: 'message', channel: 'room:1', event: 'chat', payload: offset, offset, epoch: 'e1', ts: 1 });
  }
  ws2.push({ type: 'message', channel: 'room:1', event: 'chat', payload: 12, offset: 12, epoch: 'e1', ts: 1 });
  assert.deepEqual(
    got.map((m) => m.offset),
    [11, 12, 13],
  );
  assert.equal(client.duplicatesDropped, 2);
  assert.deepEqual(of('recovered'), [
    { channel: '$user:alice', recovered: true },
    { channel: 'room:1', recovered: true },
  ]);
  assert.deepEqual(client.position('room:1'), { epoch: 'e1', offset: 13 });
  await client.close();
});

test('an epoch change restarts offsets and reports not recovered', async () => {
  const { client, fake, of } = setup();
  const sub = client.subscribe('room:1', { since: { offset: 70, epoch: 'old' } });
  const got: number[] = [];
  sub.on('message', (m) => got.push(m.offset ?? -1));
  const ws = await fake.nth(0);
  ws.welcome();
  const s = await ws.next('subscribe');
  assert.deepEqual(s.since, { offset: 70, epoch: 'old' });
  ws.reply(s.id, { channel: 'room:1', epoch: 'new', offset: 2, recovered: false });
  ws.push({ type: 'message', channel: 'room:1', event: 'x', payload: null, offset: 3, epoch: 'new', ts: 1 });
  // A live message of yet another epoch (history expired while subscribed).
  ws.push({ type: 'message', channel: 'room:1', event: 'x', payload: null, offset: 1, epoch: 'newer', ts: 1 });
  assert.deepEqual(got, [3, 1]);
  assert.deepEqual(of('recovered'), [{ channel: 'room:1', recovered: false }]);
  assert.deepEqual(client.position('room:1'), { epoch: 'newer', offset: 1 });
  await client.close();
});

test('messages of a channel left are ignored; unsubscribe forgets its position', async () => {
  const { client, fake, of } = setup();
  const ws = await fake.nth(0);
  ws.welcome();
  const sub = client.subscribe('room:1');
  const s = await ws.next('subscribe');
  ws.reply(s.id, { channel: 'room:1' });
  await sub.ready;
  const u = sub.unsubscribe();
  const f = await ws.next('unsubscribe');
  ws.push({ type: 'message', channel: 'room:1', event: 'x', payload: null, ts: 1 });
  ws.replyError(f.id, 'not_subscribed'); // counts as success
  await u;
  assert.equal(of('message').length, 0);
  assert.equal(sub.active, false);
  assert.equal(client.position('room:1'), undefined);
  await client.close();
});

test('a refused resubscription ends the subscription with SubscriptionLostError', async () => {
  const { client, fake, of } = setup();
  const sub = client.subscribe('room:1');
  const lost: TidingsError[] = [];
  sub.on('error', (e) => lost.push(e));
  const ws = await fake.nth(0);
  ws.welcome();
  ws.reply((await ws.next('subscribe')).id, { channel: 'room:1' });
  await sub.ready;
  ws.drop();
  const ws2 = await fake.nth(1);
  ws2.welcome();
  ws2.replyError((await ws2.next('subscribe')).id, 'forbidden');
  assert.ok(lost[0] instanceof SubscriptionLostError && lost[0].code === 'forbidden');
  assert.ok(of('error').some((e) => e instanceof SubscriptionLostError));
  assert.equal(client.subscriptions.length, 0);
  // A first subscribe that is refused rejects `ready` instead.
  const bad = client.subscribe('secret');
  ws2.replyError((await ws2.next('subscribe')).id, 'forbidden');
  await assert.rejects(bad.ready, (e: ServerError) => e.code === 'forbidden');
  await client.close();
});

test('a subscribe refused with unavailable stays, is retried with backoff from the held position, and becomes subscribed; rate_limited is not retried', async (t) => {
  // Delays: random 0.5 of the caps 40, 80 ms.
  const { client, fake, of } = setup({ backoff: { initialMs: 40 }, random: () => 0.5 });
  t.after(() => client.close()); // also when an assertion fails
  const ws = await fake.nth(0);
  ws.welcome();
  const sub = client.subscribe('room:1', { since: { offset: 7, epoch: 'e1' } });
  const retries: SubscribeRetry[] = [];
  sub.on('retrying', (r) => retries.push(r));
  const got: Message[] = [];
  sub.on('message', (m) => got.push(m));
  const subscribes = () => ws.sent.filter((f) => f.type === 'subscribe');

  const s1 = await ws.next('subscribe');
  ws.replyError(s1.id, 'unavailable', 'the Redis instance holding this channel is unreachable');
  // `ready` reports the refusal, but the subscription stays and waits for its retry.
  await assert.rejects(sub.ready, (e: ServerError) => e instanceof ServerError && e.code === 'unavailable');
  assert.equal(sub.active, true);
  assert.deepEqual(client.subscriptions, [sub]);
  assert.deepEqual(
    retries.map((r) => [r.error.code, r.delayMs, r.attempt]),
    [['unavailable', 20, 1]],
  );
  assert.equal(sub.retrying?.attempt, 1);
  assert.equal(subscribes().length, 1, 'not sent again at once');

  const s2 = await ws.next('subscribe');
  assert.deepEqual(s2.since, { offset: 7, epoch: 'e1' }, 'the retry resumes from the held position');
  ws.replyError(s2.id, 'unavailable');
  const s3 = await ws.next('subscribe');
  assert.deepEqual(
    retries.map((r) => [r.error.code, r.delayMs, r.attempt]),
    [
      ['unavailable', 20, 1],
      ['unavailable', 40, 2],
    ],
    'the backoff doubles',
  );
  assert.deepEqual(s3.since, { offset: 7, epoch: 'e1' });
  ws.reply(s3.id, { channel: 'room:1', epoch: 'e1', offset: 8, recovered: true });
  assert.deepEqual(sub.result, { channel: 'room:1', epoch: 'e1', offset: 8, recovered: true });
  assert.equal(sub.retrying, undefined);
  ws.push({ type: 'message', channel: 'room:1', event: 'chat', payload: 'hi', offset: 8, epoch: 'e1', ts: 1 });
  assert.deepEqual(
    got.map((m) => [m.offset, m.payload]),
    [[8, 'hi']],
  );
  await sleep(100);
  assert.equal(subscribes().length, 3, 'no retry after the success');
  // The caller heard of the first refusal through `ready`; the retry's refusal is an event.
  assert.deepEqual(
    of('error').map((e) => e instanceof SubscriptionLostError && [e.channel, e.code]),
    [['room:1', 'unavailable']],
  );
  assert.equal(sub.active, true);

  // rate_limited is not retried (every refused frame is a strike): the channel is dropped.
  const limited = client.subscribe('room:2');
  ws.replyError((await ws.next('subscribe')).id, 'rate_limited');
  await assert.rejects(limited.ready, (e: ServerError) => e.code === 'rate_limited');
  assert.equal(limited.active, false);
  assert.equal(limited.retrying, undefined);
});

test('a resubscription refused with unavailable after a reconnect is retried, not dropped; a reconnect starts the retry over', async (t) => {
  const { client, fake, of } = setup({ backoff: { initialMs: 40 }, random: () => 0.5 });
  t.after(() => client.close()); // also when an assertion fails
  const sub = client.subscribe('room:1');
  const lost: TidingsError[] = [];
  sub.on('error', (e) => lost.push(e));
  const retries: SubscribeRetry[] = [];
  sub.on('retrying', (r) => retries.push(r));
  const ws = await fake.nth(0);
  ws.welcome();
  ws.reply((await ws.next('subscribe')).id, { channel: 'room:1', epoch: 'e1', offset: 3 });
  await sub.ready;
  ws.drop();

  const ws2 = await fake.nth(1);
  ws2.welcome();
  ws2.replyError((await ws2.next('subscribe')).id, 'unavailable');
  ws2.replyError((await ws2.next('subscribe')).id, 'unavailable');
  assert.deepEqual(
    retries.map((r) => [r.delayMs, r.attempt]),
    [
      [20, 1],
      [40, 2],
    ],
  );
  // The connection drops while the retry waits: the next one resubscribes at once
  // (from the held position), and the retry's backoff starts over.
  ws2.drop();
  assert.equal(sub.retrying, undefined);
  const ws3 = await fake.nth(2);
  ws3.welcome();
  const s = await ws3.next('subscribe');
  assert.deepEqual(s.since, { offset: 3, epoch: 'e1' });
  ws3.replyError(s.id, 'unavailable');
  assert.deepEqual(retries.at(-1)?.attempt, 1);
  assert.deepEqual(retries.at(-1)?.delayMs, 20);
  ws3.reply((await ws3.next('subscribe')).id, { channel: 'room:1', epoch: 'e1', offset: 3, recovered: true });
  assert.equal(sub.result?.recovered, true);
  await sleep(100);
  assert.equal(ws2.sent.filter((f) => f.type === 'subscribe').length, 2, 'the old connection retries no more');
  assert.equal(ws3.sent.filter((f) => f.type === 'subscribe').length, 2);
  assert.equal(sub.active, true);
  assert.deepEqual(lost, [], 'the subscription was never lost');
  assert.deepEqual(client.subscriptions, [sub]);
  // Nobody waited for these answers: each refusal was also a client error event.
  assert.deepEqual(
    of('error').map((e) => e instanceof SubscriptionLostError && e.code),
    ['unavailable', 'unavailable', 'unavailable'],
  );
});

test('unsubscribe while a refused subscribe waits for its retry cancels the retry', async (t) => {
  const { client, fake } = setup({ backoff: { initialMs: 40 }, random: () => 0.5 });
  t.after(() => client.close()); // also when an assertion fails
  const ws = await fake.nth(0);
  ws.welcome();
  const sub = client.subscribe('room:1');
  const retries: SubscribeRetry[] = [];
  sub.on('retrying', (r) => retries.push(r));
  ws.replyError((await ws.next('subscribe')).id, 'unavailable');
  assert.equal(retries.length, 1);
  assert.equal(sub.active, true);
  const u = sub.unsubscribe();
  ws.replyError((await ws.next('unsubscribe')).id, 'not_subscribed');
  await u;
  assert.equal(sub.active, false);
  assert.equal(sub.retrying, undefined);
  assert.deepEqual(client.subscriptions, []);
  await sleep(100); // five times the retry's delay
  assert.equal(ws.sent.filter((f) => f.type === 'subscribe').length, 1, 'no retry after the unsubscribe');
  assert.equal(retries.length, 1);
});

test('a retried subscribe that gets no reply is tried again after its next delay', async (t) => {
  const { client, fake, of } = setup({ backoff: { initialMs: 40 }, random: () => 0.5, requestTimeoutMs: 30 });
  t.after(() => client.close()); // also when an assertion fails
  const ws = await fake.nth(0);
  ws.welcome();
  const sub = client.subscribe('room:1');
  ws.replyError((await ws.next('subscribe')).id, 'unavailable');
  await ws.next('subscribe'); // the retry, never answered
  const s3 = await ws.next('subscribe');
  assert.ok(of('error').some((e) => e instanceof TimeoutError));
  ws.reply(s3.id, { channel: 'room:1' });
  assert.deepEqual(sub.result, { channel: 'room:1' });
  assert.equal(sub.retrying, undefined);
  await sleep(100);
  assert.equal(ws.sent.filter((f) => f.type === 'subscribe').length, 3);
});

test('close codes: 1008 stops without reconnecting', async () => {
  const { client, fake, of } = setup();
  const ws = await fake.nth(0);
  ws.welcome();
  const queued = client.subscribe('room:1');
  ws.serverClose(1008, 'too many invalid or rate-limited frames');
  await waitFor(() => client.state.status === 'stopped', 1000, 'stop');
  await sleep(30);
  assert.equal(fake.sockets.length, 1, 'no reconnect');
  const err = of('error').at(-1);
  assert.ok(err instanceof ServerClosedError && err.code === 1008);
  assert.deepEqual(of('disconnected').at(-1), {
    code: 1008,
    reason: 'too many invalid or rate-limited frames',
    willReconnect: false,
  });
  await assert.rejects(queued.ready, ServerClosedError);
  await assert.rejects(client.publish('room:1', 'e'), ServerClosedError);
});

test('close codes: 4002 and 4003 reconnect with backoff', async () => {
  const { client, fake, of } = setup({ backoff: { initialMs: 40 }, random: () => 0.5 });
  const ws = await fake.nth(0);
  ws.welcome();
  ws.serverClose(4002, 'slow consumer');
  (await fake.nth(1)).serverClose(4003);
  await fake.nth(2);
  assert.deepEqual(
    of('reconnecting').map((r) => r.delayMs),
    [20, 40],
  );
  assert.equal(of('disconnected')[1]?.reason, 'heartbeat_timeout', 'close::name when the frame has no reason');
  await client.close();
});

test('close code 1001 reconnects promptly, not counted as a failure', async () => {
  const { client, fake, of } = setup({ goingAwayDelayMs: 100, random: () => 0.5, url: ['ws://a/ws', 'ws://b/ws'] });
  const ws = await fake.nth(0);
  ws.welcome();
  ws.serverClose(1001, 'node draining');
  const ws2 = await fake.nth(1);
  assert.equal(ws2.url, 'ws://b/ws', 'the next URL');
  assert.deepEqual(of('disconnected')[0], { code: 1001, reason: 'node draining', willReconnect: true, retryInMs: 50 });
  // A second prompt failure in a row (503 draining) is still prompt; after every URL
  // answered that way it falls back to the backoff (cap 1 s: 500 ms here).
  ws2.drop('Unexpected server response: 503');
  (await fake.nth(2)).drop('Unexpected server response: 503');
  await fake.nth(3);
  assert.deepEqual(
    of('reconnecting').map((r) => r.delayMs),
    [50, 50, 500],
  );
  await client.close();
});

test('4001 gets a new token and reconnects with it at once', async () => {
  const fresh = signJwt({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 7200 });
  let calls = 0;
  const { client, fake } = setup({
    getToken: async () => {
      calls++;
      return fresh;
    },
  });
  const ws = await fake.nth(0);
  ws.welcome();
  ws.serverClose(4001, 'token expired');
  const ws2 = await fake.nth(1);
  assert.equal(calls, 1);
  assert.equal(ws2.token, fresh);
  ws2.welcome();
  await client.close();
});

test('no reconnect loop after an auth failure', async () => {
  // Without getToken: stop at once.
  {
    const { client, fake, of } = setup();
    (await fake.nth(0)).welcome();
    fake.sockets[0]?.serverClose(4004);
    await waitFor(() => client.state.status === 'stopped', 1000, 'stop');
    assert.ok(of('error').at(-1) instanceof UnauthorizedError);
    assert.equal(fake.sockets.length, 1);
  }
  // The token getToken just returned is refused as well: stop, don't ask again.
  {
    let n = 0;
    const { client, fake, of } = setup({ getToken: async () => `tok${++n}` });
    (await fake.nth(0)).drop('Unexpected server response: 401');
    (await fake.nth(1)).drop('Unexpected server response: 401');
    await waitFor(() => client.state.status === 'stopped', 1000, 'stop');
    assert.equal(n, 1);
    assert.equal(fake.sockets.length, 2);
    assert.ok(of('error').at(-1) instanceof UnauthorizedError);
  }
  // getToken fails: stop.
  {
    const { client, fake } = setup({ getToken: () => Promise.reject(new Error('backend down')) });
    (await fake.nth(0)).serverClose(4001);
    await waitFor(() => client.state.status === 'stopped', 1000, 'stop');
    const s = client.state;
    assert.ok(s.status === 'stopped' && s.error instanceof UnauthorizedError && /backend down/.test(s.error.message));
  }
  // Handshake 403 (origin refused): a deployment problem, stop.
  {
    const { client, fake } = setup();
    (await fake.nth(0)).drop('Unexpected server response: 403');
    await waitFor(() => client.state.status === 'stopped', 1000, 'stop');
    assert.equal(fake.sockets.length, 1);
  }
});

test('browsers: after two failures before the welcome, a fresh token is fetched and backoff continues', async () => {
  let calls = 0;
  const { client, fake, of } = setup({
    getToken: async () => `fresh${++calls}`,
    backoff: { initialMs: 20 },
    random: () => 0.99,
  });
  (await fake.nth(0)).drop();
  (await fake.nth(1)).drop();
  const ws3 = await fake.nth(2);
  assert.equal(calls, 1);
  assert.equal(ws3.token, 'fresh1');
  ws3.drop();
  (await fake.nth(3)).drop();
  await fake.nth(4);
  assert.equal(calls, 1, 'once per failure streak');
  assert.deepEqual(
    of('reconnecting').map((r) => r.delayMs),
    [19, 39, 79, 158],
  );
  await client.close();
});

test('a token that expires soon is replaced before connecting', async () => {
  const old = signJwt({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 5 });
  const { client, fake } = setup({ token: old, getToken: async () => 'new-token' });
  assert.equal((await fake.nth(0)).token, 'new-token');
  await client.close();
});

test('the token is refreshed on the open connection before it expires', async () => {
  const fresh = signJwt({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 7200 });
  const { client, fake, of } = setup({ getToken: async () => fresh });
  const ws = await fake.nth(0);
  const sub = client.subscribe('room:1');
  // 1 s left: refresh after 800 ms.
  ws.welcome({ expires_at: Math.floor(Date.now() / 1000) + 1 });
  ws.reply((await ws.next('subscribe')).id, { channel: 'room:1' });
  const r = await ws.next('refresh', 2500);
  assert.equal(r.token, fresh);
  ws.reply(r.id, { expires_at: Math.floor(Date.now() / 1000) + 7200, unsubscribed: ['room:1'] });
  assert.equal(sub.active, false);
  assert.ok(of('error').some((e) => e instanceof SubscriptionLostError && e.channel === 'room:1'));
  // refreshToken() by hand.
  const p = client.refreshToken('other');
  const r2 = await ws.next('refresh');
  ws.replyError(r2.id, 'token_mismatch');
  await assert.rejects(p, (e: ServerError) => e.code === 'token_mismatch');
  await client.close();
});

test('no frame for two heartbeat intervals: the connection is dead and replaced', async () => {
  const { client, fake, of } = setup();
  const ws = await fake.nth(0);
  ws.welcome({ heartbeat_ms: 40 });
  await sleep(50);
  ws.push({ type: 'ping' }); // keeps it alive
  await sleep(50);
  assert.equal(fake.sockets.length, 1);
  await fake.nth(1);
  assert.match(of('disconnected')[0]?.reason ?? '', /2 heartbeat intervals/);
  assert.equal(ws.closedWith?.code, 1000);
  await client.close();
});

test('close() while reconnecting stops at once and rejects what is queued', async () => {
  const { client, fake } = setup({ backoff: { initialMs: 60_000 }, random: () => 0.9 });
  (await fake.nth(0)).drop();
  await waitFor(() => client.state.status === 'reconnecting', 1000, 'reconnecting');
  const p = client.publish('room:1', 'e');
  const t0 = Date.now();
  await client.close();
  assert.ok(Date.now() - t0 < 500);
  await assert.rejects(p, ClosedError);
  assert.equal(fake.sockets.length, 1);
});

test('a connect attempt that gets no welcome times out', async () => {
  const { client, fake, of } = setup({ connectTimeoutMs: 50 });
  (await fake.nth(0)).open();
  await fake.nth(1);
  assert.match(of('disconnected')[0]?.reason ?? '', /no welcome/);
  await client.close();
});

test('the publish queue is paced under the rate limit from welcome.limits', async () => {
  const { client, fake } = setup();
  const ws = await fake.nth(0);
  ws.welcome({
    limits: { max_message_bytes: 65536, max_payload_bytes: 65536, max_channels: 128, rate_per_sec: 20, rate_burst: 5 },
  });
  const all = Array.from({ length: 8 }, (_, i) => client.publish('room:1', 'e', i));
  // Burst 5 * 0.9 = 4 at once, the rest at 18/s.
  assert.equal(ws.sent.filter((f) => f.type === 'publish').length, 4);
  await waitFor(() => ws.sent.filter((f) => f.type === 'publish').length === 8, 2000, 'paced publishes');
  assert.deepEqual(
    ws.sent.map((f) => f.payload),
    [0, 1, 2, 3, 4, 5, 6, 7],
  );
  for (const f of ws.sent) ws.reply(f.id, {});
  await Promise.all(all);
  await client.close();
});

test('close() does not wait for a getToken that never answers', async () => {
  const { client, fake } = setup({ token: undefined, getToken: () => new Promise<string>(() => undefined) });
  await sleep(20);
  const t0 = Date.now();
  await client.close();
  assert.ok(Date.now() - t0 < 200);
  assert.equal(fake.sockets.length, 0);
  assert.equal(client.state.status, 'stopped');
});
