//! Heartbeat and token-expiry deadlines of one connection, as pure logic on tokio's
//! clock. The socket loop keeps one timer armed at [`Heartbeat::deadline`] and asks
//! [`Heartbeat::tick`] what to do when it fires.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct Heartbeat {
    interval: Duration,
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
    pub fn new(now: Instant, interval: Duration, expires: Instant) -> Self {
        Self {
            interval,
            last_seen: now,
            next_ping: now + interval,
            expires,
        }
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
            self.next_ping = now + self.interval;
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
        let mut h = Heartbeat::new(start, I, start + Duration::from_secs(3600));
        tokio::time::sleep_until(h.deadline()).await;
        assert_eq!(h.tick(Instant::now()), Tick::Ping);
        tokio::time::sleep_until(h.deadline()).await;
        assert_eq!(Instant::now() - start, I * 2);
        assert_eq!(h.tick(Instant::now()), Tick::Timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn answering_peer_stays_and_expiry_wins() {
        let start = Instant::now();
        let mut h = Heartbeat::new(start, I, start + Duration::from_secs(100));
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
}
