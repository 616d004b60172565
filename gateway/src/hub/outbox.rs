//! The bounded outbound queue of one connection, and the way around it.
//!
//! The hub delivers from whatever task reads the broker. When the connection is
//! idle (nothing queued, its task not writing and not in the middle of a step that
//! must not be overtaken, such as its greeting or a replay), the hub writes the
//! message's ready-made WebSocket frame straight to the socket with one
//! non-blocking write and is done: no task wake-up, no hand-over between threads,
//! no copy. Otherwise, or when the socket takes only part of it, the message is
//! queued and the connection's task is woken to write it. Pushing never waits: a
//! full queue marks the connection as a slow consumer and wakes its task to close
//! it, so one stuck reader never delays the others. A small hand-made queue instead
//! of a channel because an idle connection must cost a few hundred bytes here, not
//! a pre-allocated block.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;

use crate::hub::cursor::{Cursor, Position};

/// One frame ready for the socket; the bytes are shared with other recipients.
#[derive(Clone, Debug)]
pub enum Frame {
    /// A complete WebSocket frame, header and payload (server frames are not
    /// masked, so every recipient of one encoding gets the same bytes).
    Ws(Bytes),
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

/// What became of a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Written to the socket by the caller.
    Written,
    /// Queued for the connection's task.
    Queued,
    /// A copy of what the connection already sent (after a replay).
    Duplicate,
}

struct State {
    queue: VecDeque<Item>,
    /// Set once: the close code the connection must end with.
    close: Option<u16>,
    /// The connection's task owns the socket now: it writes, or runs a step that
    /// nothing may overtake (greeting, replay, gap fill, a client's request).
    busy: bool,
    /// tungstenite's last write to the socket was partial: the rest of its frame
    /// is still to come, so nothing else may be written meanwhile.
    dirty: bool,
    /// The rest of a frame the hub began writing directly: whoever writes next
    /// writes it first.
    tail: Option<Bytes>,
    /// Where each subscription stands in its history.
    cursor: Cursor,
}

pub struct Outbox {
    state: Mutex<State>,
    waker: AtomicWaker,
    capacity: usize,
    /// The client's socket, written directly while the connection is idle (none
    /// for connections that are not TCP, e.g. in tests). Held here rather than in
    /// an `Arc` of its own: one allocation per connection less.
    socket: Option<TcpStream>,
}

impl Outbox {
    pub fn new(capacity: usize, socket: Option<TcpStream>) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                close: None,
                // Until the task first finds nothing to do: the welcome goes first.
                busy: true,
                dirty: false,
                tail: None,
                cursor: Cursor::default(),
            }),
            waker: AtomicWaker::new(),
            capacity,
            socket,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The subscriptions' positions, for the session.
    pub fn with_cursor<T>(&self, f: impl FnOnce(&mut Cursor) -> T) -> T {
        f(&mut self.lock().cursor)
    }

    pub fn socket(&self) -> Option<&TcpStream> {
        self.socket.as_ref()
    }

    fn enqueue(
        &self,
        mut s: std::sync::MutexGuard<'_, State>,
        item: Item,
    ) -> Result<(), PushError> {
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

    /// Queues an item for the connection's task.
    pub fn push(&self, item: Item) -> Result<(), PushError> {
        let s = self.lock();
        if s.close.is_some() {
            return Err(PushError::Closed);
        }
        self.enqueue(s, item)
    }

    /// Delivers a message: written straight to the socket when the connection is
    /// idle and the socket takes it all, else queued (what a partial write left over
    /// goes first). The item's frame must be [`Frame::Ws`].
    pub fn deliver(&self, item: Item) -> Result<Delivered, PushError> {
        let mut s = self.lock();
        if s.close.is_some() {
            return Err(PushError::Closed);
        }
        let clear = s.queue.is_empty() && !s.busy && !s.dirty && s.tail.is_none();
        let (Some(socket), Frame::Ws(bytes), true) = (&self.socket, &item.frame, clear) else {
            return self.enqueue(s, item).map(|()| Delivered::Queued);
        };
        if item.offset != 0 {
            match s.cursor.classify(item.sub, item.offset, item.epoch) {
                Position::Send => {}
                Position::Duplicate => return Ok(Delivered::Duplicate),
                // The task fills the gap from history first.
                Position::Gap => return self.enqueue(s, item).map(|()| Delivered::Queued),
            }
        }
        match socket.try_write(bytes) {
            Ok(n) if n == bytes.len() => {
                if item.offset != 0 {
                    s.cursor.sent(item.sub, item.offset, item.epoch);
                }
                Ok(Delivered::Written)
            }
            // Part of it: the message is on the wire and counts as written; the rest
            // goes before anything else (also before tungstenite's own writes, see
            // `write_gated`).
            Ok(n) => {
                if item.offset != 0 {
                    s.cursor.sent(item.sub, item.offset, item.epoch);
                }
                s.tail = Some(bytes.slice(n..));
                drop(s);
                self.waker.wake();
                Ok(Delivered::Written)
            }
            // Full socket buffer, or an error the task will meet when it writes.
            Err(_) => self.enqueue(s, item).map(|()| Delivered::Queued),
        }
    }

    /// Whether the rest of a frame the hub began is still to be written.
    pub fn has_tail(&self) -> bool {
        self.lock().tail.is_some()
    }

    /// The task takes the socket for a step the hub must not overtake.
    pub fn hold(&self) {
        self.lock().busy = true;
    }

    /// Writes what is left of a frame the hub began; `Ready(Ok)` once there is
    /// none. Called with the lock held.
    fn poll_tail(
        s: &mut State,
        socket: &TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        while let Some(rest) = &mut s.tail {
            match socket.try_write(rest) {
                Ok(n) if n == rest.len() => s.tail = None,
                Ok(n) => *rest = rest.slice(n..),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if socket.poll_write_ready(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes ready-made frames for the connection's task, after the rest of a frame
    /// begun earlier; returns how many of `frames` were taken (a frame written in
    /// part is taken: its rest becomes the one to write first, also if the write is
    /// given up).
    pub fn write_frames(
        &self,
        socket: &TcpStream,
        cx: &mut Context<'_>,
        frames: &[Bytes],
    ) -> Poll<std::io::Result<usize>> {
        let mut s = self.lock();
        loop {
            match Self::poll_tail(&mut s, socket, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            if frames.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let slices: Vec<std::io::IoSlice<'_>> = frames
                .iter()
                .take(64)
                .map(|f| std::io::IoSlice::new(f))
                .collect();
            match socket.try_write_vectored(&slices) {
                Ok(mut n) => {
                    let mut taken = 0;
                    for f in frames.iter().take(64) {
                        if n == 0 {
                            break;
                        }
                        taken += 1;
                        if n < f.len() {
                            s.tail = Some(f.slice(n..));
                            break;
                        }
                        n -= f.len();
                    }
                    return Poll::Ready(Ok(taken));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if socket.poll_write_ready(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `bufs` for the connection's task under the same lock the hub writes
    /// under: the rest of a frame the hub began goes first. `track` (tungstenite's
    /// writes: replies, pings, pongs, the close frame) notes a partial write, which
    /// keeps the hub off the socket until tungstenite has written the rest.
    pub fn write_gated(
        &self,
        socket: &TcpStream,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
        track: bool,
    ) -> Poll<std::io::Result<usize>> {
        let mut s = self.lock();
        loop {
            match Self::poll_tail(&mut s, socket, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            match socket.try_write_vectored(bufs) {
                Ok(n) => {
                    if track {
                        s.dirty = n < total;
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if track {
                        s.dirty = total > 0;
                    }
                    if socket.poll_write_ready(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
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
    /// held (they are lost, and counted so). The rest of a frame already begun
    /// stays: the close frame is written after it (see `write_gated`), or, if the
    /// peer never takes it, the stream ends without one.
    pub fn discard(&self) -> usize {
        let mut s = self.lock();
        if s.close.is_none() {
            s.close = Some(protocol::close::NORMAL);
        }
        s.busy = true;
        std::mem::take(&mut s.queue).len()
    }

    /// Moves up to `max` queued items into `out` (which the caller emptied);
    /// `Ready(Err(code))` once closing. With nothing queued the connection turns
    /// idle (the hub may write to it directly) until the task next holds it or
    /// finds items. When everything fits, the queue's buffer itself moves to `out`:
    /// no copy, and an idle outbox holds no allocation. The price is one small
    /// allocation per batch on the next push (~50 ns next to the batch's write
    /// syscall), against 256 bytes kept by every connection that ever received a
    /// message.
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
        if s.queue.is_empty() && s.tail.is_none() {
            s.busy = false;
            return Poll::Pending;
        }
        s.busy = true;
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

/// The header of an unmasked (server) WebSocket frame with `opcode` (0x1 text,
/// 0x2 binary) and a payload of `len` bytes, final fragment.
pub fn ws_header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut h = [0u8; 10];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if len <= u16::MAX as usize {
        h[1] = 126;
        h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// A complete server WebSocket frame around `payload`.
pub fn ws_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let (h, n) = ws_header(opcode, payload.len());
    let mut v = Vec::with_capacity(n + payload.len());
    v.extend_from_slice(&h[..n]);
    v.extend_from_slice(payload);
    Bytes::from(v)
}

/// The opcode and payload of a frame made by [`ws_frame`].
pub fn ws_payload(frame: &Bytes) -> Option<(u8, Bytes)> {
    let opcode = frame.first()? & 0x0f;
    let hl = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    (frame.len() >= hl).then(|| (opcode, frame.slice(hl..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u8) -> Item {
        Item {
            frame: Frame::Ws(ws_frame(2, &[n])),
            published_ms: 0,
            offset: 0,
            epoch: 0,
            sub: 0,
        }
    }

    fn first_byte(i: &Item) -> u8 {
        match &i.frame {
            Frame::Ws(b) => ws_payload(b).map_or(0, |(_, p)| p[0]),
            _ => 0,
        }
    }

    #[tokio::test]
    async fn full_queue_closes_as_slow_consumer() {
        let o = Outbox::new(2, None);
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
        let o = Outbox::new(8, None);
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
        assert_eq!(first_byte(&out[0]), 3);
        assert_eq!(o.lock().queue.capacity(), 0);
    }

    #[tokio::test]
    async fn drains_in_order_and_wakes() {
        let o = std::sync::Arc::new(Outbox::new(8, None));
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
        assert_eq!(first_byte(&out[0]), 2);
        assert_eq!(first_byte(&out[1]), 3);
        o.close(1001);
        o.close(1000);
        assert_eq!(o.closed().await, 1001);
    }

    #[tokio::test]
    async fn an_idle_connection_is_written_directly_and_a_busy_one_queues() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let o = Outbox::new(8, Some(server));
        o.with_cursor(|c| c.add(0));
        // Busy until the task first finds nothing to do (its greeting goes first).
        assert_eq!(o.deliver(item(1)), Ok(Delivered::Queued));
        let mut out = VecDeque::new();
        o.drain(&mut out, 10).await.unwrap();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut none = VecDeque::new();
        assert!(o.poll_drain(&mut cx, &mut none, 10).is_pending());
        // Idle now: written at once.
        assert_eq!(o.deliver(item(2)), Ok(Delivered::Written));
        // History items follow the cursor: a duplicate is dropped, a gap queued.
        let mut h = item(3);
        h.offset = 5;
        h.epoch = 9;
        assert_eq!(o.deliver(h), Ok(Delivered::Written));
        let mut dup = item(4);
        dup.offset = 5;
        dup.epoch = 9;
        assert_eq!(o.deliver(dup), Ok(Delivered::Duplicate));
        let mut gap = item(5);
        gap.offset = 7;
        gap.epoch = 9;
        assert_eq!(o.deliver(gap), Ok(Delivered::Queued));
        // Held by the task: queued.
        o.hold();
        let mut out = VecDeque::new();
        o.drain(&mut out, 10).await.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(o.deliver(item(6)), Ok(Delivered::Queued));
        // What reached the socket: frames 2 and 3, whole.
        let mut got = vec![0u8; 6];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, [0x82, 1, 2, 0x82, 1, 3]);
    }

    #[test]
    fn frames_round_trip_their_header() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload = vec![7u8; len];
            let f = ws_frame(1, &payload);
            let (op, p) = ws_payload(&f).unwrap();
            assert_eq!((op, p.len()), (1, len));
        }
    }
}
