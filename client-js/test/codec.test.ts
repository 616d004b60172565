// Frame encoding and decoding in both encodings, checked against every example of
// docs/protocol.md (JSON text and the Rust protocol crate's MessagePack bytes).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { jsonCodec } from '../src/codec.js';
import { ProtocolError } from '../src/errors.js';
import { parseServerFrame, type ClientFrame } from '../src/frames.js';
import { msgpackCodec } from '../src/msgpack.js';
import { ROOT } from './harness.js';

interface Fixture {
  json: string;
  msgpack: string;
}
const fixtures = (
  JSON.parse(readFileSync(`${ROOT}/test/fixtures/protocol-frames.json`, 'utf8')) as { frames: Fixture[] }
).frames;
const CLIENT_TYPES = new Set(['subscribe', 'unsubscribe', 'publish', 'refresh', 'ack', 'history', 'presence', 'presence_stats', 'pong']);
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const unhex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));

test('the fixtures cover every client and server frame type', () => {
  const types = new Set(fixtures.map((f) => (JSON.parse(f.json) as { type: string }).type));
  for (const t of [...CLIENT_TYPES, 'welcome', 'message', 'reply', 'presence_diff', 'ping']) assert.ok(types.has(t), t);
});

test('client frames encode to the documented JSON text and MessagePack bytes', () => {
  let n = 0;
  for (const f of fixtures) {
    const frame = JSON.parse(f.json) as ClientFrame;
    if (!CLIENT_TYPES.has(frame.type)) continue;
    assert.equal(jsonCodec.encode(frame), f.json);
    assert.equal(hex(msgpackCodec.encode(frame) as Uint8Array), f.msgpack, f.json);
    n++;
  }
  assert.equal(n, 13);
});

test('server frames decode the same from JSON and from MessagePack', () => {
  let n = 0;
  for (const f of fixtures) {
    const type = (JSON.parse(f.json) as { type: string }).type;
    if (CLIENT_TYPES.has(type)) continue;
    const fromJson = parseServerFrame(jsonCodec.decode(f.json));
    const fromPack = parseServerFrame(msgpackCodec.decode(unhex(f.msgpack).buffer as ArrayBuffer));
    assert.deepEqual(fromPack, fromJson, f.json);
    assert.equal(fromJson.type, type);
    n++;
  }
  assert.equal(n, 26);
});

test('decoded frames carry the documented fields (uint64 ts as a number)', () => {
  const msg = fixtures.find((f) => f.json.includes('"order.shipped"')) as Fixture;
  const m = parseServerFrame(msgpackCodec.decode(unhex(msg.msgpack)));
  assert.deepEqual(m, {
    type: 'message',
    channel: '$user:alice',
    event: 'order.shipped',
    payload: { order: 1234, carrier: 'ups' },
    msg_id: 'ord-1234-shipped',
    offset: 43,
    ts: 1767225600123,
  });
  const w = fixtures.find((f) => f.json.includes('"recovered":true') && f.json.includes('welcome')) as Fixture;
  const welcome = parseServerFrame(msgpackCodec.decode(unhex(w.msgpack)));
  assert.equal(welcome.type, 'welcome');
  if (welcome.type === 'welcome') {
    assert.equal(welcome.heartbeat_ms, 30000);
    assert.equal(welcome.limits?.rate_burst, 100);
    assert.equal(welcome.epoch, '5c0f3e9a1b7d2846');
    assert.equal(welcome.offset, 42);
    assert.equal(welcome.recovered, true);
  }
  const e = parseServerFrame(jsonCodec.decode('{"type":"reply","ok":false,"error":{"code":"bad_frame","message":"x"}}'));
  assert.deepEqual(e, { type: 'reply', ok: false, error: { code: 'bad_frame', message: 'x' } });
});

test('optional fields are left out, not sent as null', () => {
  const f: ClientFrame = { type: 'subscribe', id: 1, channel: 'news', since: undefined };
  assert.equal(hex(msgpackCodec.encode(f) as Uint8Array).length / 2, 33);
});

test('lenient decoding: unknown fields and frame types are tolerated, broken frames are errors', () => {
  const later = parseServerFrame(jsonCodec.decode('{"type":"later","x":1}'));
  assert.deepEqual(later, { type: 'unknown', kind: 'later' });
  const ping = parseServerFrame(jsonCodec.decode('{"type":"ping","new_field":[1,2]}'));
  assert.deepEqual(ping, { type: 'ping' });
  assert.throws(() => jsonCodec.decode('nope'), ProtocolError);
  assert.throws(() => jsonCodec.decode(new Uint8Array([0x80])), ProtocolError);
  assert.throws(() => msgpackCodec.decode('{"type":"ping"}'), ProtocolError);
  assert.throws(() => msgpackCodec.decode(new Uint8Array([0xc1])), ProtocolError);
  assert.throws(() => parseServerFrame({ no: 'type' }), ProtocolError);
  assert.throws(() => parseServerFrame([1, 2]), ProtocolError);
  assert.throws(() => parseServerFrame({ type: 'message', channel: 'x' }), ProtocolError);
});

test('MessagePack accepts Node Buffers and typed-array views', () => {
  const bytes = msgpackCodec.encode({ type: 'pong' }) as Uint8Array;
  const padded = new Uint8Array(bytes.length + 4);
  padded.set(bytes, 2);
  assert.deepEqual(msgpackCodec.decode(padded.subarray(2, 2 + bytes.length)), { type: 'pong' });
  assert.deepEqual(msgpackCodec.decode(Buffer.from(bytes)), { type: 'pong' });
});

// Produced by the Rust protocol crate (ClientFrame::Presence / PresenceStats and
// encode_presence_diff): both optional fields at once, and a diff with info and both
// lists non-empty, which the docs' examples do not show.
const PRESENCE_FRAMES: { json: string; msgpack: string }[] = [
  {
    json: '{"type":"presence","id":5,"channel":"room:1","limit":100,"cursor":"node-a/0000000000000001"}',
    msgpack:
      '85a474797065a870726573656e6365a2696405a76368616e6e656ca6726f6f6d3a31a56c696d697464a6637572736f72b76e6f64652d612f30303030303030303030303030303031',
  },
  { json: '{"type":"presence","id":6,"channel":"room:1"}', msgpack: '83a474797065a870726573656e6365a2696406a76368616e6e656ca6726f6f6d3a31' },
  {
    json: '{"type":"presence_stats","id":7,"channel":"room:1"}',
    msgpack: '83a474797065ae70726573656e63655f7374617473a2696407a76368616e6e656ca6726f6f6d3a31',
  },
];
const PRESENCE_DIFF = {
  json: '{"type":"presence_diff","channel":"room:1","joins":[{"user":"alice","info":{"name":"Alice"}},{"user":"carol"}],"leaves":[{"user":"bob"}]}',
  msgpack:
    '84a474797065ad70726573656e63655f64696666a76368616e6e656ca6726f6f6d3a31a56a6f696e739282a475736572a5616c696365a4696e666f81a46e616d65a5416c69636581a475736572a56361726f6ca66c65617665739181a475736572a3626f62',
};

test('presence frames encode to the Rust crate\'s JSON text and MessagePack bytes; presence_diff decodes the same from both', () => {
  for (const f of PRESENCE_FRAMES) {
    const frame = JSON.parse(f.json) as ClientFrame;
    assert.equal(jsonCodec.encode(frame), f.json);
    assert.equal(hex(msgpackCodec.encode(frame) as Uint8Array), f.msgpack, f.json);
  }
  const fromJson = parseServerFrame(jsonCodec.decode(PRESENCE_DIFF.json));
  const fromPack = parseServerFrame(msgpackCodec.decode(unhex(PRESENCE_DIFF.msgpack)));
  assert.deepEqual(fromPack, fromJson);
  assert.deepEqual(fromJson, {
    type: 'presence_diff',
    channel: 'room:1',
    joins: [{ user: 'alice', info: { name: 'Alice' } }, { user: 'carol' }],
    leaves: [{ user: 'bob' }],
  });
  // Missing lists are empty; null info is no info; a malformed entry is an error.
  assert.deepEqual(parseServerFrame({ type: 'presence_diff', channel: 'c', joins: [{ user: 'a', info: null }] }), {
    type: 'presence_diff',
    channel: 'c',
    joins: [{ user: 'a' }],
    leaves: [],
  });
  assert.throws(() => parseServerFrame({ type: 'presence_diff', joins: [] }), ProtocolError);
  assert.throws(() => parseServerFrame({ type: 'presence_diff', channel: 'c', leaves: [{}] }), ProtocolError);
  assert.throws(() => parseServerFrame({ type: 'presence_diff', channel: 'c', joins: {} }), ProtocolError);
});
