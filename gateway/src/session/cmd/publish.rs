//! `publish` from a client: channel, event, rights and size checked, then one
//! publication through the broker.

use protocol::frame::Reply;
use protocol::{ErrorCode, Payload, Publication, channel, envelope};

use crate::session::{Outcome, Session, err};

impl Session {
    pub(in crate::session) async fn publish(
        &mut self,
        id: u64,
        name: String,
        event: String,
        payload: Payload,
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
        match self
            .node
            .broker
            .publish(vec![Publication::new(name, event, payload)])
            .await
        {
            Ok(receipt) => Outcome::Reply(Reply::ok(id, receipt)),
            Err(e) => err(Some(id), e.code(), e.to_string()),
        }
    }
}
