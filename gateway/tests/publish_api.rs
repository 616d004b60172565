//! The HTTP publish API end to end: real gateway processes, real WebSocket clients,
//! plain HTTP requests. Also the public listener's 404s and the admin endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use protocol::Encoding;
use serde_json::{Value, json};
use support::{API_KEY, Client, Connect, Gateway, token};

/// How long a message that should not come is waited for.
const QUIET: Duration = Duration::from_millis(150);

fn auth() -> String {
    format!("Bearer {API_KEY}")
}

/// A request on the public listener with the test API key and a raw body.
async fn post(gw: &Gateway, path: &str, body: &str) -> (u16, Value) {
    let auth = auth();
    let (s, b) = gw
        .http(
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body,
        )
        .await;
    (s, serde_json::from_str(&b).unwrap_or(Value::Null))
}

async fn batch(gw: &Gateway, body: Value) -> (u16, Value) {
    post(gw, "/api/v1/publish/batch", &body.to_string()).await
}

/// Asserts an HTTP error body is exactly `{error, message}` with the given code.
#[track_caller]
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {body}"));
    assert_eq!(obj.len(), 2, "{body}");
    assert_eq!(body["error"], want_code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// A per-item error inside a batch result.
#[track_caller]
fn assert_item_error(item: &Value, want_code: &str) {
    assert_eq!(item["error"], want_code, "{item}");
    assert!(
        item["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{item}"
    );
    assert!(item.get("sessions").is_none(), "{item}");
}

#[tokio::test]
async fn publish_to_user_reaches_every_connection_in_both_encodings() {
    let gw = Gateway::start().await;
    let t = token("alice", &[], &[], 60);
    let mut plain = Client::connect(&gw, &t).await;
    let mut json_c = Client::connect_encoding(&gw, &t, Encoding::Json).await;
    let mut pack = Client::connect_encoding(&gw, &t, Encoding::MsgPack).await;
    assert_eq!(pack.protocol.as_deref(), Some("tidings.msgpack"));
    let mut bob = Client::connect(&gw, &token("bob", &[], &[], 60)).await;

    let (status, body) = gw
        .publish(json!({
            "user": "alice",
            "event": "order.shipped",
            "payload": {"order": 42, "items": ["a", "b"], "price": 9.5, "gift": null},
            "id": "msg-1",
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"], 3, "{body}");
    assert_eq!(body["nodes"], 1, "{body}");

    let want = json!({"order": 42, "items": ["a", "b"], "price": 9.5, "gift": null});
    for c in [&mut plain, &mut json_c, &mut pack] {
        let m = c.message().await;
        assert_eq!(m.channel, "$user:alice", "{:?}", c.encoding);
        assert_eq!(m.event, "order.shipped");
        assert_eq!(m.msg_id.as_deref(), Some("msg-1"));
        assert_eq!(
            m.payload.parse::<Value>().unwrap(),
            want,
            "{:?}",
            c.encoding
        );
        assert!(m.ts > 0);
    }
    bob.no_message_within(QUIET).await;
}

#[tokio::test]
async fn publish_defaults_event_and_omits_msg_id() {
    let gw = Gateway::start().await;
    let mut c = Client::connect(&gw, &token("dee", &[], &[], 60)).await;
    let (status, body) = gw.publish(json!({"user": "dee"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"], 1);
    let m = c.message().await;
    assert_eq!(m.event, "message");
    assert_eq!(m.msg_id, None);
    assert_eq!(m.payload.json(), "null");

    let (status, body) = gw
        .publish(json!({"user": "dee", "payload": "text", "id": "abc-123"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let m = c.message().await;
    assert_eq!(m.event, "message");
    assert_eq!(m.msg_id.as_deref(), Some("abc-123"));
    assert_eq!(m.payload.json(), r#""text""#);
}

#[tokio::test]
async fn publish_to_user_nobody_is_connected_as() {
    let gw = Gateway::start().await;
    let mut c = Client::connect(&gw, &token("here", &[], &[], 60)).await;
    let (status, body) = gw.publish(json!({"user": "away"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"], 0);
    assert_eq!(body["nodes"], 0);
    c.no_message_within(QUIET).await;
}

#[tokio::test]
async fn publish_to_several_users() {
    let gw = Gateway::start().await;
    let mut u1a = Client::connect(&gw, &token("u1", &[], &[], 60)).await;
    let mut u1b =
        Client::connect_encoding(&gw, &token("u1", &[], &[], 60), Encoding::MsgPack).await;
    let mut u2 = Client::connect(&gw, &token("u2", &[], &[], 60)).await;
    let mut u3 = Client::connect(&gw, &token("u3", &[], &[], 60)).await;
    let (status, body) = gw
        .publish(json!({"users": ["u1", "u2", "nobody"], "event": "ping.all", "payload": [1]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"], 3, "{body}");
    for (c, user) in [(&mut u1a, "u1"), (&mut u1b, "u1"), (&mut u2, "u2")] {
        let m = c.message().await;
        assert_eq!(m.channel, format!("$user:{user}"));
        assert_eq!(m.event, "ping.all");
        assert_eq!(m.payload.parse::<Value>().unwrap(), json!([1]));
    }
    u3.no_message_within(QUIET).await;
}

#[tokio::test]
async fn publish_to_channel_and_channels() {
    let gw = Gateway::start().await;
    let mut a = Client::connect(&gw, &token("a", &["*"], &[], 60)).await;
    let mut b =
        Client::connect_encoding(&gw, &token("b", &["*"], &[], 60), Encoding::MsgPack).await;
    let mut idle = Client::connect(&gw, &token("idle", &["*"], &[], 60)).await;
    assert!(a.subscribe("news").await.ok);
    assert!(a.subscribe("room:1").await.ok);
    assert!(b.subscribe("news").await.ok);
    assert!(idle.subscribe("other").await.ok);

    let (status, body) = gw
        .publish(json!({"channel": "news", "event": "created", "payload": {"n": 1}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"], 2, "{body}");
    for c in [&mut a, &mut b] {
        let m = c.message().await;
        assert_eq!((m.channel.as_str(), m.event.as_str()), ("news", "created"));
        assert_eq!(m.payload.parse::<Value>().unwrap(), json!({"n": 1}));
    }

    let (status, body) = gw
        .publish(json!({"channels": ["news", "room:1", "empty"], "id": "m2"}))
        .await;
    assert_eq!(status, 200, "{body}");
    // a holds news and room:1, b holds news.
    assert_eq!(body["sessions"], 3, "{body}");
    let mut got: Vec<String> = Vec::new();
    for _ in 0..2 {
        let m = a.message().await;
        assert_eq!(m.msg_id.as_deref(), Some("m2"));
        got.push(m.channel);
    }
    got.sort();
    assert_eq!(got, ["news", "room:1"]);
    let m = b.message().await;
    assert_eq!(m.channel, "news");
    assert_eq!(m.msg_id.as_deref(), Some("m2"));
    a.no_message_within(QUIET).await;
    b.no_message_within(QUIET).await;
    idle.no_message_within(QUIET).await;
}

#[tokio::test]
async fn broadcast_reaches_everyone() {
    let gw = Gateway::start().await;
    let mut clients = vec![
        Client::connect(&gw, &token("x", &[], &[], 60)).await,
        Client::connect(&gw, &token("y", &[], &[], 60)).await,
        Client::connect_encoding(&gw, &token("z", &[], &[], 60), Encoding::MsgPack).await,
    ];
    let (status, body) = gw
        .publish(json!({"broadcast": true, "event": "maintenance", "payload": {"in": "5m"}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"], 3, "{body}");
    for c in &mut clients {
        let m = c.message().await;
        assert_eq!(m.channel, "$broadcast");
        assert_eq!(m.event, "maintenance");
        assert_eq!(m.payload.parse::<Value>().unwrap(), json!({"in": "5m"}));
    }
}

#[tokio::test]
async fn batch_returns_one_result_per_message() {
    let gw = Gateway::builder()
        .args(&["--max-payload-size", "256"])
        .start()
        .await;
    let mut a = Client::connect(&gw, &token("a", &["news"], &[], 60)).await;
    let mut b = Client::connect(&gw, &token("b", &[], &[], 60)).await;
    assert!(a.subscribe("news").await.ok);
    let (status, body) = batch(
        &gw,
        json!({"messages": [
            {"user": "a", "event": "first", "id": "1"},
            {"user": "a b"},
            {"channel": "news", "event": "second"},
            {"user": "a", "channel": "news"},
            {"users": ["a", "b"], "event": "third"},
            {"channel": "news", "payload": "x".repeat(300)},
            {"broadcast": true, "event": "fourth"},
            {"user": "b", "event": "bad event!"},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 8, "{body}");
    assert_eq!(results[0]["sessions"], 1, "{body}");
    assert_item_error(&results[1], "bad_request");
    assert_eq!(results[2]["sessions"], 1, "{body}");
    assert_item_error(&results[3], "bad_request");
    assert_eq!(results[4]["sessions"], 2, "{body}");
    assert_item_error(&results[5], "payload_too_large");
    assert_eq!(results[6]["sessions"], 2, "{body}");
    assert_item_error(&results[7], "bad_request");

    // The good items were delivered, in order; the bad ones were not.
    let seen: Vec<(String, String)> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            let m = a.message().await;
            v.push((m.channel, m.event));
        }
        v
    };
    let seen: Vec<(&str, &str)> = seen.iter().map(|(c, e)| (c.as_str(), e.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("$user:a", "first"),
            ("news", "second"),
            ("$user:a", "third"),
            ("$broadcast", "fourth"),
        ]
    );
    for want in ["third", "fourth"] {
        assert_eq!(b.message().await.event, want);
    }
    a.no_message_within(QUIET).await;
    b.no_message_within(QUIET).await;
}

#[tokio::test]
async fn bad_requests_get_400_json() {
    let gw = Gateway::start().await;
    let long = "c".repeat(129);
    let cases: Vec<(&str, String)> = vec![
        ("invalid JSON", "{\"user\": ".into()),
        ("not an object", "[1, 2]".into()),
        ("empty body", String::new()),
        ("no target", json!({"event": "e"}).to_string()),
        (
            "two targets",
            json!({"user": "a", "channel": "b"}).to_string(),
        ),
        (
            "broadcast and user",
            json!({"broadcast": true, "user": "a"}).to_string(),
        ),
        ("broadcast false", json!({"broadcast": false}).to_string()),
        ("invalid user", json!({"user": "a b"}).to_string()),
        ("empty user", json!({"user": ""}).to_string()),
        (
            "invalid user in list",
            json!({"users": ["ok", "no way"]}).to_string(),
        ),
        ("empty user list", json!({"users": []}).to_string()),
        (
            "invalid channel",
            json!({"channel": "bad name!"}).to_string(),
        ),
        ("channel too long", json!({"channel": long}).to_string()),
        ("wildcard channel", json!({"channel": "room:*"}).to_string()),
        ("$user channel", json!({"channel": "$user:bob"}).to_string()),
        (
            "$broadcast channel",
            json!({"channel": "$broadcast"}).to_string(),
        ),
        (
            "$ channel in list",
            json!({"channels": ["news", "$user:bob"]}).to_string(),
        ),
        ("empty channel list", json!({"channels": []}).to_string()),
        (
            "unknown field",
            json!({"user": "a", "priority": "high"}).to_string(),
        ),
        (
            "invalid event",
            json!({"user": "a", "event": "a b"}).to_string(),
        ),
        ("empty event", json!({"user": "a", "event": ""}).to_string()),
        ("empty id", json!({"user": "a", "id": ""}).to_string()),
        (
            "id too long",
            json!({"user": "a", "id": "i".repeat(129)}).to_string(),
        ),
        ("wrong type", json!({"user": 5}).to_string()),
    ];
    let mut c = Client::connect(&gw, &token("a", &[], &[], 60)).await;
    for (what, body) in &cases {
        let (status, resp) = post(&gw, "/api/v1/publish", body).await;
        assert_eq!(status, 400, "{what}: {resp}");
        assert_error(status, &resp, 400, "bad_request");
    }
    // Nothing reached the user named in the refused requests.
    c.no_message_within(QUIET).await;
}

#[tokio::test]
async fn bad_batches_get_400_json() {
    let gw = Gateway::start().await;
    let one = json!({"broadcast": true});
    let cases: Vec<(&str, String)> = vec![
        ("invalid JSON", "{\"messages\": [".into()),
        ("empty batch", json!({"messages": []}).to_string()),
        (
            "oversize batch",
            json!({"messages": vec![one.clone(); 101]}).to_string(),
        ),
        ("no messages field", json!({}).to_string()),
        (
            "unknown top-level field",
            json!({"messages": [one.clone()], "extra": 1}).to_string(),
        ),
        (
            "unknown field in an item",
            json!({"messages": [{"broadcast": true, "nope": 1}]}).to_string(),
        ),
        ("a bare publish request", one.to_string()),
    ];
    let mut c = Client::connect(&gw, &token("a", &[], &[], 60)).await;
    for (what, body) in &cases {
        let (status, resp) = post(&gw, "/api/v1/publish/batch", body).await;
        assert_eq!(status, 400, "{what}: {resp}");
        assert_error(status, &resp, 400, "bad_request");
    }
    c.no_message_within(QUIET).await;

    // The largest batch allowed goes through.
    let (status, body) = batch(&gw, json!({"messages": vec![one; 100]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 100);
    for _ in 0..100 {
        assert_eq!(c.message().await.channel, "$broadcast");
    }
}

#[tokio::test]
async fn api_key_is_required() {
    let gw = Gateway::start().await;
    let mut c = Client::connect(&gw, &token("a", &[], &[], 60)).await;
    let body = json!({"user": "a"}).to_string();
    let wrong = format!("Bearer {API_KEY}x");
    let prefix = format!("Bearer {}", &API_KEY[..API_KEY.len() - 1]);
    let basic = format!("Basic {API_KEY}");
    let bare = API_KEY.to_string();
    let client_jwt = format!("Bearer {}", token("a", &[], &[], 60));
    let headers: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no Authorization header", vec![]),
        ("wrong key", vec![("Authorization", &wrong)]),
        ("prefix of the key", vec![("Authorization", &prefix)]),
        ("Basic scheme", vec![("Authorization", &basic)]),
        ("no scheme", vec![("Authorization", &bare)]),
        ("empty bearer", vec![("Authorization", "Bearer ")]),
        ("a client JWT", vec![("Authorization", &client_jwt)]),
    ];
    for path in ["/api/v1/publish", "/api/v1/publish/batch"] {
        for (what, h) in &headers {
            let (status, resp) = gw.http("POST", path, h, &body).await;
            let resp: Value = serde_json::from_str(&resp).unwrap_or(Value::Null);
            assert_eq!(status, 401, "{path} {what}: {resp}");
            assert_error(status, &resp, 401, "unauthorized");
        }
    }
    c.no_message_within(QUIET).await;
    // The scheme is case-insensitive.
    let lower = format!("bearer {API_KEY}");
    let (status, resp) = gw
        .http(
            "POST",
            "/api/v1/publish",
            &[("Authorization", &lower)],
            &body,
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    c.message().await;
}

#[tokio::test]
async fn several_api_keys_are_each_accepted() {
    let other = "second-api-key-abcdef";
    let gw = Gateway::builder()
        .args(&["--api-keys", other])
        .start()
        .await;
    for key in [API_KEY, other] {
        let auth = format!("Bearer {key}");
        let (status, resp) = gw
            .http(
                "POST",
                "/api/v1/publish",
                &[("Authorization", &auth)],
                &json!({"broadcast": true}).to_string(),
            )
            .await;
        assert_eq!(status, 200, "{key}: {resp}");
    }
}

#[tokio::test]
async fn only_post_is_allowed() {
    let gw = Gateway::start().await;
    let auth = auth();
    for path in ["/api/v1/publish", "/api/v1/publish/batch"] {
        for method in ["GET", "PUT", "DELETE"] {
            let (status, resp) = gw.http(method, path, &[("Authorization", &auth)], "").await;
            let resp: Value = serde_json::from_str(&resp).unwrap_or(Value::Null);
            assert_eq!(status, 405, "{method} {path}: {resp}");
            assert_error(status, &resp, 405, "method_not_allowed");
        }
        let head = response_head(gw.addr, "GET", path).await;
        assert!(head.starts_with("HTTP/1.1 405"), "{head}");
        assert!(
            head.lines().any(|l| l.eq_ignore_ascii_case("allow: POST")),
            "a 405 must carry Allow: {head}"
        );
    }
}

/// The status line and headers of a bodiless request's response.
async fn response_head(addr: SocketAddr, method: &str, path: &str) -> String {
    let text = testkit::gateway::http_exchange(addr, method, path, &[], "").await;
    text.split_once("\r\n\r\n")
        .map(|(h, _)| h.to_owned())
        .unwrap_or(text)
}

#[tokio::test]
async fn payload_over_the_limit_gets_413() {
    let gw = Gateway::builder()
        .args(&["--max-payload-size", "1024"])
        .start()
        .await;
    let mut c = Client::connect(&gw, &token("a", &[], &[], 60)).await;
    // The payload's JSON text is measured: a 1022-character string is 1024 bytes.
    let (status, body) = gw
        .publish(json!({"user": "a", "payload": "x".repeat(1022)}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.message().await.payload.len(), 1024);
    let (status, body) = gw
        .publish(json!({"user": "a", "payload": "x".repeat(1023)}))
        .await;
    assert_error(status, &body, 413, "payload_too_large");
    let (status, body) = gw
        .publish(json!({"user": "a", "payload": {"list": vec![12345; 300]}}))
        .await;
    assert_error(status, &body, 413, "payload_too_large");
    c.no_message_within(QUIET).await;

    // The body itself may hold the payload limit plus 16 KiB of request fields:
    // one byte more is refused while reading (the whole body is sent and read, so
    // the server closes cleanly). Valid JSON, so it is 413 whichever check fires.
    let limit = 1024 + 16 * 1024;
    let head = r#"{"user":"a","payload":""#;
    let tail = r#""}"#;
    let big = format!(
        "{head}{}{tail}",
        "y".repeat(limit + 1 - head.len() - tail.len())
    );
    assert_eq!(big.len(), limit + 1);
    let (status, body) = post(&gw, "/api/v1/publish", &big).await;
    assert_error(status, &body, 413, "payload_too_large");
    assert!(
        body["message"].as_str().unwrap().contains("body is larger"),
        "{body}"
    );
    c.no_message_within(QUIET).await;
}

#[tokio::test]
async fn without_api_keys_the_api_is_not_found() {
    let gw = Gateway::builder()
        .unset("--api-keys")
        .node("keyless")
        .start()
        .await;
    for path in ["/api/v1/publish", "/api/v1/publish/batch"] {
        let auth = auth();
        let (status, resp) = support::http_request(
            gw.addr,
            "POST",
            path,
            &[("Authorization", &auth)],
            &json!({"broadcast": true}).to_string(),
        )
        .await;
        let resp: Value = serde_json::from_str(&resp).unwrap_or(Value::Null);
        assert_error(status, &resp, 404, "not_found");
        let (status, resp) = support::http_request(
            gw.addr,
            "POST",
            path,
            &[],
            &json!({"broadcast": true}).to_string(),
        )
        .await;
        let resp: Value = serde_json::from_str(&resp).unwrap_or(Value::Null);
        assert_error(status, &resp, 404, "not_found");
    }
}

#[tokio::test]
async fn unknown_public_paths_get_404_json() {
    let gw = Gateway::start().await;
    let auth = auth();
    // (`GET /` answers where things are; see startup.rs.)
    for (method, path) in [
        ("GET", "/nope"),
        ("POST", "/api/v1/publish/"),
        ("POST", "/api/v1/publishx"),
        ("POST", "/api/v2/publish"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
    ] {
        let (status, resp) = gw.http(method, path, &[("Authorization", &auth)], "").await;
        let resp: Value = serde_json::from_str(&resp).unwrap_or(Value::Null);
        assert_error(status, &resp, 404, "not_found");
    }
}

#[tokio::test]
async fn admin_endpoints() {
    let gw = Gateway::start().await;
    let (status, body) = gw.admin_get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ok"
    );
    let (status, body) = gw.admin_get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["status"],
        "ready"
    );
    let (status, body) = gw.admin_get("/nope").await;
    assert_error(
        status,
        &serde_json::from_str(&body).unwrap_or(Value::Null),
        404,
        "not_found",
    );

    let _c = Client::connect(&gw, &token("m", &[], &[], 60)).await;
    let metrics = gw.metrics().await;
    assert!(metrics.contains("tidings_connections"), "{metrics}");
    gw.wait_metric("tidings_connections", |v| v == 1.0).await;
    let (status, _) = gw.publish(json!({"user": "m"})).await;
    assert_eq!(status, 200);
    gw.wait_metric("tidings_published_total{source=\"api\"}", |v| v == 1.0)
        .await;
}

#[tokio::test]
async fn api_publish_reaches_clients_that_used_other_token_transports() {
    let gw = Gateway::start().await;
    let t = token("t", &["news"], &[], 60);
    let mut via_proto = Client::connect_with(
        &gw,
        Connect {
            token: Some(&t),
            via: support::TokenVia::Subprotocol,
            protocols: vec!["tidings.msgpack"],
            headers: vec![],
            query: None,
        },
    )
    .await
    .unwrap();
    let mut via_query = Client::connect_with(
        &gw,
        Connect {
            token: Some(&t),
            via: support::TokenVia::Query,
            protocols: vec![],
            headers: vec![],
            query: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(via_proto.protocol.as_deref(), Some("tidings.msgpack"));
    assert!(via_proto.subscribe("news").await.ok);
    assert!(via_query.subscribe("news").await.ok);
    let (status, body) = gw
        .publish(json!({"channel": "news", "payload": {"k": [true, false]}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"], 2);
    for c in [&mut via_proto, &mut via_query] {
        let m = c.message().await;
        assert_eq!(
            m.payload.parse::<Value>().unwrap(),
            json!({"k": [true, false]})
        );
    }
}
