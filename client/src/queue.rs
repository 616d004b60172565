//! The bounded queue of outgoing publishes, acks and presence queries.

use std::collections::VecDeque;

/// A bounded FIFO: holds publishes, acks and presence queries while the client is disconnected (and
/// while it paces itself under the server's rate limit); refuses new items when full
/// instead of growing without bound.
#[derive(Debug)]
pub(crate) struct OfflineQueue<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> OfflineQueue<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            capacity,
        }
    }

    /// Appends an item, or gives it back when the queue is full.
    pub(crate) fn push(&mut self, item: T) -> Result<(), T> {
        if self.items.len() >= self.capacity {
            return Err(item);
        }
        self.items.push_back(item);
        Ok(())
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes every item, oldest first.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.items.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_reports_overflow() {
        let mut q = OfflineQueue::new(3);
        assert!(q.is_empty());
        for i in 1..=3 {
            assert_eq!(q.push(i), Ok(()));
        }
        assert_eq!(q.push(4), Err(4), "a full queue gives the item back");
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.push(5), Ok(()), "room again after one left");
        assert_eq!(q.drain().collect::<Vec<_>>(), [2, 3, 5]);
        assert!(q.is_empty());
    }

    #[test]
    fn zero_capacity_refuses_everything() {
        let mut q = OfflineQueue::new(0);
        assert_eq!(q.push("x"), Err("x"));
    }
}
