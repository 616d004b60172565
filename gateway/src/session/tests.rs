//! The session in process, on the in-memory broker and tokio's paused clock:
//! rights, limits, strikes, history positions and refresh, without a socket.

use std::collections::VecDeque;
use std::time::Duration;

use protocol::ErrorCode;
use protocol::frame::{
    AckResult, PublishResult, RefreshResult, Reply, SubscribeResult, UnsubscribeResult,
};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::{Outcome, Session};
use crate::error::SessionEnd;
use crate::hub::outbox::{Frame, ws_payload};
use crate::testing::{SECRET, claims, node, session};

async fn send(s: &mut Session, frame: &str) -> Outcome {
    s.handle(frame.as_bytes(), Instant::now()).await
}

fn reply(o: Outcome) -> Reply {
    match o {
        Outcome::Reply(r) | Outcome::Replay(r, _) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn ok<T: DeserializeOwned>(o: Outcome) -> T {
    let r = reply(o).into_result().unwrap_or_else(|e| panic!("{e:?}"));
    serde_json::from_value(r).unwrap_or_else(|e| panic!("{e}"))
}

fn code(o: Outcome) -> ErrorCode {
    match reply(o).into_result() {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => e.code,
    }
}

/// The JSON texts queued in the session's outbox.
async fn queued(s: &Session) -> Vec<String> {
    let mut out = VecDeque::new();
    let _ = tokio::time::timeout(Duration::from_millis(10), s.outbox().drain(&mut out, 64)).await;
    out.into_iter()
        .filter_map(|i| match i.frame {
            Frame::Ws(b) => ws_payload(&b).map(|(_, p)| String::from_utf8_lossy(&p).into_owned()),
            Frame::Check => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn rights_and_limits_answer_with_their_codes() {
    let node = node(&["--max-channels", "1"]);
    let mut s = session(&node, claims("ann", &["room:*"], &[]), 8);
    let sub = r#"{"type":"subscribe","id":1,"channel":"room:1"}"#;
    let r: SubscribeResult = ok(send(&mut s, sub).await);
    assert_eq!(r.channel, "room:1");
    assert_eq!(code(send(&mut s, sub).await), ErrorCode::AlreadySubscribed);
    let other = r#"{"type":"subscribe","id":2,"channel":"room:2"}"#;
    assert_eq!(code(send(&mut s, other).await), ErrorCode::TooManyChannels);
    let news = r#"{"type":"subscribe","id":3,"channel":"news"}"#;
    assert_eq!(code(send(&mut s, news).await), ErrorCode::Forbidden);
    let bad = r#"{"type":"subscribe","id":4,"channel":"a b"}"#;
    assert_eq!(code(send(&mut s, bad).await), ErrorCode::InvalidChannel);
    let publish = r#"{"type":"publish","id":5,"channel":"room:1","event":"e","payload":1}"#;
    assert_eq!(code(send(&mut s, publish).await), ErrorCode::Forbidden);
    let personal = r#"{"type":"unsubscribe","id":6,"channel":"$user:ann"}"#;
    assert_eq!(code(send(&mut s, personal).await), ErrorCode::Forbidden);
    let leave = r#"{"type":"unsubscribe","id":7,"channel":"room:1"}"#;
    let r: UnsubscribeResult = ok(send(&mut s, leave).await);
    assert_eq!(r.channel, "room:1");
    assert_eq!(code(send(&mut s, leave).await), ErrorCode::NotSubscribed);
}

#[tokio::test(start_paused = true)]
async fn malformed_frames_are_struck_until_the_session_ends() {
    let node = node(&[]);
    let mut s = session(&node, claims("bob", &[], &[]), 8);
    // Ten strikes are tolerated, one forgiven every ten seconds.
    for _ in 0..10 {
        assert_eq!(code(send(&mut s, "{").await), ErrorCode::BadFrame);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(code(send(&mut s, "{").await), ErrorCode::BadFrame);
    assert!(matches!(
        send(&mut s, "{").await,
        Outcome::End(SessionEnd::Abuse)
    ));
}

#[tokio::test(start_paused = true)]
async fn the_inbound_rate_limit_refuses_then_recovers() {
    let node = node(&["--rate-limit", "10", "--rate-burst", "5"]);
    let mut s = session(&node, claims("cy", &["room:*"], &[]), 8);
    let leave = r#"{"type":"unsubscribe","id":1,"channel":"room:9"}"#;
    for _ in 0..5 {
        assert_eq!(code(send(&mut s, leave).await), ErrorCode::NotSubscribed);
    }
    assert_eq!(code(send(&mut s, leave).await), ErrorCode::RateLimited);
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(code(send(&mut s, leave).await), ErrorCode::NotSubscribed);
    // Pongs count too, and an oversized one is a strike without an answer.
    let big = format!(r#"{{"type":"pong","pad":"{}"}}"#, "x".repeat(200));
    assert!(matches!(send(&mut s, &big).await, Outcome::Silent));
}

#[tokio::test(start_paused = true)]
async fn publishes_reach_subscribers_and_acks_move_forward() {
    let node = node(&["--history", "$user:* 10 1h,room:* 10 1h"]);
    let mut a = session(&node, claims("dee", &["room:*"], &["room:*"]), 8);
    let mut b = session(&node, claims("eve", &["room:*"], &[]), 8);
    let sub = r#"{"type":"subscribe","id":1,"channel":"room:x"}"#;
    let r: SubscribeResult = ok(send(&mut b, sub).await);
    assert_eq!((r.offset, r.recovered), (Some(0), None));
    let publish =
        r#"{"type":"publish","id":2,"channel":"room:x","event":"said","payload":{"t":"hi"}}"#;
    let receipt: PublishResult = ok(send(&mut a, publish).await);
    assert_eq!(receipt.sessions, Some(1));
    let got = queued(&b).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains(r#""event":"said""#) && got[0].contains(r#""offset":1"#));
    // The personal channel: nothing to acknowledge yet, then only forward.
    let ack = |n: u64| format!(r#"{{"type":"ack","id":3,"offset":{n}}}"#);
    assert_eq!(code(send(&mut a, &ack(1)).await), ErrorCode::BadRequest);
    let to_dee = r#"{"type":"publish","id":4,"channel":"room:x","event":"e","payload":1}"#;
    let _: PublishResult = ok(send(&mut a, to_dee).await);
    let p = protocol::Publication::new("$user:dee", "e", protocol::Payload::null());
    node.broker
        .publish(vec![p.clone(), p])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r: AckResult = ok(send(&mut a, &ack(2)).await);
    assert_eq!(r.offset, 2);
    let r: AckResult = ok(send(&mut a, &ack(1)).await);
    assert_eq!(r.offset, 2, "an ack never moves back");
}

#[tokio::test(start_paused = true)]
async fn a_refresh_moves_forward_and_drops_channels_no_longer_allowed() {
    let node = node(&[]);
    let mut s = session(&node, claims("fay", &["room:*", "news"], &[]), 8);
    for (id, ch) in [(1, "room:1"), (2, "news")] {
        let f = format!(r#"{{"type":"subscribe","id":{id},"channel":"{ch}"}}"#);
        let _: SubscribeResult = ok(send(&mut s, &f).await);
    }
    let now = protocol::now_millis() / 1000;
    let token = |sub: &str, ttl: u64, rights: &[String]| {
        crate::auth::mint_hs256(SECRET.as_bytes(), sub, ttl, rights, &[])
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let refresh = |t: String| format!(r#"{{"type":"refresh","id":9,"token":"{t}"}}"#);
    let other = token("gus", 3600, &[]);
    assert_eq!(
        code(send(&mut s, &refresh(other)).await),
        ErrorCode::TokenMismatch
    );
    let older = token("fay", 60, &[]);
    assert_eq!(
        code(send(&mut s, &refresh(older)).await),
        ErrorCode::InvalidToken
    );
    let newer = token("fay", 3600, &["news".to_owned()]);
    let r: RefreshResult = ok(send(&mut s, &refresh(newer)).await);
    assert!(r.expires_at >= now + 3600);
    assert_eq!(r.unsubscribed, ["room:1"]);
    let again = r#"{"type":"subscribe","id":10,"channel":"room:1"}"#;
    assert_eq!(code(send(&mut s, again).await), ErrorCode::Forbidden);
}
