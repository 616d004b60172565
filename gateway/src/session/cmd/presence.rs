//! `presence` and `presence_stats`: who is in a channel, across every node. Allowed
//! by a `subscribe` or a `presence` pattern of the token; only on channels with a
//! presence rule. A listing counts against the history-read budget (it reads up to
//! a thousand members); counts are cheap and do not.

use protocol::ErrorCode;
use protocol::channel;
use protocol::frame::Reply;
use protocol::presence::{DEFAULT_PAGE, MAX_CURSOR_BYTES, MAX_PAGE};
use tokio::time::Instant;

use crate::session::{Outcome, Session, err};

impl Session {
    /// The checks both requests share; `None` when the channel may be read.
    fn presence_refusal(&self, id: u64, name: &str) -> Option<Outcome> {
        if let Err(e) = channel::validate(name) {
            return Some(err(Some(id), ErrorCode::InvalidChannel, e.to_string()));
        }
        let may = channel::allowed(&self.subscribe_rights, name)
            || self
                .presence
                .as_ref()
                .is_some_and(|m| channel::allowed(&m.rights, name));
        if !may {
            return Some(err(
                Some(id),
                ErrorCode::Forbidden,
                "token allows neither subscribing to this channel nor reading its presence",
            ));
        }
        if self.node.presence.policy(name).is_none() {
            return Some(err(
                Some(id),
                ErrorCode::BadRequest,
                "this channel has no presence (no --presence rule matches it)",
            ));
        }
        None
    }

    pub(in crate::session) async fn presence(
        &mut self,
        id: u64,
        name: &str,
        limit: Option<u32>,
        cursor: Option<String>,
        now: Instant,
    ) -> Outcome {
        if let Some(refused) = self.presence_refusal(id, name) {
            return refused;
        }
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return err(
                Some(id),
                ErrorCode::BadRequest,
                format!("limit must be 1..={MAX_PAGE}"),
            );
        }
        if cursor.as_ref().is_some_and(|c| c.len() > MAX_CURSOR_BYTES) {
            return err(
                Some(id),
                ErrorCode::BadRequest,
                format!("cursor longer than {MAX_CURSOR_BYTES} bytes"),
            );
        }
        if let Some(refused) = self.read_budget(id, now, "presence listings") {
            return refused;
        }
        match self
            .node
            .presence
            .page(name, limit, cursor.as_deref())
            .await
        {
            Ok(page) => Outcome::Reply(Reply::ok(id, page)),
            Err(e) => err(Some(id), e.code(), e.to_string()),
        }
    }

    pub(in crate::session) async fn presence_stats(&mut self, id: u64, name: &str) -> Outcome {
        if let Some(refused) = self.presence_refusal(id, name) {
            return refused;
        }
        match self.node.presence.stats(name).await {
            Ok(stats) => Outcome::Reply(Reply::ok(id, stats)),
            Err(e) => err(Some(id), e.code(), e.to_string()),
        }
    }
}
