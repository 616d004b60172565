//! Tests of the background task against an in-process fake gateway over in-memory
//! pipes, with paused Tokio time: reconnect schedule, close-code policy, token
//! refresh, offline queue, resume and de-duplication, retries of channels refused as
//! `unavailable`, heartbeats, timeouts; presence in [`presence`]; conditional
//! publishes, history reads and event routing in [`ordered`].
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::driver::{BoxIo, Connector};
use crate::{Backoff, Client, ClientBuilder, Error, Event, Events, Position, Since};

mod ordered;
mod presence;

const SEED: u64 = 99;
/// Generous bound for anything in paused time (auto-advance makes it instant).
const LONG: Duration = Duration::from_secs(3600);

/// A fake network: records connection attempts, refuses them or hands the server
/// end of an in-memory pipe to the test.
struct Net {
    attempts: Arc<Mutex<Vec<(Instant, String)>>>,
    refuse: Arc<AtomicBool>,
    incoming: mpsc::UnboundedReceiver<DuplexStream>,
}

fn net() -> (Net, Connector) {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let refuse = Arc::new(AtomicBool::new(false));
    let (tx, incoming) = mpsc::unbounded_channel();
    let (a, r) = (attempts.clone(), refuse.clone());
    let connector: Connector = Arc::new(move |addr: String| {
        a.lock().unwrap().push((Instant::now(), addr));
        let refused = r.load(Ordering::SeqCst);
        let tx = tx.clone();
        Box::pin(async move {
            if refused {
                return Err(std::io::ErrorKind::ConnectionRefused.into());
            }
            let (client, server) = tokio::io::duplex(1 << 16);
            tx.send(server)
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::ConnectionReset))?;
            Ok(Box::new(client) as BoxIo)
        })
    });
    (
        Net {
            attempts,
            refuse,
            incoming,
        },
        connector,
    )
}

impl Net {
    fn attempts(&self) -> Vec<(Instant, String)> {
        self.attempts.lock().unwrap().clone()
    }

    fn refuse(&self, on: bool) {
        self.refuse.store(on, Ordering::SeqCst);
    }

    async fn stream(&mut self) -> DuplexStream {
        tokio::time::timeout(LONG, self.incoming.recv())
            .await
            .expect("no connection attempt")
            .expect("connector gone")
    }

    /// Accepts the next connection's upgrade.
    async fn accept(&mut self) -> Peer {
        let stream = self.stream().await;
        let seen = Arc::new(Mutex::new((String::new(), String::new())));
        let s = seen.clone();
        let cb = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
            let auth = req
                .headers()
                .get("Authorization")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            *s.lock().unwrap() = (req.uri().to_string(), auth);
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("tidings.json"),
            );
            Ok(resp)
        };
        let ws = tokio_tungstenite::accept_hdr_async(stream, cb)
            .await
            .expect("upgrade");
        let (uri, auth) = seen.lock().unwrap().clone();
        Peer { ws, uri, auth }
    }

    /// Refuses the next connection's upgrade with an HTTP status.
    async fn reject(&mut self, status: u16) -> String {
        let stream = self.stream().await;
        let seen = Arc::new(Mutex::new(String::new()));
        let s = seen.clone();
        let cb = move |req: &Request, _resp: Response| -> Result<Response, ErrorResponse> {
            *s.lock().unwrap() = req
                .headers()
                .get("Authorization")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let mut e = ErrorResponse::new(Some(
                r#"{"error":"unauthorized","message":"token expired"}"#.into(),
            ));
            *e.status_mut() = status.try_into().unwrap();
            Err(e)
        };
        let _ = tokio_tungstenite::accept_hdr_async(stream, cb).await;
        seen.lock().unwrap().clone()
    }
}

/// The server side of one fake connection.
struct Peer {
    ws: WebSocketStream<DuplexStream>,
    uri: String,
    auth: String,
}

impl Peer {
    async fn send(&mut self, v: Value) {
        self.ws
            .send(WsMessage::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// Sends a `welcome` (long heartbeat and expiry unless `extra` overrides them).
    async fn welcome(&mut self, extra: Value) {
        let mut w = json!({
            "type": "welcome", "session": "s1", "node": "n1", "user": "u",
            "channel": "$user:u", "heartbeat_ms": 3_600_000u64,
            "expires_at": protocol::now_millis() / 1000 + 864_000,
            "limits": {"max_message_bytes": 65536, "max_payload_bytes": 65536,
                       "max_channels": 128, "rate_per_sec": 1000, "rate_burst": 1000}
        });
        for (k, v) in extra.as_object().unwrap() {
            w[k] = v.clone();
        }
        self.send(w).await;
    }

    /// The next client frame (JSON), skipping `pong`s.
    async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(LONG, self.ws.next())
                .await
                .expect("no frame from the client")
                .expect("client went away")
                .expect("read error");
            if let WsMessage::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] != "pong" {
                    return v;
                }
            }
        }
    }

    async fn reply(&mut self, id: &Value, result: Value) {
        self.send(json!({"type": "reply", "id": id, "ok": true, "result": result}))
            .await;
    }

    async fn message(&mut self, channel: &str, offset: Option<u64>, n: u64) {
        let mut m = json!({"type": "message", "channel": channel, "event": "e",
                           "payload": {"n": n}, "ts": 1});
        if let Some(o) = offset {
            m["offset"] = o.into();
        }
        self.send(m).await;
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code: code.into(),
                reason: reason.into(),
            }))
            .await;
    }

    async fn refuse(&mut self, id: &Value, code: &str) {
        self.send(json!({"type": "reply", "id": id, "ok": false,
                         "error": {"code": code, "message": "try later"}}))
            .await;
    }

    /// Expects the client's subscribe for `channel` and returns it unanswered.
    async fn expect_subscribe_frame(&mut self, channel: &str) -> Value {
        let f = self.recv().await;
        assert_eq!(f["type"], "subscribe", "{f}");
        assert_eq!(f["channel"], channel, "{f}");
        f
    }

    /// Expects the client's subscribe for `channel` and answers it.
    async fn expect_subscribe(&mut self, channel: &str, result: Value) -> Value {
        let f = self.recv().await;
        assert_eq!(f["type"], "subscribe", "{f}");
        assert_eq!(f["channel"], channel, "{f}");
        let mut r = json!({"channel": channel});
        for (k, v) in result.as_object().unwrap() {
            r[k] = v.clone();
        }
        self.reply(&f["id"], r).await;
        f
    }
}

fn builder(connector: Connector, urls: &[&str]) -> ClientBuilder {
    let mut b = Client::builder(urls.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .token("t0")
        .jitter_seed(SEED)
        .going_away_delay(Duration::from_millis(100));
    b.cfg.connector = Some(connector);
    b
}

async fn next(events: &mut Events) -> Event {
    tokio::time::timeout(LONG, events.next())
        .await
        .expect("no event")
        .expect("event stream ended")
}

/// The next event that is not a message.
async fn next_non_message(events: &mut Events) -> Event {
    loop {
        match next(events).await {
            Event::Message { .. } => continue,
            e => return e,
        }
    }
}

async fn expect_connected(events: &mut Events) {
    match next(events).await {
        Event::Connected { .. } => {}
        other => panic!("expected Connected, got {other:?}"),
    }
}

async fn expect_disconnected(events: &mut Events) -> (Option<u16>, String, bool, Option<Duration>) {
    match next_non_message(events).await {
        Event::Disconnected {
            code,
            reason,
            will_reconnect,
            retry_in,
        } => (code, reason, will_reconnect, retry_in),
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

async fn expect_end(events: &mut Events) {
    let end = tokio::time::timeout(LONG, events.next())
        .await
        .expect("stream did not end");
    assert!(end.is_none(), "expected the end of the stream, got {end:?}");
}

fn message_n(e: &Event) -> (String, Option<u64>, u64) {
    match e {
        Event::Message {
            channel,
            offset,
            payload,
            ..
        } => (
            channel.clone(),
            *offset,
            payload.parse::<Value>().unwrap()["n"].as_u64().unwrap(),
        ),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn reconnect_delays_follow_full_jitter_backoff() {
    let (net, connector) = net();
    net.refuse(true);
    let (_client, mut events) = builder(connector, &["ws://gw:1/ws"]).build().unwrap();

    // Replay the driver's random draws: same seed, same backoff.
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut model = Backoff::default();
    let caps = [1, 2, 4, 8, 16, 30, 30, 30].map(Duration::from_secs);
    let mut delays = Vec::new();
    for cap in caps {
        let (code, _reason, will, retry) = expect_disconnected(&mut events).await;
        assert_eq!(code, None);
        assert!(will);
        let d = retry.unwrap();
        assert_eq!(model.cap(), cap);
        assert_eq!(
            d,
            model.next_delay(&mut rng),
            "delay drawn from [0, {cap:?}]"
        );
        assert!(d <= cap, "{d:?} > {cap:?}");
        delays.push(d);
    }
    // The attempts really were that far apart.
    let attempts = net.attempts();
    assert!(attempts.len() >= caps.len());
    for (i, d) in delays.iter().enumerate().take(caps.len() - 1) {
        // The timer wheel has millisecond resolution and rounds up.
        let gap = attempts[i + 1].0 - attempts[i].0;
        assert!(
            gap >= *d && gap <= *d + Duration::from_millis(1),
            "gap before attempt {}: {gap:?}, delay {d:?}",
            i + 1
        );
    }
    // Jitter: the delays are not just the caps.
    assert!(
        delays.iter().zip(caps).any(|(d, c)| *d < c / 2),
        "{delays:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_resets_only_after_a_stable_connection() {
    let (mut net, connector) = net();
    net.refuse(true);
    let (_client, mut events) = builder(connector, &["ws://gw:1/ws"])
        .stable_after(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut model = Backoff::default();

    // Three refused attempts: caps 1, 2, 4.
    for _ in 0..3 {
        let (.., retry) = expect_disconnected(&mut events).await;
        assert_eq!(retry, Some(model.next_delay(&mut rng)));
    }
    net.refuse(false);

    // Up for 2 s only, then 1011: not stable, the next cap is 8 s.
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    peer.close(1011, "oops").await;
    let (code, _, will, retry) = expect_disconnected(&mut events).await;
    assert_eq!((code, will), (Some(1011), true));
    assert_eq!(model.cap(), Duration::from_secs(8));
    assert_eq!(retry, Some(model.next_delay(&mut rng)));

    // Up for 10 s: stable, the next cap is 1 s again.
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    peer.close(4002, "slow consumer").await;
    let (code, _, _, retry) = expect_disconnected(&mut events).await;
    assert_eq!(code, Some(4002));
    model.reset();
    assert_eq!(model.cap(), Duration::from_secs(1));
    let want = model.next_delay(&mut rng);
    assert_eq!(retry, Some(want));
    assert!(want <= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn going_away_reconnects_promptly_to_the_next_url() {
    let (mut net, connector) = net();
    let (_client, mut events) = builder(connector, &["ws://a:1/ws", "ws://b:2/ws"])
        .build()
        .unwrap();
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    peer.close(1001, "draining").await;
    let (code, _, will, retry) = expect_disconnected(&mut events).await;
    assert_eq!((code, will), (Some(1001), true));
    assert!(retry.unwrap() <= Duration::from_millis(100), "{retry:?}");
    let mut peer = net.accept().await;
    peer.welcome(json!({"node": "n2"})).await;
    match next(&mut events).await {
        Event::Connected { node, url, .. } => {
            assert_eq!(node, "n2");
            assert_eq!(url, "ws://b:2/ws");
        }
        other => panic!("{other:?}"),
    }
    let a = net.attempts();
    assert_eq!(a[0].1, "a:1");
    assert_eq!(a[1].1, "b:2");
    assert!(a[1].0 - a[0].0 <= Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn policy_closes_stop_without_reconnecting() {
    for code in [1008u16, 1009, 1007, 1000] {
        let (mut net, connector) = net();
        let (client, mut events) = builder(connector, &["ws://gw:1/ws"]).build().unwrap();
        let mut peer = net.accept().await;
        peer.welcome(json!({})).await;
        expect_connected(&mut events).await;
        peer.close(code, "bye").await;
        let (got, _, will, retry) = expect_disconnected(&mut events).await;
        assert_eq!((got, will, retry), (Some(code), false, None));
        match next(&mut events).await {
            Event::Error(Error::ServerClosed { code: c, .. }) => assert_eq!(c, code),
            other => panic!("{other:?}"),
        }
        expect_end(&mut events).await;
        assert_eq!(net.attempts().len(), 1, "code {code}");
        assert!(matches!(
            client.publish("x", "e", &1).await,
            Err(Error::ServerClosed { .. })
        ));
        assert_eq!(client.state(), crate::State::Stopped);
    }
}

#[tokio::test(start_paused = true)]
async fn handshake_401_with_a_failing_refresher_stops() {
    let (mut net, connector) = net();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"])
        .token_refresher(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<String, _>("backend says no") }
        })
        .build()
        .unwrap();
    let publish = tokio::spawn({
        let client = client.clone();
        async move { client.publish("x", "e", &1).await }
    });
    assert_eq!(net.reject(401).await, "Bearer t0");
    let (code, reason, will, retry) = expect_disconnected(&mut events).await;
    assert_eq!((code, will, retry), (None, false, None));
    assert!(reason.contains("401"), "{reason}");
    match next(&mut events).await {
        Event::Error(e) => {
            assert!(e.is_auth(), "{e:?}");
            assert!(e.to_string().contains("backend says no"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    expect_end(&mut events).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(net.attempts().len(), 1, "no second attempt");
    // A publish queued meanwhile fails with the reason.
    assert!(publish.await.unwrap().unwrap_err().is_auth());
}

#[tokio::test(start_paused = true)]
async fn a_refreshed_token_that_is_refused_too_stops() {
    let (mut net, connector) = net();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let (_client, mut events) = builder(connector, &["ws://gw:1/ws"])
        .token_refresher(move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, std::io::Error>(format!("t{n}")) }
        })
        .build()
        .unwrap();
    assert_eq!(net.reject(401).await, "Bearer t0");
    let (_, _, will, retry) = expect_disconnected(&mut events).await;
    assert_eq!((will, retry), (true, Some(Duration::ZERO)));
    assert_eq!(net.reject(401).await, "Bearer t1");
    let (_, _, will, _) = expect_disconnected(&mut events).await;
    assert!(!will);
    assert!(matches!(
        next(&mut events).await,
        Event::Error(Error::Unauthorized(_))
    ));
    expect_end(&mut events).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(net.attempts().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn token_expiry_close_refreshes_and_reconnects_with_the_new_token() {
    let (mut net, connector) = net();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let (_client, mut events) = builder(connector, &["ws://gw:1/ws"])
        .token_refresher(move || {
            // t1, t2, then t2 again.
            let n = (c.fetch_add(1, Ordering::SeqCst) + 1).min(2);
            async move { Ok::<_, std::io::Error>(format!("t{n}")) }
        })
        .build()
        .unwrap();
    let mut peer = net.accept().await;
    assert_eq!(peer.auth, "Bearer t0");
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    for (code, next_token) in [(4001u16, "Bearer t1"), (4004, "Bearer t2")] {
        peer.close(code, "token").await;
        let (got, _, will, retry) = expect_disconnected(&mut events).await;
        assert_eq!((got, will, retry), (Some(code), true, Some(Duration::ZERO)));
        peer = net.accept().await;
        assert_eq!(peer.auth, next_token);
        peer.welcome(json!({})).await;
        expect_connected(&mut events).await;
    }
    // The refresher now returns the token that was just refused: no loop with it.
    peer.close(4001, "token expired").await;
    let (_, reason, will, _) = expect_disconnected(&mut events).await;
    assert!(!will, "{reason}");
    match next(&mut events).await {
        Event::Error(Error::Unauthorized(m)) => assert!(m.contains("same token"), "{m}"),
        other => panic!("{other:?}"),
    }
    expect_end(&mut events).await;
    assert_eq!(net.attempts().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn offline_queue_keeps_order_reports_overflow_and_flushes_after_resubscribing() {
    let (mut net, connector) = net();
    net.refuse(true);
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"])
        .queue_capacity(3)
        .build()
        .unwrap();
    let sub = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("news").await }
    });
    let mut pubs = Vec::new();
    for n in 1..=3 {
        let c = client.clone();
        pubs.push(tokio::spawn(async move {
            c.publish("room", "e", &json!({"n": n})).await
        }));
        tokio::task::yield_now().await;
    }
    let ack = {
        let c = client.clone();
        tokio::spawn(async move { c.ack(9).await })
    };
    tokio::task::yield_now().await;
    let err = client
        .publish("room", "e", &json!({"n": 4}))
        .await
        .unwrap_err();
    assert_eq!(err, Error::QueueFull { capacity: 3 });
    assert!(err.to_string().contains("full"));
    let _ = expect_disconnected(&mut events).await;

    net.refuse(false);
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    peer.expect_subscribe("news", json!({})).await;
    for n in 1..=3 {
        let f = peer.recv().await;
        assert_eq!(f["type"], "publish", "{f}");
        assert_eq!(f["payload"]["n"], n);
        peer.reply(&f["id"], json!({"nodes": 1, "sessions": 2}))
            .await;
    }
    // The ack did not fit: QueueFull.
    assert_eq!(
        ack.await.unwrap().unwrap_err(),
        Error::QueueFull { capacity: 3 }
    );
    assert_eq!(sub.await.unwrap().unwrap().channel, "news");
    for p in pubs {
        let r = p.await.unwrap().unwrap();
        assert_eq!((r.nodes, r.sessions), (Some(1), Some(2)));
    }
}

#[tokio::test(start_paused = true)]
async fn resubscribes_with_last_offsets_and_drops_duplicates() {
    let (mut net, connector) = net();
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"]).build().unwrap();
    let mut peer = net.accept().await;
    assert!(!peer.uri.contains("since"), "{}", peer.uri);
    peer.welcome(json!({"epoch": "p1", "offset": 3})).await;
    expect_connected(&mut events).await;
    let sub = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("news").await }
    });
    let f = peer
        .expect_subscribe("news", json!({"epoch": "e1", "offset": 5}))
        .await;
    assert!(f.get("since").is_none());
    let s = sub.await.unwrap().unwrap();
    assert_eq!(
        (s.epoch.as_deref(), s.offset, s.recovered),
        (Some("e1"), Some(5), None)
    );
    assert_eq!(
        client.position("news"),
        Some(Position {
            epoch: Some("e1".into()),
            offset: Some(5)
        })
    );
    peer.message("news", Some(6), 6).await;
    peer.message("news", Some(7), 7).await;
    peer.message("$user:u", Some(4), 104).await;
    peer.message("$broadcast", None, 1000).await;
    for want in [
        ("news", 6),
        ("news", 7),
        ("$user:u", 104),
        ("$broadcast", 1000),
    ] {
        let (ch, _, n) = message_n(&next(&mut events).await);
        assert_eq!((ch.as_str(), n), want);
    }
    peer.close(1011, "").await;
    let _ = expect_disconnected(&mut events).await;

    // Reconnect: the personal channel resumes at connect, "news" with `since`.
    let mut peer = net.accept().await;
    assert!(peer.uri.ends_with("/ws?since=4&epoch=p1"), "{}", peer.uri);
    peer.welcome(json!({"epoch": "p1", "offset": 5, "recovered": true}))
        .await;
    peer.message("$user:u", Some(4), 104).await; // duplicate
    peer.message("$user:u", Some(5), 105).await;
    expect_connected(&mut events).await;
    assert_eq!(
        next(&mut events).await,
        Event::Recovered {
            channel: "$user:u".into(),
            recovered: true
        }
    );
    let f = peer
        .expect_subscribe(
            "news",
            json!({"epoch": "e1", "offset": 9, "recovered": true}),
        )
        .await;
    assert_eq!(f["since"], json!({"offset": 7, "epoch": "e1"}));
    for o in [6, 7, 8, 9] {
        peer.message("news", Some(o), o).await;
    }
    peer.message("news", Some(9), 9).await;
    let got: Vec<_> = [
        next(&mut events).await,
        next(&mut events).await,
        next(&mut events).await,
        next(&mut events).await,
    ]
    .iter()
    .map(|e| match e {
        Event::Message { .. } => {
            let (ch, o, _) = message_n(e);
            format!("{ch}@{}", o.unwrap())
        }
        other => format!("{other:?}"),
    })
    .collect();
    assert_eq!(
        got,
        [
            "$user:u@5",
            "Recovered { channel: \"news\", recovered: true }",
            "news@8",
            "news@9"
        ]
    );
    assert_eq!(client.duplicates_dropped(), 4);

    // A new epoch: not recovered, nothing replayed; offsets start over after the new
    // stream's latest and are not dropped.
    peer.close(1011, "").await;
    let _ = expect_disconnected(&mut events).await;
    let mut peer = net.accept().await;
    assert!(peer.uri.ends_with("since=5&epoch=p1"), "{}", peer.uri);
    peer.welcome(json!({"epoch": "p2", "offset": 0, "recovered": false}))
        .await;
    expect_connected(&mut events).await;
    assert_eq!(
        next(&mut events).await,
        Event::Recovered {
            channel: "$user:u".into(),
            recovered: false
        }
    );
    peer.expect_subscribe(
        "news",
        json!({"epoch": "e2", "offset": 0, "recovered": false}),
    )
    .await;
    assert_eq!(
        next(&mut events).await,
        Event::Recovered {
            channel: "news".into(),
            recovered: false
        }
    );
    peer.message("$user:u", Some(1), 201).await;
    peer.message("news", Some(1), 301).await;
    peer.message("news", Some(2), 302).await;
    for want in [201, 301, 302] {
        assert_eq!(message_n(&next(&mut events).await).2, want);
    }
    assert_eq!(
        client.position("news"),
        Some(Position {
            epoch: Some("e2".into()),
            offset: Some(2)
        })
    );
    assert_eq!(client.personal_channel().as_deref(), Some("$user:u"));

    // Unsubscribing forgets the channel: not restored after the next reconnect.
    let un = tokio::spawn({
        let c = client.clone();
        async move { c.unsubscribe("news").await }
    });
    let f = peer.recv().await;
    assert_eq!(f["type"], "unsubscribe");
    peer.reply(&f["id"], json!({"channel": "news"})).await;
    un.await.unwrap().unwrap();
    assert_eq!(client.position("news"), None);
}

#[tokio::test(start_paused = true)]
async fn stored_positions_resume_after_a_restart() {
    let (mut net, connector) = net();
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"])
        .resume_personal(Since {
            offset: 41,
            epoch: "pe".into(),
        })
        .resume(
            "news",
            Since {
                offset: 10,
                epoch: "ne".into(),
            },
        )
        .build()
        .unwrap();
    let sub = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("news").await }
    });
    let mut peer = net.accept().await;
    assert!(peer.uri.ends_with("?since=41&epoch=pe"), "{}", peer.uri);
    peer.welcome(json!({"epoch": "pe", "offset": 42, "recovered": true}))
        .await;
    peer.message("$user:u", Some(42), 42).await;
    expect_connected(&mut events).await;
    assert!(matches!(
        next(&mut events).await,
        Event::Recovered {
            recovered: true,
            ..
        }
    ));
    assert_eq!(message_n(&next(&mut events).await).1, Some(42));
    let f = peer
        .expect_subscribe(
            "news",
            json!({"epoch": "ne", "offset": 10, "recovered": true}),
        )
        .await;
    assert_eq!(f["since"], json!({"offset": 10, "epoch": "ne"}));
    assert_eq!(sub.await.unwrap().unwrap().recovered, Some(true));
}

#[tokio::test(start_paused = true)]
async fn a_resume_started_by_the_server_is_reported_and_delivered() {
    // No `since` from the client, but the server resumes the personal channel from
    // the user's acknowledged position and replays after the welcome.
    let (mut net, connector) = net();
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"]).build().unwrap();
    let mut peer = net.accept().await;
    assert!(!peer.uri.contains("since"), "{}", peer.uri);
    peer.welcome(json!({"epoch": "p", "offset": 12, "recovered": true}))
        .await;
    for o in [11, 12, 13] {
        peer.message("$user:u", Some(o), o).await;
    }
    expect_connected(&mut events).await;
    assert_eq!(
        next(&mut events).await,
        Event::Recovered {
            channel: "$user:u".into(),
            recovered: true
        }
    );
    for o in [11, 12, 13] {
        assert_eq!(message_n(&next(&mut events).await).1, Some(o));
    }
    assert_eq!(
        client.position("$user:u"),
        Some(Position {
            epoch: Some("p".into()),
            offset: Some(13)
        })
    );
}

#[tokio::test(start_paused = true)]
async fn answers_pings_and_replaces_a_silent_connection() {
    let (mut net, connector) = net();
    let (_client, mut events) = builder(connector, &["ws://gw:1/ws"]).build().unwrap();
    let mut peer = net.accept().await;
    peer.welcome(json!({"heartbeat_ms": 1000})).await;
    expect_connected(&mut events).await;
    let start = Instant::now();
    // Pings keep it alive, and each gets a pong.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        peer.send(json!({"type": "ping"})).await;
        let pong = tokio::time::timeout(LONG, peer.ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(pong.to_text().unwrap(), r#"{"type":"pong"}"#);
    }
    // Then silence: dead after 2 intervals.
    let (code, reason, will, _) = expect_disconnected(&mut events).await;
    assert_eq!((code, will), (None, true));
    assert!(reason.contains("heartbeat"), "{reason}");
    let gone = start.elapsed();
    assert!(
        gone >= Duration::from_millis(6500) && gone < Duration::from_millis(6600),
        "{gone:?}"
    );
    // It reconnects.
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
}

#[tokio::test(start_paused = true)]
async fn requests_time_out_and_in_flight_ones_fail_on_disconnect() {
    let (mut net, connector) = net();
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"])
        .request_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    let start = Instant::now();
    let err = client.publish("room", "e", &1).await.unwrap_err();
    assert_eq!(err, Error::Timeout(Duration::from_secs(2)));
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    // The late reply is ignored.
    let f = peer.recv().await;
    peer.reply(&f["id"], json!({})).await;

    // A publish in flight when the connection drops fails with Disconnected; a
    // subscribe in flight is confirmed after the reconnect instead.
    let p = tokio::spawn({
        let c = client.clone();
        async move { c.publish("room", "e", &2).await }
    });
    let s = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("news").await }
    });
    let f1 = peer.recv().await;
    let f2 = peer.recv().await;
    let kinds = [f1["type"].as_str().unwrap(), f2["type"].as_str().unwrap()];
    assert!(kinds.contains(&"publish") && kinds.contains(&"subscribe"));
    drop(peer);
    assert_eq!(p.await.unwrap().unwrap_err(), Error::Disconnected);
    let _ = expect_disconnected(&mut events).await;
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    peer.expect_subscribe("news", json!({})).await;
    assert_eq!(s.await.unwrap().unwrap().channel, "news");
}

#[tokio::test(start_paused = true)]
async fn server_errors_and_lost_subscriptions() {
    let (mut net, connector) = net();
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"]).build().unwrap();
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    let s = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("secret").await }
    });
    let f = peer.recv().await;
    peer.send(json!({"type": "reply", "id": f["id"], "ok": false,
                     "error": {"code": "forbidden", "message": "no"}}))
        .await;
    let e = s.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Some(protocol::ErrorCode::Forbidden));

    // A channel that cannot be restored after a reconnect is reported and dropped.
    let s = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("news").await }
    });
    peer.expect_subscribe("news", json!({})).await;
    s.await.unwrap().unwrap();
    peer.close(1011, "").await;
    let _ = expect_disconnected(&mut events).await;
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    let f = peer.recv().await;
    peer.send(json!({"type": "reply", "id": f["id"], "ok": false,
                     "error": {"code": "forbidden", "message": "revoked"}}))
        .await;
    match next(&mut events).await {
        Event::Error(Error::Subscription { channel, code, .. }) => {
            assert_eq!((channel.as_str(), code.as_str()), ("news", "forbidden"));
        }
        other => panic!("{other:?}"),
    }
    // Already subscribed counts as success.
    let s = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("again").await }
    });
    let f = peer.recv().await;
    peer.send(json!({"type": "reply", "id": f["id"], "ok": false,
                     "error": {"code": "already_subscribed", "message": ""}}))
        .await;
    assert_eq!(s.await.unwrap().unwrap().channel, "again");
}

#[tokio::test(start_paused = true)]
async fn close_sends_1000_and_ends_the_stream() {
    let (mut net, connector) = net();
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"]).build().unwrap();
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    let closing = tokio::spawn({
        let c = client.clone();
        async move { c.close().await }
    });
    match tokio::time::timeout(LONG, peer.ws.next()).await.unwrap() {
        Some(Ok(WsMessage::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1000),
        other => panic!("{other:?}"),
    }
    closing.await.unwrap();
    let (code, _, will, _) = expect_disconnected(&mut events).await;
    assert_eq!((code, will), (Some(1000), false));
    expect_end(&mut events).await;
    assert_eq!(client.publish("x", "e", &1).await, Err(Error::Closed));
    assert_eq!(net.attempts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn proactive_refresh_before_expiry() {
    let (mut net, connector) = net();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let (_client, mut events) = builder(connector, &["ws://gw:1/ws"])
        .token_refresher(move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, std::io::Error>(format!("r{n}")) }
        })
        .build()
        .unwrap();
    let mut peer = net.accept().await;
    let exp = protocol::now_millis() / 1000 + 1000;
    peer.welcome(json!({"expires_at": exp})).await;
    expect_connected(&mut events).await;
    let start = Instant::now();
    let f = peer.recv().await;
    assert_eq!(f["type"], "refresh");
    assert_eq!(f["token"], "r1");
    // 80% of the ~1000 s left, capped at 60 s before expiry: ~940 s.
    let waited = start.elapsed().as_secs();
    assert!((935..=941).contains(&waited), "{waited}");
    peer.reply(&f["id"], json!({"expires_at": exp, "unsubscribed": []}))
        .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// The next event is the report of a refused subscription of `channel` with `code`.
async fn expect_refused(events: &mut Events, channel: &str, code: &str) {
    match next_non_message(events).await {
        Event::Error(Error::Subscription {
            channel: c,
            code: k,
            ..
        }) => assert_eq!((c.as_str(), k.as_str()), (channel, code)),
        other => panic!("expected the refusal of {channel}, got {other:?}"),
    }
}

/// Waits for the client's next subscribe of `channel` and checks that it came
/// `delay` after `since` (the timer wheel rounds up to the millisecond).
async fn expect_retry_after(
    peer: &mut Peer,
    channel: &str,
    since: Instant,
    delay: Duration,
) -> Value {
    let f = peer.expect_subscribe_frame(channel).await;
    let gap = since.elapsed();
    assert!(
        gap >= delay && gap <= delay + Duration::from_millis(1),
        "retried after {gap:?}, delay {delay:?}"
    );
    f
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_resubscription_is_retried_with_backoff_and_resumes() {
    let (mut net, connector) = net();
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"]).build().unwrap();
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    let sub = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("news").await }
    });
    peer.expect_subscribe("news", json!({"epoch": "e1", "offset": 5}))
        .await;
    sub.await.unwrap().unwrap();
    peer.message("news", Some(6), 6).await;
    assert_eq!(message_n(&next(&mut events).await).1, Some(6));
    peer.close(1011, "").await;

    // Replay the driver's random draws: the reconnect's, then the retries'.
    let mut rng = StdRng::seed_from_u64(SEED);
    let (.., retry_in) = expect_disconnected(&mut events).await;
    assert_eq!(retry_in, Some(Backoff::default().next_delay(&mut rng)));
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;

    // The shard holding "news" is down: the resubscription is refused, reported, and
    // tried again after 1 s-capped, then 2 s-capped delays, each resuming from the
    // position held.
    let since = json!({"offset": 6, "epoch": "e1"});
    let f = peer.expect_subscribe_frame("news").await;
    assert_eq!(f["since"], since);
    peer.refuse(&f["id"], "unavailable").await;
    let mut refused_at = Instant::now();
    let mut model = Backoff::default();
    for cap in [1, 2] {
        expect_refused(&mut events, "news", "unavailable").await;
        assert_eq!(model.cap(), Duration::from_secs(cap));
        let delay = model.next_delay(&mut rng);
        let f = expect_retry_after(&mut peer, "news", refused_at, delay).await;
        assert_eq!(f["since"], since);
        if cap == 1 {
            peer.refuse(&f["id"], "unavailable").await;
            refused_at = Instant::now();
        } else {
            // The shard is back.
            let ok = json!({"channel": "news", "epoch": "e1", "offset": 8, "recovered": true});
            peer.reply(&f["id"], ok).await;
        }
    }
    match next(&mut events).await {
        Event::Subscribed(s) => assert_eq!(
            (s.channel.as_str(), s.offset, s.recovered),
            ("news", Some(8), Some(true))
        ),
        other => panic!("expected Subscribed, got {other:?}"),
    }
    assert_eq!(
        next(&mut events).await,
        Event::Recovered {
            channel: "news".into(),
            recovered: true
        }
    );
    for o in [7, 8, 9] {
        peer.message("news", Some(o), o).await;
    }
    for o in [7, 8, 9] {
        assert_eq!(
            message_n(&next(&mut events).await),
            ("news".into(), Some(o), o)
        );
    }
    assert_eq!(client.position("news").unwrap().offset, Some(9));
}

#[tokio::test(start_paused = true)]
async fn an_explicit_subscribe_refused_as_unavailable_fails_and_is_retried() {
    let (mut net, connector) = net();
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"]).build().unwrap();
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    let since = Since {
        offset: 3,
        epoch: "e1".into(),
    };
    let sub = tokio::spawn({
        let c = client.clone();
        let since = since.clone();
        async move { c.subscribe_from("news", since).await }
    });
    let f = peer.expect_subscribe_frame("news").await;
    assert_eq!(f["since"], json!({"offset": 3, "epoch": "e1"}));
    peer.refuse(&f["id"], "unavailable").await;
    let refused_at = Instant::now();
    // The caller learns that the channel is not subscribed (and no event repeats it).
    let e = sub.await.unwrap().unwrap_err();
    assert!(matches!(e, Error::Server { .. }), "{e:?}");
    assert_eq!(e.code(), Some(protocol::ErrorCode::Unavailable));

    // The retry resumes from the position the call asked for.
    let mut rng = StdRng::seed_from_u64(SEED);
    let delay = Backoff::default().next_delay(&mut rng);
    let f = expect_retry_after(&mut peer, "news", refused_at, delay).await;
    assert_eq!(f["since"], json!({"offset": 3, "epoch": "e1"}));
    let ok = json!({"channel": "news", "epoch": "e1", "offset": 4, "recovered": true});
    peer.reply(&f["id"], ok).await;
    match next(&mut events).await {
        Event::Subscribed(s) => assert_eq!((s.channel.as_str(), s.offset), ("news", Some(4))),
        other => panic!("expected Subscribed, got {other:?}"),
    }
    assert_eq!(
        next(&mut events).await,
        Event::Recovered {
            channel: "news".into(),
            recovered: true
        }
    );
    peer.message("news", Some(4), 4).await;
    assert_eq!(
        message_n(&next(&mut events).await),
        ("news".into(), Some(4), 4)
    );

    // Subscribed now: no more retries, and later subscribes are not reported again.
    let again = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("news").await }
    });
    let f = peer.expect_subscribe_frame("news").await;
    peer.refuse(&f["id"], "already_subscribed").await;
    assert_eq!(again.await.unwrap().unwrap().channel, "news");
    assert!(
        tokio::time::timeout(Duration::from_secs(300), peer.recv())
            .await
            .is_err(),
        "a frame after the subscription succeeded"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(1), events.next())
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn unsubscribe_cancels_the_retries_of_an_unavailable_channel() {
    let (mut net, connector) = net();
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"]).build().unwrap();
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    let sub = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("news").await }
    });
    let f = peer.expect_subscribe_frame("news").await;
    assert!(f.get("since").is_none(), "{f}");
    peer.refuse(&f["id"], "unavailable").await;
    assert_eq!(
        sub.await.unwrap().unwrap_err().code(),
        Some(protocol::ErrorCode::Unavailable)
    );
    // A retry, refused again: reported, and the next one is planned.
    let f = peer.expect_subscribe_frame("news").await;
    peer.refuse(&f["id"], "unavailable").await;
    expect_refused(&mut events, "news", "unavailable").await;

    // Unsubscribing while the retry waits cancels it.
    let un = tokio::spawn({
        let c = client.clone();
        async move { c.unsubscribe("news").await }
    });
    let f = peer.recv().await;
    assert_eq!(
        (f["type"].as_str(), f["channel"].as_str()),
        (Some("unsubscribe"), Some("news"))
    );
    peer.refuse(&f["id"], "not_subscribed").await;
    un.await.unwrap().unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(300), peer.recv())
            .await
            .is_err(),
        "a subscribe after the unsubscribe"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(1), events.next())
            .await
            .is_err()
    );

    // A reconnect does not bring the channel back either.
    peer.close(1011, "").await;
    let _ = expect_disconnected(&mut events).await;
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    assert!(
        tokio::time::timeout(Duration::from_secs(300), peer.recv())
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_resubscribes_at_once_and_restarts_the_retry_backoff() {
    let (mut net, connector) = net();
    let (client, mut events) = builder(connector, &["ws://gw:1/ws"]).build().unwrap();
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    let sub = tokio::spawn({
        let c = client.clone();
        async move { c.subscribe("news").await }
    });
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut retries = Backoff::default();
    let f = peer.expect_subscribe_frame("news").await;
    peer.refuse(&f["id"], "unavailable").await;
    let refused_at = Instant::now();
    sub.await.unwrap().unwrap_err();
    let f = expect_retry_after(&mut peer, "news", refused_at, retries.next_delay(&mut rng)).await;
    peer.refuse(&f["id"], "unavailable").await;
    expect_refused(&mut events, "news", "unavailable").await;
    // The next retry would wait up to 2 s; the connection drops before.
    let _ = retries.next_delay(&mut rng);
    assert_eq!(retries.cap(), Duration::from_secs(4));
    peer.close(1011, "").await;
    let (.., retry_in) = expect_disconnected(&mut events).await;
    assert_eq!(retry_in, Some(Backoff::default().next_delay(&mut rng)));

    // Resubscribed right after the welcome, refused: the retries start over at 1 s.
    let mut peer = net.accept().await;
    peer.welcome(json!({})).await;
    expect_connected(&mut events).await;
    let f = peer.expect_subscribe_frame("news").await;
    peer.refuse(&f["id"], "unavailable").await;
    let refused_at = Instant::now();
    expect_refused(&mut events, "news", "unavailable").await;
    let mut retries = Backoff::default();
    let f = expect_retry_after(&mut peer, "news", refused_at, retries.next_delay(&mut rng)).await;
    peer.reply(&f["id"], json!({"channel": "news"})).await;
    assert!(matches!(next(&mut events).await, Event::Subscribed(s) if s.channel == "news"));
}
