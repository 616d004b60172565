//! Seeds of the protocol targets, made from the examples in docs/protocol.md: every
//! ```json frame example, and the MessagePack hex dump that follows it (the bytes the
//! protocol crate writes), split into client and server frames; the Redis envelopes
//! of the `message` examples; and a few hostile inputs (deep nesting around the
//! 64-level limit and far beyond it).
//!
//! `protocol/tests/fuzz_props.rs` (which includes this file by path) checks that
//! `fuzz/corpus/<target>/` holds every seed, byte for byte, and rewrites the seeds
//! when run with `TIDINGS_FUZZ_WRITE_SEEDS=1`. The mutation loops start from the
//! same seeds plus whatever else is committed there.

use std::path::PathBuf;

use protocol::{Payload, Publication};

/// `(file name, bytes)` of a target's seeds.
pub type Seeds = Vec<(String, Vec<u8>)>;

/// One ```json block of a document and, when one follows it, the bytes of the
/// `MessagePack (N bytes):` hex dump after it.
#[derive(Debug, Clone)]
pub struct DocExample {
    pub json: String,
    pub msgpack: Option<Vec<u8>>,
}

/// Every ```json block of a Markdown document, with its MessagePack dump.
pub fn doc_examples(md: &str) -> Vec<DocExample> {
    let lines: Vec<&str> = md.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```json" {
            i += 1;
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && lines[end].trim() != "```" {
            end += 1;
        }
        let json = lines[start..end].join("\n");
        i = end + 1;
        // Skip blank lines, then a plain ``` block starting with "MessagePack (N bytes):".
        let mut j = i;
        while j < lines.len() && lines[j].trim().is_empty() {
            j += 1;
        }
        let mut msgpack = None;
        if j + 1 < lines.len()
            && lines[j].trim() == "```"
            && lines[j + 1].starts_with("MessagePack (")
        {
            let announced: usize = lines[j + 1]
                .trim_start_matches("MessagePack (")
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("bad MessagePack dump header: {}", lines[j + 1]));
            let mut bytes = Vec::new();
            let mut k = j + 2;
            while k < lines.len() && lines[k].trim() != "```" {
                // "00000000  83 a4 74 ...  |..type|": hex pairs between the offset and '|'.
                let hex = lines[k].split('|').next().unwrap_or("");
                for token in hex.split_whitespace().skip(1) {
                    let b = u8::from_str_radix(token, 16)
                        .unwrap_or_else(|e| panic!("bad hex `{token}` in {}: {e}", lines[k]));
                    bytes.push(b);
                }
                k += 1;
            }
            assert_eq!(
                bytes.len(),
                announced,
                "MessagePack dump of {json} has {} bytes, says {announced}",
                bytes.len()
            );
            msgpack = Some(bytes);
            i = k + 1;
        }
        out.push(DocExample { json, msgpack });
    }
    out
}

/// The `type` of a JSON example, if it is a frame.
pub fn frame_type(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get("type")?.as_str().map(str::to_owned)
}

pub const CLIENT_TYPES: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "publish",
    "refresh",
    "ack",
    "history",
    "presence",
    "presence_stats",
    "pong",
];
pub const SERVER_TYPES: &[&str] = &["welcome", "message", "reply", "presence_diff", "ping"];

/// `n` nested arrays around `1`, as JSON text.
pub fn deep_json(n: usize) -> String {
    format!("{}1{}", "[".repeat(n), "]".repeat(n))
}

/// `n` nested one-element arrays around `1`, as MessagePack.
pub fn deep_msgpack(n: usize) -> Vec<u8> {
    let mut v = vec![0x91; n];
    v.push(0x01);
    v
}

/// MessagePack of a JSON text (maps with string keys, as the protocol writes them).
pub fn to_msgpack(json: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
    rmp_serde::to_vec(&v).unwrap_or_else(|e| panic!("{json}: {e}"))
}

/// `{"type":"pong","x":<n nested arrays>}` in MessagePack: the 1,000-level frame of
/// issue 14 overflowed a debug gateway's stack before `protocol::depth` existed.
pub fn deep_pong_msgpack(n: usize) -> Vec<u8> {
    let mut v = vec![0x82, 0xa4];
    v.extend_from_slice(b"type");
    v.push(0xa4);
    v.extend_from_slice(b"pong");
    v.extend_from_slice(&[0xa1, b'x']);
    v.extend(deep_msgpack(n));
    v
}

fn publish_json(payload: &str) -> String {
    format!(
        r#"{{"type":"publish","id":7,"channel":"room:42","event":"typing","payload":{payload}}}"#
    )
}

fn message_json(payload: &str) -> String {
    format!(
        r#"{{"type":"message","channel":"room:42","event":"typing","payload":{payload},"ts":1767225600456}}"#
    )
}

/// The seeds of the five protocol targets, from the text of docs/protocol.md.
pub fn protocol_seeds(protocol_md: &str) -> Vec<(&'static str, Seeds)> {
    let mut client_json = Seeds::new();
    let mut client_msgpack = Seeds::new();
    let mut server_json = Seeds::new();
    let mut server_msgpack = Seeds::new();
    let mut envelope = Seeds::new();
    for (n, ex) in doc_examples(protocol_md).iter().enumerate() {
        let Some(kind) = frame_type(&ex.json) else {
            continue;
        };
        let name = format!("doc-{n:02}-{kind}");
        let (json, msgpack) = if CLIENT_TYPES.contains(&kind.as_str()) {
            (&mut client_json, &mut client_msgpack)
        } else {
            (&mut server_json, &mut server_msgpack)
        };
        json.push((format!("{name}.json"), ex.json.clone().into_bytes()));
        let bytes = ex.msgpack.clone().unwrap_or_else(|| to_msgpack(&ex.json));
        msgpack.push((format!("{name}.msgpack"), bytes));
        if kind == "message" {
            envelope.push((format!("{name}.envelope"), envelope_of(&ex.json)));
        }
    }
    // At the payload limit (accepted) and one past it (refused), and the issue's
    // stack-overflow frame (refused by the depth scan).
    for (depth, tag) in [(64, "payload-depth-64"), (65, "payload-depth-65")] {
        let p = deep_json(depth);
        client_json.push((format!("{tag}.json"), publish_json(&p).into_bytes()));
        server_json.push((format!("{tag}.json"), message_json(&p).into_bytes()));
        let mut m = to_msgpack(&publish_json("null"));
        splice_payload(&mut m, &deep_msgpack(depth));
        client_msgpack.push((format!("{tag}.msgpack"), m));
        let mut m = to_msgpack(&message_json("null"));
        splice_payload(&mut m, &deep_msgpack(depth));
        server_msgpack.push((format!("{tag}.msgpack"), m));
    }
    client_msgpack.push((
        "pong-1000-nested-arrays.msgpack".into(),
        deep_pong_msgpack(1000),
    ));
    client_json.push((
        "pong-1000-nested-arrays.json".into(),
        format!(r#"{{"type":"pong","x":{}}}"#, deep_json(1000)).into_bytes(),
    ));
    if let Ok(p) = Payload::from_json(&deep_json(64)) {
        let mut publication = Publication::new("room:42", "typing", p);
        publication.ts = 1_767_225_600_456;
        envelope.push(("payload-depth-64.envelope".into(), publication.encode()));
    }
    vec![
        ("client_json", client_json),
        ("client_msgpack", client_msgpack),
        ("server_json", server_json),
        ("server_msgpack", server_msgpack),
        ("envelope", envelope),
    ]
}

/// Replaces the `nil` payload (the only 0xc0 in these seeds) with `value`.
pub fn splice_payload(frame: &mut Vec<u8>, value: &[u8]) {
    let at = frame
        .iter()
        .position(|&b| b == 0xc0)
        .unwrap_or_else(|| panic!("no nil payload in {frame:02x?}"));
    frame.splice(at..at + 1, value.iter().copied());
}

/// The Redis envelope of a documented `message` frame: the publication a gateway
/// decoded before sending it.
pub fn envelope_of(message_json: &str) -> Vec<u8> {
    let v: serde_json::Value =
        serde_json::from_str(message_json).unwrap_or_else(|e| panic!("{message_json}: {e}"));
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let payload = Payload::from_value(&v["payload"]).unwrap_or_else(|e| panic!("{e}"));
    let mut p = Publication::new(
        s("channel").unwrap_or_default(),
        s("event").unwrap_or_default(),
        payload,
    );
    p.id = s("msg_id");
    p.offset = v.get("offset").and_then(|x| x.as_u64());
    p.epoch = s("epoch");
    p.ts = v.get("ts").and_then(|x| x.as_u64()).unwrap_or(0);
    p.encode()
}

/// `fuzz/corpus/<target>`.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Prefix of committed inputs that are not generated seeds: minimized inputs that
/// once failed, kept so every run replays them.
pub const REGRESSION_PREFIX: &str = "regress-";

/// Checks that `fuzz/corpus/<target>/` holds every seed byte for byte and nothing
/// else but `regress-*` inputs; with `TIDINGS_FUZZ_WRITE_SEEDS=1` writes the seeds
/// and removes stale ones instead.
pub fn sync(target: &str, seeds: &Seeds) {
    let dir = corpus_dir(target);
    let write = std::env::var_os("TIDINGS_FUZZ_WRITE_SEEDS").is_some_and(|v| v == "1");
    if write {
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    let present = std::fs::read_dir(&dir)
        .map(|d| d.filter_map(|e| e.ok()).collect::<Vec<_>>())
        .unwrap_or_default();
    for entry in present {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(REGRESSION_PREFIX) || seeds.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if write {
            std::fs::remove_file(entry.path())
                .unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
        } else {
            panic!(
                "{} is neither a seed nor a {REGRESSION_PREFIX}* input (a stale seed?); run TIDINGS_FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_props",
                entry.path().display()
            );
        }
    }
    for (name, bytes) in seeds {
        let path = dir.join(name);
        if write {
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run TIDINGS_FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_props to write the seeds",
                path.display()
            )
        });
        assert!(
            committed == *bytes,
            "{} differs from its source (the docs changed?); run TIDINGS_FUZZ_WRITE_SEEDS=1 cargo test --test fuzz_props",
            path.display()
        );
    }
}

/// Every file of `fuzz/corpus/<target>/`, sorted by name (seeds and committed
/// regression inputs).
pub fn committed(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Vec::new(),
    };
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}
