//! Which channels keep history, for how long and how much.
//!
//! Rules are shared by gateways and publishers (both must use the same ones): a rule
//! names a channel pattern (`room:*`, `news`, or `$user:*` for personal channels),
//! a maximum number of entries and a time to live after the last publish. The first
//! matching rule wins. Written as `"<pattern> <max-len> <ttl> [<max-channels>]"`,
//! e.g. `"room:* 200 1h"` or `"room:* 200 1h 5000"`, or `"<pattern> off"` to disable
//! history for a pattern. `max-channels` is the rule's budget: how many of its
//! channels may hold history at once (a client with publish rights on a wildcard
//! could otherwise create histories without end); without it the deployment's
//! default applies (see [`HistoryRules::with_default_budget`]), and `0` means none.

use std::time::Duration;

use crate::channel::pattern_matches;

/// A position in a channel's history: an offset within an epoch (offsets start
/// again in a new epoch, so an offset means nothing without its epoch). The
/// acknowledged position of a personal channel is stored as `<epoch>:<offset>`
/// (written by the SDK's ack script).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub epoch: String,
    pub offset: u64,
}

impl StreamPosition {
    /// Reads a stored position (`<epoch>:<offset>`; the epoch may contain `:`).
    pub fn parse_stored(s: &str) -> Option<Self> {
        let (epoch, offset) = s.rsplit_once(':')?;
        Some(Self {
            epoch: epoch.to_owned(),
            offset: offset.parse().ok()?,
        })
    }
}

impl std::fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// The history kept for one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Entries kept (older ones are trimmed).
    pub max_len: u64,
    /// The history expires this long after the last publish.
    pub ttl: Duration,
    /// How many channels of the rule may hold history at once (0: no budget).
    pub max_channels: u64,
    /// Which rule this is (its index), to count its channels together.
    pub rule: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    pattern: String,
    policy: Option<Policy>,
    /// The budget was written in the rule (not the deployment's default).
    own_budget: bool,
}

/// An ordered list of history rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRules {
    rules: Vec<Rule>,
}

/// The default: personal channels keep their last 100 notifications for a day;
/// other channels keep none.
pub const DEFAULT_RULE: &str = "$user:* 100 24h";

impl Default for HistoryRules {
    fn default() -> Self {
        Self::parse([DEFAULT_RULE]).unwrap_or(Self { rules: Vec::new() })
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 30m, 24h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{s}` is not a duration like 90s, 30m, 24h or 7d")),
    };
    if secs == 0 {
        return Err("a history ttl must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

impl HistoryRules {
    /// No channel keeps history.
    pub fn none() -> Self {
        Self { rules: Vec::new() }
    }

    /// Parses rules written as `"<pattern> <max-len> <ttl>"` or `"<pattern> off"`.
    pub fn parse<I, S>(rules: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for r in rules {
            let r = r.as_ref().trim();
            let parts: Vec<&str> = r.split_whitespace().collect();
            let rule = match parts.as_slice() {
                [pattern, "off"] => Rule {
                    pattern: (*pattern).to_owned(),
                    policy: None,
                    own_budget: false,
                },
                [pattern, len, ttl, budget @ ..] if budget.len() <= 1 => {
                    let max_len: u64 = len.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("rule `{r}`: max length must be a positive integer")
                    })?;
                    let max_channels = match budget.first() {
                        Some(b) => b.parse::<u64>().map_err(|_| {
                            format!("rule `{r}`: max channels must be a number (0: no budget)")
                        })?,
                        None => 0,
                    };
                    let rule = u16::try_from(out.len())
                        .map_err(|_| "more than 65,535 history rules".to_string())?;
                    Rule {
                        pattern: (*pattern).to_owned(),
                        policy: Some(Policy {
                            max_len,
                            ttl: parse_duration(ttl).map_err(|e| format!("rule `{r}`: {e}"))?,
                            max_channels,
                            rule,
                        }),
                        own_budget: !budget.is_empty(),
                    }
                }
                _ => {
                    return Err(format!(
                        "rule `{r}`: write `<pattern> <max-len> <ttl> [<max-channels>]` or `<pattern> off`"
                    ));
                }
            };
            out.push(rule);
        }
        Ok(Self { rules: out })
    }

    /// Gives every rule without a budget of its own `max_channels`, except the
    /// personal channels' rule (`$user:*`): personal channels are written by
    /// backends only, and there are as many as there are users.
    pub fn with_default_budget(mut self, max_channels: u64) -> Self {
        for r in &mut self.rules {
            if let Some(p) = &mut r.policy
                && !r.own_budget
                && !r.pattern.starts_with(crate::channel::USER_PREFIX)
            {
                p.max_channels = max_channels;
            }
        }
        self
    }

    /// The pattern of rule `rule` (its index), for names and messages.
    pub fn pattern(&self, rule: u16) -> Option<&str> {
        self.rules
            .get(usize::from(rule))
            .map(|r| r.pattern.as_str())
    }

    /// The policy of a channel, `None` when it keeps no history.
    pub fn policy(&self, channel: &str) -> Option<Policy> {
        self.rules
            .iter()
            .find(|r| pattern_matches(&r.pattern, channel))
            .and_then(|r| r.policy)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn stored_positions_round_trip() {
        let p = StreamPosition {
            epoch: "a:b".into(),
            offset: 7,
        };
        assert_eq!(StreamPosition::parse_stored(&p.to_string()), Some(p));
        assert_eq!(StreamPosition::parse_stored("e:x"), None);
        assert_eq!(StreamPosition::parse_stored("7"), None);
    }

    use super::*;

    #[test]
    fn first_match_wins() {
        let r = HistoryRules::parse(["room:secret off", "room:* 10 1h", "$user:* 5 2d"]).unwrap();
        assert_eq!(r.policy("room:secret"), None);
        assert_eq!(
            r.policy("room:1"),
            Some(Policy {
                max_len: 10,
                ttl: Duration::from_secs(3600),
                max_channels: 0,
                rule: 1,
            })
        );
        assert_eq!(
            r.policy("$user:alice").unwrap().ttl,
            Duration::from_secs(172_800)
        );
        assert_eq!(r.policy("news"), None);
        assert_eq!(
            HistoryRules::default().policy("$user:a").unwrap().max_len,
            100
        );
        assert_eq!(HistoryRules::default().policy("news"), None);
        assert!(HistoryRules::parse(["room:* 0 1h"]).is_err());
        assert!(HistoryRules::parse(["room:* 10 1y"]).is_err());
        assert!(HistoryRules::parse(["room:*"]).is_err());
    }

    #[test]
    fn budgets_per_rule_with_a_default_that_spares_personal_channels() {
        let r = HistoryRules::parse(["room:* 10 1h 500", "chat:* 10 1h", "$user:* 5 2d"])
            .unwrap()
            .with_default_budget(1000);
        assert_eq!(r.policy("room:1").unwrap().max_channels, 500);
        assert_eq!(r.policy("chat:1").unwrap().max_channels, 1000);
        assert_eq!(r.policy("$user:a").unwrap().max_channels, 0);
        assert_eq!(r.policy("chat:1").unwrap().rule, 1);
        assert_eq!(r.pattern(1), Some("chat:*"));
        let own = HistoryRules::parse(["$user:* 5 2d 10"])
            .unwrap()
            .with_default_budget(1000);
        assert_eq!(own.policy("$user:a").unwrap().max_channels, 10);
        assert!(HistoryRules::parse(["room:* 10 1h x"]).is_err());
        assert!(HistoryRules::parse(["room:* 10 1h 5 6"]).is_err());
    }
}
