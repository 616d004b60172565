//! The properties of the gateway's fuzz targets: the HTTP publish body
//! (`api::check_body`) and JWT verification (`auth::Verifier`), raw token strings and
//! claims behind a valid HS256 signature. Shared, like `checks.rs`, by the libFuzzer
//! targets and `gateway/tests/fuzz_props.rs`; the seeds come from the examples in
//! docs/api/openapi.yaml and docs/protocol.md.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use gateway::api::{MAX_BATCH, MAX_TARGETS, check_body};
use gateway::auth::{AuthError, Verifier};
use gateway::config::{Cli, Config};
use jsonwebtoken::{Algorithm, EncodingKey};
use protocol::depth::{MAX_PAYLOAD_DEPTH, json_within};

/// The HS256 secret of the fuzzed verifiers (never a real one).
pub const SECRET: &str = "tidings-fuzz-secret-0123456789";
pub const ISSUER: &str = "https://issuer.example";
pub const AUDIENCE: &str = "tidings";
/// The header every signed claims input gets.
pub const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Two verifiers built the way the gateway builds its own: the secret alone, and the
/// secret with a required issuer and audience.
pub struct Verifiers {
    pub plain: Verifier,
    pub strict: Verifier,
}

fn verifier(args: &[&str]) -> Verifier {
    let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let config = Config::from_settings(cli.settings).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    Verifier::new(&config.auth.jwt, false).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

pub fn verifiers() -> &'static Verifiers {
    static V: OnceLock<Verifiers> = OnceLock::new();
    V.get_or_init(|| Verifiers {
        plain: verifier(&["gateway", "--jwt-secret", SECRET]),
        strict: verifier(&[
            "gateway",
            "--jwt-secret",
            SECRET,
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            AUDIENCE,
        ]),
    })
}

/// `header.claims.signature` with an HS256 signature by [`SECRET`] over any bytes.
pub fn sign(header: &[u8], claims: &[u8], alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        alg,
    )
    .unwrap_or_else(|e| panic!("cannot sign: {e}"));
    format!("{message}.{sig}")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// What an accepted token must satisfy, whatever its claims looked like.
fn accepted(
    v: &Verifier,
    strict: bool,
    claims_json: Option<&[u8]>,
    c: &gateway::auth::Claims,
    before: u64,
) {
    assert!(
        protocol::channel::validate_user(&c.sub).is_ok(),
        "accepted a token whose sub is not a valid user: {:?}",
        c.sub
    );
    assert!(
        c.exp.saturating_add(v.leeway()) >= before,
        "accepted an expired token: exp {} now {before}",
        c.exp
    );
    let Some(bytes) = claims_json else { return };
    // The claims the verifier reads, read again. The others are skipped as leniently
    // as the verifier skips them (any nesting, escapes unchecked): they are unused.
    #[derive(serde::Deserialize)]
    struct Read {
        sub: Option<serde_json::Value>,
        exp: Option<serde_json::Value>,
        nbf: Option<serde_json::Value>,
        iss: Option<serde_json::Value>,
        aud: Option<serde_json::Value>,
    }
    let Ok(read) = serde_json::from_slice::<Read>(bytes) else {
        return;
    };
    let json = serde_json::json!({
        "sub": read.sub, "exp": read.exp, "nbf": read.nbf, "iss": read.iss, "aud": read.aud,
    });
    assert_eq!(
        json.get("sub").and_then(|s| s.as_str()),
        Some(c.sub.as_str())
    );
    assert_eq!(json.get("exp").and_then(|s| s.as_u64()), Some(c.exp));
    if let Some(nbf) = json.get("nbf").and_then(|n| n.as_u64()) {
        assert!(
            nbf <= before.saturating_add(v.leeway()).saturating_add(1),
            "accepted a token not valid before {nbf} (now {before})"
        );
    }
    if strict {
        assert_eq!(
            json.get("iss").and_then(|s| s.as_str()),
            Some(ISSUER),
            "accepted a token without the required issuer"
        );
        let aud_ok = match json.get("aud") {
            Some(serde_json::Value::String(a)) => a == AUDIENCE,
            Some(serde_json::Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(AUDIENCE)),
            _ => false,
        };
        assert!(aud_ok, "accepted a token without the required audience");
    }
}

fn refused(e: &AuthError) {
    assert!(
        !matches!(e, AuthError::Missing),
        "a present token was refused as missing"
    );
}

/// Claims parsing behind a valid signature: `data` is the claims JSON of an HS256
/// token signed with the verifiers' secret.
pub fn token_claims(data: &[u8]) {
    let token = sign(HEADER.as_bytes(), data, Algorithm::HS256);
    let vs = verifiers();
    for (v, strict) in [(&vs.plain, false), (&vs.strict, true)] {
        let before = now();
        match v.verify(&token) {
            Ok(c) => accepted(v, strict, Some(data), &c, before),
            Err(e) => refused(&e),
        }
    }
}

/// Raw token strings, as they arrive in `Authorization`, `?token=`, the subprotocol
/// or a `refresh` frame.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vs = verifiers();
    for (v, strict) in [(&vs.plain, false), (&vs.strict, true)] {
        let before = now();
        match v.verify(text) {
            Ok(c) => {
                // Only HS256 is accepted, and only with a valid signature: the claims
                // part is then whatever was signed.
                let header = jsonwebtoken::decode_header(text)
                    .unwrap_or_else(|e| panic!("accepted a token without a header: {e}"));
                assert_eq!(header.alg, Algorithm::HS256, "accepted another algorithm");
                let claims = text
                    .split('.')
                    .nth(1)
                    .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok());
                accepted(v, strict, claims.as_deref(), &c, before);
            }
            Err(e) => refused(&e),
        }
    }
}

/// The HTTP publish body, as a single request and as a batch: never a panic; an
/// accepted body is JSON, nests no deeper than its payloads may, and counts at most
/// the targets the limits allow; a single request counts the same as a batch holding
/// only it.
pub fn publish_body(data: &[u8]) {
    let single = check_body(data, false);
    let batch = check_body(data, true);
    for (result, is_batch) in [(&single, false), (&batch, true)] {
        match result {
            Ok(n) => {
                let bound = if is_batch {
                    MAX_BATCH * MAX_TARGETS
                } else {
                    MAX_TARGETS
                };
                assert!(*n <= bound, "{n} publications from one body (most {bound})");
                serde_json::from_slice::<serde_json::Value>(data)
                    .unwrap_or_else(|e| panic!("accepted a body that is not JSON: {e}"));
                let around = if is_batch { 3 } else { 1 };
                assert!(
                    json_within(data, MAX_PAYLOAD_DEPTH + around),
                    "accepted a body nesting deeper than a payload may"
                );
            }
            Err(e) => assert!(!e.is_empty(), "refused without a reason"),
        }
    }
    if let Ok(n) = single {
        let mut wrapped = b"{\"messages\":[".to_vec();
        wrapped.extend_from_slice(data);
        wrapped.extend_from_slice(b"]}");
        assert_eq!(
            check_body(&wrapped, true),
            Ok(n),
            "a batch of one request counts differently from the request"
        );
    }
}
