//! Stable-Rust property test over the gateway's parsers: the same checks as the
//! libFuzzer targets `publish_body`, `token_claims` and `token` in `fuzz/`, over the
//! committed seeds and a fixed number of mutations of them (fixed seed), on a 2 MiB
//! stack in the suite's debug build. `TIDINGS_FUZZ_ITERS=<n>` and
//! `TIDINGS_FUZZ_SEED=<u64>` run it longer or elsewhere; see docs/fuzzing.md.

#[path = "../../fuzz/src/gateway_checks.rs"]
#[allow(dead_code)]
mod gateway_checks;
#[path = "../../fuzz/src/gateway_seeds.rs"]
#[allow(dead_code)]
mod gateway_seeds;
#[path = "../../fuzz/src/mutate.rs"]
#[allow(dead_code)]
mod mutate;
#[path = "../../fuzz/src/seeds.rs"]
#[allow(dead_code)]
mod seeds;

use gateway::api::check_body;
use mutate::Syntax;
use protocol::depth::MAX_PAYLOAD_DEPTH;

/// Mutants per target: a couple of seconds each in a debug build (signing and
/// verifying a token costs more than decoding a frame).
const ITERS: usize = 20_000;
const TOKEN_ITERS: usize = 5_000;

fn root(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn all_seeds() -> Vec<(&'static str, seeds::Seeds)> {
    gateway_seeds::gateway_seeds(&root("docs/api/openapi.yaml"), &root("docs/protocol.md"))
}

/// The generated seeds, then every other committed file of the target's corpus.
fn inputs(target: &str) -> Vec<Vec<u8>> {
    let generated: Vec<Vec<u8>> = all_seeds()
        .into_iter()
        .find(|(t, _)| *t == target)
        .map(|(_, s)| s.into_iter().map(|(_, b)| b).collect())
        .unwrap_or_else(|| panic!("no seeds for {target}"));
    let mut all = generated.clone();
    all.extend(
        seeds::committed(target)
            .into_iter()
            .filter(|c| !generated.contains(c)),
    );
    all
}

fn dict(words: &[&str]) -> Vec<Vec<u8>> {
    words.iter().map(|s| s.as_bytes().to_vec()).collect()
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
    for (target, seeds) in all_seeds() {
        assert!(seeds.len() >= 4, "{target}: only {} seeds", seeds.len());
        seeds::sync(target, &seeds);
    }
    // The documented request bodies are what the API makes of them.
    let bodies = gateway_seeds::openapi_bodies(&root("docs/api/openapi.yaml"));
    let count = |name: &str| {
        let (_, body) = bodies
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("openapi.yaml lost its `{name}` example"));
        check_body(body.as_bytes(), name == "mixed" || name == "empty")
    };
    assert_eq!(count("user"), Ok(1));
    assert_eq!(count("users"), Ok(2));
    assert_eq!(count("broadcast"), Ok(1));
    assert_eq!(count("two_targets"), Ok(0));
    assert_eq!(count("mixed"), Ok(2));
    assert!(count("empty").is_err());
}

#[test]
fn publish_bodies() {
    let run = mutate::run(
        "publish_body",
        inputs("publish_body"),
        dict(&[
            "\"user\"",
            "\"users\"",
            "\"channel\"",
            "\"channels\"",
            "\"broadcast\"",
            "\"event\"",
            "\"payload\"",
            "\"id\"",
            "\"expect\"",
            "\"offset\"",
            "\"epoch\"",
            "\"messages\"",
            "true",
            "null",
            "[]",
            "{}",
            "\"$broadcast\"",
            "\"\\ud800\"",
            "1e400",
            ",",
            ":",
        ]),
        Syntax::Json,
        mutate::iterations(ITERS),
        gateway_checks::publish_body,
    );
    report("publish_body", &run);
}

#[test]
fn token_claims() {
    let run = mutate::run(
        "token_claims",
        inputs("token_claims"),
        dict(&[
            "\"sub\"",
            "\"exp\"",
            "\"nbf\"",
            "\"iat\"",
            "\"iss\"",
            "\"aud\"",
            "\"subscribe\"",
            "\"publish\"",
            "\"https://issuer.example\"",
            "\"tidings\"",
            "4102444800",
            "18446744073709551615",
            "-1",
            "1e400",
            "null",
            "[]",
        ]),
        Syntax::Json,
        mutate::iterations(TOKEN_ITERS),
        gateway_checks::token_claims,
    );
    report("token_claims", &run);
}

#[test]
fn raw_tokens() {
    let run = mutate::run(
        "token",
        inputs("token"),
        dict(&[
            ".",
            "eyJ",
            "eyJhbGciOiJIUzI1NiJ9",
            "e30",
            "-",
            "_",
            "=",
            "+",
            "/",
        ]),
        Syntax::Json,
        mutate::iterations(TOKEN_ITERS),
        gateway_checks::token,
    );
    report("token", &run);
}

/// Payloads nested at and around the limit, up to 100,000 levels, in a single and a
/// batch request, on the 2 MiB stack: accepted exactly up to the limit.
#[test]
fn deep_bodies_are_refused_not_a_crash() {
    let handle = std::thread::Builder::new()
        .stack_size(mutate::STACK)
        .spawn(|| {
            for n in [1, 63, 64, 65, 66, 127, 128, 129, 1000, 100_000] {
                let body = format!(r#"{{"user":"alice","payload":{}}}"#, seeds::deep_json(n));
                let r = check_body(body.as_bytes(), false);
                assert_eq!(
                    r.is_ok(),
                    n <= MAX_PAYLOAD_DEPTH,
                    "payload depth {n}: {r:?}"
                );
                gateway_checks::publish_body(body.as_bytes());
                let batch = format!(r#"{{"messages":[{body}]}}"#);
                let r = check_body(batch.as_bytes(), true);
                assert_eq!(r.is_ok(), n <= MAX_PAYLOAD_DEPTH, "batch depth {n}: {r:?}");
                let claims = format!(
                    r#"{{"sub":"alice","exp":4102444800,"x":{}}}"#,
                    seeds::deep_json(n)
                );
                gateway_checks::token_claims(claims.as_bytes());
            }
        })
        .unwrap();
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

// Regressions: the minimized inputs of what the fuzz targets found (docs/fuzzing.md).
// Each is also committed as fuzz/corpus/<target>/regress-*.

/// publish_body: a lone UTF-16 surrogate in a payload was accepted by the HTTP API,
/// and the publication could then not be delivered to MessagePack subscribers.
#[test]
fn regression_lone_surrogate_in_an_api_payload() {
    let input = br#"{"payload":[[[[["\udc00"]]]]]}"#;
    let e = check_body(input, false).unwrap_err();
    assert!(e.contains("MessagePack"), "{e}");
    gateway_checks::publish_body(input);
    let batch = br#"{"messages":[{"user":"alice","payload":1e400}]}"#;
    assert!(check_body(batch, true).is_err());
}

/// token_claims: a claim the gateway does not read may hold bytes that are not
/// UTF-8; the verifier skips it (as serde skips unknown fields) and accepts the
/// token. Not a bug: the property reads only the claims the verifier uses.
#[test]
fn regression_invalid_utf8_in_an_unused_claim() {
    let input = b"{\"sub\":\"e\",\"exp\":4102444800,\"\":[\"\xc1\"]}";
    gateway_checks::token_claims(input);
}
