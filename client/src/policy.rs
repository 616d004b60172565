//! What the client does after a connection ends or a handshake is refused, following
//! the server's close codes (`protocol::close`) and handshake statuses.

use protocol::close;

/// The reaction to the end of a connection or a failed connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Reconnect at once (after a small random delay), to the next URL: the node is
    /// draining. Does not count as a failure for the backoff.
    Promptly,
    /// Reconnect after the next exponential backoff delay.
    WithBackoff,
    /// Ask the token refresher for a new token first; reconnect only with it.
    NewToken,
    /// Do not reconnect automatically.
    Stop,
}

impl Reconnect {
    /// Whether a reconnect may follow (possibly after fetching a token).
    pub fn reconnects(self) -> bool {
        self != Reconnect::Stop
    }
}

/// The reaction to a close frame from the server.
///
/// | Code | Reaction |
/// |---|---|
/// | 1001 going away | [`Promptly`](Reconnect::Promptly), to another node |
/// | 4005 resync | [`Promptly`](Reconnect::Promptly), then resume from the last offsets |
/// | 4001 token expired, 4004 unauthorized | [`NewToken`](Reconnect::NewToken) |
/// | 1000 normal, 1002 protocol error, 1007, 1008, 1009 | [`Stop`](Reconnect::Stop): a deliberate close or a client bug |
/// | anything else (1011, 4002 slow consumer, 4003 heartbeat timeout, ...) | [`WithBackoff`](Reconnect::WithBackoff) |
pub fn on_close(code: u16) -> Reconnect {
    match code {
        close::GOING_AWAY | close::RESYNC => Reconnect::Promptly,
        close::TOKEN_EXPIRED | close::UNAUTHORIZED => Reconnect::NewToken,
        close::NORMAL
        | PROTOCOL_ERROR
        | close::INVALID_PAYLOAD
        | close::POLICY_VIOLATION
        | close::MESSAGE_TOO_BIG => Reconnect::Stop,
        _ => Reconnect::WithBackoff,
    }
}

/// RFC 6455 protocol error; the gateway only echoes it for a client's own bad close.
const PROTOCOL_ERROR: u16 = 1002;

/// The reaction to a connection that ended without a close frame (network error,
/// reset, dead heartbeat): reconnect with backoff.
pub fn on_connection_lost() -> Reconnect {
    Reconnect::WithBackoff
}

/// The reaction to an HTTP status refusing the WebSocket upgrade.
///
/// `401` needs a new token; `400`, `403` and `404` are client or deployment bugs and
/// stop; `503` (node draining) retries promptly; anything else (`429`, `5xx`) backs off.
pub fn on_handshake_status(status: u16) -> Reconnect {
    match status {
        401 => Reconnect::NewToken,
        400 | 403 | 404 | 405 | 426 => Reconnect::Stop,
        503 => Reconnect::Promptly,
        _ => Reconnect::WithBackoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes() {
        use Reconnect::*;
        let table = [
            (1000, Stop),
            (1001, Promptly),
            (1002, Stop),
            (1006, WithBackoff),
            (1007, Stop),
            (1008, Stop),
            (1009, Stop),
            (1011, WithBackoff),
            (4001, NewToken),
            (4002, WithBackoff),
            (4003, WithBackoff),
            (4004, NewToken),
            (4999, WithBackoff),
        ];
        for (code, want) in table {
            assert_eq!(on_close(code), want, "close code {code}");
        }
        assert_eq!(on_connection_lost(), WithBackoff);
    }

    #[test]
    fn agrees_with_the_protocol_crate() {
        // The protocol crate's "reconnect?" and "new token?" columns: a code that needs
        // a new token never reconnects with the old one, and every code the protocol
        // says not to reconnect on is either a stop or a token refresh here.
        for code in [
            1000, 1001, 1006, 1007, 1008, 1009, 1011, 4001, 4002, 4003, 4004, 4005,
        ] {
            let r = on_close(code);
            assert_eq!(
                close::needs_new_token(code),
                r == Reconnect::NewToken,
                "{code}"
            );
            assert_eq!(
                close::should_reconnect(code),
                matches!(r, Reconnect::Promptly | Reconnect::WithBackoff),
                "{code}"
            );
        }
    }

    #[test]
    fn handshake_statuses() {
        use Reconnect::*;
        for (status, want) in [
            (401, NewToken),
            (400, Stop),
            (403, Stop),
            (404, Stop),
            (429, WithBackoff),
            (500, WithBackoff),
            (502, WithBackoff),
            (503, Promptly),
        ] {
            assert_eq!(on_handshake_status(status), want, "status {status}");
        }
        assert!(!Stop.reconnects());
        assert!(NewToken.reconnects());
    }
}
