//! The promise end to end: a real Rust client receives a continuous numbered stream
//! of notifications while its gateway node dies; it reconnects to the other node,
//! resumes from its last offset and ends with every number exactly once, in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use client::{Client, Event};
use publisher::Publisher;
use support::{Gateway, RedisServer, eventually, token};

/// Publishes `n` numbered notifications to `user`, one every `gap`.
fn stream(
    redis: &RedisServer,
    user: &'static str,
    n: u64,
    gap: Duration,
) -> tokio::task::JoinHandle<()> {
    let sdk = Publisher::builder(redis.url()).build().unwrap();
    tokio::spawn(async move {
        for i in 0..n {
            // Retry until Redis takes it: the stream itself must have no holes.
            loop {
                if sdk
                    .to_user(user)
                    .event("n")
                    .payload(&i)
                    .send()
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(gap).await;
        }
    })
}

/// Collects the personal-channel numbers until `n` arrived (or the deadline).
async fn collect(events: &mut client::Events, n: u64, within: Duration) -> Vec<u64> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while (got.len() as u64) < n {
        let ev = tokio::time::timeout_at(deadline, events.next()).await;
        match ev {
            Ok(Some(Event::Message {
                channel, payload, ..
            })) if channel.starts_with("$user:") => {
                got.push(payload.parse::<u64>().unwrap());
            }
            Ok(Some(other)) => eprintln!("EVENT {other:?}"),
            Ok(None) => {
                eprintln!("EVENTS ENDED");
                break;
            }
            Err(_) => break,
        }
    }
    got
}

#[tokio::test]
async fn numbered_stream_survives_sigkill_of_the_node() {
    let redis = RedisServer::start().await;
    let a = Gateway::builder().redis(&redis, "a").start().await;
    let b = Gateway::builder().redis(&redis, "b").start().await;
    for gw in [&a, &b] {
        eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
    }
    let (client, mut events) = Client::builder(vec![a.ws_url(), b.ws_url()])
        .token(token("stream-user", &[], &[], 300))
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .going_away_delay(Duration::from_millis(20))
        .build()
        .unwrap();
    redis.wait_numsub("$user:stream-user", 1).await;
    const N: u64 = 300;
    let publisher = stream(&redis, "stream-user", N, Duration::from_millis(5));
    // Let part of the stream arrive, then kill the client's node outright.
    let first = collect(&mut events, 60, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 60);
    let mut a = a;
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5)).await;
    let rest = collect(&mut events, N - 60, Duration::from_secs(30)).await;
    publisher.await.unwrap();
    let all: Vec<u64> = first.into_iter().chain(rest).collect();
    assert_eq!(
        all,
        (0..N).collect::<Vec<_>>(),
        "every number once, in order"
    );
    drop(client);
}
