//! Building a [`Publisher`]: where Redis is (the [`Topology`]), how to reach it
//! ([`RedisOptions`]: TLS, credentials, timeouts) and the publishing settings that
//! must match the gateways' (namespace, partitions, history rules).

use std::sync::Arc;
use std::time::Duration;

use protocol::history::HistoryRules;
use protocol::keys::{self, KeySpace};
use protocol::topology::Partitions;

use crate::backend::{self, Backend};
use crate::connect::{Connector, RedisOptions, Secret};
use crate::sentinel::Sentinel;
use crate::{DEFAULT_MAX_PAYLOAD, Endpoint, Inner, PublishError, Publisher, Topology};

/// Builds a [`Publisher`].
#[derive(Debug, Clone)]
pub struct PublisherBuilder {
    topology: Topology,
    namespace: String,
    max_payload: usize,
    connections: usize,
    timeout: Duration,
    history: HistoryRules,
    idempotency_window: Duration,
    options: RedisOptions,
    sentinel_password: Option<Secret>,
    /// Instances (and their Sentinel watchers) shared with another publisher.
    endpoints: Option<Vec<Endpoint>>,
}

impl PublisherBuilder {
    pub(crate) fn new(topology: Topology) -> Self {
        Self {
            topology,
            namespace: keys::DEFAULT_NAMESPACE.to_owned(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            connections: 2,
            timeout: Duration::from_secs(2),
            history: HistoryRules::default(),
            idempotency_window: Duration::from_secs(300),
            options: RedisOptions::default(),
            sentinel_password: None,
            endpoints: None,
        }
    }

    /// TLS, credentials, connect timeout and keepalive for every connection (see
    /// [`RedisOptions`]); replaces what the other methods below set.
    pub fn options(mut self, options: RedisOptions) -> Self {
        self.options = options;
        self
    }

    /// PEM bundle of the CAs that sign the Redis servers' certificates (for
    /// `rediss://` URLs); default: the system's roots.
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.options.tls.ca_file = Some(path.into());
        self
    }

    /// A client certificate and its key (PEM) for servers that require one.
    pub fn tls_client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.options.tls.cert_file = Some(cert.into());
        self.options.tls.key_file = Some(key.into());
        self
    }

    /// The name the servers' certificates carry, when it is not the host in the URL
    /// (not in cluster mode).
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.options.tls.server_name = Some(name.into());
        self
    }

    /// Accepts any server certificate. Development only.
    pub fn tls_insecure(mut self) -> Self {
        self.options.tls.insecure = true;
        self
    }

    /// ACL user and password for the data nodes, in place of those in the URLs.
    pub fn credentials(mut self, username: Option<String>, password: Secret) -> Self {
        self.options.username = username;
        self.options.password = Some(password);
        self
    }

    /// Password of the sentinels, when their URLs carry none (Sentinel only).
    pub fn sentinel_password(mut self, password: Secret) -> Self {
        self.sentinel_password = Some(password);
        self
    }

    /// Upper bound for opening a connection (TCP, TLS, authentication); default
    /// 3 s, and never more than [`PublisherBuilder::timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout = timeout;
        self
    }

    /// TCP keepalive idle time; `None` turns it off. Default 60 s.
    pub fn keepalive(mut self, idle: Option<Duration>) -> Self {
        self.options.keepalive = idle;
        self
    }

    /// Uses the instances of `other` (built from the same topology), so that
    /// both follow one Sentinel watcher instead of one each.
    pub fn share_endpoints(mut self, other: &Publisher) -> Self {
        if let Backend::Instances(lanes) = &other.inner.backend {
            self.endpoints = Some(lanes.iter().map(|l| l.endpoint.clone()).collect());
        }
        self
    }

    /// Namespace of Redis names; must match the gateways' `--redis-namespace`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Number of partitions in cluster mode (default
    /// [`protocol::topology::DEFAULT_PARTITIONS`]); must match the gateways'
    /// `--redis-cluster-partitions`. Ignored by the other modes.
    pub fn partitions(mut self, n: usize) -> Self {
        if let Topology::Cluster { partitions, .. } = &mut self.topology {
            *partitions = n;
        }
        self
    }

    /// Largest payload accepted, in bytes of JSON text.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Connections per Redis instance (default 2). Each is multiplexed: it carries
    /// any number of requests at once, so a few are enough for any load; more only
    /// spread the work over more sockets.
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }

    /// Which channels keep history; must match the gateways' history rules.
    /// Default: [`HistoryRules::default`] (personal channels keep 100 for 24 h).
    pub fn history(mut self, rules: HistoryRules) -> Self {
        self.history = rules;
        self
    }

    /// How long a message id is remembered as an idempotency key: a publish with
    /// the same id on the same channel within this window is not delivered again.
    /// Default 5 minutes; zero turns de-duplication off.
    pub fn idempotency_window(mut self, window: Duration) -> Self {
        self.idempotency_window = window;
        self
    }

    /// Upper bound for getting a connection and running one publish.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Creates the publisher. Connections are opened lazily, so this succeeds even
    /// while Redis is down; publishes then fail with [`PublishError::Unavailable`].
    pub fn build(self) -> Result<Publisher, PublishError> {
        if self.namespace.is_empty() {
            return Err(PublishError::Config("namespace must not be empty".into()));
        }
        let uses_tls = self
            .topology
            .urls()
            .iter()
            .any(|u| u.starts_with("rediss://"));
        let connector = Connector::new(self.options.clone(), uses_tls, "tls_ca_file")
            .map_err(|e| PublishError::Config(e.to_string()))?;
        let mut options = self.options.clone();
        options.connect_timeout = options.connect_timeout.min(self.timeout);
        let instances = |endpoints: Vec<Endpoint>| {
            let lanes = endpoints
                .into_iter()
                .map(|e| backend::lanes(e, &connector, self.connections, self.timeout))
                .collect();
            Backend::Instances(lanes)
        };
        let (backend, keys) = match &self.topology {
            Topology::Cluster { seeds, partitions } => {
                let parts = Partitions::new(*partitions)
                    .map_err(|e| PublishError::Config(format!("partitions {e}")))?;
                let keys = KeySpace::cluster(self.namespace.clone(), parts)
                    .map_err(|e| PublishError::Config(format!("namespace {e}")))?;
                (backend::cluster(seeds, &options, self.timeout)?, keys)
            }
            topology => {
                let endpoints = match self.endpoints.clone() {
                    Some(e) => e,
                    None => endpoints(topology, &self.sentinel_password, &connector)?,
                };
                (instances(endpoints), KeySpace::new(self.namespace.clone()))
            }
        };
        Ok(Publisher {
            inner: Arc::new(Inner {
                backend,
                keys,
                topology: self.topology,
                max_payload: self.max_payload,
                timeout: self.timeout,
                history: self.history,
                idempotency_window: self.idempotency_window,
            }),
        })
    }
}

/// The instances of a topology other than a cluster.
fn endpoints(
    topology: &Topology,
    sentinel_password: &Option<Secret>,
    connector: &Connector,
) -> Result<Vec<Endpoint>, PublishError> {
    match topology {
        Topology::Standalone(url) => Ok(vec![backend::fixed(url)?]),
        Topology::Sharded(urls) => {
            if urls.is_empty() {
                return Err(PublishError::Config("no shard URL given".into()));
            }
            urls.iter().map(|u| backend::fixed(u)).collect()
        }
        Topology::Sentinel { sentinels, master } => {
            let s = Sentinel::new(
                sentinels,
                master,
                sentinel_password.as_ref(),
                0,
                connector.clone(),
            )
            .map_err(PublishError::Config)?;
            Ok(vec![Endpoint::Sentinel(Arc::new(s))])
        }
        Topology::Cluster { .. } => Err(PublishError::Config(
            "a cluster has no fixed instances".into(),
        )),
    }
}
