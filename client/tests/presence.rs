//! Presence against a real gateway (single node, in-memory broker): listings with the
//! members' `info`, counts, and join and leave events, the leave only after the
//! grace period.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use client::{Client, Encoding, ErrorCode, Event, Joined, Left};
use serde_json::json;
use support::*;

const GRACE: Duration = Duration::from_millis(400);

#[tokio::test]
async fn members_see_each_other_and_a_leave_after_the_grace_period() {
    let gw = gateway()
        .args(&[
            "--presence",
            "room:* events",
            "--presence-grace",
            "400ms",
            "--presence-refresh",
            "1s",
        ])
        .start()
        .await;
    let tok = |user: &str| token_with_info(user, &["room:*", "news"], json!({"name": user}));
    let (alice, mut alice_events) = Client::builder(gw.ws_url())
        .token(tok("alice"))
        .build()
        .unwrap();
    connected(&mut alice_events).await;
    alice.subscribe("room:1").await.unwrap();
    // Alice's own join.
    match until(&mut alice_events, "alice's join", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await
    {
        Event::PresenceDiff {
            channel,
            joins,
            leaves,
        } => {
            assert_eq!(channel, "room:1");
            assert_eq!(
                joins,
                [Joined {
                    user: "alice".into(),
                    info: Some(json!({"name": "alice"}))
                }]
            );
            assert!(leaves.is_empty());
        }
        _ => unreachable!(),
    }

    let (bob, mut bob_events) = Client::builder(gw.ws_url())
        .token(tok("bob"))
        .encoding(Encoding::MsgPack)
        .build()
        .unwrap();
    connected(&mut bob_events).await;
    bob.subscribe("room:1").await.unwrap();
    until(
        &mut alice_events,
        "bob's join",
        |e| matches!(e, Event::PresenceDiff { joins, .. } if joins.iter().any(|j| j.user == "bob")),
    )
    .await;

    // Both listed, from either side, page by page or all at once.
    let all = bob.presence_all("room:1").await.unwrap();
    assert_eq!(
        (all.clients, all.users, all.cursor.as_deref()),
        (2, 2, None)
    );
    let mut users: Vec<_> = all
        .members
        .iter()
        .map(|m| (m.user.as_str(), m.info.clone()))
        .collect();
    users.sort_by(|a, b| a.0.cmp(b.0));
    assert_eq!(
        users,
        [
            ("alice", Some(json!({"name": "alice"}))),
            ("bob", Some(json!({"name": "bob"})))
        ]
    );
    let first = alice.presence("room:1", Some(1), None).await.unwrap();
    assert_eq!(first.members.len(), 1);
    let rest = alice
        .presence("room:1", Some(1), first.cursor.clone())
        .await
        .unwrap();
    assert_eq!(rest.members.len(), 1);
    assert_ne!(rest.members[0].client, first.members[0].client);
    let stats = alice.presence_stats("room:1").await.unwrap();
    assert_eq!((stats.clients, stats.users), (2, 2));

    // Refusals: no presence rule on `news`, no right on `secret`.
    let e = alice.presence_stats("news").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e}");
    let e = alice.presence("secret", None, None).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Forbidden), "{e}");

    // Bob goes: his leave comes once the grace period is over.
    bob.close().await;
    let closed = Instant::now();
    match until(
        &mut alice_events,
        "bob's leave",
        |e| matches!(e, Event::PresenceDiff { leaves, .. } if !leaves.is_empty()),
    )
    .await
    {
        Event::PresenceDiff { leaves, .. } => {
            assert_eq!(leaves, [Left { user: "bob".into() }]);
        }
        _ => unreachable!(),
    }
    let after = closed.elapsed();
    assert!(
        after + Duration::from_millis(50) >= GRACE,
        "the leave came {after:?} after the close"
    );
    let stats = alice.presence_stats("room:1").await.unwrap();
    assert_eq!((stats.clients, stats.users), (1, 1));
    alice.close().await;
}
