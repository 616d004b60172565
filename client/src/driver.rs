//! The background task: owns the socket, the subscriptions, the outgoing queue and
//! the in-flight requests; reconnects according to [`crate::policy`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use protocol::Encoding;
use protocol::frame::{ClientFrame, Since};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::policy::{self, Reconnect};
use crate::queue::OfflineQueue;
use crate::wire::{self, Incoming, WelcomeIn};
use crate::{
    Backoff, Client, Command, Error, Event, Events, Position, Receipt, Refresher, Shared, State,
    Subscription, lock,
};

/// A byte stream to a gateway (TCP, or an in-memory pipe in tests).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub(crate) type BoxIo = Box<dyn Io>;
/// Opens a byte stream to `host:port`.
pub(crate) type Connector =
    Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<BoxIo>> + Send + Sync>;
type Ws = WebSocketStream<BoxIo>;

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

#[derive(Clone)]
struct Target {
    url: String,
    addr: String,
}

fn parse_target(url: &str) -> Result<Target, Error> {
    let req = url
        .into_client_request()
        .map_err(|e| Error::Config(format!("bad URL {url}: {e}")))?;
    let uri = req.uri();
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => {
            return Err(Error::Config(format!(
                "{url}: wss:// is not supported by this client yet; terminate TLS in front of it"
            )));
        }
        _ => return Err(Error::Config(format!("{url}: expected a ws:// URL"))),
    }
    let host = uri
        .host()
        .ok_or_else(|| Error::Config(format!("{url}: no host")))?;
    let port = uri.port_u16().unwrap_or(80);
    Ok(Target {
        url: url.to_owned(),
        addr: format!("{host}:{port}"),
    })
}

fn tcp_connector() -> Connector {
    Arc::new(|addr: String| {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s) as BoxIo)
        })
    })
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
        next_id: 0,
        close_done: None,
    };
    tokio::spawn(driver.run());
    Ok((Client { tx: cmd_tx, shared }, Events { rx: ev_rx }))
}

/// A publish or ack waiting to be sent.
enum Outgoing {
    Publish {
        channel: String,
        event: String,
        payload: protocol::Payload,
        reply: oneshot::Sender<Result<Receipt, Error>>,
    },
    Ack {
        offset: u64,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
}

impl Outgoing {
    fn fail(self, e: Error) {
        match self {
            Outgoing::Publish { reply, .. } => {
                let _ = reply.send(Err(e));
            }
            Outgoing::Ack { reply, .. } => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

type SubWaiter = oneshot::Sender<Result<Subscription, Error>>;

/// A channel the client holds (and restores after every reconnect).
struct Sub {
    channel: String,
    /// `subscribe` calls waiting for the server's confirmation.
    waiters: Vec<SubWaiter>,
}

/// A request sent and waiting for its reply.
enum Pending {
    Subscribe {
        channel: String,
        resumed: bool,
        waiters: Vec<SubWaiter>,
    },
    Unsubscribe(oneshot::Sender<Result<(), Error>>),
    Publish(oneshot::Sender<Result<Receipt, Error>>),
    Ack {
        offset: u64,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    Refresh {
        token: String,
        /// `None` for the client's own proactive refresh.
        reply: Option<oneshot::Sender<Result<Option<u64>, Error>>>,
    },
}

/// How a connection (or an attempt) ended and what to do next.
struct Ended {
    code: Option<u16>,
    reason: String,
    action: Reconnect,
    /// The error to stop with when `action` is `Stop`.
    terminal: Option<Error>,
}

impl Ended {
    fn lost(reason: impl Into<String>) -> Self {
        Ended {
            code: None,
            reason: reason.into(),
            action: policy::on_connection_lost(),
            terminal: None,
        }
    }

    fn closed(code: u16, reason: String) -> Self {
        let action = policy::on_close(code);
        let terminal = (action == Reconnect::Stop).then(|| Error::ServerClosed {
            code,
            reason: reason.clone(),
        });
        Ended {
            code: Some(code),
            reason: if reason.is_empty() {
                protocol::close::name(code).to_owned()
            } else {
                reason
            },
            action,
            terminal,
        }
    }

    fn by_client() -> Self {
        Ended {
            code: Some(protocol::close::NORMAL),
            reason: "closed by the client".into(),
            action: Reconnect::Stop,
            terminal: Some(Error::Closed),
        }
    }
}

/// A token bucket that keeps the client under the server's inbound rate limit.
struct Bucket {
    tokens: f64,
    cap: f64,
    rate: f64,
    at: Instant,
}

impl Bucket {
    fn new(limits: Option<&protocol::frame::Limits>) -> Self {
        // Stay a little below the advertised limits: the two clocks are not in step.
        let (cap, rate) = match limits {
            Some(l) => (
                (f64::from(l.rate_burst) * 0.9).floor().max(1.0),
                (f64::from(l.rate_per_sec) * 0.9).max(1.0),
            ),
            None => (1e9, 1e9),
        };
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

    fn try_take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Frames that cannot wait (subscriptions, pongs) may go into debt.
    fn force(&mut self) {
        self.refill();
        self.tokens -= 1.0;
    }

    fn next_at(&self) -> Instant {
        self.at + Duration::from_secs_f64(((1.0 - self.tokens) / self.rate).max(0.0))
    }
}

/// The state of one open connection.
struct Conn {
    ws: Ws,
    heartbeat: Duration,
    last_rx: Instant,
    inflight: HashMap<u64, Pending>,
    deadlines: VecDeque<(Instant, u64)>,
    bucket: Bucket,
    refresh_at: Option<Instant>,
    refreshing: Option<BoxFuture<'static, Result<String, String>>>,
}

struct Driver {
    cfg: Config,
    targets: Vec<Target>,
    next_target: usize,
    connector: Connector,
    token: Option<String>,
    /// The token came from the refresher and no server has accepted it yet: if it is
    /// refused, stop instead of asking again.
    token_unproven: bool,
    personal_since: Option<Since>,
    cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    shared: Arc<Mutex<Shared>>,
    backoff: Backoff,
    rng: StdRng,
    prompt_streak: usize,
    subs: Vec<Sub>,
    queue: OfflineQueue<Outgoing>,
    next_id: u64,
    close_done: Option<oneshot::Sender<()>>,
}

/// Sleeps until `at`, or forever.
async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL of a connection attempt: resume parameters for the personal channel.
fn connect_url(url: &str, since: Option<&Since>) -> String {
    match since {
        None => url.to_owned(),
        Some(s) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!(
                "{url}{sep}since={}&epoch={}",
                s.offset,
                percent_encode(&s.epoch)
            )
        }
    }
}

/// One connection attempt: TCP, upgrade, then the `welcome`.
async fn attempt(
    connector: Connector,
    target: Target,
    token: String,
    enc: Encoding,
    since: Option<Since>,
) -> Result<(Ws, WelcomeIn), Ended> {
    let url = connect_url(&target.url, since.as_ref());
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| Ended::lost(format!("bad request for {url}: {e}")))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Ended {
        code: None,
        reason: "the token contains characters not allowed in a header".into(),
        action: Reconnect::NewToken,
        terminal: None,
    })?;
    req.headers_mut().insert("Authorization", bearer);
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(enc.subprotocol()),
    );
    let io = (connector)(target.addr.clone())
        .await
        .map_err(|e| Ended::lost(format!("cannot connect to {}: {e}", target.url)))?;
    let (mut ws, _resp) = match tokio_tungstenite::client_async(req, io).await {
        Ok(ok) => ok,
        Err(WsError::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let action = policy::on_handshake_status(status);
            return Err(Ended {
                code: None,
                reason: format!("handshake refused with HTTP {status}: {body}"),
                action,
                terminal: (action == Reconnect::Stop).then_some(Error::Handshake { status, body }),
            });
        }
        Err(e) => return Err(Ended::lost(format!("handshake with {}: {e}", target.url))),
    };
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => return welcome(ws, enc, t.as_bytes()),
            Some(Ok(WsMessage::Binary(b))) => return welcome(ws, enc, &b),
            Some(Ok(WsMessage::Close(f))) => {
                return Err(match f {
                    Some(f) => Ended::closed(u16::from(f.code), f.reason.to_string()),
                    None => Ended::lost("closed before the welcome"),
                });
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(Ended::lost(format!("before the welcome: {e}"))),
            None => return Err(Ended::lost("connection ended before the welcome")),
        }
    }
}

fn welcome(ws: Ws, enc: Encoding, bytes: &[u8]) -> Result<(Ws, WelcomeIn), Ended> {
    match wire::decode(enc, bytes) {
        Ok(Incoming::Welcome(w)) => Ok((ws, w)),
        Ok(other) => Err(Ended::lost(format!("expected welcome, got {other:?}"))),
        Err(e) => Err(Ended::lost(format!("undecodable welcome: {e}"))),
    }
}

/// When to refresh a token expiring at `expires_at` (Unix seconds): at 80% of the
/// remaining lifetime, at most 60 s before expiry.
pub(crate) fn refresh_delay(expires_at: u64, now_unix_ms: u64) -> Option<Duration> {
    let remaining = expires_at.checked_mul(1000)?.checked_sub(now_unix_ms)?;
    if remaining == 0 {
        return None;
    }
    let remaining = Duration::from_millis(remaining);
    let lead = (remaining / 5).min(Duration::from_secs(60));
    Some(remaining - lead)
}

fn str_field(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

impl Driver {
    async fn emit(&self, ev: Event) {
        let _ = self.events.send(ev).await;
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn jitter(&mut self, max: Duration) -> Duration {
        let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.rng.random_range(0..=max))
    }

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

    /// Gets a new token from the refresher; an error stops the client.
    async fn fetch_token(&mut self, reason: &str) -> Result<(), Error> {
        if self.token_unproven {
            return Err(Error::Unauthorized(format!(
                "{reason} (with a token the refresher had just returned)"
            )));
        }
        let Some(refresher) = self.cfg.refresher.clone() else {
            return Err(Error::Unauthorized(format!(
                "{reason}; no token refresher is configured"
            )));
        };
        match self.idle(refresher()).await? {
            Ok(t) if Some(&t) == self.token.as_ref() => Err(Error::Unauthorized(format!(
                "{reason}; the token refresher returned the same token"
            ))),
            Ok(t) => {
                self.token = Some(t);
                self.token_unproven = true;
                Ok(())
            }
            Err(e) => Err(Error::Unauthorized(format!(
                "{reason}; the token refresher failed: {e}"
            ))),
        }
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

    /// Handles a command while disconnected. Returns the close acknowledgement when
    /// the command was `Close`.
    fn offline_command(&mut self, cmd: Command) -> Option<oneshot::Sender<()>> {
        match cmd {
            Command::Subscribe {
                channel,
                since,
                reply,
            } => {
                if let Some(s) = since {
                    lock(&self.shared).positions.set(&channel, s.into());
                }
                match self.subs.iter_mut().find(|s| s.channel == channel) {
                    Some(s) => s.waiters.push(reply),
                    None => self.subs.push(Sub {
                        channel,
                        waiters: vec![reply],
                    }),
                }
            }
            Command::Unsubscribe { channel, reply } => {
                self.forget(&channel);
                let _ = reply.send(Ok(()));
            }
            Command::Publish {
                channel,
                event,
                payload,
                reply,
            } => self.enqueue(Outgoing::Publish {
                channel,
                event,
                payload,
                reply,
            }),
            Command::Ack { offset, reply } => self.enqueue(Outgoing::Ack { offset, reply }),
            Command::Refresh { token, reply } => {
                self.token = Some(token);
                self.token_unproven = false;
                let _ = reply.send(Ok(None));
            }
            Command::Close { done } => return Some(done),
        }
        None
    }

    fn enqueue(&mut self, item: Outgoing) {
        let capacity = self.cfg.queue_capacity;
        if let Err(item) = self.queue.push(item) {
            item.fail(Error::QueueFull { capacity });
        }
    }

    /// Drops a channel from the set restored at reconnect, and its position.
    fn forget(&mut self, channel: &str) {
        if let Some(i) = self.subs.iter().position(|s| s.channel == channel) {
            for w in self.subs.remove(i).waiters {
                let _ = w.send(Err(Error::Cancelled));
            }
        }
        lock(&self.shared).positions.remove(channel);
    }

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

    /// Runs one established connection until it ends.
    async fn connected(
        &mut self,
        ws: Ws,
        w: WelcomeIn,
        personal_since: Option<Since>,
        url: &str,
    ) -> Ended {
        self.backoff.on_connected();
        self.prompt_streak = 0;
        self.token_unproven = false;
        let resumed = personal_since.is_some();
        {
            let mut sh = lock(&self.shared);
            sh.state = State::Connected {
                node: w.node.clone(),
                session: w.session.clone(),
            };
            sh.personal = Some(w.channel.clone());
            if let Some(s) = self.personal_since.take()
                && sh.positions.get(&w.channel).is_none()
            {
                sh.positions.set(&w.channel, s.into());
            }
            // `recovered` is present whenever the server resumed the personal channel:
            // from our `since`, or by itself from the user's acknowledged position.
            if resumed || w.recovered.is_some() {
                sh.positions.resumed(&w.channel, w.epoch.clone(), w.offset);
            } else {
                sh.positions.fresh(&w.channel, w.epoch.clone(), w.offset);
            }
        }
        tracing::debug!(url, node = %w.node, session = %w.session, "connected");
        self.emit(Event::Connected {
            node: w.node.clone(),
            session: w.session.clone(),
            user: w.user.clone(),
            channel: w.channel.clone(),
            url: url.to_owned(),
        })
        .await;
        if let Some(recovered) = w.recovered {
            self.emit(Event::Recovered {
                channel: w.channel.clone(),
                recovered,
            })
            .await;
        }
        let heartbeat = Duration::from_millis(w.heartbeat_ms.max(1));
        let mut conn = Conn {
            ws,
            heartbeat,
            last_rx: Instant::now(),
            inflight: HashMap::new(),
            deadlines: VecDeque::new(),
            bucket: Bucket::new(w.limits.as_ref()),
            refresh_at: None,
            refreshing: None,
        };
        self.schedule_refresh(&mut conn, w.expires_at);
        let ended = match self.serve(&mut conn).await {
            Ok(never) => match never {},
            Err(ended) => ended,
        };
        self.connection_lost(conn);
        ended
    }

    fn schedule_refresh(&self, conn: &mut Conn, expires_at: u64) {
        conn.refresh_at = None;
        if !self.cfg.auto_refresh || self.cfg.refresher.is_none() {
            return;
        }
        if let Some(d) = refresh_delay(expires_at, protocol::now_millis()) {
            conn.refresh_at = Some(Instant::now() + d);
        }
    }

    async fn serve(&mut self, conn: &mut Conn) -> Result<std::convert::Infallible, Ended> {
        // Restore the subscriptions, then send what waited in the queue.
        let channels: Vec<String> = self.subs.iter().map(|s| s.channel.clone()).collect();
        for channel in channels {
            let waiters = self
                .subs
                .iter_mut()
                .find(|s| s.channel == channel)
                .map(|s| std::mem::take(&mut s.waiters))
                .unwrap_or_default();
            self.send_subscribe(conn, channel, None, waiters).await?;
        }
        self.pump(conn).await?;
        loop {
            let hb_deadline = conn.last_rx + conn.heartbeat * 2;
            let req_deadline = conn.deadlines.front().map(|d| d.0);
            let pace_at = (!self.queue.is_empty()).then(|| conn.bucket.next_at());
            let refresh_at = if conn.refreshing.is_none() {
                conn.refresh_at
            } else {
                None
            };
            let refreshing = &mut conn.refreshing;
            let refreshed = std::future::poll_fn(|cx| match refreshing.as_mut() {
                Some(f) => f.as_mut().poll(cx),
                None => Poll::Pending,
            });
            tokio::select! {
                msg = conn.ws.next() => {
                    conn.last_rx = Instant::now();
                    match msg {
                        Some(Ok(WsMessage::Text(t))) => self.on_frame(conn, t.as_bytes()).await?,
                        Some(Ok(WsMessage::Binary(b))) => self.on_frame(conn, &b).await?,
                        Some(Ok(WsMessage::Close(f))) => {
                            let _ = tokio::time::timeout(Duration::from_secs(1), conn.ws.close(None)).await;
                            return Err(match f {
                                Some(f) => Ended::closed(u16::from(f.code), f.reason.to_string()),
                                None => Ended::lost("closed without a code"),
                            });
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(Ended::lost(format!("connection error: {e}"))),
                        None => return Err(Ended::lost("connection closed")),
                    }
                }
                cmd = self.cmds.recv() => match cmd {
                    Some(Command::Close { done }) => {
                        self.close_done = Some(done);
                        return Err(self.close_by_client(conn).await);
                    }
                    None => return Err(self.close_by_client(conn).await),
                    Some(cmd) => self.online_command(conn, cmd).await?,
                },
                _ = sleep_until(hb_deadline) => {
                    return Err(Ended::lost(format!(
                        "no frame from the server for {:?} (2 heartbeat intervals)",
                        conn.heartbeat * 2
                    )));
                }
                _ = sleep_opt(req_deadline) => self.expire(conn).await,
                _ = sleep_opt(pace_at) => self.pump(conn).await?,
                _ = sleep_opt(refresh_at) => {
                    conn.refresh_at = None;
                    if let Some(r) = self.cfg.refresher.clone() {
                        conn.refreshing = Some(r());
                    }
                }
                token = refreshed => {
                    conn.refreshing = None;
                    match token {
                        Ok(token) => {
                            let id = self.id();
                            let frame = ClientFrame::Refresh { id, token: token.clone() };
                            self.send_request(conn, id, frame, Pending::Refresh { token, reply: None }).await?;
                        }
                        Err(e) => self.emit(Event::Error(Error::TokenRefresh(e))).await,
                    }
                }
            }
        }
    }

    async fn close_by_client(&mut self, conn: &mut Conn) -> Ended {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "client closed".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if conn.ws.close(Some(frame)).await.is_ok() {
                // Wait for the server's echo.
                while let Some(Ok(m)) = conn.ws.next().await {
                    if m.is_close() {
                        break;
                    }
                }
            }
        })
        .await;
        Ended::by_client()
    }

    /// Fails or requeues what was in flight on a connection that ended.
    fn connection_lost(&mut self, conn: Conn) {
        for (_, p) in conn.inflight {
            match p {
                Pending::Subscribe {
                    channel, waiters, ..
                } => match self.subs.iter_mut().find(|s| s.channel == channel) {
                    // Confirmed after the reconnect instead.
                    Some(s) => s.waiters.extend(waiters),
                    None => {
                        for w in waiters {
                            let _ = w.send(Err(Error::Cancelled));
                        }
                    }
                },
                // The channel is already out of the set restored at reconnect.
                Pending::Unsubscribe(r) => {
                    let _ = r.send(Ok(()));
                }
                Pending::Publish(r) => {
                    let _ = r.send(Err(Error::Disconnected));
                }
                Pending::Ack { reply, .. } => {
                    let _ = reply.send(Err(Error::Disconnected));
                }
                Pending::Refresh { reply, .. } => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(Error::Disconnected));
                    }
                }
            }
        }
    }

    async fn write(&mut self, conn: &mut Conn, frame: &ClientFrame) -> Result<(), Ended> {
        let msg = match wire::encode(self.cfg.encoding, frame) {
            Ok(m) => m,
            Err(e) => {
                self.emit(Event::Error(e)).await;
                return Ok(());
            }
        };
        conn.ws
            .send(msg)
            .await
            .map_err(|e| Ended::lost(format!("write failed: {e}")))
    }

    async fn send_request(
        &mut self,
        conn: &mut Conn,
        id: u64,
        frame: ClientFrame,
        pending: Pending,
    ) -> Result<(), Ended> {
        conn.inflight.insert(id, pending);
        conn.deadlines
            .push_back((Instant::now() + self.cfg.request_timeout, id));
        self.write(conn, &frame).await
    }

    async fn send_subscribe(
        &mut self,
        conn: &mut Conn,
        channel: String,
        since: Option<Since>,
        waiters: Vec<SubWaiter>,
    ) -> Result<(), Ended> {
        let since = since.or_else(|| lock(&self.shared).positions.since(&channel));
        let id = self.id();
        conn.bucket.force();
        let frame = ClientFrame::Subscribe {
            id,
            channel: channel.clone(),
            since: since.clone(),
        };
        let pending = Pending::Subscribe {
            channel,
            resumed: since.is_some(),
            waiters,
        };
        self.send_request(conn, id, frame, pending).await
    }

    /// Sends queued publishes and acks while the rate budget allows.
    async fn pump(&mut self, conn: &mut Conn) -> Result<(), Ended> {
        while !self.queue.is_empty() && conn.bucket.try_take() {
            let Some(item) = self.queue.pop() else { break };
            let id = self.id();
            let (frame, pending) = match item {
                Outgoing::Publish {
                    channel,
                    event,
                    payload,
                    reply,
                } => (
                    ClientFrame::Publish {
                        id,
                        channel,
                        event,
                        payload,
                    },
                    Pending::Publish(reply),
                ),
                Outgoing::Ack { offset, reply } => (
                    ClientFrame::Ack { id, offset },
                    Pending::Ack { offset, reply },
                ),
            };
            self.send_request(conn, id, frame, pending).await?;
        }
        Ok(())
    }

    async fn online_command(&mut self, conn: &mut Conn, cmd: Command) -> Result<(), Ended> {
        match cmd {
            Command::Subscribe {
                channel,
                since,
                reply,
            } => {
                if let Some(s) = &since {
                    lock(&self.shared).positions.set(&channel, s.clone().into());
                }
                if !self.subs.iter().any(|s| s.channel == channel) {
                    self.subs.push(Sub {
                        channel: channel.clone(),
                        waiters: Vec::new(),
                    });
                }
                self.send_subscribe(conn, channel, since, vec![reply]).await
            }
            Command::Unsubscribe { channel, reply } => {
                self.forget(&channel);
                let id = self.id();
                conn.bucket.force();
                let frame = ClientFrame::Unsubscribe { id, channel };
                self.send_request(conn, id, frame, Pending::Unsubscribe(reply))
                    .await
            }
            Command::Publish {
                channel,
                event,
                payload,
                reply,
            } => {
                self.enqueue(Outgoing::Publish {
                    channel,
                    event,
                    payload,
                    reply,
                });
                self.pump(conn).await
            }
            Command::Ack { offset, reply } => {
                self.enqueue(Outgoing::Ack { offset, reply });
                self.pump(conn).await
            }
            Command::Refresh { token, reply } => {
                let id = self.id();
                conn.bucket.force();
                let frame = ClientFrame::Refresh {
                    id,
                    token: token.clone(),
                };
                let pending = Pending::Refresh {
                    token,
                    reply: Some(reply),
                };
                self.send_request(conn, id, frame, pending).await
            }
            Command::Close { .. } => Ok(()), // handled by the caller
        }
    }

    async fn expire(&mut self, conn: &mut Conn) {
        let now = Instant::now();
        let timeout = Error::Timeout(self.cfg.request_timeout);
        while let Some(&(at, id)) = conn.deadlines.front() {
            if at > now {
                break;
            }
            conn.deadlines.pop_front();
            let Some(p) = conn.inflight.remove(&id) else {
                continue;
            };
            match p {
                Pending::Subscribe { waiters, .. } => {
                    for w in waiters {
                        let _ = w.send(Err(timeout.clone()));
                    }
                }
                Pending::Unsubscribe(r) => {
                    let _ = r.send(Err(timeout.clone()));
                }
                Pending::Publish(r) => {
                    let _ = r.send(Err(timeout.clone()));
                }
                Pending::Ack { reply, .. } => {
                    let _ = reply.send(Err(timeout.clone()));
                }
                Pending::Refresh { reply: Some(r), .. } => {
                    let _ = r.send(Err(timeout.clone()));
                }
                Pending::Refresh { reply: None, .. } => {
                    self.emit(Event::Error(Error::TokenRefresh(
                        "no reply to the refresh request".into(),
                    )))
                    .await;
                }
            }
        }
    }

    async fn on_frame(&mut self, conn: &mut Conn, bytes: &[u8]) -> Result<(), Ended> {
        let frame = match wire::decode(self.cfg.encoding, bytes) {
            Ok(f) => f,
            Err(e) => {
                self.emit(Event::Error(Error::Protocol(e))).await;
                return Ok(());
            }
        };
        match frame {
            Incoming::Ping => {
                conn.bucket.force();
                self.write(conn, &ClientFrame::Pong).await?;
            }
            Incoming::Message(m) => {
                let fresh =
                    lock(&self.shared)
                        .positions
                        .accept(&m.channel, m.offset, m.epoch.as_deref());
                if fresh {
                    self.emit(Event::Message {
                        channel: m.channel,
                        event: m.event,
                        payload: m.payload,
                        offset: m.offset,
                        msg_id: m.msg_id,
                        ts: m.ts,
                    })
                    .await;
                } else {
                    tracing::trace!(channel = %m.channel, offset = ?m.offset, "duplicate dropped");
                }
            }
            Incoming::Reply {
                id: Some(id),
                result,
            } => {
                if let Some(p) = conn.inflight.remove(&id) {
                    self.on_reply(conn, p, result).await;
                }
            }
            Incoming::Reply { id: None, result } => {
                if let Err(e) = result {
                    self.emit(Event::Error(e)).await;
                }
            }
            Incoming::Other(kind) => tracing::debug!(%kind, "unknown frame type ignored"),
            Incoming::Welcome(_) => {}
        }
        Ok(())
    }

    async fn on_reply(&mut self, conn: &mut Conn, p: Pending, result: Result<Value, Error>) {
        match p {
            Pending::Subscribe {
                channel,
                resumed,
                waiters,
            } => self.on_subscribed(channel, resumed, waiters, result).await,
            Pending::Unsubscribe(r) => {
                let r2 = match result {
                    Err(e) if e.code() == Some(protocol::ErrorCode::NotSubscribed) => Ok(()),
                    other => other.map(|_| ()),
                };
                let _ = r.send(r2);
            }
            Pending::Publish(r) => {
                let _ = r.send(result.map(|v| Receipt {
                    nodes: v.get("nodes").and_then(Value::as_u64),
                    sessions: v.get("sessions").and_then(Value::as_u64),
                    raw: v,
                }));
            }
            Pending::Ack { offset, reply } => {
                let _ = reply.send(
                    result.map(|v| v.get("offset").and_then(Value::as_u64).unwrap_or(offset)),
                );
            }
            Pending::Refresh { token, reply } => match result {
                Ok(v) => {
                    self.token = Some(token);
                    self.token_unproven = false;
                    let exp = v.get("expires_at").and_then(Value::as_u64);
                    if let Some(exp) = exp {
                        self.schedule_refresh(conn, exp);
                    }
                    if let Some(list) = v.get("unsubscribed").and_then(Value::as_array) {
                        for ch in list.iter().filter_map(Value::as_str) {
                            self.forget(ch);
                            self.emit(Event::Error(Error::Subscription {
                                channel: ch.to_owned(),
                                code: "forbidden".into(),
                                message: "the refreshed token no longer allows this channel".into(),
                            }))
                            .await;
                        }
                    }
                    if let Some(r) = reply {
                        let _ = r.send(Ok(exp));
                    }
                }
                Err(e) => match reply {
                    Some(r) => {
                        let _ = r.send(Err(e));
                    }
                    None => {
                        self.emit(Event::Error(Error::TokenRefresh(e.to_string())))
                            .await
                    }
                },
            },
        }
    }

    async fn on_subscribed(
        &mut self,
        channel: String,
        resumed: bool,
        waiters: Vec<SubWaiter>,
        result: Result<Value, Error>,
    ) {
        let v = match result {
            Ok(v) => v,
            Err(e) if e.code() == Some(protocol::ErrorCode::AlreadySubscribed) => Value::Null,
            Err(e) => {
                let (code, message) = match &e {
                    Error::Server { code, message } => (code.clone(), message.clone()),
                    other => ("internal".to_owned(), other.to_string()),
                };
                let background = waiters.is_empty();
                self.forget(&channel);
                for w in waiters {
                    let _ = w.send(Err(e.clone()));
                }
                if background {
                    self.emit(Event::Error(Error::Subscription {
                        channel,
                        code,
                        message,
                    }))
                    .await;
                }
                return;
            }
        };
        let sub = Subscription {
            channel: str_field(&v, "channel").unwrap_or_else(|| channel.clone()),
            epoch: str_field(&v, "epoch"),
            offset: v.get("offset").and_then(Value::as_u64),
            recovered: v.get("recovered").and_then(Value::as_bool),
        };
        {
            let mut sh = lock(&self.shared);
            if resumed || sub.recovered.is_some() {
                sh.positions
                    .resumed(&channel, sub.epoch.clone(), sub.offset);
            } else {
                sh.positions.fresh(&channel, sub.epoch.clone(), sub.offset);
            }
        }
        if let Some(recovered) = sub.recovered {
            self.emit(Event::Recovered {
                channel: channel.clone(),
                recovered,
            })
            .await;
        }
        for w in waiters {
            let _ = w.send(Ok(sub.clone()));
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn resume_parameters_in_the_url() {
        let s = Since {
            offset: 17,
            epoch: "a b/c".into(),
        };
        assert_eq!(
            connect_url("ws://h:1/ws", Some(&s)),
            "ws://h:1/ws?since=17&epoch=a%20b%2Fc"
        );
        assert_eq!(
            connect_url("ws://h:1/ws?x=1", Some(&s)),
            "ws://h:1/ws?x=1&since=17&epoch=a%20b%2Fc"
        );
        assert_eq!(connect_url("ws://h:1/ws", None), "ws://h:1/ws");
    }

    #[test]
    fn refresh_timing() {
        // 100 s left: refresh after 80 s.
        assert_eq!(
            refresh_delay(1_100, 1_000_000),
            Some(Duration::from_secs(80))
        );
        // An hour left: 60 s before expiry.
        assert_eq!(
            refresh_delay(4_600, 1_000_000),
            Some(Duration::from_secs(3540))
        );
        assert_eq!(refresh_delay(1_000, 1_000_000), None);
        assert_eq!(refresh_delay(999, 1_000_000), None);
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_target("ws://127.0.0.1:8080/ws").map(|t| t.addr).ok(),
            Some("127.0.0.1:8080".to_owned())
        );
        assert_eq!(
            parse_target("ws://gw/ws").map(|t| t.addr).ok(),
            Some("gw:80".to_owned())
        );
        assert!(parse_target("wss://gw/ws").is_err());
        assert!(parse_target("http://gw/ws").is_err());
        assert!(parse_target("not a url").is_err());
    }
}
