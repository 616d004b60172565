//! Seeds of the gateway targets: the request body examples of docs/api/openapi.yaml
//! (publish_body), the claims example of docs/protocol.md section 4 and variants of
//! it (token_claims), and the `refresh` example's token plus those claims signed
//! (token). `gateway/tests/fuzz_props.rs` keeps `fuzz/corpus/` in sync with them
//! like the protocol seeds (`TIDINGS_FUZZ_WRITE_SEEDS=1` rewrites them).

use jsonwebtoken::Algorithm;

use super::gateway_checks::{AUDIENCE, HEADER, ISSUER, sign};
use super::seeds::{Seeds, deep_json, doc_examples, frame_type};

/// The JSON request bodies of the `requestBody` examples of the publish paths
/// (`/api/v1/publish*`) of an OpenAPI document (flow-style YAML maps, which are
/// JSON, and a block list of such maps under `messages:`).
pub fn openapi_bodies(yaml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut in_request = false;
    let mut publish_path = false;
    let mut name = String::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if line.starts_with("  /") {
            publish_path = t.starts_with("/api/v1/publish");
        }
        if t == "requestBody:" {
            in_request = publish_path;
        } else if t.starts_with("responses:") {
            in_request = false;
        }
        if !in_request {
            continue;
        }
        if let Some(n) = t
            .strip_suffix(':')
            .filter(|n| !n.contains(' ') && *n != "value")
        {
            name = n.to_owned();
        }
        if let Some(json) = t.strip_prefix("value: {") {
            out.push((name.clone(), format!("{{{json}")));
        } else if t == "value:" && lines.peek().is_some_and(|l| l.trim() == "messages:") {
            lines.next();
            let mut items = Vec::new();
            while let Some(item) = lines.peek().and_then(|l| l.trim().strip_prefix("- ")) {
                items.push(item.to_owned());
                lines.next();
            }
            out.push((
                name.clone(),
                format!(r#"{{"messages": [{}]}}"#, items.join(", ")),
            ));
        }
    }
    for (n, body) in &out {
        serde_json::from_str::<serde_json::Value>(body)
            .unwrap_or_else(|e| panic!("openapi example {n} is not JSON: {e}: {body}"));
    }
    out
}

/// Far in the future (2100-01-01), so signed seeds stay valid.
const LATER: u64 = 4_102_444_800;

/// The seeds of the three gateway targets, from docs/api/openapi.yaml and
/// docs/protocol.md.
pub fn gateway_seeds(openapi_yaml: &str, protocol_md: &str) -> Vec<(&'static str, Seeds)> {
    let mut body = Seeds::new();
    for (n, (name, json)) in openapi_bodies(openapi_yaml).into_iter().enumerate() {
        body.push((format!("openapi-{n:02}-{name}.json"), json.into_bytes()));
    }
    for depth in [64, 65] {
        body.push((
            format!("payload-depth-{depth}.json"),
            format!(r#"{{"user":"alice","payload":{}}}"#, deep_json(depth)).into_bytes(),
        ));
    }

    let examples = doc_examples(protocol_md);
    let doc_claims = examples
        .iter()
        .find(|e| e.json.contains("\"sub\"") && e.json.contains("\"exp\""))
        .map(|e| e.json.clone())
        .unwrap_or_else(|| panic!("docs/protocol.md lost its claims example"));
    let v: serde_json::Value =
        serde_json::from_str(&doc_claims).unwrap_or_else(|e| panic!("claims example: {e}"));
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = v.clone();
        f(&mut c);
        c.to_string()
    };
    let claims: Vec<(&str, String)> = vec![
        ("doc-claims", doc_claims.clone()),
        ("doc-claims-valid", with(&|c| c["exp"] = LATER.into())),
        (
            "issuer-audience",
            with(&|c| {
                c["exp"] = LATER.into();
                c["iss"] = ISSUER.into();
                c["aud"] = serde_json::json!(["other", AUDIENCE]);
            }),
        ),
        (
            "nbf-future",
            with(&|c| {
                c["exp"] = LATER.into();
                c["nbf"] = (LATER - 1).into();
            }),
        ),
        ("exp-max", with(&|c| c["exp"] = u64::MAX.into())),
        ("exp-float", with(&|c| c["exp"] = serde_json::json!(4.1e9))),
        (
            "bad-sub",
            with(&|c| {
                c["exp"] = LATER.into();
                c["sub"] = "al ice".into();
            }),
        ),
        (
            "deep-claim",
            with(&|c| c["exp"] = LATER.into()).replacen(
                '{',
                &format!(r#"{{"x":{},"#, deep_json(200)),
                1,
            ),
        ),
    ];
    let mut token_claims = Seeds::new();
    let mut token = Seeds::new();
    for (name, json) in &claims {
        token_claims.push((format!("{name}.json"), json.clone().into_bytes()));
        token.push((
            format!("{name}.jwt"),
            sign(HEADER.as_bytes(), json.as_bytes(), Algorithm::HS256).into_bytes(),
        ));
    }
    let valid = &claims[1].1;
    token.push((
        "hs384.jwt".into(),
        sign(
            br#"{"alg":"HS384","typ":"JWT"}"#,
            valid.as_bytes(),
            Algorithm::HS384,
        )
        .into_bytes(),
    ));
    let none = sign(
        br#"{"alg":"none","typ":"JWT"}"#,
        valid.as_bytes(),
        Algorithm::HS256,
    );
    let unsigned = none
        .rsplit_once('.')
        .map(|(m, _)| format!("{m}."))
        .unwrap_or_default();
    token.push(("alg-none.jwt".into(), unsigned.into_bytes()));
    token.push((
        "kid.jwt".into(),
        sign(
            br#"{"alg":"HS256","kid":"k1"}"#,
            valid.as_bytes(),
            Algorithm::HS256,
        )
        .into_bytes(),
    ));
    // The tokens of the `refresh` examples (one seed each: the same name twice would
    // make the corpus hold only the last one).
    let refreshes = examples
        .iter()
        .filter(|e| frame_type(&e.json).as_deref() == Some("refresh"));
    for (i, e) in refreshes.enumerate() {
        let v: serde_json::Value = serde_json::from_str(&e.json).unwrap_or_default();
        if let Some(t) = v.get("token").and_then(|t| t.as_str()) {
            token.push((format!("doc-refresh-{i}.jwt"), t.as_bytes().to_vec()));
        }
    }
    vec![
        ("publish_body", body),
        ("token_claims", token_claims),
        ("token", token),
    ]
}
