//! `publish` from a client: channel, event, rights and size checked, then one
//! publication through the broker; with `expect`, only if the channel's history is
//! at that position (optimistic concurrency: the order of a collaborative
//! document's operations), else a `conflict` carrying where it is.

use protocol::frame::{Reply, Since};
use protocol::history::StreamPosition;
use protocol::{ErrorCode, Payload, Publication, channel, envelope};

use crate::broker::BrokerError;
use crate::session::{Outcome, Session, err};

impl Session {
    pub(in crate::session) async fn publish(
        &mut self,
        id: u64,
        name: String,
        event: String,
        payload: Payload,
        expect: Option<Since>,
    ) -> Outcome {
        if let Err(e) = channel::validate(&name) {
            return err(Some(id), ErrorCode::InvalidChannel, e.to_string());
        }
        if let Err(e) = envelope::validate_event(&event) {
            return err(Some(id), ErrorCode::BadRequest, e);
        }
        if !channel::allowed(&self.publish_rights, &name) {
            return err(
                Some(id),
                ErrorCode::Forbidden,
                "token does not allow publishing to this channel",
            );
        }
        if payload.len() > self.node.config.conn.max_payload_size {
            return err(
                Some(id),
                ErrorCode::PayloadTooLarge,
                format!(
                    "payload is larger than {} bytes",
                    self.node.config.conn.max_payload_size
                ),
            );
        }
        self.node.metrics.published("client");
        let p = Publication::new(name, event, payload);
        let done = match expect {
            None => self.node.broker.publish(vec![p]).await,
            Some(at) => {
                let at = StreamPosition {
                    epoch: at.epoch,
                    offset: at.offset,
                };
                self.node.broker.publish_if(p, &at).await
            }
        };
        match done {
            Ok(receipt) => Outcome::Reply(Reply::ok(id, receipt)),
            Err(BrokerError::Conflict(now)) => {
                Outcome::Reply(Reply::conflict(id, now.offset, now.epoch))
            }
            Err(e) => err(Some(id), e.code(), e.to_string()),
        }
    }
}
