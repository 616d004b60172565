//! One client connection, from the HTTP upgrade to the close: the handshake
//! authenticates it, the socket task reads its frames and writes what its outbox
//! holds, the heartbeat and the rate limiter keep it honest, and the shared socket
//! lets the hub write to it directly while it is idle.

pub(crate) mod handshake;
pub(crate) mod heartbeat;
pub(crate) mod outbox;
pub(crate) mod ratelimit;
pub(crate) mod shared_socket;
pub(crate) mod socket;
