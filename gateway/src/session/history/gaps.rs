//! Gaps: a live message that skips offsets (lost between Redis and this node, e.g.
//! while its subscription reconnected) or a check after a reconnect says a
//! subscription is behind; the session fills the gap from history before going on,
//! or ends with a resync when history cannot cover it.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::replay::{PAGE_ENTRIES, Replay, Step};
use crate::error::SessionEnd;
use crate::hub::cursor::Position;
use crate::hub::outbox::Item;
use crate::session::{Session, resume_rate};

impl Session {
    /// Keeps the items of `batch` to send, in order, dropping duplicates. Stops at the
    /// first item whose channel skipped offsets (a live message lost between Redis and
    /// this node, e.g. while its subscription reconnected) and returns it with
    /// everything after it: the caller fills the gap from history before those.
    pub(crate) fn filter(&mut self, batch: &mut VecDeque<Item>) -> Option<VecDeque<Item>> {
        self.outbox.with_cursor(|cursor| {
            let mut i = 0;
            while let Some(item) = batch.get(i) {
                if item.is_check() {
                    if cursor.behind(item.sub, item.offset, item.epoch) {
                        return Some(batch.split_off(i));
                    }
                    batch.remove(i);
                    continue;
                }
                if item.offset == 0 {
                    i += 1;
                    continue;
                }
                match cursor.position(item.sub, item.offset, item.epoch) {
                    Position::Send => i += 1,
                    Position::Duplicate => {
                        batch.remove(i);
                    }
                    Position::Gap => return Some(batch.split_off(i)),
                }
            }
            None
        })
    }

    /// How long a gap fill must wait for the history-read rate limit (zero: go on;
    /// a token is taken).
    pub(crate) fn fill_wait(&mut self, now: Instant) -> std::time::Duration {
        let wait = self
            .resumes
            .take_or_wait(resume_rate(&self.node), self.node.started, now);
        if !wait.is_zero() {
            self.node.metrics.history_limited();
        }
        wait
    }

    /// The replay of what is missing before the gap `sub` revealed (the item with
    /// `offset` in the epoch tagged `epoch`), with its first page read. Ends the
    /// session with [`SessionEnd::Resync`] when history cannot cover the gap (lost
    /// from history, trimmed, a new epoch, more than the recovery limit, Redis
    /// unreachable): the client then resumes and is told what was lost, never a
    /// silent hole, and never a read repeated on the same gap.
    pub(crate) async fn fill(
        &mut self,
        sub: u32,
        epoch: u32,
        offset: u64,
    ) -> Result<Option<Replay>, SessionEnd> {
        let Some(s) = self.subs.iter().find(|s| s.id == sub) else {
            return Ok(None);
        };
        let channel = s.channel.clone();
        let Some((last, at)) = self.outbox.with_cursor(|c| c.get(sub)) else {
            return Ok(None);
        };
        let from = if at == epoch { last } else { 0 };
        let until = offset.saturating_sub(1);
        let limit = self.node.config.history.recovery_limit;
        let want = usize::try_from(until.saturating_sub(from))
            .unwrap_or(usize::MAX)
            .min(limit)
            .min(PAGE_ENTRIES);
        let page = self.read_page(&channel, Some(from), want).await;
        let page = match page {
            // History must still reach the gap's end in the same epoch and hold it
            // from the first missing offset on.
            Ok(page)
                if crate::hub::epoch_tag(&page.epoch) == epoch
                    && page.top >= until
                    && until - from <= limit as u64
                    && page.pubs.first().and_then(|p| p.offset) == Some(from + 1) =>
            {
                page
            }
            other => {
                if let Err(e) = other {
                    tracing::warn!(error = %e, "cannot read history to fill a gap");
                }
                self.node.metrics.gap(false);
                return Err(SessionEnd::Resync);
            }
        };
        self.node.metrics.gap(true);
        self.outbox.with_cursor(|c| c.set(sub, until, epoch));
        let mut replay = Replay {
            channel,
            epoch: page.epoch.clone(),
            at: from,
            until,
            left: limit,
            promised: true,
            broken: false,
            page: Vec::new(),
        };
        replay.absorb(page);
        Ok(Some(replay))
    }

    /// Reads the next page of `replay` into it. A promised replay that cannot go on
    /// (a hole in history, Redis unreachable) is [`Step::Hole`]: what was read is
    /// sent, then the session ends with a resync.
    pub(crate) async fn next_page(&mut self, replay: &mut Replay) -> Step {
        if replay.finished() {
            return Step::Done;
        }
        let want = replay.want();
        match self.read_page(&replay.channel, Some(replay.at), want).await {
            Ok(page) => replay.absorb(page),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the next page of a replay");
                if replay.promised {
                    replay.broken = true;
                    Step::Hole
                } else {
                    Step::Done
                }
            }
        }
    }
}
