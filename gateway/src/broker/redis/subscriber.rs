//! One subscriber connection ("shard") for its life: connect, subscribe to what the
//! hub wants, deliver until the connection fails.
//!
//! The connection has two sides that run side by side and never wait on each other:
//! the reader only reads (replies, messages, confirmations) and hands publications to
//! the hub, which never blocks; the commander writes SUBSCRIBE/UNSUBSCRIBE as
//! interest changes and publishes the liveness probe on its own connection. A slow
//! Redis therefore delays commands, never the reading of messages, and the only
//! buffer between Redis and the hub is the reader's (one reply at most, bounded):
//! when the hub cannot keep up, the backlog waits in the kernel and then in Redis,
//! which drops a subscriber past its `client-output-buffer-limit pubsub`; the
//! reconnect is counted, and history channels fill what was missed from history.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::time::Instant;

use super::Shared;
use super::connection::connect;
use super::reader::Reader;
use super::shard::Shard;
use super::subscriptions::Commander;

/// What the reader and the commander of one connection share.
#[derive(Default)]
pub(super) struct Pending {
    /// UNSUBSCRIBEs sent and not yet confirmed, per Redis channel name: a
    /// confirmation of a SUBSCRIBE sent before one of them is stale, and an
    /// unsubscription nobody asked for means Redis dropped the channel.
    unsubscribing: std::sync::Mutex<HashMap<String, u32>>,
}

impl Pending {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.unsubscribing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection's life: connect, subscribe, deliver until it fails; returns why.
pub(super) async fn serve(shared: &Arc<Shared>, shard: &Shard, first: bool) -> String {
    let (rd, wr, peer) = match connect(shared, shard).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let link = Pending::default();
    let probe = shared.keys.probe_channel(&shared.node.node_id, shard.index);
    let mut commander = Commander {
        shared,
        shard,
        link: &link,
        wr,
        out: BytesMut::new(),
        active: HashSet::new(),
        leaving: HashMap::new(),
        metrics: shared.metrics.broker.shard(shard.index),
    };
    let reader = Reader {
        shared,
        shard,
        link: &link,
        probe: &probe,
        started: Instant::now(),
        first,
        peer,
        metrics: shared.metrics.broker.shard(shard.index),
    };
    let why = tokio::select! {
        why = reader.run(rd) => why,
        why = commander.run(&probe) => why,
    };
    commander.release();
    why
}
