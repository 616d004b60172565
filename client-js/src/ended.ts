// How a connection (or a connection attempt) ended, and what to do next.

import { HandshakeError, ServerClosedError, type TidingsError } from './errors.js';
import { onClose, onConnectionLost, onHandshakeStatus, type Reconnect } from './policy.js';

export interface Ended {
  code?: number;
  reason: string;
  action: Reconnect;
  /** The error to stop with when `action` is `stop`. */
  terminal?: TidingsError;
  /** Ended before the `welcome` without a definite cause (what browsers report for a refused handshake). */
  ambiguous?: boolean;
}

// The names of protocol::close::CODES (docs/protocol.md section 8), used as the
// reason when a close frame carries none; test/policy.test.ts checks them against
// test/fixtures/close-codes.json, which the protocol crate writes.
const CLOSE_NAMES: Record<number, string> = {
  1000: 'normal',
  1001: 'going_away',
  1002: 'protocol_error',
  1006: 'abnormal',
  1007: 'invalid_payload',
  1008: 'policy_violation',
  1009: 'message_too_big',
  1011: 'internal_error',
  4001: 'token_expired',
  4002: 'slow_consumer',
  4003: 'heartbeat_timeout',
  4004: 'unauthorized',
  4005: 'resync',
};

/** The protocol's name of a close code (`undefined` for codes it does not define). */
export function closeName(code: number): string | undefined {
  return CLOSE_NAMES[code];
}

/** Every close code the client has a name for. */
export function namedCloseCodes(): number[] {
  return Object.keys(CLOSE_NAMES).map(Number);
}

export function lost(reason: string, ambiguous = false): Ended {
  return { reason, action: onConnectionLost(), ambiguous };
}

export function closed(code: number, reason: string): Ended {
  const action = onClose(code);
  const e: Ended = { code, reason: reason || closeName(code) || `close code ${code}`, action };
  if (action === 'stop') e.terminal = new ServerClosedError(code, reason);
  return e;
}

export function refused(status: number): Ended {
  const action = onHandshakeStatus(status);
  const e: Ended = { reason: `handshake refused with HTTP ${status}`, action };
  if (action === 'stop') e.terminal = new HandshakeError(status);
  return e;
}

/**
 * Node's `ws` reports a refused upgrade as an error "Unexpected server response: 401"
 * before the 1006 close; browsers say nothing. Returns the status when there is one.
 */
export function handshakeStatus(errorEvent: unknown): number | undefined {
  if (typeof errorEvent !== 'object' || errorEvent === null) return undefined;
  const msg = (errorEvent as { message?: unknown }).message;
  if (typeof msg !== 'string') return undefined;
  const m = /Unexpected server response: (\d{3})/.exec(msg);
  return m ? Number(m[1]) : undefined;
}
