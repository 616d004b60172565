//! How a connection to Redis is opened, for the publisher's command connections and
//! the gateway's subscriber connections alike: TCP with `TCP_NODELAY` and keepalive
//! (or a Unix socket), then TLS when the URL says `rediss://`, verified against the
//! system's roots or a CA bundle, optionally with a client certificate (mutual TLS)
//! and a server name other than the host. Credentials given here ([`RedisOptions`])
//! take the place of those in URLs, so a password can come from a mounted secret
//! file instead of a URL that ends up in a process listing.
//!
//! Everything that can be checked before connecting is checked when the
//! [`Connector`] is built (files readable, PEM valid, key matching the certificate),
//! so a mistake fails at startup naming the setting, not at the first reconnect.

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A password or other secret: shown as `***` by `Debug`, so it never reaches a
/// log line or an error through formatting.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads a secret from a file (e.g. a mounted Kubernetes secret); one trailing
    /// newline is dropped, as `echo` and most editors add one.
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let text = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        Ok(Self(text.to_owned()))
    }

    /// The secret itself; only for handing it to Redis.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// TLS settings, used by every `rediss://` connection.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM bundle of the CAs that may sign the servers' certificates; the system's
    /// roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), for servers that require one (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the host
    /// connected to (a tunnel, an IP address, an endpoint behind a proxy).
    pub server_name: Option<String>,
    /// Accept any server certificate. For development only: anyone on the path can
    /// read and change the traffic.
    pub insecure: bool,
}

impl TlsOptions {
    /// Whether anything differs from the defaults.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.server_name.is_some()
            || self.insecure
    }
}

/// How to reach Redis beyond its address.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub tls: TlsOptions,
    /// ACL user for the data nodes; overrides a user in the URLs.
    pub username: Option<String>,
    /// Password for the data nodes; overrides a password in the URLs.
    pub password: Option<Secret>,
    /// Upper bound for TCP connect, TLS handshake and authentication together.
    pub connect_timeout: Duration,
    /// TCP keepalive idle time (`None`: off). Finds a peer that vanished without a
    /// FIN (a NAT entry expired, a node powered off) on an idle connection.
    pub keepalive: Option<Duration>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            tls: TlsOptions::default(),
            username: None,
            password: None,
            connect_timeout: Duration::from_secs(3),
            keepalive: Some(Duration::from_secs(60)),
        }
    }
}

/// A setting of [`TlsOptions`] that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("CA file {path}: {why}")]
    Ca { path: String, why: String },
    #[error("client certificate {path}: {why}")]
    Cert { path: String, why: String },
    #[error("client key {path}: {why}")]
    Key { path: String, why: String },
    #[error("server name `{0}` is not a valid DNS name or IP address")]
    ServerName(String),
    #[error("the system's CA roots: {0}")]
    Roots(String),
}

/// Opens connections to Redis with one set of [`RedisOptions`]. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    options: RedisOptions,
    /// Built only when some URL asks for TLS (the system's roots are not loaded
    /// otherwise).
    tls: Option<Arc<rustls::ClientConfig>>,
    server_name: Option<ServerName<'static>>,
    /// What to call the CA setting in a verification error (the caller's name for
    /// it: a flag, a builder method).
    ca_setting: &'static str,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Checks the options and, when `tls` (some URL is `rediss://`), loads the TLS
    /// material. `ca_setting` names the CA setting in the error a connection gets
    /// when a server's certificate does not verify.
    pub fn new(
        options: RedisOptions,
        tls: bool,
        ca_setting: &'static str,
    ) -> Result<Self, TlsSetupError> {
        let tls = match tls {
            true => Some(Arc::new(client_config(&options.tls)?)),
            false => None,
        };
        let server_name = match &options.tls.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| TlsSetupError::ServerName(name.clone()))?,
            ),
            None => None,
        };
        Ok(Self {
            inner: Arc::new(ConnectorInner {
                options,
                tls,
                server_name,
                ca_setting,
            }),
        })
    }

    pub fn options(&self) -> &RedisOptions {
        &self.inner.options
    }

    /// The connection info with the configured credentials in place of the URL's.
    pub fn with_credentials(&self, info: ConnectionInfo) -> ConnectionInfo {
        let o = &self.inner.options;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &o.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &o.password {
            settings = settings.set_password(password.expose());
        }
        info.set_redis_settings(settings)
    }

    /// Opens a stream to `addr` (TCP, TLS over TCP, or a Unix socket), within the
    /// connect timeout. The error says what failed and never holds a credential.
    pub async fn open(&self, addr: &ConnectionAddr) -> Result<Stream, String> {
        let limit = self.inner.options.connect_timeout;
        timeout(limit, self.open_inner(addr))
            .await
            .map_err(|_| format!("connect to {}: no answer within {limit:?}", show(addr)))?
    }

    async fn open_inner(&self, addr: &ConnectionAddr) -> Result<Stream, String> {
        match addr {
            ConnectionAddr::Tcp(host, port) => Ok(Stream::Tcp(self.tcp(host, *port).await?)),
            ConnectionAddr::TcpTls { host, port, .. } => {
                let tcp = self.tcp(host, *port).await?;
                let name = match &self.inner.server_name {
                    Some(n) => n.clone(),
                    None => ServerName::try_from(host.clone()).map_err(|_| {
                        format!("{host}: not a name a TLS certificate can be checked against")
                    })?,
                };
                let config = self.inner.tls.clone().ok_or_else(|| {
                    format!("{host}:{port}: a rediss:// address, but TLS was not set up")
                })?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.tls_error(host, *port, e))?;
                Ok(Stream::Tls(Box::new(tls)))
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => tokio::net::UnixStream::connect(path)
                .await
                .map(Stream::Unix)
                .map_err(|e| format!("connect to {}: {e}", path.display())),
            #[allow(unreachable_patterns)]
            _ => Err("this kind of Redis address is not supported".into()),
        }
    }

    async fn tcp(&self, host: &str, port: u16) -> Result<TcpStream, String> {
        let stream = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
        let _ = stream.set_nodelay(true);
        if let Some(idle) = self.inner.options.keepalive {
            let keepalive = socket2::TcpKeepalive::new().with_time(idle).with_interval(
                idle.min(Duration::from_secs(10))
                    .max(Duration::from_secs(1)),
            );
            #[cfg(any(target_os = "linux", target_os = "macos"))]
            let keepalive = keepalive.with_retries(3);
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        }
        Ok(stream)
    }

    fn tls_error(&self, host: &str, port: u16, e: std::io::Error) -> String {
        let detail = e.to_string();
        let hint = if detail.contains("certificate") || detail.contains("UnknownIssuer") {
            format!(
                "; the server's certificate did not verify against {} (or the system's roots when it is not set) for the expected name",
                self.inner.ca_setting
            )
        } else {
            String::new()
        };
        format!("TLS handshake with {host}:{port}: {detail}{hint}")
    }

    /// Opens a multiplexed command connection: the stream, then `HELLO`/`AUTH` and
    /// `SELECT` as `info` says (with this connector's credentials). Its driver runs
    /// on its own task.
    pub async fn multiplexed(
        &self,
        info: &ConnectionInfo,
        config: AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, String> {
        self.multiplexed_raw(&self.with_credentials(info.clone()), config)
            .await
    }

    /// [`Connector::multiplexed`] with the credentials `info` holds (a sentinel's,
    /// not the data nodes').
    pub async fn multiplexed_raw(
        &self,
        info: &ConnectionInfo,
        config: AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, String> {
        let stream = self.open(info.addr()).await?;
        let limit = self.inner.options.connect_timeout;
        let (conn, driver) = timeout(
            limit,
            MultiplexedConnection::new_with_config(info.redis_settings(), stream, config),
        )
        .await
        .map_err(|_| {
            format!(
                "{}: no answer to the handshake within {limit:?}",
                show(info.addr())
            )
        })?
        .map_err(|e| format!("{}: {e}", show(info.addr())))?;
        tokio::spawn(driver);
        Ok(conn)
    }
}

/// An address for messages: host and port (never credentials, which are not part
/// of it anyway).
pub fn show(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
        ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port} (TLS)"),
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => path.display().to_string(),
        #[allow(unreachable_patterns)]
        _ => "redis".into(),
    }
}

fn client_config(o: &TlsOptions) -> Result<rustls::ClientConfig, TlsSetupError> {
    let builder = rustls::ClientConfig::builder();
    let builder = if o.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(insecure::AcceptAny::new()))
    } else {
        builder.with_root_certificates(roots(o.ca_file.as_deref())?)
    };
    match (&o.cert_file, &o.key_file) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let show = |p: &Path| p.display().to_string();
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsSetupError::Cert {
                    path: show(cert),
                    why: e.to_string(),
                })?;
            if chain.is_empty() {
                return Err(TlsSetupError::Cert {
                    path: show(cert),
                    why: "no certificate in the file".into(),
                });
            }
            let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsSetupError::Key {
                path: show(key),
                why: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| TlsSetupError::Key {
                    path: show(key),
                    why: format!("does not fit the certificate: {e}"),
                })
        }
        (Some(cert), None) => Err(TlsSetupError::Key {
            path: String::new(),
            why: format!(
                "a client certificate ({}) needs its key file too",
                cert.display()
            ),
        }),
        (None, Some(key)) => Err(TlsSetupError::Cert {
            path: String::new(),
            why: format!(
                "a client key ({}) needs its certificate file too",
                key.display()
            ),
        }),
    }
}

fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsSetupError> {
    let mut store = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca = |why: String| TlsSetupError::Ca {
                path: path.display().to_string(),
                why,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| ca(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca("no certificate in the file".into()));
            }
            for c in certs {
                store.add(c).map_err(|e| ca(e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = store.add(c);
            }
            if store.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "none found; give a CA file".into());
                return Err(TlsSetupError::Roots(why));
            }
        }
    }
    Ok(store)
}

mod insecure {
    //! The verifier of `insecure`: any certificate passes; the handshake's
    //! signatures are still checked (a broken peer fails rather than hangs).
    use rustls::DigitallySignedStruct;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    #[derive(Debug)]
    pub(super) struct AcceptAny(CryptoProvider);

    impl AcceptAny {
        pub(super) fn new() -> Self {
            Self(rustls::crypto::aws_lc_rs::default_provider())
        }
    }

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

/// A connection to Redis, whatever carries it.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_secret_never_formats() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "***");
        let o = RedisOptions {
            password: Some(s),
            ..RedisOptions::default()
        };
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    #[test]
    fn a_secret_file_loses_one_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("tidings-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p");
        std::fs::write(&path, "pw with space \n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), "pw with space ");
        std::fs::write(&path, "pw\r\n").unwrap();
        assert_eq!(Secret::from_file(&path).unwrap().expose(), "pw");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_material_is_checked_when_built() {
        let tls = |ca: Option<&str>, cert: Option<&str>, key: Option<&str>| RedisOptions {
            tls: TlsOptions {
                ca_file: ca.map(PathBuf::from),
                cert_file: cert.map(PathBuf::from),
                key_file: key.map(PathBuf::from),
                ..TlsOptions::default()
            },
            ..RedisOptions::default()
        };
        let e =
            Connector::new(tls(Some("/nonexistent/ca.pem"), None, None), true, "ca").unwrap_err();
        assert!(matches!(e, TlsSetupError::Ca { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let e = Connector::new(tls(None, Some("/x/cert.pem"), None), true, "ca").unwrap_err();
        assert!(matches!(e, TlsSetupError::Key { .. }), "{e}");
        let e = Connector::new(tls(None, None, Some("/x/key.pem")), true, "ca").unwrap_err();
        assert!(matches!(e, TlsSetupError::Cert { .. }), "{e}");
        // Without TLS in use nothing is loaded.
        assert!(Connector::new(tls(Some("/nonexistent/ca.pem"), None, None), false, "ca").is_ok());
        let bad_name = RedisOptions {
            tls: TlsOptions {
                server_name: Some("not a name".into()),
                ..TlsOptions::default()
            },
            ..RedisOptions::default()
        };
        assert!(matches!(
            Connector::new(bad_name, false, "ca"),
            Err(TlsSetupError::ServerName(_))
        ));
    }
}
