//! Presence against the fake gateway: the `presence` and `presence_stats` requests
//! and their replies (paging, errors, results that do not read as documented), the
//! queue while disconnected, and `presence_diff` frames as events.

use super::*;
use crate::{Joined, Left, PresenceResult};

async fn connected_client() -> (Net, Peer, Client, Events) {
    let (mut net, connector) = net();
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"]).build().unwrap();
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    (net, peer, client, events)
}

/// Expects a `presence` request for `channel` and returns it unanswered.
async fn expect_presence(peer: &mut Peer, channel: &str) -> Value {
    let f = peer.recv().await;
    assert_eq!(f["type"], "presence", "{f}");
    assert_eq!(f["channel"], channel, "{f}");
    f
}

fn member(user: &str, client: &str) -> Value {
    json!({"user": user, "client": client, "info": {"name": user.to_uppercase()}})
}

#[tokio::test(start_paused = true)]
async fn presence_pages_stats_and_errors() {
    let (_net, mut peer, client, _events) = connected_client().await;

    // One page: limit and cursor go out as given, absent ones are left out.
    let page = tokio::spawn({
        let c = client.clone();
        async move { c.presence("room:1", Some(2), None).await }
    });
    let f = expect_presence(&mut peer, "room:1").await;
    assert_eq!(f["limit"], 2, "{f}");
    assert!(f.get("cursor").is_none(), "{f}");
    peer.reply(
        &f["id"],
        json!({"channel": "room:1", "clients": 3, "users": 2,
               "members": [member("alice", "n1/01"), {"user": "bob", "client": "n1/02"}],
               "cursor": "n1/02"}),
    )
    .await;
    let p = page.await.unwrap().unwrap();
    assert_eq!(
        (p.clients, p.users, p.cursor.as_deref()),
        (3, 2, Some("n1/02"))
    );
    assert_eq!(p.members[0].user, "alice");
    assert_eq!(p.members[0].info, Some(json!({"name": "ALICE"})));
    assert_eq!(
        (p.members[1].client.as_str(), &p.members[1].info),
        ("n1/02", &None)
    );

    let page = tokio::spawn({
        let c = client.clone();
        async move { c.presence("room:1", None, Some("n1/02".into())).await }
    });
    let f = expect_presence(&mut peer, "room:1").await;
    assert!(f.get("limit").is_none(), "{f}");
    assert_eq!(f["cursor"], "n1/02", "{f}");
    peer.reply(
        &f["id"],
        json!({"channel": "room:1", "clients": 3, "users": 2, "members": [member("alice", "n2/01")]}),
    )
    .await;
    let p = page.await.unwrap().unwrap();
    assert_eq!((p.members.len(), p.cursor), (1, None));

    // Every page, with the largest page size, following the cursors.
    let all = tokio::spawn({
        let c = client.clone();
        async move { c.presence_all("room:1").await }
    });
    let mut cursors = Vec::new();
    for (i, last) in [(0, false), (1, false), (2, true)] {
        let f = expect_presence(&mut peer, "room:1").await;
        assert_eq!(f["limit"], protocol::presence::MAX_PAGE, "{f}");
        cursors.push(f["cursor"].clone());
        let client_id = format!("n1/{i:02}");
        let mut r = json!({"channel": "room:1", "clients": 3 + i, "users": 3,
                           "members": [member(&format!("u{i}"), &client_id)]});
        if !last {
            r["cursor"] = client_id.into();
        }
        peer.reply(&f["id"], r).await;
    }
    assert_eq!(cursors, [Value::Null, json!("n1/00"), json!("n1/01")]);
    let p: PresenceResult = all.await.unwrap().unwrap();
    let users: Vec<&str> = p.members.iter().map(|m| m.user.as_str()).collect();
    assert_eq!(users, ["u0", "u1", "u2"]);
    // The counts of the last page.
    assert_eq!((p.clients, p.users, p.cursor), (5, 3, None));

    // A server that keeps answering with the same cursor is not followed forever.
    let all = tokio::spawn({
        let c = client.clone();
        async move { c.presence_all("room:1").await }
    });
    for _ in 0..2 {
        let f = expect_presence(&mut peer, "room:1").await;
        peer.reply(
            &f["id"],
            json!({"channel": "room:1", "clients": 1, "users": 1, "members": [], "cursor": "same"}),
        )
        .await;
    }
    assert!(matches!(all.await.unwrap(), Err(Error::Protocol(m)) if m.contains("same cursor")));

    // Counts only.
    let stats = tokio::spawn({
        let c = client.clone();
        async move { c.presence_stats("room:1").await }
    });
    let f = peer.recv().await;
    assert_eq!(f["type"], "presence_stats", "{f}");
    assert_eq!(f["channel"], "room:1", "{f}");
    assert!(f.get("limit").is_none() && f.get("cursor").is_none(), "{f}");
    peer.reply(
        &f["id"],
        json!({"channel": "room:1", "clients": 4, "users": 3}),
    )
    .await;
    let s = stats.await.unwrap().unwrap();
    assert_eq!((s.channel.as_str(), s.clients, s.users), ("room:1", 4, 3));

    // Refusals come back with their code; an error in paging ends presence_all.
    for code in [
        protocol::ErrorCode::BadRequest,
        protocol::ErrorCode::Forbidden,
        protocol::ErrorCode::Unavailable,
    ] {
        let all = tokio::spawn({
            let c = client.clone();
            async move { c.presence_all("room:1").await }
        });
        let f = expect_presence(&mut peer, "room:1").await;
        peer.refuse(&f["id"], code.as_str()).await;
        assert_eq!(all.await.unwrap().unwrap_err().code(), Some(code));
    }

    // A result that does not read as documented fails the request.
    let page = tokio::spawn({
        let c = client.clone();
        async move { c.presence("room:1", None, None).await }
    });
    let f = expect_presence(&mut peer, "room:1").await;
    peer.reply(&f["id"], json!({"channel": "room:1", "members": "nope"}))
        .await;
    assert!(matches!(page.await.unwrap(), Err(Error::Protocol(_))));
    let stats = tokio::spawn({
        let c = client.clone();
        async move { c.presence_stats("room:1").await }
    });
    let f = peer.recv().await;
    peer.reply(&f["id"], json!({"channel": "room:1", "clients": -1}))
        .await;
    assert!(matches!(stats.await.unwrap(), Err(Error::Protocol(_))));
}

#[tokio::test(start_paused = true)]
async fn presence_queries_wait_while_disconnected_and_fail_when_the_connection_drops() {
    let (mut net, mut peer, client, mut events) = connected_client().await;
    let sub = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("room:1").await }
    });
    peer.expect_subscribe("room:1", json!({})).await;
    sub.await.unwrap().unwrap();

    // In flight when the connection drops: Disconnected (it may be asked again).
    let lost = tokio::spawn({
        let c = client.clone();
        async move { c.presence("room:1", None, None).await }
    });
    expect_presence(&mut peer, "room:1").await;
    net.refuse(true);
    peer.close(1011, "oops").await;
    assert_eq!(lost.await.unwrap().unwrap_err(), Error::Disconnected);
    let _ = expect_disconnected(&mut events).await;

    // Asked while disconnected: queued, sent after the resubscription.
    let queued = tokio::spawn({
        let c = client.clone();
        async move { c.presence_stats("room:1").await }
    });
    tokio::task::yield_now().await;
    net.refuse(false);
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    peer.expect_subscribe("room:1", json!({})).await;
    let f = peer.recv().await;
    assert_eq!(f["type"], "presence_stats", "{f}");
    peer.reply(
        &f["id"],
        json!({"channel": "room:1", "clients": 1, "users": 1}),
    )
    .await;
    assert_eq!(queued.await.unwrap().unwrap().users, 1);

    // No reply in time: Timeout.
    let slow = tokio::spawn({
        let c = client.clone();
        async move { c.presence("room:1", Some(1), None).await }
    });
    expect_presence(&mut peer, "room:1").await;
    assert!(matches!(slow.await.unwrap(), Err(Error::Timeout(_))));

    // After close: the client's terminal error.
    client.close().await;
    assert_eq!(
        client.presence("room:1", None, None).await.unwrap_err(),
        Error::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn presence_diffs_of_held_channels_are_events() {
    let (_net, mut peer, client, mut events) = connected_client().await;
    let sub = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("room:1").await }
    });
    peer.expect_subscribe("room:1", json!({})).await;
    sub.await.unwrap().unwrap();

    peer.send(json!({"type": "presence_diff", "channel": "room:1",
                     "joins": [{"user": "alice", "info": {"name": "Alice"}}, {"user": "carol"}],
                     "leaves": [{"user": "bob"}]}))
        .await;
    // Of a channel the client does not hold (left meanwhile): dropped.
    peer.send(json!({"type": "presence_diff", "channel": "room:2",
                     "joins": [{"user": "mallory"}], "leaves": []}))
        .await;
    // Either list may be missing; unknown fields are ignored.
    peer.send(json!({"type": "presence_diff", "channel": "room:1",
                     "leaves": [{"user": "carol", "why": "later"}]}))
        .await;
    peer.message("room:1", None, 1).await;

    assert_eq!(
        next(&mut events).await,
        Event::PresenceDiff {
            channel: "room:1".into(),
            joins: vec![
                Joined {
                    user: "alice".into(),
                    info: Some(json!({"name": "Alice"})),
                },
                Joined {
                    user: "carol".into(),
                    info: None,
                },
            ],
            leaves: vec![Left { user: "bob".into() }],
        }
    );
    assert_eq!(
        next(&mut events).await,
        Event::PresenceDiff {
            channel: "room:1".into(),
            joins: vec![],
            leaves: vec![Left {
                user: "carol".into()
            }],
        }
    );
    assert_eq!(
        message_n(&next(&mut events).await),
        ("room:1".into(), None, 1)
    );

    // A malformed diff is reported and skipped; the connection goes on.
    peer.send(json!({"type": "presence_diff", "joins": []}))
        .await;
    assert!(matches!(
        next(&mut events).await,
        Event::Error(Error::Protocol(_))
    ));

    // After the unsubscribe, the channel's diffs are dropped.
    let unsub = tokio::spawn({
        let c = client.clone();
        async move { c.unsubscribe("room:1").await }
    });
    let f = peer.recv().await;
    assert_eq!(f["type"], "unsubscribe", "{f}");
    peer.reply(&f["id"], json!({"channel": "room:1"})).await;
    unsub.await.unwrap().unwrap();
    peer.send(json!({"type": "presence_diff", "channel": "room:1",
                     "joins": [{"user": "late"}], "leaves": []}))
        .await;
    peer.message("room:9", None, 2).await;
    assert_eq!(
        message_n(&next(&mut events).await),
        ("room:9".into(), None, 2)
    );
}
