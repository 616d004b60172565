//! Multi-node delivery through a real Redis started by the harness: exactly-once
//! delivery across nodes, interest-based subscriptions, churn, Redis failures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use protocol::{Encoding, ErrorCode};
use publisher::{PublishError, Publisher};
use serde_json::json;
use support::{Audience, Client, Gateway, RedisServer, eventually, token};

async fn nodes(redis: &RedisServer, n: usize) -> Vec<Gateway> {
    support::ready_nodes(n, |b, name| b.redis(redis, name)).await
}

fn sdk(redis: &RedisServer) -> Publisher {
    Publisher::builder(redis.url())
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

#[tokio::test]
async fn three_nodes_deliver_exactly_once() {
    let redis = RedisServer::start().await;
    let gws = nodes(&redis, 3).await;
    // Alice's connections alternate JSON and MessagePack.
    let mut aud = Audience::join(&gws, &["news"], |i| {
        if i % 2 == 0 {
            Encoding::Json
        } else {
            Encoding::MsgPack
        }
    })
    .await;
    redis.wait_numsub("$user:alice", 3).await;
    redis.wait_numsub("$user:bob", 1).await;
    redis.wait_numsub("news", 2).await;
    redis.wait_numsub("$broadcast", 3).await;
    // User, channel, broadcast and HTTP API publishes all go through Redis.
    aud.each_delivered_once(&sdk(&redis), &gws[2]).await;
    // Nothing arrives twice.
    for c in aud.everyone() {
        c.no_message_within(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn node_without_interest_receives_nothing() {
    let redis = RedisServer::start().await;
    let gws = nodes(&redis, 2).await;
    let mut alice = Client::connect(&gws[0], &token("alice", &[], &[], 60)).await;
    let _bob = Client::connect(&gws[1], &token("bob", &[], &[], 60)).await;
    redis.wait_numsub("$user:alice", 1).await;
    redis.wait_numsub("$user:bob", 1).await;
    let p = sdk(&redis);
    for i in 0..20 {
        let r = p.to_user("alice").payload(&i).send().await.unwrap();
        assert_eq!(r.nodes, 1);
    }
    for _ in 0..20 {
        alice.message().await;
    }
    assert_eq!(
        gws[0].metric("tidings_redis_messages_received_total").await,
        20.0
    );
    assert_eq!(
        gws[1].metric("tidings_redis_messages_received_total").await,
        0.0
    );
    // A user nobody holds has no subscriber anywhere.
    assert_eq!(p.to_user("carol").send().await.unwrap().nodes, 0);
}

#[tokio::test]
async fn churn_leaves_no_subscriptions_behind() {
    let redis = RedisServer::start().await;
    let gws = nodes(&redis, 2).await;
    let mut handles = Vec::new();
    for batch in 0..10 {
        for (n, gw) in gws.iter().enumerate() {
            let addr = gw.addr;
            handles.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..50 {
                    let user = format!("u{batch}-{n}-{i}");
                    let chan = format!("room:{batch}-{i}");
                    let t = token(&user, &["room:*"], &[], 60);
                    let mut c = support::connect_addr(addr, &t).await;
                    assert!(c.subscribe(&chan).await.ok);
                    out.push(c);
                }
                out
            }));
        }
    }
    let mut clients = Vec::new();
    for h in handles {
        clients.extend(h.await.unwrap());
    }
    assert_eq!(clients.len(), 1000);
    eventually("redis subscriptions for every user", || async {
        redis.channels().await.len() >= 1000
    })
    .await;
    for mut c in clients {
        c.ws.close(None).await.unwrap();
    }
    eventually("no redis subscriptions left", || async {
        redis.channels().await.is_empty()
    })
    .await;
    for gw in &gws {
        gw.wait_metric("tidings_redis_subscriptions", |v| v == 0.0)
            .await;
        gw.wait_metric("tidings_connections", |v| v == 0.0).await;
    }
}

#[tokio::test]
async fn redis_restart_keeps_clients_and_recovers() {
    let mut redis = RedisServer::start().await;
    let gws = nodes(&redis, 2).await;
    let t = token("alice", &["news"], &["news"], 60);
    let mut a = Client::connect(&gws[0], &t).await;
    let mut b = Client::connect(&gws[1], &t).await;
    redis.wait_numsub("$user:alice", 2).await;

    redis.kill();
    for gw in &gws {
        eventually("readyz 503", || async {
            gw.admin_get("/readyz").await.0 == 503
        })
        .await;
    }
    // Clients stay connected and get answers they can act on.
    let r = a.publish("news", "x", json!(1)).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::Unavailable);
    assert!(b.subscribe("news").await.ok);
    let (status, body) = gws[0].publish(json!({"user": "alice"})).await;
    assert_eq!(status, 503, "{body}");
    let e = sdk(&redis).to_user("alice").send().await.unwrap_err();
    assert!(matches!(e, PublishError::Unavailable(_)), "{e}");

    redis.restart().await;
    for gw in &gws {
        eventually("readyz 200", || async {
            gw.admin_get("/readyz").await.0 == 200
        })
        .await;
    }
    // Subscriptions come back from the hub's interest set, including one made while down.
    redis.wait_numsub("$user:alice", 2).await;
    redis.wait_numsub("news", 1).await;
    let sent = std::time::Instant::now();
    sdk(&redis)
        .to_user("alice")
        .event("back")
        .send()
        .await
        .unwrap();
    for c in [&mut a, &mut b] {
        assert_eq!(c.message().await.event, "back");
    }
    assert!(sent.elapsed() < Duration::from_secs(2));
    assert!(gws[0].metric("tidings_broker_reconnects_total").await >= 1.0);
    assert_eq!(gws[0].metric("tidings_broker_up").await, 1.0);
}

#[tokio::test]
async fn killed_subscriber_connection_is_replaced() {
    let redis = RedisServer::start().await;
    let gws = nodes(&redis, 1).await;
    let mut a = Client::connect(&gws[0], &token("alice", &[], &[], 60)).await;
    redis.wait_numsub("$user:alice", 1).await;
    redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    redis.wait_numsub("$user:alice", 1).await;
    eventually("readyz 200", || async {
        gws[0].admin_get("/readyz").await.0 == 200
    })
    .await;
    gws[0]
        .wait_metric("tidings_broker_reconnects_total", |v| v >= 1.0)
        .await;
    sdk(&redis)
        .to_user("alice")
        .event("after")
        .send()
        .await
        .unwrap();
    assert_eq!(a.message().await.event, "after");
}

#[tokio::test]
async fn silently_dead_subscriber_is_detected_by_the_probe() {
    let redis = RedisServer::start().await;
    let proxy =
        testkit::FreezeProxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let gw = Gateway::builder()
        .redis_url(&proxy.url(), "frozen")
        .start()
        .await;
    eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
    let mut a = Client::connect(&gw, &token("alice", &[], &[], 60)).await;
    redis.wait_numsub("$user:alice", 1).await;
    // The connections stay open but deliver nothing, as after a failover that left
    // the subscriber attached to a demoted server.
    proxy.freeze_existing();
    // Both subscriber connections (`--redis-subscribers 2`) are frozen and must both
    // be replaced: while one still looks up, a message for a channel on it is lost
    // live and later filled in from history, which would read as an extra message.
    gw.wait_metric("tidings_broker_reconnects_total", |v| v >= 2.0)
        .await;
    eventually("ready again", || async {
        gw.admin_get("/readyz").await.0 == 200
    })
    .await;
    // Delivery resumes on the replacement connection.
    let p = sdk(&redis);
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        p.to_user("alice")
            .event("after-freeze")
            .send()
            .await
            .unwrap();
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), a.message()).await {
            assert_eq!(m.event, "after-freeze");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivery did not resume"
        );
    }
    a.no_message_within(Duration::from_millis(300)).await;
}

/// The subscriber connections authenticate and select the database the URL names,
/// over TCP and over a Unix socket, like every other Redis connection.
#[tokio::test]
async fn password_database_and_unix_socket_urls() {
    let sock = std::env::temp_dir().join(format!("tidings-{}.sock", testkit::free_port()));
    let sock_arg = sock.display().to_string();
    let redis = RedisServer::start_with(&[
        "--save",
        "",
        "--appendonly",
        "no",
        "--requirepass",
        "s3cret-pass",
        "--unixsocket",
        &sock_arg,
        "--unixsocketperm",
        "700",
    ])
    .await;
    let tcp = format!("redis://:s3cret-pass@127.0.0.1:{}/2", redis.port);
    let unix = format!("redis+unix://{}?db=2&pass=s3cret-pass", sock.display());
    for url in [tcp, unix] {
        let gw = Gateway::builder()
            .redis_url(&url, "auth-node")
            .start()
            .await;
        eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
        let mut c = Client::connect(&gw, &token("dana", &[], &[], 60)).await;
        let p = Publisher::builder(url.clone()).build().unwrap();
        eventually("subscribed in db 2", || async {
            p.to_user("dana").payload(&1).send().await.unwrap().nodes == 1
        })
        .await;
        assert_eq!(c.message().await.channel, "$user:dana");
        assert!(
            !gw.logs().contains("s3cret-pass"),
            "the password never shows in the logs"
        );
    }
}
