//! The machine-readable contracts in docs/api against their standard validators and a
//! running gateway:
//!
//! - openapi.yaml (OpenAPI 3.1) and asyncapi.yaml (AsyncAPI 3) pass
//!   @apidevtools/swagger-parser and @asyncapi/parser (docs/api/validate.mjs), and
//!   broken copies of them do not;
//! - every OpenAPI response (and every example in it) is replayed as its `x-replay`
//!   says, and the gateway answers with that status, the example's JSON shape and its
//!   `error` / `status` value;
//! - every AsyncAPI client frame example is sent in both encodings and gets the reply
//!   its `x-replay` expects; every server frame example decodes with the protocol crate
//!   (JSON and MessagePack) and has the fields of a frame the gateway really sent in
//!   its scenario; error codes and close codes equal the protocol crate's.
//!
//! Needs Node >= 20 and docs/api's npm packages (scripts/preflight runs npm ci there).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use futures_util::{SinkExt, StreamExt};
use protocol::frame::{ServerFrame, decode_client, decode_server};
use protocol::{Encoding, ErrorCode};
use serde_json::{Value, json};
use support::{API_KEY, Client, Gateway, WAIT, eventually, token, token_with};
use testkit::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs docs/api/validate.mjs on the given files (default: the committed ones).
fn validate(files: &[&Path]) -> std::process::Output {
    let dir = repo().join("docs/api");
    assert!(
        dir.join("node_modules/@asyncapi/parser").exists(),
        "docs/api has no node_modules: run scripts/preflight (it runs npm ci there)"
    );
    Command::new("node")
        .current_dir(&dir)
        .arg("validate.mjs")
        .args(files)
        .output()
        .expect("node must be installed (Node >= 20): run scripts/preflight")
}

fn specs() -> Value {
    let out = validate(&[]);
    assert!(
        out.status.success(),
        "docs/api specs are invalid:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn specs_pass_their_validators_and_broken_ones_do_not() {
    let s = specs();
    assert_eq!(s["openapi"]["openapi"], "3.1.0");
    assert_eq!(s["asyncapiRaw"]["asyncapi"], "3.0.0");
    let dir = std::env::temp_dir().join(format!("tidings-specs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let api = repo().join("docs/api");
    let openapi = std::fs::read_to_string(api.join("openapi.yaml")).unwrap();
    let asyncapi = std::fs::read_to_string(api.join("asyncapi.yaml")).unwrap();
    let bad_open = dir.join("openapi.yaml");
    std::fs::write(
        &bad_open,
        openapi.replacen("openapi: 3.1.0", "openapi: 3.1.0\nbogus: 1", 1),
    )
    .unwrap();
    let out = validate(&[&bad_open]);
    assert!(!out.status.success(), "a broken openapi.yaml passed");
    let bad_async = dir.join("asyncapi.yaml");
    std::fs::write(
        &bad_async,
        asyncapi.replacen("action: receive", "action: listen", 1),
    )
    .unwrap();
    let out = validate(&[&api.join("openapi.yaml"), &bad_async]);
    assert!(!out.status.success(), "a broken asyncapi.yaml passed");
    let _ = std::fs::remove_dir_all(&dir);
}

// --- HTTP -----------------------------------------------------------------------------

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`). For a `101` it
/// returns as soon as the response head is read.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // A refused request may be answered before the whole body is read.
    let _ = s.write_all(body).await;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("HTTP answer timed out")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.starts_with(b"HTTP/1.1 101") && buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Same JSON shape: the same keys in objects (recursively, except inside `payload`),
/// the same JSON types, arrays element by element; `error`, `status` and `code`
/// values must be equal.
fn same_shape(want: &Value, got: &Value, at: &str, problems: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            let wk: BTreeSet<&String> = w.keys().collect();
            let gk: BTreeSet<&String> = g.keys().collect();
            if wk != gk {
                problems.push(format!(
                    "{at}: keys {wk:?} in the example, {gk:?} from the gateway"
                ));
                return;
            }
            for (k, wv) in w {
                if k == "payload" {
                    continue;
                }
                let gv = &g[k];
                if ["error", "status", "code", "type"].contains(&k.as_str())
                    && wv.is_string()
                    && wv != gv
                {
                    problems.push(format!("{at}.{k}: example {wv}, gateway {gv}"));
                }
                same_shape(wv, gv, &format!("{at}.{k}"), problems);
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                problems.push(format!(
                    "{at}: {} items in the example, {} from the gateway",
                    w.len(),
                    g.len()
                ));
                return;
            }
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                same_shape(wv, gv, &format!("{at}[{i}]"), problems);
            }
        }
        (w, g) => {
            let kind = |v: &Value| match v {
                Value::Null => "null",
                Value::Bool(_) => "bool",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
            };
            if kind(w) != kind(g) {
                problems.push(format!(
                    "{at}: {} in the example, {} from the gateway ({g})",
                    kind(w),
                    kind(g)
                ));
            }
        }
    }
}

/// Gateways in the configurations the replays ask for, started on first use.
#[derive(Default)]
struct Fleet {
    gateways: HashMap<String, Gateway>,
    /// A gateway without API keys.
    bare: Option<Gateway>,
    redis: Vec<RedisServer>,
    /// Connections held open (per-user limit, a drain that must not end early).
    held: Vec<Client>,
}

impl Fleet {
    /// Public and admin address of the gateway of this kind.
    async fn addrs(&mut self, kind: &str) -> (SocketAddr, SocketAddr) {
        if kind == "no-api-keys" {
            if self.bare.is_none() {
                self.bare = Some(Gateway::builder().unset("--api-keys").start().await);
            }
            let b = self.bare.as_ref().unwrap();
            return (b.addr, b.admin);
        }
        let gw = self.get(kind).await;
        (gw.addr, gw.admin)
    }

    async fn get(&mut self, kind: &str) -> &Gateway {
        if !self.gateways.contains_key(kind) {
            let gw = match kind {
                "memory" => Gateway::start().await,
                "redis" | "redis-down" => {
                    let redis = RedisServer::start().await;
                    let gw = Gateway::builder()
                        .redis(&redis, kind)
                        .args(&["--presence", "room:*"])
                        .start()
                        .await;
                    eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
                    self.redis.push(redis);
                    if kind == "redis-down" {
                        self.redis.last_mut().unwrap().kill();
                        eventually("unready", || async {
                            gw.admin_get("/readyz").await.0 == 503
                        })
                        .await;
                    }
                    gw
                }
                "small-payload" => {
                    Gateway::builder()
                        .args(&["--max-payload-size", "256"])
                        .start()
                        .await
                }
                "demo" => Gateway::builder().args(&["--demo"]).start().await,
                "presence" => self.presence().await,
                // Conditional publishes need a channel with history.
                "history" => {
                    Gateway::builder()
                        .args(&["--history", "$user:* 100 24h,doc:* 1000 1h"])
                        .start()
                        .await
                }
                "origins" => {
                    Gateway::builder()
                        .args(&["--allowed-origins", "https://app.example"])
                        .start()
                        .await
                }
                "one-per-user" => {
                    Gateway::builder()
                        .args(&["--max-connections-per-user", "1"])
                        .start()
                        .await
                }
                "draining" => {
                    let gw = Gateway::builder()
                        .args(&["--drain-period", "60s"])
                        .start()
                        .await;
                    for i in 0..20 {
                        let c =
                            Client::connect(&gw, &token(&format!("held{i}"), &[], &[], 300)).await;
                        self.held.push(c);
                    }
                    gw.signal("TERM");
                    eventually("draining", || async {
                        gw.admin_get("/readyz").await.0 == 503
                    })
                    .await;
                    gw
                }
                other => panic!("x-replay names an unknown gateway `{other}`"),
            };
            self.gateways.insert(kind.to_owned(), gw);
        }
        &self.gateways[kind]
    }
}

impl Fleet {
    /// A gateway with presence on `room:*`: alice (two connections) and bob in
    /// `room:42`, all with `info`; carol connected and left (offline, last seen).
    async fn presence(&mut self) -> Gateway {
        let gw = Gateway::builder()
            .args(&["--presence", "room:* events"])
            .start()
            .await;
        for (user, name) in [("alice", "Alice"), ("alice", "Alice"), ("bob", "Bob")] {
            let tok = token_with(user, &["room:*"], &[], Some(json!({ "name": name })));
            let mut c = Client::connect(&gw, &tok).await;
            assert!(c.subscribe("room:42").await.ok);
            self.held.push(c);
        }
        drop(Client::connect(&gw, &token_with("carol", &[], &[], None)).await);
        eventually("room:42 listed and carol offline", || async {
            let (_, stats) = gw
                .post_api("/api/v1/presence/stats", r#"{"channel":"room:42"}"#)
                .await;
            let (_, online) = gw
                .post_api("/api/v1/online", r#"{"users":["carol"]}"#)
                .await;
            let stats: Value = serde_json::from_str(&stats).unwrap_or_default();
            let online: Value = serde_json::from_str(&online).unwrap_or_default();
            let carol = &online["users"][0];
            stats["clients"] == 3 && carol["online"] == false && carol["last_seen"].is_u64()
        })
        .await;
        gw
    }
}

/// Performs one `x-replay` of an operation; returns the answer.
async fn replay(fleet: &mut Fleet, op: &Value, path: &str, method: &str, r: &Value) -> Answer {
    let kind = r["gateway"].as_str().unwrap_or("memory");
    let path = r["path"].as_str().unwrap_or(path).to_owned();
    let method = r["method"].as_str().unwrap_or(method).to_uppercase();
    let mut headers: Vec<(String, String)> = Vec::new();
    if r["upgrade"] == true {
        if r["twice"] == true {
            let gw = fleet.get(kind).await;
            let c = Client::connect(gw, &token("twice", &[], &[], 300)).await;
            fleet.held.push(c);
        }
        for (k, v) in [
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "tidings.json"),
        ] {
            headers.push((k.into(), v.into()));
        }
        if r["token"] != "none" {
            headers.push((
                "Authorization".into(),
                format!("Bearer {}", token("twice", &["news"], &[], 300)),
            ));
        }
        if let Some(o) = r["origin"].as_str() {
            headers.push(("Origin".into(), o.into()));
        }
    } else if path.starts_with("/api/") {
        let key = if r["auth"] == "wrong" {
            "wrong-key-0123456789".to_owned()
        } else {
            API_KEY.to_owned()
        };
        headers.push(("Authorization".into(), format!("Bearer {key}")));
        headers.push(("Content-Type".into(), "application/json".into()));
    }
    if let Some(n) = r["extra_headers"].as_u64() {
        for i in 0..n {
            headers.push((format!("X-Extra-{i}"), "x".into()));
        }
    }
    let mut body: Vec<u8> = if let Some(name) = r["request"].as_str() {
        let ex = &op["requestBody"]["content"]["application/json"]["examples"][name]["value"];
        assert!(
            !ex.is_null(),
            "x-replay names request example `{name}`, which {method} {path} lacks"
        );
        ex.to_string().into_bytes()
    } else if let Some(b) = r.get("body") {
        b.to_string().into_bytes()
    } else if let Some(n) = r["body_bytes"].as_u64() {
        // Valid JSON of exactly n bytes (one over a body limit: the server reads it
        // all and closes cleanly).
        let (head, tail) = (r#"{"user":"alice","payload":""#, r#""}"#);
        format!(
            "{head}{}{tail}",
            "x".repeat(n as usize - head.len() - tail.len())
        )
        .into_bytes()
    } else {
        Vec::new()
    };
    let (public, admin) = fleet.addrs(kind).await;
    let addr = if r["admin"] == true { admin } else { public };
    // `cursor_from: <request example>`: that request first, then this one with the
    // `cursor` of its answer (the page after it).
    if let Some(first) = r["cursor_from"].as_str() {
        let ex = &op["requestBody"]["content"]["application/json"]["examples"][first]["value"];
        assert!(!ex.is_null(), "x-replay: no request example `{first}`");
        let a = request(addr, &method, &path, &headers, ex.to_string().as_bytes()).await;
        let answer: Value = serde_json::from_str(&a.body).unwrap_or_default();
        let cursor = answer["cursor"].clone();
        assert!(
            cursor.is_string(),
            "x-replay: `{first}` gave no cursor: {}",
            a.body
        );
        let mut next: Value = serde_json::from_slice(&body).unwrap();
        next["cursor"] = cursor;
        body = next.to_string().into_bytes();
    }
    let mut answer = request(addr, &method, &path, &headers, &body).await;
    if r["repeat"] == true {
        answer = request(addr, &method, &path, &headers, &body).await;
    }
    answer
}

#[tokio::test]
async fn openapi_examples_replay_against_gateways() {
    let s = specs();
    let mut fleet = Fleet::default();
    let mut problems = Vec::new();
    let mut replays = 0;
    for (path, item) in s["openapi"]["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(responses) = op["responses"].as_object() else {
                continue;
            };
            for (status, resp) in responses {
                let status: u16 = status.parse().unwrap();
                let what = format!("{} {path} {status}", method.to_uppercase());
                let mut cases: Vec<(String, Value, Option<Value>)> = Vec::new();
                if let Some(r) = resp.get("x-replay") {
                    cases.push((what.clone(), r.clone(), None));
                }
                for (ct, media) in resp["content"].as_object().into_iter().flatten() {
                    for (name, ex) in media["examples"].as_object().into_iter().flatten() {
                        let Some(r) = ex.get("x-replay") else {
                            problems.push(format!("{what} {ct} example `{name}` has no x-replay"));
                            continue;
                        };
                        cases.push((
                            format!("{what} `{name}`"),
                            r.clone(),
                            Some(ex["value"].clone()),
                        ));
                    }
                }
                if cases.is_empty() {
                    problems.push(format!(
                        "{what}: no x-replay (neither on the response nor on an example)"
                    ));
                }
                for (label, r, value) in cases {
                    replays += 1;
                    let a = replay(&mut fleet, op, path, method, &r).await;
                    if a.status != status {
                        problems.push(format!(
                            "{label}: the gateway answered {} {}",
                            a.status, a.body
                        ));
                        continue;
                    }
                    if let Some(want) = value {
                        match serde_json::from_str::<Value>(&a.body) {
                            Ok(got) => same_shape(&want, &got, &label, &mut problems),
                            Err(e) => problems
                                .push(format!("{label}: body is not JSON ({e}): {}", a.body)),
                        }
                    }
                    let ct = a.header("content-type").unwrap_or("");
                    for (declared, _) in resp["content"].as_object().into_iter().flatten() {
                        if !ct.starts_with(declared.as_str()) {
                            problems.push(format!(
                                "{label}: content-type `{ct}`, the spec says {declared}"
                            ));
                        }
                    }
                    if let Some(h) = resp["headers"].as_object() {
                        for name in h.keys() {
                            if a.header(name).is_none() {
                                problems.push(format!("{label}: no {name} header"));
                            }
                        }
                    }
                    if status == 431 && !a.body.is_empty() {
                        problems.push(format!("{label}: 431 with a body: {}", a.body));
                    }
                }
            }
        }
    }
    assert!(replays >= 25, "only {replays} replays");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// --- WebSocket --------------------------------------------------------------------------

const CLIENT_TYPES: [&str; 9] = [
    "subscribe",
    "unsubscribe",
    "publish",
    "refresh",
    "ack",
    "history",
    "presence",
    "presence_stats",
    "pong",
];
const SERVER_TYPES: [&str; 5] = ["welcome", "message", "reply", "presence_diff", "ping"];

/// The JSON examples of every component message that is not a `*Msgpack` twin, with
/// the message's `x-replay` entry for each.
fn frame_examples(s: &Value) -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    for (key, msg) in s["asyncapiRaw"]["components"]["messages"]
        .as_object()
        .unwrap()
    {
        if key.ends_with("Msgpack") {
            continue;
        }
        for ex in msg["examples"].as_array().unwrap() {
            let name = ex["name"].as_str().unwrap().to_owned();
            let r = msg["x-replay"][&name].clone();
            assert!(
                !r.is_null(),
                "message {key}, example {name}: no x-replay entry"
            );
            out.push((format!("{key}/{name}"), ex["payload"].clone(), r));
        }
    }
    out
}

#[test]
fn asyncapi_codes_equal_the_protocol_crate() {
    let s = specs();
    let raw = &s["asyncapiRaw"];
    // Error codes: the enum equals the crate's (every code but `unknown`).
    let enum_codes: BTreeSet<String> = raw["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for c in &enum_codes {
        let code: ErrorCode = serde_json::from_value(json!(c)).unwrap();
        assert_ne!(
            code,
            ErrorCode::Unknown,
            "asyncapi.yaml lists unknown error code {c}"
        );
    }
    let src = std::fs::read_to_string(repo().join("protocol/src/error.rs")).unwrap();
    let crate_codes: BTreeSet<String> = src
        .lines()
        .filter(|l| l.trim().starts_with("ErrorCode::") && l.contains("=> \""))
        .map(|l| {
            l.split("=> \"")
                .nth(1)
                .unwrap()
                .trim_end_matches(['"', ','])
                .to_owned()
        })
        .filter(|c| c != "unknown")
        .collect();
    assert_eq!(
        enum_codes, crate_codes,
        "ErrorCode enum in asyncapi.yaml vs protocol crate"
    );

    // Close codes, on both channels: names and what to do, from protocol::close.
    let src = std::fs::read_to_string(repo().join("protocol/src/close.rs")).unwrap();
    let crate_close: BTreeSet<u16> = src
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("pub const ")?
                .split_once(": u16 = ")
                .map(|(_, v)| v.trim_end_matches(';').parse().unwrap())
        })
        .collect();
    for ch in ["json", "msgpack"] {
        let list = raw["channels"][ch]["x-close-codes"].as_array().unwrap();
        let mut codes = BTreeSet::new();
        for c in list {
            let code = c["code"].as_u64().unwrap() as u16;
            codes.insert(code);
            assert_eq!(c["name"], protocol::close::name(code), "{ch}: close {code}");
            let want = if protocol::close::needs_new_token(code) {
                "new-token"
            } else if protocol::close::should_reconnect(code) {
                "yes"
            } else {
                "no"
            };
            assert_eq!(c["reconnect"], want, "{ch}: close {code}");
        }
        assert_eq!(codes, crate_close, "{ch}: x-close-codes vs protocol::close");
    }
    // Every frame type of the crate has a message on both channels.
    for ch in ["json", "msgpack"] {
        let names: BTreeSet<&str> = raw["channels"][ch]["messages"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for t in CLIENT_TYPES.iter().chain(&SERVER_TYPES) {
            assert!(names.contains(t), "channel {ch} lacks the {t} frame");
        }
    }
}

#[tokio::test]
async fn asyncapi_client_frames_are_answered_in_both_encodings() {
    let s = specs();
    let examples: Vec<_> = frame_examples(&s)
        .into_iter()
        .filter(|(_, p, _)| CLIENT_TYPES.contains(&p["type"].as_str().unwrap()))
        .collect();
    assert!(examples.len() >= CLIENT_TYPES.len());
    for enc in [Encoding::Json, Encoding::MsgPack] {
        // A gateway per encoding: the examples change what they act on (a conditional
        // publish moves its channel), and each encoding gets the same answers.
        let gw = Gateway::builder()
            .args(&["--history", "$user:* 100 24h,room:* 100 1h,doc:* 1000 1h"])
            .args(&["--presence", "room:* events"])
            .start()
            .await;
        // Something on alice's personal channel, so that `ack` has a position to store.
        let (status, _) = gw
            .publish(json!({"user": "alice", "event": "e", "payload": 1}))
            .await;
        assert_eq!(status, 200);
        let tok = token(
            "alice",
            &["news", "room:*", "doc:*"],
            &["room:*", "doc:*"],
            300,
        );
        let mut c = Client::connect_encoding(&gw, &tok, enc).await;
        for (label, payload, r) in &examples {
            let frame = decode_client(Encoding::Json, payload.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{label}: the protocol crate rejects the example: {e}"));
            let bytes = frame.encode(enc).unwrap();
            let msg = if enc == Encoding::Json {
                Message::Text(String::from_utf8(bytes.to_vec()).unwrap().into())
            } else {
                Message::Binary(bytes)
            };
            c.ws.send(msg).await.unwrap();
            let expect = r["expect"].as_str().unwrap();
            if expect == "none" {
                continue;
            }
            let id = payload["id"].as_u64().unwrap();
            let reply = c.reply(id).await;
            match expect {
                "ok" => assert!(reply.ok, "{label} ({}): {reply:?}", enc.name()),
                code => assert_eq!(
                    reply.error.as_ref().map(|e| e.code.as_str()),
                    Some(code),
                    "{label} ({}): {reply:?}",
                    enc.name()
                ),
            }
        }
        // Still connected after everything (pong included).
        assert!(c.subscribe("room:after").await.ok);
    }
}

/// A raw JSON connection: frames as `serde_json::Value`, pings skipped.
struct Raw {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Raw {
    async fn connect(gw: &Gateway, tok: &str, query: &str) -> (Raw, Value) {
        let mut req = format!("ws://{}/ws{query}", gw.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {tok}")).unwrap(),
        );
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("tidings.json"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut raw = Raw { ws, next_id: 100 };
        let welcome = raw.frame(false).await;
        (raw, welcome)
    }

    async fn frame(&mut self, want_ping: bool) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame in time")
                .unwrap()
                .unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "ping" && !want_ping {
                continue;
            }
            return v;
        }
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// Sends a request (its `id` filled in) and returns the reply to it.
    async fn request(&mut self, mut v: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        v["id"] = json!(id);
        self.send(v).await;
        loop {
            let f = self.frame(false).await;
            if f["type"] == "reply" && f["id"] == id {
                return f;
            }
        }
    }

    async fn until(&mut self, kind: &str) -> Value {
        loop {
            let f = self.frame(kind == "ping").await;
            if f["type"] == kind {
                return f;
            }
        }
    }
}

/// Three connections of two users, with `info`, subscribed to `channel`, and a
/// reader (not subscribed) once presence lists all three.
async fn presence_reader(gw: &Gateway, channel: &str, tag: &str) -> (Raw, Vec<Raw>) {
    let mut members = Vec::new();
    for user in [format!("{tag}-a"), format!("{tag}-a"), format!("{tag}-b")] {
        let tok = token_with(&user, &["room:*"], &[], Some(json!({ "name": user })));
        let (mut r, _) = Raw::connect(gw, &tok, "").await;
        r.request(json!({"type": "subscribe", "channel": channel}))
            .await;
        members.push(r);
    }
    let (mut reader, _) = Raw::connect(
        gw,
        &token(&format!("{tag}-reader"), &["room:*"], &[], 300),
        "",
    )
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = reader
            .request(json!({"type": "presence_stats", "channel": channel}))
            .await;
        if r["result"]["clients"] == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{channel}: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (reader, members)
}

/// The next `presence_diff` with leaves (`leaves`) or with joins.
async fn next_diff(r: &mut Raw, leaves: bool) -> Value {
    loop {
        let d = r.until("presence_diff").await;
        let key = if leaves { "leaves" } else { "joins" };
        if !d[key].as_array().unwrap().is_empty() {
            return d;
        }
    }
}

/// A frame of the kind the scenario names, as the gateway sends it.
async fn live_frame(scenario: &str, gw: &Gateway, ping_gw: &Gateway) -> Value {
    let tok = |u: &str| token(u, &["news", "room:*", "chat:*"], &["room:*", "chat:*"], 300);
    match scenario {
        "welcome_first" => Raw::connect(gw, &tok("s-first"), "").await.1,
        "welcome_resumed" => {
            Raw::connect(gw, &tok("s-resumed"), "?since=0&epoch=")
                .await
                .1
        }
        "message_notification" => {
            let (mut r, _) = Raw::connect(gw, &tok("s-notify"), "").await;
            let (status, _) = gw
                .publish(json!({"user": "s-notify", "event": "order.shipped", "payload": {}, "id": "ord-1"}))
                .await;
            assert_eq!(status, 200);
            r.until("message").await
        }
        "message_plain" | "reply_publish" => {
            let (mut r, _) = Raw::connect(gw, &tok("s-plain"), "").await;
            r.request(json!({"type": "subscribe", "channel": "chat:1"}))
                .await;
            let reply = r
                .request(json!({"type": "publish", "channel": "chat:1", "event": "typing", "payload": {}}))
                .await;
            if scenario == "reply_publish" {
                return reply;
            }
            r.until("message").await
        }
        "reply_subscribe" => {
            let (mut r, _) = Raw::connect(gw, &tok("s-sub"), "").await;
            r.request(json!({"type": "subscribe", "channel": "news"}))
                .await
        }
        "reply_subscribe_history" => {
            let (mut r, _) = Raw::connect(gw, &tok("s-subh"), "").await;
            r.request(json!({"type": "subscribe", "channel": "room:7"}))
                .await
        }
        "reply_subscribe_resumed" => {
            for i in 0..2 {
                let (status, _) = gw.publish(json!({"channel": "room:8", "payload": i})).await;
                assert_eq!(status, 200);
            }
            let (mut r, _) = Raw::connect(gw, &tok("s-resume"), "").await;
            let first = r
                .request(json!({"type": "subscribe", "channel": "room:8"}))
                .await;
            let epoch = first["result"]["epoch"].clone();
            r.request(json!({"type": "unsubscribe", "channel": "room:8"}))
                .await;
            r.request(json!({"type": "subscribe", "channel": "room:8", "since": {"offset": 1, "epoch": epoch}}))
                .await
        }
        "reply_publish_conditional" | "reply_conflict" => {
            let (mut r, _) = Raw::connect(gw, &tok("s-cond"), "").await;
            let channel = format!("room:{scenario}");
            let publish = json!({"type": "publish", "channel": channel, "event": "op", "payload": [1], "expect": {"offset": 0, "epoch": ""}});
            let first = r.request(publish.clone()).await;
            if scenario == "reply_publish_conditional" {
                return first;
            }
            r.request(publish).await
        }
        "reply_history" | "reply_history_other_epoch" => {
            let channel = format!("room:{scenario}");
            let (status, _) = gw
                .publish(json!({"channel": channel, "event": "typing", "payload": {}}))
                .await;
            assert_eq!(status, 200);
            let (status, _) = gw
                .publish(json!({"channel": channel, "payload": {}, "id": "m-1"}))
                .await;
            assert_eq!(status, 200);
            let (mut r, _) = Raw::connect(gw, &tok("s-history"), "").await;
            if scenario == "reply_history" {
                return r
                    .request(json!({"type": "history", "channel": channel, "limit": 2}))
                    .await;
            }
            r.request(json!({"type": "history", "channel": channel, "limit": 50, "since": {"offset": 17, "epoch": "70e4c1d9a2b8f356"}}))
                .await
        }
        "reply_refresh" => {
            let (mut r, _) = Raw::connect(gw, &tok("s-refresh"), "").await;
            r.request(json!({"type": "subscribe", "channel": "room:42"}))
                .await;
            let narrower = token("s-refresh", &["news"], &[], 600);
            r.request(json!({"type": "refresh", "token": narrower}))
                .await
        }
        "reply_ack" => {
            let (mut r, _) = Raw::connect(gw, &tok("s-ack"), "").await;
            let (status, _) = gw.publish(json!({"user": "s-ack", "payload": 1})).await;
            assert_eq!(status, 200);
            r.until("message").await;
            r.request(json!({"type": "ack", "offset": 1})).await
        }
        "reply_presence_first" | "reply_presence_last" | "reply_presence_stats" => {
            let channel = format!("room:{scenario}");
            let (mut reader, _members) = presence_reader(gw, &channel, scenario).await;
            if scenario == "reply_presence_stats" {
                return reader
                    .request(json!({"type": "presence_stats", "channel": channel}))
                    .await;
            }
            let first = reader
                .request(json!({"type": "presence", "channel": channel, "limit": 2}))
                .await;
            if scenario == "reply_presence_first" {
                return first;
            }
            let cursor = first["result"]["cursor"].clone();
            reader
                .request(
                    json!({"type": "presence", "channel": channel, "limit": 2, "cursor": cursor}),
                )
                .await
        }
        "presence_diff_join" => {
            let tok = token_with("s-join", &["room:*"], &[], Some(json!({"name": "S"})));
            let (mut r, _) = Raw::connect(gw, &tok, "").await;
            r.request(json!({"type": "subscribe", "channel": "room:pj"}))
                .await;
            next_diff(&mut r, false).await
        }
        "presence_diff_leave" => {
            let with_info = |u: &str| token_with(u, &["room:*"], &[], Some(json!({ "name": u })));
            let (mut watcher, _) = Raw::connect(gw, &with_info("s-watch"), "").await;
            watcher
                .request(json!({"type": "subscribe", "channel": "room:pl"}))
                .await;
            next_diff(&mut watcher, false).await;
            let (mut leaver, _) = Raw::connect(gw, &with_info("s-leave"), "").await;
            leaver
                .request(json!({"type": "subscribe", "channel": "room:pl"}))
                .await;
            next_diff(&mut watcher, false).await;
            leaver
                .request(json!({"type": "unsubscribe", "channel": "room:pl"}))
                .await;
            next_diff(&mut watcher, true).await
        }
        "reply_forbidden" => {
            let (mut r, _) = Raw::connect(gw, &tok("s-forbid"), "").await;
            r.request(json!({"type": "subscribe", "channel": "secret"}))
                .await
        }
        "reply_bad_frame" => {
            let (mut r, _) = Raw::connect(gw, &tok("s-bad"), "").await;
            r.ws.send(Message::Text("nope".into())).await.unwrap();
            r.until("reply").await
        }
        "ping" => {
            let (mut r, _) = Raw::connect(ping_gw, &tok("s-ping"), "").await;
            r.until("ping").await
        }
        other => panic!("x-replay names an unknown scenario `{other}`"),
    }
}

#[tokio::test]
async fn asyncapi_server_frames_match_what_the_gateway_sends() {
    let s = specs();
    let gw = Gateway::builder()
        .args(&["--history", "$user:* 100 24h,room:* 100 1h"])
        .args(&["--presence", "room:* events", "--presence-grace", "300ms"])
        .start()
        .await;
    let ping_gw = Gateway::builder()
        .args(&["--heartbeat-interval", "200ms"])
        .start()
        .await;
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (label, payload, r) in frame_examples(&s) {
        let kind = payload["type"].as_str().unwrap().to_owned();
        if CLIENT_TYPES.contains(&kind.as_str()) {
            continue;
        }
        *seen.entry(kind.clone()).or_default() += 1;
        // The protocol crate reads the example, in both encodings.
        let frame = decode_server(Encoding::Json, payload.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{label}: the protocol crate rejects the example: {e}"));
        let packed = frame.encode(Encoding::MsgPack).unwrap();
        let back: ServerFrame = decode_server(Encoding::MsgPack, &packed).unwrap();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&frame).unwrap(),
            "{label}: MessagePack round trip"
        );
        // And the gateway sends a frame with the same fields.
        let scenario = r["scenario"].as_str().unwrap();
        let live = live_frame(scenario, &gw, &ping_gw).await;
        same_shape(&payload, &live, &label, &mut problems);
    }
    for kind in SERVER_TYPES {
        assert!(
            seen.contains_key(kind),
            "no {kind} example in asyncapi.yaml"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
