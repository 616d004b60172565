//! In-process test support: a node on the in-memory broker and sessions on it, so
//! the session and connection logic is tested without spawning processes.

use std::sync::Arc;

use clap::Parser;
use protocol::Encoding;

use crate::auth::Claims;
use crate::config::{Cli, Config};
use crate::hub::outbox::Outbox;
use crate::node::Node;
use crate::session::Session;

pub const SECRET: &str = "0123456789abcdef0123";

/// A node of the in-memory broker with `args` added to the defaults.
pub fn node(args: &[&str]) -> Arc<Node> {
    let mut all = vec!["gateway", "--jwt-secret", SECRET];
    all.extend_from_slice(args);
    let cli = Cli::try_parse_from(all).unwrap_or_else(|e| panic!("{e}"));
    let config = Config::from_settings(cli.settings).unwrap_or_else(|e| panic!("{e}"));
    crate::assemble(config).unwrap_or_else(|e| panic!("{e}"))
}

/// Claims for `user` with the given rights, valid for ten minutes.
pub fn claims(user: &str, subscribe: &[&str], publish: &[&str]) -> Claims {
    Claims {
        sub: user.into(),
        exp: protocol::now_millis() / 1000 + 600,
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        presence: Vec::new(),
        info: None,
    }
}

/// A session of `claims` on `node` (JSON), with an outbox of `queue` items and no
/// socket (the hub queues everything for it).
pub fn session(node: &Arc<Node>, claims: Claims, queue: usize) -> Session {
    let slot = node
        .reserve(&claims.sub)
        .unwrap_or_else(|_| panic!("no slot"));
    let outbox = Arc::new(Outbox::new(queue, None));
    Session::open(node.clone(), slot, claims, Encoding::Json, outbox)
}
