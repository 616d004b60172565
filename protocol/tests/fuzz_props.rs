//! Stable-Rust property test over the protocol's decoders: the same checks as the
//! libFuzzer targets in `fuzz/` (client frames in both encodings, server frames, the
//! Redis envelope), over the committed seeds and a fixed number of mutations of them
//! (fixed seed: the run repeats exactly), on a 2 MiB stack in the suite's debug
//! build. `TIDINGS_FUZZ_ITERS=<n>` and `TIDINGS_FUZZ_SEED=<u64>` run it longer or
//! elsewhere; see docs/fuzzing.md.

#[path = "../../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;
#[path = "../../fuzz/src/mutate.rs"]
#[allow(dead_code)]
mod mutate;
#[path = "../../fuzz/src/seeds.rs"]
#[allow(dead_code)]
mod seeds;

use mutate::Syntax;
use protocol::depth::MAX_PAYLOAD_DEPTH;
use protocol::frame::{ClientFrame, Encoding, decode_client, decode_server};
use protocol::{Payload, Publication};

/// Mutants per target: a couple of seconds each in a debug build.
const ITERS: usize = 20_000;

fn root(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn seeds_of(target: &str) -> seeds::Seeds {
    seeds::protocol_seeds(&root("docs/protocol.md"))
        .into_iter()
        .find(|(t, _)| *t == target)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no seeds for {target}"))
}

/// The generated seeds, then every other committed file of the target's corpus.
fn inputs(target: &str) -> Vec<Vec<u8>> {
    let generated: Vec<Vec<u8>> = seeds_of(target).into_iter().map(|(_, b)| b).collect();
    let mut all = generated.clone();
    all.extend(
        seeds::committed(target)
            .into_iter()
            .filter(|c| !generated.contains(c)),
    );
    all
}

fn json_dict() -> Vec<Vec<u8>> {
    [
        "\"type\"",
        "\"id\"",
        "\"channel\"",
        "\"event\"",
        "\"payload\"",
        "\"token\"",
        "\"since\"",
        "\"offset\"",
        "\"epoch\"",
        "\"subscribe\"",
        "\"unsubscribe\"",
        "\"publish\"",
        "\"refresh\"",
        "\"ack\"",
        "\"pong\"",
        "\"presence\"",
        "\"presence_stats\"",
        "\"presence_diff\"",
        "\"history\"",
        "\"expect\"",
        "\"publications\"",
        "\"conflict\"",
        "\"limit\"",
        "\"cursor\"",
        "\"joins\"",
        "\"leaves\"",
        "\"welcome\"",
        "\"message\"",
        "\"reply\"",
        "\"ping\"",
        "\"ok\"",
        "\"result\"",
        "\"error\"",
        "\"code\"",
        "\"limits\"",
        "\"msg_id\"",
        "\"ts\"",
        "true",
        "false",
        "null",
        "\"\\ud800\"",
        "\"\\u0000\"",
        "\"\\udc00\\ud800\"",
        "1e400",
        "-0",
        "{}",
        "[]",
        ":",
        ",",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn msgpack_dict() -> Vec<Vec<u8>> {
    let mut d: Vec<Vec<u8>> = [
        "type",
        "id",
        "channel",
        "event",
        "payload",
        "token",
        "since",
        "offset",
        "epoch",
        "subscribe",
        "publish",
        "pong",
        "presence",
        "history",
        "expect",
        "publications",
        "limit",
        "cursor",
        "joins",
        "leaves",
        "message",
        "reply",
        "ok",
        "result",
        "error",
        "ts",
    ]
    .iter()
    .map(|s| {
        let mut v = vec![0xa0 | s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    })
    .collect();
    d.extend([
        vec![0xc0],
        vec![0xc2],
        vec![0xc3],
        vec![0x80],
        vec![0x90],
        vec![0xdd, 0xff, 0xff, 0xff, 0xff],
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![0xdb, 0xff, 0xff, 0xff, 0xff],
        vec![0xc6, 0x00, 0x00, 0x00, 0x01, 0x00],
        vec![0xa2, 0xed, 0xa0], // a string with invalid UTF-8
    ]);
    d
}

fn report(name: &str, run: &mutate::Run) {
    eprintln!(
        "{name}: {} inputs in {:.2?} ({:.0}/s)",
        run.inputs,
        run.elapsed,
        run.inputs as f64 / run.elapsed.as_secs_f64()
    );
}

#[test]
fn seeds_match_the_docs() {
    for (target, seeds) in seeds::protocol_seeds(&root("docs/protocol.md")) {
        assert!(
            seeds.len() >= 4,
            "{target}: only {} seeds from the docs",
            seeds.len()
        );
        seeds::sync(target, &seeds);
    }
    // Every documented frame decodes (the MessagePack dumps included) and its two
    // forms decode to the same frame.
    for ex in seeds::doc_examples(&root("docs/protocol.md")) {
        let Some(kind) = seeds::frame_type(&ex.json) else {
            continue;
        };
        let msgpack = ex
            .msgpack
            .clone()
            .unwrap_or_else(|| seeds::to_msgpack(&ex.json));
        if seeds::CLIENT_TYPES.contains(&kind.as_str()) {
            let j = decode_client(Encoding::Json, ex.json.as_bytes()).unwrap();
            let m = decode_client(Encoding::MsgPack, &msgpack).unwrap();
            assert_eq!(j, m, "{}", ex.json);
        } else {
            let j = decode_server(Encoding::Json, ex.json.as_bytes()).unwrap();
            let m = decode_server(Encoding::MsgPack, &msgpack).unwrap();
            assert_eq!(j, m, "{}", ex.json);
        }
    }
}

#[test]
fn client_frames_json() {
    let run = mutate::run(
        "client_json",
        inputs("client_json"),
        json_dict(),
        Syntax::Json,
        mutate::iterations(ITERS),
        |d| checks::client_frame(Encoding::Json, d),
    );
    report("client_json", &run);
}

#[test]
fn client_frames_msgpack() {
    let run = mutate::run(
        "client_msgpack",
        inputs("client_msgpack"),
        msgpack_dict(),
        Syntax::MsgPack,
        mutate::iterations(ITERS),
        |d| checks::client_frame(Encoding::MsgPack, d),
    );
    report("client_msgpack", &run);
}

#[test]
fn server_frames_json() {
    let run = mutate::run(
        "server_json",
        inputs("server_json"),
        json_dict(),
        Syntax::Json,
        mutate::iterations(ITERS),
        |d| checks::server_frame(Encoding::Json, d),
    );
    report("server_json", &run);
}

#[test]
fn server_frames_msgpack() {
    let run = mutate::run(
        "server_msgpack",
        inputs("server_msgpack"),
        msgpack_dict(),
        Syntax::MsgPack,
        mutate::iterations(ITERS),
        |d| checks::server_frame(Encoding::MsgPack, d),
    );
    report("server_msgpack", &run);
}

#[test]
fn redis_envelopes() {
    let run = mutate::run(
        "envelope",
        inputs("envelope"),
        msgpack_dict(),
        Syntax::MsgPack,
        mutate::iterations(ITERS),
        checks::envelope,
    );
    report("envelope", &run);
}

/// Nesting at and around every limit, in every position a decoder meets it, on the
/// 2 MiB stack: accepted exactly up to the limit, refused (never a crash) beyond,
/// up to 100,000 levels.
#[test]
fn deep_nesting_is_refused_not_a_crash() {
    let handle = std::thread::Builder::new()
        .stack_size(mutate::STACK)
        .spawn(|| {
            for n in [1, 63, 64, 65, 66, 67, 128, 129, 1000, 100_000] {
                let payload_ok = n <= MAX_PAYLOAD_DEPTH;
                // publish payloads, both encodings
                let json = format!(
                    r#"{{"type":"publish","id":1,"channel":"c","payload":{}}}"#,
                    seeds::deep_json(n)
                );
                let r = decode_client(Encoding::Json, json.as_bytes());
                assert_eq!(
                    r.is_ok(),
                    payload_ok,
                    "JSON publish payload depth {n}: {r:?}"
                );
                checks::client_frame(Encoding::Json, json.as_bytes());
                let mut mp = seeds::to_msgpack(r#"{"type":"publish","id":1,"channel":"c"}"#);
                mp[0] += 1; // one more map entry
                mp.extend_from_slice(&[0xa7]);
                mp.extend_from_slice(b"payload");
                mp.extend(seeds::deep_msgpack(n));
                let r = decode_client(Encoding::MsgPack, &mp);
                assert_eq!(
                    r.is_ok(),
                    payload_ok,
                    "MessagePack publish depth {n}: {r:?}"
                );
                checks::client_frame(Encoding::MsgPack, &mp);
                // pong ignores its other fields, but they are scanned before anything
                // decodes them: the frame may nest 66 levels in all
                let pong = seeds::deep_pong_msgpack(n);
                let r = decode_client(Encoding::MsgPack, &pong);
                assert_eq!(r.is_ok(), n < 66, "MessagePack pong with depth {n}: {r:?}");
                assert!(matches!(r, Ok(ClientFrame::Pong) | Err(_)));
                let pong = format!(r#"{{"type":"pong","x":{}}}"#, seeds::deep_json(n));
                let r = decode_client(Encoding::Json, pong.as_bytes());
                assert_eq!(r.is_ok(), n < 66, "JSON pong with depth {n}: {r:?}");
                // server frames
                let msg = format!(
                    r#"{{"type":"message","channel":"c","event":"e","payload":{}}}"#,
                    seeds::deep_json(n)
                );
                let r = decode_server(Encoding::Json, msg.as_bytes());
                assert_eq!(r.is_ok(), payload_ok, "message payload depth {n}");
                checks::server_frame(Encoding::Json, msg.as_bytes());
                let reply = format!(
                    r#"{{"type":"reply","id":1,"ok":true,"result":{}}}"#,
                    seeds::deep_json(n)
                );
                checks::server_frame(Encoding::Json, reply.as_bytes());
                let mut reply =
                    seeds::to_msgpack(r#"{"type":"reply","id":1,"ok":true,"result":null}"#);
                seeds::splice_payload(&mut reply, &seeds::deep_msgpack(n));
                let r = decode_server(Encoding::MsgPack, &reply);
                assert_eq!(r.is_ok(), n < 66, "MessagePack reply result depth {n}");
                checks::server_frame(Encoding::MsgPack, &reply);
                // payloads, and the envelope around them
                let text = seeds::deep_json(n);
                assert_eq!(Payload::from_json(&text).is_ok(), payload_ok, "payload {n}");
                let env = rmp_serde::to_vec_named(&serde_json::json!({
                    "v": 1, "ch": "c", "ev": "e", "p": text, "ts": 1
                }))
                .unwrap();
                assert_eq!(
                    Publication::decode(&env).is_ok(),
                    payload_ok,
                    "envelope {n}"
                );
                checks::envelope(&env);
                // deep nesting in an unknown envelope field
                let mut env = rmp_serde::to_vec_named(&serde_json::json!({
                    "v": 1, "ch": "c", "ev": "e", "p": "1", "ts": 1
                }))
                .unwrap();
                env[0] += 1;
                env.extend_from_slice(&[0xa1, b'x']);
                env.extend(seeds::deep_msgpack(n));
                assert_eq!(
                    Publication::decode(&env).is_ok(),
                    n < 66,
                    "envelope field {n}"
                );
            }
        })
        .unwrap();
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

// Regressions: the minimized inputs of what the fuzz targets found (docs/fuzzing.md).
// Each is also committed as fuzz/corpus/<target>/regress-*.

/// client_json: a lone UTF-16 surrogate in a payload (here an object key) was
/// accepted, and the frame could then not be encoded for MessagePack subscribers.
#[test]
fn regression_lone_surrogate_in_a_json_payload() {
    let input = br#"{"type":"publish","id":4,"channel":"","payload":{"\ud979":true}}"#;
    let e = decode_client(Encoding::Json, input).unwrap_err();
    assert_eq!(e.code(), protocol::ErrorCode::BadFrame, "{e}");
    assert!(e.to_string().contains("MessagePack"), "{e}");
    checks::client_frame(Encoding::Json, input);
    for text in [r#""\ud800""#, r#"["\udc00"]"#, r#""\ud800\u0041""#] {
        assert!(Payload::from_json(text).is_err(), "{text}");
    }
    // A proper pair is fine.
    checks::client_frame(
        Encoding::Json,
        br#"{"type":"publish","id":4,"channel":"c","payload":"\ud83d\ude00"}"#,
    );
}

/// envelope: a payload `1e400` (no f64 holds it) was accepted from Redis and then
/// could not be delivered to MessagePack subscribers.
#[test]
fn regression_number_out_of_range_in_an_envelope_payload() {
    let input =
        b"\x87\xa1v\x01\xa2ch\xab$user:alice\xa2ev\xadorder.sihpped\xa1p\xa51e400pped\xa2tsf";
    assert!(Publication::decode(input).is_err());
    checks::envelope(input);
    let json = br#"{"type":"publish","id":1,"channel":"c","payload":[1,-1e400]}"#;
    assert!(decode_client(Encoding::Json, json).is_err());
}

/// client_msgpack, server_msgpack, server_json: a float that went through the
/// payload's JSON text (or a `Value`) came back one ulp off, because serde_json
/// parsed floats with its fast, inexact algorithm (now `float_roundtrip`).
#[test]
fn regression_float_one_ulp_off_through_json_text() {
    let client = b"\x85\xa4type\xa7publish\xa2id\x07\xa7channel\xa7room:8g\xa7payload\xcbyping\xa7ya\x6f\x6c";
    checks::client_frame(Encoding::MsgPack, client);
    let server = b"\x85\xa4type\xa7message\xa7channel\xa7room:21\xa5event\xa6typing\xa7payload\xcb\xcb\xcb\xcb\xcb\x91\x91\x01\xa2sy";
    checks::server_frame(Encoding::MsgPack, server);
    checks::server_frame(
        Encoding::Json,
        br#"{"type":"reply","ok":true,"result":{"":444444444444444444444400}}"#,
    );
}
