//! Where each subscription of one connection stands in its channel's history: the
//! last offset sent and the epoch it belongs to. Pure logic, shared (under the
//! outbox's lock) by the connection's task and by the hub, which writes messages
//! straight to an idle socket and must drop duplicates and stop at gaps exactly
//! as the task would.

/// What to do with a message that carries a history offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Send,
    /// At or below what was sent: a copy of what a replay already sent.
    Duplicate,
    /// Offsets between the last sent and this one are missing.
    Gap,
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    sub: u32,
    last: u64,
    /// Fingerprint of the epoch `last` belongs to (0: none yet).
    epoch: u32,
}

/// The positions of a connection's subscriptions (a handful, searched linearly).
#[derive(Debug, Default)]
pub struct Cursor {
    marks: Vec<Mark>,
}

impl Cursor {
    pub fn add(&mut self, sub: u32) {
        self.marks.push(Mark {
            sub,
            last: 0,
            epoch: 0,
        });
    }

    pub fn remove(&mut self, sub: u32) {
        self.marks.retain(|m| m.sub != sub);
    }

    fn mark(&mut self, sub: u32) -> Option<&mut Mark> {
        self.marks.iter_mut().find(|m| m.sub == sub)
    }

    /// The last offset sent and its epoch tag; `None` for an unknown subscription.
    pub fn get(&self, sub: u32) -> Option<(u64, u32)> {
        self.marks
            .iter()
            .find(|m| m.sub == sub)
            .map(|m| (m.last, m.epoch))
    }

    /// Moves subscription `sub` to epoch `epoch` at `last`.
    pub fn set(&mut self, sub: u32, last: u64, epoch: u32) {
        if let Some(m) = self.mark(sub) {
            m.last = last;
            m.epoch = epoch;
        }
    }

    /// Enters epoch `epoch` (offsets start over) unless already in it.
    pub fn enter(&mut self, sub: u32, epoch: u32) {
        if let Some(m) = self.mark(sub)
            && m.epoch != epoch
        {
            m.epoch = epoch;
            m.last = 0;
        }
    }

    /// Counts everything up to `last` as sent (never moves back).
    pub fn raise(&mut self, sub: u32, last: u64) {
        if let Some(m) = self.mark(sub) {
            m.last = m.last.max(last);
        }
    }

    /// What a message with `offset` in the epoch tagged `epoch` is, without changing
    /// anything. A message of a subscription that is gone is a duplicate (dropped).
    pub fn classify(&self, sub: u32, offset: u64, epoch: u32) -> Position {
        let Some(m) = self.marks.iter().find(|m| m.sub == sub) else {
            return Position::Duplicate;
        };
        if epoch != m.epoch {
            // A new epoch (history lost or expired): offsets start over, and a first
            // offset above 1 means the new epoch's start was missed too.
            return if m.epoch != 0 && offset > 1 {
                Position::Gap
            } else {
                Position::Send
            };
        }
        if epoch != 0 && offset > m.last.saturating_add(1) {
            Position::Gap
        } else if offset > m.last {
            Position::Send
        } else {
            Position::Duplicate
        }
    }

    /// Records that the message was sent (after [`classify`](Self::classify) said
    /// [`Position::Send`]).
    pub fn sent(&mut self, sub: u32, offset: u64, epoch: u32) {
        self.set(sub, offset, epoch);
    }

    /// [`classify`](Self::classify), then [`sent`](Self::sent) when it is to be sent.
    pub fn position(&mut self, sub: u32, offset: u64, epoch: u32) -> Position {
        let p = self.classify(sub, offset, epoch);
        if p == Position::Send {
            self.sent(sub, offset, epoch);
        }
        p
    }

    /// Whether subscription `sub` has not seen `top` of the history epoch tagged
    /// `epoch` (a check after a resubscription).
    pub fn behind(&self, sub: u32, top: u64, epoch: u32) -> bool {
        match self.get(sub) {
            // No position yet: nothing to compare with.
            Some((_, 0)) => false,
            Some((last, e)) if e == epoch => top > last,
            // A new epoch with entries: all of them are missing.
            Some(_) => top > 0,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_duplicates_and_gaps() {
        let mut c = Cursor::default();
        c.add(7);
        // The first message of an epoch is taken whatever its offset.
        assert_eq!(c.position(7, 5, 11), Position::Send);
        assert_eq!(c.position(7, 6, 11), Position::Send);
        assert_eq!(c.position(7, 6, 11), Position::Duplicate);
        assert_eq!(c.position(7, 3, 11), Position::Duplicate);
        // Classifying changes nothing.
        assert_eq!(c.classify(7, 8, 11), Position::Gap);
        assert_eq!(c.get(7), Some((6, 11)));
        assert_eq!(c.position(7, 7, 11), Position::Send);
        // A new epoch starts over at 1; above 1 its start was missed.
        assert_eq!(c.classify(7, 1, 12), Position::Send);
        assert_eq!(c.classify(7, 3, 12), Position::Gap);
        // Gone subscriptions and unknown ones drop their messages.
        c.remove(7);
        assert_eq!(c.classify(7, 8, 11), Position::Duplicate);
    }

    #[test]
    fn positions_move_forward_only_except_by_epoch() {
        let mut c = Cursor::default();
        c.add(1);
        c.enter(1, 5);
        c.raise(1, 10);
        c.raise(1, 4);
        assert_eq!(c.get(1), Some((10, 5)));
        c.enter(1, 5);
        assert_eq!(c.get(1), Some((10, 5)));
        c.enter(1, 6);
        assert_eq!(c.get(1), Some((0, 6)));
        assert!(!c.behind(1, 0, 6));
        assert!(c.behind(1, 3, 6));
        assert!(c.behind(1, 1, 7));
        c.set(1, 3, 6);
        assert!(!c.behind(1, 3, 6));
    }
}
