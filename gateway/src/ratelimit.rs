//! A token bucket on tokio's clock (so tests can pause time).

use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    capacity: f32,
    tokens: f32,
    per_sec: f32,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_sec: f32, capacity: f32, now: Instant) -> Self {
        Self {
            capacity,
            tokens: capacity,
            per_sec,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let mut b = TokenBucket::new(10.0, 5.0, Instant::now());
        for _ in 0..5 {
            assert!(b.take(Instant::now()));
        }
        assert!(!b.take(Instant::now()));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.take(Instant::now()));
        assert!(!b.take(Instant::now()));
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..5 {
            assert!(b.take(Instant::now()));
        }
        assert!(!b.take(Instant::now()));
    }
}
