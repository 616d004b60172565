// End-to-end: the demo app served by a real gateway (--demo, with Redis), driven in
// Debian's Chromium through playwright-core. Starts and always stops its own
// redis-server and gateway processes; bounded by timeouts throughout.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { httpPublish, ROOT, sleep, startGateway, startRedis, waitFor, type Gateway, type Proc } from '../test/harness.js';

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ARTIFACTS = resolve(ROOT, 'e2e/artifacts');
// Two nodes share one Redis in these tests: demo mode is told that is intended.
// Demo mode's presence rule (room:* events) with short timings: a member who left is
// announced 500 ms after their last connection went.
const GRACE_MS = 500;
const GW_ARGS = [
  '--demo',
  '--demo-unsafe',
  '--heartbeat-interval',
  '2s',
  '--drain-period',
  '300ms',
  '--presence-grace',
  `${GRACE_MS}ms`,
  '--presence-refresh',
  '1s',
];
const STEP_MS = 15_000;

// The whole run must end, whatever hangs: the harness kills every child on exit.
const watchdog = setTimeout(() => {
  console.error('e2e watchdog: giving up after 110 s');
  process.exit(1);
}, 110_000);
watchdog.unref();

async function openDemo(browser: Browser, gw: Gateway, user: string, encoding = 'json'): Promise<Page> {
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 760 } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on('pageerror', (e) => console.error(`[${user}] page error: ${e.message}`));
  await page.goto(`${gw.http}/demo/?user=${user}&encoding=${encoding}`);
  await page.locator('[data-testid=connection-status][data-status=connected]').waitFor();
  return page;
}

/** Waits until the element's text matches. */
async function waitText(page: Page, selector: string, re: RegExp, timeoutMs = STEP_MS): Promise<void> {
  await waitFor(
    async () => re.test((await page.locator(selector).first().textContent({ timeout: 1000 }).catch(() => '')) ?? ''),
    timeoutMs,
    `${selector} to match ${re}`,
  );
}

const members = (page: Page, room: string) => page.locator(`[data-testid=room-${room}] [data-testid=member]`);

/** The user ids a room's member list shows, sorted. */
async function users(page: Page, room: string): Promise<string[]> {
  return (await members(page, room).evaluateAll((els) => els.map((e) => e.getAttribute('data-user') ?? ''))).sort();
}

describe('demo app in Chromium', { timeout: 100_000 }, () => {
  let redis: { port: number; proc: Proc } | undefined;
  let gw: Gateway;
  let browser: Browser | undefined;
  let alice: Page;
  let bob: Page;

  before(async () => {
    redis = await startRedis();
    gw = await startGateway({ redisPort: redis.port, args: GW_ARGS });
    // A binary built before the last `npm run build:demo` serves an older app.
    const served = Buffer.from(await (await fetch(`${gw.http}/demo/app.js`)).arrayBuffer());
    const built = readFileSync(resolve(ROOT, '../gateway/demo/app.js'));
    assert.ok(served.equals(built), 'the gateway serves a different app.js than gateway/demo/: rebuild it (cargo build -p gateway)');
    const root = await fetch(`${gw.http}/`, { redirect: 'manual' });
    assert.equal(root.status, 302);
    assert.equal(root.headers.get('location'), '/demo/');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
      timeout: 30_000,
    });
    alice = await openDemo(browser, gw, 'alice');
    // Bob's page speaks MessagePack (binary frames), alice's JSON.
    bob = await openDemo(browser, gw, 'bob', 'msgpack');
    assert.equal(await bob.getByTestId('encoding').textContent(), 'tidings.msgpack');
    assert.equal(await alice.getByTestId('encoding').textContent(), 'tidings.json');
  });

  after(async () => {
    await Promise.race([browser?.close(), sleep(5000)]);
    await gw?.proc.stop('SIGKILL');
    await redis?.proc.stop('SIGKILL');
  });

  test('two pages join a room and chat', async () => {
    for (const page of [alice, bob]) {
      await page.getByTestId('room-input').fill('e2e');
      await page.getByTestId('join-button').click();
      await page.locator('[data-testid=room-e2e] .room-status').filter({ hasText: 'subscribed' }).waitFor();
    }
    await alice.locator('[data-testid=room-e2e] [data-testid=message-input]').fill('hello from alice');
    await alice.locator('[data-testid=room-e2e] [data-testid=send-button]').click();
    await bob.locator('[data-testid=room-e2e] [data-testid=message][data-from=alice]', { hasText: 'hello from alice' }).waitFor();

    await bob.locator('[data-testid=room-e2e] [data-testid=message-input]').fill('hi alice, bob here');
    await bob.locator('[data-testid=room-e2e] [data-testid=message-input]').press('Enter');
    // Each page gets both messages over its own connection, in publish order: wait
    // for the last one on both (bob's own copy can still be on its way when alice
    // shows it), then each message must be there exactly once.
    for (const page of [alice, bob]) {
      await page.locator('[data-testid=room-e2e] [data-testid=message][data-from=bob]', { hasText: 'hi alice, bob here' }).waitFor();
    }
    for (const [name, page] of [['alice', alice], ['bob', bob]] as const) {
      const texts = await page.locator('[data-testid=room-e2e] [data-testid=message]').allTextContents();
      assert.equal(texts.length, 2, `${name}'s page shows ${JSON.stringify(texts)}`);
    }
  });

  test('each room lists its members with online dots; one who leaves the room or closes the page disappears after the grace period', async () => {
    const join = async (page: Page, room: string): Promise<void> => {
      await page.getByTestId('room-input').fill(room);
      await page.getByTestId('join-button').click();
      await page.locator(`[data-testid=room-${room}] .room-status`).filter({ hasText: 'subscribed' }).waitFor();
    };
    for (const page of [alice, bob]) await join(page, 'pres');
    // Demo users are demo-<name>; the name comes from the token's `info` claim
    // (the user id when a token has none).
    for (const page of [alice, bob]) {
      await waitFor(async () => (await users(page, 'pres')).join() === 'demo-alice,demo-bob', STEP_MS, 'both members listed');
      await page.locator('[data-testid=room-pres] [data-testid=members][data-status=ready]').waitFor();
      await waitText(page, '[data-testid=room-pres] [data-testid=member-count]', /^2$/);
      assert.equal(await page.locator('[data-testid=room-pres] [data-testid=member] .dot.online').count(), 2);
    }
    assert.match((await members(alice, 'pres').filter({ has: alice.locator('.you') }).textContent()) ?? '', /alice.*\(you\)/);
    assert.match((await members(alice, 'pres').filter({ hasNotText: 'you' }).textContent()) ?? '', /bob/);
    // The rooms joined before list their members too.
    await waitFor(async () => (await users(alice, 'e2e')).join() === 'demo-alice,demo-bob', STEP_MS, 'the members of #e2e');

    // bob leaves the room (his connection stays): alice's list drops him after the grace period.
    await bob.getByTestId('leave-pres').click();
    const left = Date.now();
    await waitFor(async () => (await users(alice, 'pres')).join() === 'demo-alice', STEP_MS, "bob's leave");
    const after = Date.now() - left;
    assert.ok(after >= GRACE_MS - 100, `bob disappeared ${after} ms after leaving, within the grace period`);
    await waitText(alice, '[data-testid=room-pres] [data-testid=member-count]', /^1$/);

    // carol opens the room and closes her page: gone as well.
    const carol = await openDemo(browser as Browser, gw, 'carol');
    await join(carol, 'pres');
    await waitFor(async () => (await users(alice, 'pres')).join() === 'demo-alice,demo-carol', STEP_MS, 'carol listed');
    await carol.context().close();
    await waitFor(async () => (await users(alice, 'pres')).join() === 'demo-alice', STEP_MS, "carol's leave");
    mkdirSync(ARTIFACTS, { recursive: true });
    await alice.screenshot({ path: resolve(ARTIFACTS, 'demo-presence.png') });
    // Back to #e2e for the tests that follow.
    for (const page of [alice, bob]) await page.getByTestId('room-tab-e2e').click();
  });

  test('a typing indicator appears on the other page, and goes when the message is sent', async () => {
    const input = alice.locator('[data-testid=room-e2e] [data-testid=message-input]');
    await input.pressSequentially('typing som', { delay: 20 });
    await waitText(bob, '[data-testid=room-e2e] [data-testid=typing]', /^alice is typing…$/);
    await input.press('Enter');
    await waitText(bob, '[data-testid=room-e2e] [data-testid=typing]', /^$/);
    await bob.locator('[data-testid=room-e2e] [data-testid=message][data-from=alice]', { hasText: 'typing som' }).waitFor();
  });

  test('a notification published through the HTTP API appears in the notifications panel', async () => {
    // Demo users are demo-<name>: alice's token names demo-alice.
    const receipt = await httpPublish(gw, { user: 'demo-alice', event: 'notice', payload: { text: 'Your order shipped' } });
    assert.equal(receipt.nodes, 1);
    await alice.locator('[data-testid=notification]', { hasText: 'Your order shipped' }).waitFor();
    await waitText(alice, '[data-testid=unread-count]', /^1$/);
    assert.equal(await bob.locator('[data-testid=notification]').count(), 0, 'only alice gets it');
    assert.match((await alice.getByTestId('curl-example').textContent()) ?? '', /api\/v1\/publish[\s\S]*"user":"demo-alice"/);
  });

  test('the gateway restarts: the page reconnects, recovers, and shows what was published meanwhile', async () => {
    // Record every status the page shows, however briefly.
    await alice.evaluate(() => {
      const w = window as unknown as { statusLog: string[] };
      w.statusLog = [];
      const el = document.querySelector('[data-testid=connection-status]');
      const note = (): void => void w.statusLog.push(document.querySelector('[data-testid=connection-status]')?.textContent ?? '');
      if (el) new MutationObserver(note).observe(el.parentElement ?? el, { subtree: true, childList: true, characterData: true });
    });
    const port = gw.port;
    await gw.proc.stop('SIGTERM'); // drains: closes with 1001, then exits
    await waitText(alice, '[data-testid=connection-status]', /reconnect/);

    // While it is down, publish through another node sharing the same Redis.
    const other = await startGateway({ redisPort: redis?.port ?? 0, args: ['--demo', '--demo-unsafe', '--drain-period', '100ms'] });
    try {
      await httpPublish(other, { user: 'demo-alice', event: 'notice', payload: { text: 'Sent while you were away' } });
      await httpPublish(other, { channel: 'room:e2e', event: 'chat', payload: { text: 'missed chat line', from: 'backend' } });
    } finally {
      await other.proc.stop('SIGTERM');
    }
    await sleep(1000); // stay down a little: the page keeps backing off

    gw = await startGateway({ port, redisPort: redis?.port ?? 0, args: GW_ARGS });
    await alice.locator('[data-testid=connection-status][data-status=connected]').waitFor({ timeout: 40_000 });
    await alice.locator('[data-testid=notification]', { hasText: 'Sent while you were away' }).waitFor();
    await alice.locator('[data-testid=room-e2e] [data-testid=message][data-from=backend]', { hasText: 'missed chat line' }).waitFor();
    await waitText(alice, '[data-testid=recovery]', /^recovered$/);
    // The member list is taken again after the reconnect: both pages are in #e2e.
    await waitFor(async () => (await users(alice, 'e2e')).join() === 'demo-alice,demo-bob', 40_000, 'the members of #e2e after the restart');
    await bob.locator('[data-testid=room-e2e] [data-testid=message][data-from=backend]').waitFor({ timeout: 40_000 });

    const log = await alice.evaluate(() => (window as unknown as { statusLog: string[] }).statusLog);
    assert.ok(log.some((s) => /^reconnecting in \d+ s$/.test(s)), `statuses seen: ${JSON.stringify(log)}`);
    assert.equal(log.at(-1), 'connected');
    // Nothing twice: history replay and live delivery were de-duplicated.
    assert.equal(await alice.locator('[data-testid=notification]').count(), 2);
    assert.equal(await alice.locator('[data-testid=room-e2e] [data-testid=message]').count(), 4);
    await waitText(alice, '[data-testid=event-log]', /reconnecting in [\d.]+ s[\s\S]*|recovered/);

    mkdirSync(ARTIFACTS, { recursive: true });
    await alice.screenshot({ path: resolve(ARTIFACTS, 'demo.png') });
    await bob.screenshot({ path: resolve(ARTIFACTS, 'demo-bob.png') });
  });
});
