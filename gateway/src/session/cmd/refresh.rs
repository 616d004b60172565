//! `refresh`: a newer token of the same user replaces the current one; channels
//! its rights no longer allow are left.

use protocol::ErrorCode;
use protocol::channel;
use protocol::frame::{RefreshResult, Reply};

use crate::auth::AuthError;
use crate::session::{Outcome, Session, err};

impl Session {
    pub(in crate::session) fn refresh(&mut self, id: u64, token: &str) -> Outcome {
        let claims = match self.node.verifier.verify(token) {
            Ok(c) => c,
            Err(AuthError::Expired) => {
                return err(Some(id), ErrorCode::InvalidToken, "token expired");
            }
            Err(e) => return err(Some(id), ErrorCode::InvalidToken, e.to_string()),
        };
        if *claims.sub != **self.user() {
            return err(
                Some(id),
                ErrorCode::TokenMismatch,
                "the new token is for another user",
            );
        }
        // A refresh moves forward: an older token of the same user (one that
        // expires before the current one) may carry rights since taken away.
        if claims.exp < self.expires_at {
            return err(
                Some(id),
                ErrorCode::InvalidToken,
                "the new token expires before the current one",
            );
        }
        self.subscribe_rights = claims.subscribe;
        self.publish_rights = claims.publish;
        if let Some(m) = &mut self.presence {
            m.rights = claims.presence;
        }
        self.expires_at = claims.exp;
        // Rights can shrink on refresh: leave channels the new token no longer allows.
        let mut dropped = Vec::new();
        let mut i = 2;
        while i < self.subs.len() {
            if channel::allowed(&self.subscribe_rights, &self.subs[i].channel) {
                i += 1;
            } else {
                dropped.push(self.remove(i).to_string());
            }
        }
        Outcome::Reply(Reply::ok(
            id,
            RefreshResult {
                expires_at: self.expires_at,
                unsubscribed: dropped,
            },
        ))
    }
}
