//! One connection attempt: TCP (or the test's in-memory pipe), the WebSocket upgrade
//! with the token and the encoding's subprotocol, then the `welcome`. Everything
//! that can end an attempt comes back as an [`Ended`], so the reconnect loop treats a
//! refused attempt like a dropped connection.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use protocol::Encoding;
use protocol::frame::{ServerFrame, Since, Welcome};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::Error;
use crate::codec;
use crate::ended::Ended;

/// A byte stream to a gateway (TCP, or an in-memory pipe in tests).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub(crate) type BoxIo = Box<dyn Io>;
/// Opens a byte stream to `host:port`. Tests inject their own.
pub(crate) type Connector =
    Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<BoxIo>> + Send + Sync>;
pub(super) type Ws = WebSocketStream<BoxIo>;

/// A gateway URL, checked once when the client is built.
#[derive(Clone)]
pub(super) struct Target {
    pub url: String,
    /// `host:port` for the connector.
    pub addr: String,
}

pub(super) fn parse_target(url: &str) -> Result<Target, Error> {
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

pub(super) fn tcp_connector() -> Connector {
    Arc::new(|addr: String| {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s) as BoxIo)
        })
    })
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

/// The URL of a connection attempt: resume parameters for the personal channel
/// (docs/protocol.md, "Resuming at connect").
pub(super) fn connect_url(url: &str, since: Option<&Since>) -> String {
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
pub(super) async fn attempt(
    connector: Connector,
    target: Target,
    token: String,
    enc: Encoding,
    since: Option<Since>,
) -> Result<(Ws, Welcome), Ended> {
    let url = connect_url(&target.url, since.as_ref());
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| Ended::lost(format!("bad request for {url}: {e}")))?;
    let bearer =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Ended::unusable_token())?;
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
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            return Err(Ended::refused(resp.status().as_u16(), body));
        }
        Err(e) => return Err(Ended::lost(format!("handshake with {}: {e}", target.url))),
    };
    // WebSocket pings may come first (a slow broker delays the welcome); tungstenite
    // answers them by itself.
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

/// The first data frame must be the `welcome`.
fn welcome(ws: Ws, enc: Encoding, bytes: &[u8]) -> Result<(Ws, Welcome), Ended> {
    match codec::decode(enc, bytes) {
        Ok(Some(ServerFrame::Welcome(w))) => Ok((ws, w)),
        Ok(other) => Err(Ended::lost(format!("expected welcome, got {other:?}"))),
        Err(e) => Err(Ended::lost(format!("undecodable welcome: {e}"))),
    }
}

#[cfg(test)]
mod tests {
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
