//! Per-channel history positions: resume points and de-duplication by offset.

use std::collections::HashMap;

use protocol::frame::Since;

/// Where the client is in one channel's history: the epoch of the stream and the last
/// offset delivered (or, right after subscribing, the channel's latest offset, so a
/// reconnect resumes from the moment of the subscription).
///
/// Either part is `None` when the server did not say (a channel without history, or
/// a server that keeps none). Resuming needs both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub epoch: Option<String>,
    pub offset: Option<u64>,
}

impl Position {
    /// The `since` to send when (re)subscribing, if both parts are known.
    pub fn since(&self) -> Option<Since> {
        Some(Since {
            offset: self.offset?,
            epoch: self.epoch.clone()?,
        })
    }
}

impl From<Since> for Position {
    fn from(s: Since) -> Self {
        Position {
            epoch: Some(s.epoch),
            offset: Some(s.offset),
        }
    }
}

/// The positions of every channel the client holds, and the de-duplication rule:
/// within an epoch offsets grow by one per message, so a message whose offset is not
/// above the last one seen on its channel is a duplicate (typically a replayed
/// message that had already arrived live before a reconnect).
#[derive(Debug, Default)]
pub(crate) struct Positions {
    map: HashMap<String, Position>,
    duplicates: u64,
}

impl Positions {
    pub(crate) fn get(&self, channel: &str) -> Option<&Position> {
        self.map.get(channel)
    }

    pub(crate) fn all(&self) -> &HashMap<String, Position> {
        &self.map
    }

    pub(crate) fn since(&self, channel: &str) -> Option<Since> {
        self.map.get(channel).and_then(Position::since)
    }

    pub(crate) fn set(&mut self, channel: &str, p: Position) {
        self.map.insert(channel.to_owned(), p);
    }

    pub(crate) fn remove(&mut self, channel: &str) {
        self.map.remove(channel);
    }

    /// Messages dropped as duplicates so far.
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Records a delivered message. Returns false (and counts it) when it is a
    /// duplicate that must not reach the application.
    pub(crate) fn accept(
        &mut self,
        channel: &str,
        offset: Option<u64>,
        epoch: Option<&str>,
    ) -> bool {
        let Some(offset) = offset else {
            return true;
        };
        let p = self.map.entry(channel.to_owned()).or_default();
        if let Some(e) = epoch
            && p.epoch.as_deref() != Some(e)
        {
            // First message of a (new) epoch: offsets start over, nothing to compare.
            p.epoch = Some(e.to_owned());
            p.offset = Some(offset);
            return true;
        }
        if p.offset.is_some_and(|last| offset <= last) {
            self.duplicates += 1;
            return false;
        }
        p.offset = Some(offset);
        true
    }

    /// A subscription (or connection) without a resume: the server reported the
    /// channel's epoch and latest offset. Later messages follow that offset.
    pub(crate) fn fresh(&mut self, channel: &str, epoch: Option<String>, latest: Option<u64>) {
        let p = self.map.entry(channel.to_owned()).or_default();
        match epoch {
            Some(e) if p.epoch.as_deref() != Some(e.as_str()) => {
                *p = Position {
                    epoch: Some(e),
                    // A live message may have come before the reply: keep the larger.
                    offset: match (p.offset, latest) {
                        (Some(a), Some(b)) if p.epoch.is_none() => Some(a.max(b)),
                        _ => latest,
                    },
                }
            }
            _ => p.offset = p.offset.max(latest),
        }
    }

    /// The answer to a resume (`recovered` present): missed messages follow and
    /// advance the offset. In another epoch old offsets mean nothing: if the client
    /// had a position, the server replays nothing (it cannot tell where the client is
    /// in the new stream), so later messages follow the latest offset; if it had none
    /// (a resume the server started, e.g. from the acknowledged position), everything
    /// that follows is new.
    pub(crate) fn resumed(&mut self, channel: &str, epoch: Option<String>, latest: Option<u64>) {
        let p = self.map.entry(channel.to_owned()).or_default();
        if let Some(e) = epoch
            && p.epoch.as_deref() != Some(e.as_str())
        {
            // An empty epoch is a channel that had no history yet when the client saw
            // it: everything in the new epoch is new to the client, as with no epoch.
            let known = p.epoch.as_deref().is_some_and(|e| !e.is_empty());
            let offset = if known { latest } else { None };
            *p = Position {
                epoch: Some(e),
                offset,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: &str, offset: u64) -> Position {
        Position {
            epoch: Some(epoch.into()),
            offset: Some(offset),
        }
    }

    #[test]
    fn a_first_epoch_after_an_empty_one_replays_everything() {
        // The user had no history at connect (epoch ""), went offline, and the first
        // notification created the epoch: its replay must not count as seen.
        let mut p = Positions::default();
        p.fresh("$user:u", Some(String::new()), Some(0));
        p.resumed("$user:u", Some("e1".into()), Some(1));
        assert!(
            p.accept("$user:u", Some(1), Some("e1")),
            "replayed 1 is new"
        );
        assert!(!p.accept("$user:u", Some(1), Some("e1")), "once");
    }

    #[test]
    fn drops_offsets_at_or_below_the_last_one() {
        let mut p = Positions::default();
        p.fresh("news", Some("e1".into()), Some(10));
        assert!(
            !p.accept("news", Some(10), None),
            "the subscription point itself"
        );
        assert!(p.accept("news", Some(11), None));
        assert!(p.accept("news", Some(12), None));
        assert!(!p.accept("news", Some(12), None), "same offset again");
        assert!(!p.accept("news", Some(11), None), "an older one");
        assert!(p.accept("news", Some(13), None));
        assert_eq!(p.duplicates(), 3);
        assert_eq!(p.get("news"), Some(&pos("e1", 13)));
        assert_eq!(p.since("news").map(|s| s.offset), Some(13));
    }

    #[test]
    fn messages_without_offsets_always_pass() {
        let mut p = Positions::default();
        assert!(p.accept("chat", None, None));
        assert!(p.accept("chat", None, None));
        assert_eq!(p.duplicates(), 0);
        assert_eq!(p.since("chat"), None);
    }

    #[test]
    fn channels_are_independent() {
        let mut p = Positions::default();
        assert!(p.accept("a", Some(5), None));
        assert!(p.accept("b", Some(1), None));
        assert!(!p.accept("a", Some(1), None));
        assert!(p.accept("b", Some(2), None));
    }

    #[test]
    fn resume_in_the_same_epoch_keeps_the_position() {
        let mut p = Positions::default();
        p.set("news", pos("e1", 7));
        p.resumed("news", Some("e1".into()), Some(9));
        // Replayed 6 and 7 were already seen live; 8 and 9 were missed.
        assert!(!p.accept("news", Some(6), None));
        assert!(!p.accept("news", Some(7), None));
        assert!(p.accept("news", Some(8), None));
        assert!(p.accept("news", Some(9), None));
        assert_eq!(p.get("news"), Some(&pos("e1", 9)));
    }

    #[test]
    fn a_new_epoch_starts_over() {
        let mut p = Positions::default();
        p.set("news", pos("e1", 70));
        // Nothing is replayed across epochs: continue after the new stream's latest.
        p.resumed("news", Some("e2".into()), Some(3));
        assert_eq!(p.get("news"), Some(&pos("e2", 3)));
        assert!(p.accept("news", Some(4), None));
        assert!(p.accept("news", Some(5), None));
        assert_eq!(p.get("news"), Some(&pos("e2", 5)));

        p.fresh("news", Some("e3".into()), Some(4));
        assert_eq!(p.get("news"), Some(&pos("e3", 4)));
    }

    #[test]
    fn a_resume_the_server_started_delivers_everything_that_follows() {
        let mut p = Positions::default();
        p.resumed("$user:u", Some("e".into()), Some(9));
        assert_eq!(p.since("$user:u"), None);
        assert!(p.accept("$user:u", Some(7), None));
        assert!(p.accept("$user:u", Some(8), None));
        assert!(!p.accept("$user:u", Some(8), None));
        assert_eq!(p.get("$user:u"), Some(&pos("e", 8)));
    }

    #[test]
    fn fresh_subscription_keeps_a_live_message_that_came_first() {
        let mut p = Positions::default();
        assert!(p.accept("news", Some(11), None));
        p.fresh("news", Some("e1".into()), Some(10));
        assert_eq!(p.get("news"), Some(&pos("e1", 11)));
        p.fresh("news", Some("e1".into()), Some(12));
        assert_eq!(p.get("news"), Some(&pos("e1", 12)));
    }

    #[test]
    fn a_live_message_of_a_new_epoch_restarts_offsets() {
        let mut p = Positions::default();
        assert!(p.accept("c", Some(5), Some("e1")));
        assert!(
            !p.accept("c", Some(5), Some("e1")),
            "duplicate in the same epoch"
        );
        assert!(
            p.accept("c", Some(1), Some("e2")),
            "offsets restart in a new epoch"
        );
        assert!(p.accept("c", Some(2), Some("e2")));
        assert_eq!(
            p.since("c").map(|s| (s.offset, s.epoch)),
            Some((2, "e2".to_string()))
        );
    }
}
