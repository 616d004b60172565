// One channel the client holds: its messages, its confirmations (after every
// reconnect), and whether it resumed completely. Created by `client.subscribe()`.

import { Emitter } from './emitter.js';
import type { TidingsError } from './errors.js';
import type { JsonValue } from './frames.js';
import type { Position } from './positions.js';
import type { Message, PresenceDiff, PublishOptions, Receipt, SubscribeResult, SubscribeRetry } from './types.js';

export interface SubscriptionEvents {
  message: Message;
  /** Every confirmation from the server: the first one, and one after each reconnect. */
  subscribed: SubscribeResult;
  /**
   * Users joined or left the channel (`presence_diff`; only on channels whose presence
   * rule has `events`). Diffs sent while disconnected are lost: take a new snapshot
   * after each `subscribed` (PresenceTracker does).
   */
  presence: PresenceDiff;
  /** The resume result of a resubscription with `since` (see `Recovered`). */
  recovered: boolean;
  /**
   * A subscribe (the first, a resubscription or a retry) was refused for now
   * (`unavailable`: the Redis instance or partition holding the channel is down):
   * the subscription stays and the subscribe is sent again after `delayMs` (backoff
   * with jitter; at once after a reconnect). `subscribed` follows when one succeeds.
   */
  retrying: SubscribeRetry;
  /**
   * The channel was lost (a resubscription was refused, e.g. `forbidden`); it is no
   * longer held. A refusal that is retried (`unavailable`) is a `retrying` event instead.
   */
  error: TidingsError;
  /** The subscription ended (`unsubscribe()`, lost, or the client stopped). */
  ended: void;
}

/** What a Subscription needs from its client (avoids an import cycle). */
export interface SubscriptionHost {
  unsubscribe(channel: string): Promise<void>;
  publish(channel: string, event: string, payload?: JsonValue, opts?: PublishOptions): Promise<Receipt>;
  position(channel: string): Position | undefined;
}

export class Subscription extends Emitter<SubscriptionEvents> {
  /**
   * Settles with the first confirmation. Rejects when that subscribe is refused
   * (e.g. `forbidden`), times out, or the subscription ends first. While the client
   * is disconnected it waits for the reconnect. A refusal that is retried
   * (`unavailable`) rejects it too (a `ServerError` with that code), but the
   * subscription stays `active` and retries: watch `subscribed`.
   */
  readonly ready: Promise<SubscribeResult>;
  private settle: { resolve(r: SubscribeResult): void; reject(e: TidingsError): void } | undefined;
  private last: SubscribeResult | undefined;
  private retry: SubscribeRetry | undefined;
  private live = true;

  constructor(
    readonly channel: string,
    private readonly host: SubscriptionHost,
  ) {
    super();
    this.ready = new Promise((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    // Callers that only listen to events need not handle `ready`.
    this.ready.catch(() => undefined);
  }

  /** The latest confirmation, if any. */
  get result(): SubscribeResult | undefined {
    return this.last;
  }

  /**
   * The latest refusal that is being retried (see the `retrying` event); undefined
   * once a subscribe succeeded, and while disconnected (the reconnect resubscribes).
   */
  get retrying(): SubscribeRetry | undefined {
    return this.retry;
  }

  /** False once the subscription ended. */
  get active(): boolean {
    return this.live;
  }

  /** The position the client will resume this channel from. */
  get position(): Position | undefined {
    return this.host.position(this.channel);
  }

  unsubscribe(): Promise<void> {
    return this.host.unsubscribe(this.channel);
  }

  /** `client.publish()` on this channel (with `expect`: a conditional publish). */
  publish(event: string, payload: JsonValue = null, opts: PublishOptions = {}): Promise<Receipt> {
    return this.host.publish(this.channel, event, payload, opts);
  }

  /** @internal */
  _confirm(r: SubscribeResult): void {
    this.last = r;
    this.retry = undefined;
    this.settle?.resolve(r);
    this.settle = undefined;
    this.emit('subscribed', r);
    if (r.recovered !== undefined) this.emit('recovered', r.recovered);
  }

  /** @internal Whether the first confirmation is still awaited. */
  get _pending(): boolean {
    return this.settle !== undefined;
  }

  /** @internal Rejects `ready` (if still pending) without ending the subscription. */
  _reject(e: TidingsError): void {
    this.settle?.reject(e);
    this.settle = undefined;
  }

  /** @internal A refused subscribe will be sent again (undefined: no retry waits any more). */
  _retrying(r: SubscribeRetry | undefined): void {
    this.retry = r;
    if (r) this.emit('retrying', r);
  }

  /** @internal */
  _message(m: Message): void {
    this.emit('message', m);
  }

  /** @internal */
  _presence(d: PresenceDiff): void {
    this.emit('presence', d);
  }

  /** @internal The subscription is over; `error` explains why, when it was not asked for. */
  _end(reason: TidingsError, lost: boolean): void {
    if (!this.live) return;
    this.live = false;
    this.retry = undefined;
    this._reject(reason);
    if (lost) this.emit('error', reason);
    this.emit('ended', undefined);
  }
}
