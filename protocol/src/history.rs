//! Which channels keep history, for how long and how much.
//!
//! Rules are shared by gateways and publishers (both must use the same ones): a rule
//! names a channel pattern (`room:*`, `news`, or `$user:*` for personal channels),
//! a maximum number of entries and a time to live after the last publish. The first
//! matching rule wins. Written as `"<pattern> <max-len> <ttl>"`, e.g.
//! `"room:* 200 1h"`, or `"<pattern> off"` to disable history for a pattern.

use std::time::Duration;

use crate::channel::pattern_matches;

/// The history kept for one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Entries kept (older ones are trimmed).
    pub max_len: u64,
    /// The history expires this long after the last publish.
    pub ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    pattern: String,
    policy: Option<Policy>,
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
                },
                [pattern, len, ttl] => {
                    let max_len: u64 = len.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("rule `{r}`: max length must be a positive integer")
                    })?;
                    Rule {
                        pattern: (*pattern).to_owned(),
                        policy: Some(Policy {
                            max_len,
                            ttl: parse_duration(ttl).map_err(|e| format!("rule `{r}`: {e}"))?,
                        }),
                    }
                }
                _ => {
                    return Err(format!(
                        "rule `{r}`: write `<pattern> <max-len> <ttl>` or `<pattern> off`"
                    ));
                }
            };
            out.push(rule);
        }
        Ok(Self { rules: out })
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
    use super::*;

    #[test]
    fn first_match_wins() {
        let r = HistoryRules::parse(["room:secret off", "room:* 10 1h", "$user:* 5 2d"]).unwrap();
        assert_eq!(r.policy("room:secret"), None);
        assert_eq!(
            r.policy("room:1"),
            Some(Policy {
                max_len: 10,
                ttl: Duration::from_secs(3600)
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
}
