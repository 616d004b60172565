//! A loopback TCP proxy with faults switched on and off while it runs: a one-way
//! delay added to every byte in both directions (a far or congested Redis), and a
//! freeze that stops forwarding on every open connection until thawed (a stalled
//! server or network) without closing anything. Order and content are kept; a
//! frozen connection holds what it reads (bounded by what the peer sends).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
struct Faults {
    /// One-way delay in microseconds.
    delay_us: AtomicU64,
    frozen: AtomicBool,
    changed: Notify,
    /// Bumped by `cut`: connections opened before it are closed.
    generation: AtomicU64,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts proxying 127.0.0.1:<free port> to `target`, without faults.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        Self::start_on(target, 0).await
    }

    /// Starts on a given port (0: any), e.g. to come back on the same address.
    pub async fn start_on(target: SocketAddr, port: u16) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let born = f.generation.load(Ordering::SeqCst);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(cr, sw, f.clone(), born);
                    let down = pump(sr, cw, f.clone(), born);
                    tokio::select! {
                        () = up => {},
                        () = down => {},
                    }
                });
            }
        });
        FaultProxy { addr, faults, task }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Adds `d` of delay to every byte, each way (zero: none).
    pub fn delay(&self, d: Duration) {
        self.faults
            .delay_us
            .store(d.as_micros() as u64, Ordering::SeqCst);
        self.faults.changed.notify_waiters();
    }

    /// Stops forwarding on every connection (open or new) until [`thaw`](Self::thaw).
    pub fn freeze(&self) {
        self.faults.frozen.store(true, Ordering::SeqCst);
        self.faults.changed.notify_waiters();
    }

    pub fn thaw(&self) {
        self.faults.frozen.store(false, Ordering::SeqCst);
        self.faults.changed.notify_waiters();
    }

    /// Closes every connection open now (both sides see the connection end).
    pub fn cut(&self) {
        self.faults.generation.fetch_add(1, Ordering::SeqCst);
        self.faults.changed.notify_waiters();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One direction: chunks are stamped when read and written once their delay has
/// passed and the proxy is not frozen.
async fn pump(mut r: OwnedReadHalf, mut w: OwnedWriteHalf, f: Arc<Faults>, born: u64) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut eof = false;
    loop {
        if f.generation.load(Ordering::SeqCst) != born {
            return;
        }
        let changed = f.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let delay = Duration::from_micros(f.delay_us.load(Ordering::SeqCst));
        let frozen = f.frozen.load(Ordering::SeqCst);
        let due = queue.front().map(|(at, _)| *at + delay);
        if !frozen
            && let Some(at) = due
            && at <= Instant::now()
        {
            let (_, chunk) = queue.pop_front().unwrap();
            if w.write_all(&chunk).await.is_err() {
                return;
            }
            continue;
        }
        if eof && queue.is_empty() {
            let _ = w.shutdown().await;
            return;
        }
        let wait_due = async {
            match due {
                Some(at) if !frozen => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            n = r.read(&mut buf), if !eof => match n {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => queue.push_back((Instant::now(), buf[..n].to_vec())),
            },
            () = wait_due => {},
            () = &mut changed => {},
        }
    }
}
