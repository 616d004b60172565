//! The connection loop: one task per connection moves bytes between the WebSocket
//! and its [`Session`], drains the session's outbox into the socket in batches, and
//! keeps heartbeats and token expiry on a single timer.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::frame::{Reply, ServerFrame};
use protocol::{Encoding, close};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::error::SessionEnd;
use crate::heartbeat::{Heartbeat, Tick};
use crate::outbox::{Frame, Item};
use crate::session::{Outcome, Session};

/// Frames moved from the outbox per wakeup; bounds the time one socket write takes.
const BATCH: usize = 64;
/// How long closing may wait on the peer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

fn wall_to_instant(unix_secs: u64) -> Instant {
    let now_ms = protocol::now_millis();
    let target_ms = unix_secs.saturating_mul(1000);
    Instant::now() + Duration::from_millis(target_ms.saturating_sub(now_ms))
}

fn encode_reply(enc: Encoding, frame: &ServerFrame) -> Option<Message> {
    let bytes = frame.encode(enc).ok()?;
    Some(match enc {
        Encoding::Json => Message::Text(Utf8Bytes::try_from(bytes).ok()?),
        Encoding::MsgPack => Message::Binary(bytes),
    })
}

fn read_error(e: &WsError) -> SessionEnd {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => SessionEnd::MessageTooBig,
        WsError::Capacity(_) => SessionEnd::MessageTooBig,
        WsError::Utf8(_) => SessionEnd::InvalidUtf8,
        WsError::Protocol(_) => SessionEnd::ProtocolViolation,
        _ => SessionEnd::PeerGone,
    }
}

/// Runs a connection until it ends; returns why.
pub async fn run<S>(ws: WebSocketStream<S>, mut session: Session) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let node = session.node().clone();
    let enc = session.encoding();
    let outbox = session.outbox().clone();
    let (mut tx, mut rx) = ws.split();
    let mut hb = Heartbeat::new(
        Instant::now(),
        node.config.heartbeat_interval,
        wall_to_instant(session.expires_at()),
    );
    let timer = sleep_until(hb.deadline());
    tokio::pin!(timer);
    let mut batch: Vec<Item> = Vec::new();

    let end = 'conn: {
        if let Some(m) = encode_reply(enc, &session.welcome()) {
            if tx.send(m).await.is_err() {
                break 'conn SessionEnd::PeerGone;
            }
        }
        loop {
            tokio::select! {
                biased;
                drained = outbox.drain(&mut batch, BATCH) => {
                    if let Err(code) = drained {
                        break 'conn SessionEnd::Requested(code);
                    }
                    let now_ms = protocol::now_millis();
                    // A peer that stops reading blocks these writes (`feed` waits for
                    // room once the socket is full, not just the flush); a full outbox
                    // must still be able to end the connection meanwhile.
                    let write = async {
                        for item in batch.drain(..) {
                            if item.published_ms != 0 {
                                node.metrics.latency(now_ms, item.published_ms);
                            }
                            let msg = match item.frame {
                                Frame::Text(t) => Message::Text(t),
                                Frame::Binary(b) => Message::Binary(b),
                            };
                            tx.feed(msg).await?;
                        }
                        tx.flush().await
                    };
                    tokio::select! {
                        r = write => if r.is_err() { break 'conn SessionEnd::PeerGone },
                        code = outbox.closed() => break 'conn SessionEnd::Requested(code),
                    }
                    if batch.capacity() > BATCH {
                        batch = Vec::new();
                    }
                }
                msg = rx.next() => {
                    let now = Instant::now();
                    let msg = match msg {
                        None => break 'conn SessionEnd::PeerGone,
                        Some(Err(e)) => break 'conn read_error(&e),
                        Some(Ok(m)) => m,
                    };
                    hb.seen(now);
                    let data: &[u8] = match &msg {
                        Message::Text(t) if enc == Encoding::Json => t.as_bytes(),
                        Message::Binary(b) if enc == Encoding::MsgPack => b,
                        Message::Text(_) | Message::Binary(_) => {
                            let expected = if enc.is_text() { "text" } else { "binary" };
                            let reply = Reply::error(None, protocol::ErrorCode::BadFrame, format!("this connection uses {} frames in {expected} frames", enc.name()));
                            let reply = match session.wrong_kind(now, reply) {
                                Outcome::Reply(r) => r,
                                Outcome::End(e) => break 'conn e,
                                Outcome::Silent => continue,
                            };
                            if let Some(m) = encode_reply(enc, &ServerFrame::Reply(reply)) {
                                if tx.send(m).await.is_err() { break 'conn SessionEnd::PeerGone; }
                            }
                            continue;
                        }
                        Message::Ping(_) => {
                            node.metrics.inbound("ws_control");
                            // tungstenite queued the pong; send it.
                            if tx.flush().await.is_err() { break 'conn SessionEnd::PeerGone; }
                            continue;
                        }
                        Message::Pong(_) | Message::Frame(_) => {
                            node.metrics.inbound("ws_control");
                            continue;
                        }
                        Message::Close(_) => break 'conn SessionEnd::ClientClosed,
                    };
                    let before = session.expires_at();
                    match session.handle(data, now).await {
                        Outcome::Silent => {}
                        Outcome::Reply(r) => {
                            if let Some(m) = encode_reply(enc, &ServerFrame::Reply(r)) {
                                if tx.send(m).await.is_err() { break 'conn SessionEnd::PeerGone; }
                            }
                        }
                        Outcome::End(e) => break 'conn e,
                    }
                    if session.expires_at() != before {
                        hb.set_expiry(wall_to_instant(session.expires_at()));
                        timer.as_mut().reset(hb.deadline());
                    }
                }
                () = &mut timer => {
                    match hb.tick(Instant::now()) {
                        Tick::Expired => break 'conn SessionEnd::TokenExpired,
                        Tick::Timeout => break 'conn SessionEnd::HeartbeatTimeout,
                        Tick::Ping => {
                            let app_ping = match enc {
                                Encoding::Json => Message::Text(node.ping_json.clone()),
                                Encoding::MsgPack => Message::Binary(node.ping_msgpack.clone()),
                            };
                            if tx.feed(Message::Ping(Default::default())).await.is_err()
                                || tx.feed(app_ping).await.is_err()
                                || tx.flush().await.is_err()
                            {
                                break 'conn SessionEnd::PeerGone;
                            }
                        }
                        Tick::Nothing => {}
                    }
                    timer.as_mut().reset(hb.deadline());
                }
            }
        }
    };

    // Release subscriptions before the (bounded) close handshake.
    let user = session.user().clone();
    let id = session.id();
    drop(session);
    match end.close() {
        Some((code, reason)) => {
            let frame = CloseFrame {
                code: code.into(),
                reason: reason.into(),
            };
            let sent = timeout(CLOSE_TIMEOUT, tx.send(Message::Close(Some(frame)))).await;
            if matches!(sent, Ok(Ok(()))) {
                // Wait for the peer's close so the client reads our code before TCP ends.
                let _ = timeout(CLOSE_TIMEOUT, async {
                    while let Some(Ok(m)) = rx.next().await {
                        if m.is_close() {
                            break;
                        }
                    }
                })
                .await;
            }
        }
        None => {
            if end == SessionEnd::ClientClosed {
                let _ = timeout(CLOSE_TIMEOUT, tx.close()).await;
            }
        }
    }
    let code = end.metric_code();
    node.metrics.connection_closed(code);
    tracing::debug!(session = format_args!("{id:016x}"), user = %user, code, reason = close::name(code), "connection closed");
    end
}
