//! Where presence lives: Redis (every node sees every node's members) or this
//! process (the in-memory broker, one node). Both keep the same rules: per-user
//! joins and leaves with the grace period, the per-channel cap, counts without
//! listing, pages in client order.

use async_trait::async_trait;
use protocol::frame::{PresenceResult, PresenceStatsResult};
use protocol::presence::{Policy, UserStatus};
use publisher::presence::{Join, NodePresence, OnlineOp, Outcome};
use publisher::{PublishError, Publisher};

use crate::broker::BrokerError;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// This node's joins and leaves on one channel; announces the resulting joins
    /// (and any leaves due) when the channel's rule has events.
    async fn update(
        &self,
        channel: &str,
        policy: Policy,
        joins: &[Join],
        leaves: &[String],
    ) -> Result<Outcome, BrokerError>;

    /// This node's periodic pass over one channel: keeps its entries alive (when
    /// it has members there), removes those of nodes that stopped, announces due
    /// leaves.
    async fn refresh(
        &self,
        channel: &str,
        policy: Policy,
        has_members: bool,
    ) -> Result<Outcome, BrokerError>;

    async fn page(
        &self,
        channel: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<PresenceResult, BrokerError>;

    async fn stats(&self, channel: &str) -> Result<PresenceStatsResult, BrokerError>;

    async fn online_update(&self, ops: &[(String, OnlineOp)]) -> Result<(), BrokerError>;

    async fn online(&self, users: &[String]) -> Result<Vec<UserStatus>, BrokerError>;
}

fn broker_error(e: PublishError) -> BrokerError {
    if let PublishError::Unavailable(m) = &e
        && crate::broker::misconfigured(m)
    {
        tracing::error!(error = %m, "redis refused a presence command: check the gateway's ACL user (docs/operations.md)");
    }
    match e {
        PublishError::InvalidTarget(m) => BrokerError::Rejected(m),
        other => BrokerError::Unavailable(other.to_string()),
    }
}

/// Presence in Redis, through a publisher of its own (its commands never wait
/// behind publishes or history reads).
pub struct RedisStore {
    publisher: Publisher,
    node: NodePresence,
}

impl RedisStore {
    pub fn new(publisher: Publisher, node: NodePresence) -> Self {
        Self { publisher, node }
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn update(
        &self,
        channel: &str,
        policy: Policy,
        joins: &[Join],
        leaves: &[String],
    ) -> Result<Outcome, BrokerError> {
        self.publisher
            .presence_update(&self.node, channel, policy, joins, leaves)
            .await
            .map_err(broker_error)
    }

    async fn refresh(
        &self,
        channel: &str,
        policy: Policy,
        has_members: bool,
    ) -> Result<Outcome, BrokerError> {
        self.publisher
            .presence_refresh(&self.node, channel, policy.events, has_members)
            .await
            .map_err(broker_error)
    }

    async fn page(
        &self,
        channel: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<PresenceResult, BrokerError> {
        self.publisher
            .presence(channel, limit, cursor)
            .await
            .map_err(broker_error)
    }

    async fn stats(&self, channel: &str) -> Result<PresenceStatsResult, BrokerError> {
        self.publisher
            .presence_stats(channel)
            .await
            .map_err(broker_error)
    }

    async fn online_update(&self, ops: &[(String, OnlineOp)]) -> Result<(), BrokerError> {
        self.publisher
            .online_update(&self.node, ops)
            .await
            .map_err(broker_error)
    }

    async fn online(&self, users: &[String]) -> Result<Vec<UserStatus>, BrokerError> {
        self.publisher.online(users).await.map_err(broker_error)
    }
}
