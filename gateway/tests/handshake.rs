//! The WebSocket upgrade end to end: every refusal is an HTTP status with a JSON
//! `{error, message}` body and no upgrade (400, 401, 403, 429, 503), the three
//! token sources, and tokens never reaching the logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod handshake_util;
mod support;

use handshake_util::{WS_KEY, alg_none, attempts, hs256, now, request, upgrade, upgrade_bearer};
use jsonwebtoken::{Algorithm, EncodingKey};
use protocol::Encoding;
use serde_json::json;
use support::{Client, Connect, Gateway, TokenVia, eventually, token};

/// The accept key RFC 6455 gives for [`WS_KEY`].
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

#[tokio::test]
async fn malformed_upgrades_are_400() {
    let gw = Gateway::start().await;
    let t = token("alice", &[], &[], 60);
    let auth = format!("Bearer {t}");
    let auth = ("Authorization", auth.as_str());
    let upgrade_headers = [("Connection", "Upgrade"), ("Upgrade", "websocket")];

    // A plain GET, as a browser navigating to /ws would send.
    let r = request(gw.addr, "GET", "/ws", &[auth]).await;
    r.assert_refused(400, "bad_request");
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    assert!(r.message().contains("Upgrade"), "{r:?}");

    // Only one of the two upgrade headers.
    let r = request(
        gw.addr,
        "GET",
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", WS_KEY),
            auth,
        ],
    )
    .await;
    r.assert_refused(400, "bad_request");

    let r = request(
        gw.addr,
        "GET",
        "/ws",
        &[
            upgrade_headers[0],
            upgrade_headers[1],
            ("Sec-WebSocket-Version", "8"),
            ("Sec-WebSocket-Key", WS_KEY),
            auth,
        ],
    )
    .await;
    r.assert_refused(400, "bad_request");
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    assert!(r.message().contains("Sec-WebSocket-Version"), "{r:?}");

    let r = request(
        gw.addr,
        "GET",
        "/ws",
        &[
            upgrade_headers[0],
            upgrade_headers[1],
            ("Sec-WebSocket-Version", "13"),
            auth,
        ],
    )
    .await;
    r.assert_refused(400, "bad_request");
    assert!(r.message().contains("Sec-WebSocket-Key"), "{r:?}");

    let r = request(
        gw.addr,
        "GET",
        "/ws",
        &[
            upgrade_headers[0],
            upgrade_headers[1],
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "too-short"),
            auth,
        ],
    )
    .await;
    r.assert_refused(400, "bad_request");

    let r = request(
        gw.addr,
        "POST",
        "/ws",
        &[
            upgrade_headers[0],
            upgrade_headers[1],
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", WS_KEY),
            ("Content-Length", "0"),
            auth,
        ],
    )
    .await;
    r.assert_refused(400, "bad_request");
    assert!(r.message().contains("GET"), "{r:?}");

    // Subprotocols offered, none of them ours.
    let r = upgrade(
        gw.addr,
        "/ws",
        &[auth, ("Sec-WebSocket-Protocol", "chat, superchat")],
    )
    .await;
    r.assert_refused(400, "bad_request");
    assert!(r.message().contains("tidings.json"), "{r:?}");

    // Only the token entry, no encoding: refused, and the token is not echoed.
    let proto = format!("tidings.token.{t}");
    let r = upgrade(gw.addr, "/ws", &[("Sec-WebSocket-Protocol", &proto)]).await;
    r.assert_refused(400, "bad_request");
    assert!(!format!("{r:?}").contains(&t), "token echoed: {r:?}");
    assert!(r.header("sec-websocket-protocol").is_none(), "{r:?}");

    assert_eq!(gw.metric(&attempts("bad_request")).await, 8.0);
    assert_eq!(gw.metric(&attempts("ok")).await, 0.0);

    // The same raw request done right is upgraded (so the refusals above are real).
    let r = upgrade(gw.addr, "/ws", &[auth]).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("sec-websocket-accept"), Some(WS_ACCEPT));
    assert!(
        r.header("upgrade")
            .unwrap()
            .eq_ignore_ascii_case("websocket")
    );
    assert!(
        r.header("sec-websocket-protocol").is_none(),
        "no subprotocol offered, none selected: {r:?}"
    );
    assert_eq!(gw.metric(&attempts("ok")).await, 1.0);
    assert_eq!(gw.metric(&attempts("bad_request")).await, 8.0);
}

#[tokio::test]
async fn bad_tokens_are_401() {
    let gw = Gateway::start().await;
    let now = now();
    let secret = EncodingKey::from_secret(support::SECRET.as_bytes());
    let sign = |alg, key: &EncodingKey, claims| handshake_util::sign(alg, key, None, &claims);
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "garbage".to_owned()),
        ("three garbage segments", "aaa.bbb.ccc".to_owned()),
        ("expired", hs256(&json!({"sub": "alice", "exp": now - 10}))),
        (
            "another secret",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-0123456789"),
                json!({"sub": "alice", "exp": now + 60}),
            ),
        ),
        (
            "alg none",
            alg_none(&json!({"sub": "alice", "exp": now + 60})),
        ),
        (
            "HS384 with the right secret",
            sign(
                Algorithm::HS384,
                &secret,
                json!({"sub": "alice", "exp": now + 60}),
            ),
        ),
        ("no exp", hs256(&json!({"sub": "alice"}))),
        ("no sub", hs256(&json!({"exp": now + 60}))),
        (
            "invalid user id",
            hs256(&json!({"sub": "not a user id", "exp": now + 60})),
        ),
    ];
    for (what, t) in &cases {
        let r = upgrade_bearer(gw.addr, t).await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        r.assert_refused(401, "unauthorized");
        assert!(!r.body.contains(t.as_str()), "{what}: token in body {r:?}");
    }
    let expired = upgrade_bearer(gw.addr, &cases[2].1).await;
    assert_eq!(expired.message(), "token expired");

    let r = upgrade(gw.addr, "/ws", &[]).await;
    r.assert_refused(401, "unauthorized");
    assert!(r.message().contains("missing token"), "{r:?}");
    let r = upgrade(gw.addr, "/ws", &[("Authorization", "Bearer ")]).await;
    r.assert_refused(401, "unauthorized");
    let r = upgrade(gw.addr, "/ws?token=", &[]).await;
    r.assert_refused(401, "unauthorized");

    // A real client is refused the same way.
    let err = Client::connect_with(&gw, Connect::new("garbage"))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.status, 401);

    let refused = cases.len() as f64 + 1.0 + 3.0 + 1.0;
    assert_eq!(gw.metric(&attempts("unauthorized")).await, refused);
    assert_eq!(gw.metric(&attempts("ok")).await, 0.0);
    assert_eq!(gw.metric("tidings_connections").await, 0.0);

    // The HS256 control token is accepted.
    let c = Client::connect(&gw, &hs256(&json!({"sub": "alice", "exp": now + 60}))).await;
    assert_eq!(c.welcome.user, "alice");
    assert_eq!(gw.metric(&attempts("ok")).await, 1.0);
}

#[tokio::test]
async fn origin_allowlist_is_403() {
    let gw = Gateway::builder()
        .args(&[
            "--allowed-origins",
            "https://app.test.com,https://*.example.com",
        ])
        .start()
        .await;
    let t = token("alice", &[], &[], 60);
    let refused = [
        "https://evil.com",
        "http://app.test.com",
        "https://app.test.com.evil.com",
        "https://example.com",
        "http://a.example.com",
        "https://evilexample.com",
        "https://a.example.com.evil.com",
        "null",
    ];
    for origin in refused {
        let auth = format!("Bearer {t}");
        let r = upgrade(
            gw.addr,
            "/ws",
            &[("Authorization", &auth), ("Origin", origin)],
        )
        .await;
        assert_eq!(r.status, 403, "{origin}: {r:?}");
        r.assert_refused(403, "forbidden");
    }
    // The origin is checked before the token.
    let r = upgrade(gw.addr, "/ws", &[("Origin", "https://evil.com")]).await;
    r.assert_refused(403, "forbidden");
    let forbidden = refused.len() as f64 + 1.0;

    let mut accepted = 0.0;
    for origin in [
        Some("https://app.test.com"),
        Some("https://a.example.com"),
        Some("https://a.b.example.com"),
        None,
    ] {
        let mut c = Connect::new(&t);
        if let Some(o) = origin {
            c.headers.push(("Origin", o));
        }
        let client = Client::connect_with(&gw, c).await;
        assert!(client.is_ok(), "{origin:?}: {:?}", client.err());
        accepted += 1.0;
    }
    let real = Client::connect_with(
        &gw,
        Connect {
            headers: vec![("Origin", "https://evil.com")],
            ..Connect::new(&t)
        },
    )
    .await;
    assert_eq!(real.err().expect("refused").status, 403);

    assert_eq!(gw.metric(&attempts("forbidden")).await, forbidden + 1.0);
    assert_eq!(gw.metric(&attempts("ok")).await, accepted);
    assert_eq!(gw.metric(&attempts("unauthorized")).await, 0.0);
}

#[tokio::test]
async fn node_connection_limit_is_429_until_a_slot_frees() {
    let gw = Gateway::builder()
        .args(&["--max-connections", "2"])
        .start()
        .await;
    let mut a = Client::connect(&gw, &token("a", &[], &[], 60)).await;
    let _b = Client::connect(&gw, &token("b", &[], &[], 60)).await;
    let c = token("c", &[], &[], 60);
    let r = upgrade_bearer(gw.addr, &c).await;
    r.assert_refused(429, "too_many_connections");
    assert!(r.message().contains("node"), "{r:?}");
    let err = Client::connect_with(&gw, Connect::new(&c)).await.err();
    assert_eq!(err.expect("refused").status, 429);
    assert_eq!(gw.metric(&attempts("limited")).await, 2.0);
    assert_eq!(gw.metric("tidings_connections").await, 2.0);

    // A client leaving frees its slot.
    a.ws.close(None).await.unwrap();
    gw.wait_metric("tidings_connections", |v| v == 1.0).await;
    let c1 = Client::connect(&gw, &c).await;
    assert_eq!(c1.welcome.user, "c");
    // And the limit still holds.
    let r = upgrade_bearer(gw.addr, &token("d", &[], &[], 60)).await;
    r.assert_refused(429, "too_many_connections");
    assert_eq!(gw.metric(&attempts("limited")).await, 3.0);
    assert_eq!(gw.metric(&attempts("ok")).await, 3.0);
}

#[tokio::test]
async fn per_user_connection_limit_is_429_until_a_slot_frees() {
    let gw = Gateway::builder()
        .args(&["--max-connections-per-user", "1"])
        .start()
        .await;
    let alice = token("alice", &[], &[], 60);
    let first = Client::connect(&gw, &alice).await;
    let r = upgrade_bearer(gw.addr, &alice).await;
    r.assert_refused(429, "too_many_connections");
    assert!(r.message().contains("per-user"), "{r:?}");
    // Another user is not affected.
    let _bob = Client::connect(&gw, &token("bob", &[], &[], 60)).await;
    assert_eq!(gw.metric(&attempts("limited")).await, 1.0);

    // Dropping the socket without a close handshake frees the slot too.
    drop(first);
    gw.wait_metric("tidings_connections", |v| v == 1.0).await;
    let again = Client::connect(&gw, &alice).await;
    assert_eq!(again.welcome.user, "alice");
    let r = upgrade_bearer(gw.addr, &alice).await;
    r.assert_refused(429, "too_many_connections");
    assert_eq!(gw.metric(&attempts("limited")).await, 2.0);
    assert_eq!(gw.metric(&attempts("ok")).await, 3.0);
}

#[tokio::test]
async fn draining_node_refuses_upgrades_with_503() {
    let mut gw = Gateway::builder()
        .args(&["--drain-period", "3s"])
        .start()
        .await;
    // This client does not read, so it holds the node in its drain until the
    // server's close handshake times out: a window of seconds for the checks.
    let mut held = Client::connect(&gw, &token("held", &[], &[], 60)).await;
    gw.signal("TERM");
    eventually("readyz to report draining", || async {
        gw.admin_get("/readyz").await.0 == 503
    })
    .await;
    let r = upgrade_bearer(gw.addr, &token("late", &[], &[], 60)).await;
    r.assert_refused(503, "draining");
    // Draining is checked before the token.
    let r = upgrade(gw.addr, "/ws", &[]).await;
    r.assert_refused(503, "draining");
    assert_eq!(gw.metric(&attempts("draining")).await, 2.0);
    assert_eq!(gw.metric(&attempts("unauthorized")).await, 0.0);

    let (code, _) = held.expect_close().await;
    assert_eq!(code, 1001);
    let status = gw.wait_exit(support::WAIT).await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn token_sources_and_tokens_stay_out_of_logs() {
    let gw = Gateway::builder().args(&["--log", "debug"]).start().await;
    let bearer = token("via-bearer", &[], &[], 60);
    let json_proto = token("via-json-protocol", &[], &[], 60);
    let msgpack_proto = token("via-msgpack-protocol", &[], &[], 60);
    let query = token("via-query", &[], &[], 60);
    let mut clients = Vec::new();

    let c = Client::connect_with(&gw, Connect::new(&bearer))
        .await
        .unwrap();
    assert_eq!(c.welcome.user, "via-bearer");
    assert_eq!(c.protocol, None);
    clients.push(c);

    let c = Client::connect_with(
        &gw,
        Connect {
            via: TokenVia::Subprotocol,
            protocols: vec!["tidings.json"],
            ..Connect::new(&json_proto)
        },
    )
    .await
    .unwrap();
    assert_eq!(c.welcome.user, "via-json-protocol");
    assert_eq!(c.protocol.as_deref(), Some("tidings.json"));
    clients.push(c);

    let c = Client::connect_with(
        &gw,
        Connect {
            via: TokenVia::Subprotocol,
            protocols: vec!["tidings.msgpack"],
            ..Connect::new(&msgpack_proto)
        },
    )
    .await
    .unwrap();
    assert_eq!(c.welcome.user, "via-msgpack-protocol");
    assert_eq!(c.protocol.as_deref(), Some("tidings.msgpack"));
    assert_eq!(c.encoding, Encoding::MsgPack);
    clients.push(c);

    let c = Client::connect_with(
        &gw,
        Connect {
            via: TokenVia::Query,
            ..Connect::new(&query)
        },
    )
    .await
    .unwrap();
    assert_eq!(c.welcome.user, "via-query");
    assert_eq!(c.protocol, None);
    clients.push(c);

    // On the wire: exactly `tidings.json` is echoed, whatever the order offered.
    for offer in [
        format!("tidings.token.{json_proto}, tidings.json"),
        format!("tidings.json, tidings.token.{json_proto}"),
        format!("tidings.json,tidings.token.{json_proto}"),
    ] {
        let r = upgrade(gw.addr, "/ws", &[("Sec-WebSocket-Protocol", &offer)]).await;
        assert_eq!(r.status, 101, "{offer}: {r:?}");
        assert_eq!(r.header("sec-websocket-protocol"), Some("tidings.json"));
        assert!(!format!("{r:?}").contains(&json_proto), "{r:?}");
    }
    // The token entry may also come in its own header line.
    let proto_entry = format!("tidings.token.{json_proto}");
    let r = upgrade(
        gw.addr,
        "/ws",
        &[
            ("Sec-WebSocket-Protocol", &proto_entry),
            ("Sec-WebSocket-Protocol", "tidings.json"),
        ],
    )
    .await;
    assert_eq!(r.status, 101, "{r:?}");
    assert_eq!(r.header("sec-websocket-protocol"), Some("tidings.json"));

    // A refused token through each source.
    let expired = hs256(&json!({"sub": "via-expired", "exp": now() - 10}));
    let proto = format!("tidings.token.{expired}, tidings.json");
    for r in [
        upgrade_bearer(gw.addr, &expired).await,
        upgrade(gw.addr, "/ws", &[("Sec-WebSocket-Protocol", &proto)]).await,
        upgrade(gw.addr, &format!("/ws?token={expired}"), &[]).await,
    ] {
        r.assert_refused(401, "unauthorized");
        assert_eq!(r.message(), "token expired");
    }
    assert_eq!(gw.metric(&attempts("ok")).await, 8.0);
    assert_eq!(gw.metric(&attempts("unauthorized")).await, 3.0);

    // Let connections close so their debug lines are logged too.
    for mut c in clients {
        c.ws.close(None).await.unwrap();
    }
    gw.wait_metric("tidings_connections", |v| v == 0.0).await;
    eventually("debug logs of refusals and closes", || async {
        let logs = gw.logs();
        logs.matches("upgrade refused").count() >= 3 && logs.contains("connection closed")
    })
    .await;
    let logs = gw.logs();
    for t in [&bearer, &json_proto, &msgpack_proto, &query, &expired] {
        let signature = t.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(signature),
            "a token reached the logs:\n{logs}"
        );
    }
}

/// A client may send frames right behind its upgrade request, before the 101 comes
/// back; the gateway reads them with the request and must hand them to the
/// WebSocket, not drop them.
#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_not_lost() {
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let gw = Gateway::start().await;
    let tok = token("eager", &["news"], &[], 600);
    let mut bytes = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {tok}\r\n\r\n",
        gw.addr
    )
    .into_bytes();
    // A masked text frame, as a client must send it.
    let payload = br#"{"type":"subscribe","id":1,"channel":"news"}"#;
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));

    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = tokio::time::timeout(support::WAIT, stream.read(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed before the response");
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let rest = head.split_off(end);
    let mut ws = WebSocketStream::from_partially_read(stream, rest, Role::Client, None).await;
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let msg = tokio::time::timeout(support::WAIT, ws.next())
            .await
            .expect("frames in time")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = msg {
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            kinds.push((v["type"].as_str().unwrap_or("").to_owned(), v["ok"].clone()));
        }
    }
    assert_eq!(kinds[0].0, "welcome");
    assert_eq!(kinds[1], ("reply".to_owned(), json!(true)));
    // And the subscription is live.
    let (status, _) = gw
        .publish(json!({"channel": "news", "payload": {"n": 1}}))
        .await;
    assert_eq!(status, 200);
    let msg = tokio::time::timeout(support::WAIT, ws.next())
        .await
        .expect("message in time")
        .expect("open")
        .unwrap();
    assert!(
        msg.to_text().unwrap().contains(r#""channel":"news""#),
        "{msg:?}"
    );
}
