//! Opening a subscriber connection: to one instance, or to the master that owns a
//! cluster partition's slot; authenticated and on the right database.

use std::collections::HashMap;

use bytes::BytesMut;
use publisher::connect::{Stream, show};
use redis::ConnectionInfo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::Shared;
use super::resp::{self, Reply};
use super::shard::{Shard, Target};

/// The two halves of a subscriber connection, whatever carries it (TCP, TLS, a
/// Unix socket).
pub(super) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;

pub(super) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Opens a connection to one Redis (TLS and keepalive as configured) and
/// authenticates it; returns its halves.
pub(super) async fn open(
    shared: &Shared,
    info: &ConnectionInfo,
) -> Result<(ReadHalf, WriteHalf), String> {
    let connector = &shared.redis.connector;
    let info = connector.with_credentials(info.clone());
    let (mut rd, mut wr): (ReadHalf, WriteHalf) = match connector.open(info.addr()).await? {
        // Plain TCP splits without a lock between the halves.
        Stream::Tcp(tcp) => {
            let (r, w) = tcp.into_split();
            (Box::new(r), Box::new(w))
        }
        other => {
            let (r, w) = tokio::io::split(other);
            (Box::new(r), Box::new(w))
        }
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
    let limit = connector.options().connect_timeout;
    timeout(limit, handshake)
        .await
        .map_err(|_| format!("{}: handshake timed out", show(info.addr())))??;
    Ok((rd, wr))
}

/// Opens the connection a shard listens on; returns it and where it goes.
pub(super) async fn connect(
    shared: &Shared,
    shard: &Shard,
) -> Result<(ReadHalf, WriteHalf, String), String> {
    match &shard.target {
        Target::Instance { instance, endpoint } => {
            let opened = async {
                let info = endpoint.resolve().await?;
                open(shared, &info).await
            };
            match opened.await {
                Ok((rd, wr)) => Ok((rd, wr, format!("instance {instance}"))),
                Err(e) => {
                    // With Sentinel: ask again where the primary is.
                    endpoint.failed();
                    Err(e)
                }
            }
        }
        Target::Partition { slot } => {
            let nodes = shared
                .cluster
                .as_ref()
                .ok_or_else(|| "no cluster configured".to_string())?;
            let limit = shared.redis.connector.options().connect_timeout * 2;
            let (host, port) = timeout(limit, nodes.owner(*slot))
                .await
                .map_err(|_| "cluster slot lookup timed out".to_string())?
                .map_err(|e| format!("cluster slot lookup: {e}"))?;
            let (rd, wr) = open(shared, &nodes.info(&host, port)).await?;
            Ok((rd, wr, format!("{host}:{port} slot {slot}")))
        }
    }
}

/// What the reader and the commander of one connection share.
#[derive(Default)]
pub(super) struct Pending {
    /// UNSUBSCRIBEs sent and not yet confirmed, per Redis channel name: a
    /// confirmation of a SUBSCRIBE sent before one of them is stale, and an
    /// unsubscription nobody asked for means Redis dropped the channel.
    unsubscribing: std::sync::Mutex<HashMap<String, u32>>,
}

impl Pending {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.unsubscribing.lock().unwrap_or_else(|e| e.into_inner())
    }
}
