//! A token bucket on tokio's clock (so tests can pause time).

use std::time::Duration;

use tokio::time::Instant;

/// A bucket's rate and size (from the configuration, not stored per bucket).
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_sec: f32,
    pub capacity: f32,
}

/// The state of one bucket: 8 bytes, because every connection carries three.
/// Times are milliseconds since an origin the caller keeps (the node's start); the
/// count wraps after 49 days, which at worst refills a bucket idle that long a
/// little less than it deserves.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f32,
    last_ms: u32,
}

fn ms_since(origin: Instant, now: Instant) -> u32 {
    now.saturating_duration_since(origin).as_millis() as u32
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: Rate, origin: Instant, now: Instant) -> Self {
        Self {
            tokens: rate.capacity,
            last_ms: ms_since(origin, now),
        }
    }

    fn refill(&mut self, rate: Rate, origin: Instant, now: Instant) {
        let now_ms = ms_since(origin, now);
        let elapsed = now_ms.wrapping_sub(self.last_ms) as f32 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.capacity);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, rate: Rate, origin: Instant, now: Instant) -> bool {
        self.refill(rate, origin, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes one token now (zero), or reserves the next one and says how long to
    /// wait for it: the caller backs off instead of being refused.
    pub fn take_or_wait(&mut self, rate: Rate, origin: Instant, now: Instant) -> Duration {
        self.refill(rate, origin, now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f32(-self.tokens / rate.per_sec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: Rate = Rate {
        per_sec: 10.0,
        capacity: 5.0,
    };

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate() {
        let origin = Instant::now();
        let mut b = TokenBucket::new(TEN, origin, Instant::now());
        let take = |b: &mut TokenBucket| b.take(TEN, origin, Instant::now());
        for _ in 0..5 {
            assert!(take(&mut b));
        }
        assert!(!take(&mut b));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(take(&mut b));
        assert!(!take(&mut b));
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..5 {
            assert!(take(&mut b));
        }
        assert!(!take(&mut b));
        assert_eq!(std::mem::size_of::<TokenBucket>(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_reserves_the_next_token() {
        let rate = Rate {
            per_sec: 5.0,
            capacity: 2.0,
        };
        let origin = Instant::now();
        let mut b = TokenBucket::new(rate, origin, Instant::now());
        let wait = |b: &mut TokenBucket| b.take_or_wait(rate, origin, Instant::now());
        assert_eq!(wait(&mut b), Duration::ZERO);
        assert_eq!(wait(&mut b), Duration::ZERO);
        let w = wait(&mut b);
        assert!((w.as_secs_f32() - 0.2).abs() < 0.001, "{w:?}");
        // The next waits behind the reserved one.
        let w = wait(&mut b);
        assert!((w.as_secs_f32() - 0.4).abs() < 0.001, "{w:?}");
        assert!(!b.take(rate, origin, Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.take(rate, origin, Instant::now()));
    }
}
