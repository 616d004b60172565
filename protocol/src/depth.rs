//! How deeply input nests, measured before anything decodes it.
//!
//! Decoders recurse once per level of nesting, so a small frame of a thousand nested
//! arrays costs a thread's stack (rmp-serde allows 1024 levels: enough to overflow a
//! tokio worker's stack in a debug build) and a payload deeper than serde_json's
//! limit of 128 cannot be re-encoded for MessagePack subscribers. Every entry point
//! (client frames in both encodings, the Redis envelope, payloads built by the HTTP
//! API or the SDK) checks its input with these scanners first: they walk the bytes
//! once, without recursion or allocation.

/// The deepest nesting a payload may have (arrays and objects/maps). Every payload
/// within it can be delivered in both encodings.
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// The deepest nesting a whole frame or envelope may have: its own structure (the
/// frame object, a field's object) around a payload of [`MAX_PAYLOAD_DEPTH`].
pub const MAX_FRAME_DEPTH: usize = MAX_PAYLOAD_DEPTH + 2;

/// Whether JSON text nests no deeper than `max`. Malformed text is not judged here
/// (the decoder reports it); only brackets outside strings count.
pub fn json_within(text: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Whether MessagePack bytes nest no deeper than `max`. Truncated or malformed
/// input is not judged here (the decoder reports it): the walk stops where the
/// bytes end or stop making sense.
pub fn msgpack_within(bytes: &[u8], max: usize) -> bool {
    // Elements still expected at each open level (a map's count is doubled).
    let mut open: Vec<u64> = Vec::new();
    let mut pos = 0usize;
    // Values still expected at the top level: the walk judges every value in the
    // input, so trailing values cannot hide deep nesting either.
    while pos < bytes.len() {
        let Some((header, children)) = head(&bytes[pos..]) else {
            return true;
        };
        pos = match pos.checked_add(header) {
            Some(p) if p <= bytes.len() => p,
            _ => return true,
        };
        // This value fills one slot of the innermost open container.
        while let Some(left) = open.last_mut() {
            if *left > 0 {
                *left -= 1;
                break;
            }
            open.pop();
        }
        if let Some(n) = children {
            if n > 0 {
                if open.len() >= max {
                    return false;
                }
                open.push(n);
            } else if open.len() >= max {
                // An empty container still opens a level.
                return false;
            }
        }
        // Close levels whose elements have all been seen.
        while open.last() == Some(&0) {
            open.pop();
        }
    }
    true
}

fn be(bytes: &[u8], n: usize) -> Option<u64> {
    let b = bytes.get(1..1 + n)?;
    Some(b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
}

/// The length of a value's header plus any inline data, and for a container the
/// number of child values that follow; `None` when the bytes end early or the
/// marker is invalid.
fn head(bytes: &[u8]) -> Option<(usize, Option<u64>)> {
    let m = *bytes.first()?;
    let data = |len: u64, header: usize| -> Option<(usize, Option<u64>)> {
        let len = usize::try_from(len).ok()?;
        Some((header.checked_add(len)?, None))
    };
    match m {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some((1, None)),
        0x80..=0x8f => Some((1, Some(u64::from(m & 0x0f) * 2))),
        0x90..=0x9f => Some((1, Some(u64::from(m & 0x0f)))),
        0xa0..=0xbf => data(u64::from(m & 0x1f), 1),
        0xc4 | 0xd9 => data(be(bytes, 1)?, 2),
        0xc5 | 0xda => data(be(bytes, 2)?, 3),
        0xc6 | 0xdb => data(be(bytes, 4)?, 5),
        0xc7 => data(be(bytes, 1)? + 1, 2),
        0xc8 => data(be(bytes, 2)? + 1, 3),
        0xc9 => data(be(bytes, 4)? + 1, 5),
        0xca => Some((5, None)),
        0xcb => Some((9, None)),
        0xcc | 0xd0 => Some((2, None)),
        0xcd | 0xd1 => Some((3, None)),
        0xce | 0xd2 => Some((5, None)),
        0xcf | 0xd3 => Some((9, None)),
        0xd4 => Some((3, None)),
        0xd5 => Some((4, None)),
        0xd6 => Some((6, None)),
        0xd7 => Some((10, None)),
        0xd8 => Some((18, None)),
        0xdc => Some((3, Some(be(bytes, 2)?))),
        0xdd => Some((5, Some(be(bytes, 4)?))),
        0xde => Some((3, Some(be(bytes, 2)? * 2))),
        0xdf => Some((5, Some(be(bytes, 4)? * 2))),
        // 0xc1 is never used.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_json(n: usize) -> String {
        format!("{}1{}", "[".repeat(n), "]".repeat(n))
    }

    fn nested_msgpack(n: usize) -> Vec<u8> {
        let mut v = vec![0x91u8; n];
        v.push(0x01);
        v
    }

    #[test]
    fn json_depth_counts_brackets_outside_strings() {
        assert!(json_within(nested_json(64).as_bytes(), 64));
        assert!(!json_within(nested_json(65).as_bytes(), 64));
        assert!(json_within(br#"{"a":"[[[[[[","b":{"c":[1,2]}}"#, 3));
        assert!(!json_within(br#"{"a":"[[[[[[","b":{"c":[1,2]}}"#, 2));
        // An escaped quote does not end the string; an escaped backslash does not
        // escape the quote after it.
        assert!(json_within(br#"{"a":"\"[[","b":1}"#, 1));
        assert!(!json_within(br#"{"a":"\\",[[1]]}"#, 2));
        assert!(json_within(b"", 0));
    }

    #[test]
    fn msgpack_depth_matches_what_rmp_decodes() {
        assert!(msgpack_within(&nested_msgpack(64), 64));
        assert!(!msgpack_within(&nested_msgpack(65), 64));
        assert!(!msgpack_within(&nested_msgpack(1000), 64));
        // Siblings do not add up: {"a": [[1]], "b": [[2]]} is 3 deep.
        let v = serde_json::json!({"a": [[1]], "b": [[2]], "c": "x", "d": {}});
        let bytes = rmp_serde::to_vec(&v).unwrap();
        assert!(msgpack_within(&bytes, 3));
        assert!(!msgpack_within(&bytes, 2));
        // Empty containers open a level too.
        let bytes = rmp_serde::to_vec(&serde_json::json!([[[]]])).unwrap();
        assert!(msgpack_within(&bytes, 3));
        assert!(!msgpack_within(&bytes, 2));
        // A huge announced count with nothing behind it ends the walk.
        assert!(msgpack_within(&[0xdd, 0xff, 0xff, 0xff, 0xff], 1));
        // Every marker kind is stepped over.
        let v =
            serde_json::json!([1, -1, 300, -300, 70000, 1.5, "s", true, null, {"k": [u64::MAX]}]);
        let bytes = rmp_serde::to_vec(&v).unwrap();
        assert!(msgpack_within(&bytes, 3));
        assert!(!msgpack_within(&bytes, 2));
    }
}
