//! Redis key and channel names: the one place that builds them.
//!
//! Every name starts with a configurable namespace (default `tidings`) so several
//! deployments can share one Redis. The gateway and the publisher SDK both call these
//! functions; neither formats a Redis name itself.

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

/// The Redis channel the gateway uses to probe that a subscriber connection still
/// delivers (each node publishes to its own probe channel and expects to hear it).
pub fn probe_channel(namespace: &str, node: &str) -> String {
    format!("{namespace}:probe:{node}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = pubsub_channel("tidings", "$user:alice");
        assert_eq!(c, "tidings:ch:$user:alice");
        assert_eq!(channel_of("tidings", &c), Some("$user:alice"));
        assert_eq!(channel_of("other", &c), None);
        assert_eq!(history_stream("t", "$user:a"), "t:hist:{$user:a}");
        assert_eq!(history_meta("t", "news"), "t:meta:{news}");
        assert_eq!(idempotency("t", "news", "k1"), "t:idem:{news}:k1");
    }
}
