//! Shared helpers for the black-box tests: real gateway processes with the test
//! defaults ([`testkit::TestGateway`], run from this package's build or
//! `TIDINGS_GATEWAY_BIN`), tokens, a real WebSocket client and plain HTTP.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use protocol::frame::{
    ClientFrame, Message as MessageFrame, Reply, ServerFrame, Welcome, decode_server,
};
use protocol::{Encoding, Payload};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use testkit::gateway::{API_KEY, SECRET, http_request, metric_value};
pub use testkit::{GatewayBuilder, RedisServer, TestGateway as Gateway, WAIT};

/// Mints an HS256 token with the test secret.
pub fn token(sub: &str, subscribe: &[&str], publish: &[&str], ttl_secs: u64) -> String {
    let s: Vec<String> = subscribe.iter().map(|x| x.to_string()).collect();
    let p: Vec<String> = publish.iter().map(|x| x.to_string()).collect();
    gateway::auth::mint_hs256(SECRET.as_bytes(), sub, ttl_secs, &s, &p).unwrap()
}

/// Mints a token with presence claims (`presence` patterns, `info`).
pub fn token_with(
    sub: &str,
    subscribe: &[&str],
    presence: &[&str],
    info: Option<serde_json::Value>,
) -> String {
    let s: Vec<String> = subscribe.iter().map(|x| x.to_string()).collect();
    let pr: Vec<String> = presence.iter().map(|x| x.to_string()).collect();
    gateway::auth::mint_hs256_with(
        SECRET.as_bytes(),
        sub,
        300,
        &s,
        &[],
        gateway::auth::Extra {
            presence: &pr,
            info: info.as_ref(),
        },
    )
    .unwrap()
}

/// How a client presents its token.
#[derive(Clone, Copy, Debug)]
pub enum TokenVia {
    Bearer,
    Subprotocol,
    Query,
}

pub struct Connect<'a> {
    pub token: Option<&'a str>,
    pub via: TokenVia,
    /// Subprotocols offered besides the token entry; empty offers none.
    pub protocols: Vec<&'a str>,
    pub headers: Vec<(&'a str, &'a str)>,
    /// Extra query string (e.g. `since=3&epoch=e`).
    pub query: Option<&'a str>,
}

impl<'a> Connect<'a> {
    pub fn new(token: &'a str) -> Self {
        Self {
            token: Some(token),
            via: TokenVia::Bearer,
            protocols: Vec::new(),
            headers: Vec::new(),
            query: None,
        }
    }
}

/// A refused upgrade: the HTTP status and JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: serde_json::Value,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A real WebSocket client speaking the Tidings protocol.
pub struct Client {
    pub ws: Ws,
    pub encoding: Encoding,
    pub welcome: Welcome,
    /// The subprotocol the server selected, if any.
    pub protocol: Option<String>,
    next_id: u64,
    /// Messages read while waiting for something else.
    pending: std::collections::VecDeque<MessageFrame>,
    /// Presence diffs read while waiting for something else.
    pub diffs: std::collections::VecDeque<protocol::frame::PresenceDiffFrame>,
    pub pings: usize,
}

impl Client {
    /// Connects with a bearer token and JSON.
    pub async fn connect(gw: &Gateway, token: &str) -> Client {
        Self::connect_with(gw, Connect::new(token))
            .await
            .expect("connect")
    }

    pub async fn connect_encoding(gw: &Gateway, token: &str, enc: Encoding) -> Client {
        let mut c = Connect::new(token);
        c.protocols = vec![enc.subprotocol()];
        Self::connect_with(gw, c).await.expect("connect")
    }

    pub async fn connect_with(gw: &Gateway, c: Connect<'_>) -> Result<Client, Refused> {
        let mut url = match (c.via, c.token) {
            (TokenVia::Query, Some(t)) => format!("{}?token={t}", gw.ws_url()),
            _ => gw.ws_url(),
        };
        if let Some(q) = c.query {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(q);
        }
        let mut req = url.into_client_request().unwrap();
        let mut protocols: Vec<String> = c.protocols.iter().map(|s| s.to_string()).collect();
        match (c.via, c.token) {
            (TokenVia::Bearer, Some(t)) => {
                req.headers_mut().insert(
                    "Authorization",
                    HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
                );
            }
            (TokenVia::Subprotocol, Some(t)) => protocols.push(format!("tidings.token.{t}")),
            _ => {}
        }
        if !protocols.is_empty() {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(&protocols.join(", ")).unwrap(),
            );
        }
        for (k, v) in &c.headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (mut ws, resp) = match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timed out")
        {
            Ok(ok) => ok,
            Err(WsError::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| serde_json::from_slice(b).unwrap_or(serde_json::Value::Null))
                    .unwrap_or_default();
                return Err(Refused { status, body });
            }
            Err(e) => panic!("connect failed: {e}"),
        };
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        let encoding = match protocol.as_deref() {
            Some("tidings.msgpack") => Encoding::MsgPack,
            _ => Encoding::Json,
        };
        // The welcome, after any WebSocket pings (sent while a slow broker delays it).
        let first = tokio::time::timeout(WAIT * 3, async {
            loop {
                match ws.next().await.expect("closed before welcome").unwrap() {
                    Message::Ping(_) | Message::Pong(_) => continue,
                    m => return m,
                }
            }
        })
        .await
        .expect("welcome timed out");
        let welcome = match decode(encoding, &first) {
            Some(ServerFrame::Welcome(w)) => w,
            other => panic!("expected welcome, got {other:?}"),
        };
        Ok(Client {
            ws,
            encoding,
            welcome,
            protocol,
            next_id: 1,
            pending: Default::default(),
            diffs: Default::default(),
            pings: 0,
        })
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        let bytes = frame.encode(self.encoding).unwrap();
        let msg = match self.encoding {
            Encoding::Json => Message::Text(String::from_utf8(bytes.to_vec()).unwrap().into()),
            Encoding::MsgPack => Message::Binary(bytes),
        };
        self.ws.send(msg).await.unwrap();
    }

    /// Sends a JSON value as a text frame (for malformed or hand-written frames).
    pub async fn send_json(&mut self, v: serde_json::Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// The next server frame; app pings are counted and answered, WS control frames skipped.
    pub async fn next_frame(&mut self) -> ServerFrame {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame in time")
                .expect("connection ended")
                .expect("read error");
            if let Message::Close(c) = &msg {
                panic!("unexpected close: {c:?}");
            }
            match decode(self.encoding, &msg) {
                Some(ServerFrame::Ping) => {
                    self.pings += 1;
                    self.send(&ClientFrame::Pong).await;
                }
                Some(f) => return f,
                None => continue,
            }
        }
    }

    /// Reads until the reply to `id`, keeping messages seen meanwhile.
    pub async fn reply(&mut self, id: u64) -> Reply {
        loop {
            match self.next_frame().await {
                ServerFrame::Reply(r) if r.id == Some(id) => return r,
                ServerFrame::Reply(r) => panic!("unexpected reply {r:?} while waiting for {id}"),
                ServerFrame::Message(m) => self.pending.push_back(m),
                ServerFrame::PresenceDiff(d) => self.diffs.push_back(d),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next reply, whatever its id.
    pub async fn any_reply(&mut self) -> Reply {
        loop {
            match self.next_frame().await {
                ServerFrame::Reply(r) => return r,
                ServerFrame::Message(m) => self.pending.push_back(m),
                ServerFrame::PresenceDiff(d) => self.diffs.push_back(d),
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next message frame.
    pub async fn message(&mut self) -> MessageFrame {
        if let Some(m) = self.pending.pop_front() {
            return m;
        }
        loop {
            match self.next_frame().await {
                ServerFrame::Message(m) => return m,
                ServerFrame::PresenceDiff(d) => self.diffs.push_back(d),
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// The next presence diff.
    pub async fn diff(&mut self) -> protocol::frame::PresenceDiffFrame {
        if let Some(d) = self.diffs.pop_front() {
            return d;
        }
        loop {
            match self.next_frame().await {
                ServerFrame::PresenceDiff(d) => return d,
                ServerFrame::Message(m) => self.pending.push_back(m),
                other => panic!("expected a presence diff, got {other:?}"),
            }
        }
    }

    /// Asserts that no presence diff arrives within `d` (messages are kept).
    pub async fn no_diff_within(&mut self, d: Duration) {
        assert!(self.diffs.is_empty(), "unexpected diffs {:?}", self.diffs);
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            match decode(self.encoding, &msg) {
                Some(ServerFrame::PresenceDiff(d)) => panic!("unexpected diff {d:?}"),
                Some(ServerFrame::Message(m)) => self.pending.push_back(m),
                Some(ServerFrame::Ping) => self.send(&ClientFrame::Pong).await,
                _ => {}
            }
        }
    }

    /// A `presence` request; the reply.
    pub async fn presence(
        &mut self,
        channel: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Reply {
        let id = self.next_id();
        self.send(&ClientFrame::Presence {
            id,
            channel: channel.into(),
            limit,
            cursor: cursor.map(str::to_owned),
        })
        .await;
        self.reply(id).await
    }

    /// A `history` request; the reply.
    pub async fn history(
        &mut self,
        channel: &str,
        limit: Option<u32>,
        since: Option<protocol::frame::Since>,
    ) -> Reply {
        let id = self.next_id();
        self.send(&ClientFrame::History {
            id,
            channel: channel.into(),
            limit,
            since,
        })
        .await;
        self.reply(id).await
    }

    /// A `presence_stats` request; the reply.
    pub async fn presence_stats(&mut self, channel: &str) -> Reply {
        let id = self.next_id();
        self.send(&ClientFrame::PresenceStats {
            id,
            channel: channel.into(),
        })
        .await;
        self.reply(id).await
    }

    /// Asserts that no message arrives within `d`.
    pub async fn no_message_within(&mut self, d: Duration) {
        assert!(
            self.pending.is_empty(),
            "unexpected pending messages {:?}",
            self.pending
        );
        if let Ok(Some(Ok(msg))) = tokio::time::timeout(d, self.ws.next()).await
            && let Some(ServerFrame::Message(m)) = decode(self.encoding, &msg)
        {
            panic!("unexpected message {m:?}");
        }
    }

    pub async fn subscribe(&mut self, channel: &str) -> Reply {
        self.subscribe_from(channel, None).await
    }

    /// Subscribes, resuming `since` if given; returns the reply.
    pub async fn subscribe_from(
        &mut self,
        channel: &str,
        since: Option<protocol::frame::Since>,
    ) -> Reply {
        let id = self.next_id();
        self.send(&ClientFrame::Subscribe {
            id,
            channel: channel.into(),
            since,
        })
        .await;
        self.reply(id).await
    }

    /// Subscribes (resuming `since` if given), asserts it succeeded, and returns
    /// the result.
    pub async fn subscribe_ok(
        &mut self,
        channel: &str,
        since: Option<protocol::frame::Since>,
    ) -> serde_json::Value {
        let r = self.subscribe_from(channel, since).await;
        assert!(r.ok, "{r:?}");
        r.result.unwrap()
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> Reply {
        let id = self.next_id();
        self.send(&ClientFrame::Unsubscribe {
            id,
            channel: channel.into(),
        })
        .await;
        self.reply(id).await
    }

    pub async fn publish(
        &mut self,
        channel: &str,
        event: &str,
        payload: serde_json::Value,
    ) -> Reply {
        let id = self.next_id();
        let payload = Payload::from_value(&payload).unwrap();
        self.send(&ClientFrame::Publish {
            id,
            channel: channel.into(),
            event: event.into(),
            payload,
            expect: None,
        })
        .await;
        self.reply(id).await
    }

    /// A conditional publish: only if the channel is at `offset` of `epoch`.
    pub async fn publish_if(
        &mut self,
        channel: &str,
        event: &str,
        payload: serde_json::Value,
        offset: u64,
        epoch: &str,
    ) -> Reply {
        let id = self.next_id();
        let payload = Payload::from_value(&payload).unwrap();
        self.send(&ClientFrame::Publish {
            id,
            channel: channel.into(),
            event: event.into(),
            payload,
            expect: Some(protocol::frame::Since {
                offset,
                epoch: epoch.into(),
            }),
        })
        .await;
        self.reply(id).await
    }

    pub async fn refresh(&mut self, token: &str) -> Reply {
        let id = self.next_id();
        self.send(&ClientFrame::Refresh {
            id,
            token: token.into(),
        })
        .await;
        self.reply(id).await
    }

    /// Reads (skipping anything else) until the server closes; returns code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next())
                .await
                .expect("no close in time")
            {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (u16::from(f.code), f.reason.to_string());
                }
                Some(Ok(Message::Close(None))) => {
                    return (u16::from(CloseCode::Status), String::new());
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("read error before close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }
}

/// Decodes a data frame; `None` for control frames.
/// The cast of the broker-mode delivery tests: alice on every node (`alice[0]` and
/// `alice[1]` also on `news`), bob on the first node, on `news`.
pub struct Audience {
    pub alice: Vec<Client>,
    pub bob: Client,
}

impl Audience {
    /// Connects and subscribes everyone. Alice's token allows `alice_subscribe`
    /// (which must cover `news`); her i-th connection speaks `encoding(i)`.
    pub async fn join(
        gws: &[Gateway],
        alice_subscribe: &[&str],
        encoding: impl Fn(usize) -> Encoding,
    ) -> Audience {
        let t = token("alice", alice_subscribe, &[], 60);
        let mut alice = Vec::new();
        for (i, gw) in gws.iter().enumerate() {
            alice.push(Client::connect_encoding(gw, &t, encoding(i)).await);
        }
        let mut bob = Client::connect(&gws[0], &token("bob", &["news"], &[], 60)).await;
        assert!(alice[0].subscribe("news").await.ok);
        assert!(alice[1].subscribe("news").await.ok);
        assert!(bob.subscribe("news").await.ok);
        Audience { alice, bob }
    }

    /// Every connection, bob last.
    pub fn everyone(&mut self) -> impl Iterator<Item = &mut Client> {
        self.alice.iter_mut().chain(std::iter::once(&mut self.bob))
    }

    /// Publishes to alice, to `news`, to everyone, and through `api`'s HTTP API to
    /// alice and bob; each reaches every connection that should have it, once per
    /// node. The Redis subscriptions must be in place.
    pub async fn each_delivered_once(&mut self, p: &publisher::Publisher, api: &Gateway) {
        let nodes = self.alice.len() as u64;
        let r = p
            .to_user("alice")
            .event("n")
            .payload(&serde_json::json!({"k": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.nodes, nodes);
        for c in &mut self.alice {
            let m = c.message().await;
            assert_eq!((m.channel.as_str(), m.event.as_str()), ("$user:alice", "n"));
            assert_eq!(m.offset, Some(1), "personal channels keep history");
        }
        let r = p.to_channel("news").event("c").send().await.unwrap();
        assert_eq!(r.nodes, 2);
        for c in self
            .alice
            .iter_mut()
            .take(2)
            .chain(std::iter::once(&mut self.bob))
        {
            assert_eq!(c.message().await.channel, "news");
        }
        let r = p.broadcast().event("b").send().await.unwrap();
        assert_eq!(r.nodes, nodes);
        for c in self.everyone() {
            assert_eq!(c.message().await.channel, "$broadcast");
        }
        let (status, body) = api
            .publish(serde_json::json!({"users": ["alice", "bob"], "event": "api"}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["nodes"], nodes + 1);
        for c in self.everyone() {
            assert_eq!(c.message().await.event, "api");
        }
    }
}

/// Publishes `n` numbered notifications (`n0`, `n1`, ... as message ids, the number
/// as payload) to `user`, one every `gap`, retrying each until Redis takes it: the
/// stream itself must have no holes, and the id makes a retry of a publish that did
/// land (reply lost) a no-op. Holds off while `pause` is set.
pub fn numbered_stream(
    sdk: publisher::Publisher,
    user: &'static str,
    n: u64,
    gap: Duration,
    pause: Option<Arc<std::sync::atomic::AtomicBool>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for i in 0..n {
            while pause
                .as_ref()
                .is_some_and(|p| p.load(std::sync::atomic::Ordering::Acquire))
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            while sdk
                .to_user(user)
                .event("n")
                .id(format!("n{i}"))
                .payload(&i)
                .send()
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(gap).await;
        }
    })
}

/// Collects the personal-channel numbers of a [`numbered_stream`] until `n` arrived
/// (or the deadline); other events are logged.
pub async fn collect_numbers(events: &mut client::Events, n: u64, within: Duration) -> Vec<u64> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while (got.len() as u64) < n {
        match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(events)).await {
            Ok(Some(client::Event::Message {
                channel, payload, ..
            })) if channel.starts_with("$user:") => got.push(payload.parse::<u64>().unwrap()),
            Ok(Some(other)) => eprintln!("EVENT {other:?}"),
            Ok(None) => {
                eprintln!("EVENTS ENDED");
                break;
            }
            Err(_) => break,
        }
    }
    got
}

/// Waits for a [`client::Client`]'s first welcome; returns the node it connected to.
/// A fresh connection's stream starts at its welcome (protocol.md, `welcome.offset`):
/// a message published while the connection is still being set up, even after
/// Redis confirmed the subscription, may fall before the position it reports. Tests
/// that expect every message of a stream start publishing after this.
pub async fn welcomed(events: &mut client::Events) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(events)).await {
            Ok(Some(client::Event::Connected { node, .. })) => return node,
            Ok(Some(other)) => eprintln!("EVENT {other:?}"),
            other => panic!("no welcome: {other:?}"),
        }
    }
}

pub fn decode(enc: Encoding, msg: &Message) -> Option<ServerFrame> {
    let bytes: &[u8] = match msg {
        Message::Text(t) => t.as_bytes(),
        Message::Binary(b) => b,
        _ => return None,
    };
    Some(decode_server(enc, bytes).unwrap_or_else(|e| panic!("undecodable server frame: {e}")))
}

/// Polls `f` until it returns true or [`WAIT`] passes.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `n` gateways named node0, node1, ..., each built by `configure` from the
/// default builder and its name, and waits until every one is ready.
pub async fn ready_nodes(
    n: usize,
    configure: impl Fn(GatewayBuilder, &str) -> GatewayBuilder,
) -> Vec<Gateway> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(
            configure(Gateway::builder(), &format!("node{i}"))
                .start()
                .await,
        );
    }
    for gw in &v {
        eventually("node ready", || async {
            gw.admin_get("/readyz").await.0 == 200
        })
        .await;
    }
    v
}

/// Connects a JSON client with a bearer token to a gateway address (for tasks that
/// cannot borrow the [`Gateway`]).
pub async fn connect_addr(addr: SocketAddr, token: &str) -> Client {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")
        .expect("connect");
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("welcome timed out")
        .expect("closed")
        .unwrap();
    let welcome = match decode(Encoding::Json, &first) {
        Some(ServerFrame::Welcome(w)) => w,
        other => panic!("expected welcome, got {other:?}"),
    };
    Client {
        ws,
        encoding: Encoding::Json,
        welcome,
        protocol: None,
        next_id: 1,
        pending: Default::default(),
        diffs: Default::default(),
        pings: 0,
    }
}
