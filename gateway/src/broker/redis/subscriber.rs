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
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::{Instant, sleep};

use super::Shared;
use super::connection::{Pending, connect};
use super::reader::Reader;
use super::shard::{Shard, Target, set_up};
use super::subscriptions::Commander;

/// One connection's life: connect, subscribe, deliver until it fails; returns why.
pub(super) async fn serve(shared: &Arc<Shared>, shard: &Shard, first: bool) -> String {
    // Taken before connecting: a switch from then on replaces this connection.
    let changes = match &shard.target {
        Target::Instance { endpoint, .. } => endpoint.changes(),
        Target::Partition { .. } => None,
    };
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
    let moved = async move {
        match changes {
            Some(mut rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    let why = tokio::select! {
        why = reader.run(rd) => why,
        why = commander.run(&probe) => why,
        () = moved => "the sentinels switched the primary".to_string(),
    };
    commander.release();
    why
}

/// Keeps one shard connected for the life of the node.
pub(super) async fn run_shard(shared: Arc<Shared>, shard: Arc<Shard>) {
    let base = shared.redis.reconnect_min;
    let mut delay = base;
    let mut first = true;
    loop {
        if !first {
            shared.metrics.broker.reconnected();
        }
        let connected_at = Instant::now();
        let why = serve(&shared, &shard, first).await;
        set_up(&shared, &shard, false);
        first = false;
        if connected_at.elapsed() > Duration::from_secs(30) {
            delay = base;
        }
        if super::misconfigured(&why) {
            tracing::error!(shard = shard.index, reason = %why, retry_in = ?delay, "redis refused the subscriber connection: check its ACL user and password (docs/operations.md)");
        } else {
            tracing::warn!(shard = shard.index, reason = %why, retry_in = ?delay, "redis subscriber connection lost");
        }
        // Equal jitter: never a tight loop, never a synchronized herd.
        let half = delay / 2;
        sleep(half + half.mul_f64(rand::random::<f64>())).await;
        delay = (delay * 2).min(shared.redis.reconnect_max.max(base));
    }
}
