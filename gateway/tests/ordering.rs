//! The conditional publish (issue 20): a publish on a history channel accepted only
//! when the channel is at the expected position, atomically with the append,
//! else refused with `conflict` and the current position. Over the WebSocket, the
//! HTTP API and the SDK, on the in-memory broker and on Redis with racing nodes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use protocol::ErrorCode;
use protocol::frame::{HistoryResult, Reply, ReplyResult, Since};
use publisher::{PublishError, Publisher};
use serde_json::{Value, json};
use support::{Client, Gateway, RedisServer, ready_nodes, token};

const DOCS: &str = "$user:* 100 24h,doc:* 1000 1h";

fn offset_of(r: &Reply) -> u64 {
    assert!(r.ok, "{r:?}");
    r.result.as_ref().unwrap()["offset"].as_u64().unwrap()
}

/// The expected-position rules, whatever the broker.
async fn conditional_publishes_follow_the_rules(gw: &Gateway) {
    let t = token("ed", &["doc:*"], &["doc:*", "news"], 60);
    let mut c = Client::connect(gw, &t).await;
    let sub = c.subscribe("doc:a").await;
    assert!(sub.ok, "{sub:?}");
    // Before the first message: offset 0, no epoch.
    let r = c.publish_if("doc:a", "op", json!([1]), 0, "").await;
    assert_eq!(offset_of(&r), 1);
    let m = c.message().await;
    assert_eq!(m.offset, Some(1));
    let epoch = m.epoch.clone().unwrap();
    assert_eq!(r.result.as_ref().unwrap()["epoch"], epoch.as_str());
    // The same expectation again: refused, with where the channel is.
    let r = c.publish_if("doc:a", "op", json!([2]), 0, "").await;
    let e = r.error.unwrap();
    assert_eq!(e.code, ErrorCode::Conflict, "{}", e.message);
    assert_eq!(
        (e.offset, e.epoch.as_deref()),
        (Some(1), Some(epoch.as_str()))
    );
    // Right offset, wrong epoch: refused.
    let r = c.publish_if("doc:a", "op", json!([2]), 1, "other").await;
    assert_eq!(r.error.unwrap().code, ErrorCode::Conflict);
    let r = c.publish_if("doc:a", "op", json!([2]), 1, &epoch).await;
    assert_eq!(offset_of(&r), 2);
    assert_eq!(c.message().await.offset, Some(2));
    // Nothing refused was published.
    c.no_message_within(std::time::Duration::from_millis(200))
        .await;
    // A channel without history cannot be conditional.
    let r = c.publish_if("news", "e", json!(1), 0, "").await;
    assert_eq!(r.error.unwrap().code, ErrorCode::BadRequest);
}

/// `history` reads the last entries, or pages forward from a position.
async fn history_reads_the_last_entries_and_pages_forward(gw: &Gateway) {
    let t = token("reader", &["doc:*"], &["doc:*"], 60);
    let mut c = Client::connect(gw, &t).await;
    let r = c.history("doc:h", Some(1), None).await;
    let h = HistoryResult::from_value(r.result.unwrap()).unwrap();
    assert_eq!(
        (h.epoch.as_str(), h.offset, h.publications.len()),
        ("", 0, 0)
    );
    for i in 1..=5 {
        let r = c.publish("doc:h", "snapshot", json!({ "rev": i })).await;
        assert!(r.ok, "{r:?}");
    }
    let r = c.history("doc:h", Some(1), None).await;
    let last = HistoryResult::from_value(r.result.unwrap()).unwrap();
    assert_eq!(last.offset, 5);
    assert_eq!(last.publications.len(), 1);
    assert_eq!(last.publications[0].payload, json!({"rev": 5}));
    assert_eq!(last.publications[0].event, "snapshot");
    let since = Since {
        offset: 2,
        epoch: last.epoch.clone(),
    };
    let r = c.history("doc:h", Some(2), Some(since)).await;
    let page = HistoryResult::from_value(r.result.unwrap()).unwrap();
    let offsets: Vec<u64> = page.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [3, 4]);
    // Another epoch: no entries, and where the channel is.
    let other = Since {
        offset: 2,
        epoch: "other".into(),
    };
    let r = c.history("doc:h", None, Some(other)).await;
    let page = HistoryResult::from_value(r.result.unwrap()).unwrap();
    assert_eq!((page.offset, page.publications.len()), (5, 0));
    assert_eq!(page.epoch, last.epoch);
    for (ch, limit, code) in [
        ("news", None, ErrorCode::Forbidden),
        ("doc:h", Some(0), ErrorCode::BadRequest),
        ("doc:h", Some(101), ErrorCode::BadRequest),
        ("$user:reader", None, ErrorCode::InvalidChannel),
    ] {
        let r = c.history(ch, limit, None).await;
        assert_eq!(r.error.unwrap().code, code, "{ch}");
    }
    let t = token("reader2", &["*"], &[], 60);
    let mut c = Client::connect(gw, &t).await;
    let r = c.history("news", None, None).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::BadRequest);
}

#[tokio::test]
async fn conditional_publish_on_the_memory_broker() {
    let gw = Gateway::builder().args(&["--history", DOCS]).start().await;
    conditional_publishes_follow_the_rules(&gw).await;
    history_reads_the_last_entries_and_pages_forward(&gw).await;
}

#[tokio::test]
async fn conditional_publish_on_redis() {
    let redis = RedisServer::start().await;
    let gws = ready_nodes(1, |b, n| b.redis(&redis, n).args(&["--history", DOCS])).await;
    conditional_publishes_follow_the_rules(&gws[0]).await;
    history_reads_the_last_entries_and_pages_forward(&gws[0]).await;
}

/// Writers on two nodes race for each next offset: exactly one wins each, the log
/// has no gap and no offset twice, and the losers learn where the channel is.
#[tokio::test]
async fn racing_writers_on_two_nodes_get_one_winner_per_offset() {
    let redis = RedisServer::start().await;
    let gws = ready_nodes(2, |b, n| b.redis(&redis, n).args(&["--history", DOCS])).await;
    let mut writers = Vec::new();
    for i in 0..6 {
        let t = token(&format!("w{i}"), &["doc:*"], &["doc:*"], 60);
        writers.push(Client::connect(&gws[i % 2], &t).await);
    }
    let mut tasks = Vec::new();
    for (i, mut w) in writers.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let (mut at, mut epoch) = (0u64, String::new());
            let mut won = Vec::new();
            while at < 60 {
                let r = w
                    .publish_if("doc:race", "op", json!({"w": i, "at": at}), at, &epoch)
                    .await;
                if r.ok {
                    let result = r.result.unwrap();
                    let off = result["offset"].as_u64().unwrap();
                    assert_eq!(off, at + 1);
                    won.push(off);
                    at = off;
                    epoch = result["epoch"].as_str().unwrap().to_owned();
                } else {
                    let e = r.error.unwrap();
                    assert_eq!(e.code, ErrorCode::Conflict, "{}", e.message);
                    let now = e.offset.unwrap();
                    assert!(now > at, "a conflict moves forward: {now} after {at}");
                    at = now;
                    epoch = e.epoch.unwrap();
                }
            }
            won
        }));
    }
    let mut all: Vec<u64> = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let top = *all.last().unwrap();
    assert!(top >= 60);
    assert_eq!(all, (1..=top).collect::<Vec<_>>(), "every offset won once");
}

#[tokio::test]
async fn conditional_publish_through_the_api_and_the_sdk() {
    let redis = RedisServer::start().await;
    let gws = ready_nodes(1, |b, n| b.redis(&redis, n).args(&["--history", DOCS])).await;
    let gw = &gws[0];
    let (s, body) = gw
        .publish(json!({"channel": "doc:api", "event": "op", "payload": [1], "expect": {"offset": 0, "epoch": ""}}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["offset"], 1);
    let (s, body) = gw
        .publish(json!({"channel": "doc:api", "event": "op", "payload": [1], "expect": {"offset": 0, "epoch": ""}}))
        .await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["error"], "conflict");
    assert_eq!(body["offset"], 1);
    let epoch = body["epoch"].as_str().unwrap().to_owned();
    assert!(!epoch.is_empty());
    let (s, body) = gw
        .publish(json!({"channels": ["doc:x", "doc:y"], "payload": 1, "expect": {"offset": 0, "epoch": ""}}))
        .await;
    assert_eq!(s, 400, "{body}");
    // The SDK: the same primitive for backends.
    let p = Publisher::builder(redis.url())
        .history(protocol::history::HistoryRules::parse(DOCS.split(',')).unwrap())
        .build()
        .unwrap();
    let r = p
        .to_channel("doc:api")
        .event("op")
        .payload(&json!([2]))
        .expect(1, epoch.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.offsets, vec![Some(2)]);
    let e = p
        .to_channel("doc:api")
        .payload(&json!([3]))
        .expect(1, epoch.clone())
        .send()
        .await
        .unwrap_err();
    match e {
        PublishError::Conflict { offset, epoch: e } => assert_eq!((offset, e), (2, epoch)),
        other => panic!("{other:?}"),
    }
    let e = p
        .to_users(["a", "b"])
        .payload(&json!(1))
        .expect(0, "")
        .send()
        .await
        .unwrap_err();
    assert!(matches!(e, PublishError::InvalidTarget(_)), "{e:?}");
    let body: Value = serde_json::from_str(
        &gw.post_api(
            "/api/v1/publish/batch",
            &json!({"messages": [{"channel": "doc:api", "payload": 1, "expect": {"offset": 0, "epoch": ""}}]})
                .to_string(),
        )
        .await
        .1,
    )
    .unwrap();
    assert_eq!(body["results"][0]["error"], "conflict");
    assert_eq!(body["results"][0]["offset"], 2);
}

/// The last entries, even when they do not all fit in one page's byte budget:
/// the newest ones that fit, ending at the latest offset (a page cut short used to
/// hold the oldest of the range).
#[tokio::test]
async fn history_without_since_ends_at_the_newest_entry_when_pages_are_small() {
    let gw = Gateway::builder()
        .args(&["--history", DOCS, "--replay-page-bytes", "1024"])
        .start()
        .await;
    let t = token("scroll", &["doc:*"], &["doc:*"], 60);
    let mut c = Client::connect(&gw, &t).await;
    for i in 1..=8 {
        let r = c
            .publish("doc:big", "m", json!({ "i": i, "pad": "x".repeat(300) }))
            .await;
        assert!(r.ok, "{r:?}");
    }
    let r = c.history("doc:big", Some(5), None).await;
    let h = HistoryResult::from_value(r.result.unwrap()).unwrap();
    let offsets: Vec<u64> = h.publications.iter().map(|p| p.offset).collect();
    assert!(!offsets.is_empty());
    assert_eq!(offsets.last(), Some(&8), "{offsets:?}");
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
}
