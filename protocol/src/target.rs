//! Who a notification is for, and the checks every publisher applies before
//! anything reaches Redis: one home for the rules the publisher SDK and the
//! gateway's HTTP API share (target resolution, message ids).

use crate::ProtocolError;
use crate::channel::{self, BROADCAST};

/// Longest message id (`msg_id`, also the idempotency key), in bytes.
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// The recipients of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Users, each on their personal channel (every device of theirs).
    Users(Vec<String>),
    /// Public channels.
    Channels(Vec<String>),
    /// Everyone connected.
    Broadcast,
}

impl Target {
    /// The channels to publish to: each name checked, users mapped to their
    /// personal channels, repeats dropped (keeping the first, so nobody gets the
    /// notification twice). An empty list is refused.
    pub fn channels(&self) -> Result<Vec<String>, ProtocolError> {
        let out: Vec<String> = match self {
            Target::Users(users) => users
                .iter()
                .map(|u| {
                    channel::validate_user(u)
                        .map(|()| channel::personal(u))
                        .map_err(|e| ProtocolError::InvalidUser(format!("`{u}`: {e}")))
                })
                .collect::<Result<_, _>>()?,
            Target::Channels(chs) => chs
                .iter()
                .map(|c| {
                    channel::validate(c)
                        .map(|()| c.clone())
                        .map_err(|e| ProtocolError::InvalidChannel(format!("`{c}`: {e}")))
                })
                .collect::<Result<_, _>>()?,
            Target::Broadcast => vec![BROADCAST.to_owned()],
        };
        if out.is_empty() {
            return Err(ProtocolError::InvalidChannel("no target given".into()));
        }
        let mut seen = std::collections::HashSet::new();
        Ok(out.into_iter().filter(|c| seen.insert(c.clone())).collect())
    }

    /// How many targets were named (before repeats are dropped).
    pub fn len(&self) -> usize {
        match self {
            Target::Users(v) | Target::Channels(v) => v.len(),
            Target::Broadcast => 1,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A message id must be 1 to [`MAX_MESSAGE_ID_BYTES`] bytes.
pub fn validate_message_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_MESSAGE_ID_BYTES {
        Err(format!("id must be 1..={MAX_MESSAGE_ID_BYTES} bytes"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve_to_channels_once_each() {
        let t = Target::Users(vec!["a".into(), "b".into(), "a".into()]);
        assert_eq!(t.channels().unwrap(), ["$user:a", "$user:b"]);
        assert_eq!(Target::Broadcast.channels().unwrap(), [BROADCAST]);
        assert!(Target::Users(vec![]).channels().is_err());
        assert!(
            Target::Channels(vec!["bad name".into()])
                .channels()
                .is_err()
        );
        assert!(Target::Users(vec!["".into()]).channels().is_err());
        assert!(validate_message_id("").is_err());
        assert!(validate_message_id(&"x".repeat(129)).is_err());
        assert!(validate_message_id(&"x".repeat(128)).is_ok());
    }
}
