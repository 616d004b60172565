//! The public listener: WebSocket upgrades, the publish API and the demo. Each
//! accepted TCP connection is served by hyper with upgrades enabled; the upgrade
//! hands the socket to its own task.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::http::{Body, error, json};
use crate::node::Node;

async fn route(req: Request<Incoming>, node: Arc<Node>) -> Result<Response<Body>, Infallible> {
    Ok(match req.uri().path() {
        p if node.config.demo && (p == "/" || p.starts_with("/demo")) => {
            match crate::http::demo::handle(req, &node).await {
                Some(r) => r,
                None => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
            }
        }
        // Without the demo, `/` says what this is and where to go.
        "/" => json(
            StatusCode::OK,
            &json!({
                "service": "tidings-gateway",
                "websocket": "/ws",
                "publish_api": "/api/v1/publish",
                "demo": "start the gateway with --demo to serve the demo app here",
                "docs": "https://example.invalid/tidings/docs",
            }),
        ),
        "/ws" => crate::conn::handshake::upgrade(req, node),
        "/api/v1/publish" => crate::http::api::handle(req, node, false).await,
        "/api/v1/publish/batch" => crate::http::api::handle(req, node, true).await,
        "/api/v1/presence" => {
            crate::http::presence::handle(req, node, crate::http::presence::Route::Page).await
        }
        "/api/v1/presence/stats" => {
            crate::http::presence::handle(req, node, crate::http::presence::Route::Stats).await
        }
        "/api/v1/online" => {
            crate::http::presence::handle(req, node, crate::http::presence::Route::Online).await
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    })
}

/// Largest request head (request line and headers) on the public listener.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What a connection refused for want of room gets, before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nconnection: close\r\nretry-after: 1\r\n\
content-length: 83\r\n\r\n\
{\"error\":\"unavailable\",\"message\":\"too many connections in progress; retry shortly\"}";

/// Accepts public connections until the task is dropped. A connection counts as
/// pending from its accept until it upgrades to a WebSocket or ends: HTTP API
/// clients and upgrades in progress, before any of them is authenticated. Their
/// number is capped (`--max-pending-connections`); beyond it a connection gets a
/// canned 503 and is closed, so unauthenticated clients cannot hold the node's
/// sockets.
pub async fn serve_public(listener: TcpListener, node: Arc<Node>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(pending) = node.pending_connection() else {
            node.metrics.pending_refused();
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stream = stream;
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                    stream.write_all(BUSY).await?;
                    stream.shutdown().await
                })
                .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        tokio::spawn(async move {
            let _pending = pending;
            let timeout = node.config.listeners.handshake_timeout;
            let svc = service_fn(move |req| route(req, node.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .max_header_size(MAX_HEAD_BYTES)
                .max_buf_size(MAX_HEAD_BYTES + 16 * 1024)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}
