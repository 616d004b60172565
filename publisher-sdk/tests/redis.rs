//! The SDK against a real redis-server started on a free port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::StreamExt;
use protocol::{Publication, keys};
use publisher::{PublishError, Publisher};
use serde_json::json;
use testkit::RedisServer;

#[tokio::test]
async fn publishes_the_protocol_envelope_and_counts_receivers() {
    let mut redis = RedisServer::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(keys::pubsub_channel("tidings", "$user:alice"))
        .await
        .unwrap();
    sub.subscribe(keys::pubsub_channel("tidings", "news"))
        .await
        .unwrap();
    let mut stream = sub.on_message();

    let p = Publisher::builder(redis.url())
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let r = p
        .to_user("alice")
        .event("order.shipped")
        .payload(&json!({"order": 42}))
        .id("k1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.nodes, 1);
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap();
    let env = Publication::decode(msg.get_payload_bytes()).unwrap();
    assert_eq!(env.channel, "$user:alice");
    assert_eq!(env.event, "order.shipped");
    assert_eq!(env.payload.json(), r#"{"order":42}"#);
    assert_eq!(env.id.as_deref(), Some("k1"));

    let r = p
        .to_channels(["news", "sports"])
        .raw_payload(br#"[1,2]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.per_target, vec![1, 0]);
    assert_eq!(r.nodes, 1);
    let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        Publication::decode(msg.get_payload_bytes())
            .unwrap()
            .payload
            .json(),
        "[1,2]"
    );
    drop(stream);

    // Redis down: an error, never a silent success.
    redis.kill();
    let e = p.broadcast().send().await.unwrap_err();
    assert!(matches!(e, PublishError::Unavailable(_)), "{e}");
    redis.restart().await;
    let mut ok = false;
    for _ in 0..50 {
        if p.broadcast().send().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "publisher did not recover after redis came back");
}

#[tokio::test]
async fn history_offsets_idempotency_and_inbox() {
    let redis = RedisServer::start().await;
    let rules = protocol::history::HistoryRules::parse(["$user:* 3 1h", "room:* 10 1h"]).unwrap();
    let p = Publisher::builder(redis.url())
        .history(rules)
        .build()
        .unwrap();

    // Offsets count up per channel; the live envelope carries offset and epoch.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe(keys::pubsub_channel("tidings", "room:1"))
        .await
        .unwrap();
    let mut stream = sub.on_message();
    let r = p.to_channel("room:1").payload(&1).send().await.unwrap();
    assert_eq!(r.offsets, vec![Some(1)]);
    let live = Publication::decode(
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .get_payload_bytes(),
    )
    .unwrap();
    assert_eq!(live.offset, Some(1));
    let epoch = live.epoch.clone().unwrap();
    let r = p.to_channel("room:1").payload(&2).send().await.unwrap();
    assert_eq!(r.offsets, vec![Some(2)]);
    // Channels without a rule keep no history.
    assert_eq!(
        p.to_channel("news").send().await.unwrap().offsets,
        vec![None]
    );

    let page = p.history("room:1", Some(0), 100).await.unwrap();
    assert_eq!((page.epoch.as_str(), page.top), (epoch.as_str(), 2));
    assert_eq!(
        page.pubs
            .iter()
            .map(|x| x.offset.unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(page.pubs[1].payload.json(), "2");
    assert!(
        p.history("room:1", Some(2), 100)
            .await
            .unwrap()
            .pubs
            .is_empty()
    );

    // A retried publish with the same id is delivered once.
    let a = p
        .to_channel("room:1")
        .id("order-7")
        .payload(&"x")
        .send()
        .await
        .unwrap();
    let b = p
        .to_channel("room:1")
        .id("order-7")
        .payload(&"x")
        .send()
        .await
        .unwrap();
    assert_eq!((a.duplicates, b.duplicates), (0, 1));
    assert_eq!(p.history("room:1", Some(0), 100).await.unwrap().top, 3);
    // Without history, ids still de-duplicate.
    let a = p.to_channel("news").id("n1").send().await.unwrap();
    let b = p.to_channel("news").id("n1").send().await.unwrap();
    assert_eq!((a.duplicates, b.duplicates), (0, 1));

    // Inbox: 5 notifications with max length 3 keep offsets 3..=5.
    for i in 1..=5 {
        p.to_user("alice")
            .event("n")
            .payload(&i)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(p.unread_count("alice").await.unwrap(), 3);
    assert_eq!(p.ack("alice", 4).await.unwrap(), Some(4));
    assert_eq!(
        p.ack("alice", 2).await.unwrap(),
        Some(4),
        "acks never move back"
    );
    assert_eq!(
        p.ack("alice", 99).await.unwrap(),
        Some(5),
        "acks stop at the last offset"
    );
    assert_eq!(p.unread_count("alice").await.unwrap(), 0);
    p.to_user("alice").payload(&6).send().await.unwrap();
    assert_eq!(p.unread_count("alice").await.unwrap(), 1);
    let recent = p.recent("alice", 2).await.unwrap();
    assert_eq!(
        recent.iter().map(|n| n.offset).collect::<Vec<_>>(),
        vec![6, 5]
    );
    assert_eq!(
        p.acked_channel("$user:alice")
            .await
            .unwrap()
            .unwrap()
            .offset,
        5
    );
    assert_eq!(p.unread_count("bob").await.unwrap(), 0);
    assert_eq!(p.ack("bob", 1).await.unwrap(), None);
}

/// The envelope's field names are written twice: in `protocol::envelope` and in the
/// Lua scripts that build envelopes inside Redis. What each script produces (one
/// target, and one notification to several targets) must carry exactly the fields
/// the Rust encoder writes for the same publication, and decode to it.
#[tokio::test]
async fn the_scripts_write_the_envelope_the_protocol_reads() {
    use std::collections::BTreeSet;

    let redis = RedisServer::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    for ch in ["$user:lua-a", "$user:lua-b"] {
        sub.subscribe(keys::pubsub_channel("tidings", ch))
            .await
            .unwrap();
    }
    let mut stream = sub.on_message();
    let p = Publisher::builder(redis.url())
        .history(protocol::history::HistoryRules::parse(["$user:* 10 1h"]).unwrap())
        .build()
        .unwrap();
    let fields = |bytes: &[u8]| -> BTreeSet<String> {
        let map: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
            rmp_serde::from_slice(bytes).unwrap();
        map.into_keys().collect()
    };
    // publish.lua (one target), then publish_many.lua (the same notification to two).
    p.to_user("lua-a")
        .event("e1")
        .payload(&json!({"n": 1}))
        .id("id-1")
        .send()
        .await
        .unwrap();
    p.to_users(["lua-a", "lua-b"])
        .event("e2")
        .payload(&json!({"n": 2}))
        .id("id-2")
        .send()
        .await
        .unwrap();
    for (event, n) in [("e1", 1), ("e2", 2), ("e2", 2)] {
        let msg = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap();
        let bytes = msg.get_payload_bytes();
        let got = Publication::decode(bytes).unwrap();
        assert_eq!(got.event, event);
        assert_eq!(got.payload.json(), format!(r#"{{"n":{n}}}"#));
        assert!(got.id.is_some() && got.offset.is_some() && got.epoch.is_some());
        assert!(got.ts > 0);
        // Everything set, so the Rust encoder writes every field it knows.
        let rust = got.encode();
        assert_eq!(fields(bytes), fields(&rust), "{got:?}");
    }
}
