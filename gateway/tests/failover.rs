//! The promise end to end: a real Rust client receives a continuous numbered stream
//! of notifications while its gateway node dies (SIGKILL), while the nodes restart
//! one after the other (SIGTERM), or while Redis restarts with AOF persistence; it
//! ends with every number exactly once, in order. Without persistence a Redis
//! restart loses history, and the client is told it was not recovered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use client::{Client, Event};
use publisher::Publisher;
use support::{Gateway, RedisServer, collect_numbers, eventually, token};
use testkit::free_port;

/// Publishes `n` numbered notifications to `user`, one every `gap`.
fn stream(
    redis: &RedisServer,
    user: &'static str,
    n: u64,
    gap: Duration,
) -> tokio::task::JoinHandle<()> {
    let sdk = Publisher::builder(redis.url()).build().unwrap();
    support::numbered_stream(sdk, user, n, gap, None)
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
    support::welcomed(&mut events).await;
    const N: u64 = 300;
    let publisher = stream(&redis, "stream-user", N, Duration::from_millis(5));
    // Let part of the stream arrive, then kill the client's node outright.
    let first = collect_numbers(&mut events, 60, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 60);
    let mut a = a;
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5)).await;
    let rest = collect_numbers(&mut events, N - 60, Duration::from_secs(30)).await;
    publisher.await.unwrap();
    let all: Vec<u64> = first.into_iter().chain(rest).collect();
    assert_eq!(
        all,
        (0..N).collect::<Vec<_>>(),
        "every number once, in order"
    );
    drop(client);
}

/// A gateway on a fixed public port, so it can be restarted where clients expect it.
async fn node_on(redis: &RedisServer, name: &str, port: u16) -> Gateway {
    let listen = format!("127.0.0.1:{port}");
    let gw = Gateway::builder()
        .redis(redis, name)
        .args(&["--listen", &listen])
        .start()
        .await;
    eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
    gw
}

fn stream_client(urls: Vec<String>, user: &str) -> (Client, client::Events) {
    Client::builder(urls)
        .token(token(user, &[], &[], 300))
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .going_away_delay(Duration::from_millis(20))
        .build()
        .unwrap()
}

fn assert_exact(got: Vec<u64>, n: u64) {
    assert_eq!(
        got,
        (0..n).collect::<Vec<_>>(),
        "every number once, in order"
    );
}

#[tokio::test]
async fn numbered_stream_survives_a_rolling_restart() {
    let redis = RedisServer::start().await;
    let ports = [free_port(), free_port()];
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("ws://127.0.0.1:{p}/ws"))
        .collect();
    let mut a = node_on(&redis, "a", ports[0]).await;
    let mut b = node_on(&redis, "b", ports[1]).await;
    let (client, mut events) = stream_client(urls, "rolling-user");
    redis.wait_numsub("$user:rolling-user", 1).await;
    support::welcomed(&mut events).await;
    const N: u64 = 400;
    let publisher = stream(&redis, "rolling-user", N, Duration::from_millis(5));
    let mut got = collect_numbers(&mut events, 50, Duration::from_secs(10)).await;
    // Roll: each node drains (1001 to its clients) and exits, then comes back on
    // its port before the next one goes.
    a.signal("TERM");
    assert!(a.wait_exit(Duration::from_secs(10)).await.success());
    a = node_on(&redis, "a", ports[0]).await;
    got.extend(collect_numbers(&mut events, 50, Duration::from_secs(10)).await);
    b.signal("TERM");
    assert!(b.wait_exit(Duration::from_secs(10)).await.success());
    b = node_on(&redis, "b", ports[1]).await;
    let left = N - got.len() as u64;
    got.extend(collect_numbers(&mut events, left, Duration::from_secs(30)).await);
    publisher.await.unwrap();
    assert_exact(got, N);
    drop((client, a, b));
}

#[tokio::test]
async fn numbered_stream_survives_a_redis_restart_with_aof() {
    let mut redis = RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ])
    .await;
    let a = Gateway::builder().redis(&redis, "a").start().await;
    eventually("ready", || async { a.admin_get("/readyz").await.0 == 200 }).await;
    let (client, mut events) = stream_client(vec![a.ws_url()], "aof-user");
    redis.wait_numsub("$user:aof-user", 1).await;
    support::welcomed(&mut events).await;
    const N: u64 = 300;
    let publisher = stream(&redis, "aof-user", N, Duration::from_millis(5));
    let mut got = collect_numbers(&mut events, 60, Duration::from_secs(10)).await;
    // Crash Redis mid-stream. The client stays connected to its node; what is
    // published while the node's subscription is re-established reaches it from the
    // history stream that AOF kept, before the live message that revealed the gap.
    redis.restart().await;
    let left = N - got.len() as u64;
    got.extend(collect_numbers(&mut events, left, Duration::from_secs(30)).await);
    publisher.await.unwrap();
    assert_exact(got, N);
    drop(client);
}

#[tokio::test]
async fn redis_restart_without_persistence_reports_not_recovered() {
    let mut redis = RedisServer::start().await;
    let ports = [free_port(), free_port()];
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("ws://127.0.0.1:{p}/ws"))
        .collect();
    let mut a = node_on(&redis, "a", ports[0]).await;
    let (client, mut events) = stream_client(urls, "lossy-user");
    redis.wait_numsub("$user:lossy-user", 1).await;
    support::welcomed(&mut events).await;
    stream(&redis, "lossy-user", 10, Duration::ZERO)
        .await
        .unwrap();
    assert_exact(
        collect_numbers(&mut events, 10, Duration::from_secs(10)).await,
        10,
    );
    // The client's node dies; what is published next exists only in Redis memory,
    // and Redis then restarts without persistence: that history is gone.
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5)).await;
    let sdk = Publisher::builder(redis.url()).build().unwrap();
    for i in 10..20u64 {
        sdk.to_user("lossy-user")
            .event("n")
            .payload(&i)
            .send()
            .await
            .unwrap();
    }
    redis.restart().await;
    let b = node_on(&redis, "b", ports[1]).await;
    // The client resumes on b from offset 10 of an epoch that no longer exists.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let recovered = loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Event::Recovered { channel, recovered })) if channel.starts_with("$user:") => {
                break recovered;
            }
            Ok(Some(Event::Message { payload, .. })) => {
                panic!("a message ({payload:?}) before the recovery verdict")
            }
            Ok(Some(_)) => {}
            other => panic!("no recovery verdict: {other:?}"),
        }
    };
    assert!(
        !recovered,
        "a lost history must be reported, not papered over"
    );
    // Live delivery goes on in the new epoch.
    redis.wait_numsub("$user:lossy-user", 1).await;
    for i in 20..25u64 {
        sdk.to_user("lossy-user")
            .event("n")
            .payload(&i)
            .send()
            .await
            .unwrap();
    }
    let after = collect_numbers(&mut events, 5, Duration::from_secs(10)).await;
    assert_eq!(after, (20..25).collect::<Vec<_>>());
    drop((client, b));
}
