//! Listeners: the public one (WebSocket upgrades and the publish API) and the admin
//! one (health, readiness, metrics). Each accepted TCP connection is served by hyper
//! with upgrades enabled; the upgrade hands the socket to its own task.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::http::{Body, error, json, text};
use crate::node::Node;

async fn route(req: Request<Incoming>, node: Arc<Node>) -> Result<Response<Body>, Infallible> {
    Ok(match req.uri().path() {
        p if node.config.demo && (p == "/" || p.starts_with("/demo")) => {
            match crate::demo::handle(req, &node).await {
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
        "/ws" => crate::handshake::upgrade(req, node),
        "/api/v1/publish" => crate::api::handle(req, node, false).await,
        "/api/v1/publish/batch" => crate::api::handle(req, node, true).await,
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    })
}

async fn admin_route(
    req: Request<Incoming>,
    node: Arc<Node>,
) -> Result<Response<Body>, Infallible> {
    Ok(match req.uri().path() {
        "/healthz" => json(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => {
            if node.is_draining() {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "draining"}),
                )
            } else if !node.hub.ready() {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"status": "broker_unavailable"}),
                )
            } else {
                json(StatusCode::OK, &json!({"status": "ready"}))
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            node.metrics.render(),
        ),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    })
}

/// Accepts public connections until the task is dropped.
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
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        tokio::spawn(async move {
            let timeout = node.config.handshake_timeout;
            let svc = service_fn(move |req| route(req, node.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}

/// Accepts admin connections until the task is dropped.
pub async fn serve_admin(listener: TcpListener, node: Arc<Node>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| admin_route(req, node.clone()));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
