//! Opening load connections: loopback-only targets, local source addresses spread
//! over 127.0.0.2, 127.0.0.3, ... (each source address has its own ~28k ephemeral
//! ports), HS256 tokens, and the WebSocket handshake over a socket bound before
//! `connect`, with small buffers so the load generator itself stays lean.
//!
//! Sockets are bound to an explicit local port chosen from the client's index, not
//! to port 0: with thousands of ports of one address in use, the kernel's search for
//! a free port on `bind(0)` cost ~0.5 ms of system time per connection here (5.5 s
//! for 10,000), capped connects at ~3,300/s and took CPU from the gateway under test.
//! (`IP_BIND_ADDRESS_NO_PORT` would also avoid it, but needs unsafe code.)

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A load client's WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// Connections per local source address (below the ~28k ephemeral ports of Linux's
/// default range, since a socket bound before `connect` takes its port at bind time).
pub const DEFAULT_PER_SOURCE_IP: usize = 20_000;

/// Refuses anything outside 127.0.0.0/8: the load generator never targets another host.
pub fn ensure_loopback(ip: Ipv4Addr, what: &str) -> Result<()> {
    if ip.octets()[0] == 127 {
        Ok(())
    } else {
        bail!("refusing {what} {ip}: loadtest only targets loopback addresses (127.0.0.0/8)")
    }
}

fn host_ip(host: &str, what: &str) -> Result<Ipv4Addr> {
    let ip = if host.eq_ignore_ascii_case("localhost") {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse::<Ipv4Addr>().map_err(|_| {
            anyhow!("refusing {what} host `{host}`: give an IPv4 loopback address like 127.0.0.1")
        })?
    };
    ensure_loopback(ip, what)?;
    Ok(ip)
}

/// A parsed `ws://127.x.y.z:port/path` URL.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("bad URL `{url}`"))?;
        if uri.scheme_str() != Some("ws") {
            bail!("`{url}`: only ws:// URLs are supported");
        }
        let host = uri.host().ok_or_else(|| anyhow!("`{url}` has no host"))?;
        let ip = host_ip(host, "gateway")?;
        let port = uri.port_u16().unwrap_or(80);
        Ok(Target {
            url: url.to_owned(),
            addr: SocketAddr::V4(SocketAddrV4::new(ip, port)),
        })
    }

    /// The HTTP base (`http://host:port`) of the same listener (publish API).
    pub fn http_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Checks a `redis://host:port` URL points at loopback.
pub fn ensure_loopback_redis(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| anyhow!("refusing Redis URL `{url}`: use redis://127.0.0.1:PORT"))?;
    let hostport = rest.rsplit('@').next().unwrap_or(rest);
    let hostport = hostport.split('/').next().unwrap_or(hostport);
    let host = hostport
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(hostport);
    host_ip(host, "redis")?;
    Ok(())
}

/// The local address client `idx` connects from: 127.0.0.2 for the first
/// `per_ip` clients, 127.0.0.3 for the next, and so on.
pub fn source_ip(idx: usize, per_ip: usize) -> Ipv4Addr {
    let n = u32::from(Ipv4Addr::new(127, 0, 0, 2)) + (idx / per_ip.max(1)) as u32;
    Ipv4Addr::from(n)
}

/// The kernel's local port range (`net.ipv4.ip_local_port_range`), where it would
/// pick client ports itself.
pub fn port_range() -> (u16, u16) {
    static RANGE: OnceLock<(u16, u16)> = OnceLock::new();
    *RANGE.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
                Some((it.next()??, it.next()??))
            })
            .filter(|(lo, hi)| lo < hi)
            .unwrap_or((32768, 60999))
    })
}

/// Local port for client `idx` on its attempt `attempt`: distinct for the clients
/// sharing a source address (there are at most `per_ip` of them, fewer than the
/// range), then stepping through the range when a port is still taken (a previous
/// connection of the same client not yet closed, another program).
pub fn source_port(idx: usize, per_ip: usize, attempt: usize) -> u16 {
    let (lo, hi) = port_range();
    let span = (hi - lo) as usize + 1;
    let slot = idx % per_ip.max(1) + attempt * 7_919;
    lo + (slot % span) as u16
}

/// WebSocket buffers for load clients: frames here are small, and 10,000 clients
/// with tungstenite's 128 KiB default read buffer would measure the generator, not
/// the gateway.
pub fn ws_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Mints an HS256 token for load user `sub` with rights to the benchmark channels.
pub fn mint_token(secret: &[u8], sub: &str, ttl_secs: u64) -> Result<String> {
    #[derive(Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
        iat: u64,
        subscribe: [&'static str; 2],
        publish: [&'static str; 1],
    }
    let now = jsonwebtoken::get_current_timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub,
            exp: now + ttl_secs,
            iat: now,
            subscribe: ["bench*", "room:*"],
            publish: ["room:*"],
        },
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .context("cannot mint token")
}

/// The user id of load client `idx`.
pub fn user_id(idx: usize) -> String {
    format!("lt-{idx}")
}

/// Opens a TCP connection from `source`, trying the local ports `port(0)`,
/// `port(1)`, ... while one is in use.
pub async fn open_tcp(
    target: &Target,
    source: Ipv4Addr,
    port: impl Fn(usize) -> u16,
) -> Result<TcpStream> {
    use std::io::ErrorKind::{AddrInUse, AddrNotAvailable};
    const ATTEMPTS: usize = 16;
    let mut attempt = 0;
    loop {
        let local = SocketAddr::V4(SocketAddrV4::new(source, port(attempt)));
        attempt += 1;
        let socket = TcpSocket::new_v4().context("socket")?;
        // Ports of this source address still in TIME_WAIT from earlier connections
        // (a storm, a previous run) may be reused; connect checks the full 4-tuple.
        socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
        let result = match socket.bind(local) {
            Ok(()) => socket.connect(target.addr).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(stream) => return Ok(stream),
            Err(e) if matches!(e.kind(), AddrInUse | AddrNotAvailable) && attempt < ATTEMPTS => {
                continue;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("connect {} from {local}", target.addr));
            }
        }
    }
}

/// Connects client `idx`: bind to `source` and its port (see [`source_port`]), TCP
/// connect, WebSocket handshake with the token as a bearer header and the
/// `tidings.json` subprotocol, all within `timeout`.
pub async fn connect(
    target: &Target,
    from: (Ipv4Addr, usize, usize),
    token: &str,
    read_buffer: usize,
    timeout: Duration,
) -> Result<Ws> {
    connect_ws(target, from, Some(token), read_buffer, timeout).await
}

/// [`connect`], with a gateway's token and subprotocol (`Some(token)`) or as a
/// plain WebSocket client (`None`: Nchan's subscribers).
pub async fn connect_ws(
    target: &Target,
    (source, idx, per_ip): (Ipv4Addr, usize, usize),
    token: Option<&str>,
    read_buffer: usize,
    timeout: Duration,
) -> Result<Ws> {
    ensure_loopback(source, "source address")?;
    let run = async {
        let stream = open_tcp(target, source, |a| source_port(idx, per_ip, a)).await?;
        stream.set_nodelay(true).context("nodelay")?;
        let mut req = target
            .url
            .as_str()
            .into_client_request()
            .context("request")?;
        if let Some(token) = token {
            let headers = req.headers_mut();
            headers.insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).context("token header")?,
            );
            headers.insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(protocol::frame::JSON_PROTOCOL),
            );
        }
        let (ws, _resp) =
            tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config(read_buffer)))
                .await
                .map_err(|e| match e {
                    tokio_tungstenite::tungstenite::Error::Http(resp) => {
                        anyhow!("upgrade refused with HTTP {}", resp.status())
                    }
                    other => anyhow!("handshake: {other}"),
                })?;
        anyhow::Ok(ws)
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| anyhow!("connect timed out after {timeout:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_of_one_source_get_distinct_ports_in_range() {
        let (lo, hi) = port_range();
        let per_ip = 20_000.min((hi - lo) as usize + 1);
        let mut seen = std::collections::HashSet::new();
        for idx in 0..per_ip * 2 {
            let p = source_port(idx, per_ip, 0);
            assert!((lo..=hi).contains(&p));
            if source_ip(idx, per_ip) == source_ip(0, per_ip) {
                assert!(seen.insert(p), "port {p} given twice");
            }
        }
        assert_ne!(source_port(5, per_ip, 0), source_port(5, per_ip, 1));
    }

    #[test]
    fn only_loopback_targets() {
        assert!(Target::parse("ws://127.0.0.1:8080/ws").is_ok());
        assert!(Target::parse("ws://localhost:8080/ws").is_ok());
        assert!(Target::parse("ws://127.9.9.9:1/ws").is_ok());
        assert!(Target::parse("ws://10.0.0.1:8080/ws").is_err());
        assert!(Target::parse("ws://example.com/ws").is_err());
        assert!(Target::parse("wss://127.0.0.1/ws").is_err());
        assert!(ensure_loopback_redis("redis://127.0.0.1:6379").is_ok());
        assert!(ensure_loopback_redis("redis://192.168.1.2:6379").is_err());
    }

    #[test]
    fn sources_spread_over_addresses() {
        assert_eq!(source_ip(0, 20_000), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_ip(19_999, 20_000), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_ip(20_000, 20_000), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(
            source_ip(300 * 20_000, 20_000),
            Ipv4Addr::new(127, 0, 1, 46)
        );
    }
}
