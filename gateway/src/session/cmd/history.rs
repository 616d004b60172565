//! `history`: entries of a channel's history without subscribing: the last
//! `limit` (a chat's scrollback, a document's latest snapshot), or the first
//! `limit` after `since` (paging forward). Allowed by the `subscribe` patterns;
//! counts against the history-read budget like a resume.

use protocol::frame::{HistoryEntry, HistoryResult, MAX_HISTORY_PAGE, Reply, Since};
use protocol::{ErrorCode, channel};
use tokio::time::Instant;

use crate::session::{Outcome, Session, err};

impl Session {
    pub(in crate::session) async fn history(
        &mut self,
        id: u64,
        name: &str,
        limit: Option<u32>,
        since: Option<Since>,
        now: Instant,
    ) -> Outcome {
        if let Err(e) = channel::validate(name) {
            return err(Some(id), ErrorCode::InvalidChannel, e.to_string());
        }
        if !channel::allowed(&self.subscribe_rights, name) {
            return err(
                Some(id),
                ErrorCode::Forbidden,
                "token does not allow subscribing to this channel",
            );
        }
        if self.node.config.history.rules.policy(name).is_none() {
            return err(
                Some(id),
                ErrorCode::BadRequest,
                "this channel keeps no history (no --history rule matches it)",
            );
        }
        let limit = limit.unwrap_or(MAX_HISTORY_PAGE);
        if limit == 0 || limit > MAX_HISTORY_PAGE {
            return err(
                Some(id),
                ErrorCode::BadRequest,
                format!("limit must be 1..={MAX_HISTORY_PAGE}"),
            );
        }
        if let Some(refused) = self.read_budget(id, now, "history reads") {
            return refused;
        }
        let broker = &self.node.broker;
        let bytes = self.node.config.history.replay_page_bytes;
        let read = async {
            let top = broker.history(name, None, 0, 0).await?;
            let after = match &since {
                // Another epoch: its offsets mean nothing here; say where it is.
                Some(s) if !s.epoch.is_empty() && s.epoch != top.epoch => return Ok(top),
                Some(s) => s.offset,
                None => top.top.saturating_sub(u64::from(limit)),
            };
            if top.epoch.is_empty() || after >= top.top {
                return Ok(top);
            }
            let mut page = broker
                .history(name, Some(after), limit as usize, bytes)
                .await?;
            // The last entries asked for: a page the byte budget cut short holds the
            // oldest of them; ask again for as many as fit, ending at the newest.
            let mut tries = 0;
            while since.is_none()
                && tries < 4
                && page.epoch == top.epoch
                && page.pubs.last().and_then(|p| p.offset) < Some(page.top)
                && !page.pubs.is_empty()
            {
                tries += 1;
                let fit = (page.pubs.len() as u64)
                    .saturating_sub(u64::from(tries > 1))
                    .max(1);
                page = broker
                    .history(
                        name,
                        Some(page.top.saturating_sub(fit)),
                        fit as usize,
                        bytes,
                    )
                    .await?;
            }
            Ok::<_, crate::broker::BrokerError>(page)
        };
        match read.await {
            Ok(page) => Outcome::Reply(Reply::ok(
                id,
                HistoryResult {
                    channel: name.to_owned(),
                    epoch: page.epoch,
                    offset: page.top,
                    publications: page
                        .pubs
                        .into_iter()
                        .take(limit as usize)
                        .map(|p| HistoryEntry {
                            payload: serde_json::from_str(p.payload.json())
                                .unwrap_or(serde_json::Value::Null),
                            event: p.event,
                            msg_id: p.id,
                            offset: p.offset.unwrap_or(0),
                            ts: p.ts,
                        })
                        .collect(),
                },
            )),
            Err(e) => err(Some(id), e.code(), e.to_string()),
        }
    }
}
