//! Gateways over three independent Redis instances (sharded mode): every channel,
//! with its history, lives on the one instance that jump hash assigns it; delivery
//! stays exactly-once; a numbered stream survives its node's death; an instance
//! that goes down takes only its own channels with it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use client::Event;
use protocol::Encoding;
use protocol::keys::KeySpace;
use protocol::topology::shard_of;
use publisher::Publisher;
use redis::Value;
use support::{Audience, Gateway, RedisServer, token};

async fn nodes(shards: &[RedisServer], n: usize) -> Vec<Gateway> {
    support::ready_nodes(n, |b, name| b.redis_sharded(shards, name)).await
}

fn sdk(shards: &[RedisServer]) -> Publisher {
    Publisher::sharded(shards.iter().map(RedisServer::url))
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// Waits until the owner of `channel` has `n` subscribers and the others none.
async fn wait_owner_numsub(shards: &[RedisServer], channel: &str, n: i64) {
    let owner = shard_of(channel, shards.len());
    for (i, s) in shards.iter().enumerate() {
        s.wait_numsub(channel, if i == owner { n } else { 0 }).await;
    }
}

/// `cmdstat_<cmd>` calls of one instance.
async fn calls(server: &RedisServer, cmd: &str) -> u64 {
    let info = server.cmd(&["INFO", "commandstats"]).await;
    testkit::cluster::info_field(&info, &format!("cmdstat_{cmd}"))
        .and_then(|v| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix("calls=").map(str::to_owned))
        })
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn sharded_instances_deliver_exactly_once_from_the_owner() {
    let shards = RedisServer::start_many(3).await;
    let gws = nodes(&shards, 3).await;
    let mut aud = Audience::join(&gws, &["news", "room:*"], |_| Encoding::Json).await;
    // Enough rooms that every instance owns some.
    let rooms: Vec<String> = (0..12).map(|i| format!("room:{i}")).collect();
    for r in &rooms {
        assert!(aud.alice[2].subscribe(r).await.ok);
    }
    wait_owner_numsub(&shards, "$user:alice", 3).await;
    wait_owner_numsub(&shards, "$user:bob", 1).await;
    wait_owner_numsub(&shards, "news", 2).await;
    wait_owner_numsub(&shards, "$broadcast", 3).await;
    for r in &rooms {
        wait_owner_numsub(&shards, r, 1).await;
    }
    // Every instance subscribes exactly the channels it owns.
    let keys = KeySpace::new("tidings");
    let mut owned = [0usize; 3];
    for (i, s) in shards.iter().enumerate() {
        for name in s.channels().await {
            let ch = keys.channel_of(&name).unwrap();
            assert_eq!(shard_of(ch, 3), i, "{ch} subscribed on instance {i}");
            owned[i] += 1;
        }
    }
    assert!(owned.iter().all(|&n| n > 0), "{owned:?}");

    let p = sdk(&shards);
    aud.each_delivered_once(&p, &gws[1]).await;
    // One multi-channel publish spans all instances; each room arrives once.
    let r = p.to_channels(rooms.clone()).send().await.unwrap();
    assert_eq!(r.per_target, vec![1; rooms.len()]);
    let mut seen: Vec<String> = Vec::new();
    for _ in &rooms {
        seen.push(aud.alice[2].message().await.channel);
    }
    seen.sort();
    let mut want = rooms.clone();
    want.sort();
    assert_eq!(seen, want);
    for c in aud.everyone() {
        c.no_message_within(Duration::from_millis(300)).await;
    }

    // A history channel's publishes run only on its owner (EVALSHA of the publish
    // script), and its history is there.
    let owner = shard_of("$user:alice", 3);
    let before: Vec<u64> =
        futures_util::future::join_all(shards.iter().map(|s| calls(s, "evalsha"))).await;
    for i in 0..10 {
        p.to_user("alice").payload(&i).send().await.unwrap();
    }
    for c in &mut aud.alice {
        for _ in 0..10 {
            c.message().await;
        }
    }
    for (i, s) in shards.iter().enumerate() {
        let delta = calls(s, "evalsha").await - before[i];
        assert_eq!(delta, if i == owner { 10 } else { 0 }, "instance {i}");
        let len = s.cmd(&["XLEN", &keys.history_stream("$user:alice")]).await;
        assert_eq!(
            len,
            Value::Int(if i == owner { 12 } else { 0 }),
            "instance {i}"
        );
    }
    // Per-shard stats: alice's messages came in on connections to her owner only.
    let text = gws[0].metrics().await;
    let per_instance = |inst: usize| -> f64 {
        (0..2)
            .map(|k| {
                support::metric_value(
                    &text,
                    &format!(
                        "tidings_redis_shard_messages_received_total{{shard=\"{}\"}}",
                        inst * 2 + k
                    ),
                )
            })
            .sum()
    };
    assert!(per_instance(owner) >= 12.0);

    // One instance down: only its channels stop; the rest keep delivering.
    let mut shards = shards;
    let down = (0..3).find(|&i| i != shard_of("news", 3)).unwrap();
    shards[down].kill();
    assert!(p.to_channel("news").send().await.is_ok());
    for c in aud
        .alice
        .iter_mut()
        .take(2)
        .chain(std::iter::once(&mut aud.bob))
    {
        assert_eq!(c.message().await.channel, "news");
    }
}

#[tokio::test]
async fn numbered_stream_over_shards_survives_sigkill_of_the_node() {
    let shards = RedisServer::start_many(3).await;
    let gws = nodes(&shards, 2).await;
    let (client, mut events) = client::Client::builder(vec![gws[0].ws_url(), gws[1].ws_url()])
        .token(token("stream-user", &[], &[], 300))
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .going_away_delay(Duration::from_millis(20))
        .build()
        .unwrap();
    let mut on = support::welcomed(&mut events).await;
    wait_owner_numsub(&shards, "$user:stream-user", 1).await;
    const N: u64 = 300;
    let publisher = support::numbered_stream(
        sdk(&shards),
        "stream-user",
        N,
        Duration::from_millis(5),
        None,
    );
    let mut got = Vec::new();
    let mut gws: Vec<Option<Gateway>> = gws.into_iter().map(Some).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (got.len() as u64) < N {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(Event::Connected { node, .. })) => on = node,
            Ok(Some(Event::Message {
                channel, payload, ..
            })) if channel.starts_with("$user:") => {
                got.push(payload.parse::<u64>().unwrap());
                if got.len() == 60 {
                    // Kill the client's node; it resumes on the other one.
                    let i: usize = on.trim_start_matches("node").parse().unwrap();
                    let mut gw = gws[i].take().unwrap();
                    gw.signal("KILL");
                    gw.wait_exit(Duration::from_secs(5)).await;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    publisher.await.unwrap();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "every number once, in order"
    );
    drop(client);
}
