//! The SDK beyond one Redis: several independent instances (sharded mode) and a
//! real 3-master Redis Cluster (sharded pub/sub), with the same publisher API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use protocol::Publication;
use protocol::keys::KeySpace;
use protocol::topology::{Partitions, key_slot, shard_of};
use publisher::{PublishError, Publisher, Topology};
use redis::{PushKind, Value};
use serde_json::json;
use testkit::{RedisCluster, RedisServer};

const WAIT: Duration = Duration::from_secs(5);

async fn exists(server: &RedisServer, key: &str) -> bool {
    server.cmd(&["EXISTS", key]).await == Value::Int(1)
}

#[tokio::test]
async fn sharded_mode_keeps_each_channel_on_its_owner() {
    let shards = RedisServer::start_many(3).await;
    let urls: Vec<String> = shards.iter().map(RedisServer::url).collect();
    let p = Publisher::sharded(urls.clone())
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(p.topology(), &Topology::Sharded(urls));
    let keys = KeySpace::new("tidings");
    assert_eq!(p.keys(), &keys);

    // A subscriber on every instance for every channel: only the owner's hears it.
    let users: Vec<String> = (0..30).map(|i| format!("u{i}")).collect();
    let mut subs = Vec::new();
    for s in &shards {
        let client = redis::Client::open(s.url()).unwrap();
        let mut sub = client.get_async_pubsub().await.unwrap();
        for u in &users {
            sub.subscribe(keys.pubsub_channel(&format!("$user:{u}")))
                .await
                .unwrap();
        }
        subs.push(sub);
    }
    let r = p
        .to_users(users.clone())
        .event("e")
        .id("m1")
        .payload(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    // Each target reached exactly one subscriber (the owner's), with an offset.
    assert_eq!(r.per_target, vec![1; users.len()]);
    assert!(r.offsets.iter().all(|o| *o == Some(1)), "{:?}", r.offsets);
    let mut owners = [0usize; 3];
    for u in &users {
        let ch = format!("$user:{u}");
        let owner = shard_of(&ch, 3);
        assert_eq!(p.route(&ch), owner);
        owners[owner] += 1;
        for (i, s) in shards.iter().enumerate() {
            assert_eq!(
                exists(s, &keys.history_stream(&ch)).await,
                i == owner,
                "history of {ch} on shard {i}"
            );
        }
    }
    assert!(owners.iter().all(|&n| n > 0), "{owners:?}");
    // Per-instance message counts match ownership.
    for (i, sub) in subs.iter_mut().enumerate() {
        let mut stream = sub.on_message();
        for _ in 0..owners[i] {
            let msg = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stream))
                .await
                .unwrap()
                .unwrap();
            let env = Publication::decode(msg.get_payload_bytes()).unwrap();
            assert_eq!(shard_of(&env.channel, 3), i);
        }
        assert!(
            tokio::time::timeout(
                Duration::from_millis(100),
                futures_util::StreamExt::next(&mut stream)
            )
            .await
            .is_err(),
            "shard {i} got a message it does not own"
        );
    }
    // A retry is a duplicate on every owner.
    let r = p
        .to_users(users.clone())
        .event("e")
        .id("m1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.duplicates, users.len());

    // History, acks and the inbox read from the owner.
    let page = p.history("$user:u7", Some(0), 10).await.unwrap();
    assert_eq!(page.top, 1);
    assert_eq!(page.pubs.len(), 1);
    assert_eq!(p.unread_count("u7").await.unwrap(), 1);
    assert_eq!(p.ack("u7", 1).await.unwrap(), Some(1));
    assert_eq!(p.unread_count("u7").await.unwrap(), 0);
    assert_eq!(p.recent("u7", 5).await.unwrap().len(), 1);
    let acked = p.acked_channel("$user:u7").await.unwrap().unwrap();
    assert_eq!(acked.offset, 1);

    // One instance down: its channels fail, the others' still work.
    let mut shards = shards;
    let down = shard_of("$user:u0", 3);
    shards[down].kill();
    let e = p.to_user("u0").send().await.unwrap_err();
    assert!(matches!(e, PublishError::Unavailable(_)), "{e}");
    let other = users
        .iter()
        .find(|u| shard_of(&format!("$user:{u}"), 3) != down)
        .unwrap();
    p.to_user(other.as_str()).send().await.unwrap();
}

/// A cluster-aware subscriber for the test: RESP3 with pushes, so `SSUBSCRIBE` works.
async fn shard_subscriber(
    cluster: &RedisCluster,
) -> (
    redis::cluster_async::ClusterConnection,
    tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = redis::cluster::ClusterClientBuilder::new(cluster.urls())
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(tx)
        .build()
        .unwrap();
    (client.get_async_connection().await.unwrap(), rx)
}

async fn next_smessage(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
) -> Publication {
    loop {
        let push = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if push.kind == PushKind::SMessage {
            match &push.data[1] {
                Value::BulkString(b) => return Publication::decode(b).unwrap(),
                other => panic!("unexpected payload {other:?}"),
            }
        }
    }
}

/// Publishes `payload` to `user`, retrying (same id) until the cluster takes it.
async fn publish_until_ok(p: &Publisher, user: &str, i: u64) -> Option<u64> {
    for _ in 0..200 {
        match p.to_user(user).id(format!("n{i}")).payload(&i).send().await {
            Ok(r) => return r.offsets[0].or(Some(0)),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("publish {i} never succeeded");
}

#[tokio::test]
async fn cluster_mode_publishes_in_one_slot_and_follows_failover_and_resharding() {
    let mut cluster = RedisCluster::start(3).await;
    assert_eq!(cluster.masters().await.len(), 3);
    let p = Publisher::cluster(cluster.urls())
        .partitions(16)
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let parts = Partitions::new(16).unwrap();
    let keys = KeySpace::cluster("tidings", parts.clone()).unwrap();
    assert_eq!(p.keys(), &keys);

    // Live delivery through sharded pub/sub, counted by the owning master.
    let (mut sub, mut rx) = shard_subscriber(&cluster).await;
    sub.ssubscribe(keys.pubsub_channel("$user:alice"))
        .await
        .unwrap();
    sub.ssubscribe(keys.pubsub_channel("news")).await.unwrap();
    let r = p
        .to_user("alice")
        .event("hello")
        .id("a1")
        .payload(&json!({"x": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!((r.nodes, r.offsets.clone()), (1, vec![Some(1)]));
    let env = next_smessage(&mut rx).await;
    assert_eq!((env.channel.as_str(), env.offset), ("$user:alice", Some(1)));
    let r = p.to_channels(["news", "sports"]).send().await.unwrap();
    assert_eq!(r.per_target, vec![1, 0]);
    assert_eq!(next_smessage(&mut rx).await.channel, "news");

    // Every name of a channel lives in its partition's slot, on that slot's owner.
    let slot = parts.slot(parts.of("$user:alice"));
    for name in [
        keys.history_stream("$user:alice"),
        keys.history_meta("$user:alice"),
        keys.idempotency("$user:alice", "a1"),
        keys.pubsub_channel("$user:alice"),
    ] {
        assert_eq!(key_slot(name.as_bytes()), slot, "{name}");
    }
    let owner = cluster.owner(slot).await;
    assert_eq!(
        cluster
            .node(owner)
            .cmd(&["EXISTS", &keys.history_stream("$user:alice")])
            .await,
        Value::Int(1)
    );
    for port in cluster.masters().await {
        let n = RedisCluster::shard_numsub(cluster.node(port), &keys.pubsub_channel("$user:alice"))
            .await;
        assert_eq!(n, i64::from(port == owner), "SHARDNUMSUB on {port}");
    }

    // Many targets across partitions in one call; a retry is all duplicates.
    let users: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    let r = p.to_users(users.clone()).id("k").send().await.unwrap();
    assert!(r.offsets.iter().all(|o| *o == Some(1)));
    let r = p.to_users(users.clone()).id("k").send().await.unwrap();
    assert_eq!(r.duplicates, users.len());

    // Inbox reads on the owner.
    assert_eq!(p.unread_count("alice").await.unwrap(), 1);
    assert_eq!(p.ack("alice", 1).await.unwrap(), Some(1));
    assert_eq!(p.unread_count("alice").await.unwrap(), 0);
    assert_eq!(p.recent("alice", 3).await.unwrap().len(), 1);

    // Failover: the owner of bob's partition dies, its replica takes over; the
    // history published before (replicated) and after is one gapless sequence.
    let bob_slot = parts.slot(parts.of("$user:bob"));
    for i in 0..20 {
        assert_eq!(publish_until_ok(&p, "bob", i).await, Some(i + 1));
    }
    // Let replication catch up before the crash (it is asynchronous).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (old, new) = cluster.fail_over_slot(bob_slot).await;
    assert_ne!(old, new);
    for i in 20..40 {
        assert_eq!(publish_until_ok(&p, "bob", i).await, Some(i + 1));
    }
    let page = p.history("$user:bob", Some(0), 100).await.unwrap();
    let offsets: Vec<u64> = page.pubs.iter().filter_map(|x| x.offset).collect();
    assert_eq!(offsets, (1..=40).collect::<Vec<_>>());

    // Resharding: carol's slot moves to another master; publishing and history
    // follow it (MOVED), and the keys moved with the slot.
    let carol_slot = parts.slot(parts.of("$user:carol"));
    for i in 0..5 {
        publish_until_ok(&p, "carol", i).await;
    }
    let from = cluster.owner(carol_slot).await;
    let to = cluster
        .masters()
        .await
        .into_iter()
        .find(|m| *m != from)
        .unwrap();
    cluster.migrate_slot(carol_slot, to).await;
    // The first read after the move still routes by the old slot map, and the
    // cluster client does not redirect a transaction (MOVED inside EXEC aborts it):
    // the publisher refreshes the map and tries again instead of failing.
    let page = p.history("$user:carol", Some(0), 100).await.unwrap();
    assert_eq!(page.pubs.len(), 5);
    for i in 5..10 {
        assert_eq!(publish_until_ok(&p, "carol", i).await, Some(i + 1));
    }
    let page = p.history("$user:carol", Some(0), 100).await.unwrap();
    assert_eq!(page.pubs.len(), 10);
    assert_eq!(
        cluster
            .node(to)
            .cmd(&["EXISTS", &keys.history_stream("$user:carol")])
            .await,
        Value::Int(1)
    );
}

#[tokio::test]
async fn topology_settings_are_checked_at_build() {
    let e = Publisher::sharded(Vec::<String>::new())
        .build()
        .unwrap_err();
    assert!(matches!(e, PublishError::Config(_)), "{e}");
    let e = Publisher::cluster(["redis://127.0.0.1:1"])
        .partitions(0)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("partitions"), "{e}");
    let e = Publisher::cluster(["redis://127.0.0.1:1"])
        .namespace("a{b}")
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("namespace"), "{e}");
    let e = Publisher::sharded(["redis://127.0.0.1:1", "nope"])
        .build()
        .unwrap_err();
    assert!(matches!(e, PublishError::Config(_)), "{e}");
    // Built while nothing listens; publishing then fails, never silently succeeds.
    let p = Publisher::cluster(["redis://127.0.0.1:1"])
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let e = p.to_user("a").send().await.unwrap_err();
    assert!(matches!(e, PublishError::Unavailable(_)), "{e}");
}
