//! The background task that owns the connection and all client state. It runs the
//! reconnect loop ([`Driver::run`]): connect ([`connect`]), serve the connection
//! ([`conn`]) until it ends, then follow the protocol's reaction to how it ended
//! ([`crate::ended`], [`crate::policy`]): at once, after a backoff delay, with a new
//! token ([`token`]), or stop. The handle's commands are served in both states
//! ([`requests`]), and the channels held are restored after every reconnect
//! ([`subscriptions`]).
//!
//! The parts are `impl Driver` blocks in the submodules, so the state below stays
//! private to this module and them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::Encoding;
use protocol::frame::Since;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};

use crate::ended::Ended;
use crate::policy::Reconnect;
use crate::queue::OfflineQueue;
use crate::{
    Backoff, Client, Command, Error, Event, Events, Position, Refresher, Shared, State, lock,
};

mod conn;
mod connect;
mod requests;
mod subscriptions;
mod token;

#[cfg(test)]
pub(crate) use connect::BoxIo;
pub(crate) use connect::Connector;
use connect::{Target, attempt, parse_target, tcp_connector};
use requests::Outgoing;
use subscriptions::Sub;

/// What the builder hands over.
pub(crate) struct Config {
    pub urls: Vec<String>,
    pub token: Option<String>,
    pub refresher: Option<Refresher>,
    pub encoding: Encoding,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub stable_after: Duration,
    pub going_away_delay: Duration,
    pub queue_capacity: usize,
    pub event_capacity: usize,
    pub auto_refresh: bool,
    pub positions: HashMap<String, Position>,
    pub personal_since: Option<Since>,
    pub seed: Option<u64>,
    pub connector: Option<Connector>,
}

pub(crate) fn start(mut cfg: Config) -> Result<(Client, Events), Error> {
    if cfg.urls.is_empty() {
        return Err(Error::Config("no URL".into()));
    }
    let targets = cfg
        .urls
        .iter()
        .map(|u| parse_target(u))
        .collect::<Result<Vec<_>, _>>()?;
    if cfg.token.is_none() && cfg.refresher.is_none() {
        return Err(Error::Config(
            "a token or a token refresher is needed".into(),
        ));
    }
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::Config(
            "build() must be called inside a Tokio runtime".into(),
        ));
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(cfg.event_capacity);
    let mut positions = crate::positions::Positions::default();
    for (ch, p) in std::mem::take(&mut cfg.positions) {
        positions.set(&ch, p);
    }
    let shared = Arc::new(Mutex::new(Shared {
        positions,
        personal: None,
        state: State::Connecting,
        terminal: None,
    }));
    let rng = match cfg.seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_rng(&mut rand::rng()),
    };
    let driver = Driver {
        backoff: Backoff::new(cfg.backoff_initial, cfg.backoff_max, cfg.stable_after),
        connector: cfg.connector.clone().unwrap_or_else(tcp_connector),
        token: cfg.token.clone(),
        token_unproven: false,
        personal_since: cfg.personal_since.take(),
        queue: OfflineQueue::new(cfg.queue_capacity),
        cfg,
        targets,
        next_target: 0,
        cmds: cmd_rx,
        events: ev_tx,
        shared: shared.clone(),
        rng,
        prompt_streak: 0,
        subs: Vec::new(),
        routes: Vec::new(),
        next_id: 0,
        close_done: None,
    };
    tokio::spawn(driver.run());
    Ok((Client { tx: cmd_tx, shared }, Events { rx: ev_rx }))
}

/// The background task's state.
struct Driver {
    cfg: Config,
    targets: Vec<Target>,
    /// Each attempt goes to the next URL.
    next_target: usize,
    connector: Connector,
    token: Option<String>,
    /// The token came from the refresher and no server has accepted it yet: if it is
    /// refused, stop instead of asking again.
    token_unproven: bool,
    /// The personal channel's resume point from the builder, until the first
    /// `welcome` names the channel (then its position is kept with the others).
    personal_since: Option<Since>,
    cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    shared: Arc<Mutex<Shared>>,
    backoff: Backoff,
    rng: StdRng,
    /// Prompt reconnects in a row: once every URL had one, back off instead (every
    /// node draining, or a gateway that keeps asking for a resync).
    prompt_streak: usize,
    /// The channels held, restored after every reconnect.
    subs: Vec<Sub>,
    /// Streams of some channels' events ([`Client::channel_events`]), newest first.
    routes: Vec<Route>,
    /// Publishes and acks waiting to be sent.
    queue: OfflineQueue<Outgoing>,
    /// The last request id used on this client (ids only need to be unique per
    /// connection; one counter is simpler).
    next_id: u64,
    /// The acknowledgement of `Client::close`, sent once the client stopped.
    close_done: Option<oneshot::Sender<()>>,
}

/// A stream that takes the events of some channels ([`Client::channel_events`]).
struct Route {
    channels: Vec<String>,
    tx: mpsc::Sender<Event>,
}

/// The channel an event is about, for the routes; `None` for the connection's own
/// events.
fn channel_of(ev: &Event) -> Option<&str> {
    match ev {
        Event::Message { channel, .. }
        | Event::Recovered { channel, .. }
        | Event::PresenceDiff { channel, .. }
        | Event::Error(Error::Subscription { channel, .. }) => Some(channel),
        Event::Subscribed(sub) => Some(&sub.channel),
        _ => None,
    }
}

impl Driver {
    /// Hands an event to the application: a channel's event to the newest open route
    /// that names the channel (else the main stream), the connection's own events to
    /// every open route and the main stream.
    async fn emit(&self, ev: Event) {
        let mut ev = ev;
        let open = self.routes.iter().filter(|r| !r.tx.is_closed());
        match channel_of(&ev) {
            Some(ch) => {
                let mut open = open;
                if let Some(r) = open.find(|r| r.channels.iter().any(|c| c == ch)) {
                    match r.tx.send(ev).await {
                        Ok(()) => return,
                        // Dropped meanwhile: the main stream takes it.
                        Err(mpsc::error::SendError(back)) => ev = back,
                    }
                }
            }
            None => {
                for r in open {
                    let _ = r.tx.send(ev.clone()).await;
                }
            }
        }
        let _ = self.events.send(ev).await;
    }

    /// Adds a route (newest first), dropping the routes whose stream is gone.
    fn route(&mut self, channels: Vec<String>, tx: mpsc::Sender<Event>) {
        self.routes.retain(|r| !r.tx.is_closed());
        self.routes.insert(0, Route { channels, tx });
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=max))
    }

    /// The reconnect loop: an attempt (serving the handle meanwhile), the connection
    /// until it ends, then what the protocol says to do about how it ended: at once
    /// (to the next URL; backoff once every URL had its prompt try), after a backoff
    /// delay, with a new token, or stop. Every end is reported as
    /// [`Event::Disconnected`] before the next attempt.
    async fn run(mut self) {
        let mut delay = Duration::ZERO;
        let terminal = loop {
            if !delay.is_zero()
                && let Err(e) = self.idle(tokio::time::sleep(delay)).await
            {
                break e;
            }
            if self.token.is_none()
                && let Err(e) = self.fetch_token("no token yet").await
            {
                break e;
            }
            let target = self.targets[self.next_target].clone();
            let personal_since = {
                let sh = lock(&self.shared);
                match &sh.personal {
                    Some(ch) => sh.positions.since(ch),
                    None => self.personal_since.clone(),
                }
            };
            let fut = tokio::time::timeout(
                self.cfg.connect_timeout,
                attempt(
                    self.connector.clone(),
                    target.clone(),
                    self.token.clone().unwrap_or_default(),
                    self.cfg.encoding,
                    personal_since.clone(),
                ),
            );
            let ended = match self.idle(fut).await {
                Err(e) => break e,
                Ok(Err(_)) => Ended::lost(format!(
                    "no welcome from {} within {:?}",
                    target.url, self.cfg.connect_timeout
                )),
                Ok(Ok(Err(ended))) => ended,
                Ok(Ok(Ok((ws, w)))) => {
                    let ended = self.connected(ws, w, personal_since, &target.url).await;
                    self.backoff.on_disconnected();
                    lock(&self.shared).state = State::Connecting;
                    ended
                }
            };
            if ended.terminal == Some(Error::Closed) {
                self.emit(Event::Disconnected {
                    code: ended.code,
                    reason: ended.reason,
                    will_reconnect: false,
                    retry_in: None,
                })
                .await;
                break Error::Closed;
            }
            tracing::debug!(url = %target.url, code = ?ended.code, reason = %ended.reason, "disconnected");
            self.next_target = (self.next_target + 1) % self.targets.len();
            let next = match ended.action {
                Reconnect::Promptly => {
                    self.prompt_streak += 1;
                    if self.prompt_streak > self.targets.len() {
                        Ok(self.backoff.next_delay(&mut self.rng))
                    } else {
                        Ok(self.jitter(self.cfg.going_away_delay))
                    }
                }
                Reconnect::WithBackoff => Ok(self.backoff.next_delay(&mut self.rng)),
                Reconnect::NewToken => self
                    .fetch_token(&ended.reason)
                    .await
                    .map(|()| Duration::ZERO),
                Reconnect::Stop => Err(ended.terminal.clone().unwrap_or(Error::ServerClosed {
                    code: ended.code.unwrap_or(0),
                    reason: ended.reason.clone(),
                })),
            };
            if next.as_ref().err() == Some(&Error::Closed) {
                break Error::Closed;
            }
            self.emit(Event::Disconnected {
                code: ended.code,
                reason: ended.reason,
                will_reconnect: next.is_ok(),
                retry_in: next.as_ref().ok().copied(),
            })
            .await;
            match next {
                Ok(d) => delay = d,
                Err(e) => break e,
            }
        };
        self.stop(terminal).await;
    }

    /// Runs `fut` while serving commands as a disconnected client; `Err(Closed)` when
    /// the client is closed meanwhile.
    async fn idle<F: std::future::Future>(&mut self, fut: F) -> Result<F::Output, Error> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                cmd = self.cmds.recv() => {
                    let Some(cmd) = cmd else { return Err(Error::Closed) };
                    if let Some(done) = self.offline_command(cmd) {
                        self.close_done = Some(done);
                        return Err(Error::Closed);
                    }
                }
            }
        }
    }

    /// Stops for good: everything still waiting fails with `terminal` (reported as
    /// the last event unless the application closed the client), and the event
    /// stream ends when the task is gone.
    async fn stop(mut self, terminal: Error) {
        tracing::debug!(error = %terminal, "client stopped");
        {
            let mut sh = lock(&self.shared);
            sh.terminal = Some(terminal.clone());
            sh.state = State::Stopped;
        }
        for s in std::mem::take(&mut self.subs) {
            for w in s.waiters {
                let _ = w.send(Err(terminal.clone()));
            }
        }
        for item in self.queue.drain() {
            item.fail(terminal.clone());
        }
        self.cmds.close();
        while let Ok(cmd) = self.cmds.try_recv() {
            if let Command::Close { done } = cmd {
                let _ = done.send(());
            }
        }
        if terminal != Error::Closed {
            self.emit(Event::Error(terminal)).await;
        }
        if let Some(done) = self.close_done.take() {
            let _ = done.send(());
        }
    }
}
