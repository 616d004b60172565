//! Gateways on a real 3-master Redis Cluster (3 replicas) with sharded pub/sub:
//! exactly-once delivery, each channel subscribed only on the master that owns its
//! partition's slot, and a numbered history-backed stream that survives a master
//! failover and a resharding of its slot without a gap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use protocol::Encoding;
use protocol::keys::KeySpace;
use protocol::topology::{Partitions, key_slot};
use publisher::Publisher;
use serde_json::json;
use support::{Audience, Client, Gateway, token};
use testkit::{RedisCluster, RedisServer};

const PARTITIONS: usize = 16;

fn keys() -> KeySpace {
    KeySpace::cluster("tidings", Partitions::new(PARTITIONS).unwrap()).unwrap()
}

fn slot_of(channel: &str) -> u16 {
    key_slot(keys().pubsub_channel(channel).as_bytes())
}

async fn nodes(cluster: &RedisCluster, n: usize) -> Vec<Gateway> {
    support::ready_nodes(n, |b, name| b.redis_cluster(cluster, PARTITIONS, name)).await
}

fn sdk(cluster: &RedisCluster) -> Publisher {
    Publisher::cluster(cluster.urls())
        .partitions(PARTITIONS)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// Waits until the owner of `channel`'s slot reports `n` shard subscribers and every
/// other live node (masters and replicas) none.
async fn wait_shard_numsub(cluster: &RedisCluster, channel: &str, n: i64) {
    let name = keys().pubsub_channel(channel);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let owner = cluster.owner(slot_of(channel)).await;
        let mut counts = Vec::new();
        for node in cluster.live() {
            counts.push((node.port, RedisCluster::shard_numsub(node, &name).await));
        }
        if counts
            .iter()
            .all(|&(port, got)| got == if port == owner { n } else { 0 })
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "SHARDNUMSUB {name}: {counts:?}, want {n} on {owner} only"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every shard channel a node has subscribers for hashes to a slot that node owns,
/// and nothing uses classic pub/sub.
async fn assert_channels_only_on_owners(cluster: &RedisCluster) {
    let node = cluster.live().next().unwrap();
    let ranges = RedisCluster::slots_seen_by(node).await;
    for node in cluster.live() {
        for name in RedisCluster::shard_channels(node, "tidings:*").await {
            let slot = key_slot(name.as_bytes());
            let owner = ranges
                .iter()
                .find(|r| (r.start..=r.end).contains(&slot))
                .unwrap()
                .port;
            assert_eq!(owner, node.port, "{name} subscribed on {}", node.port);
        }
        assert!(
            node.channels().await.is_empty(),
            "classic pub/sub channels on {}",
            node.port
        );
    }
}

#[tokio::test]
async fn cluster_delivers_exactly_once_through_the_owning_master() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3).await;
    eprintln!("cluster up in {:?}", started.elapsed());
    let gws = nodes(&cluster, 3).await;
    let mut aud = Audience::join(&gws, &["news"], |_| Encoding::Json).await;
    wait_shard_numsub(&cluster, "$user:alice", 3).await;
    wait_shard_numsub(&cluster, "$user:bob", 1).await;
    wait_shard_numsub(&cluster, "news", 2).await;
    wait_shard_numsub(&cluster, "$broadcast", 3).await;
    assert_channels_only_on_owners(&cluster).await;

    let p = sdk(&cluster);
    // The HTTP API of any node publishes the same way (grouped per partition).
    aud.each_delivered_once(&p, &gws[2]).await;
    // A client publish goes through the cluster too.
    let mut carol = Client::connect(&gws[1], &token("carol", &["news"], &["news"], 60)).await;
    assert!(carol.subscribe("news").await.ok);
    // Carol's node already listens to news for alice: still one subscriber per node.
    wait_shard_numsub(&cluster, "news", 2).await;
    assert!(carol.publish("news", "say", json!("hi")).await.ok);
    for c in aud
        .alice
        .iter_mut()
        .take(2)
        .chain([&mut aud.bob, &mut carol])
    {
        assert_eq!(c.message().await.payload.json(), "\"hi\"");
    }
    for c in aud.everyone().chain([&mut carol]) {
        c.no_message_within(Duration::from_millis(300)).await;
    }

    // Per-partition stats: the partition of alice's channel carries her messages on
    // every node, and every node holds one connection per partition.
    let part = keys().partition_of("$user:alice");
    for gw in &gws {
        let sample = format!("tidings_redis_shard_messages_received_total{{shard=\"{part}\"}}");
        assert!(gw.metric(&sample).await >= 2.0, "{sample}");
        let up: f64 = {
            let text = gw.metrics().await;
            (0..PARTITIONS)
                .map(|i| {
                    support::metric_value(
                        &text,
                        &format!("tidings_redis_shard_up{{shard=\"{i}\"}}"),
                    )
                })
                .sum()
        };
        assert_eq!(up, PARTITIONS as f64, "one live connection per partition");
    }
    let mut per_master = Vec::new();
    for port in cluster.masters().await {
        let list = cluster.node(port).cmd(&["CLIENT", "LIST"]).await;
        let text = match list {
            redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("{other:?}"),
        };
        per_master.push((
            port,
            text.lines()
                .filter(|l| l.contains("ssub=") && !l.contains("ssub=0"))
                .count(),
        ));
    }
    eprintln!("connections with shard subscriptions per master: {per_master:?}");
    let total: usize = per_master.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 3 * PARTITIONS, "3 nodes x {PARTITIONS} partitions");
}

/// Waits until the node on `port` answers PING again, or fails.
async fn reachable(node: &RedisServer) {
    node.cmd(&["PING"]).await;
}

#[tokio::test]
async fn numbered_stream_survives_failover_and_resharding() {
    let mut cluster = RedisCluster::start(3).await;
    let gws = nodes(&cluster, 2).await;
    let user = "stream-user";
    let channel = "$user:stream-user";
    let (client, mut events) = client::Client::builder(vec![gws[0].ws_url(), gws[1].ws_url()])
        .token(token(user, &[], &[], 300))
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .going_away_delay(Duration::from_millis(20))
        .build()
        .unwrap();
    support::welcomed(&mut events).await;
    wait_shard_numsub(&cluster, channel, 1).await;
    const N: u64 = 400;
    let pause = Arc::new(AtomicBool::new(false));
    let publisher = support::numbered_stream(
        sdk(&cluster),
        user,
        N,
        Duration::from_millis(5),
        Some(pause.clone()),
    );
    let mut got = support::collect_numbers(&mut events, 60, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 60);

    // Failover: the master of the stream's slot dies mid-stream. Replication is
    // asynchronous, so the publisher holds off for a moment first (a write the dead
    // master acknowledged but never replicated is lost by Redis, not by Tidings);
    // it resumes at once and retries while the replica is promoted.
    let slot = slot_of(channel);
    pause.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let old = cluster.kill_owner(slot).await;
    pause.store(false, Ordering::Release);
    let new = cluster.wait_new_owner(slot, old).await;
    eprintln!("failover {old} -> {new} in {:?}", t.elapsed());
    got.extend(support::collect_numbers(&mut events, 60, Duration::from_secs(20)).await);
    eprintln!("delivery resumed {:?} after the kill", t.elapsed());
    wait_shard_numsub(&cluster, channel, 1).await;

    // Resharding: the slot moves (with the channel's history) to another master
    // while the stream goes on; the node follows it and resubscribes there.
    let to = cluster
        .masters()
        .await
        .into_iter()
        .find(|m| *m != new)
        .unwrap();
    reachable(cluster.node(to)).await;
    let t = Instant::now();
    cluster.migrate_slot(slot, to).await;
    wait_shard_numsub(&cluster, channel, 1).await;
    eprintln!(
        "resubscribed on the new owner {:?} after the move",
        t.elapsed()
    );

    let left = N - got.len() as u64;
    got.extend(support::collect_numbers(&mut events, left, Duration::from_secs(30)).await);
    publisher.await.unwrap();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "every number once, in order"
    );
    drop(client);
    for gw in &gws {
        assert!(gw.metric("tidings_broker_reconnects_total").await >= 1.0);
        for line in gw.logs().lines().filter(|l| l.contains("slot moved")) {
            eprintln!("{line}");
        }
    }
}
