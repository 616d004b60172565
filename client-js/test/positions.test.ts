// The Rust client's positions tests, plus the empty-epoch case the gateway produces.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Positions } from '../src/positions.js';

const pos = (epoch: string, offset: number) => ({ epoch, offset });

test('drops offsets at or below the last one', () => {
  const p = new Positions();
  p.fresh('news', 'e1', 10);
  assert.equal(p.accept('news', 10), false, 'the subscription point itself');
  assert.equal(p.accept('news', 11), true);
  assert.equal(p.accept('news', 12), true);
  assert.equal(p.accept('news', 12), false, 'same offset again');
  assert.equal(p.accept('news', 11), false, 'an older one');
  assert.equal(p.accept('news', 13), true);
  assert.equal(p.duplicates, 3);
  assert.deepEqual(p.get('news'), pos('e1', 13));
  assert.deepEqual(p.since('news'), { offset: 13, epoch: 'e1' });
});

test('messages without offsets always pass', () => {
  const p = new Positions();
  assert.equal(p.accept('chat', undefined), true);
  assert.equal(p.accept('chat', undefined), true);
  assert.equal(p.duplicates, 0);
  assert.equal(p.since('chat'), undefined);
});

test('channels are independent', () => {
  const p = new Positions();
  assert.equal(p.accept('a', 5), true);
  assert.equal(p.accept('b', 1), true);
  assert.equal(p.accept('a', 1), false);
  assert.equal(p.accept('b', 2), true);
});

test('a resume in the same epoch keeps the position', () => {
  const p = new Positions();
  p.set('news', pos('e1', 7));
  p.resumed('news', 'e1', 9);
  assert.equal(p.accept('news', 6), false);
  assert.equal(p.accept('news', 7), false);
  assert.equal(p.accept('news', 8), true);
  assert.equal(p.accept('news', 9), true);
  assert.deepEqual(p.get('news'), pos('e1', 9));
});

test('a new epoch starts over', () => {
  const p = new Positions();
  p.set('news', pos('e1', 70));
  // Nothing is replayed across epochs: continue after the new stream's latest.
  p.resumed('news', 'e2', 3);
  assert.deepEqual(p.get('news'), pos('e2', 3));
  assert.equal(p.accept('news', 4), true);
  assert.equal(p.accept('news', 5), true);
  assert.deepEqual(p.get('news'), pos('e2', 5));
  p.fresh('news', 'e3', 4);
  assert.deepEqual(p.get('news'), pos('e3', 4));
});

test('a resume the server started delivers everything that follows', () => {
  const p = new Positions();
  p.resumed('$user:u', 'e', 9);
  assert.equal(p.since('$user:u'), undefined);
  assert.equal(p.accept('$user:u', 7), true);
  assert.equal(p.accept('$user:u', 8), true);
  assert.equal(p.accept('$user:u', 8), false);
  assert.deepEqual(p.get('$user:u'), pos('e', 8));
});

test('a fresh subscription keeps a live message that came first', () => {
  const p = new Positions();
  assert.equal(p.accept('news', 11), true);
  p.fresh('news', 'e1', 10);
  assert.deepEqual(p.get('news'), pos('e1', 11));
  p.fresh('news', 'e1', 12);
  assert.deepEqual(p.get('news'), pos('e1', 12));
});

test('a live message of a new epoch restarts offsets', () => {
  const p = new Positions();
  assert.equal(p.accept('c', 5, 'e1'), true);
  assert.equal(p.accept('c', 5, 'e1'), false, 'duplicate in the same epoch');
  assert.equal(p.accept('c', 1, 'e2'), true, 'offsets restart in a new epoch');
  assert.equal(p.accept('c', 2, 'e2'), true);
  assert.deepEqual(p.since('c'), { offset: 2, epoch: 'e2' });
});

test('resuming from the empty epoch (no history yet) delivers the replay', () => {
  // The gateway says epoch "" offset 0 for a channel with no history yet; a resume
  // from there replays everything, which must not be dropped as duplicates.
  const p = new Positions();
  p.fresh('$user:u', '', 0);
  assert.deepEqual(p.since('$user:u'), { offset: 0, epoch: '' });
  p.resumed('$user:u', 'e9', 2);
  assert.equal(p.accept('$user:u', 1, 'e9'), true);
  assert.equal(p.accept('$user:u', 2, 'e9'), true);
  assert.equal(p.accept('$user:u', 2, 'e9'), false);
  assert.deepEqual(p.get('$user:u'), pos('e9', 2));
});
