//! Presence: who is subscribed to a channel, across every node, and whether a user
//! is connected anywhere (docs/protocol.md section 15).
//!
//! Channels have presence when a rule enables it (`--presence`), written like
//! history rules as `"<pattern> [events] [max=<members>]"` or `"<pattern> off"`;
//! the first matching rule wins, and channels without one pay nothing. A member is
//! one connection (`client`, unique across nodes) of a user, with the public `info`
//! of its token. Join and leave events (`presence_diff` frames, opt-in with
//! `events`) are per *user*: a user joins when their first connection subscribes
//! and leaves when the last one has been gone for the grace period, so a reconnect
//! (to any node) within it shows neither.
//!
//! Between nodes the diff travels as a publication on the channel with the reserved
//! event [`DIFF_EVENT`] (publishers cannot use `$` in event names); the gateway
//! turns it into a `presence_diff` frame.

use serde::{Deserialize, Serialize};

use crate::channel::pattern_matches;

/// The event name of a presence diff travelling as a publication.
pub const DIFF_EVENT: &str = "$presence";

/// Members a channel's presence holds unless its rule says otherwise.
pub const DEFAULT_MAX_MEMBERS: u32 = 10_000;
/// Members one `presence` page lists unless the request asks for fewer.
pub const DEFAULT_PAGE: u32 = 100;
/// The most members one `presence` page lists.
pub const MAX_PAGE: u32 = 1_000;
/// Largest `info` claim (JSON text bytes) a token may carry into presence.
pub const MAX_INFO_BYTES: usize = 1_024;
/// Users one online-status query may name.
pub const MAX_ONLINE_QUERY: usize = 1_000;
/// Longest cursor a `presence` request may carry (a client id).
pub const MAX_CURSOR_BYTES: usize = 256;

/// The presence of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Join and leave events go to the channel's subscribers.
    pub events: bool,
    /// Most members the channel's presence holds; beyond it a subscriber is not
    /// listed (the subscription itself works).
    pub max_members: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    pattern: String,
    policy: Option<Policy>,
}

/// An ordered list of presence rules; none by default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceRules {
    rules: Vec<Rule>,
}

impl PresenceRules {
    /// Parses rules written as `"<pattern> [events] [max=<n>]"` or `"<pattern> off"`.
    pub fn parse<I, S>(rules: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for r in rules {
            let r = r.as_ref().trim();
            let mut parts = r.split_whitespace();
            let Some(pattern) = parts.next() else {
                continue;
            };
            let rest: Vec<&str> = parts.collect();
            let policy = if rest == ["off"] {
                None
            } else {
                let mut p = Policy {
                    events: false,
                    max_members: DEFAULT_MAX_MEMBERS,
                };
                for opt in rest {
                    match opt {
                        "events" => p.events = true,
                        _ => {
                            let n = opt
                                .strip_prefix("max=")
                                .and_then(|n| n.parse::<u32>().ok())
                                .filter(|n| *n > 0)
                                .ok_or_else(|| {
                                    format!(
                                        "rule `{r}`: write `<pattern> [events] [max=<members>]` or `<pattern> off` (`{opt}` is neither)"
                                    )
                                })?;
                            p.max_members = n;
                        }
                    }
                }
                Some(p)
            };
            out.push(Rule {
                pattern: pattern.to_owned(),
                policy,
            });
        }
        Ok(Self { rules: out })
    }

    /// The presence of a channel, `None` when it has none.
    pub fn policy(&self, channel: &str) -> Option<Policy> {
        self.rules
            .iter()
            .find(|r| pattern_matches(&r.pattern, channel))
            .and_then(|r| r.policy)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.iter().all(|r| r.policy.is_none())
    }
}

/// The presence client id of a connection: the node's id and the connection's
/// session, unique across nodes.
pub fn client_id(node: &str, session: u64) -> String {
    format!("{node}/{session:016x}")
}

/// One member of a channel's presence: a connection of a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub user: String,
    pub client: String,
    /// The token's `info` claim, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// A user who joined, with the `info` of the connection that made them present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
}

/// A user who left (their last connection has been gone for the grace period).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    pub user: String,
}

/// Joins and leaves of one channel, in the order they happened (a user appears at
/// most once in one diff).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PresenceDiff {
    #[serde(default)]
    pub joins: Vec<Joined>,
    #[serde(default)]
    pub leaves: Vec<Left>,
}

/// A user's online status: online while one of their connections is open on any
/// node; `last_seen` (ms since the Unix epoch) when they were last connected, if
/// known (kept for `--presence-last-seen-ttl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserStatus {
    pub user: String,
    pub online: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_first_match_wins() {
        let r = PresenceRules::parse(["room:secret off", "room:* events max=50", "lobby"]).unwrap();
        assert_eq!(r.policy("room:secret"), None);
        assert_eq!(
            r.policy("room:1"),
            Some(Policy {
                events: true,
                max_members: 50
            })
        );
        assert_eq!(
            r.policy("lobby"),
            Some(Policy {
                events: false,
                max_members: DEFAULT_MAX_MEMBERS
            })
        );
        assert_eq!(r.policy("news"), None);
        assert!(PresenceRules::default().is_empty());
        assert!(!r.is_empty());
        for bad in ["room:* max=0", "room:* max=x", "room:* loud"] {
            let e = PresenceRules::parse([bad]).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn diffs_read_with_missing_parts() {
        let d: PresenceDiff = serde_json::from_str(r#"{"joins":[{"user":"a"}]}"#).unwrap();
        assert_eq!(d.joins[0].user, "a");
        assert!(d.leaves.is_empty());
        assert_eq!(client_id("n1", 255), "n1/00000000000000ff");
    }
}
