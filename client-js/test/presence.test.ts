// Presence against a fake server: the `presence` and `presence_stats` requests and
// their replies, `presence_diff` frames as events, and PresenceTracker's live member
// list (snapshot by user, joins and leaves, a new snapshot after a reconnect).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TidingsClient } from '../src/client.js';
import { DisconnectedError, ProtocolError, ServerError, TimeoutError, type TidingsError } from '../src/errors.js';
import { applyDiff, groupMembers, type PresenceSnapshot } from '../src/presence.js';
import type { ClientOptions, PresenceDiff } from '../src/types.js';
import { fakeWebSocket, type FakeSocket } from './fake-ws.js';
import { signJwt, waitFor } from './harness.js';

const TOKEN = signJwt({ sub: 'alice', exp: Math.floor(Date.now() / 1000) + 3600 });

function setup(opts: Partial<ClientOptions> = {}) {
  const fake = fakeWebSocket();
  const client = new TidingsClient({ url: 'ws://gw.test/ws', token: TOKEN, WebSocket: fake.WS, random: () => 0, ...opts });
  const errors: TidingsError[] = [];
  client.on('error', (e) => errors.push(e));
  return { client, fake, errors };
}

async function connected(opts: Partial<ClientOptions> = {}) {
  const s = setup(opts);
  const ws = await s.fake.nth(0);
  ws.welcome();
  return { ...s, ws };
}

/** Subscribes and confirms. */
async function subscribed(client: TidingsClient, ws: FakeSocket, channel: string) {
  const sub = client.subscribe(channel);
  const f = await ws.next('subscribe');
  ws.reply(f.id, { channel });
  await sub.ready;
  return sub;
}

const member = (user: string, client: string, name?: string) => (name ? { user, client, info: { name } } : { user, client });

/** Answers the next `presence` request with one page. */
async function page(ws: FakeSocket, members: ReturnType<typeof member>[], cursor?: string, counts = { clients: members.length, users: 0 }) {
  const f = await ws.next('presence');
  const users = counts.users || new Set(members.map((m) => m.user)).size;
  ws.reply(f.id, { channel: f.channel, clients: counts.clients, users, members, ...(cursor ? { cursor } : {}) });
  return f;
}

test('presence: limit and cursor go out as given, the reply is typed, pages are followed to the last', async () => {
  const { client, ws } = await connected();
  const p = client.presence('room:1', { limit: 2 });
  const f = await ws.next('presence');
  assert.deepEqual(f, { type: 'presence', id: f.id, channel: 'room:1', limit: 2 });
  ws.reply(f.id, {
    channel: 'room:1',
    clients: 3,
    users: 2,
    members: [member('alice', 'n1/01', 'Alice'), { user: 'bob', client: 'n1/02', info: null }],
    cursor: 'n1/02',
  });
  assert.deepEqual(await p, {
    channel: 'room:1',
    clients: 3,
    users: 2,
    members: [
      { user: 'alice', client: 'n1/01', info: { name: 'Alice' } },
      { user: 'bob', client: 'n1/02' },
    ],
    cursor: 'n1/02',
  });
  const q = client.presence('room:1', { cursor: 'n1/02' });
  const g = await ws.next('presence');
  assert.deepEqual(g, { type: 'presence', id: g.id, channel: 'room:1', cursor: 'n1/02' });
  ws.reply(g.id, { channel: 'room:1', clients: 3, users: 2, members: [member('alice', 'n2/01')] });
  assert.equal((await q).cursor, undefined);

  // presenceAll: the largest pages, following the cursors; the last page's counts.
  const all = client.presenceAll('room:1');
  const a = await page(ws, [member('u0', 'n1/00')], 'n1/00');
  const b = await page(ws, [member('u1', 'n1/01')], 'n1/01');
  const c = await page(ws, [member('u2', 'n1/02')], undefined, { clients: 7, users: 3 });
  assert.deepEqual([a.limit, a.cursor, b.cursor, c.cursor], [1000, undefined, 'n1/00', 'n1/01']);
  const r = await all;
  assert.deepEqual(r.members.map((m) => m.user), ['u0', 'u1', 'u2']);
  assert.deepEqual([r.clients, r.users, r.cursor], [7, 3, undefined]);

  // A cursor that does not move on is not followed forever.
  const loop = client.presenceAll('room:1');
  await page(ws, [], 'same');
  await page(ws, [], 'same');
  await assert.rejects(loop, (e: ProtocolError) => e instanceof ProtocolError && /same cursor/.test(e.message));

  // Counts only.
  const s = client.presenceStats('room:1');
  const h = await ws.next('presence_stats');
  assert.deepEqual(h, { type: 'presence_stats', id: h.id, channel: 'room:1' });
  ws.reply(h.id, { channel: 'room:1', clients: 4, users: 3 });
  assert.deepEqual(await s, { channel: 'room:1', clients: 4, users: 3 });
  await client.close();
});

test('presence: refusals reject with their code, results that do not read as documented with ProtocolError', async () => {
  const { client, ws } = await connected({ requestTimeoutMs: 100 });
  for (const code of ['bad_request', 'forbidden', 'unavailable']) {
    const p = client.presenceAll('room:1');
    const f = await ws.next('presence');
    ws.replyError(f.id, code);
    await assert.rejects(p, (e: ServerError) => e instanceof ServerError && e.code === code);
  }
  const bad = [
    { channel: 'room:1', clients: 1, users: 1, members: 'nope' },
    { channel: 'room:1', clients: 1, users: 1, members: [{ user: 'a' }] },
    { channel: 'room:1', clients: -1, users: 1, members: [] },
    { clients: 1, users: 1, members: [] },
  ];
  for (const result of bad) {
    const p = client.presence('room:1');
    const f = await ws.next('presence');
    ws.reply(f.id, result);
    await assert.rejects(p, ProtocolError, JSON.stringify(result));
  }
  const s = client.presenceStats('room:1');
  const f = await ws.next('presence_stats');
  ws.reply(f.id, { channel: 'room:1', clients: 1 });
  await assert.rejects(s, ProtocolError);
  const slow = client.presenceStats('room:1');
  await ws.next('presence_stats');
  await assert.rejects(slow, TimeoutError);
  await client.close();
});

test('presence queries wait in the queue while disconnected and fail with DisconnectedError when in flight at a drop', async () => {
  const { client, fake } = setup();
  const queued = client.presenceStats('room:1');
  const ws = await fake.nth(0);
  ws.welcome();
  const f = await ws.next('presence_stats');
  const lost = client.presence('room:1');
  await ws.next('presence');
  ws.drop();
  await assert.rejects(lost, DisconnectedError);
  await assert.rejects(queued, DisconnectedError);
  const later = client.presenceStats('room:2');
  const ws2 = await fake.nth(1);
  ws2.welcome();
  const g = await ws2.next('presence_stats');
  assert.equal(g.channel, 'room:2');
  ws.reply(f.id, { channel: 'room:1', clients: 9, users: 9 }); // the old connection: ignored
  ws2.reply(g.id, { channel: 'room:2', clients: 1, users: 1 });
  assert.equal((await later).users, 1);
  await client.close();
  await assert.rejects(client.presence('room:1'), (e: TidingsError) => e.kind === 'closed');
});

test('presence_diff frames of held channels are client and subscription events; others are dropped', async () => {
  const { client, ws, errors } = await connected();
  const sub = await subscribed(client, ws, 'room:1');
  const onClient: PresenceDiff[] = [];
  const onSub: PresenceDiff[] = [];
  client.on('presence', (d) => onClient.push(d));
  sub.on('presence', (d) => onSub.push(d));
  ws.push({
    type: 'presence_diff',
    channel: 'room:1',
    joins: [{ user: 'bob', info: { name: 'Bob' } }, { user: 'carol' }],
    leaves: [{ user: 'dave', extra: 1 }],
  });
  ws.push({ type: 'presence_diff', channel: 'room:2', joins: [{ user: 'x' }], leaves: [] });
  ws.push({ type: 'presence_diff', channel: 'room:1', leaves: [{ user: 'carol' }] });
  const want = [
    { channel: 'room:1', joins: [{ user: 'bob', info: { name: 'Bob' } }, { user: 'carol' }], leaves: [{ user: 'dave' }] },
    { channel: 'room:1', joins: [], leaves: [{ user: 'carol' }] },
  ];
  assert.deepEqual(onClient, want);
  assert.deepEqual(onSub, want);
  // Malformed: reported, skipped.
  ws.push({ type: 'presence_diff', joins: [] });
  ws.push({ type: 'presence_diff', channel: 'room:1', joins: [{ name: 'no user' }] });
  assert.deepEqual(
    errors.map((e) => e.kind),
    ['protocol', 'protocol'],
  );
  assert.equal(onClient.length, 2);
  // After unsubscribing, late diffs are dropped.
  const u = client.unsubscribe('room:1');
  const f = await ws.next('unsubscribe');
  ws.reply(f.id, { channel: 'room:1' });
  await u;
  ws.push({ type: 'presence_diff', channel: 'room:1', joins: [{ user: 'late' }], leaves: [] });
  assert.equal(onClient.length, 2);
  await client.close();
});

test('grouping members by user and applying diffs: joins idempotent (info updated), leaves remove', () => {
  const users = groupMembers([member('bob', 'n1/1', 'Bob'), member('alice', 'n1/2', 'Alice'), member('bob', 'n2/1', 'Bob')]);
  assert.deepEqual([...users.values()], [
    { user: 'bob', info: { name: 'Bob' }, clients: 2 },
    { user: 'alice', info: { name: 'Alice' }, clients: 1 },
  ]);
  applyDiff(users, { joins: [{ user: 'bob', info: { name: 'Robert' } }, { user: 'carol' }], leaves: [{ user: 'alice' }, { user: 'nobody' }] });
  assert.deepEqual([...users.values()], [
    { user: 'bob', info: { name: 'Robert' }, clients: 2 },
    { user: 'carol', clients: 1 },
  ]);
});

/** Collects a tracker's snapshots. */
function watch(t: { on(type: 'change', fn: (s: PresenceSnapshot) => void): () => void }): PresenceSnapshot[] {
  const seen: PresenceSnapshot[] = [];
  t.on('change', (s) => seen.push(s));
  return seen;
}

test('trackPresence: a snapshot grouped by user after the subscribe, then joins and leaves', async () => {
  const { client, ws } = await connected();
  const t = client.trackPresence('room:1');
  const seen = watch(t);
  assert.equal(t.status, 'loading');
  assert.equal(t.count, undefined);
  const s = await ws.next('subscribe');
  // No presence request before the subscription is confirmed: diffs only flow after it.
  assert.equal(ws.sent.filter((f) => f.type === 'presence').length, 0);
  ws.reply(s.id, { channel: 'room:1' });
  await page(ws, [member('bob', 'n1/1', 'Bob'), member('alice', 'n1/2', 'Alice'), member('bob', 'n2/1', 'Bob')], 'n2/1');
  await page(ws, [member('carol', 'n3/1')]);
  await waitFor(() => t.status === 'ready', 1000, 'the snapshot');
  assert.deepEqual(t.members, [
    { user: 'alice', info: { name: 'Alice' }, clients: 1 },
    { user: 'bob', info: { name: 'Bob' }, clients: 2 },
    { user: 'carol', clients: 1 },
  ]);
  assert.deepEqual(t.count, { clients: 4, users: 3 });

  ws.push({ type: 'presence_diff', channel: 'room:1', joins: [{ user: 'dave', info: { name: 'Dave' } }, { user: 'alice', info: { name: 'Al' } }], leaves: [{ user: 'bob' }] });
  assert.deepEqual(t.members, [
    { user: 'alice', info: { name: 'Al' }, clients: 1 },
    { user: 'carol', clients: 1 },
    { user: 'dave', info: { name: 'Dave' }, clients: 1 },
  ]);
  assert.deepEqual(t.count, { clients: 3, users: 3 });
  // Every change is a new snapshot object (for UI stores).
  assert.ok(seen.length >= 3);
  assert.notEqual(seen.at(-1), seen.at(-2));
  assert.equal(t.snapshot, seen.at(-1));

  t.stop();
  assert.equal(t.status, 'stopped');
  ws.push({ type: 'presence_diff', channel: 'room:1', joins: [{ user: 'erin' }], leaves: [] });
  assert.equal(t.members.length, 3, 'a stopped tracker does not change');
  // Stopping leaves the channel subscribed.
  assert.equal(client.subscriptions.length, 1);
  await client.close();
});

test('trackPresence: diffs that arrive while the snapshot loads are applied after it, in order', async () => {
  const { client, ws } = await connected();
  await subscribed(client, ws, 'room:1');
  const t = client.trackPresence('room:1');
  const f = await ws.next('presence');
  // bob left and erin joined (twice: idempotent) before the snapshot's answer.
  ws.push({ type: 'presence_diff', channel: 'room:1', joins: [{ user: 'erin' }], leaves: [{ user: 'bob' }] });
  ws.push({ type: 'presence_diff', channel: 'room:1', joins: [{ user: 'erin', info: { name: 'Erin' } }], leaves: [] });
  assert.deepEqual(t.members, [{ user: 'erin', info: { name: 'Erin' }, clients: 1 }], 'shown at once');
  assert.equal(t.status, 'loading');
  // The snapshot was taken before those diffs.
  ws.reply(f.id, { channel: 'room:1', clients: 2, users: 2, members: [member('alice', 'n1/1'), member('bob', 'n1/2')] });
  await waitFor(() => t.status === 'ready', 1000, 'the snapshot');
  assert.deepEqual(
    t.members.map((m) => [m.user, m.info]),
    [
      ['alice', undefined],
      ['erin', { name: 'Erin' }],
    ],
  );
  await client.close();
});

test('trackPresence: a new snapshot after the channel is subscribed again after a reconnect', async () => {
  const { client, fake, ws } = await connected();
  const t = client.trackPresence('room:1');
  const s = await ws.next('subscribe');
  ws.reply(s.id, { channel: 'room:1' });
  await page(ws, [member('alice', 'n1/1'), member('bob', 'n1/2')]);
  await waitFor(() => t.status === 'ready', 1000, 'the snapshot');
  ws.drop();
  // While disconnected the last known members stay.
  assert.deepEqual(t.members.map((m) => m.user), ['alice', 'bob']);
  const ws2 = await fake.nth(1);
  ws2.welcome();
  const s2 = await ws2.next('subscribe');
  assert.equal(ws2.sent.filter((f) => f.type === 'presence').length, 0);
  ws2.reply(s2.id, { channel: 'room:1' });
  // bob left while we were away (his leave was never seen); carol came.
  await page(ws2, [member('alice', 'n1/3'), member('carol', 'n2/1')]);
  await waitFor(() => t.status === 'ready', 1000, 'the new snapshot');
  assert.deepEqual(t.members.map((m) => m.user), ['alice', 'carol']);
  await client.close();
  assert.equal(t.status, 'stopped');
});

test('trackPresence: after a reconnect, a second snapshot shows the members who were reconnecting too (no join is announced for them)', async () => {
  const { client, fake, ws } = await connected();
  const t = client.trackPresence('room:1', { snapshotDelayMs: 10, settleMs: 100 });
  const seen = watch(t);
  const s = await ws.next('subscribe');
  ws.reply(s.id, { channel: 'room:1' });
  await page(ws, [member('alice', 'n1/1'), member('bob', 'n1/2')]);
  await waitFor(() => t.status === 'ready', 1000, 'the snapshot');
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(ws.sent.filter((f) => f.type === 'presence').length, 1, 'no second snapshot after the first subscribe');
  ws.drop();
  const ws2 = await fake.nth(1);
  ws2.welcome();
  ws2.reply((await ws2.next('subscribe')).id, { channel: 'room:1' });
  // bob is still reconnecting: not listed yet.
  await page(ws2, [member('alice', 'n2/1')]);
  await waitFor(() => t.status === 'ready' && t.members.length === 1, 1000, 'the first snapshot');
  const at = seen.length;
  await page(ws2, [member('alice', 'n2/1'), member('bob', 'n2/2')]);
  await waitFor(() => t.members.length === 2, 1000, 'the settle snapshot');
  assert.deepEqual(t.members.map((m) => m.user), ['alice', 'bob']);
  // The check of a current list is quiet: it stays ready.
  assert.deepEqual(
    seen.slice(at).map((x) => x.status),
    ['ready'],
  );
  await client.close();
});

test('trackPresence: refusals for now are asked again with backoff; others wait for the next subscription', async () => {
  const { client, ws } = await connected({ random: () => 0.01, backoff: { initialMs: 1000 } });
  await subscribed(client, ws, 'room:1');
  const t = client.trackPresence('room:1', { retry: { initialMs: 100, maxMs: 200 } });
  const seen = watch(t);
  let f = await ws.next('presence');
  ws.replyError(f.id, 'unavailable');
  f = await ws.next('presence'); // after ~1 ms (random 0.01 of 100 ms)
  const failed = seen.find((x) => x.status === 'error');
  assert.equal((failed?.error as ServerError).code, 'unavailable');
  assert.equal(t.status, 'loading');
  ws.reply(f.id, { channel: 'room:1', clients: 1, users: 1, members: [member('alice', 'n1/1')] });
  await waitFor(() => t.status === 'ready', 1000, 'the snapshot');
  assert.equal(t.error, undefined);

  // bad_request (no presence on the channel): not asked again by itself.
  const u = client.trackPresence('room:1');
  f = await ws.next('presence');
  ws.replyError(f.id, 'bad_request', 'no presence for this channel');
  await waitFor(() => u.status === 'error', 1000, 'the error');
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(ws.sent.filter((x) => x.type === 'presence').length, 3);
  // refresh() asks again.
  const again = u.refresh();
  f = await ws.next('presence');
  ws.reply(f.id, { channel: 'room:1', clients: 0, users: 0, members: [] });
  await again;
  assert.deepEqual([u.status, u.count], ['ready', { clients: 0, users: 0 }]);
  await client.close();
});

test('trackPresence: lists again every relistMs, quietly; rate_limited waits for the budget to refill', async () => {
  const { client, ws } = await connected();
  await subscribed(client, ws, 'room:1');
  const t = client.trackPresence('room:1', { snapshotDelayMs: 0, relistMs: 100 });
  const seen = watch(t);
  await page(ws, [member('alice', 'n1/1')]);
  await waitFor(() => t.status === 'ready', 1000, 'the snapshot');
  const at = seen.length;
  // A member missed by the first listing (no join was announced for them).
  await page(ws, [member('alice', 'n1/1'), member('bob', 'n1/2')]);
  await waitFor(() => t.members.length === 2, 1000, 'the relisting');
  assert.deepEqual(
    seen.slice(at).map((x) => x.status),
    ['ready'],
  );
  // The history-read budget is empty: a strike; not asked again before it refilled.
  const f = await ws.next('presence');
  ws.replyError(f.id, 'rate_limited');
  await waitFor(() => t.status === 'error', 1000, 'the error');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(ws.sent.filter((x) => x.type === 'presence').length, 3);
  await client.close();
});

test('trackPresence: a refused subscription is the tracker\'s error', async () => {
  const { client, ws } = await connected();
  const t = client.trackPresence('secret:1');
  const s = await ws.next('subscribe');
  ws.replyError(s.id, 'forbidden', 'no');
  await waitFor(() => t.status === 'error', 1000, 'the error');
  assert.equal((t.error as ServerError).code, 'forbidden');
  assert.equal(ws.sent.filter((f) => f.type === 'presence').length, 0);
  await client.close();
});
