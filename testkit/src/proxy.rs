//! A loopback TCP proxy whose existing connections can be frozen: they stay open
//! but forward nothing, like a connection to a server that silently stopped
//! answering. Connections made after the freeze work normally.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct FreezeProxy {
    pub addr: SocketAddr,
    /// Connections accepted before this generation are frozen.
    frozen_before: Arc<AtomicU64>,
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezeProxy {
    /// Starts proxying 127.0.0.1:<free port> to `target`.
    pub async fn start(target: SocketAddr) -> FreezeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen_before = Arc::new(AtomicU64::new(0));
        let generation = Arc::new(AtomicU64::new(0));
        let (fb, gen_) = (frozen_before.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let my_gen = gen_.fetch_add(1, Ordering::SeqCst) + 1;
                let fb = fb.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let fb2 = fb.clone();
                    let up =
                        tokio::spawn(async move { pump(&mut cr, &mut sw, my_gen, &fb2).await });
                    pump(&mut sr, &mut cw, my_gen, &fb).await;
                    up.abort();
                });
            }
        });
        FreezeProxy {
            addr,
            frozen_before,
            generation,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Freezes every connection open now; later ones are not affected.
    pub fn freeze_existing(&self) {
        let g = self.generation.load(Ordering::SeqCst);
        self.frozen_before.store(g + 1, Ordering::SeqCst);
    }
}

async fn pump<R, W>(r: &mut R, w: &mut W, gen_: u64, frozen_before: &AtomicU64)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if gen_ < frozen_before.load(Ordering::SeqCst) {
            // Swallow the bytes and keep the connection open: a silent failure.
            continue;
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for FreezeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
