//! A token bucket on tokio's clock (so tests can pause time).

use std::time::Duration;

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

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes one token now (zero), or reserves the next one and says how long to
    /// wait for it: the caller backs off instead of being refused.
    pub fn take_or_wait(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f32(-self.tokens / self.per_sec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test(start_paused = true)]
    async fn waiting_reserves_the_next_token() {
        let mut b = TokenBucket::new(5.0, 2.0, Instant::now());
        assert_eq!(b.take_or_wait(Instant::now()), Duration::ZERO);
        assert_eq!(b.take_or_wait(Instant::now()), Duration::ZERO);
        let wait = b.take_or_wait(Instant::now());
        assert!((wait.as_secs_f32() - 0.2).abs() < 0.001, "{wait:?}");
        // The next waits behind the reserved one.
        let wait = b.take_or_wait(Instant::now());
        assert!((wait.as_secs_f32() - 0.4).abs() < 0.001, "{wait:?}");
        assert!(!b.take(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.take(Instant::now()));
    }
}
