//! Prometheus metrics behind domain methods; the registry stays private. Label values
//! are fixed sets (results, reasons, frame types, close codes), never user ids,
//! tokens or channel names. Hot-path counters are resolved once at startup.

mod broker;
mod presence;
mod register;

pub use broker::{BrokerInvalid, BrokerMetrics, ShardMetrics};
pub use presence::{PresenceMetrics, Query};
use register::{counter, counter_vec, gauge, histogram};

use prometheus::{Encoder, Histogram, IntCounter, IntCounterVec, IntGauge, Registry, TextEncoder};

/// Outcome of a connection attempt, the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Ok,
    BadRequest,
    Unauthorized,
    Forbidden,
    Limited,
    Draining,
}

impl Attempt {
    const ALL: [Attempt; 6] = [
        Attempt::Ok,
        Attempt::BadRequest,
        Attempt::Unauthorized,
        Attempt::Forbidden,
        Attempt::Limited,
        Attempt::Draining,
    ];
    fn label(self) -> &'static str {
        match self {
            Attempt::Ok => "ok",
            Attempt::BadRequest => "bad_request",
            Attempt::Unauthorized => "unauthorized",
            Attempt::Forbidden => "forbidden",
            Attempt::Limited => "limited",
            Attempt::Draining => "draining",
        }
    }
}

/// Why a message did not reach a connection, the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// The connection's outbound queue was full (it is closed as a slow consumer).
    SlowConsumer,
    /// The connection was already closing.
    Closed,
    /// The frame could not be encoded (a bug; logged).
    Encode,
}

const CLOSE_CODES: [u16; 13] = [
    1000, 1001, 1002, 1006, 1007, 1008, 1009, 1011, 4001, 4002, 4003, 4004, 4005,
];
const FRAME_TYPES: [&str; 11] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "refresh",
    "ack",
    "pong",
    "invalid",
    "ws_control",
    "presence",
    "presence_stats",
    "history",
];

pub struct Metrics {
    registry: Registry,
    connections: IntGauge,
    attempts: Vec<IntCounter>,
    closes: Vec<IntCounter>,
    closes_other: IntCounter,
    delivered: IntCounter,
    pending: IntGauge,
    pending_refused: IntCounter,
    budgets: IntCounterVec,
    idempotency_evictions: IntCounter,
    replayed: IntCounter,
    history_limited: IntCounter,
    dropped_slow: IntCounter,
    dropped_closed: IntCounter,
    dropped_encode: IntCounter,
    inbound: Vec<IntCounter>,
    handshake: Histogram,
    latency: Histogram,
    subscriptions: IntGauge,
    channels: IntGauge,
    published: IntCounterVec,
    draining: IntGauge,
    gaps: IntCounterVec,
    pub broker: BrokerMetrics,
    pub presence: PresenceMetrics,
}

/// A budget that refused something, the `budget` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// A history rule's channels (`<max-channels>`, `--history-max-channels`).
    HistoryChannels,
    /// The memory broker's history bytes (`--history-max-bytes`).
    HistoryBytes,
    /// The bytes of one publish API request (`--max-publish-bytes`).
    PublishBytes,
}

impl Budget {
    const ALL: [Budget; 3] = [
        Budget::HistoryChannels,
        Budget::HistoryBytes,
        Budget::PublishBytes,
    ];
    fn label(self) -> &'static str {
        match self {
            Budget::HistoryChannels => "history_channels",
            Budget::HistoryBytes => "history_bytes",
            Budget::PublishBytes => "publish_bytes",
        }
    }
}

impl Metrics {
    /// Builds every metric. Names and help texts are constants, so a failure here is a
    /// programming error caught by any test run, not something input can cause.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let r = Registry::new();
        let attempts_vec = counter_vec(
            &r,
            "tidings_connection_attempts_total",
            "WebSocket upgrade attempts by result",
            "result",
        );
        let closes_vec = counter_vec(
            &r,
            "tidings_closes_total",
            "Closed connections by close code",
            "code",
        );
        let dropped = counter_vec(
            &r,
            "tidings_messages_dropped_total",
            "Messages not delivered to a connection, by reason",
            "reason",
        );
        let inbound_vec = counter_vec(
            &r,
            "tidings_inbound_frames_total",
            "Frames received from clients by type",
            "type",
        );
        let lat_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let m = Metrics {
            connections: gauge(&r, "tidings_connections", "Open WebSocket connections"),
            attempts: Attempt::ALL
                .iter()
                .map(|a| attempts_vec.with_label_values(&[a.label()]))
                .collect(),
            closes: CLOSE_CODES
                .iter()
                .map(|c| closes_vec.with_label_values(&[&c.to_string()]))
                .collect(),
            closes_other: closes_vec.with_label_values(&["other"]),
            delivered: counter(
                &r,
                "tidings_messages_delivered_total",
                "Live messages written to client connections",
            ),
            pending: gauge(
                &r,
                "tidings_http_pending_connections",
                "Public-listener connections not upgraded to a WebSocket (API requests, upgrades in progress)",
            ),
            pending_refused: counter(
                &r,
                "tidings_http_pending_refused_total",
                "Connections refused with 503 because --max-pending-connections were in progress",
            ),
            budgets: counter_vec(
                &r,
                "tidings_budget_refusals_total",
                "Requests refused because a budget was used up, by budget",
                "budget",
            ),
            idempotency_evictions: counter(
                &r,
                "tidings_idempotency_evictions_total",
                "Message ids the in-memory broker forgot before their window ended (its cap of 100,000 ids was reached)",
            ),
            replayed: counter(
                &r,
                "tidings_messages_replayed_total",
                "Messages written to client connections from history (resumes, subscribes with history, gap fills)",
            ),
            history_limited: counter(
                &r,
                "tidings_history_reads_limited_total",
                "History reads held back by the per-connection rate limit (subscribes refused, gap fills delayed)",
            ),
            dropped_slow: dropped.with_label_values(&["slow_consumer"]),
            dropped_closed: dropped.with_label_values(&["closed"]),
            dropped_encode: dropped.with_label_values(&["encode"]),
            inbound: FRAME_TYPES
                .iter()
                .map(|t| inbound_vec.with_label_values(&[t]))
                .collect(),
            handshake: histogram(
                &r,
                "tidings_handshake_duration_seconds",
                "Time from upgrade request to 101 response, including token verification",
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
                ],
            ),
            latency: histogram(
                &r,
                "tidings_delivery_latency_seconds",
                "Publish time to write on the client socket",
                lat_buckets.clone(),
            ),
            subscriptions: gauge(
                &r,
                "tidings_subscriptions",
                "Channel subscriptions of open connections",
            ),
            channels: gauge(
                &r,
                "tidings_channels",
                "Distinct channels with local subscribers",
            ),
            published: counter_vec(
                &r,
                "tidings_published_total",
                "Publications accepted, by source",
                "source",
            ),
            draining: gauge(
                &r,
                "tidings_draining",
                "1 while the node drains connections for shutdown",
            ),
            gaps: counter_vec(
                &r,
                "tidings_stream_gaps_total",
                "Gaps in a channel's live offsets, by outcome (filled from history, or resync close)",
                "outcome",
            ),
            broker: BrokerMetrics::new(&r),
            presence: PresenceMetrics::new(&r),
            registry: r,
        };
        m.touch();
        m
    }

    pub fn attempt(&self, a: Attempt) {
        if let Some(c) = Attempt::ALL
            .iter()
            .position(|x| *x == a)
            .and_then(|i| self.attempts.get(i))
        {
            c.inc();
        }
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    pub fn connection_closed(&self, code: u16) {
        self.connections.dec();
        match CLOSE_CODES
            .iter()
            .position(|c| *c == code)
            .and_then(|i| self.closes.get(i))
        {
            Some(c) => c.inc(),
            None => self.closes_other.inc(),
        }
    }

    pub fn delivered(&self, n: u64) {
        self.delivered.inc_by(n);
    }

    pub fn idempotency_evicted(&self) {
        self.idempotency_evictions.inc();
    }

    pub fn budget_refused(&self, b: Budget) {
        self.budgets.with_label_values(&[b.label()]).inc();
    }

    pub fn pending(&self, now: i64) {
        self.pending.set(now);
    }

    pub fn pending_refused(&self) {
        self.pending_refused.inc();
    }

    pub fn replayed(&self, n: u64) {
        self.replayed.inc_by(n);
    }

    pub fn history_limited(&self) {
        self.history_limited.inc();
    }

    pub fn dropped(&self, reason: Drop, n: u64) {
        match reason {
            Drop::SlowConsumer => self.dropped_slow.inc_by(n),
            Drop::Closed => self.dropped_closed.inc_by(n),
            Drop::Encode => self.dropped_encode.inc_by(n),
        }
    }

    /// Counts an inbound frame by its type (`invalid` when undecodable).
    pub fn inbound(&self, kind: &str) {
        let i = FRAME_TYPES.iter().position(|t| *t == kind).unwrap_or(6);
        if let Some(c) = self.inbound.get(i) {
            c.inc();
        }
    }

    pub fn handshake(&self, seconds: f64) {
        self.handshake.observe(seconds);
    }

    /// Publish-to-socket latency of one delivered message.
    pub fn latency(&self, now_ms: u64, published_ms: u64) {
        self.latency
            .observe(now_ms.saturating_sub(published_ms) as f64 / 1000.0);
    }

    pub fn subscriptions(&self, delta: i64) {
        self.subscriptions.add(delta);
    }

    pub fn channels(&self, delta: i64) {
        self.channels.add(delta);
    }

    /// Creates the labelled series that must be visible before their first event
    /// (dashboards and alerts refer to them).
    fn touch(&self) {
        for source in ["api", "client"] {
            self.published.with_label_values(&[source]);
        }
        for outcome in ["filled", "resync"] {
            self.gaps.with_label_values(&[outcome]);
        }
        for b in Budget::ALL {
            self.budgets.with_label_values(&[b.label()]);
        }
        self.broker.touch();
    }

    /// A live message revealed missed offsets; `filled` when history covered them.
    pub fn gap(&self, filled: bool) {
        let outcome = if filled { "filled" } else { "resync" };
        self.gaps.with_label_values(&[outcome]).inc();
    }

    pub fn published(&self, source: &'static str) {
        self.published.with_label_values(&[source]).inc();
    }

    pub fn set_draining(&self) {
        self.draining.set(1);
    }

    pub fn open_connections(&self) -> i64 {
        self.connections.get()
    }

    /// The text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
