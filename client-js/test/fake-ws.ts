// An in-memory WebSocket for unit tests: the test plays the server.

import type { WebSocketConstructor, WebSocketLike } from '../src/types.js';
import { waitFor } from './harness.js';

type Frame = Record<string, unknown>;

export class FakeSocket implements WebSocketLike {
  readyState = 0;
  binaryType = 'blob';
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  /** Frames the client sent, decoded from JSON. */
  readonly sent: Frame[] = [];
  closedWith: { code?: number; reason?: string } | undefined;

  constructor(
    readonly url: string,
    readonly protocols: string[],
  ) {}

  send(data: string | Uint8Array): void {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(String(data)) as Frame);
  }

  /** The client closes: the fake server echoes the close frame. */
  close(code?: number, reason?: string): void {
    if (this.readyState >= 2) return;
    this.closedWith = { code, reason };
    this.readyState = 2;
    setTimeout(() => {
      this.readyState = 3;
      this.onclose?.({ code: code ?? 1005, reason: reason ?? '' });
    }, 0);
  }

  // ---- the server's side ----

  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  push(frame: Frame): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  welcome(extra: Frame = {}): void {
    if (this.readyState === 0) this.open();
    this.push({
      type: 'welcome',
      session: 's1',
      node: 'n1',
      user: 'alice',
      channel: '$user:alice',
      heartbeat_ms: 30_000,
      expires_at: Math.floor(Date.now() / 1000) + 3600,
      limits: { max_message_bytes: 65536, max_payload_bytes: 65536, max_channels: 128, rate_per_sec: 50, rate_burst: 100 },
      ...extra,
    });
  }

  reply(id: unknown, result: unknown = {}): void {
    this.push({ type: 'reply', id, ok: true, result });
  }

  replyError(id: unknown, code: string, message = code): void {
    this.push({ type: 'reply', id, ok: false, error: { code, message } });
  }

  /** The server closes with a close frame. */
  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  /** The connection drops, or a handshake is refused (what a browser sees). */
  drop(errorMessage?: string): void {
    this.onerror?.(errorMessage ? { message: errorMessage } : {});
    this.readyState = 3;
    this.onclose?.({ code: 1006, reason: '' });
  }

  /** The first sent frame of `type` not yet taken by `take`. */
  async next(type: string, timeoutMs = 2000): Promise<Frame> {
    let found: Frame | undefined;
    await waitFor(
      () => {
        const i = this.sent.findIndex((f) => f.type === type && !taken.has(f));
        if (i >= 0) found = this.sent[i];
        return found !== undefined;
      },
      timeoutMs,
      `a ${type} frame`,
    );
    taken.add(found as Frame);
    return found as Frame;
  }

  get token(): string | undefined {
    return this.protocols.find((p) => p.startsWith('tidings.token.'))?.slice('tidings.token.'.length);
  }
}

const taken = new WeakSet<Frame>();

/** A WebSocket constructor whose instances the test can reach. */
export function fakeWebSocket(): { WS: WebSocketConstructor; sockets: FakeSocket[]; nth(i: number): Promise<FakeSocket> } {
  const sockets: FakeSocket[] = [];
  const WS = class extends FakeSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, typeof protocols === 'string' ? [protocols] : (protocols ?? []));
      sockets.push(this);
    }
  };
  return {
    WS,
    sockets,
    async nth(i: number): Promise<FakeSocket> {
      await waitFor(() => sockets.length > i, 3000, `connection attempt #${i + 1}`);
      return sockets[i] as FakeSocket;
    },
  };
}
