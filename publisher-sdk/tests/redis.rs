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
