// Per-channel history positions: resume points and de-duplication by offset. A port
// of the Rust client's `positions` module (same rules, same tests).

import type { Since } from './frames.js';

/**
 * Where the client is in one channel's history: the epoch of the stream and the last
 * offset delivered (or, right after subscribing, the channel's latest offset, so a
 * reconnect resumes from the moment of the subscription). Either part is undefined
 * when the server did not say (a channel without history). Resuming needs both.
 *
 * The gateway reports epoch `""` (with offset 0) for a channel that keeps history
 * but has none yet; resuming from `{offset: 0, epoch: ""}` replays everything the
 * channel got since.
 */
export interface Position {
  epoch?: string;
  offset?: number;
}

/** The `since` to send when (re)subscribing, if both parts are known. */
export function sinceOf(p: Position | undefined): Since | undefined {
  if (p?.offset === undefined || p.epoch === undefined) return undefined;
  return { offset: p.offset, epoch: p.epoch };
}

/**
 * The positions of every channel, and the de-duplication rule: within an epoch
 * offsets grow by one per message, so a message whose offset is not above the last
 * one seen on its channel is a duplicate (typically a replayed message that had
 * already arrived live before a reconnect).
 */
export class Positions {
  private readonly map = new Map<string, Position>();
  private dups = 0;

  get(channel: string): Position | undefined {
    const p = this.map.get(channel);
    return p && { ...p };
  }

  all(): Record<string, Position> {
    const out: Record<string, Position> = {};
    for (const [k, v] of this.map) out[k] = { ...v };
    return out;
  }

  since(channel: string): Since | undefined {
    return sinceOf(this.map.get(channel));
  }

  set(channel: string, p: Position): void {
    this.map.set(channel, { ...p });
  }

  remove(channel: string): void {
    this.map.delete(channel);
  }

  /** Messages dropped as duplicates so far. */
  get duplicates(): number {
    return this.dups;
  }

  private entry(channel: string): Position {
    let p = this.map.get(channel);
    if (!p) {
      p = {};
      this.map.set(channel, p);
    }
    return p;
  }

  /**
   * Records a delivered message. Returns false (and counts it) for a duplicate that
   * must not reach the application. `epoch` is the one the message carries, if any.
   */
  accept(channel: string, offset: number | undefined, epoch?: string): boolean {
    if (offset === undefined) return true;
    const p = this.entry(channel);
    if (epoch !== undefined && p.epoch !== epoch) {
      // First message of a (new) epoch: offsets start over, nothing to compare.
      p.epoch = epoch;
      p.offset = offset;
      return true;
    }
    if (p.offset !== undefined && offset <= p.offset) {
      this.dups += 1;
      return false;
    }
    p.offset = offset;
    return true;
  }

  /**
   * A subscription (or connection) without a resume: the server reported the
   * channel's epoch and latest offset. Later messages follow that offset.
   */
  fresh(channel: string, epoch: string | undefined, latest: number | undefined): void {
    const p = this.entry(channel);
    if (epoch !== undefined && p.epoch !== epoch) {
      // A live message may have come before the reply: keep the larger offset.
      const offset =
        p.epoch === undefined && p.offset !== undefined && latest !== undefined
          ? Math.max(p.offset, latest)
          : latest;
      p.epoch = epoch;
      p.offset = offset;
    } else if (latest !== undefined) {
      p.offset = p.offset === undefined ? latest : Math.max(p.offset, latest);
    }
  }

  /**
   * The answer to a resume (`recovered` present): missed messages follow and advance
   * the offset. In another epoch old offsets mean nothing: if the client had a real
   * epoch, the server replays nothing (it cannot tell where the client is in the new
   * stream), so later messages follow the latest offset; if it had none, or the empty
   * epoch of a channel that had no history yet, everything that follows is new.
   */
  resumed(channel: string, epoch: string | undefined, latest: number | undefined): void {
    const p = this.entry(channel);
    if (epoch !== undefined && p.epoch !== epoch) {
      // The Rust client keys this on `p.epoch.is_some()`, which drops the replay that
      // follows a resume from the empty epoch; a non-empty epoch is the right test.
      p.offset = p.epoch ? latest : undefined;
      p.epoch = epoch;
    }
  }
}
