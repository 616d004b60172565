//! The broker's metrics: Redis connections, subscriptions, messages read, lag.

use std::time::Duration;

use prometheus::{
    Gauge, GaugeVec, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

use super::register::{
    counter, counter_vec, float_gauge, float_gauge_vec, gauge, gauge_vec, histogram,
};

/// Why a message read from Redis was not delivered, the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerInvalid {
    /// Not a Tidings envelope.
    Undecodable,
    /// The envelope names another channel than the Redis channel it came on.
    ChannelMismatch,
    /// Larger than any publication could be (the connection is replaced).
    Oversized,
}

impl BrokerInvalid {
    const ALL: [BrokerInvalid; 3] = [
        BrokerInvalid::Undecodable,
        BrokerInvalid::ChannelMismatch,
        BrokerInvalid::Oversized,
    ];

    fn label(self) -> &'static str {
        match self {
            BrokerInvalid::Undecodable => "undecodable",
            BrokerInvalid::ChannelMismatch => "channel_mismatch",
            BrokerInvalid::Oversized => "oversized",
        }
    }
}

/// What one subscriber connection counts: channels it subscribed, messages it
/// read (each also in the node's totals).
pub struct ShardMetrics {
    subscriptions: IntGauge,
    received: IntCounter,
    shard_subscriptions: IntGauge,
    shard_received: IntCounter,
}

impl ShardMetrics {
    /// Channels subscribed (`delta` > 0) or unsubscribed on this connection.
    pub fn subscribed(&self, delta: i64) {
        self.subscriptions.add(delta);
        self.shard_subscriptions.add(delta);
    }

    /// A message read from Redis.
    pub fn received(&self) {
        self.received.inc();
        self.shard_received.inc();
    }
}

/// Broker health, behind methods the broker implementations call.
pub struct BrokerMetrics {
    up: IntGauge,
    reconnects: IntCounter,
    resubscribe_seconds: Histogram,
    subscriptions: IntGauge,
    received: IntCounter,
    publish_errors: IntCounter,
    invalid: IntCounterVec,
    lag: Gauge,
    /// Per subscriber connection (`shard` label: its index; the partition in cluster
    /// mode, so bounded by the configuration): channels subscribed.
    shard_subscriptions: IntGaugeVec,
    /// Per subscriber connection: messages received.
    shard_received: IntCounterVec,
    /// Per subscriber connection: 1 while connected and subscribed.
    shard_up: IntGaugeVec,
    shard_lag: GaugeVec,
}

impl BrokerMetrics {
    pub(super) fn new(r: &Registry) -> Self {
        Self {
            up: gauge(r, "tidings_broker_up", "1 while the broker is usable"),
            reconnects: counter(r, "tidings_broker_reconnects_total", "Broker reconnections"),
            resubscribe_seconds: histogram(
                r,
                "tidings_broker_resubscribe_duration_seconds",
                "Time to resubscribe every channel after a broker reconnect",
                vec![0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0],
            ),
            subscriptions: gauge(
                r,
                "tidings_redis_subscriptions",
                "Redis channels this node subscribes to",
            ),
            received: counter(
                r,
                "tidings_redis_messages_received_total",
                "Messages received from Redis",
            ),
            publish_errors: counter(
                r,
                "tidings_broker_publish_errors_total",
                "Publishes the broker refused or failed",
            ),
            shard_subscriptions: gauge_vec(
                r,
                "tidings_redis_shard_subscriptions",
                "Redis channels subscribed per subscriber connection (the partition in cluster mode)",
                "shard",
            ),
            shard_received: counter_vec(
                r,
                "tidings_redis_shard_messages_received_total",
                "Messages received per subscriber connection (the partition in cluster mode)",
                "shard",
            ),
            shard_up: gauge_vec(
                r,
                "tidings_redis_shard_up",
                "1 while a subscriber connection is connected and subscribed",
                "shard",
            ),
            invalid: counter_vec(
                r,
                "tidings_redis_messages_invalid_total",
                "Messages from Redis not delivered, by reason (undecodable, channel_mismatch, oversized)",
                "reason",
            ),
            lag: float_gauge(
                r,
                "tidings_broker_lag_seconds",
                "How far behind the furthest Redis subscriber connection reads (liveness probe round trip, or the age of the probe on its way)",
            ),
            shard_lag: float_gauge_vec(
                r,
                "tidings_redis_shard_lag_seconds",
                "How far behind each Redis subscriber connection reads",
                "shard",
            ),
        }
    }

    pub fn set_up(&self, up: bool) {
        self.up.set(i64::from(up));
    }

    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    pub fn resubscribed(&self, took: Duration) {
        self.resubscribe_seconds.observe(took.as_secs_f64());
    }

    /// The metrics of one subscriber connection (its `shard` label resolved once, so
    /// its series show from the start).
    pub fn shard(&self, shard: usize) -> ShardMetrics {
        let label = shard.to_string();
        ShardMetrics {
            subscriptions: self.subscriptions.clone(),
            received: self.received.clone(),
            shard_subscriptions: self.shard_subscriptions.with_label_values(&[&label]),
            shard_received: self.shard_received.with_label_values(&[&label]),
        }
    }

    pub fn publish_failed(&self) {
        self.publish_errors.inc();
    }

    pub fn invalid(&self, why: BrokerInvalid) {
        self.invalid.with_label_values(&[why.label()]).inc();
    }

    /// Creates the labelled series dashboards refer to before their first event.
    pub(super) fn touch(&self) {
        for why in BrokerInvalid::ALL {
            self.invalid.with_label_values(&[why.label()]);
        }
    }

    pub fn shard_up(&self, shard: usize, up: bool) {
        self.shard_up
            .with_label_values(&[&shard.to_string()])
            .set(i64::from(up));
    }

    /// How far behind the read side of one subscriber connection is.
    pub fn shard_lag(&self, shard: usize, lag: Duration) {
        self.shard_lag
            .with_label_values(&[&shard.to_string()])
            .set(lag.as_secs_f64());
    }

    /// How far behind the furthest subscriber connection is.
    pub fn lag(&self, lag: Duration) {
        self.lag.set(lag.as_secs_f64());
    }
}
