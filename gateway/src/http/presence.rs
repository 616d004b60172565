//! The presence API for backends: `POST /api/v1/presence` (a page of a channel's
//! members), `POST /api/v1/presence/stats` (its counts) and `POST /api/v1/online`
//! (users' online status and last-seen times). Same API keys as publishing; small
//! JSON bodies; the answers are the protocol's result types.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use protocol::channel;
use protocol::presence::{DEFAULT_PAGE, MAX_CURSOR_BYTES, MAX_ONLINE_QUERY, MAX_PAGE};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::broker::BrokerError;
use crate::http::{Body, error, json};
use crate::node::Node;

/// Largest request body: a thousand user ids of 128 bytes, with room to spare.
const MAX_BODY: usize = 256 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageRequest {
    channel: String,
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatsRequest {
    channel: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnlineRequest {
    users: Vec<String>,
}

/// Which presence route.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    Page,
    Stats,
    Online,
}

fn bad(message: &str) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn failed(e: BrokerError) -> Response<Body> {
    match e {
        BrokerError::Rejected(m) => bad(&m),
        other => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &other.to_string(),
        ),
    }
}

async fn body<T: DeserializeOwned>(
    req: Request<Incoming>,
    node: &Node,
) -> Result<T, Box<Response<Body>>> {
    let bytes =
        crate::http::read_body(req, MAX_BODY, node.config.listeners.handshake_timeout).await?;
    serde_json::from_slice(&bytes).map_err(|e| Box::new(bad(&format!("invalid JSON body: {e}"))))
}

/// A channel whose presence may be read: valid, with a presence rule.
fn channel_refusal(node: &Node, name: &str) -> Option<Response<Body>> {
    if let Err(e) = channel::validate(name) {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "invalid_channel",
            &e.to_string(),
        ));
    }
    if node.presence.policy(name).is_none() {
        return Some(bad(
            "this channel has no presence (no --presence rule matches it)",
        ));
    }
    None
}

pub async fn handle(req: Request<Incoming>, node: Arc<Node>, route: Route) -> Response<Body> {
    if let Some(refused) = crate::http::api::admit(&req, &node) {
        return refused;
    }
    match route {
        Route::Page => {
            let r: PageRequest = match body(req, &node).await {
                Ok(r) => r,
                Err(answer) => return *answer,
            };
            if let Some(answer) = channel_refusal(&node, &r.channel) {
                return answer;
            }
            let limit = r.limit.unwrap_or(DEFAULT_PAGE);
            if limit == 0 || limit > MAX_PAGE {
                return bad(&format!("limit must be 1..={MAX_PAGE}"));
            }
            if r.cursor
                .as_ref()
                .is_some_and(|c| c.len() > MAX_CURSOR_BYTES)
            {
                return bad(&format!("cursor longer than {MAX_CURSOR_BYTES} bytes"));
            }
            match node
                .presence
                .page(&r.channel, limit, r.cursor.as_deref())
                .await
            {
                Ok(page) => json(StatusCode::OK, &page),
                Err(e) => failed(e),
            }
        }
        Route::Stats => {
            let r: StatsRequest = match body(req, &node).await {
                Ok(r) => r,
                Err(answer) => return *answer,
            };
            if let Some(answer) = channel_refusal(&node, &r.channel) {
                return answer;
            }
            match node.presence.stats(&r.channel).await {
                Ok(stats) => json(StatusCode::OK, &stats),
                Err(e) => failed(e),
            }
        }
        Route::Online => {
            let r: OnlineRequest = match body(req, &node).await {
                Ok(r) => r,
                Err(answer) => return *answer,
            };
            if r.users.is_empty() || r.users.len() > MAX_ONLINE_QUERY {
                return bad(&format!("users must hold 1..={MAX_ONLINE_QUERY} user ids"));
            }
            if let Some(e) = r.users.iter().find_map(|u| channel::validate_user(u).err()) {
                return bad(&format!("users: {e}"));
            }
            match node.presence.online(&r.users).await {
                Ok(users) => json(StatusCode::OK, &json!({ "users": users })),
                Err(e) => failed(e),
            }
        }
    }
}
