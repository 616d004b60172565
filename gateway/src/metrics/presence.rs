//! Presence metrics: this node's entries and pending changes, the refresh pass,
//! the joins and leaves announced, the store's failures. No channel or user label.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};

use super::register::{counter, counter_vec, gauge, histogram};

pub struct PresenceMetrics {
    members: IntGauge,
    pending: IntGauge,
    refresh: Histogram,
    joins: IntCounter,
    leaves: IntCounter,
    failures: IntCounter,
    refused: IntCounter,
    queries: IntCounterVec,
}

/// A presence read, the `kind` label.
#[derive(Debug, Clone, Copy)]
pub enum Query {
    Page,
    Stats,
    Online,
}

impl Query {
    const ALL: [Query; 3] = [Query::Page, Query::Stats, Query::Online];

    fn label(self) -> &'static str {
        match self {
            Query::Page => "page",
            Query::Stats => "stats",
            Query::Online => "online",
        }
    }
}

impl PresenceMetrics {
    pub(super) fn new(r: &Registry) -> Self {
        let m = Self {
            members: gauge(
                r,
                "tidings_presence_members",
                "Presence entries of this node's connections (one per connection and channel with presence)",
            ),
            pending: gauge(
                r,
                "tidings_presence_pending",
                "Presence changes (joins, leaves, online changes) waiting for the next batch to Redis",
            ),
            refresh: histogram(
                r,
                "tidings_presence_refresh_seconds",
                "Time of one refresh pass over this node's presence channels and online users",
                vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
            ),
            joins: counter(
                r,
                "tidings_presence_joins_total",
                "Users announced as joined in presence_diff frames this node delivered",
            ),
            leaves: counter(
                r,
                "tidings_presence_leaves_total",
                "Users announced as left in presence_diff frames this node delivered",
            ),
            failures: counter(
                r,
                "tidings_presence_failures_total",
                "Presence updates or refreshes that failed (Redis unavailable); retried with the next batch",
            ),
            refused: counter(
                r,
                "tidings_presence_refused_total",
                "Connections not listed because their channel's presence was full (the rule's max)",
            ),
            queries: counter_vec(
                r,
                "tidings_presence_queries_total",
                "Presence reads (WebSocket requests and API calls) by kind",
                "kind",
            ),
        };
        for q in Query::ALL {
            m.queries.with_label_values(&[q.label()]);
        }
        m
    }

    pub fn members(&self, delta: i64) {
        self.members.add(delta);
    }

    pub fn set_pending(&self, n: usize) {
        self.pending.set(n as i64);
    }

    pub fn refreshed(&self, took: Duration) {
        self.refresh.observe(took.as_secs_f64());
    }

    pub fn announced(&self, joins: usize, leaves: usize) {
        self.joins.inc_by(joins as u64);
        self.leaves.inc_by(leaves as u64);
    }

    pub fn failed(&self) {
        self.failures.inc();
    }

    pub fn refused(&self, n: usize) {
        self.refused.inc_by(n as u64);
    }

    pub fn query(&self, q: Query) {
        self.queries.with_label_values(&[q.label()]).inc();
    }
}
