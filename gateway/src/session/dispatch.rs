//! From bytes to a request: decoding, the inbound rate limit, strikes for what is
//! malformed or too fast, pongs, and the choice of command.

use protocol::frame::ClientFrame;
use protocol::{ErrorCode, ProtocolError};
use tokio::time::Instant;

use crate::session::{MAX_PONG_BYTES, Outcome, Session, err, message_rate};

impl Session {
    /// Handles one inbound data frame.
    pub(crate) async fn handle(&mut self, bytes: &[u8], now: Instant) -> Outcome {
        let frame = match protocol::frame::decode_client(self.encoding, bytes) {
            Ok(f) => f,
            Err(e) => {
                self.node.metrics.inbound("invalid");
                let (id, code, message) = match e {
                    ProtocolError::Frame { id, code, message } => (id, code, message),
                    other => (None, ErrorCode::BadFrame, other.to_string()),
                };
                return self.strike(now, err(id, code, message));
            }
        };
        self.node.metrics.inbound(frame.kind());
        // Pongs answer our own pings and are never answered. They count against the
        // rate limit like any frame (one per heartbeat is all a client needs), and
        // one larger than a pong can be is a strike: a client must not make the
        // server decode kilobytes for free.
        if matches!(frame, ClientFrame::Pong) {
            if bytes.len() > MAX_PONG_BYTES
                || !self
                    .rate
                    .take(message_rate(&self.node), self.node.started, now)
            {
                return match self.strike(now, Outcome::Silent) {
                    Outcome::End(e) => Outcome::End(e),
                    _ => Outcome::Silent,
                };
            }
            self.answers_pings = true;
            return Outcome::Silent;
        }
        if !self
            .rate
            .take(message_rate(&self.node), self.node.started, now)
        {
            let id = request_id(&frame);
            return self.strike(
                now,
                err(
                    id,
                    ErrorCode::RateLimited,
                    "inbound rate limit exceeded; slow down",
                ),
            );
        }
        match frame {
            ClientFrame::Pong => Outcome::Silent,
            ClientFrame::Subscribe { id, channel, since } => {
                self.subscribe(id, channel, since, now).await
            }
            ClientFrame::Unsubscribe { id, channel } => self.unsubscribe(id, &channel),
            ClientFrame::Publish {
                id,
                channel,
                event,
                payload,
                expect,
            } => self.publish(id, channel, event, payload, expect).await,
            ClientFrame::Refresh { id, token } => self.refresh(id, &token),
            ClientFrame::Ack { id, offset } => self.ack(id, offset).await,
            ClientFrame::Presence {
                id,
                channel,
                limit,
                cursor,
            } => self.presence(id, &channel, limit, cursor, now).await,
            ClientFrame::PresenceStats { id, channel } => self.presence_stats(id, &channel).await,
            ClientFrame::History {
                id,
                channel,
                limit,
                since,
            } => self.history(id, &channel, limit, since, now).await,
        }
    }
}

fn request_id(f: &ClientFrame) -> Option<u64> {
    match f {
        ClientFrame::Subscribe { id, .. }
        | ClientFrame::Unsubscribe { id, .. }
        | ClientFrame::Publish { id, .. }
        | ClientFrame::Refresh { id, .. }
        | ClientFrame::Ack { id, .. }
        | ClientFrame::Presence { id, .. }
        | ClientFrame::PresenceStats { id, .. }
        | ClientFrame::History { id, .. } => Some(*id),
        ClientFrame::Pong => None,
    }
}
