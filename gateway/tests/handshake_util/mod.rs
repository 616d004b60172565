//! Helpers for the handshake and JWT black-box tests, on top of `support`: raw
//! upgrade requests, gateways started with arbitrary key settings (no test secret),
//! a bare WebSocket client for those, key generation with the `openssl` CLI and
//! token signing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use protocol::frame::ServerFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::support::{self, Gateway, WAIT};

/// A valid `Sec-WebSocket-Key` (16 bytes, base64).
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// An HTTP response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (Null when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Asserts a refusal: the status, a JSON `{error, message}` body with the given
    /// error code, and nothing that would complete an upgrade.
    pub fn assert_refused(&self, status: u16, error: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        let body = self.json();
        assert_eq!(body["error"], error, "{self:?}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{self:?}"
        );
        assert_eq!(
            body.as_object().map(|o| o.len()),
            Some(2),
            "body has exactly error and message: {self:?}"
        );
        assert!(self.header("sec-websocket-accept").is_none(), "{self:?}");
        assert!(self.header("upgrade").is_none(), "{self:?}");
    }

    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Sends `request` verbatim and reads one response (head plus Content-Length body).
pub async fn raw_request(addr: SocketAddr, request: &str) -> RawResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(WAIT, read_response(&mut s))
        .await
        .expect("response timed out")
}

async fn read_response(s: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    }
}

/// A well-formed WebSocket upgrade request for `GET path`, plus `extra` headers.
pub async fn upgrade(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> RawResponse {
    let mut headers = vec![
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", WS_KEY),
    ];
    headers.extend_from_slice(extra);
    request(addr, "GET", path, &headers).await
}

/// `method path` with exactly `headers` (plus Host).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_request(addr, &req).await
}

/// An upgrade carrying `token` as a bearer header.
pub async fn upgrade_bearer(addr: SocketAddr, token: &str) -> RawResponse {
    let auth = format!("Bearer {token}");
    upgrade(addr, "/ws", &[("Authorization", &auth)]).await
}

/// A gateway process started with exactly the given key settings (unlike
/// `support::Gateway`, no `--jwt-secret` or `--api-keys` is added); killed on drop.
pub struct Node(Gateway);

impl Node {
    pub async fn start(args: &[&str]) -> Node {
        let gw = Gateway::builder()
            .unset("--jwt-secret")
            .unset("--api-keys")
            .args(args)
            .start()
            .await;
        Node(gw)
    }

    pub async fn attempts(&self, result: &str) -> f64 {
        self.metric(&attempts(result)).await
    }
}

impl std::ops::Deref for Node {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.0
    }
}

/// The attempts counter sample for one result label.
pub fn attempts(result: &str) -> String {
    format!("tidings_connection_attempts_total{{result=\"{result}\"}}")
}

fn gateway_command() -> Command {
    let mut cmd = testkit::gateway::command();
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs the gateway binary with exactly `args`, expecting it to exit on its own;
/// returns the exit status and everything it wrote.
pub async fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut child = gateway_command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let readers = [
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gateway {args:?} did not exit");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let text = readers
        .into_iter()
        .map(|r| r.join().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    (status, text)
}

/// What a successful bare client handshake yielded.
#[derive(Debug)]
pub struct Connected {
    /// The subprotocol the server selected.
    pub protocol: Option<String>,
    /// `user` of the welcome frame.
    pub user: String,
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// Connects a real WebSocket client to `/ws` with a bearer token and reads the
/// JSON welcome; on refusal returns the HTTP status.
pub async fn ws_connect(addr: SocketAddr, token: &str) -> Result<Connected, u16> {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let (mut ws, resp) = match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")
    {
        Ok(ok) => ok,
        Err(WsError::Http(resp)) => return Err(resp.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    };
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("welcome timed out")
        .expect("closed before welcome")
        .unwrap();
    let Message::Text(text) = &first else {
        panic!("expected a text welcome, got {first:?}");
    };
    let user = match protocol::frame::decode_server(protocol::Encoding::Json, text.as_bytes()) {
        Ok(ServerFrame::Welcome(w)) => w.user,
        other => panic!("expected welcome, got {other:?}"),
    };
    let protocol = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    Ok(Connected { protocol, user, ws })
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "tidings-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// The path of `file` as a `&str`-friendly string.
    pub fn file(&self, file: &str) -> String {
        self.path(file).to_str().unwrap().to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `openssl` and returns its stdout; panics with its stderr on failure.
pub fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI is needed for these tests");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A key pair made with `openssl genpkey`: `<name>.pem` (PKCS#8 private key) and
/// `<name>.pub.pem` (SubjectPublicKeyInfo) in `dir`.
pub struct KeyPair {
    pub private_pem: Vec<u8>,
    pub public_pem: Vec<u8>,
    pub public_path: String,
}

impl KeyPair {
    /// `kind` is `rsa`, `ec` (P-256) or `ed25519`.
    pub fn generate(dir: &TempDir, name: &str, kind: &str) -> KeyPair {
        let private_path = dir.file(&format!("{name}.pem"));
        let public_path = dir.file(&format!("{name}.pub.pem"));
        let mut args = vec!["genpkey", "-out", &private_path, "-algorithm"];
        match kind {
            "rsa" => args.extend(["RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
            "ec" => args.extend(["EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
            "ed25519" => args.push("ED25519"),
            other => panic!("unknown key kind {other}"),
        }
        openssl(&args);
        openssl(&[
            "pkey",
            "-in",
            &private_path,
            "-pubout",
            "-out",
            &public_path,
        ]);
        KeyPair {
            private_pem: std::fs::read(&private_path).unwrap(),
            public_pem: std::fs::read(&public_path).unwrap(),
            public_path,
        }
    }

    /// The RSA public key as a JWK (`n` from `openssl rsa -modulus`, `e` = 65537).
    pub fn rsa_jwk(&self, kid: &str, alg: Option<&str>) -> serde_json::Value {
        let out = openssl(&[
            "rsa",
            "-pubin",
            "-in",
            &self.public_path,
            "-noout",
            "-modulus",
        ]);
        let hex = out.trim().strip_prefix("Modulus=").expect("modulus");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let mut jwk =
            serde_json::json!({"kty": "RSA", "use": "sig", "kid": kid, "n": n, "e": "AQAB"});
        if let Some(alg) = alg {
            jwk["alg"] = alg.into();
        }
        jwk
    }

    pub fn rsa_key(&self) -> EncodingKey {
        EncodingKey::from_rsa_pem(&self.private_pem).unwrap()
    }

    pub fn ec_key(&self) -> EncodingKey {
        EncodingKey::from_ec_pem(&self.private_pem).unwrap()
    }

    pub fn ed_key(&self) -> EncodingKey {
        EncodingKey::from_ed_pem(&self.private_pem).unwrap()
    }
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims for `sub` valid for a minute.
pub fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({"sub": sub, "exp": now() + 60, "iat": now()})
}

/// Signs `claims` with `alg`, optionally naming a `kid`.
pub fn sign(
    alg: Algorithm,
    key: &EncodingKey,
    kid: Option<&str>,
    claims: &serde_json::Value,
) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// HS256 with the test secret.
pub fn hs256(claims: &serde_json::Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(support::SECRET.as_bytes()),
        None,
        claims,
    )
}

/// An unsigned `alg: none` token.
pub fn alg_none(claims: &serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}
