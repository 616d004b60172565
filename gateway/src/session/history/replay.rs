//! Deciding what a resuming subscriber gets, and replaying it page by page.
//!
//! [`assess`] compares where the client left off with the first page of history
//! and says whether what follows is everything (`recovered`). A [`Replay`] is the
//! rest of the walk: the offsets still to send, read one bounded page at a time
//! (a count and a byte budget), so a long history of large payloads never sits in
//! a connection's memory at once. A replay that promised completeness and then
//! meets a hole (entries lost from history while it ran) reports it instead of
//! skipping it; the caller ends the session with a resync.

use std::sync::Arc;

use protocol::Publication;
use protocol::frame::Since;
use publisher::HistoryPage;

/// Most entries read from history in one page (each page also has a byte budget).
pub const PAGE_ENTRIES: usize = 256;

/// Whether resuming after `since` from `page` (the first page read after
/// `since.offset`) recovers everything: `None` when no resume was asked for.
/// Never a silent partial replay: anything short of a run starting at
/// `since + 1` up to the latest offset of the same epoch, within `limit`
/// messages, is reported as not recovered.
pub fn assess(since: Option<&Since>, page: &HistoryPage, limit: usize) -> Option<bool> {
    let since = since?;
    // An empty epoch is a client that saw the channel before it had any history:
    // everything in the current epoch is new to it.
    let fresh = since.epoch.is_empty() && since.offset == 0;
    if (!fresh && since.epoch != page.epoch) || since.offset > page.top {
        return Some(false);
    }
    let missing = page.top - since.offset;
    if missing == 0 {
        return Some(true);
    }
    if missing > limit as u64 {
        return Some(false);
    }
    Some(
        page.pubs
            .first()
            .is_some_and(|p| p.offset == Some(since.offset + 1)),
    )
}

/// A walk through a channel's history, sent to the client page by page.
#[derive(Debug)]
pub struct Replay {
    pub channel: Arc<str>,
    /// The history epoch the offsets belong to.
    pub epoch: String,
    /// The last offset covered so far.
    pub at: u64,
    /// The last offset to cover.
    pub until: u64,
    /// Entries still allowed (the recovery limit).
    pub left: usize,
    /// The client was told it gets everything: a hole is an error, not a skip.
    pub promised: bool,
    /// A promised offset turned out missing: after `page`, the session must resync.
    pub broken: bool,
    /// Read and not yet sent, oldest first.
    pub page: Vec<Publication>,
}

/// What a page of history meant for a replay.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Entries to send (possibly none, when every one was a duplicate).
    Continue,
    /// Nothing more to send.
    Done,
    /// A promised offset is missing from history.
    Hole,
}

impl Replay {
    /// Nothing more to read.
    pub fn finished(&self) -> bool {
        self.at >= self.until || self.left == 0
    }

    /// How many entries the next read should ask for.
    pub fn want(&self) -> usize {
        let remaining = usize::try_from(self.until.saturating_sub(self.at)).unwrap_or(usize::MAX);
        remaining.min(self.left).min(PAGE_ENTRIES)
    }

    /// Takes in a page read after `self.at`: keeps the entries up to `until` in
    /// `self.page` (the caller filters duplicates) and moves `at` past them.
    pub fn absorb(&mut self, page: HistoryPage) -> Step {
        let step = self.take(page);
        if step == Step::Hole {
            self.broken = true;
        }
        step
    }

    fn take(&mut self, page: HistoryPage) -> Step {
        if page.epoch != self.epoch {
            return if self.promised {
                Step::Hole
            } else {
                Step::Done
            };
        }
        let mut expected = self.at + 1;
        for p in page.pubs {
            let Some(offset) = p.offset else { continue };
            if offset > self.until || self.left == 0 {
                break;
            }
            if offset != expected {
                if self.promised {
                    return Step::Hole;
                }
                // Best effort (the client was told it was not recovered): what is
                // there, from where it starts.
                if offset < expected {
                    continue;
                }
            }
            expected = offset + 1;
            self.at = offset;
            self.left -= 1;
            self.page.push(p);
        }
        if self.page.is_empty() {
            // An empty page short of `until`: history ends early (trimmed or lost).
            return if self.promised && !self.finished() {
                Step::Hole
            } else {
                self.until = self.at;
                Step::Done
            };
        }
        Step::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Payload;

    fn page(epoch: &str, top: u64, offsets: &[u64]) -> HistoryPage {
        HistoryPage {
            epoch: epoch.into(),
            top,
            pubs: offsets
                .iter()
                .map(|o| {
                    let mut p = Publication::new("c", "e", Payload::null());
                    p.offset = Some(*o);
                    p
                })
                .collect(),
        }
    }

    fn since(offset: u64, epoch: &str) -> Since {
        Since {
            offset,
            epoch: epoch.into(),
        }
    }

    #[test]
    fn assess_full_partial_and_lost() {
        let a = |s: Since, p: HistoryPage| assess(Some(&s), &p, 100);
        assert_eq!(a(since(2, "e"), page("e", 5, &[3, 4, 5])), Some(true));
        // Only the first page is read: its start decides.
        assert_eq!(a(since(2, "e"), page("e", 50, &[3, 4])), Some(true));
        // Nothing missed.
        assert_eq!(a(since(5, "e"), page("e", 5, &[])), Some(true));
        // Trimmed: offset 3 fell out of retention.
        assert_eq!(a(since(2, "e"), page("e", 5, &[4, 5])), Some(false));
        // More missed than the recovery limit.
        assert_eq!(
            assess(Some(&since(2, "e")), &page("e", 9, &[3, 4]), 3),
            Some(false)
        );
        // Epoch changed (stream lost or reset): old offsets mean nothing.
        assert_eq!(a(since(2, "old"), page("new", 5, &[1, 2, 3])), Some(false));
        // A client ahead of the server.
        assert_eq!(a(since(9, "e"), page("e", 5, &[])), Some(false));
        // History lost its newest entries but kept the epoch.
        assert_eq!(a(since(2, "e"), page("e", 5, &[])), Some(false));
        // Resumed from "no history yet": everything from offset 1 is replayed.
        assert_eq!(a(since(0, ""), page("e", 2, &[1, 2])), Some(true));
        assert_eq!(a(since(0, ""), page("e", 3, &[2, 3])), Some(false));
        // No resume asked.
        assert_eq!(assess(None, &page("e", 5, &[5]), 100), None);
    }

    fn replay(at: u64, until: u64, promised: bool) -> Replay {
        Replay {
            channel: Arc::from("c"),
            epoch: "e".into(),
            at,
            until,
            left: 100,
            promised,
            broken: false,
            page: Vec::new(),
        }
    }

    fn taken(r: &mut Replay) -> Vec<u64> {
        r.page.drain(..).filter_map(|p| p.offset).collect()
    }

    #[test]
    fn pages_walk_to_the_end_in_order() {
        let mut r = replay(2, 7, true);
        assert_eq!(r.want(), 5);
        assert_eq!(r.absorb(page("e", 9, &[3, 4])), Step::Continue);
        assert_eq!(taken(&mut r), vec![3, 4]);
        assert!(!r.finished());
        // Entries past `until` are left for live delivery.
        assert_eq!(r.absorb(page("e", 9, &[5, 6, 7, 8])), Step::Continue);
        assert_eq!(taken(&mut r), vec![5, 6, 7]);
        assert!(r.finished());
    }

    #[test]
    fn a_promised_replay_reports_holes() {
        // Entries lost from history meanwhile.
        let mut r = replay(2, 7, true);
        assert_eq!(r.absorb(page("e", 9, &[3, 5])), Step::Hole);
        // What came before the hole is still sent, then the session resyncs.
        assert!(r.broken);
        assert_eq!(taken(&mut r), vec![3]);
        // History ends before `until` (its newest entries lost).
        let mut r = replay(2, 7, true);
        assert_eq!(r.absorb(page("e", 4, &[])), Step::Hole);
        // The epoch changed.
        let mut r = replay(2, 7, true);
        assert_eq!(r.absorb(page("f", 9, &[3])), Step::Hole);
    }

    #[test]
    fn a_best_effort_replay_skips_holes_and_stops_at_the_end() {
        let mut r = replay(2, 9, false);
        assert_eq!(r.absorb(page("e", 9, &[4, 6])), Step::Continue);
        assert_eq!(taken(&mut r), vec![4, 6]);
        assert_eq!(r.absorb(page("e", 9, &[])), Step::Done);
        assert!(r.finished());
    }

    #[test]
    fn the_recovery_limit_bounds_a_replay() {
        let mut r = replay(0, 9, false);
        r.left = 2;
        assert_eq!(r.absorb(page("e", 9, &[1, 2, 3])), Step::Continue);
        assert_eq!(taken(&mut r), vec![1, 2]);
        assert!(r.finished());
        assert_eq!(r.want(), 0);
    }
}
