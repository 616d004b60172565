// The `history` request's result (docs/protocol.md): a channel's position and entries
// of its history, read without subscribing. Checked as strictly as presence results:
// a reply that does not read as documented is a ProtocolError.

import { ProtocolError } from './errors.js';
import { toJson } from './frames.js';
import type { HistoryResult, Message } from './types.js';

/** Most entries one `history` request returns (the server's limit and default). */
export const MAX_HISTORY_PAGE = 100;

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function count(v: unknown, field: string): number {
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) {
    throw new ProtocolError(`history result without a valid \`${field}\``);
  }
  return n;
}

/** A `history` reply's result; throws ProtocolError when it does not read as documented. */
export function parseHistoryResult(v: unknown): HistoryResult {
  if (!isObj(v)) throw new ProtocolError('history result is not an object');
  if (typeof v.channel !== 'string') throw new ProtocolError('history result without a `channel`');
  if (typeof v.epoch !== 'string') throw new ProtocolError('history result without an `epoch`');
  const channel = v.channel;
  const pubs = v.publications ?? [];
  if (!Array.isArray(pubs)) throw new ProtocolError('history result whose `publications` is not a list');
  const publications = pubs.map((p): Message => {
    if (!isObj(p) || typeof p.event !== 'string') throw new ProtocolError('history entry without an `event`');
    const m: Message = {
      channel,
      event: p.event,
      payload: toJson(p.payload),
      offset: count(p.offset, 'offset'),
      ts: p.ts === undefined ? 0 : count(p.ts, 'ts'),
    };
    if (typeof p.msg_id === 'string') m.msgId = p.msg_id;
    return m;
  });
  return { channel, epoch: v.epoch, offset: count(v.offset, 'offset'), publications };
}
