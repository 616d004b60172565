//! Reconnection delays: exponential backoff with full jitter, reset after a stable
//! connection.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Exponential backoff with "full jitter".
///
/// The `n`-th consecutive failure (counting from 0) waits a delay drawn uniformly from
/// `[0, cap_n]`, where `cap_n = min(max, initial * 2^n)`: with the defaults 1 s, 2 s,
/// 4 s, 8 s, 16 s, 30 s, 30 s, ... Random delays spread the reconnects of many
/// clients that lost their node at the same moment.
///
/// The counter goes back to 0 when a connection that stayed up for at least
/// `stable_after` ends ([`on_connected`](Self::on_connected) /
/// [`on_disconnected`](Self::on_disconnected)), so a client that was fine for a
/// while reconnects quickly, while one whose connections keep dropping right after the
/// handshake keeps backing off.
///
/// ```
/// use std::time::Duration;
/// use client::Backoff;
///
/// let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), Duration::from_secs(10));
/// let mut rng = rand::rng();
/// assert_eq!(b.cap(), Duration::from_secs(1));
/// assert!(b.next_delay(&mut rng) <= Duration::from_secs(1));
/// assert_eq!(b.cap(), Duration::from_secs(2));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    stable_after: Duration,
    attempt: u32,
    up_since: Option<Instant>,
}

impl Backoff {
    /// Default first cap.
    pub const INITIAL: Duration = Duration::from_secs(1);
    /// Default largest cap.
    pub const MAX: Duration = Duration::from_secs(30);
    /// Default time a connection must stay up for the counter to reset.
    pub const STABLE_AFTER: Duration = Duration::from_secs(10);

    pub fn new(initial: Duration, max: Duration, stable_after: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            stable_after,
            attempt: 0,
            up_since: None,
        }
    }

    /// Consecutive delays handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next delay: `min(max, initial * 2^attempt)`.
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// Draws the next delay uniformly from `[0, cap]` and moves to the next cap.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let cap = u64::try_from(self.cap().as_nanos()).unwrap_or(u64::MAX);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_nanos(rng.random_range(0..=cap))
    }

    /// Starts over at the first cap.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A connection was established (the server's `welcome` arrived).
    pub fn on_connected(&mut self) {
        self.up_since = Some(Instant::now());
    }

    /// The connection ended; resets the counter if it had been up for at least
    /// `stable_after`.
    pub fn on_disconnected(&mut self) {
        if let Some(since) = self.up_since.take()
            && since.elapsed() >= self.stable_after
        {
            self.reset();
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Self::INITIAL, Self::MAX, Self::STABLE_AFTER)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn caps_double_up_to_the_maximum() {
        let mut b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        let mut caps = Vec::new();
        for _ in 0..10 {
            caps.push(b.cap());
            b.next_delay(&mut rng);
        }
        assert_eq!(
            caps,
            [1, 2, 4, 8, 16, 30, 30, 30, 30, 30].map(S).to_vec(),
            "caps"
        );
        // No overflow however long it keeps failing.
        for _ in 0..100 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.cap(), S(30));
    }

    #[test]
    fn delays_are_full_jitter_within_the_cap() {
        let mut rng = StdRng::seed_from_u64(42);
        for n in 0..8u32 {
            let cap = S(1u64 << n).min(S(30));
            let mut lo = cap;
            let mut hi = Duration::ZERO;
            for _ in 0..400 {
                let mut b = Backoff::default();
                for _ in 0..n {
                    b.next_delay(&mut rng);
                }
                assert_eq!(b.cap(), cap);
                let d = b.next_delay(&mut rng);
                assert!(d <= cap, "attempt {n}: {d:?} > {cap:?}");
                lo = lo.min(d);
                hi = hi.max(d);
            }
            // Full jitter: the samples cover the whole range, not just its top half.
            assert!(lo < cap / 10, "attempt {n}: smallest {lo:?} of cap {cap:?}");
            assert!(
                hi > cap * 9 / 10,
                "attempt {n}: largest {hi:?} of cap {cap:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sleeping_the_delays_takes_that_long() {
        let mut b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(1);
        for n in 0..7u32 {
            let cap = S(1u64 << n).min(S(30));
            let start = Instant::now();
            let d = b.next_delay(&mut rng);
            tokio::time::sleep(d).await;
            let slept = start.elapsed();
            assert!(slept >= d && slept <= cap, "attempt {n}: slept {slept:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn resets_after_a_stable_connection_only() {
        let mut b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..4 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.cap(), S(16));

        // Up for 9 s: not stable, keeps growing.
        b.on_connected();
        tokio::time::advance(S(9)).await;
        b.on_disconnected();
        assert_eq!(b.cap(), S(16));
        b.next_delay(&mut rng);
        assert_eq!(b.cap(), S(30));

        // Up for 10 s: stable, starts over.
        b.on_connected();
        tokio::time::advance(S(10)).await;
        b.on_disconnected();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.cap(), S(1));

        // A disconnect without a connection changes nothing.
        b.next_delay(&mut rng);
        b.on_disconnected();
        assert_eq!(b.cap(), S(2));
    }

    #[test]
    fn custom_bounds() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(200), S(1));
        let mut rng = StdRng::seed_from_u64(0);
        let caps: Vec<_> = (0..5)
            .map(|_| {
                let c = b.cap();
                b.next_delay(&mut rng);
                c.as_millis()
            })
            .collect();
        assert_eq!(caps, [50, 100, 200, 200, 200]);
    }
}
