// What the client does after a connection ends or a handshake is refused, following
// the close codes (docs/protocol.md sections 3, 8 and 13). The table is the protocol
// crate's (protocol::close::CODES and HANDSHAKE_STATUSES, which the Rust client uses
// as they are); test/policy.test.ts checks these functions against
// test/fixtures/close-codes.json, which the protocol crate writes from it.

/**
 * - `promptly`: reconnect at once after a small random delay (node draining); not a
 *   failure for the backoff.
 * - `backoff`: reconnect after the next exponential backoff delay.
 * - `new_token`: get a new token first; reconnect only with it.
 * - `stop`: do not reconnect automatically.
 */
export type Reconnect = 'promptly' | 'backoff' | 'new_token' | 'stop';

/** The reaction to a close frame from the server. */
export function onClose(code: number): Reconnect {
  switch (code) {
    case 1001: // going away: the node drains; the load balancer sends us elsewhere
    case 4005: // resync: the server could not fill a gap; resume from our offsets now
      return 'promptly';
    case 4001: // token expired
    case 4004: // unauthorized
      return 'new_token';
    case 1000: // deliberate close
    case 1002: // protocol error (a client bug)
    case 1007: // invalid UTF-8
    case 1008: // abuse limit
    case 1009: // message too big
      return 'stop';
    default: // 1006 abnormal, 1011, 4002 slow consumer, 4003 heartbeat timeout, ...
      return 'backoff';
  }
}

/** A connection that ended without a close frame (network, dead heartbeat). */
export function onConnectionLost(): Reconnect {
  return 'backoff';
}

/**
 * The reaction to an HTTP status refusing the upgrade. Browsers never see these
 * (they report 1006); Node's `ws` does.
 */
export function onHandshakeStatus(status: number): Reconnect {
  switch (status) {
    case 401:
      return 'new_token';
    case 400:
    case 403:
    case 404:
    case 405:
    case 426:
      return 'stop';
    case 503: // draining
      return 'promptly';
    default: // 429, 5xx
      return 'backoff';
  }
}
