//! Throwaway certificates (made with the `openssl` CLI) and TLS `redis-server`s.
//!
//! A TLS server keeps its plain loopback `port` for the harness's own commands, so
//! the harness needs no TLS client; the system under test gets [`RedisServer::tls_url`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::RedisServer;

/// A CA, a server and a client certificate signed by it, and an unrelated CA, in a
/// temporary directory that is removed on drop. Keys are EC P-256 (fast to make).
pub struct Certs {
    pub dir: PathBuf,
    /// The CA that signed `server_cert` and `client_cert`.
    pub ca: PathBuf,
    /// For `IP:127.0.0.1`, `DNS:localhost` and `DNS:redis.test`; usable for
    /// `serverAuth` and `clientAuth` (cluster nodes and replicas present it when
    /// they connect to each other).
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// `clientAuth` only, for `tls-auth-clients yes`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing here, for wrong-CA tests.
    pub other_ca: PathBuf,
}

/// The extensions of each certificate. Our own config file, so that the system's
/// `openssl.cnf` defaults (which differ between distributions) add nothing.
const CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
[ext_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ext_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = IP:127.0.0.1,DNS:localhost,DNS:redis.test
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[ext_client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

impl Certs {
    /// Makes a fresh set (about 0.1 s: four `openssl req` runs).
    pub fn generate() -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "tidings-certs-{}-{}",
            std::process::id(),
            crate::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("openssl.cnf"), CONFIG).unwrap();
        let certs = Certs {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            other_ca: dir.join("other-ca.crt"),
            dir,
        };
        certs.req("ca", "Tidings Test CA", "ext_ca", None);
        certs.req("other-ca", "Tidings Other CA", "ext_ca", None);
        certs.req("server", "redis.test", "ext_server", Some("ca"));
        certs.req("client", "tidings-client", "ext_client", Some("ca"));
        certs
    }

    /// Writes `<name>.key` and `<name>.crt`: self-signed, or signed by `<signer>`.
    fn req(&self, name: &str, cn: &str, ext: &str, signer: Option<&str>) {
        let file = |ext: &str| self.dir.join(format!("{name}.{ext}"));
        let mut cmd = Command::new("openssl");
        cmd.current_dir(&self.dir)
            .args(["req", "-x509", "-config", "openssl.cnf", "-extensions", ext])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "2", "-subj", &format!("/CN={cn}")])
            .arg("-keyout")
            .arg(file("key"))
            .arg("-out")
            .arg(file("crt"));
        if let Some(ca) = signer {
            // `req -x509 -CA` (OpenSSL 3) signs in one step, without a CSR file.
            cmd.args(["-CA", &format!("{ca}.crt"), "-CAkey", &format!("{ca}.key")]);
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("the openssl CLI must be installed");
        assert!(
            out.status.success(),
            "openssl req for {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `redis-server` arguments for TLS with this server certificate, copied into
    /// `into` (the server's own directory) so that the server outlives `self` and
    /// can still restart.
    pub(crate) fn server_args(&self, into: &Path, client_certs: bool) -> Vec<String> {
        let copy = |from: &Path, name: &str| {
            let to = into.join(name);
            std::fs::copy(from, &to).unwrap();
            to.to_str().unwrap().to_owned()
        };
        vec![
            "--tls-cert-file".into(),
            copy(&self.server_cert, "server.crt"),
            "--tls-key-file".into(),
            copy(&self.server_key, "server.key"),
            "--tls-ca-cert-file".into(),
            copy(&self.ca, "ca.crt"),
            "--tls-auth-clients".into(),
            if client_certs { "yes" } else { "no" }.into(),
        ]
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RedisServer {
    /// Starts a server that keeps nothing on disk and also listens with TLS on
    /// [`RedisServer::tls_port`]. `client_certs`: whether clients must present a
    /// certificate signed by `certs.ca` (`tls-auth-clients yes`). The plain `port`
    /// stays open on loopback for the harness.
    pub async fn start_tls(certs: &Certs, client_certs: bool) -> RedisServer {
        let mut server = RedisServer::new(&["--save", "", "--appendonly", "no"], false);
        let tls = certs.server_args(&server.dir, client_certs);
        server.args.extend(tls);
        server.tls_port = Some(0);
        server.launch().await
    }

    /// `rediss://127.0.0.1:<tls_port>`. Panics for a server without TLS.
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("not a TLS server (start_tls)");
        format!("rediss://127.0.0.1:{port}")
    }
}
