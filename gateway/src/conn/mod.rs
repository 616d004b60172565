//! One client connection, from the HTTP upgrade to the close: the handshake
//! authenticates it, the socket task reads its frames (for its session) and writes
//! what its outbox holds, the heartbeat keeps it alive or ends it, and the shared
//! socket lets the hub write to it directly while it is idle.

mod closing;
pub(crate) mod handshake;
pub(crate) mod heartbeat;
pub(crate) mod shared_socket;
pub(crate) mod socket;
mod writer;
