//! State shared by every connection and request on this node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use protocol::frame::{Limits, ServerFrame};
use protocol::{Encoding, ProtocolError};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::Verifier;
use crate::broker::Broker;
use crate::config::Config;
use crate::hub::{Hub, Table};
use crate::metrics::Metrics;
use crate::presence::Presence;

pub struct Node {
    pub config: Config,
    pub hub: Hub,
    /// Where publications go, and history and acknowledgements come from.
    pub broker: Arc<dyn Broker>,
    /// Who is in which channel, who is online.
    pub presence: Arc<Presence>,
    pub metrics: Arc<Metrics>,
    pub verifier: Verifier,
    pub ws_config: WebSocketConfig,
    pub limits: Limits,
    pub ping_json: Utf8Bytes,
    pub ping_msgpack: Bytes,
    /// Origin of the heartbeat grid (see `heartbeat::grid`).
    pub started: tokio::time::Instant,
    draining: AtomicBool,
    connections: AtomicUsize,
    /// Public-listener connections not (yet) upgraded to a WebSocket.
    pending: Arc<AtomicUsize>,
    per_user: Mutex<HashMap<Arc<str>, u32>>,
    next_session: AtomicU64,
}

/// A public-listener connection in its HTTP phase; dropping it stops counting it.
pub struct Pending {
    count: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let now = self.count.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        self.metrics.pending(now as i64);
    }
}

/// Why a connection slot was refused.
#[derive(Debug)]
pub enum SlotError {
    NodeFull,
    UserFull,
}

/// A reserved connection slot; dropping it frees the slot.
pub struct Slot {
    node: Arc<Node>,
    user: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.node.connections.fetch_sub(1, Ordering::AcqRel);
        let mut users = self.node.per_user.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = users.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                users.remove(&self.user);
            }
        }
    }
}

impl Node {
    pub fn new(
        config: Config,
        table: Arc<Table>,
        broker: Arc<dyn Broker>,
        presence: Arc<Presence>,
        metrics: Arc<Metrics>,
        verifier: Verifier,
    ) -> Result<Self, ProtocolError> {
        let hub = Hub::new(table, broker.clone(), metrics.clone());
        let mut ws_config = WebSocketConfig::default();
        ws_config.read_buffer_size = config.conn.ws_read_buffer;
        // Every batch ends with a flush, so small frames of one batch (a heartbeat's
        // WebSocket ping and `ping` frame, a burst of messages) share one write
        // syscall; kept small because the buffer's capacity stays with the connection.
        ws_config.write_buffer_size = 512;
        ws_config.max_write_buffer_size = config
            .conn
            .max_message_size
            .max(config.conn.max_payload_size)
            * 4
            + 64 * 1024;
        ws_config.max_message_size = Some(config.conn.max_message_size);
        ws_config.max_frame_size = Some(config.conn.max_message_size);
        let limits = Limits {
            max_message_bytes: config.conn.max_message_size as u64,
            max_payload_bytes: config.conn.max_payload_size as u64,
            max_channels: config.conn.max_channels,
            rate_per_sec: config.conn.rate_limit,
            rate_burst: config.conn.rate_burst,
        };
        let ping_json = Utf8Bytes::try_from(ServerFrame::Ping.encode(Encoding::Json)?)
            .map_err(|e| ProtocolError::Encode(e.to_string()))?;
        let ping_msgpack = ServerFrame::Ping.encode(Encoding::MsgPack)?;
        Ok(Self {
            config,
            hub,
            broker,
            presence,
            metrics,
            verifier,
            ws_config,
            limits,
            ping_json,
            ping_msgpack,
            started: tokio::time::Instant::now(),
            draining: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            pending: Arc::new(AtomicUsize::new(0)),
            per_user: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(rand::random::<u32>() as u64),
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.metrics.set_draining();
    }

    /// Whether `/readyz` should say ready.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.broker.is_ready()
    }

    /// Counts a connection accepted on the public listener until the returned guard
    /// is dropped (it upgraded or ended); `None` when `--max-pending-connections`
    /// are already in progress.
    pub fn pending_connection(&self) -> Option<Pending> {
        let prev = self.pending.fetch_add(1, Ordering::AcqRel);
        if prev >= self.config.listeners.max_pending {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.metrics.pending(prev as i64 + 1);
        Some(Pending {
            count: self.pending.clone(),
            metrics: self.metrics.clone(),
        })
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Reserves a connection slot against the node and per-user limits.
    pub fn reserve(self: &Arc<Self>, user: &str) -> Result<Slot, SlotError> {
        let prev = self.connections.fetch_add(1, Ordering::AcqRel);
        if prev >= self.config.conn.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(SlotError::NodeFull);
        }
        let mut users = self.per_user.lock().unwrap_or_else(|e| e.into_inner());
        let user: Arc<str> = match users.get_key_value(user) {
            Some((k, _)) => k.clone(),
            None => Arc::from(user),
        };
        let n = users.entry(user.clone()).or_insert(0);
        if *n >= self.config.conn.max_per_user {
            drop(users);
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(SlotError::UserFull);
        }
        *n += 1;
        Ok(Slot {
            node: self.clone(),
            user,
        })
    }
}

impl Slot {
    /// The user holding the slot (shared with the per-user table).
    pub fn user(&self) -> &Arc<str> {
        &self.user
    }
}
