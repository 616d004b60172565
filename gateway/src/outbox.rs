//! The bounded outbound queue of one connection.
//!
//! The hub pushes shared frames into it from whatever task delivers; the connection's
//! own task drains it into the socket. Pushing never waits: a full queue marks the
//! connection as a slow consumer and wakes its task to close it, so one stuck reader
//! never delays the others. A small hand-made queue instead of a channel because an
//! idle connection must cost a few hundred bytes here, not a pre-allocated block.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One frame ready for the socket; the bytes are shared with other recipients.
#[derive(Clone, Debug)]
pub enum Frame {
    Text(Utf8Bytes),
    Binary(Bytes),
    /// Not for the socket: the channel's history reaches the item's offset (after
    /// the node's Redis subscription came back); the session fills what it missed,
    /// if anything, and drops the item.
    Check,
}

#[derive(Debug)]
pub struct Item {
    pub frame: Frame,
    /// Publish time of a notification (ms since the epoch), for the latency histogram.
    pub published_ms: u64,
    /// History offset of a notification (0: none), for de-duplication after a resume.
    pub offset: u64,
    /// Fingerprint of the history epoch (0: none); see `hub::epoch_tag`.
    pub epoch: u32,
    /// Which subscription of the connection it belongs to.
    pub sub: u32,
}

impl Item {
    pub fn is_check(&self) -> bool {
        matches!(self.frame, Frame::Check)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue was full; the connection is now closing as a slow consumer, and
    /// the `discarded` items it held will not be sent either.
    Full { discarded: usize },
    /// The connection is already closing.
    Closed,
}

struct State {
    queue: VecDeque<Item>,
    /// Set once: the close code the connection must end with.
    close: Option<u16>,
}

pub struct Outbox {
    state: Mutex<State>,
    waker: AtomicWaker,
    capacity: usize,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                close: None,
            }),
            waker: AtomicWaker::new(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, item: Item) -> Result<(), PushError> {
        let mut s = self.lock();
        if s.close.is_some() {
            return Err(PushError::Closed);
        }
        if s.queue.len() >= self.capacity {
            s.close = Some(protocol::close::SLOW_CONSUMER);
            let discarded = s.queue.len();
            s.queue = VecDeque::new();
            drop(s);
            self.waker.wake();
            return Err(PushError::Full { discarded });
        }
        s.queue.push_back(item);
        drop(s);
        self.waker.wake();
        Ok(())
    }

    /// The lowest history offset queued for subscription `sub` in epoch `epoch`.
    pub fn first_offset(&self, sub: u32, epoch: u32) -> Option<u64> {
        self.lock()
            .queue
            .iter()
            .filter(|i| i.sub == sub && i.epoch == epoch && i.offset != 0 && !i.is_check())
            .map(|i| i.offset)
            .min()
    }

    /// Asks the connection to close with `code` (the first request wins).
    pub fn close(&self, code: u16) {
        let mut s = self.lock();
        if s.close.is_none() {
            s.close = Some(code);
        }
        drop(s);
        self.waker.wake();
    }

    pub fn close_code(&self) -> Option<u16> {
        self.lock().close
    }

    /// Empties the queue of a connection that is ending; returns how many items it
    /// held (they are lost, and counted so).
    pub fn discard(&self) -> usize {
        let mut s = self.lock();
        if s.close.is_none() {
            s.close = Some(protocol::close::NORMAL);
        }
        std::mem::take(&mut s.queue).len()
    }

    /// Moves up to `max` queued items into `out` (which the caller emptied);
    /// `Ready(Err(code))` once closing. When everything fits, the queue's buffer
    /// itself moves to `out`: no copy, and an idle outbox holds no allocation. The
    /// price is one small allocation per batch on the next push (~50 ns next to the
    /// batch's write syscall), against 256 bytes kept by every connection that ever
    /// received a message.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<Item>,
        max: usize,
    ) -> Poll<Result<(), u16>> {
        self.waker.register(cx.waker());
        let mut s = self.lock();
        if let Some(code) = s.close {
            return Poll::Ready(Err(code));
        }
        if s.queue.is_empty() {
            return Poll::Pending;
        }
        if s.queue.len() <= max && out.is_empty() {
            std::mem::swap(&mut s.queue, out);
        } else {
            let n = s.queue.len().min(max);
            out.extend(s.queue.drain(..n));
        }
        Poll::Ready(Ok(()))
    }

    /// Resolves when a close was requested (used while a write is in flight).
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<u16> {
        self.waker.register(cx.waker());
        match self.lock().close {
            Some(code) => Poll::Ready(code),
            None => Poll::Pending,
        }
    }

    pub async fn drain(&self, out: &mut VecDeque<Item>, max: usize) -> Result<(), u16> {
        std::future::poll_fn(|cx| self.poll_drain(cx, out, max)).await
    }

    pub async fn closed(&self) -> u16 {
        std::future::poll_fn(|cx| self.poll_closed(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u8) -> Item {
        Item {
            frame: Frame::Binary(Bytes::from(vec![n])),
            published_ms: 0,
            offset: 0,
            epoch: 0,
            sub: 0,
        }
    }

    #[tokio::test]
    async fn full_queue_closes_as_slow_consumer() {
        let o = Outbox::new(2);
        o.push(item(1)).unwrap();
        o.push(item(2)).unwrap();
        assert_eq!(o.push(item(3)), Err(PushError::Full { discarded: 2 }));
        assert_eq!(o.push(item(4)), Err(PushError::Closed));
        let mut out = VecDeque::new();
        assert_eq!(
            o.drain(&mut out, 10).await,
            Err(protocol::close::SLOW_CONSUMER)
        );
    }

    #[tokio::test]
    async fn an_idle_outbox_keeps_no_buffer() {
        let o = Outbox::new(8);
        for n in 0..5 {
            o.push(item(n)).unwrap();
        }
        // More than one batch: the first takes a part, the last takes the buffer.
        let mut out = VecDeque::new();
        o.drain(&mut out, 3).await.unwrap();
        assert_eq!(out.len(), 3);
        assert!(o.lock().queue.capacity() > 0);
        let mut out = VecDeque::new();
        o.drain(&mut out, 3).await.unwrap();
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0].frame, Frame::Binary(b) if b[0] == 3));
        assert_eq!(o.lock().queue.capacity(), 0);
    }

    #[tokio::test]
    async fn drains_in_order_and_wakes() {
        let o = std::sync::Arc::new(Outbox::new(8));
        let o2 = o.clone();
        let t = tokio::spawn(async move {
            let mut out = VecDeque::new();
            o2.drain(&mut out, 10).await.unwrap();
            out.len()
        });
        tokio::task::yield_now().await;
        o.push(item(1)).unwrap();
        assert_eq!(t.await.unwrap(), 1);
        o.push(item(2)).unwrap();
        o.push(item(3)).unwrap();
        let mut out = VecDeque::new();
        o.drain(&mut out, 1).await.unwrap();
        o.drain(&mut out, 1).await.unwrap();
        assert!(matches!(&out[0].frame, Frame::Binary(b) if b[0] == 2));
        assert!(matches!(&out[1].frame, Frame::Binary(b) if b[0] == 3));
        o.close(1001);
        o.close(1000);
        assert_eq!(o.closed().await, 1001);
    }
}
