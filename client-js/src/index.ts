// tidings-client: a browser and Node client for the Tidings WebSocket gateway.
// MessagePack lives in `tidings-client/msgpack`, React hooks in `tidings-client/react`.

export { TidingsClient } from './client.js';
export { Subscription, type SubscriptionEvents } from './subscription.js';
export {
  PresenceTracker,
  type PresenceSnapshot,
  type PresenceStatus,
  type PresenceTrackerEvents,
  type PresenceTrackerOptions,
} from './presence.js';
export { Backoff, type BackoffOptions } from './backoff.js';
export { jsonCodec, type Codec, type WireData } from './codec.js';
export { onClose, onConnectionLost, onHandshakeStatus, type Reconnect } from './policy.js';
export { sinceOf, type Position } from './positions.js';
export { MAX_HISTORY_PAGE } from './history.js';
export { jwtExpiry, refreshDelayMs } from './token.js';
export type { ClientFrame, JsonValue, Limits, PresenceJoin, PresenceLeave, ServerFrame, Since } from './frames.js';
export type {
  ClientEvents,
  ClientOptions,
  ConnectedEvent,
  ConnectionState,
  DisconnectedEvent,
  HistoryResult,
  Message,
  PresenceDiff,
  PresenceMember,
  PresenceResult,
  PresenceStats,
  PresenceUser,
  PublishOptions,
  Receipt,
  ReconnectingEvent,
  RecoveredEvent,
  SubscribeResult,
  SubscribeRetry,
  WebSocketConstructor,
  WebSocketLike,
} from './types.js';
export {
  CancelledError,
  ClosedError,
  ConfigError,
  ConflictError,
  DisconnectedError,
  HandshakeError,
  ProtocolError,
  QueueFullError,
  ServerClosedError,
  ServerError,
  SubscriptionLostError,
  TidingsError,
  TimeoutError,
  TokenRefreshError,
  UnauthorizedError,
  type AnyErrorCode,
  type ErrorCode,
  type ErrorKind,
} from './errors.js';
