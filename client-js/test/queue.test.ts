import assert from 'node:assert/strict';
import { test } from 'node:test';
import { OfflineQueue } from '../src/queue.js';

test('keeps order and refuses items when full', () => {
  const q = new OfflineQueue<number>(3);
  assert.equal(q.length, 0);
  for (const i of [1, 2, 3]) assert.equal(q.push(i), true);
  assert.equal(q.push(4), false, 'a full queue refuses');
  assert.equal(q.length, 3);
  assert.equal(q.shift(), 1);
  assert.equal(q.push(5), true, 'room again after one left');
  assert.deepEqual(q.drain(), [2, 3, 5]);
  assert.equal(q.length, 0);
  assert.equal(q.shift(), undefined);
});

test('zero capacity refuses everything', () => {
  assert.equal(new OfflineQueue<string>(0).push('x'), false);
});

test('stays in order across many pushes and shifts (compaction)', () => {
  const q = new OfflineQueue<number>(1000);
  const out: number[] = [];
  let next = 0;
  for (let round = 0; round < 50; round++) {
    for (let i = 0; i < 7; i++) q.push(next++);
    for (let i = 0; i < 5; i++) out.push(q.shift() as number);
  }
  out.push(...q.drain());
  assert.deepEqual(out, [...Array(next).keys()]);
});
