// Compile-time checks of the public API (the runtime part is trivial).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import WS from 'ws';
import type { WebSocketConstructor } from '../src/index.js';

test("both the browser's WebSocket and Node's ws fit the WebSocket option without a cast", () => {
  // The DOM lib's constructor (what `globalThis.WebSocket` is in a browser).
  const dom: WebSocketConstructor | undefined = (globalThis as { WebSocket?: typeof WebSocket }).WebSocket;
  const node: WebSocketConstructor = WS;
  assert.equal(typeof node, 'function');
  void dom;
});
