//! The history steps a connection runs beside live traffic: the greeting (resume
//! the personal channel, welcome, replay), replays page by page, and filling the
//! gaps that live delivery revealed. They run on the connection's task through a
//! [`Link`], so what history does lives in this folder and the connection only
//! writes and keeps watch.

use std::collections::VecDeque;
use std::future::Future;

use protocol::frame::{Since, encode_message};
use protocol::{Encoding, Publication, close};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::replay::{Replay, Step};
use crate::error::SessionEnd;
use crate::hub::outbox::Item;
use crate::metrics::{Drop as Lost, Metrics};
use crate::session::{Session, encode_frame, to_message};

/// What the history steps need of their connection: guarded writes, and waiting
/// (on the broker, or for the rate limit) while the connection is still served
/// (heartbeats, token expiry, a close request, the client going away). Implemented
/// by the connection's writer (`conn::writer::Attached`).
pub(crate) trait Link {
    /// Writes `msgs` and flushes, unless the connection must close meanwhile.
    async fn send(&mut self, msgs: Vec<Message>) -> Result<(), SessionEnd>;

    /// Writes items taken from the outbox, in order; counts them as delivered or
    /// dropped.
    async fn send_items(
        &mut self,
        items: &mut VecDeque<Item>,
        metrics: &Metrics,
    ) -> Result<(), SessionEnd>;

    /// Awaits `step` while still serving the connection.
    async fn attend<T>(&mut self, step: impl Future<Output = T>) -> Result<T, SessionEnd>;
}

/// Replays what the personal channel missed (live messages queue meanwhile and are
/// filtered by offset), then greets: welcome, then the replay, then live traffic.
pub(crate) async fn greet(
    session: &mut Session,
    link: &mut impl Link,
    resume: Option<Box<Since>>,
) -> Result<(), SessionEnd> {
    // A connection that finished its upgrade after draining began was not among
    // those the drain closes: it is told to go elsewhere at once.
    if session.node().is_draining() {
        return Err(SessionEnd::Requested(close::GOING_AWAY));
    }
    let enc = session.encoding();
    let (personal, replay) = link
        .attend(session.resume_personal(resume.map(|s| *s)))
        .await?;
    let welcome: Vec<Message> = encode_frame(enc, &session.welcome(&personal))
        .into_iter()
        .collect();
    drop(personal);
    link.send(welcome).await?;
    match replay {
        Some(r) => send_replay(session, link, r).await,
        None => Ok(()),
    }
}

/// Sends a replay from history page by page: each page is written (through the
/// stall guard) before the next is read, so a connection holds one page at a time.
/// A replay that meets a hole it promised to cover ends the session with a resync
/// after what came before the hole.
pub(crate) async fn send_replay(
    session: &mut Session,
    link: &mut impl Link,
    mut replay: Replay,
) -> Result<(), SessionEnd> {
    let enc = session.encoding();
    loop {
        let page = std::mem::take(&mut replay.page);
        if !page.is_empty() {
            let metrics = &session.node().metrics;
            metrics.replayed(page.len() as u64);
            let msgs = encode_replay(enc, &page, metrics);
            // The encoded frames are all this connection keeps of the page.
            drop(page);
            link.send(msgs).await?;
        }
        if replay.broken {
            return Err(SessionEnd::Resync);
        }
        if replay.finished() {
            return Ok(());
        }
        let step = link.attend(session.next_page(&mut replay)).await?;
        if step == Step::Done && replay.page.is_empty() {
            return Ok(());
        }
    }
}

/// Sends `rest` (which starts with an item that skipped offsets) after filling each
/// gap from history, so the client still sees every offset once, in order. Every
/// round either sends the item that revealed its gap or ends the session, so the
/// rounds are bounded by the batch; each history read passes the rate limit.
pub(crate) async fn fill_gaps(
    session: &mut Session,
    link: &mut impl Link,
    mut rest: VecDeque<Item>,
) -> Result<(), SessionEnd> {
    loop {
        // A check item's gap ends at its offset; any other's just before it.
        let front = rest
            .front()
            .map(|i| (i.sub, i.epoch, i.offset + u64::from(i.is_check())));
        let Some((sub, epoch, offset)) = front else {
            return Ok(());
        };
        let wait = session.fill_wait(Instant::now());
        if !wait.is_zero() {
            link.attend(tokio::time::sleep(wait)).await?;
        }
        let replay = link.attend(session.fill(sub, epoch, offset)).await??;
        if let Some(replay) = replay {
            send_replay(session, link, replay).await?;
        }
        let next = session.filter(&mut rest);
        let metrics = session.node().metrics.clone();
        link.send_items(&mut rest, &metrics).await?;
        match next {
            Some(r) => rest = r,
            None => return Ok(()),
        }
    }
}

/// Encodes replayed publications. Every payload accepted since payloads are
/// limited to 64 levels of nesting encodes in both encodings; one that does not
/// (history written before that limit) is counted as dropped and logged with its
/// offset, never skipped in silence.
fn encode_replay(enc: Encoding, replay: &[Publication], metrics: &Metrics) -> Vec<Message> {
    replay
        .iter()
        .filter_map(|p| {
            let m = encode_message(enc, p).ok().and_then(|b| to_message(enc, b));
            if m.is_none() {
                metrics.dropped(Lost::Encode, 1);
                tracing::error!(
                    offset = p.offset,
                    encoding = enc.name(),
                    "cannot encode a replayed message"
                );
            }
            m
        })
        .collect()
}
