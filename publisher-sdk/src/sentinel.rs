//! Where the primary of a Sentinel-managed Redis is: asked of the sentinels
//! (`SENTINEL get-master-addr-by-name`), checked with `ROLE` on the server itself (a
//! sentinel that has not yet heard of a failover may name the old primary), kept
//! until something says it changed.
//!
//! Two things say so: the sentinels' `+switch-master` event, which a watcher task
//! listens for on one sentinel at a time, and the users of the address themselves
//! (a connection that fails, or a write refused with `READONLY` because the server
//! was demoted), which call [`Sentinel::invalidate`]. Either bumps the generation,
//! which every connection to the old primary watches so that it is replaced, not
//! left attached to a demoted server.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, Value};
use tokio::sync::watch;

use crate::connect::{Connector, Secret, show};

/// The primary of one Sentinel-monitored master name.
pub struct Sentinel {
    /// The sentinels, with their own credentials (from their URLs or the sentinel
    /// password); TLS when their URLs say `rediss://`, and then the data nodes too.
    sentinels: Vec<ConnectionInfo>,
    master: String,
    connector: Connector,
    /// Database on the primary.
    db: i64,
    /// The primary as last checked; `None` when it must be asked for again.
    current: Mutex<Option<(String, u16)>>,
    /// The last primary found, to tell a move from a re-check.
    last: Mutex<Option<(String, u16)>>,
    generation: watch::Sender<u64>,
    next: AtomicUsize,
    watching: AtomicBool,
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinel")
            .field("master", &self.master)
            .field("sentinels", &self.sentinels.len())
            .finish_non_exhaustive()
    }
}

impl Sentinel {
    /// `urls` name the sentinels (`redis://` or `rediss://`, with credentials when
    /// the sentinels require them, or `password` for all of them).
    pub fn new(
        urls: &[String],
        master: &str,
        password: Option<&Secret>,
        db: i64,
        connector: Connector,
    ) -> Result<Self, String> {
        if urls.is_empty() {
            return Err("no sentinel URL given".into());
        }
        if master.is_empty() {
            return Err("the master name is empty".into());
        }
        let sentinels = urls
            .iter()
            .map(|u| {
                let info = u
                    .as_str()
                    .into_connection_info()
                    .map_err(|_| format!("{}: not a redis URL", crate::redact_url(u)))?;
                if !matches!(
                    info.addr(),
                    ConnectionAddr::Tcp(..) | ConnectionAddr::TcpTls { .. }
                ) {
                    return Err(format!(
                        "{}: sentinels are reached over TCP",
                        crate::redact_url(u)
                    ));
                }
                Ok(match password {
                    Some(p) => {
                        let s = info.redis_settings().clone().set_password(p.expose());
                        info.set_redis_settings(s)
                    }
                    None => info,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            sentinels,
            master: master.to_owned(),
            connector,
            db,
            current: Mutex::new(None),
            last: Mutex::new(None),
            generation: watch::channel(0).0,
            next: AtomicUsize::new(0),
            watching: AtomicBool::new(false),
        })
    }

    /// Whether the sentinels (and so the data nodes) are reached over TLS.
    fn tls(&self) -> bool {
        matches!(
            self.sentinels.first().map(|s| s.addr()),
            Some(ConnectionAddr::TcpTls { .. })
        )
    }

    /// Changes each time the primary may have moved.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Forgets the primary (a connection to it failed or was refused as read-only):
    /// the next connection asks the sentinels again. Connections are told to go
    /// only if the answer is another server.
    pub fn invalidate(&self) {
        self.lock().take();
    }

    /// Records the primary just found; a different one than before bumps the
    /// generation.
    fn found(&self, addr: &(String, u16)) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref().is_some_and(|l| l != addr) {
            self.generation.send_modify(|g| *g += 1);
        }
        *last = Some(addr.clone());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, u16)>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How to reach the primary now: the known one, or the one the sentinels name
    /// and that says it is the primary. Starts the `+switch-master` watcher on
    /// first use.
    pub async fn primary(self: &Arc<Self>) -> Result<ConnectionInfo, String> {
        if !self.watching.swap(true, Ordering::AcqRel) {
            tokio::spawn(watch_switches(Arc::downgrade(self)));
        }
        let known = self.lock().clone();
        let (host, port) = match known {
            Some(addr) => addr,
            None => {
                let addr = self.discover().await?;
                self.found(&addr);
                *self.lock() = Some(addr.clone());
                addr
            }
        };
        Ok(self.info(&host, port))
    }

    fn info(&self, host: &str, port: u16) -> ConnectionInfo {
        let addr = match self.tls() {
            true => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            },
            false => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        // The sentinels' entry only as a template: the primary gets its own address,
        // database and (from the connector) the data nodes' credentials.
        let template = self.sentinels[0].clone().set_addr(addr);
        let settings = RedisConnectionInfo::default().set_db(self.db);
        self.connector
            .with_credentials(template.set_redis_settings(settings))
    }

    /// Asks the sentinels in turn, starting after the last one asked, for the
    /// primary; checks its role.
    async fn discover(&self) -> Result<(String, u16), String> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = String::from("no sentinel answered");
        for i in 0..self.sentinels.len() {
            let sentinel = &self.sentinels[(start + i) % self.sentinels.len()];
            match self.ask(sentinel).await {
                Ok((host, port)) => match self.check_role(&host, port).await {
                    Ok(()) => return Ok((host, port)),
                    Err(e) => last = e,
                },
                Err(e) => last = format!("sentinel {}: {e}", show(sentinel.addr())),
            }
        }
        Err(format!("primary of `{}`: {last}", self.master))
    }

    /// A command's answer must come within the connect timeout: a sentinel or
    /// server that accepts connections but never answers must not stall discovery.
    fn config(&self) -> redis::AsyncConnectionConfig {
        redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(self.connector.options().connect_timeout))
    }

    async fn ask(&self, sentinel: &ConnectionInfo) -> Result<(String, u16), String> {
        let mut conn = self
            .connector
            .multiplexed_raw(sentinel, self.config())
            .await?;
        let reply: Value = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        match reply {
            Value::Array(v) if v.len() == 2 => {
                let host: String =
                    redis::from_redis_value(v[0].clone()).map_err(|e| e.to_string())?;
                let port: String =
                    redis::from_redis_value(v[1].clone()).map_err(|e| e.to_string())?;
                let port = port.parse().map_err(|_| format!("bad port `{port}`"))?;
                Ok((host, port))
            }
            Value::Nil => Err(format!("does not know the master name `{}`", self.master)),
            other => Err(format!("unexpected reply {other:?}")),
        }
    }

    async fn check_role(&self, host: &str, port: u16) -> Result<(), String> {
        let info = self.info(host, port);
        let mut conn = self.connector.multiplexed(&info, self.config()).await?;
        let reply: Value = redis::cmd("ROLE")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("{host}:{port}: ROLE: {e}"))?;
        match reply {
            Value::Array(v) if matches!(v.first(), Some(Value::BulkString(b)) if b == b"master") => {
                Ok(())
            }
            _ => Err(format!(
                "{host}:{port} is named by the sentinels but is not (yet) the primary"
            )),
        }
    }

    /// A `+switch-master` for this master name: the new address.
    fn switched(&self, payload: &str) -> Option<(String, u16)> {
        let mut parts = payload.split(' ');
        if parts.next()? != self.master {
            return None;
        }
        let rest: Vec<&str> = parts.collect();
        if rest.len() != 4 {
            return None;
        }
        Some((rest[2].to_owned(), rest[3].parse().ok()?))
    }
}

/// Listens for `+switch-master` on one sentinel at a time for as long as the
/// [`Sentinel`] lives; a new address replaces the known one and bumps the
/// generation. After the watcher (re)connects, the primary is looked up again,
/// since a switch may have happened while it was not listening.
async fn watch_switches(sentinel: Weak<Sentinel>) {
    let mut index = 0usize;
    loop {
        let Some(s) = sentinel.upgrade() else { return };
        let info = s.sentinels[index % s.sentinels.len()].clone();
        index += 1;
        let connector = s.connector.clone();
        drop(s);
        let limit = connector.options().connect_timeout;
        let pubsub = async {
            let stream = connector.open(info.addr()).await?;
            let mut pubsub = redis::aio::PubSub::new(info.redis_settings(), stream)
                .await
                .map_err(|e| e.to_string())?;
            pubsub
                .subscribe("+switch-master")
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(pubsub)
        };
        // A sentinel that accepts but never answers is left for the next one.
        if let Ok(Ok(pubsub)) = tokio::time::timeout(limit, pubsub).await {
            if let Some(s) = sentinel.upgrade() {
                // A switch may have happened while nobody listened: look now, and
                // move the connections if the primary did.
                if let Ok(addr) = s.discover().await {
                    s.found(&addr);
                    *s.lock() = Some(addr);
                }
            }
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                let Some(s) = sentinel.upgrade() else { return };
                let payload: String = msg.get_payload().unwrap_or_default();
                if let Some(addr) = s.switched(&payload) {
                    tracing::warn!(master = %s.master, to = %format!("{}:{}", addr.0, addr.1), "the sentinels switched the primary");
                    *s.lock() = None;
                    *s.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
                    s.generation.send_modify(|g| *g += 1);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
