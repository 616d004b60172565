//! WebSocket close codes the gateway sends, and what a client should do on each.
//!
//! Standard codes (1000-1011) keep their RFC 6455 meaning; Tidings-specific ones are
//! in the private range 4000-4999. `docs/protocol.md` lists them for client authors.

/// Normal close (the client asked, or the server ended the session on purpose).
pub const NORMAL: u16 = 1000;
/// The node is draining (shutdown or rollout): reconnect now, ideally to another node.
pub const GOING_AWAY: u16 = 1001;
/// The client broke the WebSocket protocol (e.g. unmasked frames, bad opcodes).
pub const PROTOCOL_ERROR: u16 = 1002;
/// Never sent: the label metrics use for connections that ended without a close
/// frame (the peer vanished).
pub const ABNORMAL: u16 = 1006;
/// A text frame carried invalid UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Persistent abuse: too many malformed frames or rate-limit violations.
pub const POLICY_VIOLATION: u16 = 1008;
/// An inbound message was larger than the advertised `max_message_bytes`.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The server failed unexpectedly; reconnect with backoff.
pub const INTERNAL_ERROR: u16 = 1011;

/// The token expired without a successful `refresh`: get a new token, then reconnect.
pub const TOKEN_EXPIRED: u16 = 4001;
/// The outbound queue overflowed because the client read too slowly: reconnect with
/// backoff and resume from the last offsets.
pub const SLOW_CONSUMER: u16 = 4002;
/// No frame (not even a pong) arrived for two heartbeat intervals.
pub const HEARTBEAT_TIMEOUT: u16 = 4003;
/// The token was refused on an open connection; do not reconnect with the same token.
pub const UNAUTHORIZED: u16 = 4004;
/// A channel's live stream had a gap the server could not fill from history (e.g.
/// history trimmed while the node's Redis subscription was down): reconnect at once
/// and resume from the last offsets, which reports what cannot be recovered.
pub const RESYNC: u16 = 4005;

/// Whether a client should reconnect automatically after this close code (with its
/// usual backoff). Auth failures must not loop: the client needs a new token first.
pub fn should_reconnect(code: u16) -> bool {
    !matches!(
        code,
        NORMAL
            | TOKEN_EXPIRED
            | UNAUTHORIZED
            | POLICY_VIOLATION
            | MESSAGE_TOO_BIG
            | INVALID_PAYLOAD
            | PROTOCOL_ERROR
    )
}

/// Whether the client must obtain a fresh token before it reconnects.
pub fn needs_new_token(code: u16) -> bool {
    matches!(code, TOKEN_EXPIRED | UNAUTHORIZED)
}

/// A short name for a close code, used in logs and docs.
pub fn name(code: u16) -> &'static str {
    match code {
        NORMAL => "normal",
        GOING_AWAY => "going_away",
        PROTOCOL_ERROR => "protocol_error",
        ABNORMAL => "abnormal",
        INVALID_PAYLOAD => "invalid_payload",
        POLICY_VIOLATION => "policy_violation",
        MESSAGE_TOO_BIG => "message_too_big",
        INTERNAL_ERROR => "internal_error",
        TOKEN_EXPIRED => "token_expired",
        SLOW_CONSUMER => "slow_consumer",
        HEARTBEAT_TIMEOUT => "heartbeat_timeout",
        UNAUTHORIZED => "unauthorized",
        RESYNC => "resync",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_closes_do_not_reconnect() {
        assert!(!should_reconnect(TOKEN_EXPIRED));
        assert!(!should_reconnect(UNAUTHORIZED));
        assert!(needs_new_token(TOKEN_EXPIRED));
        assert!(should_reconnect(GOING_AWAY));
        assert!(should_reconnect(SLOW_CONSUMER));
        assert!(should_reconnect(HEARTBEAT_TIMEOUT));
    }
}
