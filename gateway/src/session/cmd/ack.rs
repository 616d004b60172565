//! `ack`: moves the personal channel's acknowledged position forward.

use protocol::ErrorCode;
use protocol::frame::{AckResult, Reply};

use crate::session::{Outcome, Session, err};

impl Session {
    pub(in crate::session) async fn ack(&mut self, id: u64, offset: u64) -> Outcome {
        let personal = self.subs[0].channel.clone();
        if self.node.config.history.rules.policy(&personal).is_none() {
            return err(
                Some(id),
                ErrorCode::BadRequest,
                "the personal channel keeps no history",
            );
        }
        match self.node.broker.ack(&personal, offset).await {
            Ok(Some(stored)) => Outcome::Reply(Reply::ok(id, AckResult { offset: stored })),
            Ok(None) => err(
                Some(id),
                ErrorCode::BadRequest,
                "nothing to acknowledge yet",
            ),
            Err(e) => err(Some(id), e.code(), e.to_string()),
        }
    }
}
