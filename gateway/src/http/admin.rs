//! The admin listener: liveness (`/healthz`), readiness (`/readyz`: not draining
//! and the broker up) and Prometheus metrics (`/metrics`). It binds to loopback by
//! default and needs no credentials, so it stays off the public port.

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
            } else if !node.broker.is_ready() {
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
