use protocol::close;

/// Errors of the gateway library.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A setting is invalid; `setting` is its long flag name.
    #[error("invalid setting `{setting}`: {message}")]
    Config { setting: String, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
}

/// Why a session ended. [`SessionEnd::close`] is the one place that maps a reason to
/// the close code and reason text the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client sent a close frame (tungstenite echoes it).
    ClientClosed,
    /// The TCP connection went away or failed; nothing can be sent.
    PeerGone,
    /// Someone asked the outbox to close: drain (1001) or slow consumer (4002).
    Requested(u16),
    HeartbeatTimeout,
    TokenExpired,
    MessageTooBig,
    InvalidUtf8,
    /// Too many malformed frames or rate-limit violations.
    Abuse,
    /// The client broke the WebSocket protocol (e.g. unmasked frames).
    ProtocolViolation,
    /// A refreshed token was refused in a way that ends the session.
    Unauthorized,
    /// A gap in a channel's offsets could not be filled from history.
    Resync,
}

impl SessionEnd {
    /// The close frame to send, if one can be sent.
    pub fn close(self) -> Option<(u16, &'static str)> {
        Some(match self {
            SessionEnd::ClientClosed | SessionEnd::PeerGone => return None,
            SessionEnd::Requested(close::GOING_AWAY) => {
                (close::GOING_AWAY, "node draining, reconnect")
            }
            SessionEnd::Requested(close::SLOW_CONSUMER) => {
                (close::SLOW_CONSUMER, "slow consumer: outbound queue full")
            }
            SessionEnd::Requested(code) => (code, "closed by server"),
            SessionEnd::HeartbeatTimeout => (close::HEARTBEAT_TIMEOUT, "heartbeat timeout"),
            SessionEnd::TokenExpired => (
                close::TOKEN_EXPIRED,
                "token expired: refresh it before reconnecting",
            ),
            SessionEnd::MessageTooBig => (close::MESSAGE_TOO_BIG, "message too big"),
            SessionEnd::InvalidUtf8 => (close::INVALID_PAYLOAD, "invalid utf-8 in text frame"),
            SessionEnd::Abuse => (
                close::POLICY_VIOLATION,
                "too many invalid or rate-limited frames",
            ),
            SessionEnd::ProtocolViolation => {
                (close::PROTOCOL_ERROR, "websocket protocol violation")
            }
            SessionEnd::Unauthorized => (close::UNAUTHORIZED, "unauthorized"),
            SessionEnd::Resync => (close::RESYNC, "missed messages: reconnect and resume"),
        })
    }

    /// The code recorded in metrics: the peer's own close counts as 1000, a peer
    /// that vanished without one as 1006.
    pub fn metric_code(self) -> u16 {
        match self {
            SessionEnd::ClientClosed => close::NORMAL,
            SessionEnd::PeerGone => close::ABNORMAL,
            other => other.close().map_or(close::NORMAL, |(c, _)| c),
        }
    }
}
