//! The connection's writes, each guarded: raced against the outbox's close signal
//! and a stall deadline (a peer that stops reading can block a write, and must
//! still be cut off, as a slow consumer or by a drain, rather than hold its task
//! and subscriptions forever). Also the wait on the broker that keeps serving the
//! connection meanwhile ([`Writer::attend`]), and the [`Link`] the session's
//! history steps run through.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::frame::{Reply, ServerFrame};
use protocol::{Encoding, close};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use crate::conn::heartbeat::{Heartbeat, Tick};
use crate::error::SessionEnd;
use crate::hub::outbox::{Frame, Item, Outbox};
use crate::metrics::{Drop as Lost, Metrics};
use crate::session::encode_frame;
use crate::session::history::flow::Link;

pub(crate) fn read_error(e: &WsError) -> SessionEnd {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => SessionEnd::MessageTooBig,
        WsError::Capacity(_) => SessionEnd::MessageTooBig,
        WsError::Utf8(_) => SessionEnd::InvalidUtf8,
        // The TCP connection ended without a close frame: the peer vanished (a
        // network drop, a killed app), not a protocol violation.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => SessionEnd::PeerGone,
        WsError::Protocol(_) => SessionEnd::ProtocolViolation,
        _ => SessionEnd::PeerGone,
    }
}

/// What a connection keeps watching while it waits on the broker: its heartbeat
/// and token expiry (one timer), and the first client frame that arrived meanwhile.
pub(crate) struct Watch<'a> {
    pub(crate) hb: &'a mut Heartbeat,
    pub(crate) timer: Pin<&'a mut Sleep>,
    /// A data frame read while waiting, handled once the wait is over; until then
    /// the socket is not read further (TCP holds the rest).
    pub(crate) stash: Option<Box<Message>>,
}

impl Watch<'_> {
    pub(crate) fn rearm(&mut self) {
        self.timer.as_mut().reset(self.hb.deadline());
    }
}

/// Runs a write unless the connection is asked to close or the write stalls.
async fn guarded(
    outbox: &Outbox,
    stall: Duration,
    write: impl std::future::Future<Output = Result<(), WsError>>,
) -> Result<(), SessionEnd> {
    // Biased, write first: a write that completes at once never polls (and so never
    // registers) the stall timer.
    tokio::select! {
        biased;
        r = write => r.map_err(|_| SessionEnd::PeerGone),
        code = outbox.closed() => Err(SessionEnd::Requested(code)),
        () = tokio::time::sleep(stall) => Err(SessionEnd::Requested(close::SLOW_CONSUMER)),
    }
}

/// The write half with its guards.
///
/// The stream is not split: reads happen only inside the loop's select and writes
/// only after it, never at once, so no lock (and no second allocation) is needed.
pub(crate) struct Writer<S> {
    pub(crate) ws: WebSocketStream<S>,
    pub(crate) outbox: Arc<Outbox>,
    /// A write blocked this long means the peer stopped reading.
    pub(crate) stall: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Writer<S> {
    /// Writes `msgs` and flushes, unless the connection is asked to close or the
    /// peer stops reading meanwhile.
    pub(crate) async fn send(&mut self, msgs: Vec<Message>) -> Result<(), SessionEnd> {
        let tx = &mut self.ws;
        let write = async {
            for m in msgs {
                tx.feed(m).await?;
            }
            tx.flush().await
        };
        guarded(&self.outbox, self.stall, write).await
    }

    /// The delivery path: writes the items taken from the outbox, in order; counts
    /// them as delivered once written, or as dropped if the write is given up.
    pub(crate) async fn send_items(
        &mut self,
        items: &mut VecDeque<Item>,
        metrics: &Metrics,
    ) -> Result<(), SessionEnd> {
        let n = items
            .iter()
            .filter(|i| matches!(i.frame, Frame::Ws(_)))
            .count() as u64;
        let r = match self.outbox.socket() {
            // The frames are ready-made: straight to the socket, in one write where
            // the kernel takes them, after whatever tungstenite still holds (a pong).
            Some(socket) => {
                if let Err(e) = guarded(&self.outbox, self.stall, self.ws.flush()).await {
                    metrics.dropped(Lost::Closed, n);
                    return Err(e);
                }
                let frames: Vec<bytes::Bytes> = items
                    .drain(..)
                    .filter_map(|i| match i.frame {
                        Frame::Ws(b) => Some(b),
                        Frame::Check => None,
                    })
                    .collect();
                let outbox = &self.outbox;
                let write = async {
                    crate::conn::shared_socket::write_frames(outbox, socket, &frames)
                        .await
                        .map_err(WsError::Io)
                };
                guarded(&self.outbox, self.stall, write).await
            }
            // Not a TCP socket (tests): through tungstenite.
            None => {
                let tx = &mut self.ws;
                let write = async {
                    for item in items.drain(..) {
                        let Frame::Ws(frame) = item.frame else {
                            continue;
                        };
                        let Some((opcode, payload)) = crate::hub::outbox::ws_payload(&frame) else {
                            continue;
                        };
                        let m = match opcode {
                            1 => Message::Text(Utf8Bytes::try_from(payload).map_err(|_| {
                                WsError::Utf8(String::from("a text frame that is not UTF-8"))
                            })?),
                            _ => Message::Binary(payload),
                        };
                        tx.feed(m).await?;
                    }
                    tx.flush().await
                };
                guarded(&self.outbox, self.stall, write).await
            }
        };
        match r {
            Ok(()) => metrics.delivered(n),
            Err(SessionEnd::Requested(close::SLOW_CONSUMER)) => {
                metrics.dropped(Lost::SlowConsumer, n);
            }
            Err(_) => metrics.dropped(Lost::Closed, n),
        }
        r
    }

    /// Awaits `step` (a call to the broker) while still serving the connection: the
    /// client closing or vanishing, a close request (drain, slow consumer), token
    /// expiry and a heartbeat timeout end the wait and the session. A ping that
    /// falls due meanwhile goes out as a WebSocket ping (which every WebSocket
    /// client answers, also before the welcome), so a slow broker never makes a
    /// healthy client look dead. Waits are bounded by the broker's own timeouts.
    pub(crate) async fn attend<T>(
        &mut self,
        step: impl Future<Output = T>,
        watch: &mut Watch<'_>,
    ) -> Result<T, SessionEnd> {
        let mut step = std::pin::pin!(step);
        let Writer {
            ws, outbox, stall, ..
        } = self;
        loop {
            let read = watch.stash.is_none();
            let event = tokio::select! {
                biased;
                v = &mut step => return Ok(v),
                code = outbox.closed() => return Err(SessionEnd::Requested(code)),
                () = &mut watch.timer => None,
                m = ws.next(), if read => Some(m),
            };
            let now = Instant::now();
            match event {
                None => match watch.hb.tick(now) {
                    Tick::Expired => return Err(SessionEnd::TokenExpired),
                    Tick::Timeout => return Err(SessionEnd::HeartbeatTimeout),
                    Tick::Ping => {
                        match timeout(*stall, ws.send(Message::Ping(Default::default()))).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return Err(SessionEnd::PeerGone),
                            Err(_) => return Err(SessionEnd::Requested(close::SLOW_CONSUMER)),
                        }
                        watch.rearm();
                    }
                    Tick::Nothing => watch.rearm(),
                },
                Some(None) => return Err(SessionEnd::PeerGone),
                Some(Some(Err(e))) => return Err(read_error(&e)),
                Some(Some(Ok(m))) => {
                    watch.hb.seen(now);
                    match m {
                        Message::Close(_) => return Err(SessionEnd::ClientClosed),
                        Message::Text(_) | Message::Binary(_) => watch.stash = Some(Box::new(m)),
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
            }
        }
    }

    pub(crate) async fn reply(&mut self, enc: Encoding, r: Reply) -> Result<(), SessionEnd> {
        match encode_frame(enc, &ServerFrame::Reply(r)) {
            Some(m) => self.send(vec![m]).await,
            None => Ok(()),
        }
    }
}

/// The writer with what the connection watches meanwhile: the [`Link`] through
/// which the session's history steps write and wait.
pub(crate) struct Attached<'w, 'h, S> {
    pub(crate) w: &'w mut Writer<S>,
    pub(crate) watch: &'w mut Watch<'h>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link for Attached<'_, '_, S> {
    async fn send(&mut self, msgs: Vec<Message>) -> Result<(), SessionEnd> {
        self.w.send(msgs).await
    }

    async fn send_items(
        &mut self,
        items: &mut VecDeque<Item>,
        metrics: &Metrics,
    ) -> Result<(), SessionEnd> {
        self.w.send_items(items, metrics).await
    }

    async fn attend<T>(&mut self, step: impl Future<Output = T>) -> Result<T, SessionEnd> {
        self.w.attend(step, self.watch).await
    }
}
