//! Errors of client requests and of the connection.

use protocol::ErrorCode;

/// What went wrong. Cheap to clone: one terminal error is handed to every request that
/// was still waiting when the client stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bounded queue of outgoing publishes, acks, presence queries and history
    /// reads is full (the client has been disconnected for a while, or sends faster
    /// than the server's rate limit allows). Nothing was queued; try again later or
    /// drop the message.
    #[error("outgoing queue is full ({capacity} requests waiting)")]
    QueueFull { capacity: usize },
    /// No reply arrived within the request timeout after the request was sent. The
    /// server may or may not have processed it.
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    /// The server refused the request (`reply.ok == false`). `code` is one of the
    /// stable codes of [`protocol::ErrorCode`] (see [`Error::code`]).
    #[error("{code}: {message}")]
    Server { code: String, message: String },
    /// A conditional publish ([`Client::publish_if`](crate::Client::publish_if))
    /// was refused because the channel's history is not at the expected position:
    /// it is at `offset` of `epoch` now (the server's `conflict` error). Nothing was
    /// published. [`Error::code`] gives [`ErrorCode::Conflict`].
    #[error("conflict: the channel is at offset {offset} of epoch `{epoch}`")]
    Conflict { offset: u64, epoch: String },
    /// The client lost a channel it held: resubscribing after a reconnect failed, or
    /// a refreshed token no longer allows it. Reported as
    /// [`Event::Error`](crate::Event::Error); the channel is dropped. Except with
    /// code `unavailable` (the channel's Redis instance or partition is down for
    /// now): the channel is kept and subscribed again after a backoff delay, until
    /// [`Event::Subscribed`](crate::Event::Subscribed) reports the success.
    #[error("subscription to {channel} lost: {code}: {message}")]
    Subscription {
        channel: String,
        code: String,
        message: String,
    },
    /// The connection ended while the request was in flight; it may or may not have
    /// been processed. Requests still queued are not affected: they are sent after the
    /// reconnect.
    #[error("connection lost before the reply")]
    Disconnected,
    /// The server refused the token (handshake `401`, close `4001`/`4004`) and no
    /// usable new token could be obtained: the client stopped.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The token refresher failed while the connection was still up (proactive
    /// refresh). The client keeps going; expect a `4001` close later.
    #[error("token refresh failed: {0}")]
    TokenRefresh(String),
    /// The server closed with a code that forbids automatic reconnection (`1000`,
    /// `1007`, `1008`, `1009`): the client stopped.
    #[error("closed by the server with {code} ({reason})")]
    ServerClosed { code: u16, reason: String },
    /// The server refused the upgrade with a status that forbids retrying (`400`,
    /// `403`, `404`): the client stopped.
    #[error("handshake refused with HTTP {status}: {body}")]
    Handshake { status: u16, body: String },
    /// A frame from the server could not be decoded (it is skipped).
    #[error("undecodable frame from the server: {0}")]
    Protocol(String),
    /// The request was withdrawn before it was sent (e.g. `unsubscribe` of a channel
    /// whose `subscribe` was still waiting for a connection).
    #[error("request cancelled")]
    Cancelled,
    /// The client was closed (by [`Client::close`](crate::Client::close) or because
    /// every handle was dropped).
    #[error("client closed")]
    Closed,
    /// The payload could not be serialized to JSON.
    #[error("payload is not serializable to JSON: {0}")]
    Payload(String),
    /// The builder was given something unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// The protocol error code of a [`Server`](Error::Server),
    /// [`Subscription`](Error::Subscription) or [`Conflict`](Error::Conflict) error,
    /// when it is one this crate knows.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Conflict { .. } => Some(ErrorCode::Conflict),
            Error::Server { code, .. } | Error::Subscription { code, .. } => {
                serde_json::from_value(serde_json::Value::String(code.clone()))
                    .ok()
                    .filter(|c| *c != ErrorCode::Unknown)
            }
            _ => None,
        }
    }

    /// Whether this is an authentication failure that stopped the client.
    pub fn is_auth(&self) -> bool {
        matches!(self, Error::Unauthorized(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_the_protocol_enum() {
        let e = Error::Server {
            code: "forbidden".into(),
            message: "no".into(),
        };
        assert_eq!(e.code(), Some(ErrorCode::Forbidden));
        assert_eq!(e.to_string(), "forbidden: no");
        let e = Error::Server {
            code: "some_future_code".into(),
            message: String::new(),
        };
        assert_eq!(e.code(), None);
        let e = Error::Conflict {
            offset: 7,
            epoch: "ep".into(),
        };
        assert_eq!(e.code(), Some(ErrorCode::Conflict));
        assert_eq!(
            e.to_string(),
            "conflict: the channel is at offset 7 of epoch `ep`"
        );
        assert!(Error::Unauthorized("x".into()).is_auth());
        assert!(!Error::Closed.is_auth());
    }
}
