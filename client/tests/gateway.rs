//! The client against real gateway processes (no Redis: single-node in-memory broker,
//! or independent nodes for the failover tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use client::{Client, Encoding, Error, Event};
use serde_json::json;
use support::*;

/// Waits until the resubscription of `channel` after a reconnect was processed: the
/// server answers requests in order, so once a second `subscribe` (answered
/// `already_subscribed`, which the client treats as success) comes back, the first one
/// is in place.
async fn resubscribed(client: &Client, channel: &str) {
    client.subscribe(channel).await.unwrap();
}

fn fast(b: client::ClientBuilder) -> client::ClientBuilder {
    b.backoff(Duration::from_millis(50), Duration::from_millis(200))
        .going_away_delay(Duration::from_millis(50))
        .connect_timeout(Duration::from_secs(2))
}

#[tokio::test]
async fn connect_subscribe_and_receive_a_published_message() {
    let gw = gateway().start().await;
    for enc in [Encoding::Json, Encoding::MsgPack] {
        let tok = token("alice", &["news"], &[], 600);
        let (client, mut events) = fast(Client::builder(gw.ws_url()))
            .token(tok)
            .encoding(enc)
            .build()
            .unwrap();
        match next(&mut events).await {
            Event::Connected {
                node,
                user,
                channel,
                url,
                ..
            } => {
                assert_eq!(node, "test-node");
                assert_eq!(user, "alice");
                assert_eq!(channel, "$user:alice");
                assert_eq!(url, gw.ws_url());
            }
            other => panic!("{other:?}"),
        }
        let sub = client.subscribe("news").await.unwrap();
        assert_eq!(sub.channel, "news");
        let (status, body) = gw
            .publish(json!({"channel": "news", "event": "created", "payload": {"n": 7, "enc": enc.name()}}))
            .await;
        assert_eq!(status, 200, "{body}");
        match until(&mut events, "message", |e| {
            matches!(e, Event::Message { .. })
        })
        .await
        {
            Event::Message {
                channel,
                event,
                payload,
                ..
            } => {
                assert_eq!((channel.as_str(), event.as_str()), ("news", "created"));
                assert_eq!(
                    payload.parse::<serde_json::Value>().unwrap(),
                    json!({"n": 7, "enc": enc.name()})
                );
            }
            _ => unreachable!(),
        }
        // The personal channel needs no subscription.
        let (status, body) = gw
            .publish(json!({"user": "alice", "event": "dm", "payload": {"n": 8}}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(next_n(&mut events, "$user:alice").await, 8);
        // Server errors come back with their stable code.
        let e = client.subscribe("secret").await.unwrap_err();
        assert_eq!(e.code(), Some(client::ErrorCode::Forbidden), "{e}");
        let e = client.publish("news", "e", &1).await.unwrap_err();
        assert_eq!(e.code(), Some(client::ErrorCode::Forbidden), "{e}");
        client.close().await;
        match until(&mut events, "Disconnected", |e| {
            matches!(e, Event::Disconnected { .. })
        })
        .await
        {
            Event::Disconnected {
                code,
                will_reconnect,
                ..
            } => assert_eq!((code, will_reconnect), (Some(1000), false)),
            _ => unreachable!(),
        }
        assert!(events.next().await.is_none());
    }
}

#[tokio::test]
async fn publish_round_trip_and_heartbeats() {
    let gw = gateway()
        .args(&["--heartbeat-interval", "100ms"])
        .start()
        .await;
    let tok = token("bob", &["room:*"], &["room:*"], 600);
    let (client, mut events) = fast(Client::builder(gw.ws_url()))
        .token(tok)
        .build()
        .unwrap();
    connected(&mut events).await;
    client.subscribe("room:1").await.unwrap();
    let r = client
        .publish("room:1", "typing", &json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!((r.nodes, r.sessions), (Some(1), Some(1)));
    assert_eq!(next_n(&mut events, "room:1").await, 1);
    // Pings every 100 ms are answered; nothing ends the connection meanwhile.
    let quiet = tokio::time::timeout(Duration::from_millis(600), async {
        loop {
            match events.next().await {
                Some(Event::Message { .. }) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "unexpected event {quiet:?}");
    assert!(matches!(client.state(), client::State::Connected { .. }));
}

#[tokio::test]
async fn a_request_without_reply_times_out() {
    let gw = gateway().start().await;
    let tok = token("carol", &[], &["room:*"], 600);
    let (client, mut events) = fast(Client::builder(gw.ws_url()))
        .token(tok)
        .request_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    connected(&mut events).await;
    // A frozen node: the connection stays open, nothing answers.
    gw.freeze().await;
    let start = std::time::Instant::now();
    let err = client.publish("room:1", "e", &1).await.unwrap_err();
    let took = start.elapsed();
    gw.signal("CONT");
    assert_eq!(err, Error::Timeout(Duration::from_millis(300)));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // The client is still usable afterwards.
    client.publish("room:1", "e", &2).await.unwrap();
}

#[tokio::test]
async fn publishes_while_disconnected_are_delivered_in_order_after_reconnect() {
    let port = free_port();
    let mut gw = gateway().port(port).node("first").start().await;
    let tok = token("dave", &["room:*"], &["room:*"], 600);
    let (client, mut events) = fast(Client::builder(gw.ws_url()))
        .token(tok)
        .build()
        .unwrap();
    connected(&mut events).await;
    client.subscribe("room:1").await.unwrap();

    // Stop the only node: 1001, then refused connections.
    gw.signal("TERM");
    until(&mut events, "1001", |e| {
        matches!(
            e,
            Event::Disconnected {
                code: Some(1001),
                will_reconnect: true,
                ..
            }
        )
    })
    .await;
    gw.wait_exit(WAIT).await;
    until(&mut events, "a refused attempt", |e| {
        matches!(
            e,
            Event::Disconnected {
                code: None,
                will_reconnect: true,
                ..
            }
        )
    })
    .await;
    assert_eq!(client.state(), client::State::Connecting);

    // Publish while offline: queued, in call order.
    let publishing = tokio::spawn({
        let client = client.clone();
        async move {
            let calls: Vec<_> = (1..=5)
                .map(|n| {
                    let c = client.clone();
                    async move { c.publish("room:1", "e", &json!({"n": n})).await }
                })
                .collect();
            futures_util::future::join_all(calls).await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!publishing.is_finished());

    // The node comes back on the same address.
    let _gw2 = gateway().port(port).node("second").start().await;
    let (node, _) = connected(&mut events).await;
    assert_eq!(node, "second");
    let results = tokio::time::timeout(WAIT, publishing)
        .await
        .unwrap()
        .unwrap();
    for r in results {
        r.unwrap();
    }
    // Resubscribed before the queue was flushed: the client sees its own messages.
    for n in 1..=5 {
        assert_eq!(next_n(&mut events, "room:1").await, n);
    }
}

#[tokio::test]
async fn offline_queue_overflow_is_reported() {
    let port = free_port();
    let tok = token("erin", &[], &["room:*"], 600);
    // Nothing listens: every attempt is refused.
    let (client, _events) = fast(Client::builder(format!("ws://127.0.0.1:{port}/ws")))
        .token(tok)
        .queue_capacity(2)
        .build()
        .unwrap();
    let queued: Vec<_> = (0..2)
        .map(|n| {
            let c = client.clone();
            tokio::spawn(async move { c.publish("room:1", "e", &n).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = client.publish("room:1", "e", &3).await.unwrap_err();
    assert_eq!(err, Error::QueueFull { capacity: 2 });
    client.close().await;
    for q in queued {
        assert_eq!(q.await.unwrap().unwrap_err(), Error::Closed);
    }
}

#[tokio::test]
async fn no_reconnect_loop_after_a_401() {
    let gw = gateway().start().await;
    let expired = token("frank", &[], &[], -60);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let (client, mut events) = fast(Client::builder(gw.ws_url()))
        .token(expired)
        .token_refresher(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<String, _>("identity provider unreachable") }
        })
        .build()
        .unwrap();
    match next(&mut events).await {
        Event::Disconnected {
            code,
            reason,
            will_reconnect,
            retry_in,
        } => {
            assert_eq!((code, will_reconnect, retry_in), (None, false, None));
            assert!(reason.contains("401"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    match next(&mut events).await {
        Event::Error(e) => {
            assert!(e.is_auth(), "{e:?}");
            assert!(
                e.to_string().contains("identity provider unreachable"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(events.next().await.is_none(), "the stream ends");
    assert!(client.publish("x", "e", &1).await.unwrap_err().is_auth());
    // Well past several backoff periods: still exactly one refused handshake.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        gw.metric(r#"tidings_connection_attempts_total{result="unauthorized"}"#)
            .await,
        1.0
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn going_away_moves_to_the_other_node_promptly() {
    let mut a = gateway().node("node-a").start().await;
    let b = gateway().node("node-b").start().await;
    let tok = token("gina", &["news"], &[], 600);
    // A long backoff: only a prompt reconnect can pass the time check below.
    let (client, mut events) = Client::builder(vec![a.ws_url(), b.ws_url()])
        .token(tok)
        .backoff(Duration::from_secs(10), Duration::from_secs(30))
        .going_away_delay(Duration::from_millis(100))
        .build()
        .unwrap();
    assert_eq!(connected(&mut events).await.0, "node-a");
    client.subscribe("news").await.unwrap();

    a.signal("TERM");
    let start = std::time::Instant::now();
    match next(&mut events).await {
        Event::Disconnected {
            code,
            will_reconnect,
            retry_in,
            ..
        } => {
            assert_eq!((code, will_reconnect), (Some(1001), true));
            assert!(
                retry_in.unwrap() <= Duration::from_millis(100),
                "{retry_in:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let (node, url) = connected(&mut events).await;
    assert_eq!((node.as_str(), url), ("node-b", b.ws_url()));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    a.wait_exit(WAIT).await;

    // "news" was restored on the new node.
    resubscribed(&client, "news").await;
    b.publish(json!({"channel": "news", "event": "e", "payload": {"n": 3}}))
        .await;
    assert_eq!(next_n(&mut events, "news").await, 3);
}

#[tokio::test]
async fn token_expiry_refreshes_and_reconnects_with_the_new_token() {
    let gw = gateway().start().await;
    // Expires within 1-2 s; the gateway closes with 4001 (leeway 0).
    let short = token("hank", &["news"], &[], 2);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let (client, mut events) = fast(Client::builder(gw.ws_url()))
        .token(short)
        .auto_refresh(false)
        .token_refresher(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(token("hank", &["news"], &[], 600)) }
        })
        .build()
        .unwrap();
    let (_, _) = connected(&mut events).await;
    client.subscribe("news").await.unwrap();
    match tokio::time::timeout(Duration::from_secs(4), events.next())
        .await
        .expect("no 4001 in time")
        .unwrap()
    {
        Event::Disconnected {
            code,
            will_reconnect,
            retry_in,
            ..
        } => assert_eq!(
            (code, will_reconnect, retry_in),
            (Some(4001), true, Some(Duration::ZERO))
        ),
        other => panic!("{other:?}"),
    }
    connected(&mut events).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    resubscribed(&client, "news").await;
    let (status, body) = gw
        .publish(json!({"channel": "news", "event": "e", "payload": {"n": 9}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_n(&mut events, "news").await, 9);
}

#[tokio::test]
async fn proactive_refresh_keeps_the_connection() {
    let gw = gateway().start().await;
    let short = token("ivy", &[], &[], 2);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let (client, mut events) = fast(Client::builder(gw.ws_url()))
        .token(short)
        .token_refresher(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::io::Error>(token("ivy", &[], &[], 600)) }
        })
        .build()
        .unwrap();
    connected(&mut events).await;
    // Past the old expiry: still the same connection.
    let quiet = tokio::time::timeout(Duration::from_millis(2500), events.next()).await;
    assert!(quiet.is_err(), "unexpected event {quiet:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(matches!(client.state(), client::State::Connected { .. }));
}
