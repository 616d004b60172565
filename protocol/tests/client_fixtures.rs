//! The fixtures the TypeScript client's tests read, checked against this crate (and
//! written from it), so that the Rust side and the TS client are held to the same
//! protocol facts:
//!
//! - `client-js/test/fixtures/protocol-frames.json`: every frame example of
//!   docs/protocol.md that has a MessagePack dump, as JSON text and hex. It must be
//!   exactly the docs' examples; every frame in it must decode with this crate and
//!   encode back to exactly its bytes, from either encoding into either; every reply
//!   result must read as its typed result and write back the same bytes; every
//!   `message` must come out of `encode_message` (the gateway's path) byte for byte.
//! - `client-js/test/fixtures/close-codes.json`: the tables of `protocol::close`
//!   (close codes with names and reconnect reactions, handshake statuses), which the
//!   TS client's `policy.ts` and `ended.ts` are tested against.
//!
//! A fixture that no longer matches fails with the command that rewrites it:
//! `TIDINGS_WRITE_FIXTURES=1 cargo test -p tidings-protocol --test client_fixtures`.
//! Review the diff: the TS tests then show what the TS client must follow.
#![allow(clippy::unwrap_used)]

#[path = "../../fuzz/src/seeds.rs"]
#[allow(dead_code)]
mod seeds;

use std::path::PathBuf;

use protocol::close::{self, Reconnect};
use protocol::frame::{
    AckResult, ClientFrame, HistoryResult, PresenceResult, PresenceStatsResult, PublishResult,
    RefreshResult, Reply, ReplyResult, ServerFrame, SubscribeResult, UnsubscribeResult,
    decode_client, decode_server, encode_message, encode_presence_diff,
};
use protocol::{Encoding, ErrorCode, Publication};
use serde_json::{Value, json};

const FRAMES: &str = "client-js/test/fixtures/protocol-frames.json";
const CLOSE_CODES: &str = "client-js/test/fixtures/close-codes.json";
const REGENERATE: &str =
    "TIDINGS_WRITE_FIXTURES=1 cargo test -p tidings-protocol --test client_fixtures";
const BOTH: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

fn repo(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect()
}

/// Compares a fixture with what it should hold; rewrites it when asked to, fails
/// with the command to do so otherwise. Formatting: one-space indentation, as the
/// committed files have it.
fn keep_current(rel: &str, want: &Value) {
    let path = repo(rel);
    let have: Option<Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    if have.as_ref() == Some(want) {
        return;
    }
    if std::env::var_os("TIDINGS_WRITE_FIXTURES").is_some() {
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b" ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        serde::Serialize::serialize(want, &mut ser).unwrap();
        out.push(b'\n');
        std::fs::write(&path, out).unwrap_or_else(|e| panic!("{rel}: {e}"));
        eprintln!("wrote {rel}");
        return;
    }
    panic!(
        "{rel} is stale (or missing): it no longer matches the protocol crate and the docs.\n\
         Regenerate it with\n    {REGENERATE}\n\
         then run the TypeScript client's tests (cd client-js && npm test).\n\
         want: {want:#}"
    );
}

// --- protocol-frames.json ----------------------------------------------------------

struct Frame {
    json: String,
    msgpack: Vec<u8>,
    kind: String,
}

/// The frame examples of docs/protocol.md with a MessagePack dump, in order.
fn doc_frames() -> Vec<Frame> {
    seeds::doc_examples(&read("docs/protocol.md"))
        .into_iter()
        .filter_map(|ex| {
            let kind = seeds::frame_type(&ex.json)?;
            let known = seeds::CLIENT_TYPES.contains(&kind.as_str())
                || seeds::SERVER_TYPES.contains(&kind.as_str());
            Some(Frame {
                json: ex.json,
                msgpack: ex.msgpack?,
                kind,
            })
            .filter(|_| known)
        })
        .collect()
}

fn fixture_frames() -> Vec<Frame> {
    let v: Value = serde_json::from_str(&read(FRAMES)).unwrap();
    v["frames"]
        .as_array()
        .unwrap_or_else(|| panic!("{FRAMES}: no `frames` array"))
        .iter()
        .map(|f| {
            let json = f["json"].as_str().unwrap().to_owned();
            let kind = seeds::frame_type(&json).unwrap_or_else(|| panic!("no type: {json}"));
            Frame {
                msgpack: unhex(f["msgpack"].as_str().unwrap()),
                json,
                kind,
            }
        })
        .collect()
}

fn bytes_of(f: &Frame, enc: Encoding) -> &[u8] {
    match enc {
        Encoding::Json => f.json.as_bytes(),
        Encoding::MsgPack => &f.msgpack,
    }
}

#[test]
fn frames_fixture_is_the_docs_examples() {
    let frames = doc_frames();
    assert!(frames.len() >= 20, "docs/protocol.md: too few examples");
    let want = json!({
        "source": "docs/protocol.md: every JSON frame example with its MessagePack hex dump (produced by the Rust protocol crate)",
        "frames": frames
            .iter()
            .map(|f| json!({"json": f.json, "msgpack": hex(&f.msgpack)}))
            .collect::<Vec<_>>(),
    });
    keep_current(FRAMES, &want);
}

#[test]
fn fixture_covers_every_frame_type() {
    let kinds: Vec<String> = fixture_frames().into_iter().map(|f| f.kind).collect();
    for t in seeds::CLIENT_TYPES.iter().chain(seeds::SERVER_TYPES) {
        assert!(kinds.iter().any(|k| k == t), "{FRAMES} has no `{t}` frame");
    }
}

#[test]
fn client_frames_of_the_fixture_encode_to_its_bytes() {
    let mut n = 0;
    for f in fixture_frames() {
        if !seeds::CLIENT_TYPES.contains(&f.kind.as_str()) {
            continue;
        }
        n += 1;
        let decoded: Vec<ClientFrame> = BOTH
            .iter()
            .map(|&enc| {
                decode_client(enc, bytes_of(&f, enc))
                    .unwrap_or_else(|e| panic!("{enc:?} {}: {e}", f.json))
            })
            .collect();
        assert_eq!(decoded[0], decoded[1], "{}", f.json);
        for frame in &decoded {
            for out in BOTH {
                let bytes = frame.encode(out).unwrap();
                assert_eq!(hex(&bytes), hex(bytes_of(&f, out)), "{out:?} of {}", f.json);
            }
        }
    }
    assert_eq!(n, 13, "client frame examples");
}

/// A `conflict` refusal written the gateway's way (`Reply::conflict`, message
/// included) from the position it carries, in `out`.
fn conflict_reply(reply: &Reply, out: Encoding) -> Option<Vec<u8>> {
    let e = reply
        .error
        .as_ref()
        .filter(|e| e.code == ErrorCode::Conflict)?;
    let id = reply.id.unwrap_or_else(|| panic!("conflict without id"));
    let (offset, epoch) = match (e.offset, &e.epoch) {
        (Some(o), Some(ep)) => (o, ep.clone()),
        _ => panic!("conflict without offset and epoch: {e:?}"),
    };
    Some(
        ServerFrame::Reply(Reply::conflict(id, offset, epoch))
            .encode(out)
            .unwrap()
            .to_vec(),
    )
}

/// The reply's result read as the typed result of the request it answers (told by
/// its fields: the fixture does not say), written back as a reply in `out`.
fn typed_reply(reply: &Reply, out: Encoding) -> Option<Vec<u8>> {
    fn again<R: ReplyResult>(reply: &Reply, result: &Value, out: Encoding) -> Vec<u8> {
        let typed = R::from_value(result.clone())
            .unwrap_or_else(|e| panic!("{result} as `{}` result: {e}", R::REQUEST));
        let id = reply.id.unwrap_or_else(|| panic!("success without id"));
        ServerFrame::Reply(Reply::ok(id, typed))
            .encode(out)
            .unwrap()
            .to_vec()
    }
    let result = reply.result.as_ref()?;
    let has = |k: &str| result.get(k).is_some();
    Some(if has("nodes") {
        again::<PublishResult>(reply, result, out)
    } else if has("publications") {
        again::<HistoryResult>(reply, result, out)
    } else if has("members") {
        again::<PresenceResult>(reply, result, out)
    } else if has("clients") {
        again::<PresenceStatsResult>(reply, result, out)
    } else if has("expires_at") {
        again::<RefreshResult>(reply, result, out)
    } else if has("channel") {
        let sub = again::<SubscribeResult>(reply, result, out);
        if result.as_object().map(|o| o.len()) == Some(1) {
            assert_eq!(sub, again::<UnsubscribeResult>(reply, result, out));
        }
        sub
    } else if has("offset") {
        again::<AckResult>(reply, result, out)
    } else {
        panic!("{result}: the result of no known request")
    })
}

#[test]
fn server_frames_of_the_fixture_decode_and_encode_to_its_bytes() {
    let (mut n, mut typed, mut conflicts) = (0, 0, 0);
    for f in fixture_frames() {
        if !seeds::SERVER_TYPES.contains(&f.kind.as_str()) {
            continue;
        }
        n += 1;
        let decoded: Vec<ServerFrame> = BOTH
            .iter()
            .map(|&enc| {
                decode_server(enc, bytes_of(&f, enc))
                    .unwrap_or_else(|e| panic!("{enc:?} {}: {e}", f.json))
            })
            .collect();
        assert_eq!(decoded[0], decoded[1], "{}", f.json);
        for frame in &decoded {
            for out in BOTH {
                let want = hex(bytes_of(&f, out));
                assert_eq!(
                    hex(&frame.encode(out).unwrap()),
                    want,
                    "{out:?} of {}",
                    f.json
                );
                match frame {
                    // The gateway's path: one encoding of the publication for all.
                    ServerFrame::Message(m) => {
                        let mut p = Publication::new(&m.channel, &m.event, m.payload.clone());
                        p.id = m.msg_id.clone();
                        p.offset = m.offset;
                        p.epoch = m.epoch.clone();
                        p.ts = m.ts;
                        assert_eq!(hex(&encode_message(out, &p).unwrap()), want, "{}", f.json);
                    }
                    ServerFrame::Reply(r) => {
                        if let Some(bytes) = typed_reply(r, out) {
                            assert_eq!(hex(&bytes), want, "typed result of {}", f.json);
                            typed += 1;
                        }
                        if let Some(bytes) = conflict_reply(r, out) {
                            assert_eq!(hex(&bytes), want, "Reply::conflict of {}", f.json);
                            conflicts += 1;
                        }
                    }
                    // The gateway's path: one encoding of the diff for all.
                    ServerFrame::PresenceDiff(d) => {
                        let bytes = encode_presence_diff(out, &d.channel, &d.diff).unwrap();
                        assert_eq!(hex(&bytes), want, "{}", f.json);
                    }
                    ServerFrame::Welcome(_) | ServerFrame::Ping => {}
                }
            }
        }
    }
    assert_eq!(n, 26, "server frame examples");
    // Fourteen successful replies (one in `publish`, one in `ack`, two in `history`,
    // seven in `reply`, three in section 15), each from two encodings into two.
    assert_eq!(typed, 14 * 4, "typed reply results");
    // One `conflict` refusal (in `publish`), likewise.
    assert_eq!(conflicts, 4, "conflict replies");
}

// --- close-codes.json ---------------------------------------------------------------

#[test]
fn close_codes_fixture_is_the_close_table() {
    let want = json!({
        "source": format!(
            "protocol/src/close.rs (close::CODES, close::HANDSHAKE_STATUSES); regenerate with: {REGENERATE}"
        ),
        "close_codes": close::CODES
            .iter()
            .map(|c| json!({"code": c.code, "name": c.name, "reconnect": c.reconnect}))
            .collect::<Vec<_>>(),
        "other_close_code": close::OTHER_RECONNECT,
        "connection_lost": close::CONNECTION_LOST,
        "handshake_statuses": close::HANDSHAKE_STATUSES
            .iter()
            .map(|(status, r)| json!({"status": status, "reconnect": r}))
            .collect::<Vec<_>>(),
        "other_handshake_status": close::OTHER_HANDSHAKE_STATUS,
    });
    keep_current(CLOSE_CODES, &want);
}

/// Cells of the body rows of docs/protocol.md's close code table (section 8).
fn documented_close_rows() -> Vec<Vec<String>> {
    let doc = read("docs/protocol.md");
    let mut rows = Vec::new();
    let mut inside = false;
    for line in doc.lines() {
        let cells: Vec<String> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect();
        if cells.first().map(String::as_str) == Some("Code")
            && cells.get(3).map(String::as_str) == Some("Reconnect?")
        {
            inside = true;
        } else if inside && !line.starts_with('|') {
            break;
        } else if inside && !cells[0].starts_with("---") {
            rows.push(cells);
        }
    }
    rows
}

/// docs/gateway tests check the table's yes/no/new-token against `should_reconnect`
/// and `needs_new_token`; this checks the finer reaction: "at once" is exactly
/// [`Reconnect::Promptly`].
#[test]
fn docs_say_at_once_exactly_for_prompt_reconnects() {
    let rows = documented_close_rows();
    assert_eq!(
        rows.len(),
        close::CODES.len(),
        "close code table of docs/protocol.md"
    );
    for row in rows {
        let code: u16 = row[0].trim_matches('`').parse().unwrap();
        let said = row[3].replace("**", "");
        let want = close::reconnect(code);
        let ok = match want {
            Reconnect::Promptly => said.starts_with("yes, at once"),
            Reconnect::WithBackoff => said.starts_with("yes") && !said.contains("at once"),
            Reconnect::NewToken => said.starts_with("only with a new token"),
            Reconnect::Stop => said.starts_with("no"),
        };
        assert!(
            ok,
            "{code}: docs say `{said}`, close::reconnect says {want:?}"
        );
    }
}
