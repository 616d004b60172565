// Wire frames (docs/protocol.md section 6): the client frames we send, and a lenient
// decoder for server frames that ignores unknown fields and unknown frame types, so a
// newer server never breaks this client.

import { ProtocolError } from './errors.js';

/** Any JSON value: what a payload can be. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** A position in a channel's history: resume after `offset` of `epoch`. */
export interface Since {
  offset: number;
  epoch: string;
}

/** `welcome.limits`: the node's limits (section 11). */
export interface Limits {
  max_message_bytes: number;
  max_payload_bytes: number;
  max_channels: number;
  rate_per_sec: number;
  rate_burst: number;
}

export interface WelcomeFrame {
  type: 'welcome';
  session: string;
  node: string;
  user: string;
  channel: string;
  heartbeat_ms: number;
  expires_at: number;
  limits?: Limits;
  epoch?: string;
  offset?: number;
  recovered?: boolean;
}

export interface MessageFrame {
  type: 'message';
  channel: string;
  event: string;
  payload: JsonValue;
  msg_id?: string;
  offset?: number;
  /** The history epoch `offset` belongs to (docs/protocol.md, section 6 `message`). */
  epoch?: string;
  ts: number;
}

export interface ReplyFrame {
  type: 'reply';
  id?: number;
  ok: boolean;
  result?: JsonValue;
  /** `offset` and `epoch` come with `conflict` (where the channel's history is). */
  error?: { code: string; message: string; offset?: number; epoch?: string };
}

export interface PingFrame {
  type: 'ping';
}

/** A user who joined a channel's presence, with the public `info` of their token. */
export interface PresenceJoin {
  user: string;
  /** The token's `info` claim; absent when the token has none. */
  info?: JsonValue;
}

/** A user who left a channel's presence (their last connection gone for the grace period). */
export interface PresenceLeave {
  user: string;
}

/** `presence_diff`: users who joined or left a channel (docs/protocol.md section 15). */
export interface PresenceDiffFrame {
  type: 'presence_diff';
  channel: string;
  joins: PresenceJoin[];
  leaves: PresenceLeave[];
}

/** A frame type this client does not know (ignored). */
export interface UnknownFrame {
  type: 'unknown';
  kind: string;
}

export type ServerFrame = WelcomeFrame | MessageFrame | ReplyFrame | PresenceDiffFrame | PingFrame | UnknownFrame;

// Field order matters only for MessagePack byte equality with the Rust encoder
// (docs/protocol.md hex dumps): type, id, then the request's fields.
export type ClientFrame =
  | { type: 'subscribe'; id: number; channel: string; since?: Since }
  | { type: 'unsubscribe'; id: number; channel: string }
  | { type: 'publish'; id: number; channel: string; event: string; payload: JsonValue; expect?: Since }
  | { type: 'refresh'; id: number; token: string }
  | { type: 'ack'; id: number; offset: number }
  | { type: 'presence'; id: number; channel: string; limit?: number; cursor?: string }
  | { type: 'presence_stats'; id: number; channel: string }
  | { type: 'history'; id: number; channel: string; limit?: number; since?: Since }
  | { type: 'pong' };

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

// MessagePack decoders may hand back uint64 as bigint; JSON gives numbers.
function num(v: unknown): number | undefined {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'bigint') return Number(v);
  return undefined;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

function need<T>(v: T | undefined, field: string, type: string): T {
  if (v === undefined) throw new ProtocolError(`${type} frame without a valid \`${field}\``);
  return v;
}

/** Converts a decoded MessagePack/JSON value into a JSON value (bigint -> number). */
export function toJson(v: unknown): JsonValue {
  if (v === null || v === undefined) return null;
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean') return v;
  if (Array.isArray(v)) return v.map(toJson);
  if (isObj(v)) {
    const out: { [key: string]: JsonValue } = {};
    for (const [k, x] of Object.entries(v)) out[k] = toJson(x);
    return out;
  }
  throw new ProtocolError(`not a JSON value: ${typeof v}`);
}

function limits(v: unknown): Limits | undefined {
  if (!isObj(v)) return undefined;
  const l = {
    max_message_bytes: num(v.max_message_bytes),
    max_payload_bytes: num(v.max_payload_bytes),
    max_channels: num(v.max_channels),
    rate_per_sec: num(v.rate_per_sec),
    rate_burst: num(v.rate_burst),
  };
  return Object.values(l).every((x) => x !== undefined) ? (l as Limits) : undefined;
}

/** The entries of a `presence_diff` list (missing: empty); each needs a string `user`. */
function users(v: unknown, field: string): Obj[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new ProtocolError(`presence_diff frame with a \`${field}\` that is not a list`);
  return v.map((x) => {
    if (!isObj(x) || typeof x.user !== 'string') {
      throw new ProtocolError(`presence_diff frame with an entry of \`${field}\` without a \`user\``);
    }
    return x;
  });
}

/** Validates a decoded frame. Throws ProtocolError for a malformed known frame. */
export function parseServerFrame(v: unknown): ServerFrame {
  if (!isObj(v)) throw new ProtocolError('server frame is not an object');
  const type = str(v.type);
  switch (type) {
    case 'welcome': {
      const w: WelcomeFrame = {
        type,
        session: need(str(v.session), 'session', type),
        node: need(str(v.node), 'node', type),
        user: need(str(v.user), 'user', type),
        channel: need(str(v.channel), 'channel', type),
        heartbeat_ms: need(num(v.heartbeat_ms), 'heartbeat_ms', type),
        expires_at: need(num(v.expires_at), 'expires_at', type),
      };
      const l = limits(v.limits);
      if (l) w.limits = l;
      const epoch = str(v.epoch);
      if (epoch !== undefined) w.epoch = epoch;
      const offset = num(v.offset);
      if (offset !== undefined) w.offset = offset;
      if (typeof v.recovered === 'boolean') w.recovered = v.recovered;
      return w;
    }
    case 'message': {
      const m: MessageFrame = {
        type,
        channel: need(str(v.channel), 'channel', type),
        event: need(str(v.event), 'event', type),
        payload: toJson(v.payload),
        ts: num(v.ts) ?? 0,
      };
      const msgId = str(v.msg_id);
      if (msgId !== undefined) m.msg_id = msgId;
      const offset = num(v.offset);
      if (offset !== undefined) m.offset = offset;
      const epoch = str(v.epoch);
      if (epoch !== undefined) m.epoch = epoch;
      return m;
    }
    case 'reply': {
      const r: ReplyFrame = { type, ok: v.ok === true };
      const id = num(v.id);
      if (id !== undefined) r.id = id;
      if (v.result !== undefined) r.result = toJson(v.result);
      if (isObj(v.error)) {
        r.error = { code: str(v.error.code) ?? 'internal', message: str(v.error.message) ?? '' };
        const offset = num(v.error.offset);
        if (offset !== undefined) r.error.offset = offset;
        const epoch = str(v.error.epoch);
        if (epoch !== undefined) r.error.epoch = epoch;
      }
      return r;
    }
    case 'presence_diff':
      return {
        type,
        channel: need(str(v.channel), 'channel', type),
        joins: users(v.joins, 'joins').map((j) =>
          j.info === undefined || j.info === null ? { user: j.user as string } : { user: j.user as string, info: toJson(j.info) },
        ),
        leaves: users(v.leaves, 'leaves').map((l) => ({ user: l.user as string })),
      };
    case 'ping':
      return { type };
    case undefined:
      throw new ProtocolError('server frame without a `type`');
    default:
      return { type: 'unknown', kind: type };
  }
}
