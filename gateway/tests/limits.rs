//! Inbound limits over real sockets: message size, UTF-8, undecodable frames and the
//! abuse limit, the inbound rate limit, frame-type mismatches and payload size.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use protocol::frame::{ClientFrame, Reply, ServerFrame};
use protocol::{Encoding, ErrorCode};
use serde_json::json;
use support::{Client, Gateway, WAIT, decode, token};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// What the server sent next: a data frame, or its close code.
#[derive(Debug)]
enum Next {
    Frame(ServerFrame),
    Close(u16),
}

/// The next data frame or close frame (WebSocket control frames are skipped).
async fn next_or_close(c: &mut Client) -> Next {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, c.ws.next())
            .await
            .expect("nothing from the server in time")
            .expect("connection ended without a close frame")
            .expect("read error");
        match msg {
            Message::Close(Some(f)) => return Next::Close(u16::from(f.code)),
            Message::Close(None) => return Next::Close(1005),
            other => {
                if let Some(f) = decode(c.encoding, &other) {
                    return Next::Frame(f);
                }
            }
        }
    }
}

/// The next reply, or the close code if the server closed instead.
async fn reply_or_close(c: &mut Client) -> Result<Reply, u16> {
    match next_or_close(c).await {
        Next::Frame(ServerFrame::Reply(r)) => Ok(r),
        Next::Frame(other) => panic!("expected a reply, got {other:?}"),
        Next::Close(code) => Err(code),
    }
}

fn error_code(r: &Reply) -> ErrorCode {
    assert!(!r.ok, "expected an error reply, got {r:?}");
    r.error.as_ref().expect("error body").code
}

/// A raw data frame (tungstenite masks it as a client frame when sending).
fn raw(data: &'static [u8], opcode: Data, fin: bool) -> Message {
    Message::Frame(Frame::message(
        Bytes::from_static(data),
        OpCode::Data(opcode),
        fin,
    ))
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let gw = Gateway::builder()
        .args(&["--max-message-size", "1024"])
        .start()
        .await;
    let t = token("big", &["*"], &[], 60);

    // A subscribe frame of exactly `len` bytes (unknown fields are ignored).
    let padded = |id: u64, len: usize| {
        let frame = |pad: String| {
            json!({"type": "subscribe", "id": id, "channel": format!("c{id}"), "pad": pad})
                .to_string()
        };
        let text = frame("p".repeat(len - frame(String::new()).len()));
        assert_eq!(text.len(), len);
        Message::Text(text.into())
    };

    // Exactly at the limit is fine.
    let mut c = Client::connect(&gw, &t).await;
    assert_eq!(c.welcome.limits.max_message_bytes, 1024);
    c.ws.send(padded(1, 1024)).await.unwrap();
    assert!(c.reply(1).await.ok);

    // One byte over the limit.
    c.ws.send(padded(2, 1025)).await.unwrap();
    assert_eq!(c.expect_close().await.0, 1009);

    // Fragments each under the limit, together over it.
    let mut c = Client::connect(&gw, &t).await;
    static CHUNK: [u8; 600] = [b' '; 600];
    c.ws.send(raw(&CHUNK, Data::Text, false)).await.unwrap();
    c.ws.send(Message::Frame(Frame::message(
        Bytes::from_static(&CHUNK),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(c.expect_close().await.0, 1009);

    // A binary frame over the limit on a MessagePack connection.
    let mut m = Client::connect_encoding(&gw, &t, Encoding::MsgPack).await;
    m.ws.send(Message::Binary(vec![0u8; 4096].into()))
        .await
        .unwrap();
    assert_eq!(m.expect_close().await.0, 1009);

    gw.wait_metric("tidings_closes_total{code=\"1009\"}", |v| v == 3.0)
        .await;
    gw.wait_metric("tidings_connections", |v| v == 0.0).await;
    gw.wait_metric("tidings_subscriptions", |v| v == 0.0).await;
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    let gw = Gateway::start().await;
    let t = token("utf", &[], &[], 60);
    let mut c = Client::connect(&gw, &t).await;
    c.ws.send(raw(
        b"{\"type\":\"subscribe\",\"id\":1,\"channel\":\"\xff\xfe\"}",
        Data::Text,
        true,
    ))
    .await
    .unwrap();
    assert_eq!(c.expect_close().await.0, 1007);

    // Also when the bad byte sequence is split over fragments.
    let mut c = Client::connect(&gw, &t).await;
    c.ws.send(raw(
        b"{\"type\":\"pong\",\"x\":\"\xe2\x82",
        Data::Text,
        false,
    ))
    .await
    .unwrap();
    c.ws.send(raw(b"\x28\"}", Data::Continue, true))
        .await
        .unwrap();
    assert_eq!(c.expect_close().await.0, 1007);

    // Valid multi-byte UTF-8 split over fragments is fine.
    let mut c = Client::connect(&gw, &t).await;
    c.ws.send(raw(
        b"{\"type\":\"subscribe\",\"id\":7,\"channel\":\"\xe2\x82",
        Data::Text,
        false,
    ))
    .await
    .unwrap();
    c.ws.send(raw(b"\xac\"}", Data::Continue, true))
        .await
        .unwrap();
    assert_eq!(error_code(&c.reply(7).await), ErrorCode::InvalidChannel);

    gw.wait_metric("tidings_closes_total{code=\"1007\"}", |v| v == 2.0)
        .await;
}

#[tokio::test]
async fn undecodable_frames_get_stable_codes_then_1008() {
    let gw = Gateway::start().await;
    let mut c = Client::connect(&gw, &token("junk", &["*"], &[], 60)).await;
    let cases: Vec<(&str, ErrorCode, Option<u64>)> = vec![
        ("not json", ErrorCode::BadFrame, None),
        (
            r#"{"type":"subscribe","id":9,"channel":5}"#,
            ErrorCode::BadFrame,
            Some(9),
        ),
        (
            r#"{"type":"subscribe","id":"nine","channel":"x"}"#,
            ErrorCode::BadFrame,
            None,
        ),
        (r#"{"id":6,"channel":"x"}"#, ErrorCode::BadFrame, Some(6)),
        (
            r#"{"type":"dance","id":8}"#,
            ErrorCode::UnknownType,
            Some(8),
        ),
        (
            r#"{"type":"subscribe","id":7}"#,
            ErrorCode::BadRequest,
            Some(7),
        ),
        (
            r#"{"type":"publish","channel":"x"}"#,
            ErrorCode::BadRequest,
            None,
        ),
        (
            r#"{"type":"refresh","id":5}"#,
            ErrorCode::BadRequest,
            Some(5),
        ),
    ];
    for (text, code, id) in &cases {
        c.ws.send(Message::Text((*text).into())).await.unwrap();
        let r = reply_or_close(&mut c)
            .await
            .unwrap_or_else(|code| panic!("closed with {code} after {text}"));
        assert_eq!(error_code(&r), *code, "{text}: {r:?}");
        assert_eq!(r.id, *id, "{text}: {r:?}");
        let message = &r.error.as_ref().unwrap().message;
        assert!(!message.is_empty(), "{text}: {r:?}");
    }
    // Still usable after a few malformed frames.
    assert!(c.subscribe("still-here").await.ok);

    // Keep sending garbage: the strikes run out (10 in a burst) and the server closes.
    let mut replies = cases.len();
    let code = loop {
        assert!(replies < 50, "never closed");
        c.ws.send(Message::Text("{".into())).await.unwrap();
        match reply_or_close(&mut c).await {
            Ok(r) => {
                assert_eq!(error_code(&r), ErrorCode::BadFrame);
                replies += 1;
            }
            Err(code) => break code,
        }
    };
    assert_eq!(code, 1008);
    assert_eq!(replies, 10, "strikes tolerated before closing");
    gw.wait_metric("tidings_closes_total{code=\"1008\"}", |v| v == 1.0)
        .await;
    assert!(
        gw.metric("tidings_inbound_frames_total{type=\"invalid\"}")
            .await
            >= 11.0
    );
    gw.wait_metric("tidings_subscriptions", |v| v == 0.0).await;
}

#[tokio::test]
async fn undecodable_msgpack_frames_get_stable_codes() {
    let gw = Gateway::start().await;
    let mut c =
        Client::connect_encoding(&gw, &token("junk", &["*"], &[], 60), Encoding::MsgPack).await;
    let mp = |v: serde_json::Value| Message::Binary(rmp_serde::to_vec_named(&v).unwrap().into());
    let cases = vec![
        (
            Message::Binary(Bytes::from_static(b"\xc1")),
            ErrorCode::BadFrame,
            None,
        ),
        (
            mp(json!({"type": "dance", "id": 3})),
            ErrorCode::UnknownType,
            Some(3),
        ),
        (
            mp(json!({"type": "unsubscribe", "id": 4})),
            ErrorCode::BadRequest,
            Some(4),
        ),
        (
            mp(json!({"type": "subscribe", "id": 5, "channel": [1]})),
            ErrorCode::BadFrame,
            Some(5),
        ),
    ];
    for (msg, code, id) in cases {
        c.ws.send(msg).await.unwrap();
        let r = c.any_reply().await;
        assert_eq!(error_code(&r), code, "{r:?}");
        assert_eq!(r.id, id, "{r:?}");
    }
    assert!(c.subscribe("fine").await.ok);
}

#[tokio::test]
async fn inbound_rate_limit_then_1008() {
    let gw = Gateway::builder()
        .args(&["--rate-limit", "5", "--rate-burst", "5"])
        .start()
        .await;
    let t = token("fast", &["*"], &[], 60);

    // A burst of 40 frames in one write: the first 5 pass, then rate_limited replies
    // (each a strike), then the strikes run out and the server closes.
    let mut c = Client::connect(&gw, &t).await;
    assert_eq!(
        (c.welcome.limits.rate_per_sec, c.welcome.limits.rate_burst),
        (5, 5)
    );
    for i in 0..40u64 {
        let frame = ClientFrame::Subscribe {
            id: 100 + i,
            channel: format!("r{i}"),
            since: None,
        };
        let text = String::from_utf8(frame.encode(Encoding::Json).unwrap().to_vec()).unwrap();
        c.ws.feed(Message::Text(text.into())).await.unwrap();
    }
    c.ws.flush().await.unwrap();
    let (mut ok, mut limited) = (0, 0);
    let mut expected_id = 100;
    let code = loop {
        match reply_or_close(&mut c).await {
            Ok(r) => {
                assert_eq!(r.id, Some(expected_id), "replies come in order: {r:?}");
                if expected_id < 105 {
                    assert!(r.ok, "the burst passes: {r:?}");
                }
                if expected_id == 105 {
                    assert_eq!(error_code(&r), ErrorCode::RateLimited);
                }
                if r.ok {
                    ok += 1;
                } else {
                    assert_eq!(error_code(&r), ErrorCode::RateLimited, "{r:?}");
                    limited += 1;
                }
                expected_id += 1;
            }
            Err(code) => break code,
        }
    };
    assert_eq!(code, 1008);
    assert!(ok >= 5, "{ok}");
    assert_eq!(limited, 10);
    gw.wait_metric("tidings_closes_total{code=\"1008\"}", |v| v == 1.0)
        .await;

    // A client that backs off after being limited recovers as tokens refill.
    let mut c = Client::connect(&gw, &t).await;
    for i in 0..7u64 {
        let frame = ClientFrame::Unsubscribe {
            id: i + 1,
            channel: "nope".into(),
        };
        c.send(&frame).await;
    }
    for i in 0..7u64 {
        let r = c.reply(i + 1).await;
        let want = if i < 5 {
            ErrorCode::NotSubscribed
        } else {
            ErrorCode::RateLimited
        };
        assert_eq!(error_code(&r), want, "{r:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = c.subscribe("recovered").await;
        if r.ok {
            break;
        }
        assert_eq!(error_code(&r), ErrorCode::RateLimited);
        assert!(Instant::now() < deadline, "rate limit never recovered");
    }
    assert!(gw.metric("tidings_closes_total{code=\"1008\"}").await == 1.0);
}

#[tokio::test]
async fn wrong_frame_kind_gets_bad_frame() {
    let gw = Gateway::start().await;
    let t = token("kinds", &["*"], &[], 60);

    // Text on a MessagePack connection: the reply is MessagePack.
    let mut m = Client::connect_encoding(&gw, &t, Encoding::MsgPack).await;
    m.ws.send(Message::Text(
        r#"{"type":"subscribe","id":1,"channel":"a"}"#.into(),
    ))
    .await
    .unwrap();
    let raw = tokio::time::timeout(WAIT, m.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(raw.is_binary(), "{raw:?}");
    let Some(ServerFrame::Reply(r)) = decode(Encoding::MsgPack, &raw) else {
        panic!("expected a reply, got {raw:?}")
    };
    assert_eq!(error_code(&r), ErrorCode::BadFrame);
    assert_eq!(r.id, None);
    assert!(m.subscribe("a").await.ok, "the connection stays usable");

    // Binary on a JSON connection: the reply is JSON text.
    let mut j = Client::connect(&gw, &t).await;
    let frame = ClientFrame::Subscribe {
        id: 1,
        channel: "a".into(),
        since: None,
    };
    j.ws.send(Message::Binary(frame.encode(Encoding::Json).unwrap()))
        .await
        .unwrap();
    let raw = tokio::time::timeout(WAIT, j.ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(raw.is_text(), "{raw:?}");
    let Some(ServerFrame::Reply(r)) = decode(Encoding::Json, &raw) else {
        panic!("expected a reply, got {raw:?}")
    };
    assert_eq!(error_code(&r), ErrorCode::BadFrame);
    assert!(j.subscribe("a").await.ok, "the connection stays usable");

    // Persisting in the wrong frame kind counts as abuse like any undecodable frame.
    let mut replies = 1;
    let code = loop {
        assert!(replies < 50, "never closed");
        j.ws.send(Message::Binary(Bytes::from_static(b"{}")))
            .await
            .unwrap();
        match reply_or_close(&mut j).await {
            Ok(r) => {
                assert_eq!(error_code(&r), ErrorCode::BadFrame);
                replies += 1;
            }
            Err(code) => break code,
        }
    };
    assert_eq!(code, 1008);
    assert_eq!(replies, 10);
}

#[tokio::test]
async fn oversized_publish_payload_is_refused() {
    let gw = Gateway::builder()
        .args(&["--max-payload-size", "1024"])
        .start()
        .await;
    let t = token("pub", &["room"], &["room"], 60);
    let mut sub = Client::connect(&gw, &t).await;
    assert_eq!(sub.welcome.limits.max_payload_bytes, 1024);
    assert!(sub.subscribe("room").await.ok);
    let mut p = Client::connect(&gw, &t).await;

    // The payload's JSON text is measured: a 1022-char string is 1024 bytes quoted.
    let r = p.publish("room", "e", json!("x".repeat(1023))).await;
    assert_eq!(error_code(&r), ErrorCode::PayloadTooLarge, "{r:?}");
    assert!(r.id.is_some());
    let r = p
        .publish("room", "e", json!({"big": "x".repeat(5000)}))
        .await;
    assert_eq!(error_code(&r), ErrorCode::PayloadTooLarge, "{r:?}");
    let r = p.publish("room", "e", json!("x".repeat(1022))).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(sub.message().await.payload.len(), 1024);

    // MessagePack publishes are measured on the same JSON text.
    let mut mp = Client::connect_encoding(&gw, &t, Encoding::MsgPack).await;
    let r = mp.publish("room", "e", json!("x".repeat(1023))).await;
    assert_eq!(error_code(&r), ErrorCode::PayloadTooLarge, "{r:?}");

    // The HTTP API refuses the same way.
    let (status, body) = gw
        .publish(json!({"channel": "room", "payload": "x".repeat(1023)}))
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");
    let (status, body) = gw
        .publish(json!({"channel": "room", "payload": "x".repeat(1022)}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sub.message().await.payload.len(), 1024);
    sub.no_message_within(Duration::from_millis(100)).await;
}
