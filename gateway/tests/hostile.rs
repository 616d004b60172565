//! Hostile and buggy input against real gateway processes: every input is bounded
//! before it is expensive, budgets hold, and what is accepted is delivered in both
//! encodings. Each test reproduces one finding of the issue "Hostile input and
//! budgets" and fails without its fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use protocol::{Encoding, ErrorCode};
use publisher::Publisher;
use serde_json::{Value, json};
use support::{Client, Gateway, RedisServer, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn nested(n: usize) -> String {
    format!("{}0{}", "[".repeat(n), "]".repeat(n))
}

/// Finding 1: a payload nested deeper than serde_json re-encodes was accepted and
/// then lost for MessagePack subscribers (and skipped in their replays).
#[tokio::test]
async fn every_accepted_payload_reaches_both_encodings() {
    let gw = Gateway::builder()
        .args(&["--history", "$user:* 100 24h,room:* 100 1h"])
        .start()
        .await;
    let t = token("deep", &["room:*"], &[], 60);
    let mut json_sub = Client::connect_encoding(&gw, &t, Encoding::Json).await;
    let mut mp_sub = Client::connect_encoding(&gw, &t, Encoding::MsgPack).await;
    for c in [&mut json_sub, &mut mp_sub] {
        assert!(c.subscribe("room:deep").await.ok);
    }
    // Too deep: refused at the API, before anything is stored or sent.
    let body = format!(r#"{{"channel":"room:deep","payload":{}}}"#, nested(200));
    let auth = format!("Bearer {}", support::API_KEY);
    let (status, resp) = gw
        .http(
            "POST",
            "/api/v1/publish",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
        .await;
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("deeper than 64"), "{resp}");
    // At the limit: both encodings get it, live and in a replay.
    let body = format!(r#"{{"channel":"room:deep","payload":{}}}"#, nested(64));
    let (status, resp) = gw
        .http(
            "POST",
            "/api/v1/publish",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    for c in [&mut json_sub, &mut mp_sub] {
        let m = c.message().await;
        assert_eq!(m.payload.json(), nested(64));
    }
    let mut late = Client::connect_encoding(&gw, &t, Encoding::MsgPack).await;
    let id = late.next_id();
    late.send(&protocol::frame::ClientFrame::Subscribe {
        id,
        channel: "room:deep".into(),
        since: Some(protocol::frame::Since {
            offset: 0,
            epoch: String::new(),
        }),
    })
    .await;
    assert_eq!(late.reply(id).await.result.unwrap()["recovered"], true);
    assert_eq!(late.message().await.payload.json(), nested(64));
    // A client's own publish is held to the same limit.
    let mut publisher = Client::connect(&gw, &token("pub", &[], &["room:*"], 60)).await;
    let frame = format!(
        r#"{{"type":"publish","id":99,"channel":"room:deep","payload":{}}}"#,
        nested(100)
    );
    publisher
        .ws
        .send(Message::Text(frame.into()))
        .await
        .unwrap();
    let r = publisher.any_reply().await;
    assert_eq!(r.error.unwrap().code, ErrorCode::BadFrame);
}

/// Finding 2: a 1 KB MessagePack frame of 1,000 nested arrays overflowed a worker's
/// stack in a debug build (this suite's build) and took the whole gateway down.
#[tokio::test]
async fn deeply_nested_messagepack_is_refused_not_a_crash() {
    let mut gw = Gateway::start().await;
    let mut c =
        Client::connect_encoding(&gw, &token("nest", &[], &[], 60), Encoding::MsgPack).await;
    // {"type": "pong", "x": [[[...1,000 levels...]]]}
    let mut frame = vec![0x82, 0xa4];
    frame.extend_from_slice(b"type");
    frame.push(0xa4);
    frame.extend_from_slice(b"pong");
    frame.push(0xa1);
    frame.push(b'x');
    frame.extend(std::iter::repeat_n(0x91u8, 1000));
    frame.push(0x01);
    c.ws.send(Message::Binary(frame.into())).await.unwrap();
    let r = c.any_reply().await;
    assert_eq!(r.error.unwrap().code, ErrorCode::BadFrame);
    assert!(gw.is_running(), "the gateway survived");
    assert_eq!(gw.admin_get("/healthz").await.0, 200);
}

/// Finding 3: pong frames were decoded whatever their size and never limited: a
/// client could make the node decode 60 KB pongs as fast as it could send them.
#[tokio::test]
async fn oversized_or_flooding_pongs_end_the_connection() {
    let gw = Gateway::start().await;
    let mut big = Client::connect(&gw, &token("bigpong", &[], &[], 60)).await;
    let pad = "p".repeat(60_000);
    let frame = format!(r#"{{"type":"pong","pad":"{pad}"}}"#);
    let started = Instant::now();
    let (code, _) = loop {
        if big
            .ws
            .send(Message::Text(frame.clone().into()))
            .await
            .is_err()
        {
            break big.expect_close().await;
        }
        if started.elapsed() > Duration::from_secs(3) {
            break big.expect_close().await;
        }
        tokio::task::yield_now().await;
        if let Ok(Some(Ok(Message::Close(f)))) = tokio::time::timeout(
            Duration::from_millis(1),
            futures_util::StreamExt::next(&mut big.ws),
        )
        .await
        {
            break (f.map_or(0, |f| u16::from(f.code)), String::new());
        }
    };
    assert_eq!(code, protocol::close::POLICY_VIOLATION);
    // Small pongs, but more than the rate limit allows.
    let mut flood = Client::connect(&gw, &token("pongflood", &[], &[], 60)).await;
    for _ in 0..200 {
        if flood
            .ws
            .send(Message::Text(r#"{"type":"pong"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, _) = flood.expect_close().await;
    assert_eq!(code, protocol::close::POLICY_VIOLATION);
}

/// Finding 4: a client with publish rights on a wildcard with history could create
/// histories without end (the demo gave anyone such rights).
#[tokio::test]
async fn history_channels_and_bytes_have_budgets() {
    // A rule of its own budget, with the memory broker and with Redis.
    let redis = RedisServer::start().await;
    let rules = "$user:* 100 24h,room:* 10 1h 3";
    let memory = Gateway::builder().args(&["--history", rules]).start().await;
    let with_redis = Gateway::builder()
        .redis(&redis, "budget")
        .args(&["--history", rules])
        .start()
        .await;
    support::eventually("ready", || async {
        with_redis.admin_get("/readyz").await.0 == 200
    })
    .await;
    for gw in [&memory, &with_redis] {
        let mut c = Client::connect(gw, &token("maker", &[], &["room:*"], 60)).await;
        for i in 0..3 {
            let r = c.publish(&format!("room:{i}"), "e", json!(i)).await;
            assert!(r.ok, "{r:?}");
        }
        // An existing history takes more messages; a fourth channel does not.
        assert!(c.publish("room:0", "e", json!("again")).await.ok);
        let r = c.publish("room:3", "e", json!(3)).await;
        assert_eq!(
            r.error.unwrap().code,
            ErrorCode::QuotaExceeded,
            "{}",
            gw.addr
        );
        assert!(
            gw.metric("tidings_budget_refusals_total{budget=\"history_channels\"}")
                .await
                >= 1.0
        );
    }
    // The node-wide default applies to rules without a budget of their own.
    let capped = Gateway::builder()
        .args(&["--history", "room:* 10 1h", "--history-max-channels", "2"])
        .start()
        .await;
    let mut c = Client::connect(&capped, &token("maker", &[], &["room:*"], 60)).await;
    assert!(c.publish("room:a", "e", json!(1)).await.ok);
    assert!(c.publish("room:b", "e", json!(1)).await.ok);
    let r = c.publish("room:c", "e", json!(1)).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::QuotaExceeded);
    // The memory broker's bytes.
    let small = Gateway::builder()
        .args(&["--history", "room:* 10 1h", "--history-max-bytes", "200000"])
        .start()
        .await;
    let mut c = Client::connect(&small, &token("filler", &[], &["room:*"], 60)).await;
    let pad = "b".repeat(60_000);
    let mut stored = 0;
    let refused = loop {
        let r = c.publish(&format!("room:{stored}"), "e", json!(pad)).await;
        if !r.ok {
            break r;
        }
        stored += 1;
        assert!(stored < 10, "200 kB of history took {stored} x 60 kB");
    };
    assert_eq!(stored, 3);
    assert_eq!(refused.error.unwrap().code, ErrorCode::QuotaExceeded);
}

/// Finding 5: request bodies had no read timeout, connections before the upgrade no
/// cap, and heads were accepted well past the documented 64 KiB.
#[tokio::test]
async fn http_bodies_heads_and_pending_connections_are_bounded() {
    let gw = Gateway::builder()
        .args(&[
            "--handshake-timeout",
            "1s",
            "--max-pending-connections",
            "3",
            "--demo",
        ])
        .start()
        .await;
    // A body announced and never sent: 408 once the handshake timeout passes.
    for path in ["/api/v1/publish", "/demo/token"] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
            support::API_KEY
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("the connection is closed")
            .unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        assert!(text.contains("request_timeout"), "{text}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    // A head of just over 64 KiB in one burst: 431.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "h".repeat(65 * 1024)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 431"));
    // Connections that never send anything take the pending slots (on a node
    // that waits longer for them, so the test sees them pending)...
    let gw = Gateway::builder()
        .args(&[
            "--handshake-timeout",
            "10s",
            "--max-pending-connections",
            "3",
        ])
        .start()
        .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(gw.addr).await.unwrap());
    }
    gw.wait_metric("tidings_http_pending_connections", |v| v == 3.0)
        .await;
    // ...so the next one is turned away at once, with a JSON 503.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf))
        .await
        .expect("refused at once")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"], "unavailable");
    assert_eq!(gw.metric("tidings_http_pending_refused_total").await, 1.0);
    // Once they go, the slots free up.
    drop(idle);
    gw.wait_metric("tidings_http_pending_connections", |v| v == 0.0)
        .await;
    assert_eq!(gw.admin_get("/healthz").await.0, 200);
}

/// Finding 6: one request of 1,000 targets x 60 KB wrote 63 MiB to Redis, with the
/// payload copied into every target's script arguments.
#[tokio::test]
async fn one_request_writes_its_payload_once_and_within_its_budget() {
    let redis = RedisServer::start().await;
    let gw = Gateway::builder().redis(&redis, "bytes").start().await;
    support::eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
    let users: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    let pad = "x".repeat(60_000);
    let (status, body) = gw.publish(json!({"users": users, "payload": pad})).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "payload_too_large");
    assert_eq!(
        gw.metric("tidings_budget_refusals_total{budget=\"publish_bytes\"}")
            .await,
        1.0
    );
    // Within the budget (4 MiB): 60 users, and one script run carries them all.
    let before = redis.calls("evalsha").await;
    let users: Vec<String> = (0..60).map(|i| format!("u{i}")).collect();
    let (status, body) = gw.publish(json!({"users": users, "payload": pad})).await;
    assert_eq!(status, 200, "{body}");
    let after = redis.calls("evalsha").await;
    assert!(
        after - before <= 2,
        "{} script runs for one request",
        after - before
    );
    // A batch counts all of its messages.
    let messages: Vec<Value> = (0..80)
        .map(|i| json!({"user": format!("b{i}"), "payload": pad}))
        .collect();
    let auth = format!("Bearer {}", support::API_KEY);
    let (status, _) = gw
        .http(
            "POST",
            "/api/v1/publish/batch",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &json!({ "messages": messages }).to_string(),
        )
        .await;
    assert_eq!(status, 413);
    let sdk = Publisher::builder(redis.url()).build().unwrap();
    assert!(sdk.unread_count("u59").await.unwrap() == 1);
}

/// Finding 8: a token expiring at u64::MAX wrapped the expiry (closed at once with
/// 4001 in release, a panic in debug).
#[tokio::test]
async fn a_token_that_never_expires_does_not_overflow() {
    // With a leeway: the expiry plus the leeway is what overflowed.
    let gw = Gateway::builder()
        .args(&["--jwt-leeway", "5s"])
        .start()
        .await;
    #[derive(serde::Serialize)]
    struct Forever<'a> {
        sub: &'a str,
        exp: u64,
    }
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Forever {
            sub: "forever",
            exp: u64::MAX,
        },
        &jsonwebtoken::EncodingKey::from_secret(support::SECRET.as_bytes()),
    )
    .unwrap();
    let mut c = Client::connect(&gw, &t).await;
    assert_eq!(c.welcome.expires_at, u64::MAX);
    let (status, _) = gw.publish(json!({"user": "forever", "payload": 1})).await;
    assert_eq!(status, 200);
    assert_eq!(c.message().await.channel, "$user:forever");
}

/// Finding 8 (cont.): a refresh with an older token of the same user (which may
/// carry rights taken away since) was accepted.
#[tokio::test]
async fn refresh_never_goes_back_to_an_older_token() {
    let gw = Gateway::start().await;
    let mut c = Client::connect(&gw, &token("ann", &[], &[], 600)).await;
    let older = token("ann", &["secret:*"], &[], 60);
    let r = c.refresh(&older).await;
    assert_eq!(r.error.unwrap().code, ErrorCode::InvalidToken);
    assert!(!c.subscribe("secret:plans").await.ok);
    let newer = token("ann", &["news"], &[], 1200);
    assert!(c.refresh(&newer).await.ok);
}

/// Finding 8 (cont.): a symmetric key in the JWKS file was accepted at startup, and
/// the Redis URL's password appeared in startup errors.
#[test]
fn startup_refuses_oct_keys_and_hides_redis_passwords() {
    let dir = std::env::temp_dir().join(format!("tidings-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("keys.json");
    std::fs::write(
        &jwks,
        r#"{"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQ"}]}"#,
    )
    .unwrap();
    let (code, err) = refused(&[
        "--jwt-jwks-file",
        jwks.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("jwt-jwks-file") && err.contains("oct"),
        "{err}"
    );
    let url = "redis://:hunter2-password@127.0.0.1:1";
    let urls = format!("{url},{url}");
    let (code, err) = refused(&[
        "--jwt-secret",
        support::SECRET,
        "--redis-mode",
        "sharded",
        "--redis-url",
        &urls,
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("redis-url"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs the gateway with `args`, expecting it to refuse to start: its exit code and
/// stderr (one that starts anyway is stopped after 5 s and reported as such).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let mut child = testkit::gateway::command()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return (None, "it started".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
