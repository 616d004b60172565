import assert from 'node:assert/strict';
import { test } from 'node:test';
import { jwtExpiry, refreshDelayMs } from '../src/token.js';
import { signJwt } from './harness.js';

test('refresh at 80% of the remaining lifetime, at most 60 s before expiry', () => {
  assert.equal(refreshDelayMs(1_100, 1_000_000), 80_000); // 100 s left
  assert.equal(refreshDelayMs(4_600, 1_000_000), 3_540_000); // an hour left
  assert.equal(refreshDelayMs(1_000, 1_000_000), undefined);
  assert.equal(refreshDelayMs(999, 1_000_000), undefined);
});

test('reads exp from a JWT, including base64url characters and UTF-8 claims', () => {
  assert.equal(jwtExpiry(signJwt({ sub: 'ünïcödé~~~??>>', exp: 1767229200 })), 1767229200);
  assert.equal(jwtExpiry(signJwt({ sub: 'x' })), undefined);
  assert.equal(jwtExpiry('not a jwt'), undefined);
  assert.equal(jwtExpiry('a.!!!.c'), undefined);
});
