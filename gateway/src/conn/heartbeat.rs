//! Heartbeat and token-expiry deadlines of one connection, as pure logic on tokio's
//! clock. The socket loop keeps one timer armed at [`Heartbeat::deadline`] and asks
//! [`Heartbeat::tick`] what to do when it fires.
//!
//! Pings fall due on a node-wide grid (multiples of [`grid`] after the node
//! started), so a node's connections ping in a few bursts instead of each waking
//! the node on its own: the answers then come back while the node is still busy and
//! are read in batches. Waking up, not writing, was most of an idle node's cost.

use std::time::Duration;

use tokio::time::Instant;

/// The ping grid for a heartbeat interval: 20 ms (an eighth of very short
/// intervals). Coarse enough that the pings of all connections opened within 20 ms
/// share one wake-up, fine enough that a grid point's burst stays short: with a 1 s
/// grid, 10,000 connections opened within a second pinged in one ~50 ms burst that
/// delayed deliveries (p99.9 67 ms in `targeted`).
pub fn grid(interval: Duration) -> Duration {
    (interval / 8).min(Duration::from_millis(20))
}

#[derive(Debug)]
pub struct Heartbeat {
    interval: Duration,
    /// Pings are due on multiples of `grid` after `origin`; a zero grid disables it.
    origin: Instant,
    grid: Duration,
    last_seen: Instant,
    next_ping: Instant,
    expires: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    /// Send a ping now.
    Ping,
    /// Nothing heard for two intervals: close.
    Timeout,
    /// The token expired: close.
    Expired,
    /// Fired early (the peer was heard since the timer was armed); re-arm.
    Nothing,
}

impl Heartbeat {
    /// Pings fall due on multiples of `grid` after `origin` (a zero grid: an interval
    /// after the last ping).
    pub fn new(
        now: Instant,
        interval: Duration,
        expires: Instant,
        origin: Instant,
        grid: Duration,
    ) -> Self {
        let mut h = Self {
            interval,
            origin,
            grid,
            last_seen: now,
            next_ping: now,
            expires,
        };
        h.next_ping = h.align(now + interval);
        h
    }

    /// The first grid point at or after `t`.
    fn align(&self, t: Instant) -> Instant {
        if self.grid.is_zero() || t <= self.origin {
            return t;
        }
        let g = self.grid.as_nanos();
        let points = (t - self.origin).as_nanos().div_ceil(g);
        let offset = u64::try_from(points * g).unwrap_or(u64::MAX);
        self.origin + Duration::from_nanos(offset)
    }

    /// The peer sent something.
    pub fn seen(&mut self, now: Instant) {
        self.last_seen = now;
    }

    pub fn set_expiry(&mut self, expires: Instant) {
        self.expires = expires;
    }

    pub fn deadline(&self) -> Instant {
        self.next_ping
            .min(self.last_seen + self.interval * 2)
            .min(self.expires)
    }

    pub fn tick(&mut self, now: Instant) -> Tick {
        if now >= self.expires {
            return Tick::Expired;
        }
        if now >= self.last_seen + self.interval * 2 {
            return Tick::Timeout;
        }
        if now >= self.next_ping {
            self.next_ping = self.align(now + self.interval);
            return Tick::Ping;
        }
        Tick::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out_after_two_intervals() {
        let start = Instant::now();
        let mut h = Heartbeat::new(
            start,
            I,
            start + Duration::from_secs(3600),
            start,
            Duration::ZERO,
        );
        tokio::time::sleep_until(h.deadline()).await;
        assert_eq!(h.tick(Instant::now()), Tick::Ping);
        tokio::time::sleep_until(h.deadline()).await;
        assert_eq!(Instant::now() - start, I * 2);
        assert_eq!(h.tick(Instant::now()), Tick::Timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn answering_peer_stays_and_expiry_wins() {
        let start = Instant::now();
        let mut h = Heartbeat::new(
            start,
            I,
            start + Duration::from_secs(100),
            start,
            Duration::ZERO,
        );
        let mut pings = 0;
        loop {
            tokio::time::sleep_until(h.deadline()).await;
            match h.tick(Instant::now()) {
                Tick::Ping => {
                    pings += 1;
                    h.seen(Instant::now());
                }
                Tick::Expired => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(pings, 3);
        assert_eq!(Instant::now() - start, Duration::from_secs(100));
    }

    #[tokio::test(start_paused = true)]
    async fn connections_ping_together_on_the_grid() {
        let origin = Instant::now();
        let far = origin + Duration::from_secs(3600);
        let g = grid(I);
        assert_eq!(g, Duration::from_millis(20));
        assert_eq!(
            grid(Duration::from_millis(100)),
            Duration::from_micros(12_500)
        );
        // Two connections opened 3 ms and 19 ms after the node started.
        let a_start = origin + Duration::from_millis(3);
        let b_start = origin + Duration::from_millis(19);
        let mut a = Heartbeat::new(a_start, I, far, origin, g);
        let mut b = Heartbeat::new(b_start, I, far, origin, g);
        assert_eq!(a.deadline(), origin + Duration::from_millis(30_020));
        assert_eq!(b.deadline(), a.deadline());
        // Never earlier than an interval, and late by less than the grid.
        assert!(a.deadline() - a_start >= I && a.deadline() - a_start < I + g);
        tokio::time::sleep_until(a.deadline()).await;
        assert_eq!(a.tick(Instant::now()), Tick::Ping);
        assert_eq!(b.tick(Instant::now()), Tick::Ping);
        a.seen(Instant::now());
        assert_eq!(a.deadline(), origin + Duration::from_millis(60_020));
        // Answers, whenever they come, leave the next ping on the grid.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        b.seen(Instant::now());
        assert_eq!(b.deadline(), origin + Duration::from_millis(60_020));
    }
}
