//! Ordered channels against the fake gateway: the conditional publish (`expect`, the
//! accepted position, `conflict` as [`Error::Conflict`]), `history` reads, the
//! epoch of messages, and [`Client::channel_events`] routing.

use super::*;
use crate::{Appended, HistoryResult};

async fn connected_client() -> (Net, Peer, Client, Events) {
    let (mut net, connector) = net();
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"]).build().unwrap();
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    (net, peer, client, events)
}

fn at(offset: u64, epoch: &str) -> Since {
    Since {
        offset,
        epoch: epoch.into(),
    }
}

/// Expects a conditional publish on `channel` and returns it unanswered.
async fn expect_publish_if(peer: &mut Peer, channel: &str) -> Value {
    let f = peer.recv().await;
    assert_eq!(f["type"], "publish", "{f}");
    assert_eq!(f["channel"], channel, "{f}");
    f
}

fn spawn_publish_if(
    client: &Client,
    expect: Since,
) -> tokio::task::JoinHandle<Result<Appended, Error>> {
    let c = client.clone();
    tokio::spawn(async move {
        c.publish_if("doc:1", "op", &json!({"op": [1]}), expect)
            .await
    })
}

#[tokio::test(start_paused = true)]
async fn publish_if_sends_expect_and_reads_the_position_or_the_conflict() {
    let (_net, mut peer, client, _events) = connected_client().await;

    // Accepted: the frame carries `expect`, the reply its offset and epoch.
    let call = spawn_publish_if(&client, at(41, "ep"));
    let f = expect_publish_if(&mut peer, "doc:1").await;
    assert_eq!(f["event"], "op", "{f}");
    assert_eq!(f["payload"], json!({"op": [1]}), "{f}");
    assert_eq!(f["expect"], json!({"offset": 41, "epoch": "ep"}), "{f}");
    peer.reply(&f["id"], json!({"nodes": 2, "offset": 42, "epoch": "ep"}))
        .await;
    assert_eq!(
        call.await.unwrap().unwrap(),
        Appended {
            offset: 42,
            epoch: "ep".into(),
            nodes: 2
        }
    );

    // Refused: a distinct error carrying where the channel is.
    let call = spawn_publish_if(&client, at(41, "ep"));
    let f = expect_publish_if(&mut peer, "doc:1").await;
    peer.send(json!({"type": "reply", "id": f["id"], "ok": false,
                     "error": {"code": "conflict", "message": "moved on",
                               "offset": 44, "epoch": "ep"}}))
        .await;
    let e = call.await.unwrap().unwrap_err();
    assert_eq!(
        e,
        Error::Conflict {
            offset: 44,
            epoch: "ep".into()
        }
    );
    assert_eq!(e.code(), Some(protocol::ErrorCode::Conflict));

    // A conflict that does not say where the channel is stays a plain server error.
    let call = spawn_publish_if(&client, at(1, "ep"));
    let f = expect_publish_if(&mut peer, "doc:1").await;
    peer.refuse(&f["id"], "conflict").await;
    let e = call.await.unwrap().unwrap_err();
    assert!(
        matches!(&e, Error::Server { code, .. } if code == "conflict"),
        "{e:?}"
    );
    assert_eq!(e.code(), Some(protocol::ErrorCode::Conflict));

    // Other refusals keep their code.
    let call = spawn_publish_if(&client, at(1, "ep"));
    let f = expect_publish_if(&mut peer, "doc:1").await;
    peer.refuse(&f["id"], "bad_request").await;
    assert_eq!(
        call.await.unwrap().unwrap_err().code(),
        Some(protocol::ErrorCode::BadRequest)
    );

    // An accepting reply without the position is not made up.
    let call = spawn_publish_if(&client, at(1, "ep"));
    let f = expect_publish_if(&mut peer, "doc:1").await;
    peer.reply(&f["id"], json!({"nodes": 1})).await;
    assert!(matches!(call.await.unwrap(), Err(Error::Protocol(_))));

    // A plain publish carries no `expect`.
    let plain = tokio::spawn({
        let c = client.clone();
        async move { c.publish("doc:1", "op", &json!(1)).await }
    });
    let f = expect_publish_if(&mut peer, "doc:1").await;
    assert!(f.get("expect").is_none(), "{f}");
    peer.reply(&f["id"], json!({"nodes": 1})).await;
    plain.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn publish_if_waits_while_disconnected_and_fails_when_in_flight_at_a_drop() {
    let (mut net, mut peer, client, mut events) = connected_client().await;

    let lost = spawn_publish_if(&client, at(3, "ep"));
    expect_publish_if(&mut peer, "doc:1").await;
    net.refuse(true);
    peer.close(1011, "oops").await;
    assert_eq!(lost.await.unwrap().unwrap_err(), Error::Disconnected);
    let _ = expect_disconnected(&mut events).await;

    // Made while disconnected: queued, sent after the reconnect.
    let queued = spawn_publish_if(&client, at(3, "ep"));
    let read = tokio::spawn({
        let c = client.clone();
        async move { c.history("doc:1", None, Some(at(3, "ep"))).await }
    });
    tokio::task::yield_now().await;
    net.refuse(false);
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    let f = expect_publish_if(&mut peer, "doc:1").await;
    assert_eq!(f["expect"], json!({"offset": 3, "epoch": "ep"}), "{f}");
    peer.send(json!({"type": "reply", "id": f["id"], "ok": false,
                     "error": {"code": "conflict", "message": "x", "offset": 4, "epoch": "ep"}}))
        .await;
    assert!(matches!(
        queued.await.unwrap(),
        Err(Error::Conflict { offset: 4, .. })
    ));
    let f = peer.recv().await;
    assert_eq!(f["type"], "history", "{f}");
    peer.reply(
        &f["id"],
        json!({"channel": "doc:1", "epoch": "ep", "offset": 4, "publications": []}),
    )
    .await;
    assert_eq!(read.await.unwrap().unwrap().offset, 4);
}

#[tokio::test(start_paused = true)]
async fn history_reads_entries_and_reports_refusals() {
    let (_net, mut peer, client, _events) = connected_client().await;

    let call = tokio::spawn({
        let c = client.clone();
        async move { c.history("snap:doc:1", Some(1), None).await }
    });
    let f = peer.recv().await;
    assert_eq!(f["type"], "history", "{f}");
    assert_eq!(f["channel"], "snap:doc:1", "{f}");
    assert_eq!(f["limit"], 1, "{f}");
    assert!(f.get("since").is_none(), "{f}");
    peer.reply(
        &f["id"],
        json!({"channel": "snap:doc:1", "epoch": "e1", "offset": 9, "publications": [
            {"event": "snapshot", "payload": {"rev": 500, "epoch": "d", "text": "hi"},
             "offset": 9, "ts": 5, "later": true}
        ]}),
    )
    .await;
    let h: HistoryResult = call.await.unwrap().unwrap();
    assert_eq!((h.epoch.as_str(), h.offset), ("e1", 9));
    assert_eq!(h.publications.len(), 1);
    let e = &h.publications[0];
    assert_eq!((e.event.as_str(), e.offset, e.ts), ("snapshot", 9, 5));
    assert_eq!(e.payload["text"], "hi");
    assert_eq!(e.msg_id, None);

    // Paging forward: `since` goes out, an absent limit is left out.
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.history("doc:1", None, Some(at(7, "e1"))).await }
    });
    let f = peer.recv().await;
    assert_eq!(f["since"], json!({"offset": 7, "epoch": "e1"}), "{f}");
    assert!(f.get("limit").is_none(), "{f}");
    peer.reply(
        &f["id"],
        json!({"channel": "doc:1", "epoch": "e1", "offset": 9, "publications": [
            {"event": "op", "payload": 1, "offset": 8, "ts": 1, "msg_id": "m"},
            {"event": "op", "payload": 2, "offset": 9, "ts": 2}
        ]}),
    )
    .await;
    let h = call.await.unwrap().unwrap();
    let offsets: Vec<u64> = h.publications.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [8, 9]);
    assert_eq!(h.publications[0].msg_id.as_deref(), Some("m"));

    for code in [
        protocol::ErrorCode::Forbidden,
        protocol::ErrorCode::BadRequest,
        protocol::ErrorCode::RateLimited,
    ] {
        let call = tokio::spawn({
            let c = client.clone();
            async move { c.history("doc:1", Some(5), None).await }
        });
        let f = peer.recv().await;
        peer.refuse(&f["id"], code.as_str()).await;
        assert_eq!(call.await.unwrap().unwrap_err().code(), Some(code));
    }

    // A result that does not read as documented fails the request.
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.history("doc:1", None, None).await }
    });
    let f = peer.recv().await;
    peer.reply(&f["id"], json!({"channel": "doc:1", "publications": []}))
        .await;
    assert!(matches!(call.await.unwrap(), Err(Error::Protocol(_))));
}

#[tokio::test(start_paused = true)]
async fn messages_carry_their_epoch() {
    let (_net, mut peer, client, mut events) = connected_client().await;
    let sub = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("doc:1").await }
    });
    peer.expect_subscribe("doc:1", json!({"epoch": "e1", "offset": 0}))
        .await;
    sub.await.unwrap().unwrap();
    peer.send(json!({"type": "message", "channel": "doc:1", "event": "op",
                     "payload": 1, "offset": 1, "epoch": "e1", "ts": 1}))
        .await;
    peer.message("room:1", None, 2).await;
    match next(&mut events).await {
        Event::Message { offset, epoch, .. } => {
            assert_eq!((offset, epoch.as_deref()), (Some(1), Some("e1")));
        }
        other => panic!("{other:?}"),
    }
    match next(&mut events).await {
        Event::Message { offset, epoch, .. } => assert_eq!((offset, epoch), (None, None)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn channel_events_take_their_channels_and_share_the_connection_events() {
    let (mut net, mut peer, client, mut events) = connected_client().await;
    let mut routed = client
        .channel_events(["doc:1", "cursor:doc:1"])
        .await
        .unwrap();
    for ch in ["doc:1", "room:1"] {
        let sub = tokio::spawn({
            let c = client.clone();
            async move { c.subscribe(ch).await }
        });
        peer.expect_subscribe(ch, json!({"epoch": "e", "offset": 0}))
            .await;
        sub.await.unwrap().unwrap();
    }
    peer.message("doc:1", Some(1), 1).await;
    peer.message("room:1", Some(1), 2).await;
    peer.message("cursor:doc:1", None, 3).await;
    peer.message("doc:1", Some(2), 4).await;
    assert_eq!(
        message_n(&next(&mut routed).await),
        ("doc:1".into(), Some(1), 1)
    );
    assert_eq!(
        message_n(&next(&mut routed).await),
        ("cursor:doc:1".into(), None, 3)
    );
    assert_eq!(
        message_n(&next(&mut routed).await),
        ("doc:1".into(), Some(2), 4)
    );
    assert_eq!(
        message_n(&next(&mut events).await),
        ("room:1".into(), Some(1), 2)
    );

    // A drop and a reconnect: both streams see the connection's events; the
    // resumption of a routed channel goes to its stream only.
    peer.close(1011, "oops").await;
    let _ = expect_disconnected(&mut events).await;
    assert!(matches!(
        next(&mut routed).await,
        Event::Disconnected { .. }
    ));
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    assert!(matches!(next(&mut routed).await, Event::Connected { .. }));
    for ch in ["doc:1", "room:1"] {
        let f = peer
            .expect_subscribe(ch, json!({"epoch": "e", "offset": 2, "recovered": true}))
            .await;
        assert!(f.get("since").is_some(), "{f}");
    }
    assert_eq!(
        next(&mut routed).await,
        Event::Recovered {
            channel: "doc:1".into(),
            recovered: true
        }
    );
    assert_eq!(
        next(&mut events).await,
        Event::Recovered {
            channel: "room:1".into(),
            recovered: true
        }
    );

    // A newer route takes a channel over; a dropped one gives its channels back.
    let mut newer = client.channel_events(["doc:1"]).await.unwrap();
    peer.message("doc:1", Some(3), 5).await;
    peer.message("cursor:doc:1", None, 6).await;
    assert_eq!(
        message_n(&next(&mut newer).await),
        ("doc:1".into(), Some(3), 5)
    );
    assert_eq!(
        message_n(&next(&mut routed).await),
        ("cursor:doc:1".into(), None, 6)
    );
    drop(newer);
    drop(routed);
    peer.message("doc:1", Some(4), 7).await;
    peer.message("cursor:doc:1", None, 8).await;
    assert_eq!(
        message_n(&next(&mut events).await),
        ("doc:1".into(), Some(4), 7)
    );
    assert_eq!(
        message_n(&next(&mut events).await),
        ("cursor:doc:1".into(), None, 8)
    );

    // After close the call fails with the client's terminal error.
    client.close().await;
    assert_eq!(
        client.channel_events(["x"]).await.unwrap_err(),
        Error::Closed
    );
}
