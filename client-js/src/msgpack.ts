// `tidings-client/msgpack`: the `tidings.msgpack` encoding, one MessagePack map per
// binary frame. A separate entry point so that JSON-only users never load
// @msgpack/msgpack (an optional peer dependency).
//
//   import { TidingsClient } from 'tidings-client';
//   import { msgpackCodec } from 'tidings-client/msgpack';
//   const client = new TidingsClient({ url, token, codec: msgpackCodec });

import { decode, encode } from '@msgpack/msgpack';
import { bytesOf, type Codec } from './codec.js';
import { ProtocolError } from './errors.js';

export const msgpackCodec: Codec = {
  subprotocol: 'tidings.msgpack',
  // ignoreUndefined: optional fields are left out, never sent as nil.
  encode: (frame) => encode(frame, { ignoreUndefined: true }),
  decode(data) {
    if (typeof data === 'string') throw new ProtocolError('text frame on a MessagePack connection');
    try {
      // uint64 (e.g. `ts`) comes back as a number; milliseconds fit in 2^53.
      return decode(bytesOf(data));
    } catch (e) {
      throw new ProtocolError(`invalid MessagePack: ${(e as Error).message}`);
    }
  },
};
