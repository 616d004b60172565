//! The Tidings wire contract, shared by the gateway, the publisher SDK and the clients.
//!
//! Data flows through three shapes defined here: a backend builds a [`Publication`]
//! (the Redis envelope, MessagePack), a gateway node decodes it once and turns it into
//! one server [`frame`] per encoding whose bytes every local recipient shares, and
//! clients answer with client frames that [`frame::decode_client`] parses; every
//! `reply` result has its type ([`frame::SubscribeResult`] and the others of
//! [`frame::ReplyResult`]). Channel naming and validation ([`channel`]), the Redis
//! key and channel names ([`keys`]), the Redis layouts ([`topology`]), the stable
//! error codes ([`ErrorCode`]) and the close codes with the reconnect policy that
//! goes with them ([`close`]) live here so that no other crate invents its own.

pub mod channel;
pub mod close;
pub mod depth;
pub mod envelope;
mod error;
pub mod frame;
pub mod history;
pub mod keys;
mod payload;
pub mod presence;
mod results;
pub mod target;
pub mod topology;

pub use envelope::Publication;
pub use error::{ErrorCode, ProtocolError};
pub use frame::Encoding;
pub use payload::Payload;

/// Milliseconds since the Unix epoch, the clock of every `ts` field.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
