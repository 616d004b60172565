//! Client JWT verification end to end: public keys made at test time with the
//! `openssl` CLI (RSA, EC P-256, Ed25519), key confusion, JWKS key selection by
//! `kid`, issuer/audience/nbf checks and startup errors for bad key settings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod handshake_util;
mod support;

use handshake_util::{
    KeyPair, Node, TempDir, claims, hs256, now, run_to_exit, sign, upgrade_bearer, ws_connect,
};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use support::{Client, Gateway};

/// Asserts that a bearer upgrade with `token` is refused with 401.
async fn assert_401(addr: std::net::SocketAddr, what: &str, token: &str) {
    let r = upgrade_bearer(addr, token).await;
    assert_eq!(r.status, 401, "{what}: {r:?}");
    r.assert_refused(401, "unauthorized");
}

/// Asserts that a real client with `token` gets in as `user`.
async fn assert_accepted(addr: std::net::SocketAddr, what: &str, token: &str, user: &str) {
    match ws_connect(addr, token).await {
        Ok(c) => assert_eq!(c.user, user, "{what}"),
        Err(status) => panic!("{what}: refused with {status}"),
    }
}

#[tokio::test]
async fn public_keys_verify_rs256_es256_and_eddsa() {
    let dir = TempDir::new("pubkeys");
    let rsa = KeyPair::generate(&dir, "rsa", "rsa");
    let ec = KeyPair::generate(&dir, "ec", "ec");
    let ed = KeyPair::generate(&dir, "ed", "ed25519");
    let other_rsa = KeyPair::generate(&dir, "other", "rsa");
    let keys = [
        rsa.public_path.as_str(),
        ec.public_path.as_str(),
        ed.public_path.as_str(),
    ]
    .join(",");
    let node = Node::start(&["--jwt-public-keys", &keys]).await;

    let rs = sign(Algorithm::RS256, &rsa.rsa_key(), None, &claims("rsa-user"));
    assert_accepted(node.addr, "RS256", &rs, "rsa-user").await;
    let es = sign(Algorithm::ES256, &ec.ec_key(), None, &claims("ec-user"));
    assert_accepted(node.addr, "ES256", &es, "ec-user").await;
    let eddsa = sign(Algorithm::EdDSA, &ed.ed_key(), None, &claims("ed-user"));
    assert_accepted(node.addr, "EdDSA", &eddsa, "ed-user").await;

    let refused = [
        (
            "RS256 by a key not configured",
            sign(
                Algorithm::RS256,
                &other_rsa.rsa_key(),
                None,
                &claims("rsa-user"),
            ),
        ),
        (
            "PS256 is not inferred from an RSA key",
            sign(Algorithm::PS256, &rsa.rsa_key(), None, &claims("rsa-user")),
        ),
        ("HS256 without any secret", hs256(&claims("hs-user"))),
        (
            "expired RS256",
            sign(
                Algorithm::RS256,
                &rsa.rsa_key(),
                None,
                &json!({"sub": "rsa-user", "exp": now() - 10}),
            ),
        ),
    ];
    for (what, t) in &refused {
        assert_401(node.addr, what, t).await;
    }
    assert_eq!(node.attempts("ok").await, 3.0);
    assert_eq!(node.attempts("unauthorized").await, refused.len() as f64);

    // An explicit list widens what one key verifies.
    let node = Node::start(&[
        "--jwt-public-keys",
        &rsa.public_path,
        "--jwt-algorithms",
        "RS256,PS256",
    ])
    .await;
    let ps = sign(Algorithm::PS256, &rsa.rsa_key(), None, &claims("ps-user"));
    assert_accepted(node.addr, "PS256 when listed", &ps, "ps-user").await;
    assert_accepted(node.addr, "RS256 when listed", &rs, "rsa-user").await;
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let dir = TempDir::new("confusion");
    let rsa = KeyPair::generate(&dir, "rsa", "rsa");
    let public_as_secret = EncodingKey::from_secret(&rsa.public_pem);
    let confused: Vec<(String, String)> = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]
        .into_iter()
        .map(|alg| {
            (
                format!("{alg:?} keyed with the RSA public key PEM"),
                sign(alg, &public_as_secret, None, &claims("mallory")),
            )
        })
        .collect();
    let good = sign(Algorithm::RS256, &rsa.rsa_key(), None, &claims("alice"));

    for args in [
        vec!["--jwt-public-keys", rsa.public_path.as_str()],
        vec![
            "--jwt-public-keys",
            rsa.public_path.as_str(),
            "--jwt-algorithms",
            "RS256",
        ],
    ] {
        let node = Node::start(&args).await;
        for (what, t) in &confused {
            assert_401(node.addr, &format!("{args:?}: {what}"), t).await;
        }
        assert_accepted(node.addr, "RS256 control", &good, "alice").await;
        assert_eq!(node.attempts("unauthorized").await, confused.len() as f64);
        assert_eq!(node.attempts("ok").await, 1.0);
    }

    // A secret-only gateway refuses public-key tokens.
    let gw = Gateway::start().await;
    assert_401(gw.addr, "RS256 on a secret-only gateway", &good).await;
}

#[tokio::test]
async fn jwks_selects_the_key_by_kid() {
    let dir = TempDir::new("jwks");
    let one = KeyPair::generate(&dir, "one", "rsa");
    let two = KeyPair::generate(&dir, "two", "rsa");
    let jwks = json!({"keys": [one.rsa_jwk("key-1", Some("RS256")), two.rsa_jwk("key-2", None)]});
    let path = dir.file("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    let node = Node::start(&["--jwt-jwks-file", &path]).await;

    let by = |key: &KeyPair, kid: Option<&str>, sub: &str| {
        sign(Algorithm::RS256, &key.rsa_key(), kid, &claims(sub))
    };
    assert_accepted(node.addr, "key-1", &by(&one, Some("key-1"), "one"), "one").await;
    assert_accepted(node.addr, "key-2", &by(&two, Some("key-2"), "two"), "two").await;

    let refused = [
        ("kid of the other key", by(&two, Some("key-1"), "x")),
        ("kid of the other key", by(&one, Some("key-2"), "x")),
        ("unknown kid", by(&one, Some("key-3"), "x")),
        ("no kid", by(&one, None, "x")),
        (
            "PS256 for a key pinned to RS256",
            sign(
                Algorithm::PS256,
                &one.rsa_key(),
                Some("key-1"),
                &claims("x"),
            ),
        ),
        (
            "HS256 keyed with the public key PEM",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(&one.public_pem),
                Some("key-1"),
                &claims("x"),
            ),
        ),
    ];
    for (what, t) in &refused {
        assert_401(node.addr, what, t).await;
    }
    assert_eq!(node.attempts("ok").await, 2.0);
    assert_eq!(node.attempts("unauthorized").await, refused.len() as f64);
}

#[tokio::test]
async fn issuer_audience_and_not_before() {
    let gw = Gateway::builder()
        .args(&[
            "--jwt-issuer",
            "https://issuer.test,https://other-issuer.test",
            "--jwt-audience",
            "tidings",
        ])
        .start()
        .await;
    let now = now();
    let exp = now + 60;
    let accepted = [
        json!({"sub": "a", "exp": exp, "iss": "https://issuer.test", "aud": "tidings"}),
        json!({"sub": "a", "exp": exp, "iss": "https://other-issuer.test", "aud": "tidings"}),
        json!({"sub": "a", "exp": exp, "iss": "https://issuer.test", "aud": ["other", "tidings"]}),
        json!({"sub": "a", "exp": exp, "iss": "https://issuer.test", "aud": "tidings", "nbf": now - 30}),
    ];
    for c in &accepted {
        let client = Client::connect_with(&gw, support::Connect::new(&hs256(c))).await;
        assert!(client.is_ok(), "{c}: {:?}", client.err());
    }
    let refused = [
        json!({"sub": "a", "exp": exp, "iss": "https://evil.test", "aud": "tidings"}),
        json!({"sub": "a", "exp": exp, "iss": "https://issuer.test", "aud": "someone-else"}),
        json!({"sub": "a", "exp": exp, "iss": "https://issuer.test", "aud": ["x", "y"]}),
        json!({"sub": "a", "exp": exp, "aud": "tidings"}),
        json!({"sub": "a", "exp": exp, "iss": "https://issuer.test"}),
        json!({"sub": "a", "exp": exp, "iss": "https://issuer.test", "aud": "tidings", "nbf": now + 60}),
    ];
    for c in &refused {
        assert_401(gw.addr, &c.to_string(), &hs256(c)).await;
    }
    assert_eq!(
        gw.metric(&handshake_util::attempts("ok")).await,
        accepted.len() as f64
    );
    assert_eq!(
        gw.metric(&handshake_util::attempts("unauthorized")).await,
        refused.len() as f64
    );

    // Without issuer/audience settings those claims are not checked, but nbf is.
    let gw = Gateway::start().await;
    let any = json!({"sub": "a", "exp": exp, "iss": "whoever", "aud": "whatever"});
    assert!(
        Client::connect_with(&gw, support::Connect::new(&hs256(&any)))
            .await
            .is_ok()
    );
    let early = json!({"sub": "a", "exp": exp, "nbf": now + 60});
    assert_401(gw.addr, "nbf in the future", &hs256(&early)).await;
}

#[tokio::test]
async fn bad_key_settings_stop_the_gateway_at_startup() {
    let dir = TempDir::new("startup");
    let rsa = KeyPair::generate(&dir, "rsa", "rsa");
    let not_a_key = dir.file("not-a-key.pem");
    std::fs::write(&not_a_key, "hello\n").unwrap();
    let bad_jwks = dir.file("bad-jwks.json");
    std::fs::write(&bad_jwks, r#"{"keys": [{"kty": "RSA"}]}"#).unwrap();
    let secret = support::SECRET;
    let listen = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--jwt-secret", secret, "--heartbeat-interval", "abc"],
            "heartbeat-interval",
        ),
        (vec![], "jwt-secret"),
        (vec!["--jwt-secret", "short"], "jwt-secret"),
        (vec!["--jwt-public-keys", "/nonexistent"], "jwt-public-keys"),
        (vec!["--jwt-public-keys", &not_a_key], "jwt-public-keys"),
        (vec!["--jwt-jwks-file", "/nonexistent"], "jwt-jwks-file"),
        (vec!["--jwt-jwks-file", &bad_jwks], "jwt-jwks-file"),
        (
            vec!["--jwt-secret", secret, "--jwt-algorithms", "RS256"],
            "jwt-algorithms",
        ),
        (
            vec!["--jwt-secret", secret, "--jwt-algorithms", "XX256"],
            "jwt-algorithms",
        ),
        (
            vec![
                "--jwt-public-keys",
                &rsa.public_path,
                "--jwt-algorithms",
                "RS256,HS256",
            ],
            "jwt-algorithms",
        ),
    ];
    for (args, setting) in cases {
        let mut full = listen.to_vec();
        full.extend(&args);
        let (status, output) = run_to_exit(&full).await;
        assert!(!status.success(), "{args:?} started: {output}");
        assert!(
            output.contains(setting),
            "{args:?}: error does not name {setting}: {output}"
        );
        assert!(!output.contains("listening"), "{args:?}: {output}");
    }
}
