//! A token bucket that keeps the client under the server's inbound rate limit
//! (`welcome.limits`): the gateway strikes rate-limited frames and closes with 1008
//! after ten, so the client paces itself instead (docs/protocol.md section 11). The
//! TypeScript client's `bucket.ts` is the same.

use std::time::Duration;

use protocol::frame::Limits;
use tokio::time::Instant;

pub(crate) struct Bucket {
    tokens: f64,
    cap: f64,
    /// Tokens per second.
    rate: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(limits: &Limits) -> Self {
        // Stay a little below the advertised limits: the two clocks are not in step.
        let cap = (f64::from(limits.rate_burst) * 0.9).floor().max(1.0);
        let rate = (f64::from(limits.rate_per_sec) * 0.9).max(1.0);
        Bucket {
            tokens: cap,
            cap,
            rate,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.cap);
        self.at = now;
    }

    /// Takes a token when one is there (publishes, acks and presence queries, which
    /// can wait).
    pub fn try_take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Frames that cannot wait (subscriptions, pongs) may go into debt.
    pub fn force(&mut self) {
        self.refill();
        self.tokens -= 1.0;
    }

    /// When the next token will be there.
    pub fn next_at(&self) -> Instant {
        self.at + Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_sec: u32, burst: u32) -> Limits {
        Limits {
            max_message_bytes: 1,
            max_payload_bytes: 1,
            max_channels: 1,
            rate_per_sec: per_sec,
            rate_burst: burst,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paces_below_the_advertised_limit() {
        // 90 % of a burst of 10 and of 10 per second.
        let mut b = Bucket::new(&limits(10, 10));
        for _ in 0..9 {
            assert!(b.try_take());
        }
        assert!(!b.try_take());
        let wait = b.next_at() - Instant::now();
        assert!(wait > Duration::from_millis(100) && wait <= Duration::from_millis(112));
        tokio::time::sleep(wait + Duration::from_millis(1)).await;
        assert!(b.try_take());
        b.force();
        assert!(b.next_at() > Instant::now());
    }
}
