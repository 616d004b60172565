import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff } from '../src/backoff.js';

function seeded(seed: number): () => number {
  // mulberry32: a small deterministic generator for the jitter.
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('caps double from 1 s up to the 30 s maximum and stay there', () => {
  const b = new Backoff({}, seeded(7));
  const caps: number[] = [];
  for (let i = 0; i < 10; i++) {
    caps.push(b.cap());
    b.nextDelay();
  }
  assert.deepEqual(caps, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000]);
  for (let i = 0; i < 2000; i++) b.nextDelay(); // 2^n overflows to Infinity: still capped
  assert.equal(b.cap(), 30000);
  assert.ok(b.nextDelay() < 30000);
});

test('delays are full jitter: uniform over [0, cap), not just its top half', () => {
  const rnd = seeded(42);
  for (let n = 0; n < 8; n++) {
    const cap = Math.min(30000, 1000 * 2 ** n);
    let lo = cap;
    let hi = 0;
    for (let k = 0; k < 400; k++) {
      const b = new Backoff({}, rnd);
      for (let i = 0; i < n; i++) b.nextDelay();
      assert.equal(b.cap(), cap);
      const d = b.nextDelay();
      assert.ok(d >= 0 && d <= cap, `attempt ${n}: ${d} > ${cap}`);
      lo = Math.min(lo, d);
      hi = Math.max(hi, d);
    }
    assert.ok(lo < cap / 10, `attempt ${n}: smallest ${lo} of ${cap}`);
    assert.ok(hi > (cap * 9) / 10, `attempt ${n}: largest ${hi} of ${cap}`);
  }
});

test('the extremes of the random source give 0 and just under the cap', () => {
  assert.equal(new Backoff({}, () => 0).nextDelay(), 0);
  const b = new Backoff({}, () => 0.999999);
  assert.equal(b.nextDelay(), 999);
  assert.equal(b.nextDelay(), 1999);
});

test('resets only after a connection that stayed up for the stable period', () => {
  let now = 0;
  const b = new Backoff({}, seeded(3), () => now);
  for (let i = 0; i < 4; i++) b.nextDelay();
  assert.equal(b.cap(), 16000);

  b.onConnected();
  now += 9000; // up 9 s: not stable, keeps growing
  b.onDisconnected();
  assert.equal(b.cap(), 16000);
  b.nextDelay();
  assert.equal(b.cap(), 30000);

  b.onConnected();
  now += 10000; // up 10 s: stable, starts over
  b.onDisconnected();
  assert.equal(b.attempt, 0);
  assert.equal(b.cap(), 1000);

  b.nextDelay(); // a disconnect without a connection changes nothing
  b.onDisconnected();
  assert.equal(b.cap(), 2000);
});

test('custom bounds', () => {
  const b = new Backoff({ initialMs: 50, maxMs: 200, stableAfterMs: 1000 }, seeded(0));
  const caps = [0, 1, 2, 3, 4].map(() => {
    const c = b.cap();
    b.nextDelay();
    return c;
  });
  assert.deepEqual(caps, [50, 100, 200, 200, 200]);
  // A maximum below the initial cap is raised to it.
  assert.equal(new Backoff({ initialMs: 500, maxMs: 100 }).cap(), 500);
});
