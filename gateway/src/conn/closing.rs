//! Ending a connection: our close frame (or the answer to the client's), a bounded
//! linger while the peer reads it and answers, then the end of the stream.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::error::SessionEnd;

/// How long closing may wait on the peer.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// [`finish`], boxed by a plain function so that its state never takes room in
/// the connection's own future.
pub(crate) fn closing<S>(
    ws: WebSocketStream<S>,
    end: SessionEnd,
    linger: Duration,
) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(finish(ws, end, linger))
}

/// Sends our close frame (or answers the client's), then lingers, bounded, until
/// the peer has read it and answered: writing what is still buffered as the peer
/// reads, and reading (discarding) what the peer sends. Reading matters: closing
/// a socket with unread input makes the kernel send a reset, which destroys what
/// the peer has not read yet, the close frame included. Then the write side is
/// shut down (FIN after the last byte) before the socket is dropped.
async fn finish<S>(mut ws: WebSocketStream<S>, end: SessionEnd, linger: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match end.close() {
        Some((code, reason)) => {
            let frame = CloseFrame {
                code: code.into(),
                reason: reason.into(),
            };
            // Queued behind whatever is still buffered and written as the peer reads;
            // queued without waiting for room first, which a peer that does not read
            // would never make.
            if futures_util::Sink::start_send(Pin::new(&mut ws), Message::Close(Some(frame)))
                .is_ok()
            {
                let _ = timeout(linger, flush_and_drain(&mut ws)).await;
            }
        }
        None => {
            if end == SessionEnd::ClientClosed {
                let _ = timeout(CLOSE_TIMEOUT, SinkExt::close(&mut ws)).await;
            }
        }
    }
    let _ = timeout(CLOSE_TIMEOUT, ws.get_mut().shutdown()).await;
}

/// Writes what is buffered while reading what arrives, until both the buffer is
/// written and the peer has answered our close (or the stream ended).
async fn flush_and_drain<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut flushed = false;
    std::future::poll_fn(|cx| {
        if !flushed {
            match futures_util::Sink::poll_flush(Pin::new(&mut *ws), cx) {
                Poll::Ready(Ok(())) => flushed = true,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {}
            }
        }
        loop {
            match ws.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(m))) if m.is_close() && flushed => return Poll::Ready(()),
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
}
