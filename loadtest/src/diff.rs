//! Reading `presence_diff` frames (joins and leaves of a channel with presence
//! events): every load client counts them cheaply (frames and bytes, recognised by
//! their first bytes, not parsed), a sample of subscribers parses each one and
//! checks it against what it saw before (a join of a user already present, or a
//! leave of one who is not, is inconsistent).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// How every `presence_diff` JSON frame starts (the gateway writes `type` first).
pub const PREFIX: &str = r#"{"type":"presence_diff""#;

/// Whether a text frame is a `presence_diff`.
pub fn is_diff(text: &str) -> bool {
    text.starts_with(PREFIX)
}

#[derive(Deserialize)]
struct UserRef {
    user: String,
}

#[derive(Deserialize)]
struct Frame {
    #[serde(default)]
    joins: Vec<UserRef>,
    #[serde(default)]
    leaves: Vec<UserRef>,
}

/// The users a `presence_diff` frame announces: (joined, left); `None` when it is
/// not a readable diff.
pub fn parse(text: &str) -> Option<(Vec<String>, Vec<String>)> {
    let f: Frame = serde_json::from_str(text).ok()?;
    Some((
        f.joins.into_iter().map(|u| u.user).collect(),
        f.leaves.into_iter().map(|u| u.user).collect(),
    ))
}

/// The load client index of a load user id (`lt-<idx>`).
pub fn user_index(user: &str) -> Option<usize> {
    user.strip_prefix("lt-")?.parse().ok()
}

/// Presence diffs received, summed over clients: every client counts frames and
/// bytes; sample clients also count the users announced, split into the channel's
/// steady members (load clients below the group's `total`) and the others (the
/// presence scenario's churn users).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    pub frames: u64,
    pub bytes: u64,
    /// Frames parsed by sample clients.
    pub sample_frames: u64,
    pub member_joins: u64,
    pub member_leaves: u64,
    pub other_joins: u64,
    pub other_leaves: u64,
    /// Joins of users already present and leaves of users not present, as the
    /// sample client had seen them (should be 0).
    pub inconsistent: u64,
    /// Frames a sample client could not parse.
    pub unreadable: u64,
}

impl Seen {
    pub fn add(&mut self, o: &Seen) {
        self.frames += o.frames;
        self.bytes += o.bytes;
        self.sample_frames += o.sample_frames;
        self.member_joins += o.member_joins;
        self.member_leaves += o.member_leaves;
        self.other_joins += o.other_joins;
        self.other_leaves += o.other_leaves;
        self.inconsistent += o.inconsistent;
        self.unreadable += o.unreadable;
    }
}

/// What one sample client knows of a channel's presence from its diffs.
#[derive(Debug, Default)]
pub struct Sample {
    /// Load clients below this index are steady members.
    pub members: usize,
    present: HashSet<String>,
    pub seen: Seen,
}

impl Sample {
    pub fn new(members: usize) -> Self {
        Sample {
            members,
            ..Sample::default()
        }
    }

    /// Counts one diff frame (its text); returns what it announced.
    pub fn on_frame(&mut self, text: &str) -> Seen {
        let mut d = Seen {
            sample_frames: 1,
            ..Seen::default()
        };
        let Some((joins, leaves)) = parse(text) else {
            d.unreadable = 1;
            self.seen.add(&d);
            return d;
        };
        for u in joins {
            let member = user_index(&u).is_some_and(|i| i < self.members);
            if member {
                d.member_joins += 1;
            } else {
                d.other_joins += 1;
            }
            if !self.present.insert(u) {
                d.inconsistent += 1;
            }
        }
        for u in leaves {
            let member = user_index(&u).is_some_and(|i| i < self.members);
            if member {
                d.member_leaves += 1;
            } else {
                d.other_leaves += 1;
            }
            if !self.present.remove(&u) {
                d.inconsistent += 1;
            }
        }
        self.seen.add(&d);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_are_recognised_and_counted() {
        let f = r#"{"type":"presence_diff","channel":"c","joins":[{"user":"lt-3"},{"user":"lt-12","info":{"a":1}}],"leaves":[]}"#;
        assert!(is_diff(f));
        assert!(!is_diff(r#"{"type":"message"}"#));
        let mut s = Sample::new(10);
        let d = s.on_frame(f);
        assert_eq!((d.member_joins, d.other_joins, d.inconsistent), (1, 1, 0));
        let again = s.on_frame(
            r#"{"type":"presence_diff","channel":"c","joins":[{"user":"lt-12"}],"leaves":[{"user":"lt-12"},{"user":"lt-99"}]}"#,
        );
        // lt-12 joined twice (inconsistent), then left; lt-99 was never there.
        assert_eq!(again.other_joins, 1);
        assert_eq!(again.other_leaves, 2);
        assert_eq!(again.inconsistent, 2);
        assert_eq!(s.seen.sample_frames, 2);
        assert_eq!(s.on_frame("{").unreadable, 1);
        assert_eq!(user_index("lt-42"), Some(42));
        assert_eq!(user_index("alice"), None);
    }
}
