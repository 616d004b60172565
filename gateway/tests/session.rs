//! Sessions end to end over real sockets: welcome, personal channel, subscribe and
//! publish rights, both encodings, token refresh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use protocol::{Encoding, ErrorCode};
use serde_json::json;
use support::{Client, Gateway, token};

#[tokio::test]
async fn welcome_then_personal_channel_delivery() {
    let gw = Gateway::start().await;
    let mut c = Client::connect(&gw, &token("alice", &[], &[], 60)).await;
    assert_eq!(c.welcome.user, "alice");
    assert_eq!(c.welcome.node, "test-node");
    assert_eq!(c.welcome.channel, "$user:alice");
    assert_eq!(c.welcome.heartbeat_ms, 30_000);
    assert_eq!(c.welcome.limits.max_message_bytes, 65536);
    let (status, body) = gw
        .publish(json!({"user": "alice", "event": "hello", "payload": {"n": 1}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"], 1);
    let m = c.message().await;
    assert_eq!(m.channel, "$user:alice");
    assert_eq!(m.event, "hello");
    assert_eq!(m.payload.json(), r#"{"n":1}"#);
    assert!(m.ts > 0);
}

#[tokio::test]
async fn subscribe_rights_and_publish_rights() {
    let gw = Gateway::start().await;
    let mut a = Client::connect(&gw, &token("a", &["news", "room:*"], &["room:*"], 60)).await;
    let mut b = Client::connect(&gw, &token("b", &["room:*"], &[], 60)).await;
    assert!(a.subscribe("news").await.ok);
    assert!(a.subscribe("room:1").await.ok);
    assert!(b.subscribe("room:1").await.ok);
    let r = b.subscribe("news").await;
    assert_eq!(r.error.unwrap().code, ErrorCode::Forbidden);
    let r = a.subscribe("news").await;
    assert_eq!(r.error.unwrap().code, ErrorCode::AlreadySubscribed);
    let r = a.subscribe("bad name!").await;
    assert_eq!(r.error.unwrap().code, ErrorCode::InvalidChannel);
    let r = a.subscribe("$broadcast").await;
    assert_eq!(r.error.unwrap().code, ErrorCode::InvalidChannel);

    let r = a.publish("room:1", "said", json!({"text": "hi"})).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.result.unwrap()["sessions"], 2);
    for c in [&mut a, &mut b] {
        let m = c.message().await;
        assert_eq!((m.channel.as_str(), m.event.as_str()), ("room:1", "said"));
    }
    let r = b.publish("room:1", "said", json!(null)).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::Forbidden);
    let r = a.publish("news", "said", json!(null)).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::Forbidden);

    assert!(b.unsubscribe("room:1").await.ok);
    assert_eq!(
        b.unsubscribe("room:1").await.error.unwrap().code,
        ErrorCode::NotSubscribed
    );
    assert_eq!(
        b.unsubscribe("$user:b").await.error.unwrap().code,
        ErrorCode::Forbidden
    );
    assert!(a.publish("room:1", "said", json!(2)).await.ok);
    a.message().await;
    b.no_message_within(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn both_encodings_share_channels() {
    let gw = Gateway::start().await;
    let t = token("m", &["news"], &["news"], 60);
    let mut j = Client::connect_encoding(&gw, &t, Encoding::Json).await;
    let mut m = Client::connect_encoding(&gw, &t, Encoding::MsgPack).await;
    assert_eq!(j.protocol.as_deref(), Some("tidings.json"));
    assert_eq!(m.protocol.as_deref(), Some("tidings.msgpack"));
    assert!(j.subscribe("news").await.ok);
    assert!(m.subscribe("news").await.ok);
    let r = m
        .publish(
            "news",
            "e",
            json!({"list": [1, 2.5, "x", null, true], "nested": {"k": -3}}),
        )
        .await;
    assert!(r.ok, "{r:?}");
    let a = j.message().await;
    let b = m.message().await;
    assert_eq!(
        a.payload.parse::<serde_json::Value>().unwrap(),
        b.payload.parse::<serde_json::Value>().unwrap()
    );
    assert_eq!(
        a.payload.parse::<serde_json::Value>().unwrap()["nested"]["k"],
        -3
    );
    // The wire really is binary MessagePack for one and text JSON for the other.
    let (status, _) = gw.publish(json!({"channel": "news", "payload": 1})).await;
    assert_eq!(status, 200);
    let raw = tokio::time::timeout(support::WAIT, futures_util::StreamExt::next(&mut m.ws))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(raw.is_binary());
    let raw = tokio::time::timeout(support::WAIT, futures_util::StreamExt::next(&mut j.ws))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(raw.is_text());
}

#[tokio::test]
async fn refresh_extends_and_can_shrink_rights() {
    let gw = Gateway::start().await;
    let mut c = Client::connect(&gw, &token("r", &["a", "b"], &[], 60)).await;
    assert!(c.subscribe("a").await.ok);
    assert!(c.subscribe("b").await.ok);
    let r = c.refresh(&token("r", &["a"], &[], 600)).await;
    assert!(r.ok, "{r:?}");
    let result = r.result.unwrap();
    assert_eq!(result["unsubscribed"], json!(["b"]));
    assert!(result["expires_at"].as_u64().unwrap() > c.welcome.expires_at);
    let r = c.refresh(&token("someone-else", &[], &[], 600)).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::TokenMismatch);
    let r = c.refresh("not-a-token").await;
    assert_eq!(r.error.unwrap().code, ErrorCode::InvalidToken);
    // Still usable after refused refreshes.
    assert!(c.subscribe("a").await.error.is_some());
}

#[tokio::test]
async fn channel_limit_per_connection() {
    let gw = Gateway::builder()
        .args(&["--max-channels", "2"])
        .start()
        .await;
    let mut c = Client::connect(&gw, &token("l", &["*"], &[], 60)).await;
    assert!(c.subscribe("c1").await.ok);
    assert!(c.subscribe("c2").await.ok);
    assert_eq!(
        c.subscribe("c3").await.error.unwrap().code,
        ErrorCode::TooManyChannels
    );
    assert!(c.unsubscribe("c1").await.ok);
    assert!(c.subscribe("c3").await.ok);
    assert_eq!(gw.metric("tidings_subscriptions").await, 4.0);
}
