//! The acknowledged inbox through the Rust client: one device acknowledges, a second
//! device of the same user (on another node) resumes from that position, and the
//! publisher SDK's unread count agrees with what the devices acknowledged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use client::{Client, Event};
use publisher::Publisher;
use support::{Gateway, RedisServer, eventually, token};

fn device(url: String, user: &str) -> (Client, client::Events) {
    Client::builder(url)
        .token(token(user, &[], &[], 300))
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .unwrap()
}

/// The next personal-channel message, as (offset, number); records the recovery
/// verdict on the way.
async fn next_personal(events: &mut client::Events, verdict: &mut Option<bool>) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Event::Message {
                channel,
                payload,
                offset,
                ..
            })) if channel.starts_with("$user:") => {
                return (offset.unwrap(), payload.parse().unwrap());
            }
            Ok(Some(Event::Recovered { recovered, .. })) => *verdict = Some(recovered),
            Ok(Some(_)) => {}
            other => panic!("expected a personal message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn second_device_resumes_from_the_acknowledged_position() {
    let redis = RedisServer::start().await;
    let a = Gateway::builder().redis(&redis, "a").start().await;
    let b = Gateway::builder().redis(&redis, "b").start().await;
    for gw in [&a, &b] {
        eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
    }
    let sdk = Publisher::builder(redis.url()).build().unwrap();

    let (phone, mut phone_events) = device(a.ws_url(), "inbox-user");
    support::welcomed(&mut phone_events).await;
    redis.wait_numsub("$user:inbox-user", 1).await;
    for i in 1..=5u64 {
        sdk.to_user("inbox-user")
            .event("n")
            .payload(&i)
            .send()
            .await
            .unwrap();
    }
    let mut verdict = None;
    for want in 1..=5u64 {
        assert_eq!(
            next_personal(&mut phone_events, &mut verdict).await,
            (want, want)
        );
    }
    assert_eq!(
        sdk.unread_count("inbox-user").await.unwrap(),
        5,
        "nothing acked yet"
    );

    // The user read the first three on the phone.
    assert_eq!(phone.ack(3).await.unwrap(), 3);
    assert_eq!(sdk.unread_count("inbox-user").await.unwrap(), 2);
    // Acks only move forward; the reply names the stored position.
    assert_eq!(phone.ack(1).await.unwrap(), 3);
    assert_eq!(sdk.unread_count("inbox-user").await.unwrap(), 2);

    // A new laptop (no local state) on the other node gets exactly the unread ones.
    let (laptop, mut laptop_events) = device(b.ws_url(), "inbox-user");
    let mut verdict = None;
    assert_eq!(
        next_personal(&mut laptop_events, &mut verdict).await,
        (4, 4)
    );
    assert_eq!(
        next_personal(&mut laptop_events, &mut verdict).await,
        (5, 5)
    );
    assert_eq!(verdict, Some(true), "resumed from the acked position");

    // Both devices keep receiving live; an ack from either is the user's position.
    sdk.to_user("inbox-user")
        .event("n")
        .payload(&6u64)
        .send()
        .await
        .unwrap();
    assert_eq!(next_personal(&mut phone_events, &mut None).await, (6, 6));
    assert_eq!(next_personal(&mut laptop_events, &mut None).await, (6, 6));
    assert_eq!(sdk.unread_count("inbox-user").await.unwrap(), 3);
    assert_eq!(laptop.ack(6).await.unwrap(), 6);
    assert_eq!(sdk.unread_count("inbox-user").await.unwrap(), 0);
    let recent = sdk.recent("inbox-user", 2).await.unwrap();
    assert_eq!(
        recent.iter().map(|n| n.offset).collect::<Vec<_>>(),
        vec![6, 5],
        "newest first"
    );
    // A third device now starts with nothing to replay.
    let (_tablet, mut tablet_events) = device(a.ws_url(), "inbox-user");
    sdk.to_user("inbox-user")
        .event("n")
        .payload(&7u64)
        .send()
        .await
        .unwrap();
    // The tablet may subscribe after the publish; either way it gets 7 exactly once
    // (live or replayed after the acked 6) and nothing older.
    assert_eq!(next_personal(&mut tablet_events, &mut None).await, (7, 7));
    drop((phone, laptop));
}
