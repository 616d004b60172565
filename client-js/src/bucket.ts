// A token bucket that keeps the client under the server's inbound rate limit
// (`welcome.limits`): the gateway strikes rate-limited frames and closes with 1008
// after ten, so the client paces itself instead (docs/protocol.md section 11).

import type { Limits } from './frames.js';

export class Bucket {
  private tokens: number;
  private readonly cap: number;
  private readonly rate: number; // tokens per ms
  private at: number;

  constructor(
    limits: Limits | undefined,
    private readonly now: () => number = Date.now,
  ) {
    // Stay a little below the advertised limits: the two clocks are not in step.
    this.cap = limits ? Math.max(1, Math.floor(limits.rate_burst * 0.9)) : 1e9;
    this.rate = limits ? Math.max(1, limits.rate_per_sec * 0.9) / 1000 : 1e9;
    this.tokens = this.cap;
    this.at = now();
  }

  private refill(): void {
    const t = this.now();
    this.tokens = Math.min(this.cap, this.tokens + (t - this.at) * this.rate);
    this.at = t;
  }

  tryTake(): boolean {
    this.refill();
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return true;
    }
    return false;
  }

  /** Frames that cannot wait (subscriptions, pongs) may go into debt. */
  force(): void {
    this.refill();
    this.tokens -= 1;
  }

  /** Milliseconds until one token is available. */
  waitMs(): number {
    this.refill();
    return Math.max(0, Math.ceil((1 - this.tokens) / this.rate));
  }
}
