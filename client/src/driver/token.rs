//! The token: fetched from the refresher when there is none or the server refused
//! it, refreshed on the open connection before it expires, and adopted once the
//! server accepted it. A token the refresher just returned that is refused as well
//! stops the client instead of looping.

use std::time::Duration;

use protocol::frame::{ClientFrame, RefreshResult};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Driver;
use super::conn::Conn;
use super::requests::Pending;
use crate::ended::Ended;
use crate::{Error, Event};

/// When to refresh a token expiring at `expires_at` (Unix seconds): at 80% of the
/// remaining lifetime, at most 60 s before expiry.
pub(crate) fn refresh_delay(expires_at: u64, now_unix_ms: u64) -> Option<Duration> {
    let remaining = expires_at.checked_mul(1000)?.checked_sub(now_unix_ms)?;
    if remaining == 0 {
        return None;
    }
    let remaining = Duration::from_millis(remaining);
    let lead = (remaining / 5).min(Duration::from_secs(60));
    Some(remaining - lead)
}

impl Driver {
    /// Gets a new token from the refresher; an error stops the client.
    pub(super) async fn fetch_token(&mut self, reason: &str) -> Result<(), Error> {
        if self.token_unproven {
            return Err(Error::Unauthorized(format!(
                "{reason} (with a token the refresher had just returned)"
            )));
        }
        let Some(refresher) = self.cfg.refresher.clone() else {
            return Err(Error::Unauthorized(format!(
                "{reason}; no token refresher is configured"
            )));
        };
        match self.idle(refresher()).await? {
            Ok(t) if Some(&t) == self.token.as_ref() => Err(Error::Unauthorized(format!(
                "{reason}; the token refresher returned the same token"
            ))),
            Ok(t) => {
                self.token = Some(t);
                self.token_unproven = true;
                Ok(())
            }
            Err(e) => Err(Error::Unauthorized(format!(
                "{reason}; the token refresher failed: {e}"
            ))),
        }
    }

    /// Plans the proactive refresh of a token expiring at `expires_at`, when a
    /// refresher is set and auto-refresh is on.
    pub(super) fn schedule_refresh(&self, conn: &mut Conn, expires_at: u64) {
        conn.refresh_at = None;
        if !self.cfg.auto_refresh || self.cfg.refresher.is_none() {
            return;
        }
        if let Some(d) = refresh_delay(expires_at, protocol::now_millis()) {
            conn.refresh_at = Some(Instant::now() + d);
        }
    }

    /// The refresher answered a proactive refresh: send the new token.
    pub(super) async fn refreshed(
        &mut self,
        conn: &mut Conn,
        token: Result<String, String>,
    ) -> Result<(), Ended> {
        match token {
            Ok(token) => {
                let id = self.id();
                let frame = ClientFrame::Refresh {
                    id,
                    token: token.clone(),
                };
                let pending = Pending::Refresh { token, reply: None };
                self.send_request(conn, id, frame, pending).await
            }
            Err(e) => {
                self.emit(Event::Error(Error::TokenRefresh(e))).await;
                Ok(())
            }
        }
    }

    /// The answer to `refresh`: adopt the token, plan the next refresh, and drop the
    /// channels the new token no longer allows (each reported as an event).
    pub(super) async fn on_refreshed(
        &mut self,
        conn: &mut Conn,
        token: String,
        reply: Option<oneshot::Sender<Result<Option<u64>, Error>>>,
        result: Result<RefreshResult, Error>,
    ) {
        match result {
            Ok(r) => {
                self.token = Some(token);
                self.token_unproven = false;
                self.schedule_refresh(conn, r.expires_at);
                for channel in r.unsubscribed {
                    self.forget(&channel);
                    self.emit(Event::Error(Error::Subscription {
                        channel,
                        code: protocol::ErrorCode::Forbidden.as_str().into(),
                        message: "the refreshed token no longer allows this channel".into(),
                    }))
                    .await;
                }
                if let Some(r2) = reply {
                    let _ = r2.send(Ok(Some(r.expires_at)));
                }
            }
            Err(e) => match reply {
                Some(r) => {
                    let _ = r.send(Err(e));
                }
                None => {
                    self.emit(Event::Error(Error::TokenRefresh(e.to_string())))
                        .await
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_timing() {
        // 100 s left: refresh after 80 s.
        assert_eq!(
            refresh_delay(1_100, 1_000_000),
            Some(Duration::from_secs(80))
        );
        // An hour left: 60 s before expiry.
        assert_eq!(
            refresh_delay(4_600, 1_000_000),
            Some(Duration::from_secs(3540))
        );
        assert_eq!(refresh_delay(1_000, 1_000_000), None);
        assert_eq!(refresh_delay(999, 1_000_000), None);
    }
}
