//! `unsubscribe`: leaves a channel (not the personal or broadcast one).

use protocol::ErrorCode;
use protocol::frame::{Reply, UnsubscribeResult};

use crate::session::{Outcome, Session, err};

impl Session {
    pub(in crate::session) fn unsubscribe(&mut self, id: u64, name: &str) -> Outcome {
        let Some(pos) = self.subs.iter().position(|s| *s.channel == *name) else {
            return err(Some(id), ErrorCode::NotSubscribed, "not subscribed");
        };
        if pos < 2 {
            return err(
                Some(id),
                ErrorCode::Forbidden,
                "the personal and broadcast channels cannot be left",
            );
        }
        self.remove(pos);
        Outcome::Reply(Reply::ok(
            id,
            UnsubscribeResult {
                channel: name.to_owned(),
            },
        ))
    }
}
