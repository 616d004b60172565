//! One subscriber connection ("shard") for its life: connect, subscribe to what the
//! hub wants, deliver until the connection fails.
//!
//! The connection has two sides that run side by side and never wait on each other:
//! the reader only reads (replies, messages, confirmations) and hands publications to
//! the hub, which never blocks; the commander writes SUBSCRIBE/UNSUBSCRIBE as
//! interest changes and publishes the liveness probe on its own connection. A slow
//! Redis therefore delays commands, never the reading of messages, and the only
//! buffer between Redis and the hub is the reader's (one reply at most, bounded):
//! when the hub cannot keep up, the backlog waits in the kernel and then in Redis,
//! which drops a subscriber past its `client-output-buffer-limit pubsub`; the
//! reconnect is counted, and history channels fill what was missed from history.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use protocol::Publication;
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};

use super::resp::{self, Reply};
use super::{COMMAND_TIMEOUT, CONNECT_TIMEOUT, Shard, Shared, Target, set_up, shard_of};
use crate::metrics::BrokerInvalid;

/// Channels per SUBSCRIBE/UNSUBSCRIBE command when many change at once.
const BATCH: usize = 512;
/// What the reader asks of the kernel per read.
const READ_CHUNK: usize = 16 * 1024;

/// What the reader and the commander of one connection share.
#[derive(Default)]
struct Link {
    /// UNSUBSCRIBEs sent and not yet confirmed, per Redis channel name: a
    /// confirmation of a SUBSCRIBE sent before one of them is stale, and an
    /// unsubscription nobody asked for means Redis dropped the channel.
    unsubscribing: std::sync::Mutex<HashMap<String, u32>>,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.unsubscribing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The two halves of a subscriber connection, whatever carries it (TCP, a Unix
/// socket).
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Opens a connection to one Redis and authenticates it; returns its halves.
async fn open(info: &ConnectionInfo) -> Result<(ReadHalf, WriteHalf), String> {
    let (mut rd, mut wr): (ReadHalf, WriteHalf) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), *port)))
                .await
                .map_err(|_| format!("connect to {host}:{port} timed out"))?
                .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => {
            let stream = timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
                .await
                .map_err(|_| format!("connect to {} timed out", path.display()))?
                .map_err(|e| format!("connect to {}: {e}", path.display()))?;
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        _ => return Err("this kind of redis address is not supported".into()),
    };
    let settings = info.redis_settings();
    let mut out = BytesMut::new();
    let mut expected = Vec::new();
    if let Some(password) = settings.password() {
        match settings.username() {
            Some(user) => resp::command(&mut out, &["AUTH", user, password]),
            None => resp::command(&mut out, &["AUTH", password]),
        }
        expected.push("AUTH");
    }
    if settings.db() != 0 {
        resp::command(&mut out, &["SELECT", &settings.db().to_string()]);
        expected.push("SELECT");
    }
    if expected.is_empty() {
        return Ok((rd, wr));
    }
    let handshake = async {
        wr.write_all(&out).await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(256);
        for what in expected {
            let reply = loop {
                if let Some(r) = resp::parse(&mut buf, 64 * 1024).map_err(|e| e.to_string())? {
                    break r;
                }
                if rd.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("connection closed during the handshake".to_string());
                }
            };
            if let Reply::Error(e) = reply {
                // The error text never contains the password.
                return Err(format!("{what} refused: {}", String::from_utf8_lossy(&e)));
            }
        }
        Ok(())
    };
    timeout(COMMAND_TIMEOUT, handshake)
        .await
        .map_err(|_| "handshake timed out".to_string())??;
    Ok((rd, wr))
}

/// Opens the connection a shard listens on; returns it and where it goes.
async fn connect(shared: &Shared, shard: &Shard) -> Result<(ReadHalf, WriteHalf, String), String> {
    match &shard.target {
        Target::Instance { instance, info } => {
            let (rd, wr) = open(info).await?;
            Ok((rd, wr, format!("instance {instance}")))
        }
        Target::Partition { slot } => {
            let nodes = shared
                .cluster
                .as_ref()
                .ok_or_else(|| "no cluster configured".to_string())?;
            let (host, port) = timeout(CONNECT_TIMEOUT * 2, nodes.owner(*slot))
                .await
                .map_err(|_| "cluster slot lookup timed out".to_string())?
                .map_err(|e| format!("cluster slot lookup: {e}"))?;
            let (rd, wr) = open(&nodes.info(&host, port)).await?;
            Ok((rd, wr, format!("{host}:{port} slot {slot}")))
        }
    }
}

/// One connection's life: connect, subscribe, deliver until it fails; returns why.
pub(super) async fn serve(shared: &Arc<Shared>, shard: &Shard, first: bool) -> String {
    let (rd, wr, peer) = match connect(shared, shard).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let link = Link::default();
    let probe = shared
        .keys
        .probe_channel(&shared.settings.node_id, shard.index);
    let mut commander = Commander {
        shared,
        shard,
        link: &link,
        wr,
        out: BytesMut::new(),
        active: HashSet::new(),
        leaving: HashMap::new(),
        subscriptions: shared.metrics.broker.shard_subscriptions(shard.index),
    };
    let reader = Reader {
        shared,
        shard,
        link: &link,
        probe: &probe,
        started: Instant::now(),
        first,
        peer,
        received: shared.metrics.broker.shard_received(shard.index),
    };
    let why = tokio::select! {
        why = reader.run(rd) => why,
        why = commander.run(&probe) => why,
    };
    commander.release();
    why
}

/// The read side: replies and messages, in order.
struct Reader<'a> {
    shared: &'a Arc<Shared>,
    shard: &'a Shard,
    link: &'a Link,
    probe: &'a str,
    started: Instant,
    first: bool,
    peer: String,
    received: prometheus::IntCounter,
}

impl Reader<'_> {
    async fn run(self, mut rd: ReadHalf) -> String {
        let max = self.shared.max_reply;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            loop {
                match resp::parse(&mut buf, max) {
                    Ok(Some(reply)) => {
                        if let Err(why) = self.handle(reply) {
                            return why;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        if matches!(e, resp::RespError::TooLarge(_)) {
                            self.shared.metrics.broker.invalid(BrokerInvalid::Oversized);
                        }
                        return format!("cannot read from redis: {e}");
                    }
                }
            }
            buf.reserve(READ_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) => return "connection closed".into(),
                Ok(_) => {}
                Err(e) => return format!("read: {e}"),
            }
        }
    }

    fn handle(&self, reply: Reply) -> Result<(), String> {
        let items = match reply {
            Reply::Array(items) => items,
            Reply::Error(e) => {
                return Err(format!(
                    "redis refused a subscriber command: {}",
                    String::from_utf8_lossy(&e)
                ));
            }
            _ => return Ok(()),
        };
        let (Some(kind), Some(name)) = (
            items.first().and_then(Reply::bulk),
            items.get(1).and_then(Reply::bulk),
        ) else {
            return Ok(());
        };
        let name = std::str::from_utf8(name).unwrap_or_default();
        match &kind[..] {
            b"message" | b"smessage" => {
                let Some(payload) = items.get(2).and_then(Reply::bulk) else {
                    return Ok(());
                };
                if name == self.probe {
                    self.shard.probe_back(self.shared);
                    return Ok(());
                }
                self.deliver(name, payload);
            }
            b"subscribe" | b"ssubscribe" => {
                if name == self.probe {
                    self.connected();
                } else if !self.link.lock().contains_key(name)
                    && let Some(channel) = self.shared.keys.channel_of(name)
                {
                    self.shard.confirm(&[Arc::from(channel)], true);
                }
            }
            b"unsubscribe" | b"sunsubscribe" => {
                let mut pending = self.link.lock();
                match pending.get_mut(name) {
                    Some(n) if *n > 1 => *n -= 1,
                    Some(_) => {
                        pending.remove(name);
                    }
                    // Only sharded pub/sub drops subscriptions by itself: the slot moved.
                    None if &kind[..] == b"sunsubscribe" => {
                        return Err(format!(
                            "redis dropped the subscription of {name} (slot moved)"
                        ));
                    }
                    None => {}
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn deliver(&self, name: &str, payload: &[u8]) {
        let metrics = &self.shared.metrics.broker;
        metrics.received(&self.received);
        match Publication::decode(payload) {
            Ok(p) if self.shared.keys.channel_of(name) == Some(p.channel.as_str()) => {
                self.shared.handler.deliver(&p);
            }
            Ok(_) => {
                metrics.invalid(BrokerInvalid::ChannelMismatch);
                tracing::warn!("envelope channel does not match its redis channel; dropped");
            }
            Err(e) => {
                metrics.invalid(BrokerInvalid::Undecodable);
                tracing::warn!(error = %e, "undecodable envelope; dropped");
            }
        }
    }

    /// The probe's subscription is confirmed: it was sent after every channel the
    /// hub wanted, so those are confirmed too (replies come in order).
    fn connected(&self) {
        if !self.first {
            self.shared
                .metrics
                .broker
                .resubscribed(self.started.elapsed());
        }
        tracing::info!(
            shard = self.shard.index,
            redis = %self.peer,
            "redis subscriber connected"
        );
        set_up(self.shared, self.shard, true);
        if !self.first {
            tokio::spawn(recheck(self.shared.clone(), self.shard.index));
        }
    }
}

/// After a reconnect: messages published while this connection was down never
/// reached the node. A session notices a gap at its channel's next message; this
/// tells the sessions of every history channel of the shard where its history
/// stands now, so the ones behind fill the gap at once, even if nothing more is
/// published. One position read per channel, a few at a time.
async fn recheck(shared: Arc<Shared>, shard: usize) {
    let channels: Vec<Arc<str>> = shared
        .handler
        .interests()
        .into_iter()
        .filter(|c| shard_of(&shared, c) == shard && shared.settings.history.policy(c).is_some())
        .collect();
    for chunk in channels.chunks(32) {
        let reads = chunk.iter().map(|ch| {
            let shared = &shared;
            async move {
                match shared.reader.history(ch, None, 0).await {
                    Ok(page) if !page.epoch.is_empty() && page.top > 0 => {
                        shared.handler.check(ch, &page.epoch, page.top);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read a position after resubscribing")
                    }
                }
            }
        });
        futures_util::future::join_all(reads).await;
    }
}

/// The write side: subscriptions and the liveness probe.
struct Commander<'a> {
    shared: &'a Shared,
    shard: &'a Shard,
    link: &'a Link,
    wr: WriteHalf,
    out: BytesMut,
    /// Client-visible channels this connection is subscribed to (or asked for).
    active: HashSet<Arc<str>>,
    /// Channels without local interest, and when to unsubscribe them.
    leaving: HashMap<Arc<str>, Instant>,
    subscriptions: prometheus::IntGauge,
}

impl Commander<'_> {
    async fn run(&mut self, probe: &str) -> String {
        match self.serve(probe).await {
            Ok(never) => match never {},
            Err(why) => why,
        }
    }

    async fn serve(&mut self, probe: &str) -> Result<std::convert::Infallible, String> {
        let shared = self.shared;
        let shard = self.shard;
        // The hub's interest set is the source of truth: whatever changed
        // meanwhile is in it.
        shard
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let wanted: Vec<Arc<str>> = shared
            .handler
            .interests()
            .into_iter()
            .filter(|c| shard_of(shared, c) == shard.index)
            .collect();
        self.command(true, &wanted).await?;
        // Last: its confirmation tells the reader that everything before it is live.
        let verb = self.verb(true);
        resp::command(&mut self.out, &[verb, probe]);
        self.flush().await?;

        let probe_every = shared.settings.probe_interval;
        let probe_route = match &shard.target {
            Target::Instance { instance, .. } => *instance,
            Target::Partition { .. } => 0,
        };
        let mut next_probe = Instant::now() + probe_every;
        let mut probing: Option<Probing<'_>> = None;
        let far = Duration::from_secs(3600);
        loop {
            let leave_at = self
                .leaving
                .values()
                .min()
                .copied()
                .unwrap_or_else(|| Instant::now() + far);
            // The select only says what happened (its futures borrow `probing`).
            let event = tokio::select! {
                () = shard.wake.notified() => Event::Interest,
                () = sleep_until(leave_at) => Event::Leave,
                () = sleep_until(next_probe) => Event::ProbeDue,
                sent = std::future::poll_fn(|cx| match probing.as_mut() {
                    Some(f) => f.as_mut().poll(cx),
                    None => std::task::Poll::Pending,
                }) => Event::ProbeSent(sent),
            };
            match event {
                Event::Interest => self.sync().await?,
                Event::Leave => self.leave_due().await?,
                Event::ProbeDue => {
                    next_probe = Instant::now() + probe_every;
                    shard.report_lag(shared);
                    if shard.probe_age().is_some_and(|age| age >= probe_every) {
                        return Err("liveness probe did not come back".to_string());
                    }
                    if probing.is_none()
                        && shard.up.load(Ordering::Acquire)
                        && shard.probe_age().is_none()
                    {
                        shard.probe_sent();
                        let prober = &shared.prober;
                        probing = Some(Box::pin(async move {
                            prober
                                .probe(probe_route, probe)
                                .await
                                .map_err(|e| e.to_string())
                        }));
                    }
                }
                Event::ProbeSent(sent) => {
                    probing = None;
                    match sent {
                        Ok(0) => {
                            return Err("redis reports no subscriber for this connection".into());
                        }
                        Ok(_) => {}
                        // Publishing failed: the probe will not come back; try again
                        // next time (the reader notices a dead connection by itself).
                        Err(e) => {
                            shard.probe_lost();
                            tracing::debug!(error = %e, "probe publish failed");
                        }
                    }
                }
            }
        }
    }

    fn verb(&self, subscribe: bool) -> &'static str {
        match (&self.shard.target, subscribe) {
            (Target::Instance { .. }, true) => "SUBSCRIBE",
            (Target::Instance { .. }, false) => "UNSUBSCRIBE",
            (Target::Partition { .. }, true) => "SSUBSCRIBE",
            (Target::Partition { .. }, false) => "SUNSUBSCRIBE",
        }
    }

    async fn flush(&mut self) -> Result<(), String> {
        let write = self.wr.write_all(&self.out);
        let r = timeout(COMMAND_TIMEOUT, write)
            .await
            .map_err(|_| "redis stopped reading our commands".to_string())?
            .map_err(|e| format!("write: {e}"));
        self.out.clear();
        r
    }

    /// Sends (UN)SUBSCRIBE for `channels`, in batches.
    async fn command(&mut self, subscribe: bool, channels: &[Arc<str>]) -> Result<(), String> {
        let verb = self.verb(subscribe);
        for chunk in channels.chunks(BATCH) {
            let mut args: Vec<String> = Vec::with_capacity(chunk.len() + 1);
            args.push(verb.to_string());
            args.extend(chunk.iter().map(|c| self.shared.keys.pubsub_channel(c)));
            if !subscribe {
                // From now on the channel is not live here, whatever the reader still
                // sees: a session must not take it as confirmed.
                self.shard.confirm(chunk, false);
                let mut pending = self.link.lock();
                for n in &args[1..] {
                    *pending.entry(n.clone()).or_default() += 1;
                }
            }
            resp::command(&mut self.out, &args);
            let delta = chunk.len() as i64;
            let delta = if subscribe { delta } else { -delta };
            self.shared.metrics.broker.subscriptions(delta);
            self.subscriptions.add(delta);
            if subscribe {
                self.active.extend(chunk.iter().cloned());
            } else {
                for c in chunk {
                    self.active.remove(c);
                }
            }
            self.flush().await?;
        }
        Ok(())
    }

    /// Reconciles this connection with the hub after interest changed.
    async fn sync(&mut self) -> Result<(), String> {
        let dirty: Vec<Arc<str>> = self
            .shard
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        let mut to_subscribe = Vec::new();
        let later = Instant::now() + self.shared.settings.unsubscribe_delay;
        for ch in dirty {
            if self.shared.handler.has_interest(&ch) {
                self.leaving.remove(&ch);
                if !self.active.contains(&ch) {
                    to_subscribe.push(ch);
                }
            } else if self.active.contains(&ch) {
                self.leaving.entry(ch).or_insert(later);
            }
        }
        self.command(true, &to_subscribe).await
    }

    /// Unsubscribes channels whose delay has passed and that are still unwanted.
    async fn leave_due(&mut self) -> Result<(), String> {
        let now = Instant::now();
        let due: Vec<Arc<str>> = self
            .leaving
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(c, _)| c.clone())
            .collect();
        let mut gone = Vec::new();
        for ch in due {
            self.leaving.remove(&ch);
            if !self.shared.handler.has_interest(&ch) {
                gone.push(ch);
            }
        }
        self.command(false, &gone).await
    }

    /// The connection ended: nothing it subscribed to is live any more.
    fn release(&mut self) {
        let n = self.active.len() as i64;
        self.shared.metrics.broker.subscriptions(-n);
        self.subscriptions.sub(n);
        let active: Vec<Arc<str>> = self.active.drain().collect();
        self.shard.confirm(&active, false);
    }
}

type Probing<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, String>> + Send + 'a>>;

/// What woke the commander.
enum Event {
    Interest,
    Leave,
    ProbeDue,
    ProbeSent(Result<u64, String>),
}
