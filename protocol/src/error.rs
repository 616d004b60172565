use serde::{Deserialize, Serialize};

/// Stable error codes carried by `reply` frames and HTTP error bodies.
///
/// The string form is the contract; clients switch on it. Never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be decoded at all (bad JSON/MessagePack, wrong field types).
    BadFrame,
    /// The frame decoded but its `type` is not one this server knows.
    UnknownType,
    /// A required field is missing or a value is out of range.
    BadRequest,
    /// The channel name breaks the naming rules.
    InvalidChannel,
    /// The token's claims do not allow this channel operation.
    Forbidden,
    /// The per-connection channel limit is reached.
    TooManyChannels,
    /// `subscribe` for a channel the connection already has.
    AlreadySubscribed,
    /// `unsubscribe` (or ack) for a channel the connection does not have.
    NotSubscribed,
    /// The connection sends faster than its inbound rate limit.
    RateLimited,
    /// The payload is larger than the configured maximum.
    PayloadTooLarge,
    /// A token (on `refresh`) failed verification.
    InvalidToken,
    /// A refreshed token names a different user than the connection's.
    TokenMismatch,
    /// The broker cannot take the request right now; retry later.
    Unavailable,
    /// A budget is used up: the history channels of a rule, the history bytes of a
    /// node, or the bytes one publish request may write. Retrying the same request
    /// does not help until the budget frees up (histories expire).
    QuotaExceeded,
    /// A conditional publish (`expect`) found the channel's history at another
    /// position; the error carries the current `offset` and `epoch`. Catch up and
    /// retry.
    Conflict,
    /// A bug or an unexpected failure on the server.
    Internal,
    /// A code this version does not know (sent by a newer peer); treat as `internal`.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyChannels => "too_many_channels",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenMismatch => "token_mismatch",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// Whether the client caused it by sending something malformed; repeated
    /// malformed frames count towards the abuse limit.
    pub fn is_malformed(self) -> bool {
        matches!(
            self,
            ErrorCode::BadFrame | ErrorCode::UnknownType | ErrorCode::BadRequest
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Failures of encoding, decoding and validation in this crate.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{code}: {message}")]
    Frame {
        code: ErrorCode,
        /// The correlation id, when it could be read, so the reply can echo it.
        id: Option<u64>,
        message: String,
    },
    #[error("invalid channel name: {0}")]
    InvalidChannel(String),
    #[error("invalid user id: {0}")]
    InvalidUser(String),
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("cannot decode envelope: {0}")]
    Envelope(String),
}

impl ProtocolError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::Frame { code, .. } => *code,
            ProtocolError::InvalidChannel(_) | ProtocolError::InvalidUser(_) => {
                ErrorCode::InvalidChannel
            }
            ProtocolError::Encode(_) | ProtocolError::Envelope(_) => ErrorCode::Internal,
        }
    }
}
