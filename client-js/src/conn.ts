// The state of one open (welcomed) connection, and the requests waiting on it.

import type { Bucket } from './bucket.js';
import type { Ended } from './ended.js';
import type { TidingsError } from './errors.js';
import type { Subscription } from './subscription.js';
import type { JsonValue, Since } from './frames.js';
import type { HistoryResult, PresenceResult, PresenceStats, Receipt, WebSocketLike } from './types.js';

export type Timer = ReturnType<typeof setTimeout>;

export interface Deferred<T> {
  resolve(v: T): void;
  reject(e: TidingsError): void;
}

export function deferred<T>(): { promise: Promise<T>; d: Deferred<T> } {
  let d!: Deferred<T>;
  const promise = new Promise<T>((resolve, reject) => {
    d = { resolve, reject };
  });
  return { promise, d };
}

/** A publish, ack or presence query waiting in the outgoing queue. */
export type Outgoing =
  | { kind: 'publish'; channel: string; event: string; payload: JsonValue; expect?: Since; d: Deferred<Receipt> }
  | { kind: 'ack'; offset: number; d: Deferred<number> }
  | { kind: 'presence'; channel: string; limit?: number; cursor?: string; d: Deferred<PresenceResult> }
  | { kind: 'presence_stats'; channel: string; d: Deferred<PresenceStats> }
  | { kind: 'history'; channel: string; limit?: number; since?: Since; d: Deferred<HistoryResult> };

/** A request sent and waiting for its reply. */
export type Pending =
  | { kind: 'subscribe'; channel: string; resumed: boolean; sub: Subscription }
  | { kind: 'unsubscribe'; d: Deferred<void> }
  | { kind: 'publish'; d: Deferred<Receipt> }
  | { kind: 'ack'; offset: number; d: Deferred<number> }
  | { kind: 'presence'; d: Deferred<PresenceResult> }
  | { kind: 'presence_stats'; d: Deferred<PresenceStats> }
  | { kind: 'history'; d: Deferred<HistoryResult> }
  /** `d` is absent for the client's own proactive refresh. */
  | { kind: 'refresh'; token: string; d?: Deferred<number | undefined> };

export interface Conn {
  ws: WebSocketLike;
  url: string;
  personal: string;
  heartbeatMs: number;
  lastRx: number;
  inflight: Map<number, { p: Pending; timer: Timer }>;
  bucket: Bucket;
  hbTimer?: Timer;
  paceTimer?: Timer;
  refreshTimer?: Timer;
  /** Ends the connection (idempotent). */
  end(e: Ended): void;
  ended: boolean;
}
