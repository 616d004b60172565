//! Everything about history on the session's side: where a subscription stands
//! ([`Recovered`], the personal channel's [`PersonalState`] for the welcome),
//! resuming (`recover`, `resume_personal`), replays page by page ([`replay`]),
//! filling the gaps live delivery revealed ([`gaps`]) and the steps a connection
//! runs for them beside live traffic ([`flow`]). Positions themselves are kept by
//! the outbox's cursor (`hub::cursor`), where direct writes need them.

pub(crate) mod flow;
mod gaps;
pub(crate) mod replay;

use protocol::frame::Since;
use publisher::HistoryPage;
use tokio::time::Instant;

use crate::broker::BrokerError;
use crate::session::{Session, resume_rate};
use replay::{PAGE_ENTRIES, Replay};

/// Recovery facts about the personal channel, reported in `welcome` (kept only
/// until then: every connection would carry them otherwise).
#[derive(Default)]
pub struct PersonalState {
    pub(crate) epoch: Option<String>,
    pub(crate) offset: Option<u64>,
    pub(crate) recovered: Option<bool>,
}

/// A subscription's position after reading its history: what the reply says and
/// what to replay after it.
pub(crate) struct Recovered {
    pub(crate) epoch: String,
    pub(crate) offset: u64,
    pub(crate) recovered: Option<bool>,
    pub(crate) replay: Option<Replay>,
}

impl Session {
    /// One page of `channel`'s history after `after`, bounded by the replay page
    /// size in bytes.
    pub(crate) async fn read_page(
        &self,
        channel: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        self.node
            .broker
            .history(
                channel,
                after,
                limit,
                self.node.config.history.replay_page_bytes,
            )
            .await
    }

    /// Reads a channel's history for a (re)subscription: the reply fields and what
    /// to replay. Sets the subscription's position so queued duplicates are dropped.
    pub(crate) async fn recover(
        &mut self,
        pos: usize,
        since: Option<&Since>,
        base: Option<HistoryPage>,
    ) -> Result<Recovered, BrokerError> {
        let channel = self.subs[pos].channel.clone();
        // Without a resume, the client's position is read *before* live delivery is
        // confirmed: a message published meanwhile can be in history when it is read
        // below while its live copy is still on the way, and must not count as seen.
        let base = match (since, base) {
            (Some(_), _) => None,
            (None, Some(b)) => Some(b),
            (None, None) => Some(self.read_page(&channel, None, 0).await?),
        };
        // Live delivery must run before history is read, or a message published in
        // between would be in neither.
        if !self.node.broker.subscribed(&channel).await {
            tracing::debug!("live subscription not confirmed before reading history");
        }
        // A base without an epoch is a channel without history yet: all of the
        // epoch that starts meanwhile is new.
        let from = match (since, &base) {
            (Some(s), _) => s.offset,
            (None, Some(b)) if b.epoch.is_empty() => 0,
            (None, Some(b)) => b.top,
            (None, None) => 0,
        };
        let limit = self.node.config.history.recovery_limit;
        let page = self
            .read_page(&channel, Some(from), limit.min(PAGE_ENTRIES))
            .await?;
        let (epoch, top) = (page.epoch.clone(), page.top);
        let Some(id) = self.subs.get(pos).map(|s| s.id) else {
            return Ok(Recovered {
                epoch,
                offset: top,
                recovered: since.map(|_| false),
                replay: None,
            });
        };
        let tag = crate::hub::epoch_tag(&epoch);
        self.outbox.with_cursor(|c| c.enter(id, tag));
        let replay_from = |at: u64, promised: bool, page: HistoryPage| {
            let mut r = Replay {
                channel: channel.clone(),
                epoch: epoch.clone(),
                at,
                until: top,
                left: limit,
                promised,
                broken: false,
                page: Vec::new(),
            };
            r.absorb(page);
            r
        };
        if let Some(since) = since {
            let recovered = replay::assess(Some(since), &page, limit);
            let same = since.epoch == epoch || (since.epoch.is_empty() && since.offset == 0);
            // The replay covers everything up to the top: queued live copies of it
            // are duplicates.
            self.outbox.with_cursor(|c| c.raise(id, top));
            let replay = (same && since.offset < top)
                .then(|| replay_from(since.offset, recovered == Some(true), page));
            return Ok(Recovered {
                epoch: epoch.clone(),
                offset: top,
                recovered,
                replay,
            });
        }
        // Live messages already queued in this epoch: everything from the first one
        // on follows live, in order.
        if let Some(first) = self.outbox.first_offset(id, tag) {
            let seen = top.min(first - 1);
            self.outbox.with_cursor(|c| c.raise(id, seen));
            return Ok(Recovered {
                epoch: epoch.clone(),
                offset: seen,
                recovered: None,
                replay: None,
            });
        }
        // Nothing queued yet: the client stands at the base and what history holds
        // after it is sent after the reply; live copies of it are then duplicates.
        let base = base.filter(|b| b.epoch.is_empty() || b.epoch == epoch);
        if let Some(b) = base {
            let at = Since {
                offset: from,
                epoch: if b.epoch.is_empty() {
                    epoch.clone()
                } else {
                    b.epoch
                },
            };
            if replay::assess(Some(&at), &page, limit) == Some(true) {
                self.outbox.with_cursor(|c| c.raise(id, top));
                let replay = (from < top).then(|| replay_from(from, true, page));
                return Ok(Recovered {
                    epoch: epoch.clone(),
                    offset: from,
                    recovered: None,
                    replay,
                });
            }
        }
        // The epoch changed while waiting, or more than the recovery limit landed:
        // start at the top. A message whose live copy is still on the way is then
        // dropped as seen; this needs an epoch change or `--recovery-limit` messages
        // within the connection's setup.
        self.outbox.with_cursor(|c| c.raise(id, top));
        Ok(Recovered {
            epoch: epoch.clone(),
            offset: top,
            recovered: None,
            replay: None,
        })
    }

    /// Resumes the personal channel at connect, from where the client says it left
    /// off or else from the user's acknowledged position; returns what the welcome
    /// reports and what to replay after it.
    pub(crate) async fn resume_personal(
        &mut self,
        since: Option<Since>,
    ) -> (PersonalState, Option<Replay>) {
        let personal = self.subs[0].channel.clone();
        if self.node.config.history.rules.policy(&personal).is_none() {
            let state = PersonalState {
                recovered: since.map(|_| false),
                ..PersonalState::default()
            };
            return (state, None);
        }
        // The first history read of the connection: counted, always allowed.
        let _ = self
            .resumes
            .take(resume_rate(&self.node), self.node.started, Instant::now());
        // Without resume parameters: the acknowledged position, read together with
        // the channel's position (the base of a fresh start, see `recover`).
        let (since, base) = match since {
            Some(s) => (Some(s), None),
            None => match self.node.broker.position(&personal).await {
                Ok((_, Some(p))) => (
                    Some(Since {
                        offset: p.offset,
                        epoch: p.epoch,
                    }),
                    None,
                ),
                Ok((page, None)) => (None, Some(page)),
                Err(_) => (None, None),
            },
        };
        match self.recover(0, since.as_ref(), base).await {
            Ok(r) => {
                let state = PersonalState {
                    epoch: Some(r.epoch),
                    offset: Some(r.offset),
                    recovered: r.recovered,
                };
                (state, r.replay)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read personal history");
                let state = PersonalState {
                    recovered: since.map(|_| false),
                    ..PersonalState::default()
                };
                (state, None)
            }
        }
    }
}
