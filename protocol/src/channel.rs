//! Channel names as clients see them, and the rules they follow.
//!
//! Public channels are 1..=128 bytes of `A-Z a-z 0-9 _ - . : / @ =` and may not start
//! with `$`. Names starting with `$` are reserved for server-made channels: each user's
//! personal channel `$user:<id>` and the broadcast channel `$broadcast`. Rights in JWT
//! claims are exact names or prefixes ending in `*` (`room:*`; `*` alone is every
//! public channel).

use crate::ProtocolError;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 128;
/// Longest user id (JWT `sub`) accepted, in bytes.
pub const MAX_USER_LEN: usize = 128;
/// The channel every connection is subscribed to and `broadcast` publishes on.
pub const BROADCAST: &str = "$broadcast";
/// Prefix of personal channels; the user id follows.
pub const USER_PREFIX: &str = "$user:";

fn channel_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/' | b'@' | b'=')
}

fn user_char(b: u8) -> bool {
    channel_char(b) || matches!(b, b'|' | b'+')
}

/// Checks a public channel name (one a client may subscribe or publish to).
pub fn validate(name: &str) -> Result<(), ProtocolError> {
    if name.is_empty() {
        return Err(ProtocolError::InvalidChannel("empty name".into()));
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ProtocolError::InvalidChannel(format!(
            "longer than {MAX_CHANNEL_LEN} bytes"
        )));
    }
    if !name.bytes().all(channel_char) {
        return Err(ProtocolError::InvalidChannel(
            "allowed characters are A-Z a-z 0-9 _ - . : / @ =".into(),
        ));
    }
    Ok(())
}

/// Checks a user id (the JWT `sub`): like channel names, plus `|` and `+`.
pub fn validate_user(user: &str) -> Result<(), ProtocolError> {
    if user.is_empty() || user.len() > MAX_USER_LEN {
        return Err(ProtocolError::InvalidUser(format!(
            "must be 1..={MAX_USER_LEN} bytes"
        )));
    }
    if !user.bytes().all(user_char) {
        return Err(ProtocolError::InvalidUser(
            "allowed characters are A-Z a-z 0-9 _ - . : / @ = | +".into(),
        ));
    }
    Ok(())
}

/// The personal channel of a user: `$user:<id>`.
pub fn personal(user: &str) -> String {
    let mut s = String::with_capacity(USER_PREFIX.len() + user.len());
    s.push_str(USER_PREFIX);
    s.push_str(user);
    s
}

/// The user a personal channel belongs to, if `name` is one.
pub fn personal_owner(name: &str) -> Option<&str> {
    name.strip_prefix(USER_PREFIX)
}

/// Whether a claimed right (`news`, `room:*`, `*`) covers a channel name.
pub fn pattern_matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

/// Whether any of the claimed rights covers the channel.
pub fn allowed<S: AsRef<str>>(rights: &[S], channel: &str) -> bool {
    rights.iter().any(|p| pattern_matches(p.as_ref(), channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate("news").is_ok());
        assert!(validate("room:42/general@eu=1").is_ok());
        assert!(validate("").is_err());
        assert!(validate("$broadcast").is_err());
        assert!(validate("a b").is_err());
        assert!(validate("caf\u{e9}").is_err());
        assert!(validate("room:*").is_err());
        assert!(validate(&"a".repeat(128)).is_ok());
        assert!(validate(&"a".repeat(129)).is_err());
    }

    #[test]
    fn users() {
        assert!(validate_user("auth0|123").is_ok());
        assert!(validate_user("a+b@example.com").is_ok());
        assert!(validate_user("").is_err());
        assert!(validate_user("a b").is_err());
        assert_eq!(personal("alice"), "$user:alice");
        assert_eq!(personal_owner("$user:alice"), Some("alice"));
        assert_eq!(personal_owner("news"), None);
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("room:*", "room:1"));
        assert!(!pattern_matches("room:*", "rooms"));
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("news", "news"));
        assert!(!pattern_matches("news", "news2"));
        assert!(allowed(&["a", "b:*"], "b:c"));
        assert!(!allowed::<&str>(&[], "b"));
    }
}
