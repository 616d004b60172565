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
    }
}
