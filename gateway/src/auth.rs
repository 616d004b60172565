//! JWT verification. The accepted algorithms and keys come from configuration only:
//! a token's header picks among them (by `alg` and `kid`) but can never widen them,
//! so `alg: none` and RS/HS key confusion are refused.

use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use crate::config::JwtConfig;
use crate::error::GatewayError;

/// The claims Tidings reads from a client token.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// The user id; names the personal channel.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    /// Channel patterns the user may subscribe to (`news`, `room:*`, `*`).
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Channel patterns the user may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Channel patterns whose presence the user may read without subscribing.
    #[serde(default)]
    pub presence: Vec<String>,
    /// Public information shown to the members of the user's presence channels
    /// (at most `protocol::presence::MAX_INFO_BYTES` of JSON).
    #[serde(default)]
    pub info: Option<serde_json::Value>,
}

impl Claims {
    /// The checks beyond the signature: a valid user id, a bounded `info`.
    fn checked(self) -> Result<Self, AuthError> {
        protocol::channel::validate_user(&self.sub)
            .map_err(|e| AuthError::Invalid(format!("sub: {e}")))?;
        if let Some(info) = &self.info {
            let len = serde_json::to_string(info).map_or(usize::MAX, |s| s.len());
            if len > protocol::presence::MAX_INFO_BYTES {
                return Err(AuthError::Invalid(format!(
                    "the `info` claim is {len} bytes of JSON, more than {}",
                    protocol::presence::MAX_INFO_BYTES
                )));
            }
        }
        Ok(self)
    }
}

/// Why a token was refused; the message is safe to return to the client (it never
/// contains the token).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "missing token: send Authorization: Bearer, a tidings.token.<jwt> subprotocol or ?token="
    )]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

struct Key {
    key: DecodingKey,
    /// Algorithms this key may verify (from configuration and the key's type).
    algorithms: Vec<Algorithm>,
}

/// Verifies client JWTs against the configured keys.
pub struct Verifier {
    algorithms: Vec<Algorithm>,
    secret: Option<Key>,
    pem: Vec<Key>,
    jwks: HashMap<String, Key>,
    leeway: u64,
    issuer: Vec<String>,
    audience: Vec<String>,
    /// The key of demo tokens, in demo mode.
    demo: Option<Key>,
}

const HS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

fn parse_alg(name: &str) -> Result<Algorithm, GatewayError> {
    name.trim()
        .parse::<Algorithm>()
        .map_err(|_| GatewayError::Config {
            setting: "jwt-algorithms".into(),
            message: format!("unknown algorithm `{name}`"),
        })
}

fn cfg(setting: &'static str, message: String) -> GatewayError {
    GatewayError::Config {
        setting: setting.into(),
        message,
    }
}

fn load_pem(path: &Path) -> Result<Key, GatewayError> {
    let pem = std::fs::read(path).map_err(|e| {
        cfg(
            "jwt-public-keys",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok(Key {
            key,
            algorithms: RSA.to_vec(),
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok(Key {
            key,
            algorithms: vec![Algorithm::ES256, Algorithm::ES384],
        });
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok(Key {
            key,
            algorithms: vec![Algorithm::EdDSA],
        });
    }
    Err(cfg(
        "jwt-public-keys",
        format!(
            "{} is not an RSA, EC or Ed25519 public key in PEM",
            path.display()
        ),
    ))
}

fn load_jwks(path: &Path) -> Result<HashMap<String, Key>, GatewayError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        cfg(
            "jwt-jwks-file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| cfg("jwt-jwks-file", format!("{}: {e}", path.display())))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| cfg("jwt-jwks-file", "every key needs a `kid`".into()))?;
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| cfg("jwt-jwks-file", format!("key `{kid}`: {e}")))?;
        // A symmetric (`oct`) key in a key set meant for public keys would let
        // anyone who can read the set mint tokens: refused whatever its `alg`.
        if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            return Err(cfg(
                "jwt-jwks-file",
                format!("key `{kid}`: symmetric (oct) keys are not accepted; use jwt-secret"),
            ));
        }
        let algorithms = match jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
        {
            Some(a) => vec![a],
            None => match key.family() {
                jsonwebtoken::AlgorithmFamily::Rsa => RSA.to_vec(),
                jsonwebtoken::AlgorithmFamily::Ec => vec![Algorithm::ES256, Algorithm::ES384],
                jsonwebtoken::AlgorithmFamily::Ed => vec![Algorithm::EdDSA],
                // Refused above.
                jsonwebtoken::AlgorithmFamily::Hmac => Vec::new(),
            },
        };
        keys.insert(kid, Key { key, algorithms });
    }
    Ok(keys)
}

impl Verifier {
    /// A verifier of the configured keys; in `demo` mode also of demo tokens.
    pub fn new(c: &JwtConfig, demo: bool) -> Result<Self, GatewayError> {
        let secret = c.secret.as_ref().map(|s| Key {
            key: DecodingKey::from_secret(s),
            algorithms: HS.to_vec(),
        });
        let pem = c
            .public_keys
            .iter()
            .map(|p| load_pem(p))
            .collect::<Result<Vec<_>, _>>()?;
        let jwks = match &c.jwks_file {
            Some(p) => load_jwks(p)?,
            None => HashMap::new(),
        };
        let algorithms = match &c.algorithms {
            Some(names) => names
                .iter()
                .map(|n| parse_alg(n))
                .collect::<Result<Vec<_>, _>>()?,
            None => {
                // Without an explicit list: the most common algorithm of each key.
                let mut algs = Vec::new();
                if secret.is_some() {
                    algs.push(Algorithm::HS256);
                }
                for k in pem.iter().chain(jwks.values()) {
                    let a = k.algorithms[0];
                    if !algs.contains(&a) {
                        algs.push(a);
                    }
                }
                algs
            }
        };
        if algorithms.is_empty() {
            return Err(cfg("jwt-algorithms", "no algorithm accepted".into()));
        }
        for a in &algorithms {
            let has_key = secret
                .iter()
                .chain(pem.iter())
                .chain(jwks.values())
                .any(|k| k.algorithms.contains(a));
            if !has_key {
                return Err(cfg(
                    "jwt-algorithms",
                    format!("no configured key can verify {a:?}"),
                ));
            }
        }
        let demo = match (demo, c.secret.as_ref()) {
            (true, Some(s)) => Some(Key {
                key: DecodingKey::from_secret(
                    &demo_key(s).map_err(|e| cfg("demo", e.to_string()))?,
                ),
                algorithms: vec![Algorithm::HS256],
            }),
            (true, None) => return Err(cfg("demo", "demo mode needs --jwt-secret".into())),
            (false, _) => None,
        };
        Ok(Self {
            algorithms,
            secret,
            pem,
            jwks,
            demo,
            leeway: c.leeway.as_secs(),
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
        })
    }

    /// A demo token: the demo key, HS256, and a `demo-` subject; refused outside
    /// demo mode.
    fn verify_demo(&self, token: &str, alg: Algorithm) -> Result<Claims, AuthError> {
        let key = self
            .demo
            .as_ref()
            .filter(|_| alg == Algorithm::HS256)
            .ok_or_else(|| {
                AuthError::Invalid("demo tokens are accepted in demo mode only".into())
            })?;
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.iss = None;
        v.validate_aud = false;
        v.set_required_spec_claims(&["exp", "sub"]);
        let data = decode::<Claims>(token, &key.key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        if !data.claims.sub.starts_with(DEMO_PREFIX) {
            return Err(AuthError::Invalid("a demo token names a demo- user".into()));
        }
        data.claims.checked()
    }

    /// Mints a demo token for demo user `name` (the subject is `demo-<name>`).
    pub fn mint_demo(
        &self,
        secret: &[u8],
        name: &str,
        ttl_secs: u64,
        rights: &[String],
    ) -> Result<(String, String), jsonwebtoken::errors::Error> {
        let sub = format!("{DEMO_PREFIX}{name}");
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(DEMO_KID.to_owned());
        // The demo's rooms list their members by this name.
        let info = serde_json::json!({ "name": name });
        let extra = Extra {
            presence: &[],
            info: Some(&info),
        };
        let token = mint(
            header,
            &demo_key(secret)?,
            &sub,
            ttl_secs,
            rights,
            rights,
            extra,
        )?;
        Ok((token, sub))
    }

    /// The leeway applied to `exp`, in seconds.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let alg = header.alg;
        if header.kid.as_deref() == Some(DEMO_KID) {
            return self.verify_demo(token, alg);
        }
        if !self.algorithms.contains(&alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {alg:?} not accepted"
            )));
        }
        let key = if HS.contains(&alg) {
            self.secret.as_ref()
        } else if let Some(kid) = header.kid.as_ref().filter(|_| !self.jwks.is_empty()) {
            // With a JWKS configured, a `kid` must name one of its keys: an unknown
            // kid is refused rather than tried against other keys.
            self.jwks.get(kid)
        } else {
            self.pem.iter().find(|k| k.algorithms.contains(&alg))
        };
        let key = key
            .filter(|k| k.algorithms.contains(&alg))
            .ok_or_else(|| AuthError::Invalid(format!("no key for algorithm {alg:?}")))?;
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        // jsonwebtoken only checks `iss`/`aud` when present: configured ones are required.
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_empty() {
            v.iss = None;
        } else {
            v.set_issuer(&self.issuer);
            required.push("iss");
        }
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        let data = decode::<Claims>(token, &key.key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        data.claims.checked()
    }
}

/// Mints an HS256 token (for `gateway mint-token` and tests).
pub fn mint_hs256(
    secret: &[u8],
    sub: &str,
    ttl_secs: u64,
    subscribe: &[String],
    publish: &[String],
) -> Result<String, jsonwebtoken::errors::Error> {
    mint_hs256_with(secret, sub, ttl_secs, subscribe, publish, Extra::default())
}

/// Claims of a minted token beyond its rights.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extra<'a> {
    /// Channel patterns whose presence the user may read.
    pub presence: &'a [String],
    /// Public information for presence.
    pub info: Option<&'a serde_json::Value>,
}

/// Mints an HS256 token with presence claims.
pub fn mint_hs256_with(
    secret: &[u8],
    sub: &str,
    ttl_secs: u64,
    subscribe: &[String],
    publish: &[String],
    extra: Extra<'_>,
) -> Result<String, jsonwebtoken::errors::Error> {
    mint(
        jsonwebtoken::Header::new(Algorithm::HS256),
        secret,
        sub,
        ttl_secs,
        subscribe,
        publish,
        extra,
    )
}

/// The subject prefix of every demo user: a demo token never names a real user.
pub const DEMO_PREFIX: &str = "demo-";
/// The `kid` of demo tokens, which selects the demo key.
const DEMO_KID: &str = "tidings-demo";

/// The key demo tokens are signed with: derived from the gateway's secret (so every
/// node sharing it agrees) but not the secret itself, so a demo token is refused by
/// any node not in demo mode and can never pass for a production token.
fn demo_key(secret: &[u8]) -> Result<Vec<u8>, jsonwebtoken::errors::Error> {
    let mac = jsonwebtoken::crypto::sign(
        b"tidings demo-mode token key v1",
        &jsonwebtoken::EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )?;
    Ok(mac.into_bytes())
}

fn mint(
    header: jsonwebtoken::Header,
    secret: &[u8],
    sub: &str,
    ttl_secs: u64,
    subscribe: &[String],
    publish: &[String],
    extra: Extra<'_>,
) -> Result<String, jsonwebtoken::errors::Error> {
    #[derive(serde::Serialize)]
    struct Mint<'a> {
        sub: &'a str,
        exp: u64,
        iat: u64,
        subscribe: &'a [String],
        publish: &'a [String],
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        presence: &'a [String],
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<&'a serde_json::Value>,
    }
    let now = jsonwebtoken::get_current_timestamp();
    jsonwebtoken::encode(
        &header,
        &Mint {
            sub,
            exp: now + ttl_secs,
            iat: now,
            subscribe,
            publish,
            presence: extra.presence,
            info: extra.info,
        },
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const SECRET: &[u8] = b"0123456789abcdef0123";

    fn verifier_in(demo: bool) -> Verifier {
        Verifier::new(
            &JwtConfig {
                secret: Some(SECRET.to_vec()),
                leeway: std::time::Duration::from_secs(0),
                ..Default::default()
            },
            demo,
        )
        .unwrap()
    }

    fn verifier() -> Verifier {
        verifier_in(false)
    }

    #[test]
    fn demo_tokens_are_their_own() {
        let demo = verifier_in(true);
        let (t, sub) = demo
            .mint_demo(SECRET, "alice", 60, &["room:*".into()])
            .unwrap();
        assert_eq!(sub, "demo-alice");
        assert_eq!(demo.verify(&t).unwrap().sub, "demo-alice");
        // A node that is not in demo mode refuses it, though it shares the secret.
        assert!(verifier().verify(&t).is_err());
        // The demo key cannot sign a token for a real user...
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(DEMO_KID.into());
        let forged = mint(
            header,
            &demo_key(SECRET).unwrap(),
            "alice",
            60,
            &[],
            &[],
            Extra::default(),
        )
        .unwrap();
        assert!(demo.verify(&forged).is_err());
        // ...and the production secret cannot pass for the demo key.
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(DEMO_KID.into());
        let other = mint(header, SECRET, "demo-alice", 60, &[], &[], Extra::default()).unwrap();
        assert!(demo.verify(&other).is_err());
        // Production tokens still work in demo mode.
        let t = mint_hs256(SECRET, "alice", 60, &[], &[]).unwrap();
        assert_eq!(demo.verify(&t).unwrap().sub, "alice");
    }

    #[test]
    fn accepts_valid_and_refuses_expired() {
        let v = verifier();
        let t = mint_hs256(SECRET, "alice", 60, &["news".into()], &[]).unwrap();
        let c = v.verify(&t).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.subscribe, vec!["news".to_string()]);
        let expired = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "a", "exp": 1000}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(matches!(v.verify(&expired), Err(AuthError::Expired)));
    }

    #[test]
    fn refuses_alg_none_wrong_key_and_missing_exp() {
        let v = verifier();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(br#"{"sub":"a","exp":99999999999}"#)
        );
        assert!(matches!(v.verify(&none), Err(AuthError::Invalid(_))));
        let other = mint_hs256(b"another-secret-of-16", "alice", 60, &[], &[]).unwrap();
        assert!(matches!(v.verify(&other), Err(AuthError::Invalid(_))));
        let no_exp = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "a"}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(matches!(v.verify(&no_exp), Err(AuthError::Invalid(_))));
        // HS384 is not in the accepted list even though the secret could verify it.
        let hs384 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS384),
            &serde_json::json!({"sub": "a", "exp": 99999999999u64}),
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(matches!(v.verify(&hs384), Err(AuthError::Invalid(_))));
        assert!(v.verify("garbage").is_err());
    }
}
