//! `subscribe`: rights, limits, the history-read budget, then the live
//! subscription and, for a channel with history, its position and replay.

use std::sync::Arc;

use protocol::ErrorCode;
use protocol::channel;
use protocol::frame::{Reply, Since, SubscribeResult};
use tokio::time::Instant;

use crate::session::{Outcome, Session, err, resume_rate};

impl Session {
    pub(in crate::session) async fn subscribe(
        &mut self,
        id: u64,
        name: String,
        since: Option<Since>,
        now: Instant,
    ) -> Outcome {
        if let Err(e) = channel::validate(&name) {
            return err(Some(id), ErrorCode::InvalidChannel, e.to_string());
        }
        if !channel::allowed(&self.subscribe_rights, &name) {
            return err(
                Some(id),
                ErrorCode::Forbidden,
                "token does not allow subscribing to this channel",
            );
        }
        if self.subs.iter().any(|s| *s.channel == *name) {
            return err(Some(id), ErrorCode::AlreadySubscribed, "already subscribed");
        }
        if self.subs.len() - 2 >= self.node.config.conn.max_channels as usize {
            return err(
                Some(id),
                ErrorCode::TooManyChannels,
                format!(
                    "at most {} channels per connection",
                    self.node.config.conn.max_channels
                ),
            );
        }
        if !self.node.broker.available(&name) {
            // Another instance or partition may be up (the node is ready), but this
            // channel's is not: accepting would leave the subscription silent.
            return err(
                Some(id),
                ErrorCode::Unavailable,
                "the Redis that holds this channel is unreachable; retry later",
            );
        }
        let has_history = self.node.config.history.rules.policy(&name).is_some();
        if has_history
            && !self
                .resumes
                .take(resume_rate(&self.node), self.node.started, now)
        {
            self.node.metrics.history_limited();
            return self.strike(
                now,
                err(
                    Some(id),
                    ErrorCode::RateLimited,
                    "too many subscribes with history; slow down",
                ),
            );
        }
        let pos = self.add(Arc::from(name.as_str()));
        if !has_history {
            // Without history nothing can be replayed: say so rather than pretend.
            let result = SubscribeResult::without_history(name, since.is_some());
            return Outcome::Reply(Reply::ok(id, result));
        }
        match self.recover(pos, since.as_ref(), None).await {
            Ok(r) => {
                let result = SubscribeResult::with_history(name, r.epoch, r.offset, r.recovered);
                match r.replay {
                    Some(replay) => Outcome::Replay(Reply::ok(id, result), replay),
                    None => Outcome::Reply(Reply::ok(id, result)),
                }
            }
            Err(e) => {
                // The live subscription stands; only the history part failed.
                tracing::warn!(error = %e, "cannot read channel history");
                let result = SubscribeResult::without_history(name, since.is_some());
                Outcome::Reply(Reply::ok(id, result))
            }
        }
    }
}
