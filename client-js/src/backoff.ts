// Reconnection delays: exponential backoff with full jitter, reset after a stable
// connection. Same rule as the Rust client's `Backoff` and docs/protocol.md section 13.

export interface BackoffOptions {
  /** First cap (default 1000 ms). */
  initialMs?: number;
  /** Largest cap (default 30000 ms). */
  maxMs?: number;
  /** How long a connection must stay up for the counter to reset (default 10000 ms). */
  stableAfterMs?: number;
}

/**
 * The n-th consecutive failure (from 0) waits a delay drawn uniformly from
 * [0, cap_n), cap_n = min(max, initial * 2^n): 1 s, 2 s, 4 s, 8 s, 16 s, 30 s, 30 s...
 * Random delays spread the reconnects of many clients that lost their node at once.
 */
export class Backoff {
  static readonly INITIAL_MS = 1000;
  static readonly MAX_MS = 30_000;
  static readonly STABLE_AFTER_MS = 10_000;

  readonly initialMs: number;
  readonly maxMs: number;
  readonly stableAfterMs: number;
  private n = 0;
  private upSince: number | undefined;

  constructor(
    opts: BackoffOptions = {},
    private readonly random: () => number = Math.random,
    private readonly now: () => number = Date.now,
  ) {
    this.initialMs = opts.initialMs ?? Backoff.INITIAL_MS;
    this.maxMs = Math.max(opts.maxMs ?? Backoff.MAX_MS, this.initialMs);
    this.stableAfterMs = opts.stableAfterMs ?? Backoff.STABLE_AFTER_MS;
  }

  /** Consecutive delays handed out since the last reset. */
  get attempt(): number {
    return this.n;
  }

  /** The upper bound of the next delay. */
  cap(): number {
    // 2^n overflows to Infinity for large n, which min() handles.
    return Math.min(this.maxMs, this.initialMs * 2 ** this.n);
  }

  /** Draws the next delay and moves to the next cap. */
  nextDelay(): number {
    const cap = this.cap();
    this.n += 1;
    return Math.floor(this.random() * cap);
  }

  reset(): void {
    this.n = 0;
  }

  /** A connection was established (the server's `welcome` arrived). */
  onConnected(): void {
    this.upSince = this.now();
  }

  /** The connection ended: resets the counter if it had been up for `stableAfterMs`. */
  onDisconnected(): void {
    const since = this.upSince;
    this.upSince = undefined;
    if (since !== undefined && this.now() - since >= this.stableAfterMs) this.reset();
  }
}
