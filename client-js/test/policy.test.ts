import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { onClose, onConnectionLost, onHandshakeStatus, type Reconnect } from '../src/policy.js';
import { closed, closeName, handshakeStatus, namedCloseCodes } from '../src/ended.js';
import { ROOT } from './harness.js';

// Written by the protocol crate from protocol::close (protocol/tests/client_fixtures.rs):
// the one table of close codes, their names and what a client does on each.
interface CloseCodes {
  close_codes: { code: number; name: string; reconnect: Reconnect }[];
  other_close_code: Reconnect;
  connection_lost: Reconnect;
  handshake_statuses: { status: number; reconnect: Reconnect }[];
  other_handshake_status: Reconnect;
}
const table = JSON.parse(readFileSync(`${ROOT}/test/fixtures/close-codes.json`, 'utf8')) as CloseCodes;

test('close codes react as protocol::close::CODES says', () => {
  assert.ok(table.close_codes.length >= 13);
  for (const c of table.close_codes) assert.equal(onClose(c.code), c.reconnect, `close code ${c.code} (${c.name})`);
  // A code the protocol does not define (a newer server's, a proxy's).
  for (const code of [1005, 1012, 3000, 4000, 4999]) {
    assert.ok(!table.close_codes.some((c) => c.code === code));
    assert.equal(onClose(code), table.other_close_code, `close code ${code}`);
  }
  assert.equal(onConnectionLost(), table.connection_lost);
});

test('close code names are the protocol crate\'s, for exactly its codes', () => {
  for (const c of table.close_codes) assert.equal(closeName(c.code), c.name, `close code ${c.code}`);
  assert.deepEqual(
    namedCloseCodes().sort((a, b) => a - b),
    table.close_codes.map((c) => c.code),
  );
  assert.equal(closeName(4999), undefined);
  // The name is the reason of a close frame that carries none.
  assert.equal(closed(4005, '').reason, 'resync');
  assert.equal(closed(1001, 'draining').reason, 'draining');
  assert.equal(closed(4999, '').reason, 'close code 4999');
});

test('refused handshakes react as protocol::close::HANDSHAKE_STATUSES says', () => {
  for (const h of table.handshake_statuses) assert.equal(onHandshakeStatus(h.status), h.reconnect, `status ${h.status}`);
  for (const status of [408, 429, 500, 502, 504]) {
    assert.ok(!table.handshake_statuses.some((h) => h.status === status));
    assert.equal(onHandshakeStatus(status), table.other_handshake_status, `status ${status}`);
  }
});

test("reads the status of a refused upgrade from Node ws's error event", () => {
  assert.equal(handshakeStatus({ message: 'Unexpected server response: 401' }), 401);
  assert.equal(handshakeStatus({ message: 'connect ECONNREFUSED' }), undefined);
  assert.equal(handshakeStatus({}), undefined);
  assert.equal(handshakeStatus(null), undefined);
});
