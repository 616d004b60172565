//! Presence in Redis: who is subscribed to a channel across every gateway node, and
//! whether a user is connected anywhere (docs/architecture.md, "Presence").
//!
//! Backends read it ([`Publisher::presence`], [`Publisher::presence_stats`],
//! [`Publisher::online`]); gateway nodes write it ([`Publisher::presence_update`],
//! [`Publisher::presence_refresh`], [`Publisher::online_update`]). Each node
//! registers its own entries and refreshes them (one command per channel, not per
//! member); entries of a node that stops refreshing expire and are removed by the
//! next script that touches the channel, which announces the leaves. Every key has a
//! ttl, and all keys of a channel (or of a user) share its slot, so one script
//! does each step atomically in any Redis layout.

use std::sync::LazyLock;
use std::time::Duration;

use protocol::channel;
use protocol::frame::{PresenceResult, PresenceStatsResult};
use protocol::presence::{
    MAX_CURSOR_BYTES, MAX_ONLINE_QUERY, MAX_PAGE, Member, Policy, UserStatus,
};
use redis::Value;

use crate::script::{self, Lua};
use crate::{PublishError, Publisher};

macro_rules! channel_script {
    ($file:literal) => {
        Lua::new(
            concat!(include_str!("presence/common.lua"), include_str!($file)),
            LazyLock::new(|| {
                redis::Script::new(concat!(
                    include_str!("presence/common.lua"),
                    include_str!($file)
                ))
            }),
        )
    };
}

static UPDATE: Lua = channel_script!("presence/update.lua");
static REFRESH: Lua = channel_script!("presence/refresh.lua");
static READ: Lua = channel_script!("presence/read.lua");
static ONLINE_UPDATE: Lua = Lua::new(
    include_str!("presence/online_update.lua"),
    LazyLock::new(|| redis::Script::new(include_str!("presence/online_update.lua"))),
);
static ONLINE_READ: Lua = Lua::new(
    include_str!("presence/online_read.lua"),
    LazyLock::new(|| redis::Script::new(include_str!("presence/online_read.lua"))),
);

/// How a gateway node keeps its presence entries.
#[derive(Debug, Clone)]
pub struct NodePresence {
    /// The node's id (names its entries).
    pub node: String,
    /// How long an entry lives without a refresh.
    pub ttl: Duration,
    /// How long after a user's last connection went their leave is announced.
    pub grace: Duration,
    /// How long a user's last-seen time is kept.
    pub last_seen_ttl: Duration,
}

/// A connection joining a channel's presence.
#[derive(Debug, Clone)]
pub struct Join {
    pub client: String,
    pub user: String,
    /// The member as listed (JSON of [`Member`]).
    pub member: String,
    /// The user as announced in a join (JSON of `protocol::presence::Joined`).
    pub joined: String,
}

/// What a node's update or refresh of a channel found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// When the channel's next pending leave is due (the node looks again then).
    pub next_due: Option<Duration>,
    /// Clients not registered because the channel's presence is full.
    pub refused: Vec<String>,
    /// The node has members here but Redis holds none of its entries: register
    /// them again.
    pub missing: bool,
}

/// What a user's entry on a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnlineOp {
    /// A connection of the user is open here (first one, or still).
    Here,
    /// The user's last connection here went.
    Gone,
}

fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

fn channel_keys(p: &Publisher, ch: &str) -> Vec<String> {
    let k = p.keys();
    ["members", "index", "users", "leaving", "nodes", "lingering"]
        .iter()
        .map(|part| k.presence(ch, part))
        .collect()
}

fn node_prefix(p: &Publisher, ch: &str) -> String {
    p.keys().presence(ch, "node:")
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn due(v: Option<&Value>) -> Option<Duration> {
    let n = int(v?);
    (n >= 0).then(|| Duration::from_millis(n as u64))
}

fn check_channel(ch: &str) -> Result<(), PublishError> {
    channel::validate(ch).map_err(|e| PublishError::InvalidTarget(e.to_string()))
}

impl Publisher {
    /// A page of a channel's presence (members ordered by client id, at most
    /// `limit`, after `cursor`) with its counts.
    pub async fn presence(
        &self,
        ch: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<PresenceResult, PublishError> {
        check_channel(ch)?;
        if limit == 0 || limit > MAX_PAGE {
            return Err(PublishError::InvalidTarget(format!(
                "limit must be 1..={MAX_PAGE}"
            )));
        }
        let cursor = cursor.unwrap_or("");
        if cursor.len() > MAX_CURSOR_BYTES {
            return Err(PublishError::InvalidTarget(format!(
                "cursor longer than {MAX_CURSOR_BYTES} bytes"
            )));
        }
        let (clients, users, next, members) = self.read(ch, limit, cursor).await?;
        Ok(PresenceResult {
            channel: ch.to_owned(),
            clients,
            users,
            members,
            cursor: next,
        })
    }

    /// A channel's presence counts: connections and distinct users.
    pub async fn presence_stats(&self, ch: &str) -> Result<PresenceStatsResult, PublishError> {
        check_channel(ch)?;
        let (clients, users, _, _) = self.read(ch, 0, "").await?;
        Ok(PresenceStatsResult {
            channel: ch.to_owned(),
            clients,
            users,
        })
    }

    async fn read(
        &self,
        ch: &str,
        limit: u32,
        cursor: &str,
    ) -> Result<(u64, u64, Option<String>, Vec<Member>), PublishError> {
        let keys = channel_keys(self, ch);
        let args = [
            node_prefix(self, ch),
            self.inner.publish_command().to_owned(),
            self.keys().pubsub_channel(ch),
            ch.to_owned(),
            limit.to_string(),
            cursor.to_owned(),
        ];
        let reply: Vec<Value> = self
            .with_conn(ch, move |_, conn| {
                Box::pin(async move { script::eval(conn, &READ, &keys, &args).await })
            })
            .await?;
        let mut it = reply.into_iter();
        let clients = it.next().map_or(0, |v| int(&v).max(0) as u64);
        let users = it.next().map_or(0, |v| int(&v).max(0) as u64);
        let next = it.next().and_then(text).filter(|c| !c.is_empty());
        let members = it
            .filter_map(text)
            .filter_map(|m| serde_json::from_str::<Member>(&m).ok())
            .collect();
        Ok((clients, users, next, members))
    }

    /// Whether each user is online (a connection open on any node) and when they
    /// were last seen, in the order asked.
    pub async fn online<S: AsRef<str>>(
        &self,
        users: &[S],
    ) -> Result<Vec<UserStatus>, PublishError> {
        if users.is_empty() || users.len() > MAX_ONLINE_QUERY {
            return Err(PublishError::InvalidTarget(format!(
                "ask for 1..={MAX_ONLINE_QUERY} users"
            )));
        }
        for u in users {
            channel::validate_user(u.as_ref())
                .map_err(|e| PublishError::InvalidTarget(e.to_string()))?;
        }
        let mut out: Vec<Option<UserStatus>> = vec![None; users.len()];
        for (route, idx) in self.by_route(users.iter().map(|u| u.as_ref())) {
            let keys: Vec<String> = idx
                .iter()
                .flat_map(|&i| {
                    let u = users[i].as_ref();
                    [self.keys().online(u), self.keys().last_seen(u)]
                })
                .collect();
            let reply: Vec<Value> = self
                .on_route(route, move |_, conn| {
                    Box::pin(async move {
                        script::eval(conn, &ONLINE_READ, &keys, &[] as &[String]).await
                    })
                })
                .await?;
            let mut it = reply.into_iter();
            for &i in &idx {
                let online = it.next().is_some_and(|v| int(&v) > 0);
                let last_seen = it.next().and_then(text).and_then(|s| s.parse::<u64>().ok());
                out[i] = Some(UserStatus {
                    user: users[i].as_ref().to_owned(),
                    online,
                    last_seen,
                });
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Where a node's scripts announce a channel's joins and leaves: nowhere when
    /// its rule has no events.
    fn diff_channel(&self, ch: &str, events: bool) -> String {
        if events {
            self.keys().pubsub_channel(ch)
        } else {
            String::new()
        }
    }

    /// Groups items by the Redis (shard or partition) that holds each user's
    /// personal channel: indexes per route.
    fn by_route<'a>(&self, users: impl Iterator<Item = &'a str>) -> Vec<(usize, Vec<usize>)> {
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, u) in users.enumerate() {
            let route = self.route(&channel::personal(u));
            match groups.iter_mut().find(|(r, _)| *r == route) {
                Some((_, v)) => v.push(i),
                None => groups.push((route, vec![i])),
            }
        }
        groups
    }

    /// A node's joins and leaves on one channel (see `presence/update.lua`).
    pub async fn presence_update(
        &self,
        node: &NodePresence,
        ch: &str,
        policy: Policy,
        joins: &[Join],
        leaves: &[String],
    ) -> Result<Outcome, PublishError> {
        let keys = channel_keys(self, ch);
        let mut args: Vec<String> = Vec::with_capacity(9 + joins.len() * 4 + leaves.len());
        args.extend([
            node.node.clone(),
            node_prefix(self, ch),
            ms(node.ttl),
            ms(node.grace),
            policy.max_members.to_string(),
            self.inner.publish_command().to_owned(),
            self.diff_channel(ch, policy.events),
            ch.to_owned(),
            joins.len().to_string(),
        ]);
        for j in joins {
            args.extend([
                j.client.clone(),
                j.user.clone(),
                j.member.clone(),
                j.joined.clone(),
            ]);
        }
        args.extend(leaves.iter().cloned());
        let reply: Vec<Value> = self
            .with_conn(ch, move |_, conn| {
                Box::pin(async move { script::eval(conn, &UPDATE, &keys, &args).await })
            })
            .await?;
        Ok(Outcome {
            next_due: due(reply.first()),
            refused: reply.into_iter().skip(1).filter_map(text).collect(),
            missing: false,
        })
    }

    /// A node's periodic pass over one channel (see `presence/refresh.lua`).
    pub async fn presence_refresh(
        &self,
        node: &NodePresence,
        ch: &str,
        events: bool,
        has_members: bool,
    ) -> Result<Outcome, PublishError> {
        let keys = channel_keys(self, ch);
        let args = [
            node.node.clone(),
            node_prefix(self, ch),
            ms(node.ttl),
            ms(node.grace),
            self.inner.publish_command().to_owned(),
            self.diff_channel(ch, events),
            ch.to_owned(),
            if has_members { "1" } else { "0" }.to_owned(),
        ];
        let reply: Vec<Value> = self
            .with_conn(ch, move |_, conn| {
                Box::pin(async move { script::eval(conn, &REFRESH, &keys, &args).await })
            })
            .await?;
        Ok(Outcome {
            missing: reply.first().is_some_and(|v| int(v) == 1),
            next_due: due(reply.get(1)),
            refused: Vec::new(),
        })
    }

    /// A node's online entries: `Here` for users with a connection on the node
    /// (also the periodic refresh), `Gone` when the last one went. One script per
    /// Redis holding users.
    pub async fn online_update(
        &self,
        node: &NodePresence,
        ops: &[(String, OnlineOp)],
    ) -> Result<(), PublishError> {
        for (route, idx) in self.by_route(ops.iter().map(|(u, _)| u.as_str())) {
            let keys: Vec<String> = idx
                .iter()
                .flat_map(|&i| {
                    let u = &ops[i].0;
                    [self.keys().online(u), self.keys().last_seen(u)]
                })
                .collect();
            let mut args = vec![node.node.clone(), ms(node.ttl), ms(node.last_seen_ttl)];
            args.extend(idx.iter().map(|&i| {
                match ops[i].1 {
                    OnlineOp::Here => "+",
                    OnlineOp::Gone => "-",
                }
                .to_owned()
            }));
            let _: i64 = self
                .on_route(route, move |_, conn| {
                    Box::pin(async move { script::eval(conn, &ONLINE_UPDATE, &keys, &args).await })
                })
                .await?;
        }
        Ok(())
    }
}
