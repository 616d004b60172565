//! A client's TCP socket shared by the connection's task and the hub.
//!
//! The task reads and writes it through tungstenite (client frames, replies,
//! pings, the close) and writes delivery batches to it directly; the hub writes a
//! message's frame to it directly while the connection is idle (see
//! [`Outbox::deliver`](crate::hub::outbox::Outbox::deliver)). Who may write when is
//! decided under the outbox's lock; this type only lets both hold the socket.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::hub::outbox::Outbox;

/// The socket as tungstenite's stream: reads as usual, writes through the
/// connection's outbox (see [`Outbox::write_gated`]).
pub struct SharedSocket {
    outbox: Arc<Outbox>,
}

impl SharedSocket {
    /// The socket `outbox` holds (none if it holds none).
    pub fn new(outbox: Arc<Outbox>) -> Option<Self> {
        outbox.socket().is_some().then_some(Self { outbox })
    }

    fn socket(&self) -> io::Result<&TcpStream> {
        self.outbox
            .socket()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncRead for SharedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let socket = self.socket()?;
        loop {
            ready!(socket.poll_read_ready(cx))?;
            match socket.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.outbox
            .write_gated(self.socket()?, cx, &[io::IoSlice::new(buf)], true)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.outbox.write_gated(self.socket()?, cx, bufs, true)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = self.socket()?;
        Poll::Ready(socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write))
    }
}

/// Writes `frames` (whole, in order) to the socket, after the rest of a frame begun
/// earlier, in as few syscalls as the kernel takes them. A frame written in part
/// when this is given up leaves its rest in the outbox, to be written first.
pub async fn write_frames(outbox: &Outbox, socket: &TcpStream, frames: &[Bytes]) -> io::Result<()> {
    let mut first = 0;
    loop {
        first +=
            std::future::poll_fn(|cx| outbox.write_frames(socket, cx, &frames[first..])).await?;
        if first >= frames.len() {
            // And what is left of the last one, if it went in part.
            return std::future::poll_fn(|cx| outbox.write_frames(socket, cx, &[]))
                .await
                .map(drop);
        }
    }
}
