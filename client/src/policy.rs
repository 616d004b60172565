//! What the client does after a connection ends or a handshake is refused. The
//! reactions are the protocol crate's table ([`protocol::close::CODES`] and
//! [`protocol::close::HANDSHAKE_STATUSES`]), followed as they are: this module only
//! names them for the client's users.
//!
//! | Close code | Reaction |
//! |---|---|
//! | 1001 going_away | [`Promptly`](Reconnect::Promptly), to another node |
//! | 4005 resync | [`Promptly`](Reconnect::Promptly), then resume from the last offsets |
//! | 4001 token_expired, 4004 unauthorized | [`NewToken`](Reconnect::NewToken) |
//! | 1000 normal, 1002 protocol_error, 1007, 1008, 1009 | [`Stop`](Reconnect::Stop): a deliberate close or a client bug |
//! | anything else (1011, 4002 slow_consumer, 4003 heartbeat_timeout, ...) | [`WithBackoff`](Reconnect::WithBackoff) |

use protocol::close;

pub use protocol::close::Reconnect;

/// The reaction to a close frame from the server.
pub fn on_close(code: u16) -> Reconnect {
    close::reconnect(code)
}

/// The reaction to a connection that ended without a close frame (network error,
/// reset, dead heartbeat): reconnect with backoff.
pub fn on_connection_lost() -> Reconnect {
    close::CONNECTION_LOST
}

/// The reaction to an HTTP status refusing the WebSocket upgrade.
///
/// `401` needs a new token; `400`, `403`, `404`, `405` and `426` are client or
/// deployment bugs and stop; `503` (node draining) retries promptly; anything else
/// (`429`, `5xx`) backs off.
pub fn on_handshake_status(status: u16) -> Reconnect {
    close::on_handshake_status(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table in this module's docs, as the client behaves.
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
            (4005, Promptly),
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
        for c in close::CODES {
            let r = on_close(c.code);
            assert_eq!(
                close::needs_new_token(c.code),
                r == Reconnect::NewToken,
                "{c:?}"
            );
            assert_eq!(
                close::should_reconnect(c.code),
                matches!(r, Reconnect::Promptly | Reconnect::WithBackoff),
                "{c:?}"
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
