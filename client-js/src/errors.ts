// Errors of client requests and of the connection. Every error is a subclass of
// TidingsError with a literal `kind`, so callers can `switch (err.kind)` or use
// `instanceof`. Mirrors the Rust client's `Error` enum.

/** The stable error codes of `reply.error.code` (docs/protocol.md section 7). */
export type ErrorCode =
  | 'bad_frame'
  | 'unknown_type'
  | 'bad_request'
  | 'invalid_channel'
  | 'forbidden'
  | 'too_many_channels'
  | 'already_subscribed'
  | 'not_subscribed'
  | 'rate_limited'
  | 'payload_too_large'
  | 'invalid_token'
  | 'token_mismatch'
  | 'unavailable'
  | 'quota_exceeded'
  | 'conflict'
  | 'internal';

/** Known codes, plus any string a newer server may send. */
export type AnyErrorCode = ErrorCode | (string & {});

export type ErrorKind =
  | 'queue_full'
  | 'timeout'
  | 'server'
  | 'subscription'
  | 'disconnected'
  | 'unauthorized'
  | 'token_refresh'
  | 'server_closed'
  | 'handshake'
  | 'protocol'
  | 'cancelled'
  | 'closed'
  | 'config';

export abstract class TidingsError extends Error {
  abstract readonly kind: ErrorKind;
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/**
 * The bounded queue of outgoing publishes and acks is full (disconnected for a
 * while, or sending faster than the server's rate limit). Nothing was queued.
 */
export class QueueFullError extends TidingsError {
  readonly kind = 'queue_full' as const;
  constructor(readonly capacity: number) {
    super(`outgoing queue is full (${capacity} requests waiting)`);
  }
}

/** No reply within the request timeout after the request was sent. */
export class TimeoutError extends TidingsError {
  readonly kind = 'timeout' as const;
  constructor(readonly timeoutMs: number) {
    super(`no reply within ${timeoutMs} ms`);
  }
}

/** The server refused the request (`reply.ok == false`). Switch on `code`. */
export class ServerError extends TidingsError {
  readonly kind = 'server' as const;
  constructor(
    readonly code: AnyErrorCode,
    readonly serverMessage: string,
  ) {
    super(`${code}: ${serverMessage}`);
  }
}

/**
 * A conditional publish (`publish(..., { expect })`) was refused: the channel's
 * history is not at the expected position. `offset` and `epoch` say where it is now;
 * catch up (the messages up to `offset` are on their way to a subscriber) and try
 * again expecting that position. A ServerError with code `conflict`, so code that
 * switches on `ServerError.code` sees it too.
 */
export class ConflictError extends ServerError {
  constructor(
    /** The channel's latest offset when the publish was refused. */
    readonly offset: number,
    /** The channel's history epoch then (`""`: no history yet). */
    readonly epoch: string,
    serverMessage = `the channel is at offset ${offset} of epoch \`${epoch}\``,
  ) {
    super('conflict', serverMessage);
  }
}

/**
 * The client lost a channel it held: resubscribing after a reconnect failed, or a
 * refreshed token no longer allows it. The channel is dropped. Except with code
 * `unavailable` (the channel's Redis instance or partition is down for now): the
 * channel is kept and subscribed again after a backoff delay (the Subscription's
 * `retrying` and, once it succeeds, `subscribed` events).
 */
export class SubscriptionLostError extends TidingsError {
  readonly kind = 'subscription' as const;
  constructor(
    readonly channel: string,
    readonly code: AnyErrorCode,
    readonly serverMessage: string,
  ) {
    super(`subscription to ${channel} lost: ${code}: ${serverMessage}`);
  }
}

/**
 * The connection ended while the request was in flight; it may or may not have been
 * processed. Requests still queued are not affected: they go out after the reconnect.
 */
export class DisconnectedError extends TidingsError {
  readonly kind = 'disconnected' as const;
  constructor() {
    super('connection lost before the reply');
  }
}

/** The server refused the token and no usable new one could be obtained: stopped. */
export class UnauthorizedError extends TidingsError {
  readonly kind = 'unauthorized' as const;
}

/** `getToken` failed (or the server refused the refresh) while connected. */
export class TokenRefreshError extends TidingsError {
  readonly kind = 'token_refresh' as const;
}

/** The server closed with a code that forbids reconnecting (1000, 1002, 1007-1009). */
export class ServerClosedError extends TidingsError {
  readonly kind = 'server_closed' as const;
  constructor(
    readonly code: number,
    readonly reason: string,
  ) {
    super(`closed by the server with ${code}${reason ? ` (${reason})` : ''}`);
  }
}

/** The upgrade was refused with a status that forbids retrying (400, 403, 404). */
export class HandshakeError extends TidingsError {
  readonly kind = 'handshake' as const;
  constructor(readonly status: number) {
    super(`handshake refused with HTTP ${status}`);
  }
}

/** A frame from the server could not be decoded (it is skipped). */
export class ProtocolError extends TidingsError {
  readonly kind = 'protocol' as const;
}

/** The request was withdrawn before it was answered (e.g. unsubscribe during subscribe). */
export class CancelledError extends TidingsError {
  readonly kind = 'cancelled' as const;
  constructor() {
    super('request cancelled');
  }
}

/** The client was closed with `close()`. */
export class ClosedError extends TidingsError {
  readonly kind = 'closed' as const;
  constructor() {
    super('client closed');
  }
}

/** The options were unusable (no URL, no token source, no WebSocket implementation). */
export class ConfigError extends TidingsError {
  readonly kind = 'config' as const;
}
