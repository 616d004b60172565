//! Redis key and channel names: the one place that builds them.
//!
//! Every name starts with a configurable namespace (default `tidings`) so several
//! deployments can share one Redis. The gateway and the publisher SDK both call these
//! functions (directly, or through a [`KeySpace`] that also knows the deployment's
//! Redis layout); neither formats a Redis name itself.

use crate::topology::Partitions;

/// Default namespace for Redis names.
pub const DEFAULT_NAMESPACE: &str = "tidings";

/// The Redis pub/sub channel that carries publications for a client-visible channel
/// (personal `$user:<id>`, `$broadcast`, or a public channel).
pub fn pubsub_channel(namespace: &str, channel: &str) -> String {
    let mut s = String::with_capacity(namespace.len() + 4 + channel.len());
    s.push_str(namespace);
    s.push_str(":ch:");
    s.push_str(channel);
    s
}

/// The client-visible channel for a Redis pub/sub channel name, if it is one of ours.
pub fn channel_of<'a>(namespace: &str, pubsub: &'a str) -> Option<&'a str> {
    pubsub.strip_prefix(namespace)?.strip_prefix(":ch:")
}

/// Keys of one channel's history share the hash tag `{<channel>}`, so they live in
/// one Redis Cluster slot and one Lua script may touch them all.
fn tagged(namespace: &str, kind: &str, channel: &str) -> String {
    let mut s = String::with_capacity(namespace.len() + kind.len() + channel.len() + 4);
    s.push_str(namespace);
    s.push(':');
    s.push_str(kind);
    s.push_str(":{");
    s.push_str(channel);
    s.push('}');
    s
}

/// The Redis Stream holding a channel's history (entry ids are `<offset>-0`).
pub fn history_stream(namespace: &str, channel: &str) -> String {
    tagged(namespace, "hist", channel)
}

/// Hash with the history's `epoch` and last `seq` (offset) of a channel.
pub fn history_meta(namespace: &str, channel: &str) -> String {
    tagged(namespace, "meta", channel)
}

/// The acknowledged read position (`<epoch>:<offset>`) of a personal channel,
/// shared by all of the user's devices.
pub fn ack_position(namespace: &str, channel: &str) -> String {
    tagged(namespace, "ack", channel)
}

/// Marker of an idempotency key already published on a channel.
pub fn idempotency(namespace: &str, channel: &str, key: &str) -> String {
    let mut s = tagged(namespace, "idem", channel);
    s.push(':');
    s.push_str(key);
    s
}

/// The parts of one channel's presence (all in the channel's slot): `members`
/// (hash client -> member JSON), `index` (sorted set of clients, all scores 0, for
/// paging in client order), `users` (hash user -> connections present), `leaving`
/// (sorted set user -> when their leave is due), `nodes` (sorted set node ->
/// expiry of its entries) and, per node, `node:<id>` (hash client -> user: what
/// to remove when the node's entries expire).
pub fn presence(namespace: &str, channel: &str, part: &str) -> String {
    let mut s = tagged(namespace, "pres", channel);
    s.push(':');
    s.push_str(part);
    s
}

/// A user's online status: a sorted set node -> expiry of the node's entry (the
/// node has a connection of the user), in the slot of the personal channel.
pub fn online(namespace: &str, personal: &str) -> String {
    tagged(namespace, "online", personal)
}

/// When a user was last connected (ms since the Unix epoch), in the slot of the
/// personal channel.
pub fn last_seen(namespace: &str, personal: &str) -> String {
    tagged(namespace, "seen", personal)
}

/// The Redis channel the gateway uses to probe that a subscriber connection still
/// delivers (each node publishes to its own probe channel and expects to hear it).
pub fn probe_channel(namespace: &str, node: &str) -> String {
    format!("{namespace}:probe:{node}")
}

/// The Redis names of one deployment. On one Redis or several independent ones
/// ([`KeySpace::new`]) the names are exactly those of the free functions above. In a
/// Redis Cluster ([`KeySpace::cluster`]) every name of a channel starts with its
/// partition's hash tag, `<ns>:{<tag>}:`, followed by the usual name without the
/// namespace (`<ns>:{<tag>}:hist:{<channel>}`, `<ns>:{<tag>}:ch:<channel>`), so the
/// shard pub/sub channel and all keys of a channel share one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    namespace: String,
    partitions: Option<Partitions>,
}

impl KeySpace {
    /// Names for one Redis or several independent ones.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            partitions: None,
        }
    }

    /// Names for a Redis Cluster with these partitions. The namespace must not hold
    /// `{` or `}` (it would become the hash tag).
    pub fn cluster(namespace: impl Into<String>, partitions: Partitions) -> Result<Self, String> {
        let namespace = namespace.into();
        if namespace.contains(['{', '}']) {
            return Err("must not contain `{` or `}` in cluster mode".into());
        }
        Ok(Self {
            namespace,
            partitions: Some(partitions),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The cluster partitions, if this is a cluster deployment.
    pub fn partitions(&self) -> Option<&Partitions> {
        self.partitions.as_ref()
    }

    /// The partition of a channel (cluster mode), else 0.
    pub fn partition_of(&self, channel: &str) -> usize {
        self.partitions.as_ref().map_or(0, |p| p.of(channel))
    }

    /// `<ns>:` or, in a cluster, `<ns>:{<tag of partition>}:`.
    fn prefix(&self, partition: Option<usize>) -> String {
        match (&self.partitions, partition) {
            (Some(p), Some(i)) => format!("{}:{{{}}}:", self.namespace, p.tag(i)),
            _ => format!("{}:", self.namespace),
        }
    }

    fn of(&self, channel: &str) -> Option<usize> {
        self.partitions.as_ref().map(|p| p.of(channel))
    }

    /// The classic name built by `build(namespace)`; in a cluster the same name built
    /// without namespace, behind the channel's tagged prefix.
    fn name(&self, channel: &str, build: impl Fn(&str) -> String) -> String {
        match self.of(channel) {
            None => build(&self.namespace),
            Some(i) => {
                let classic = build("");
                let mut s = self.prefix(Some(i));
                s.push_str(classic.strip_prefix(':').unwrap_or(&classic));
                s
            }
        }
    }

    /// The pub/sub channel (a shard channel in a cluster) of a client-visible channel.
    pub fn pubsub_channel(&self, channel: &str) -> String {
        self.name(channel, |ns| pubsub_channel(ns, channel))
    }

    /// The client-visible channel of a pub/sub channel name, if it is one of ours.
    pub fn channel_of<'a>(&self, pubsub: &'a str) -> Option<&'a str> {
        if self.partitions.is_none() {
            return channel_of(&self.namespace, pubsub);
        }
        let rest = pubsub
            .strip_prefix(self.namespace.as_str())?
            .strip_prefix(":{")?;
        let (_tag, rest) = rest.split_once('}')?;
        rest.strip_prefix(":ch:")
    }

    pub fn history_stream(&self, channel: &str) -> String {
        self.name(channel, |ns| history_stream(ns, channel))
    }

    pub fn history_meta(&self, channel: &str) -> String {
        self.name(channel, |ns| history_meta(ns, channel))
    }

    pub fn ack_position(&self, channel: &str) -> String {
        self.name(channel, |ns| ack_position(ns, channel))
    }

    pub fn idempotency(&self, channel: &str, key: &str) -> String {
        self.name(channel, |ns| idempotency(ns, channel, key))
    }

    /// A part of a channel's presence (see [`presence`]).
    pub fn presence(&self, channel: &str, part: &str) -> String {
        self.name(channel, |ns| presence(ns, channel, part))
    }

    /// A user's online entry (see [`online`]).
    pub fn online(&self, user: &str) -> String {
        let personal = crate::channel::personal(user);
        self.name(&personal, |ns| online(ns, &personal))
    }

    /// When a user was last seen (see [`last_seen`]).
    pub fn last_seen(&self, user: &str) -> String {
        let personal = crate::channel::personal(user);
        self.name(&personal, |ns| last_seen(ns, &personal))
    }

    /// The registry of the channels of history rule `rule` that hold history (a
    /// sorted set: channel -> expiry), which counts them against the rule's budget.
    /// There is one per Redis that holds channels: per instance, or in a cluster per
    /// partition, with the partition's tag so that it shares the slot of the channel
    /// being published (the publish script touches both).
    pub fn history_registry(&self, channel: &str, rule: u16) -> String {
        match self.of(channel) {
            None => format!("{}:histreg:{rule}", self.namespace),
            Some(i) => format!("{}histreg:{rule}", self.prefix(Some(i))),
        }
    }

    /// The probe channel of subscriber connection `conn` of `node`. In a cluster the
    /// connection serves partition `conn`, and its probe carries that partition's tag
    /// so that it travels through the same slot as the partition's channels.
    pub fn probe_channel(&self, node: &str, conn: usize) -> String {
        match &self.partitions {
            None => probe_channel(&self.namespace, &format!("{node}:{conn}")),
            Some(_) => format!("{}probe:{node}:{conn}", self.prefix(Some(conn))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::key_slot;

    #[test]
    fn key_space_names() {
        let k = KeySpace::new("t");
        assert_eq!(k.pubsub_channel("news"), pubsub_channel("t", "news"));
        assert_eq!(k.history_stream("news"), history_stream("t", "news"));
        assert_eq!(k.history_meta("news"), history_meta("t", "news"));
        assert_eq!(k.ack_position("news"), ack_position("t", "news"));
        assert_eq!(
            k.idempotency("news", "a:b"),
            idempotency("t", "news", "a:b")
        );
        assert_eq!(k.probe_channel("n1", 0), "t:probe:n1:0");
        assert_eq!(k.presence("room:1", "users"), "t:pres:{room:1}:users");
        assert_eq!(k.online("bob"), "t:online:{$user:bob}");
        assert_eq!(k.last_seen("bob"), "t:seen:{$user:bob}");
        assert_eq!(k.channel_of("t:ch:news"), Some("news"));

        let parts = Partitions::new(16).unwrap();
        let c = KeySpace::cluster("t", parts.clone()).unwrap();
        let ch = "$user:alice";
        let i = parts.of(ch);
        let tag = parts.tag(i);
        assert_eq!(c.pubsub_channel(ch), format!("t:{{{tag}}}:ch:$user:alice"));
        assert_eq!(
            c.history_stream(ch),
            format!("t:{{{tag}}}:hist:{{$user:alice}}")
        );
        assert_eq!(
            c.history_meta(ch),
            format!("t:{{{tag}}}:meta:{{$user:alice}}")
        );
        assert_eq!(
            c.ack_position(ch),
            format!("t:{{{tag}}}:ack:{{$user:alice}}")
        );
        assert_eq!(
            c.idempotency(ch, "k:1"),
            format!("t:{{{tag}}}:idem:{{$user:alice}}:k:1")
        );
        assert_eq!(c.channel_of(&c.pubsub_channel(ch)), Some(ch));
        assert_eq!(c.channel_of("t:ch:news"), None);
        assert_eq!(c.channel_of("u:{1}:ch:news"), None);
        // Every name of a channel, and its partition's probe, share one slot.
        let slot = parts.slot(i);
        for name in [
            c.pubsub_channel(ch),
            c.history_stream(ch),
            c.history_meta(ch),
            c.ack_position(ch),
            c.idempotency(ch, "x"),
            c.history_registry(ch, 3),
            c.probe_channel("node-1", i),
            c.presence(ch, "members"),
            c.presence(ch, "node:n-1"),
            c.online("alice"),
            c.last_seen("alice"),
        ] {
            assert_eq!(key_slot(name.as_bytes()), slot, "{name}");
        }
        assert!(KeySpace::cluster("a{b", parts).is_err());
    }

    #[test]
    fn round_trip() {
        let c = pubsub_channel("tidings", "$user:alice");
        assert_eq!(c, "tidings:ch:$user:alice");
        assert_eq!(channel_of("tidings", &c), Some("$user:alice"));
        assert_eq!(channel_of("other", &c), None);
        assert_eq!(history_stream("t", "$user:a"), "t:hist:{$user:a}");
        assert_eq!(history_meta("t", "news"), "t:meta:{news}");
        assert_eq!(idempotency("t", "news", "k1"), "t:idem:{news}:k1");
        assert_eq!(
            KeySpace::new("t").history_registry("room:1", 2),
            "t:histreg:2"
        );
    }
}
