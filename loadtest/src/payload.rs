//! The benchmark payload (`{"seq":N,"t":micros,"src":S,"pad":"..."}`, padded to a
//! fixed size) and a lean decoder for the server frames a load client reads.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

/// Microseconds since the Unix epoch (the publish timestamp; all processes of a run
/// share the machine's clock).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    now_micros() / 1000
}

/// Builds the JSON text of a payload of (at least) `size` bytes. `src` names the
/// sender's stream when several publishers share a channel (chat).
pub fn make(seq: u64, src: Option<u64>, size: usize) -> String {
    let t = now_micros();
    let head = match src {
        Some(s) => format!("{{\"seq\":{seq},\"t\":{t},\"src\":{s},\"pad\":\""),
        None => format!("{{\"seq\":{seq},\"t\":{t},\"pad\":\""),
    };
    let fill = size.saturating_sub(head.len() + 2);
    let mut out = String::with_capacity(head.len() + fill + 2);
    out.push_str(&head);
    out.extend(std::iter::repeat_n('x', fill));
    out.push_str("\"}");
    out
}

/// The fields of a benchmark payload.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct Bench {
    pub seq: u64,
    pub t: u64,
    #[serde(default)]
    pub src: Option<u64>,
}

/// A server frame, reduced to what the load client needs.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub ok: Option<bool>,
    #[serde(default)]
    pub payload: Option<Bench>,
    #[serde(default)]
    pub offset: Option<u64>,
    /// The history epoch of `offset` (messages carry it).
    #[serde(default, borrow)]
    pub epoch: Option<&'a str>,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

/// Decodes a JSON text frame; `None` for anything unreadable (counted by the caller).
pub fn decode(text: &str) -> Option<Frame<'_>> {
    serde_json::from_str(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_asked_size_and_reads_back() {
        let p = make(7, Some(3), 100);
        assert_eq!(p.len(), 100);
        let b: Bench = serde_json::from_str(&p).unwrap_or(Bench {
            seq: 0,
            t: 0,
            src: None,
        });
        assert_eq!((b.seq, b.src), (7, Some(3)));
        let frame =
            format!(r#"{{"type":"message","channel":"c","event":"e","payload":{p},"ts":1}}"#);
        let f = decode(&frame);
        assert_eq!(f.and_then(|f| f.payload).map(|b| b.seq), Some(7));
        // Larger than asked when the header alone is longer.
        assert!(make(1, None, 10).len() > 10);
    }
}
