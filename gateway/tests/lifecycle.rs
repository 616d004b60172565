//! Connection lifecycle over real sockets: heartbeats, token expiry, slow consumers,
//! graceful drain on SIGTERM/SIGINT, client closes and the handshake timeout.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use protocol::frame::{ClientFrame, ServerFrame};
use protocol::{Encoding, ErrorCode};
use serde_json::json;
use support::{Client, Connect, Gateway, WAIT, decode, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// After the server's close frame: keep reading so the close handshake completes
/// (tungstenite sends our echo while reading) until the connection ends.
async fn finish_close(c: &mut Client) {
    let _ =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = c.ws.next().await {} }).await;
}

/// Reads (answering app pings) until `until`; panics if the connection closes.
async fn stay_connected(c: &mut Client, until: Instant) {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        if let Ok(f) = tokio::time::timeout(left, c.next_frame()).await {
            panic!("unexpected frame {f:?}");
        }
    }
}

#[tokio::test]
async fn heartbeat_keeps_live_peers_and_drops_silent_ones() {
    let gw = Gateway::builder()
        .args(&["--heartbeat-interval", "300ms"])
        .start()
        .await;
    let t = token("hb", &["*"], &[], 60);
    let mut live = Client::connect(&gw, &t).await;
    assert_eq!(live.welcome.heartbeat_ms, 300);

    // Both a WebSocket ping and an app-level `ping` frame arrive.
    let (mut ws_ping, mut app_ping) = (false, false);
    let deadline = Instant::now() + WAIT;
    while !(ws_ping && app_ping) {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, live.ws.next())
            .await
            .expect("no pings in time")
            .unwrap()
            .unwrap();
        match &msg {
            Message::Ping(_) => ws_ping = true,
            other => match decode(Encoding::Json, other) {
                Some(ServerFrame::Ping) => {
                    app_ping = true;
                    live.send(&ClientFrame::Pong).await;
                }
                f => panic!("unexpected {f:?}"),
            },
        }
    }

    // A peer that never reads nor sends is closed after about two intervals and
    // everything it held is released.
    let base_subs = gw.metric("tidings_subscriptions").await;
    let base_timeouts = gw.metric("tidings_closes_total{code=\"4003\"}").await;
    let mut silent = Client::connect(&gw, &t).await;
    assert!(silent.subscribe("quiet").await.ok);
    let silent_since = Instant::now();
    gw.wait_metric("tidings_connections", |v| v == 2.0).await;
    gw.wait_metric("tidings_subscriptions", |v| v == base_subs + 3.0)
        .await;

    // Meanwhile the live client keeps reading (and so answering pings) until told to
    // stop, and for at least five intervals.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let keeper = tokio::spawn(async move {
        stay_connected(&mut live, Instant::now() + Duration::from_millis(1500)).await;
        tokio::select! {
            _ = &mut stopped => {}
            f = live.next_frame() => panic!("unexpected frame {f:?}"),
        }
        live
    });
    gw.wait_metric("tidings_subscriptions", |v| v == base_subs)
        .await;
    let took = silent_since.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(2000),
        "silent peer released after {took:?}"
    );
    gw.wait_metric("tidings_closes_total{code=\"4003\"}", |v| {
        v == base_timeouts + 1.0
    })
    .await;
    gw.wait_metric("tidings_connections", |v| v == 1.0).await;
    // The silent client finds pings and then the 4003 close in its buffers.
    let (code, _) = silent.expect_close().await;
    assert_eq!(code, 4003);

    stop.send(()).unwrap();
    let mut live = keeper.await.unwrap();
    assert!(live.pings >= 3, "answered {} app pings", live.pings);
    assert!(live.subscribe("still-here").await.ok);
    assert_eq!(
        gw.metric("tidings_closes_total{code=\"4003\"}").await,
        base_timeouts + 1.0
    );
}

/// Reads raw frames for `d`; returns (WebSocket pings, ping frames) seen. With
/// `answer`, ping frames are answered with `pong` (WebSocket pings always are, by
/// tungstenite while it reads). Panics on a close.
async fn count_pings(c: &mut Client, d: Duration, answer: bool) -> (usize, usize) {
    let (mut ws_pings, mut app_pings) = (0, 0);
    let until = Instant::now() + d;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Ok(msg) = tokio::time::timeout(left, c.ws.next()).await else {
            break;
        };
        match msg.expect("connection ended").expect("read error") {
            Message::Ping(_) => ws_pings += 1,
            Message::Close(f) => panic!("closed: {f:?}"),
            other => match decode(Encoding::Json, &other) {
                Some(ServerFrame::Ping) => {
                    app_pings += 1;
                    if answer {
                        c.send(&ClientFrame::Pong).await;
                    }
                }
                f => panic!("unexpected {f:?}"),
            },
        }
    }
    (ws_pings, app_pings)
}

#[tokio::test]
async fn websocket_pings_stop_once_the_client_answers_ping_frames() {
    let gw = Gateway::builder()
        .args(&["--heartbeat-interval", "200ms"])
        .start()
        .await;
    let t = token("hb2", &["*"], &[], 60);
    // A client that answers ping frames: after its first answer, each heartbeat is
    // the ping frame alone.
    let mut answering = Client::connect(&gw, &t).await;
    let (ws, app) = count_pings(&mut answering, Duration::from_millis(450), true).await;
    assert!(
        app >= 1 && ws <= app,
        "first heartbeats: {ws} ws, {app} app"
    );
    let (ws, app) = count_pings(&mut answering, Duration::from_millis(1200), true).await;
    assert!(app >= 3, "{app} ping frames");
    assert_eq!(
        ws, 0,
        "WebSocket pings to a client that answers ping frames"
    );
    // A client that only answers WebSocket pings (as any WebSocket library does by
    // itself) keeps getting them and stays connected past two intervals.
    let mut passive = Client::connect(&gw, &t).await;
    let (ws, app) = count_pings(&mut passive, Duration::from_millis(1200), false).await;
    assert!(ws >= 3 && app >= 3, "{ws} ws, {app} app");
    assert!(passive.subscribe("still-there").await.ok);
}

#[tokio::test]
async fn expired_token_closes_with_4001_unless_refreshed() {
    // The support builder passes --jwt-leeway 0s.
    let gw = Gateway::start().await;
    let mut short = Client::connect(&gw, &token("exp", &["*"], &[], 2)).await;
    let mut refreshed = Client::connect(&gw, &token("exp", &["*"], &[], 2)).await;
    assert!(short.subscribe("room").await.ok);
    assert!(refreshed.subscribe("room").await.ok);
    let first_expiry_ms = refreshed.welcome.expires_at * 1000;
    let r = refreshed.refresh(&token("exp", &["*"], &[], 60)).await;
    assert!(r.ok, "{r:?}");
    let new_exp = r.result.unwrap()["expires_at"].as_u64().unwrap();
    assert!(new_exp > refreshed.welcome.expires_at);

    let (code, reason) = short.expect_close().await;
    let closed_at = now_ms();
    assert_eq!(code, 4001, "{reason}");
    let exp_ms = short.welcome.expires_at * 1000;
    assert!(
        closed_at + 50 >= exp_ms,
        "closed {}ms before expiry",
        exp_ms - closed_at
    );
    assert!(
        closed_at < exp_ms + 1000,
        "closed {}ms after expiry",
        closed_at - exp_ms
    );
    finish_close(&mut short).await;
    gw.wait_metric("tidings_closes_total{code=\"4001\"}", |v| v == 1.0)
        .await;

    // The refreshed connection outlives its first token.
    let until =
        Instant::now() + Duration::from_millis(first_expiry_ms.saturating_sub(now_ms()) + 300);
    stay_connected(&mut refreshed, until).await;
    assert!(now_ms() > first_expiry_ms);
    assert!(refreshed.subscribe("other").await.ok);
    assert_eq!(gw.metric("tidings_connections").await, 1.0);

    // A refused refresh does not close the connection either.
    let r = refreshed.refresh("not-a-token").await;
    assert_eq!(r.error.unwrap().code, ErrorCode::InvalidToken);
    assert!(refreshed.unsubscribe("other").await.ok);
}

/// A client with a tiny receive buffer that subscribes to `channel` and then never
/// reads again: its socket fills after a few frames.
async fn slow_reader(gw: &Gateway, channel: &str) -> WebSocketStream<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = sock.connect(gw.addr).await.unwrap();
    let mut req = gw.ws_url().into_client_request().unwrap();
    let t = token("slow", &[channel], &[], 60);
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, stream))
        .await
        .unwrap()
        .unwrap();
    async fn next(ws: &mut WebSocketStream<TcpStream>) -> ServerFrame {
        let msg = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        decode(Encoding::Json, &msg.unwrap().unwrap()).unwrap()
    }
    assert!(matches!(next(&mut ws).await, ServerFrame::Welcome(_)));
    let sub = ClientFrame::Subscribe {
        id: 1,
        channel: channel.into(),
        since: None,
    };
    let text = String::from_utf8(sub.encode(Encoding::Json).unwrap().to_vec()).unwrap();
    ws.send(Message::Text(text.into())).await.unwrap();
    match next(&mut ws).await {
        ServerFrame::Reply(r) => assert!(r.ok, "{r:?}"),
        other => panic!("{other:?}"),
    }
    ws
}

/// Publishes messages `seq..seq + 8` (32 KiB each) to `feed` in one batch request and
/// checks that every reader gets all of them, in order, promptly.
async fn burst(gw: &Gateway, readers: &mut [Client], seq: u64) {
    let pad = "x".repeat(32 * 1024);
    let messages: Vec<_> = (seq..seq + 8)
        .map(|n| json!({"channel": "feed", "event": "tick", "payload": {"seq": n, "pad": pad}}))
        .collect();
    let started = Instant::now();
    let auth = format!("Bearer {}", support::API_KEY);
    let (status, body) = gw
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
    assert_eq!(status, 200, "{body}");
    for r in readers.iter_mut() {
        for n in seq..seq + 8 {
            let m = r.message().await;
            let got: serde_json::Value = m.payload.parse().unwrap();
            assert_eq!(got["seq"], n, "readers get every message in order");
        }
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "a burst took {took:?}");
}

#[tokio::test]
async fn slow_consumer_is_cut_off_without_delaying_others() {
    let gw = Gateway::builder()
        .args(&["--outbound-queue", "16"])
        .start()
        .await;
    let mut slow = slow_reader(&gw, "feed").await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let mut c = Client::connect(&gw, &token(&format!("reader{i}"), &["feed"], &[], 60)).await;
        assert!(c.subscribe("feed").await.ok);
        readers.push(c);
    }
    gw.wait_metric("tidings_connections", |v| v == 4.0).await;

    // Bursts of 8 messages (half the queue): the readers drain each burst before the
    // next, so only the slow one, whose socket is full, can overflow.
    let mut seq = 0u64;
    let overflow = loop {
        assert!(seq < 2000, "the slow consumer was never cut off");
        burst(&gw, &mut readers, seq).await;
        seq += 8;
        let dropped = gw
            .metric("tidings_messages_dropped_total{reason=\"slow_consumer\"}")
            .await;
        if dropped > 0.0 {
            // The overflowing message, the queue it found full (16) and the batch
            // whose write was given up (at most 64) are lost to this connection.
            assert!(
                dropped <= 81.0,
                "one overflow, then the connection is closing"
            );
            break dropped;
        }
    };
    // The slow connection ends (releasing its subscriptions) while it still reads
    // nothing: 3 readers x (personal, broadcast, feed) remain.
    gw.wait_metric("tidings_subscriptions", |v| v == 9.0).await;

    // The slow client, reading at last, finds a gap-free prefix and then 4002.
    let mut next_seq = 0u64;
    let code = loop {
        let msg = tokio::time::timeout(WAIT, slow.next())
            .await
            .expect("slow client: nothing in time")
            .expect("slow client: ended without a close frame")
            .expect("slow client: read error");
        match msg {
            Message::Close(Some(f)) => break u16::from(f.code),
            Message::Close(None) => panic!("close without a code"),
            other => match decode(Encoding::Json, &other) {
                Some(ServerFrame::Message(m)) => {
                    let got: serde_json::Value = m.payload.parse().unwrap();
                    assert_eq!(got["seq"], next_seq);
                    next_seq += 1;
                }
                Some(ServerFrame::Ping) | None => {}
                Some(f) => panic!("unexpected {f:?}"),
            },
        }
    };
    assert_eq!(code, 4002);
    assert!(next_seq + 16 <= seq, "got {next_seq} of {seq}");
    let _ =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = slow.next().await {} }).await;
    gw.wait_metric("tidings_closes_total{code=\"4002\"}", |v| v == 1.0)
        .await;
    gw.wait_metric("tidings_connections", |v| v == 3.0).await;

    // The readers carry on unaffected.
    for _ in 0..3 {
        burst(&gw, &mut readers, seq).await;
        seq += 8;
    }
    let (status, body) = gw
        .publish(json!({"channel": "feed", "payload": "after"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"], 3, "{body}");
    for r in readers.iter_mut() {
        assert_eq!(r.message().await.payload.json(), "\"after\"");
    }
    assert_eq!(
        gw.metric("tidings_messages_dropped_total{reason=\"slow_consumer\"}")
            .await,
        overflow,
        "nothing more lost"
    );
    assert_eq!(gw.metric("tidings_closes_total{code=\"4002\"}").await, 1.0);
}

async fn drain_on(sig: &str) {
    // The support builder passes --drain-period 1s.
    let mut gw = Gateway::start().await;
    assert_eq!(gw.admin_get("/readyz").await.0, 200);
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = Client::connect(&gw, &token(&format!("d{i}"), &["news"], &[], 60)).await;
        assert!(c.subscribe("news").await.ok);
        clients.push(c);
    }
    gw.wait_metric("tidings_connections", |v| v == 8.0).await;

    let waiters: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let (code, reason) = c.expect_close().await;
                let at = Instant::now();
                finish_close(&mut c).await;
                (code, reason, at)
            })
        })
        .collect();
    let signalled = Instant::now();
    gw.signal(sig);

    // Readiness flips at once.
    loop {
        let (status, body) = gw.admin_get("/readyz").await;
        if status == 503 {
            assert!(body.contains("draining"), "{body}");
            break;
        }
        assert_eq!(status, 200);
        assert!(
            signalled.elapsed() < Duration::from_millis(500),
            "/readyz still ready after {:?}",
            signalled.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // New connections are refused while draining.
    let t = token("late", &[], &[], 60);
    let refused = Client::connect_with(&gw, Connect::new(&t)).await;
    match refused {
        Err(r) => assert_eq!(r.status, 503, "{:?}", r.body),
        Ok(_) => panic!("upgrade accepted while draining"),
    }

    let mut arrivals = Vec::new();
    for w in waiters {
        let (code, reason, at) = w.await.unwrap();
        assert_eq!(code, 1001, "{reason}");
        arrivals.push(at.duration_since(signalled));
    }
    arrivals.sort();
    let (first, last) = (arrivals[0], arrivals[arrivals.len() - 1]);
    assert!(
        last - first >= Duration::from_millis(400),
        "closes not spread over the drain period: {arrivals:?}"
    );
    assert!(
        last < Duration::from_millis(1800),
        "closes took too long: {arrivals:?}"
    );
    let status = gw.wait_exit(WAIT).await;
    assert!(status.success(), "{status:?}\n{}", gw.logs());
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigterm_drains_gracefully() {
    drain_on("TERM").await;
}

#[tokio::test]
async fn sigint_drains_gracefully() {
    drain_on("INT").await;
}

#[tokio::test]
async fn client_close_counts_as_normal_and_releases() {
    let gw = Gateway::start().await;
    let mut c = Client::connect(&gw, &token("bye", &["room"], &[], 60)).await;
    assert!(c.subscribe("room").await.ok);
    gw.wait_metric("tidings_subscriptions", |v| v == 3.0).await;
    c.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    // The server echoes the close, then the connection ends.
    let mut echoed = None;
    let _ = tokio::time::timeout(WAIT, async {
        while let Some(Ok(m)) = c.ws.next().await {
            if let Message::Close(Some(f)) = m {
                echoed = Some(u16::from(f.code));
            }
        }
    })
    .await;
    assert_eq!(echoed, Some(1000));
    gw.wait_metric("tidings_closes_total{code=\"1000\"}", |v| v == 1.0)
        .await;
    gw.wait_metric("tidings_connections", |v| v == 0.0).await;
    gw.wait_metric("tidings_subscriptions", |v| v == 0.0).await;
    gw.wait_metric("tidings_channels", |v| v == 0.0).await;
    assert_eq!(gw.metric("tidings_closes_total{code=\"1001\"}").await, 0.0);

    // A peer that just drops the TCP connection is released too.
    let mut c = Client::connect(&gw, &token("gone", &["room"], &[], 60)).await;
    assert!(c.subscribe("room").await.ok);
    gw.wait_metric("tidings_subscriptions", |v| v == 3.0).await;
    drop(c);
    gw.wait_metric("tidings_connections", |v| v == 0.0).await;
    gw.wait_metric("tidings_subscriptions", |v| v == 0.0).await;
}

#[tokio::test]
async fn handshake_timeout_cuts_stalled_requests() {
    let gw = Gateway::builder()
        .args(&["--handshake-timeout", "500ms"])
        .start()
        .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
        .await
        .expect("a stalled handshake was not cut within 3s");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "cut after {took:?}");
    // Either a plain disconnect or an error status, never a 101.
    if read.is_ok() && !buf.is_empty() {
        let text = String::from_utf8_lossy(&buf);
        assert!(!text.starts_with("HTTP/1.1 101"), "{text}");
    }

    // A connection that sends nothing at all is cut as well.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut buf))
        .await
        .expect("an idle connection was not cut within 3s")
        .ok();

    // A prompt handshake still works.
    let mut c = Client::connect(&gw, &token("prompt", &[], &[], 60)).await;
    assert_eq!(c.welcome.user, "prompt");
    assert!(c.subscribe("x").await.error.is_some());
}
