//! A node run inside the test process on listeners the test bound itself
//! (`gateway::serve`): real sockets and a real client, no process to spawn and no
//! log line to read for the ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use clap::Parser;
use futures_util::StreamExt;
use gateway::config::{Cli, Config};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "in-process-secret-0123";

#[tokio::test]
async fn a_node_serves_listeners_bound_by_its_caller_and_drains_on_shutdown() {
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    let cli = Cli::try_parse_from(["gateway", "--jwt-secret", SECRET, "--drain-period", "100ms"])
        .unwrap();
    let config = Config::from_settings(cli.settings).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(gateway::serve(
        config,
        gateway::Listeners { public, admin },
        async {
            let _ = stopped.await;
        },
    ));

    let token = gateway::auth::mint_hs256(SECRET.as_bytes(), "ivy", 600, &[], &[]).unwrap();
    let url = format!("ws://{addr}/ws?token={token}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    let Ok(Some(Ok(Message::Text(welcome)))) = first else {
        panic!("no welcome: {first:?}");
    };
    assert!(welcome.contains(r#""type":"welcome""#) && welcome.contains(r#""user":"ivy""#));
    let ready = http_get(admin_addr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // Shutdown drains: the client is told to go elsewhere (1001), then serve returns.
    stop.send(()).unwrap();
    // Read on after the close frame, so the client's answer goes out.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut code = None;
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                code = f.map(|f| u16::from(f.code));
            }
        }
        code
    })
    .await;
    assert_eq!(closed.ok().flatten(), Some(1001));
    tokio::time::timeout(Duration::from_secs(10), node)
        .await
        .expect("serve returned")
        .unwrap()
        .unwrap();
}

/// A GET on a plain HTTP/1.1 connection; the whole response as text.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
