// End-to-end: the demo's shared documents in Debian's Chromium (playwright-core),
// served by a real gateway (--demo, with Redis). Three pages type at once into one
// document, each on its own line; one page goes offline (the browser context's
// network off) and types a burst while the others type on; all end with the same
// text, the offline page reports what it resynced and sent; a page reloads and shows
// the same text. Starts and always stops its own redis-server and gateway.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { ROOT, sleep, startGateway, startRedis, waitFor, type Gateway, type Proc } from '../test/harness.js';

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ARTIFACTS = resolve(ROOT, 'e2e/artifacts');
// A 2 s heartbeat: a page whose network is off notices within 4 s.
const GW_ARGS = ['--demo', '--demo-unsafe', '--heartbeat-interval', '2s', '--presence-grace', '500ms', '--presence-refresh', '1s'];
const STEP_MS = 20_000;
const DOC = 'e2e';

const watchdog = setTimeout(() => {
  console.error('collab e2e watchdog: giving up after 110 s');
  process.exit(1);
}, 110_000);
watchdog.unref();

const text = (page: Page): Promise<string> => page.getByTestId('doc-text').inputValue();
const status = (page: Page): Promise<string | null> => page.getByTestId('doc-status').getAttribute('data-status');

async function openDoc(browser: Browser, gw: Gateway, user: string, encoding = 'json'): Promise<Page> {
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 760 } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on('pageerror', (e) => console.error(`[${user}] page error: ${e.message}`));
  await page.goto(`${gw.http}/demo/?user=${user}&encoding=${encoding}&view=docs&doc=${DOC}`);
  await page.locator('[data-testid=doc-status][data-status=ready]').waitFor();
  return page;
}

/** Puts the caret at the end of line `line` (0-based) with the keyboard, then types `s`. */
async function typeAtLineEnd(page: Page, line: number, s: string): Promise<void> {
  const area = page.getByTestId('doc-text');
  await area.focus();
  await page.keyboard.press('Control+Home');
  for (let i = 0; i < line; i++) await page.keyboard.press('ArrowDown');
  await page.keyboard.press('End');
  await page.keyboard.type(s, { delay: 15 });
}

/** Every page shows `want` (or the same text, when undefined), ready, nothing pending. */
async function converged(pages: Page[], want?: string): Promise<string> {
  let last: string[] = [];
  await waitFor(
    async () => {
      last = await Promise.all(pages.map(text));
      const ready = await Promise.all(pages.map(status));
      const pending = await Promise.all(pages.map((p) => p.getByTestId('doc-pending').count()));
      return ready.every((s) => s === 'ready') && pending.every((n) => n === 0) && last.every((t) => t === (want ?? last[0]));
    },
    STEP_MS,
    'the same text on every page',
  ).catch((e: Error) => {
    throw new Error(`${e.message}: ${JSON.stringify(last)}`);
  });
  return last[0] ?? '';
}

describe('shared documents in Chromium', { timeout: 100_000 }, () => {
  let redis: { port: number; proc: Proc } | undefined;
  let gw: Gateway;
  let browser: Browser | undefined;
  let pages: Page[] = [];

  before(async () => {
    redis = await startRedis();
    gw = await startGateway({ redisPort: redis.port, args: GW_ARGS });
    const served = Buffer.from(await (await fetch(`${gw.http}/demo/app.js`)).arrayBuffer());
    assert.ok(served.equals(readFileSync(resolve(ROOT, '../gateway/demo/app.js'))), 'the gateway serves an older app.js: cargo build -p gateway');
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
      timeout: 30_000,
    });
    // Bob's page speaks MessagePack.
    pages = await Promise.all([openDoc(browser, gw, 'alice'), openDoc(browser, gw, 'bob', 'msgpack'), openDoc(browser, gw, 'carol')]);
  });

  after(async () => {
    await Promise.race([browser?.close(), sleep(5000)]);
    await gw?.proc.stop('SIGKILL');
    await redis?.proc.stop('SIGKILL');
  });

  test('three pages type into one document at once, each on its own line, and show the same text', async () => {
    const [alice, bob, carol] = pages as [Page, Page, Page];
    await typeAtLineEnd(alice, 0, 'A:');
    await alice.keyboard.press('Enter');
    await alice.keyboard.type('B:');
    await alice.keyboard.press('Enter');
    await alice.keyboard.type('C:');
    await converged(pages, 'A:\nB:\nC:');
    await Promise.all([
      typeAtLineEnd(alice, 0, 'alice types here.'),
      typeAtLineEnd(bob, 1, 'bob too!'),
      // An astral character: DOM offsets are UTF-16, the document counts code points.
      typeAtLineEnd(carol, 2, 'carol 😀 as well'),
    ]);
    await converged(pages, 'A:alice types here.\nB:bob too!\nC:carol 😀 as well');
    // Each page shows the others' carets, named from presence (demo users are demo-<name>).
    await waitFor(
      async () => (await alice.locator('[data-testid=remote-cursor]').evaluateAll((els) => els.map((e) => e.getAttribute('data-user')).sort().join())) === 'demo-bob,demo-carol',
      STEP_MS,
      "bob's and carol's carets on alice's page",
    );
    assert.equal(await alice.locator('[data-testid=remote-cursor][data-user=demo-carol]').getAttribute('data-name'), 'carol');
    // Carol's caret is at the end of her line, in code points: line 3 starts at 31
    // ("A:alice types here.\n" 20, "B:bob too!\n" 11), "C:carol 😀 as well" is 17 long.
    await waitFor(
      async () => (await alice.locator('[data-testid=remote-cursor][data-user=demo-carol]').getAttribute('data-head')) === String(31 + 17),
      STEP_MS,
      "carol's caret at the end of her line",
    );
  });

  test('one page goes offline and types a burst while the others type on: all end with the same text, and it reports the resync', async () => {
    const [alice, bob, carol] = pages as [Page, Page, Page];
    await carol.context().setOffline(true);
    await carol.locator('[data-testid=doc-status][data-status=offline]').waitFor();
    await Promise.all([typeAtLineEnd(carol, 2, ' offline burst'), typeAtLineEnd(alice, 0, ' more'), typeAtLineEnd(bob, 1, ' more too')]);
    // The others' edits are in; carol's wait on her page.
    await converged([alice, bob], 'A:alice types here. more\nB:bob too! more too\nC:carol 😀 as well');
    assert.equal(await text(carol), 'A:alice types here.\nB:bob too!\nC:carol 😀 as well offline burst');
    await carol.context().setOffline(false);
    await converged(pages, 'A:alice types here. more\nB:bob too! more too\nC:carol 😀 as well offline burst');
    // The others' carets moved with their own typing while carol was away: at their line ends.
    await waitFor(
      async () =>
        (await carol.locator('[data-testid=remote-cursor]').evaluateAll((els) => els.map((e) => `${e.getAttribute('data-user')}@${e.getAttribute('data-head')}`).sort().join())) ===
        'demo-alice@24,demo-bob@44',
      STEP_MS,
      "alice's and bob's carets at their line ends on carol's page",
    );
    const report = (await carol.getByTestId('doc-resync').textContent()) ?? '';
    const m = /resynced (\d+) remote ops?, sent 14 offline edits/.exec(report);
    assert.ok(m && Number(m[1]) > 0, report);
    mkdirSync(ARTIFACTS, { recursive: true });
    await carol.screenshot({ path: resolve(ARTIFACTS, 'demo-docs.png') });
  });

  test('a page reloads and shows the same text', async () => {
    const [alice, bob] = pages as [Page, Page, Page];
    const before = await text(alice);
    await bob.reload();
    await bob.locator('[data-testid=doc-status][data-status=ready]').waitFor();
    assert.equal(await text(bob), before);
    // And edits on together.
    await typeAtLineEnd(bob, 1, '!');
    await converged(pages, before.replace('more too', 'more too!'));
  });
});
