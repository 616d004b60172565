//! One file per client request, each an `impl Session` block with its checks and
//! its reply (in the manner of mini-redis's `cmd/`); [`dispatch`](super::dispatch)
//! decodes a frame and picks one.

mod ack;
mod history;
mod presence;
mod publish;
mod refresh;
mod subscribe;
mod unsubscribe;
