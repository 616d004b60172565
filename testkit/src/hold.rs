//! A loopback TCP proxy that holds back what servers send from a chosen point in
//! their byte streams and lets it through in steps. It makes one event happen
//! after another deterministically: for example, a pub/sub message read by the
//! gateway only after it has read its subscription's confirmation *and* done what
//! follows that confirmation.
//!
//! Patterns are searched in the raw server-to-client bytes of every connection;
//! holding may start inside a reply (the peer's parser then waits for the rest).
//! Client-to-server bytes always pass.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Default)]
struct Rule {
    /// Hold every connection's stream from the first occurrence of this on.
    hold_from: Option<Vec<u8>>,
    /// The latest step: let a holding stream through up to the first occurrence
    /// of the pattern after its hold point (or all it holds, if none yet).
    step: Option<Vec<u8>>,
    /// Counts steps over the proxy's life, so each stream takes each step once.
    steps: u64,
}

pub struct HoldProxy {
    pub addr: SocketAddr,
    rule: watch::Sender<Rule>,
    task: tokio::task::JoinHandle<()>,
}

impl HoldProxy {
    /// Starts proxying 127.0.0.1:<free port> to `target`.
    pub async fn start(target: SocketAddr) -> HoldProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (rule, _) = watch::channel(Rule::default());
        let rules = rule.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rule = rules.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, cw) = client.into_split();
                    let (sr, mut sw) = server.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    });
                    down(sr, cw, rule).await;
                    up.abort();
                });
            }
        });
        HoldProxy { addr, rule, task }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// From now on, a stream in which `pattern` appears is held from there.
    pub fn hold_from(&self, pattern: &[u8]) {
        self.rule.send_modify(|r| {
            r.hold_from = Some(pattern.to_vec());
            r.step = None;
        });
    }

    /// Lets each holding stream through up to the next occurrence of `pattern`
    /// after its hold point (everything it holds if there is none yet); the rest,
    /// and whatever arrives later, stays held.
    pub fn release_until(&self, pattern: &[u8]) {
        self.rule.send_modify(|r| {
            r.steps += 1;
            r.step = Some(pattern.to_vec());
        });
    }

    /// Lets everything through and stops holding.
    pub fn release(&self) {
        self.rule.send_modify(|r| {
            r.hold_from = None;
            r.step = None;
        });
    }
}

impl Drop for HoldProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One connection's server-to-client direction.
async fn down(
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    mut rule: watch::Receiver<Rule>,
) {
    // Bytes received and not forwarded yet; while holding, they start at the hold
    // point. `tail` keeps the last forwarded bytes, so a pattern split across two
    // reads is still found.
    let mut pending: Vec<u8> = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    let mut holding = false;
    let mut step_done = 0u64;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let r = rule.borrow_and_update().clone();
        let allowed = match (&r.hold_from, holding) {
            (None, _) => {
                holding = false;
                pending.len()
            }
            (Some(p), false) => {
                let mut seen = tail.clone();
                seen.extend_from_slice(&pending);
                match find(&seen, p) {
                    Some(i) => {
                        holding = true;
                        step_done = r.steps;
                        i.saturating_sub(tail.len())
                    }
                    None => pending.len(),
                }
            }
            (Some(_), true) => match &r.step {
                Some(q) if r.steps > step_done => {
                    step_done = r.steps;
                    match pending.get(1..).and_then(|rest| find(rest, q)) {
                        Some(j) => j + 1,
                        None => pending.len(),
                    }
                }
                _ => 0,
            },
        };
        if allowed > 0 {
            if client.write_all(&pending[..allowed]).await.is_err() {
                return;
            }
            tail.extend_from_slice(&pending[..allowed]);
            let keep = tail.len().saturating_sub(256);
            tail.drain(..keep);
            pending.drain(..allowed);
        }
        tokio::select! {
            n = server.read(&mut chunk) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            },
            changed = rule.changed() => if changed.is_err() { return },
        }
    }
}
