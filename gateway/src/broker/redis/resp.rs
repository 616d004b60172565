//! The RESP2 replies a subscriber connection reads: the few reply types Redis
//! sends a client in pub/sub mode (arrays of bulk strings and integers, errors
//! and status lines), parsed from the connection's own buffer without copying the
//! payloads out of it. Writing commands is [`command`].
//!
//! The subscriber owns its socket instead of going through the redis crate so that
//! nothing buffers between Redis and the hub beyond one read buffer: when the hub
//! cannot keep up, the backlog stays in the kernel and in Redis (which drops a
//! subscriber past `client-output-buffer-limit pubsub`), never in this process.

use bytes::{Bytes, BytesMut};

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(Bytes),
    Error(Bytes),
    Int(i64),
    Bulk(Bytes),
    Nil,
    Array(Vec<Reply>),
}

/// Why the bytes from Redis could not be read as replies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("malformed reply from redis")]
    Malformed,
    #[error("reply of {0} bytes is larger than the limit")]
    TooLarge(usize),
    #[error("reply nested deeper than expected")]
    TooDeep,
}

/// Pub/sub replies are at most an array of scalars; a little headroom.
const MAX_DEPTH: usize = 4;
/// Most elements accepted in one array header.
const MAX_ELEMENTS: i64 = 1024;

impl Reply {
    pub fn bulk(&self) -> Option<&Bytes> {
        match self {
            Reply::Bulk(b) | Reply::Status(b) => Some(b),
            _ => None,
        }
    }
}

/// Takes one complete reply off the front of `buf`; `Ok(None)` when more bytes are
/// needed. A reply (or a bulk string announced by its header) larger than `max`
/// bytes is an error, so the buffer never grows past one reply of bounded size.
pub fn parse(buf: &mut BytesMut, max: usize) -> Result<Option<Reply>, RespError> {
    let Some(len) = measure(buf, 0, 0, max)? else {
        return Ok(None);
    };
    let frame = buf.split_to(len).freeze();
    let mut pos = 0;
    Ok(Some(build(&frame, &mut pos)))
}

/// The end of the line starting at `at` (the index of its `\r`).
fn line_end(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| at + i)
}

fn int(line: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::Malformed)
}

/// The length of the complete reply at `at`, if it is all there.
fn measure(b: &[u8], at: usize, depth: usize, max: usize) -> Result<Option<usize>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::TooDeep);
    }
    let Some(&kind) = b.get(at) else {
        return Ok(None);
    };
    let Some(end) = line_end(b, at + 1) else {
        // A header line is short; a long one without its end is not RESP.
        if b.len() - at > 64 && kind != b'+' && kind != b'-' {
            return Err(RespError::Malformed);
        }
        if b.len() - at > max {
            return Err(RespError::TooLarge(b.len() - at));
        }
        return Ok(None);
    };
    let after = end + 2;
    match kind {
        b'+' | b'-' | b':' => {
            if kind == b':' {
                int(&b[at + 1..end])?;
            }
            Ok(Some(after - at))
        }
        b'$' => {
            let n = int(&b[at + 1..end])?;
            if n < 0 {
                return Ok(Some(after - at));
            }
            let n = n as usize;
            if n > max {
                return Err(RespError::TooLarge(n));
            }
            if b.len() < after + n + 2 {
                return Ok(None);
            }
            if &b[after + n..after + n + 2] != b"\r\n" {
                return Err(RespError::Malformed);
            }
            Ok(Some(after + n + 2 - at))
        }
        b'*' => {
            let n = int(&b[at + 1..end])?;
            if n > MAX_ELEMENTS {
                return Err(RespError::Malformed);
            }
            let mut pos = after;
            for _ in 0..n.max(0) {
                match measure(b, pos, depth + 1, max)? {
                    Some(len) => pos += len,
                    None => return Ok(None),
                }
                if pos - at > max {
                    return Err(RespError::TooLarge(pos - at));
                }
            }
            Ok(Some(pos - at))
        }
        _ => Err(RespError::Malformed),
    }
}

/// Builds the reply at `pos` of a frame [`measure`] accepted (so nothing can fail).
fn build(frame: &Bytes, pos: &mut usize) -> Reply {
    let kind = frame[*pos];
    let end = line_end(frame, *pos + 1).unwrap_or(frame.len());
    let line = frame.slice(*pos + 1..end);
    *pos = end + 2;
    match kind {
        b'+' => Reply::Status(line),
        b'-' => Reply::Error(line),
        b':' => Reply::Int(int(&line).unwrap_or(0)),
        b'$' => match int(&line).unwrap_or(-1) {
            n if n < 0 => Reply::Nil,
            n => {
                let n = n as usize;
                let data = frame.slice(*pos..*pos + n);
                *pos += n + 2;
                Reply::Bulk(data)
            }
        },
        _ => match int(&line).unwrap_or(-1) {
            n if n < 0 => Reply::Nil,
            n => Reply::Array((0..n).map(|_| build(frame, pos)).collect()),
        },
    }
}

/// Appends one command (an array of bulk strings) to `out`.
pub fn command<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(16);
    let _ = write!(head, "*{}\r\n", args.len());
    out.extend_from_slice(head.as_bytes());
    for a in args {
        let a = a.as_ref();
        head.clear();
        let _ = write!(head, "${}\r\n", a.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8]) -> Vec<Reply> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = parse(&mut buf, 1024).unwrap() {
            out.push(r);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        out
    }

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn pubsub_replies() {
        let got = all(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n\
              *3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhe\r\no\r\n\
              +OK\r\n-ERR nope\r\n$-1\r\n*0\r\n");
        assert_eq!(
            got,
            vec![
                Reply::Array(vec![bulk("subscribe"), bulk("ch"), Reply::Int(1)]),
                Reply::Array(vec![bulk("message"), bulk("ch"), bulk("he\r\no")]),
                Reply::Status(Bytes::from_static(b"OK")),
                Reply::Error(Bytes::from_static(b"ERR nope")),
                Reply::Nil,
                Reply::Array(vec![]),
            ]
        );
    }

    #[test]
    fn incomplete_input_waits_at_every_split() {
        let input: &[u8] = b"*3\r\n$8\r\nsmessage\r\n$3\r\nabc\r\n$4\r\n\x00\x01\r\n\r\n";
        for cut in 0..input.len() {
            let mut buf = BytesMut::from(&input[..cut]);
            assert_eq!(parse(&mut buf, 1024), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
            buf.extend_from_slice(&input[cut..]);
            let r = parse(&mut buf, 1024).unwrap().unwrap();
            assert_eq!(
                r,
                Reply::Array(vec![
                    bulk("smessage"),
                    bulk("abc"),
                    Reply::Bulk(Bytes::from_static(b"\x00\x01\r\n")),
                ])
            );
        }
    }

    #[test]
    fn bounds_and_garbage_are_errors() {
        let mut buf = BytesMut::from(&b"$100000\r\n"[..]);
        assert_eq!(parse(&mut buf, 1024), Err(RespError::TooLarge(100_000)));
        let mut buf = BytesMut::from(&b"?what\r\n"[..]);
        assert_eq!(parse(&mut buf, 1024), Err(RespError::Malformed));
        let mut buf = BytesMut::from(&b"$3\r\nabcXY"[..]);
        assert_eq!(parse(&mut buf, 1024), Err(RespError::Malformed));
        let mut buf = BytesMut::from(&b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"[..]);
        assert_eq!(parse(&mut buf, 1024), Err(RespError::TooDeep));
        let mut buf = BytesMut::from(&b":12x\r\n"[..]);
        assert_eq!(parse(&mut buf, 1024), Err(RespError::Malformed));
        // A header that never ends.
        let mut buf = BytesMut::from(&[b'$'; 100][..]);
        assert_eq!(parse(&mut buf, 1024), Err(RespError::Malformed));
        // Many small elements adding up past the limit.
        let mut big = BytesMut::from(&b"*100\r\n"[..]);
        for _ in 0..100 {
            big.extend_from_slice(b"$20\r\n01234567890123456789\r\n");
        }
        assert!(matches!(parse(&mut big, 1024), Err(RespError::TooLarge(_))));
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        command(&mut out, &["SUBSCRIBE", "a", "bc"]);
        assert_eq!(
            &out[..],
            b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$2\r\nbc\r\n"
        );
    }
}
