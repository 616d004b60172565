//! WebSocket close codes the gateway sends, and what a client should do on each.
//!
//! Standard codes (1000-1011) keep their RFC 6455 meaning; Tidings-specific ones are
//! in the private range 4000-4999. `docs/protocol.md` lists them for client authors.
//!
//! [`CODES`] is the one table of every code, its name and the client's reaction
//! ([`Reconnect`]); [`HANDSHAKE_STATUSES`] does the same for the HTTP statuses that
//! refuse an upgrade. The Rust client follows them as they are, and
//! `protocol/tests/client_fixtures.rs` writes them to
//! `client-js/test/fixtures/close-codes.json`, against which the TypeScript client's
//! tests check its own `policy.ts` and `ended.ts` (so a change here that the TS
//! client does not follow fails its tests, not a user's reconnect loop).
//!
//! The codes stay plain `pub const NAME: u16` items, one per line: the docs tests
//! (`gateway/tests/docs.rs`, `api_contracts.rs`) read them from this file's text.

use serde::{Deserialize, Serialize};

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

/// What a client does after a connection ended or an upgrade was refused
/// (docs/protocol.md sections 3, 8 and 13). The serialized names are those of the
/// TypeScript client's `Reconnect` type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reconnect {
    /// Reconnect at once, after a small random delay, preferably to another node (the
    /// node is draining, or the server asks for a resume). Not a failure for the
    /// backoff.
    #[serde(rename = "promptly")]
    Promptly,
    /// Reconnect after the next exponential backoff delay.
    #[serde(rename = "backoff")]
    WithBackoff,
    /// Get a new token first; reconnect only with it, never in a loop with the old one.
    #[serde(rename = "new_token")]
    NewToken,
    /// Do not reconnect automatically: a deliberate close, or a client bug that a
    /// reconnect would only repeat.
    #[serde(rename = "stop")]
    Stop,
}

impl Reconnect {
    /// Whether a reconnect may follow (possibly after fetching a token).
    pub fn reconnects(self) -> bool {
        self != Reconnect::Stop
    }

    /// The name of the TypeScript client's `Reconnect` value (and of the fixture).
    pub fn as_str(self) -> &'static str {
        match self {
            Reconnect::Promptly => "promptly",
            Reconnect::WithBackoff => "backoff",
            Reconnect::NewToken => "new_token",
            Reconnect::Stop => "stop",
        }
    }
}

/// One row of [`CODES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCode {
    pub code: u16,
    /// A short name for logs, metrics and docs (the **Name** column of
    /// docs/protocol.md section 8).
    pub name: &'static str,
    /// What a client does when the server closes with this code.
    pub reconnect: Reconnect,
}

const fn row(code: u16, name: &'static str, reconnect: Reconnect) -> CloseCode {
    CloseCode {
        code,
        name,
        reconnect,
    }
}

/// Every close code of the protocol, in ascending order: the one table that
/// [`name`], [`reconnect`], [`should_reconnect`] and [`needs_new_token`] read.
pub const CODES: &[CloseCode] = &[
    row(NORMAL, "normal", Reconnect::Stop),
    row(GOING_AWAY, "going_away", Reconnect::Promptly),
    // The gateway only echoes it for a client's own protocol violation: a client bug.
    row(PROTOCOL_ERROR, "protocol_error", Reconnect::Stop),
    // What a client sees when the connection dropped without a close frame.
    row(ABNORMAL, "abnormal", Reconnect::WithBackoff),
    row(INVALID_PAYLOAD, "invalid_payload", Reconnect::Stop),
    row(POLICY_VIOLATION, "policy_violation", Reconnect::Stop),
    row(MESSAGE_TOO_BIG, "message_too_big", Reconnect::Stop),
    row(INTERNAL_ERROR, "internal_error", Reconnect::WithBackoff),
    row(TOKEN_EXPIRED, "token_expired", Reconnect::NewToken),
    row(SLOW_CONSUMER, "slow_consumer", Reconnect::WithBackoff),
    row(
        HEARTBEAT_TIMEOUT,
        "heartbeat_timeout",
        Reconnect::WithBackoff,
    ),
    row(UNAUTHORIZED, "unauthorized", Reconnect::NewToken),
    // At once: the server lost nothing but a live gap; resuming reports what is lost.
    row(RESYNC, "resync", Reconnect::Promptly),
];

/// The name of a code that is not in [`CODES`].
pub const OTHER_NAME: &str = "other";

/// What a client does on a code that is not in [`CODES`] (a newer server's, or one
/// from a proxy): the cautious default.
pub const OTHER_RECONNECT: Reconnect = Reconnect::WithBackoff;

/// What a client does when a connection ends without a close frame (network error,
/// reset, a dead heartbeat), as for [`ABNORMAL`].
pub const CONNECTION_LOST: Reconnect = Reconnect::WithBackoff;

/// The row of a close code, when the protocol defines it.
pub fn lookup(code: u16) -> Option<&'static CloseCode> {
    CODES.iter().find(|c| c.code == code)
}

/// A short name for a close code, used in logs and docs (`other` for unknown codes).
pub fn name(code: u16) -> &'static str {
    lookup(code).map_or(OTHER_NAME, |c| c.name)
}

/// What a client does when the server closes with `code`.
pub fn reconnect(code: u16) -> Reconnect {
    lookup(code).map_or(OTHER_RECONNECT, |c| c.reconnect)
}

/// Whether a client should reconnect automatically after this close code (with its
/// usual backoff, or at once). Auth failures must not loop: the client needs a new
/// token first ([`needs_new_token`]).
pub fn should_reconnect(code: u16) -> bool {
    matches!(
        reconnect(code),
        Reconnect::Promptly | Reconnect::WithBackoff
    )
}

/// Whether the client must obtain a fresh token before it reconnects.
pub fn needs_new_token(code: u16) -> bool {
    reconnect(code) == Reconnect::NewToken
}

/// What a client does when the WebSocket upgrade is refused with an HTTP status
/// (docs/protocol.md section 3): `401` needs a new token; `400`, `403`, `404`,
/// `405` and `426` are client or deployment bugs; `503` is a draining node, so
/// another one is tried at once. Other statuses ([`OTHER_HANDSHAKE_STATUS`]: `429`,
/// `5xx`) back off.
pub const HANDSHAKE_STATUSES: &[(u16, Reconnect)] = &[
    (400, Reconnect::Stop),
    (401, Reconnect::NewToken),
    (403, Reconnect::Stop),
    (404, Reconnect::Stop),
    (405, Reconnect::Stop),
    (426, Reconnect::Stop),
    (503, Reconnect::Promptly),
];

/// What a client does on a refusing status not in [`HANDSHAKE_STATUSES`].
pub const OTHER_HANDSHAKE_STATUS: Reconnect = Reconnect::WithBackoff;

/// The reaction to an HTTP status refusing the WebSocket upgrade.
pub fn on_handshake_status(status: u16) -> Reconnect {
    HANDSHAKE_STATUSES
        .iter()
        .find(|(s, _)| *s == status)
        .map_or(OTHER_HANDSHAKE_STATUS, |(_, r)| *r)
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

    #[test]
    fn the_table_is_sorted_without_duplicates_and_names_are_snake_case() {
        for pair in CODES.windows(2) {
            assert!(pair[0].code < pair[1].code, "{pair:?}");
        }
        for c in CODES {
            assert!(
                c.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{c:?}"
            );
            assert_eq!(name(c.code), c.name);
            assert_eq!(reconnect(c.code), c.reconnect);
        }
        for pair in HANDSHAKE_STATUSES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{pair:?}");
        }
    }

    #[test]
    fn unknown_codes_and_statuses_back_off() {
        assert_eq!(name(4999), OTHER_NAME);
        assert_eq!(reconnect(4999), Reconnect::WithBackoff);
        assert!(should_reconnect(1005));
        assert!(!needs_new_token(1005));
        assert_eq!(on_handshake_status(429), Reconnect::WithBackoff);
        assert_eq!(on_handshake_status(502), Reconnect::WithBackoff);
        assert_eq!(on_handshake_status(401), Reconnect::NewToken);
        assert_eq!(on_handshake_status(503), Reconnect::Promptly);
    }

    #[test]
    fn reconnect_names_are_the_serialized_ones() {
        for r in [
            Reconnect::Promptly,
            Reconnect::WithBackoff,
            Reconnect::NewToken,
            Reconnect::Stop,
        ] {
            let json = serde_json::to_value(r).unwrap_or_default();
            assert_eq!(json, r.as_str());
        }
        assert!(!Reconnect::Stop.reconnects());
        assert!(Reconnect::NewToken.reconnects());
    }
}
