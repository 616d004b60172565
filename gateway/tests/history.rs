//! History and resume over real sockets: subscribe with `since`, resume at connect,
//! retention and epoch changes reported as not recovered, the acknowledged inbox
//! shared by devices, and idempotent publishes. Memory broker and real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use protocol::frame::{ClientFrame, Since};
use publisher::Publisher;
use serde_json::{Value, json};
use support::{Client, Connect, Gateway, RedisServer, eventually, token};

const ROOMS: &str = "$user:* 100 24h,room:* 5 1h";

async fn publish_n(gw: &Gateway, body: Value, n: u64) {
    for i in 0..n {
        let mut b = body.clone();
        b["payload"] = json!({ "n": i });
        let (status, resp) = gw.publish(b).await;
        assert_eq!(status, 200, "{resp}");
    }
}

fn since(epoch: &str, offset: u64) -> Since {
    Since {
        offset,
        epoch: epoch.to_owned(),
    }
}

async fn resume_on(gw: &Gateway) {
    let t = token("r", &["room:*"], &[], 60);
    let mut c = Client::connect(gw, &t).await;
    let first = c.subscribe_ok("room:1", None).await;
    // No history yet: offset 0 in an empty epoch; messages carry the real one.
    assert_eq!(
        (first["offset"].as_u64(), first["epoch"].as_str()),
        (Some(0), Some(""))
    );
    publish_n(gw, json!({"channel": "room:1"}), 3).await;
    let mut epoch = String::new();
    for want in 1..=3 {
        let m = c.message().await;
        assert_eq!(m.offset, Some(want));
        epoch = m.epoch.unwrap();
    }
    drop(c);
    // Missed while away: offsets 4 and 5.
    publish_n(gw, json!({"channel": "room:1"}), 2).await;
    let mut c = Client::connect(gw, &t).await;
    let r = c.subscribe_ok("room:1", Some(since(&epoch, 3))).await;
    assert_eq!(
        (r["recovered"].as_bool(), r["offset"].as_u64()),
        (Some(true), Some(5))
    );
    assert_eq!(c.message().await.offset, Some(4));
    assert_eq!(c.message().await.offset, Some(5));
    publish_n(gw, json!({"channel": "room:1"}), 1).await;
    assert_eq!(c.message().await.offset, Some(6));
    c.no_message_within(Duration::from_millis(200)).await;

    // Out of retention (max length 5 keeps 2..=6): not recovered, what exists follows.
    let mut c = Client::connect(gw, &t).await;
    let r = c.subscribe_ok("room:1", Some(since(&epoch, 0))).await;
    assert_eq!(r["recovered"], false);
    // Another epoch: not recovered, nothing replayed.
    let mut c2 = Client::connect(gw, &t).await;
    let r = c2
        .subscribe_ok(
            "room:1",
            Some(Since {
                offset: 3,
                epoch: "other".into(),
            }),
        )
        .await;
    assert_eq!(r["recovered"], false);
    c2.no_message_within(Duration::from_millis(200)).await;
    for want in 2..=6 {
        assert_eq!(c.message().await.offset, Some(want));
    }
    // A channel without history says so plainly.
    let t2 = token("r2", &["*"], &[], 60);
    let mut c3 = Client::connect(gw, &t2).await;
    let r = c3
        .subscribe_ok(
            "news",
            Some(Since {
                offset: 1,
                epoch: "e".into(),
            }),
        )
        .await;
    assert_eq!(r, json!({"channel": "news", "recovered": false}));
}

#[tokio::test]
async fn resume_with_memory_broker() {
    let gw = Gateway::builder().args(&["--history", ROOMS]).start().await;
    resume_on(&gw).await;
}

#[tokio::test]
async fn resume_with_redis() {
    let redis = RedisServer::start().await;
    let gw = Gateway::builder()
        .redis(&redis, "h1")
        .args(&["--history", ROOMS])
        .start()
        .await;
    eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
    resume_on(&gw).await;
}

#[tokio::test]
async fn resume_at_connect_and_shared_ack_position() {
    let redis = RedisServer::start().await;
    let gw = Gateway::builder().redis(&redis, "a1").start().await;
    eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
    let t = token("alice", &[], &[], 60);
    let mut phone = Client::connect(&gw, &t).await;
    assert_eq!(phone.welcome.epoch.as_deref(), Some(""));
    assert_eq!(phone.welcome.offset, Some(0));
    assert_eq!(phone.welcome.recovered, None);
    publish_n(&gw, json!({"user": "alice"}), 4).await;
    let mut epoch = String::new();
    for want in 1..=4 {
        let m = phone.message().await;
        assert_eq!(m.offset, Some(want));
        epoch = m.epoch.unwrap();
    }
    // The phone read up to 2 and says so; the position is the user's, not the device's.
    let id = phone.next_id();
    phone.send(&ClientFrame::Ack { id, offset: 2 }).await;
    let r = phone.reply(id).await;
    assert_eq!(r.result.unwrap()["offset"], 2);
    let sdk = Publisher::builder(redis.url()).build().unwrap();
    assert_eq!(sdk.unread_count("alice").await.unwrap(), 2);

    // A new device without a position of its own resumes from the acked one.
    let mut laptop = Client::connect(&gw, &t).await;
    assert_eq!(laptop.welcome.recovered, Some(true));
    assert_eq!(laptop.message().await.offset, Some(3));
    assert_eq!(laptop.message().await.offset, Some(4));
    laptop.no_message_within(Duration::from_millis(200)).await;

    // A device that knows its own position resumes from it at connect.
    drop(phone);
    publish_n(&gw, json!({"user": "alice"}), 2).await;
    assert_eq!(laptop.message().await.offset, Some(5));
    assert_eq!(laptop.message().await.offset, Some(6));
    let tok = t.clone();
    let mut c = Connect::new(&tok);
    let query = format!("since=4&epoch={epoch}");
    c.query = Some(&query);
    let mut phone = Client::connect_with(&gw, c).await.unwrap();
    assert_eq!(phone.welcome.recovered, Some(true));
    assert_eq!(phone.welcome.offset, Some(6));
    assert_eq!(phone.message().await.offset, Some(5));
    assert_eq!(phone.message().await.offset, Some(6));
    phone.no_message_within(Duration::from_millis(200)).await;

    // A wrong epoch at connect: told plainly, nothing replayed.
    let mut c = Connect::new(&tok);
    c.query = Some("since=1&epoch=stale");
    let mut other = Client::connect_with(&gw, c).await.unwrap();
    assert_eq!(other.welcome.recovered, Some(false));
    other.no_message_within(Duration::from_millis(200)).await;
    // Malformed resume parameters are a 400 before the upgrade.
    let mut c = Connect::new(&tok);
    c.query = Some("since=abc&epoch=e");
    assert_eq!(
        Client::connect_with(&gw, c).await.err().unwrap().status,
        400
    );
}

#[tokio::test]
async fn redis_restart_without_persistence_is_not_recovered() {
    let mut redis = RedisServer::start().await;
    let gw = Gateway::builder().redis(&redis, "p1").start().await;
    eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
    let t = token("bob", &[], &[], 60);
    let mut c = Client::connect(&gw, &t).await;
    publish_n(&gw, json!({"user": "bob"}), 2).await;
    c.message().await;
    let epoch = c.message().await.epoch.unwrap();
    drop(c);
    redis.restart().await;
    eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
    publish_n(&gw, json!({"user": "bob"}), 1).await;
    let mut conn = Connect::new(&t);
    let query = format!("since=2&epoch={epoch}");
    conn.query = Some(&query);
    let c = Client::connect_with(&gw, conn).await.unwrap();
    assert_eq!(c.welcome.recovered, Some(false));
    assert_ne!(c.welcome.epoch.as_deref(), Some(epoch.as_str()));
}

#[tokio::test]
async fn retried_publish_with_the_same_id_is_delivered_once() {
    for redis in [None, Some(RedisServer::start().await)] {
        let mut b = Gateway::builder();
        if let Some(r) = &redis {
            b = b.redis(r, "i1");
        }
        let gw = b.start().await;
        eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
        let mut c = Client::connect(&gw, &token("carol", &["news"], &[], 60)).await;
        assert!(c.subscribe("news").await.ok);
        if let Some(r) = &redis {
            r.wait_numsub("news", 1).await;
        }
        for target in [json!({"user": "carol"}), json!({"channel": "news"})] {
            let mut body = target.clone();
            body["id"] = json!("order-42");
            let (s1, r1) = gw.publish(body.clone()).await;
            let (s2, r2) = gw.publish(body).await;
            assert_eq!((s1, s2), (200, 200));
            assert_eq!(r1.get("duplicates"), None, "{r1}");
            assert_eq!(r2["duplicates"], 1, "{r2}");
            assert_eq!(c.message().await.msg_id.as_deref(), Some("order-42"));
        }
        c.no_message_within(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn a_new_epoch_while_subscribed_is_delivered() {
    // History that expires after a quiet second: the next publish starts a new
    // epoch whose offsets restart at 1, which must not be mistaken for duplicates.
    let gw = Gateway::builder()
        .args(&["--history", "room:* 10 1s"])
        .start()
        .await;
    let mut c = Client::connect(&gw, &token("e", &["room:*"], &[], 60)).await;
    c.subscribe_ok("room:9", None).await;
    publish_n(&gw, json!({"channel": "room:9"}), 3).await;
    let mut old_epoch = None;
    for want in 1..=3 {
        let m = c.message().await;
        assert_eq!(m.offset, Some(want));
        assert!(old_epoch.is_none() || m.epoch == old_epoch);
        old_epoch = m.epoch;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    publish_n(&gw, json!({"channel": "room:9"}), 2).await;
    let a = c.message().await;
    let b = c.message().await;
    assert_eq!((a.offset, b.offset), (Some(1), Some(2)));
    assert_ne!(a.epoch, old_epoch);
}

/// `calls` of one command in Redis' INFO commandstats.
async fn command_calls(redis: &RedisServer, cmd: &str) -> u64 {
    let info = match redis.cmd(&["INFO", "commandstats"]).await {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("unexpected INFO reply {other:?}"),
    };
    let key = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Holds the gateway's subscriber connection from the confirmation of `channel`'s
/// subscription on (see [`publish_in_setup_window`]); returns the count of position
/// reads so far.
async fn hold_confirmation(proxy: &testkit::HoldProxy, redis: &RedisServer, channel: &str) -> u64 {
    let name = protocol::keys::pubsub_channel("tidings", channel);
    let mut confirmation = b"subscribe\r\n".to_vec();
    confirmation.extend_from_slice(format!("${}\r\n{name}", name.len()).as_bytes());
    proxy.hold_from(&confirmation);
    command_calls(redis, "hmget").await
}

/// Once Redis has the subscription of `channel` and the gateway has read the
/// channel's position (`reads` was the count before), runs `publish`, then lets the
/// held confirmation through but not the live copy of what was published: the
/// message is in history while its live copy is still on its way.
async fn publish_in_setup_window(
    proxy: &testkit::HoldProxy,
    redis: &RedisServer,
    channel: &str,
    reads: u64,
    publish: impl std::future::Future<Output = ()>,
) {
    redis.wait_numsub(channel, 1).await;
    let deadline = std::time::Instant::now() + support::WAIT;
    while command_calls(redis, "hmget").await == reads {
        assert!(std::time::Instant::now() < deadline, "position never read");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publish.await;
    proxy.release_until(b"message\r\n");
}

/// A gateway whose Redis connections go through a [`testkit::HoldProxy`].
async fn held_gateway(redis: &RedisServer) -> (testkit::HoldProxy, Gateway) {
    let proxy =
        testkit::HoldProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    // The liveness probe runs on the held connection: it must not give up on it
    // while a test holds its bytes.
    let gw = Gateway::builder()
        .redis_url(&proxy.url(), "held")
        .args(&["--redis-probe-interval", "60s", "--history", ROOMS])
        .start()
        .await;
    eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
    (proxy, gw)
}

/// A fresh connection (no resume, nothing acknowledged) whose personal channel gets
/// a message after the connection read its position but before the gateway reads
/// the live copy. The proxy makes that order certain: it holds the subscriber
/// connection from the subscription's confirmation on, lets the confirmation
/// through once the message is published, and the live copy only after the
/// welcome. The message must arrive exactly once, after the welcome.
#[tokio::test]
async fn a_message_published_while_a_fresh_connection_is_set_up_arrives_once() {
    let redis = RedisServer::start().await;
    let (proxy, gw) = held_gateway(&redis).await;
    let sdk = Publisher::builder(redis.url()).build().unwrap();
    // One user whose channel has no history yet, one with a message already in it.
    for (user, before) in [("fresh-empty", 0u64), ("fresh-after-one", 1)] {
        for i in 0..before {
            sdk.to_user(user)
                .event(format!("old{i}"))
                .send()
                .await
                .unwrap();
        }
        let channel = format!("$user:{user}");
        let reads = hold_confirmation(&proxy, &redis, &channel).await;
        let t = token(user, &[], &[], 60);
        let publish = async {
            sdk.to_user(user).event("during").send().await.unwrap();
        };
        let (mut c, ()) = tokio::join!(
            Client::connect(&gw, &t),
            publish_in_setup_window(&proxy, &redis, &channel, reads, publish)
        );
        assert_eq!(
            c.welcome.offset,
            Some(before),
            "{user}: the stream starts before it"
        );
        let m = c.message().await;
        assert_eq!((m.event.as_str(), m.offset), ("during", Some(before + 1)));
        // The held live copy now reaches the gateway, then a later message: the
        // copy must have been dropped as a duplicate.
        proxy.release();
        sdk.to_user(user).event("after").send().await.unwrap();
        let m = c.message().await;
        assert_eq!(
            (m.event.as_str(), m.offset),
            ("after", Some(before + 2)),
            "{user}"
        );
        c.no_message_within(Duration::from_millis(100)).await;
    }
}

/// The same window for `subscribe` without `since` on a channel with history.
#[tokio::test]
async fn a_message_published_while_a_subscribe_is_set_up_arrives_once() {
    let redis = RedisServer::start().await;
    let (proxy, gw) = held_gateway(&redis).await;
    let mut c = Client::connect(&gw, &token("sub", &["room:*"], &[], 60)).await;
    publish_n(&gw, json!({"channel": "room:7"}), 2).await;
    let reads = hold_confirmation(&proxy, &redis, "room:7").await;
    let id = c.next_id();
    c.send(&ClientFrame::Subscribe {
        id,
        channel: "room:7".into(),
        since: None,
    })
    .await;
    let publish = async {
        let (status, _) = gw
            .publish(json!({"channel": "room:7", "event": "during"}))
            .await;
        assert_eq!(status, 200);
    };
    let (r, ()) = tokio::join!(
        c.reply(id),
        publish_in_setup_window(&proxy, &redis, "room:7", reads, publish)
    );
    assert_eq!(
        r.result.unwrap()["offset"],
        2,
        "the stream starts before it"
    );
    let m = c.message().await;
    assert_eq!((m.event.as_str(), m.offset), ("during", Some(3)));
    proxy.release();
    publish_n(&gw, json!({"channel": "room:7"}), 1).await;
    assert_eq!(c.message().await.offset, Some(4));
    c.no_message_within(Duration::from_millis(100)).await;
}
