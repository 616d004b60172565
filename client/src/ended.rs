//! How a connection (or a connection attempt) ended, and what to do next: the
//! protocol's reaction to the close code or the HTTP status ([`crate::policy`]), and
//! the error the client stops with when that reaction is to stop. The TypeScript
//! client's `ended.ts` is the same.

use crate::Error;
use crate::policy::{self, Reconnect};

/// The end of a connection or of an attempt.
#[derive(Debug)]
pub(crate) struct Ended {
    /// The close code, when the server sent a close frame.
    pub code: Option<u16>,
    pub reason: String,
    pub action: Reconnect,
    /// The error to stop with when `action` is `Stop`.
    pub terminal: Option<Error>,
}

impl Ended {
    /// Without a close frame: a network error, a reset, a dead heartbeat.
    pub fn lost(reason: impl Into<String>) -> Self {
        Ended {
            code: None,
            reason: reason.into(),
            action: policy::on_connection_lost(),
            terminal: None,
        }
    }

    /// The server's close frame. A close without a reason is reported with the
    /// protocol's name of the code (`going_away`, `resync`, ...).
    pub fn closed(code: u16, reason: String) -> Self {
        let action = policy::on_close(code);
        let terminal = (action == Reconnect::Stop).then(|| Error::ServerClosed {
            code,
            reason: reason.clone(),
        });
        Ended {
            code: Some(code),
            reason: if reason.is_empty() {
                protocol::close::name(code).to_owned()
            } else {
                reason
            },
            action,
            terminal,
        }
    }

    /// The upgrade was refused with an HTTP status (and its body, for the error).
    pub fn refused(status: u16, body: String) -> Self {
        let action = policy::on_handshake_status(status);
        Ended {
            code: None,
            reason: format!("handshake refused with HTTP {status}: {body}"),
            action,
            terminal: (action == Reconnect::Stop).then_some(Error::Handshake { status, body }),
        }
    }

    /// The token cannot even be sent (characters a header does not allow): a new one
    /// is needed, as after a `401`.
    pub fn unusable_token() -> Self {
        Ended {
            code: None,
            reason: "the token contains characters not allowed in a header".into(),
            action: Reconnect::NewToken,
            terminal: None,
        }
    }

    /// [`Client::close`](crate::Client::close): stop without an error event.
    pub fn by_client() -> Self {
        Ended {
            code: Some(protocol::close::NORMAL),
            reason: "closed by the client".into(),
            action: Reconnect::Stop,
            terminal: Some(Error::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_carry_their_error_and_reasons_default_to_the_code_name() {
        let e = Ended::closed(1008, "abuse".into());
        assert_eq!(e.action, Reconnect::Stop);
        assert_eq!(
            e.terminal,
            Some(Error::ServerClosed {
                code: 1008,
                reason: "abuse".into()
            })
        );
        let e = Ended::closed(4005, String::new());
        assert_eq!(
            (e.reason.as_str(), e.action),
            ("resync", Reconnect::Promptly)
        );
        assert_eq!(e.terminal, None);
        let e = Ended::refused(403, "no".into());
        assert_eq!(
            e.terminal,
            Some(Error::Handshake {
                status: 403,
                body: "no".into()
            })
        );
        assert_eq!(
            Ended::refused(401, String::new()).action,
            Reconnect::NewToken
        );
        assert_eq!(Ended::lost("x").action, Reconnect::WithBackoff);
        assert_eq!(Ended::by_client().terminal, Some(Error::Closed));
    }
}
