import assert from 'node:assert/strict';
import { test } from 'node:test';
import { onClose, onConnectionLost, onHandshakeStatus } from '../src/policy.js';
import { handshakeStatus } from '../src/ended.js';

test('close codes follow docs/protocol.md section 13 (the Rust client table)', () => {
  const table: [number, string][] = [
    [1000, 'stop'],
    [1001, 'promptly'],
    [1002, 'stop'],
    [1005, 'backoff'],
    [1006, 'backoff'],
    [1007, 'stop'],
    [1008, 'stop'],
    [1009, 'stop'],
    [1011, 'backoff'],
    [4001, 'new_token'],
    [4002, 'backoff'],
    [4003, 'backoff'],
    [4004, 'new_token'],
    [4005, 'promptly'],
    [4999, 'backoff'],
  ];
  for (const [code, want] of table) assert.equal(onClose(code), want, `close code ${code}`);
  assert.equal(onConnectionLost(), 'backoff');
});

test('handshake statuses', () => {
  const table: [number, string][] = [
    [401, 'new_token'],
    [400, 'stop'],
    [403, 'stop'],
    [404, 'stop'],
    [429, 'backoff'],
    [500, 'backoff'],
    [502, 'backoff'],
    [503, 'promptly'],
  ];
  for (const [status, want] of table) assert.equal(onHandshakeStatus(status), want, `status ${status}`);
});

test("reads the status of a refused upgrade from Node ws's error event", () => {
  assert.equal(handshakeStatus({ message: 'Unexpected server response: 401' }), 401);
  assert.equal(handshakeStatus({ message: 'connect ECONNREFUSED' }), undefined);
  assert.equal(handshakeStatus({}), undefined);
  assert.equal(handshakeStatus(null), undefined);
});
