//! Where publications travel between nodes. A [`Broker`] takes publications from this
//! node (HTTP API, client publishes) and hands every publication for a channel with
//! local interest up to its [`Handler`] (the hub), which is all it knows of the
//! layers above. Sessions call it directly for history and acknowledgements. The
//! in-memory broker serves a single node; the Redis broker connects replicas.

use std::sync::Arc;

use async_trait::async_trait;
use protocol::Publication;
use protocol::history::StreamPosition;
use publisher::HistoryPage;

mod memory;
mod redis;

pub use memory::MemoryBroker;
pub(crate) use redis::misconfigured;
pub use redis::{NodeContext, RedisBroker};

/// What a publish reached: the protocol's publish result, which is also the HTTP
/// API's receipt.
pub use protocol::frame::PublishResult as Receipt;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused this publication (e.g. too large); retrying won't help.
    #[error("publication refused: {0}")]
    Rejected(String),
    /// A budget is used up (history channels of a rule, history bytes of a node).
    #[error("quota exceeded: {0}")]
    Quota(String),
    /// A conditional publish found the channel's history at this position.
    #[error("conflict: the channel is at offset {} of epoch `{}`", .0.offset, .0.epoch)]
    Conflict(StreamPosition),
}

/// What a broker reports upward (implemented by the hub's table). Calls come from
/// the broker's own tasks and must not block.
pub trait Handler: Send + Sync + 'static {
    /// A publication for a channel of local interest; returns how many local
    /// connections it reached.
    fn deliver(&self, p: &Publication) -> usize;

    /// A channel's history reaches `top` in `epoch` (read after a lost subscription
    /// came back): subscribers that have not seen that far fill the gap.
    fn check(&self, channel: &str, epoch: &str, top: u64);

    /// Whether any local connection subscribes to `channel`.
    fn has_interest(&self, channel: &str) -> bool;

    /// Every channel with local interest (what to subscribe to after a reconnect).
    fn interests(&self) -> Vec<Arc<str>>;
}

impl BrokerError {
    /// The error code a client or an API caller gets for it (one mapping for the
    /// WebSocket replies and the HTTP API).
    pub fn code(&self) -> protocol::ErrorCode {
        match self {
            BrokerError::Unavailable(_) => protocol::ErrorCode::Unavailable,
            BrokerError::Rejected(_) => protocol::ErrorCode::BadRequest,
            BrokerError::Quota(_) => protocol::ErrorCode::QuotaExceeded,
            BrokerError::Conflict(_) => protocol::ErrorCode::Conflict,
        }
    }
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes each publication to every node interested in its channel, in one
    /// round trip where the broker allows. The receipt sums over the publications.
    async fn publish(&self, pubs: Vec<Publication>) -> Result<Receipt, BrokerError>;

    /// Publishes `p` only if its channel's history is at `at` (its latest offset
    /// and epoch), atomically; otherwise [`BrokerError::Conflict`] with where it is.
    /// The receipt carries the publication's offset.
    async fn publish_if(&self, p: Publication, at: &StreamPosition)
    -> Result<Receipt, BrokerError>;

    /// A channel gained its first or lost its last local subscriber. Must not block:
    /// the broker re-reads the hub's interest set to decide what to do.
    fn interest_changed(&self, channel: &Arc<str>);

    /// Whether the broker can currently deliver (drives `/readyz`).
    fn is_ready(&self) -> bool;

    /// Whether the Redis that holds `channel` is reachable now (with several
    /// instances or partitions, one may be down while the others work): a
    /// subscription to a channel whose holder is not is refused as `unavailable`
    /// rather than accepted and left silent.
    fn available(&self, channel: &str) -> bool {
        let _ = channel;
        true
    }

    /// Waits (bounded) until live delivery of `channel` to this node is in effect;
    /// false if that could not be confirmed in time.
    async fn subscribed(&self, channel: &str) -> bool {
        let _ = channel;
        true
    }

    /// A channel's history after `after` (exclusive), at most `limit` entries and,
    /// beyond the first, at most `max_bytes` of envelopes; with `after == None`
    /// only its epoch and latest offset.
    async fn history(
        &self,
        channel: &str,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<HistoryPage, BrokerError>;

    /// Moves a personal channel's acknowledged position forward; returns it.
    async fn ack(&self, channel: &str, offset: u64) -> Result<Option<u64>, BrokerError>;

    /// A channel's position (as `history` with `after == None`) and its
    /// acknowledged position, if any, read together.
    async fn position(
        &self,
        channel: &str,
    ) -> Result<(HistoryPage, Option<StreamPosition>), BrokerError>;
}
