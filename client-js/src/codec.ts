// Encodings (docs/protocol.md section 2). The core ships JSON only; MessagePack lives in
// the `tidings-client/msgpack` entry point so JSON users pull in no dependency.

import { ProtocolError } from './errors.js';
import type { ClientFrame } from './frames.js';

/** What a WebSocket hands to `onmessage`: text, or binary in some container. */
export type WireData = string | ArrayBuffer | ArrayBufferView;

export interface Codec {
  /** The encoding subprotocol offered at the handshake. */
  readonly subprotocol: 'tidings.json' | 'tidings.msgpack';
  /** A text frame (JSON) or a binary frame (MessagePack). */
  encode(frame: ClientFrame): string | Uint8Array;
  /** The decoded frame, not yet validated. Throws ProtocolError. */
  decode(data: WireData): unknown;
}

/** Views binary WebSocket data (ArrayBuffer, Uint8Array, Node Buffer) as bytes. */
export function bytesOf(data: ArrayBuffer | ArrayBufferView): Uint8Array {
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return new Uint8Array(data);
}

/** `tidings.json`: one JSON object per text frame. */
export const jsonCodec: Codec = {
  subprotocol: 'tidings.json',
  encode: (frame) => JSON.stringify(frame),
  decode(data) {
    if (typeof data !== 'string') throw new ProtocolError('binary frame on a JSON connection');
    try {
      return JSON.parse(data) as unknown;
    } catch (e) {
      throw new ProtocolError(`invalid JSON: ${(e as Error).message}`);
    }
  },
};
