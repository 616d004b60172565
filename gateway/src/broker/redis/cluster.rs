//! Where a cluster partition lives: the master that owns its slot, as `CLUSTER
//! SLOTS` of the first node that answers says. Asked again after every reconnect,
//! which follows failovers and resharding.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use publisher::Connector;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};

/// The cluster nodes a partition connection asks where its slot lives.
pub(super) struct ClusterNodes {
    /// Connection settings (credentials, database) of the first seed, for every node.
    template: ConnectionInfo,
    /// Seeds first, then nodes learned from slot maps; never shrinks below the seeds.
    known: Mutex<Vec<(String, u16)>>,
    /// Where the next lookup starts, so one unreachable node is not always asked first.
    next: AtomicUsize,
    connector: Connector,
}

impl ClusterNodes {
    pub(super) fn new(seeds: &[String], connector: Connector) -> Result<Self, String> {
        let mut known = Vec::new();
        let mut template = None;
        for url in seeds {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|_| format!("{}: not a redis URL", publisher::redact_url(url)))?;
            match info.addr() {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    known.push((host.clone(), *port))
                }
                _ => {
                    return Err(format!(
                        "{}: cluster nodes are reached over TCP",
                        publisher::redact_url(url)
                    ));
                }
            }
            template.get_or_insert(info);
        }
        let template = template.ok_or("no cluster seed URL")?;
        Ok(Self {
            template,
            known: Mutex::new(known),
            next: AtomicUsize::new(0),
            connector,
        })
    }

    /// How to reach one node: its address with the seeds' credentials, over TLS
    /// when the seeds are.
    pub(super) fn info(&self, host: &str, port: u16) -> ConnectionInfo {
        let addr = match self.template.addr() {
            ConnectionAddr::TcpTls { .. } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: false,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        self.template.clone().set_addr(addr)
    }

    /// The master that owns `slot`, as the first node that answers `CLUSTER SLOTS`
    /// sees it.
    pub(super) async fn owner(&self, slot: u16) -> Result<(String, u16), String> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = String::from("no cluster node known");
        for i in 0..known.len() {
            let (host, port) = &known[(start + i) % known.len()];
            match self.slot_map(host, *port).await {
                Ok(map) => {
                    let mut k = self.known.lock().unwrap_or_else(|e| e.into_inner());
                    for (_, _, node) in &map {
                        if !k.contains(node) {
                            k.push(node.clone());
                        }
                    }
                    drop(k);
                    return map
                        .into_iter()
                        .find(|(a, b, _)| (*a..=*b).contains(&slot))
                        .map(|(_, _, node)| node)
                        .ok_or_else(|| format!("slot {slot} is not served"));
                }
                Err(e) => last = format!("{host}:{port}: {e}"),
            }
        }
        Err(last)
    }

    /// `CLUSTER SLOTS` of one node: `(first, last, master)` per range.
    async fn slot_map(&self, host: &str, port: u16) -> Result<SlotMap, String> {
        let limit = self.connector.options().connect_timeout;
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(limit));
        let mut conn = self
            .connector
            .multiplexed(&self.info(host, port), config)
            .await?;
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        parse_slots(&reply, host).ok_or_else(|| "unexpected CLUSTER SLOTS reply".to_string())
    }
}

/// `(first slot, last slot, (master host, master port))` of each `CLUSTER SLOTS` range.
type SlotMap = Vec<(u16, u16, (String, u16))>;

fn parse_slots(reply: &Value, asked: &str) -> Option<SlotMap> {
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges
        .iter()
        .map(|r| {
            let Value::Array(f) = r else { return None };
            let Value::Array(master) = f.get(2)? else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                _ => return None,
            };
            // An empty or unknown endpoint means "the address you asked".
            let host = if host.is_empty() || host == "?" {
                asked.to_owned()
            } else {
                host
            };
            Some((
                int(f.first()?)?,
                int(f.get(1)?)?,
                (host, int(master.get(1)?)?),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::parse_slots;

    #[test]
    fn cluster_slots_are_parsed() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("", 7001)]),
        ]);
        let map = parse_slots(&reply, "seed").unwrap();
        assert_eq!(
            map,
            vec![
                (0, 5460, ("10.0.0.1".to_string(), 7000)),
                (5461, 16383, ("seed".to_string(), 7001)),
            ]
        );
        assert!(parse_slots(&Value::Nil, "x").is_none());
    }
}
