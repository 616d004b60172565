//! A collaborative document over a [`client::Client`]: an [`Editor`] driven by a
//! background task that carries out its actions with the client (snapshot and
//! history reads, the subscription, conditional publishes, snapshots, cursors) and
//! feeds it the document's events. The client does the rest: reconnection, resuming
//! the document channel from the last offset it saw, the offline queue.
//!
//! ```no_run
//! # async fn f(client: client::Client) -> Result<(), collab::DocumentError> {
//! use collab::{Document, DocumentEvent, Options};
//!
//! let (doc, mut events) = Document::open(&client, "doc:42", Options::default()).await?;
//! doc.insert(0, "Hello")?;
//! while let Some(ev) = events.next().await {
//!     match ev {
//!         DocumentEvent::Changed { op, .. } => println!("remote edit {op}: {}", doc.text()),
//!         DocumentEvent::Reloaded { lost_local_edits: true, .. } => println!("edits lost"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use client::{
    Appended, Client, Error as ClientError, ErrorCode, Event as ClientEvent, Events, HistoryResult,
    MAX_HISTORY_PAGE, State, Subscription,
};
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until};

use crate::editor::{
    self, Action, CURSOR_EVENT, Config, EditError, Editor, OP_EVENT, PublishOutcome, RemoteCursor,
    SNAPSHOT_EVENT, SNAPSHOT_READ, Snapshot, cursor_channel, snapshot_channel,
};
use crate::ot::{Operation, Selection};

/// How a document is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// The editor's id in its operations and cursors (default: 16 random hex
    /// digits). Unique per open document.
    pub client_id: Option<String>,
    /// The user named in the cursors (default: the client's user, from its personal
    /// channel).
    pub user: Option<String>,
    /// A snapshot after each own operation whose revision is a multiple of this
    /// (default 500; 0: never).
    pub snapshot_interval: u64,
    /// The largest wire form of one published operation in bytes (default 32 KiB;
    /// keep it under the gateway's `--max-payload-size`).
    pub max_op_bytes: usize,
    /// Follow and publish cursors on `cursor:<doc>` (default true).
    pub cursors: bool,
    /// The shortest time between two cursor publishes (default 50 ms).
    pub cursor_interval: Duration,
    /// How long the document may be behind the log (an accepted operation that does
    /// not show up, a gap) before it reads history (default 2 s).
    pub stall_after: Duration,
    /// The first delay before trying again a request refused for now
    /// (`rate_limited`, `unavailable`, a full queue); it doubles up to 30 s
    /// (default 250 ms).
    pub retry_delay: Duration,
    /// Events kept for the application before the oldest unread ones are dropped
    /// (then reported as [`DocumentEvent::Lagged`]; default 1024).
    pub event_capacity: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            client_id: None,
            user: None,
            snapshot_interval: editor::DEFAULT_SNAPSHOT_INTERVAL,
            max_op_bytes: editor::DEFAULT_MAX_OP_BYTES,
            cursors: true,
            cursor_interval: Duration::from_millis(50),
            stall_after: Duration::from_secs(2),
            retry_delay: Duration::from_millis(250),
            event_capacity: 1024,
        }
    }
}

/// The bounded queue of events to the application. Its last place is kept for a
/// [`DocumentEvent::Lagged`]: when the others are taken, that marker goes in and
/// further events are dropped until the application has read some, so an
/// application that stops reading never makes the document hold a backlog, and
/// learns where events went missing.
struct Out {
    tx: mpsc::Sender<DocumentEvent>,
    lagging: bool,
}

impl Out {
    fn send(&mut self, e: DocumentEvent) {
        let room = self.tx.capacity();
        if self.lagging && room <= 1 {
            return;
        }
        self.lagging = false;
        let e = if room > 1 {
            e
        } else {
            self.lagging = true;
            DocumentEvent::Lagged
        };
        let _ = self.tx.try_send(e);
    }
}

/// What went wrong with a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// The client failed a request the document needed (e.g. the subscription was
    /// refused), or stopped.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A local edit that does not apply.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// The document was closed (by [`Document::close`], a lost subscription or a
    /// stopped client).
    #[error("document closed")]
    Closed,
}

/// What happened to a document, in order. The first event is [`Loaded`]; the
/// changes that follow apply to its text, and after a [`Reloaded`] to that one.
///
/// [`Loaded`]: DocumentEvent::Loaded
/// [`Reloaded`]: DocumentEvent::Reloaded
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DocumentEvent {
    /// Loaded and up to date: the text at `revision`.
    Loaded { text: String, revision: u64 },
    /// A remote operation changed the text: `op` is what was applied to the local
    /// text. Local edits are not echoed.
    Changed { op: Operation, revision: u64 },
    /// The document was loaded again (its history was gone, or a publish was
    /// refused for good): the text is now `text`. `lost_local_edits`: local edits
    /// that were not in the log were dropped.
    Reloaded {
        text: String,
        revision: u64,
        lost_local_edits: bool,
    },
    /// Another editor's selection, in the coordinates of the text at that moment.
    Cursor {
        client: String,
        user: String,
        selection: Selection,
    },
    /// Another editor's selection is gone (its user left the document's presence).
    CursorRemoved { client: String },
    /// The log entry at `offset` is not an operation that applies; skipped by every
    /// editor.
    Skipped { offset: u64, reason: String },
    /// The client's connection went up or down (edits go on offline).
    Connection { connected: bool },
    /// The application did not read events fast enough (`Options::event_capacity`
    /// were unread): the events after this one were dropped until it read again.
    /// The document itself is unaffected: read `text()` and `remote_cursors()`
    /// again.
    Lagged,
    /// Something the document could not do: a publish refused for good, a snapshot
    /// not written, the subscription lost (then the document closes), or the
    /// client's own errors.
    Error(DocumentError),
}

impl From<editor::Event> for DocumentEvent {
    fn from(e: editor::Event) -> Self {
        match e {
            editor::Event::Loaded { text, revision } => Self::Loaded { text, revision },
            editor::Event::Changed { op, revision } => Self::Changed { op, revision },
            editor::Event::Reloaded {
                text,
                revision,
                lost_local_edits,
            } => Self::Reloaded {
                text,
                revision,
                lost_local_edits,
            },
            editor::Event::Cursor {
                client,
                user,
                selection,
            } => Self::Cursor {
                client,
                user,
                selection,
            },
            editor::Event::CursorRemoved { client } => Self::CursorRemoved { client },
            editor::Event::Skipped { offset, reason } => Self::Skipped { offset, reason },
        }
    }
}

/// The events of one document. Ends when the document is closed. Read it, or drop
/// it: at most `Options::event_capacity` unread events are kept, beyond that they
/// are dropped and reported as [`DocumentEvent::Lagged`].
#[derive(Debug)]
pub struct DocumentEvents {
    rx: mpsc::Receiver<DocumentEvent>,
}

impl DocumentEvents {
    /// The next event; `None` once the document is closed and every event was read.
    pub async fn next(&mut self) -> Option<DocumentEvent> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for DocumentEvents {
    type Item = DocumentEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<DocumentEvent>> {
        self.rx.poll_recv(cx)
    }
}

/// State shared by the handle and the background task.
struct Shared {
    editor: Mutex<Editor>,
    /// Wakes the task after a local edit or selection change.
    wake: Notify,
    connected: AtomicBool,
    closed: AtomicBool,
}

fn lock(m: &Mutex<Editor>) -> MutexGuard<'_, Editor> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An open collaborative document. Edits apply at once and go out in the
/// background; remote ones arrive as [`DocumentEvent`]s. Positions and lengths
/// count Unicode code points. Dropping it closes it (as [`close`](Self::close),
/// without waiting).
#[derive(Debug)]
pub struct Document {
    shared: Arc<Shared>,
    channel: String,
    client_id: String,
    close: mpsc::Sender<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("connected", &self.connected)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Document {
    /// Opens the document channel `channel` (e.g. `doc:42`): reads its latest
    /// snapshot on `snap:<channel>`, subscribes resuming from the snapshot's
    /// revision (and to `cursor:<channel>`), and returns once the document is up to
    /// date. The token needs subscribe and publish rights on the three channels, and
    /// the gateway `--history` rules for the document and snapshot channels (see
    /// docs/collaboration.md). While the client is disconnected this waits for the
    /// connection; wrap it in a timeout if needed.
    ///
    /// The document's events are routed away from the client's main event stream
    /// ([`Client::channel_events`]). Do not subscribe to these channels yourself.
    pub async fn open(
        client: &Client,
        channel: impl Into<String>,
        options: Options,
    ) -> Result<(Document, DocumentEvents), DocumentError> {
        let channel = channel.into();
        let cursor = cursor_channel(&channel);
        let routed = client
            .channel_events([channel.clone(), cursor.clone()])
            .await?;
        let client_id = options
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let user = options.user.clone().unwrap_or_else(|| {
            client
                .personal_channel()
                .and_then(|c| c.strip_prefix("$user:").map(str::to_owned))
                .unwrap_or_default()
        });
        let mut cfg = Config::new(client_id.clone());
        cfg.user = user;
        cfg.snapshot_interval = options.snapshot_interval;
        cfg.max_op_bytes = options.max_op_bytes;
        let shared = Arc::new(Shared {
            editor: Mutex::new(Editor::new(cfg)),
            wake: Notify::new(),
            connected: AtomicBool::new(matches!(client.state(), State::Connected { .. })),
            closed: AtomicBool::new(false),
        });
        let (out_tx, out_rx) = mpsc::channel(options.event_capacity.max(1) + 1);
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        let (close_tx, close_rx) = mpsc::channel(1);
        let (loaded_tx, loaded_rx) = oneshot::channel();
        let runner = Runner {
            shared: shared.clone(),
            client: client.clone(),
            doc: channel.clone(),
            snap: snapshot_channel(&channel),
            cursor,
            opts: options,
            routed,
            out: Out {
                tx: out_tx,
                lagging: false,
            },
            results_tx,
            results: results_rx,
            close: close_rx,
            loaded: Some(loaded_tx),
            swallow_recovered: false,
            awaiting_subscription: false,
            last_cursor: None,
            cursor_out: false,
            behind_since: None,
            stop: None,
        };
        tokio::spawn(runner.run());
        match loaded_rx.await {
            Ok(Ok(())) => Ok((
                Document {
                    shared,
                    channel,
                    client_id,
                    close: close_tx,
                },
                DocumentEvents { rx: out_rx },
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DocumentError::Closed),
        }
    }

    /// The document channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// This editor's id in operations and cursors.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The text (with the local edits not in the log yet).
    pub fn text(&self) -> String {
        lock(&self.shared.editor).text().to_owned()
    }

    /// Runs `f` on the text without copying it.
    pub fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        f(lock(&self.shared.editor).text())
    }

    /// The length of the text in code points.
    pub fn len(&self) -> usize {
        lock(&self.shared.editor).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The offset of the last log entry applied.
    pub fn revision(&self) -> u64 {
        lock(&self.shared.editor).revision()
    }

    /// The history epoch of the revision.
    pub fn epoch(&self) -> String {
        lock(&self.shared.editor).epoch().to_owned()
    }

    /// Whether there are local edits not in the log yet.
    pub fn has_pending(&self) -> bool {
        lock(&self.shared.editor).has_pending()
    }

    /// The revision of the snapshot the document was loaded from at open (0: it
    /// was read from the start of the log).
    pub fn loaded_from(&self) -> u64 {
        lock(&self.shared.editor).loaded_from()
    }

    /// Up to date with everything known of the log, with no local edits pending.
    pub fn is_synced(&self) -> bool {
        lock(&self.shared.editor).is_synced()
    }

    /// Whether the client is connected.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// Whether the document was closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// The local selection.
    pub fn selection(&self) -> Selection {
        lock(&self.shared.editor).selection()
    }

    /// The other editors' selections in the coordinates of the text.
    pub fn remote_cursors(&self) -> Vec<RemoteCursor> {
        lock(&self.shared.editor).remote_cursors()
    }

    fn with_editor<R>(
        &self,
        f: impl FnOnce(&mut Editor) -> Result<R, EditError>,
    ) -> Result<R, DocumentError> {
        if self.is_closed() {
            return Err(DocumentError::Closed);
        }
        let r = f(&mut lock(&self.shared.editor))?;
        self.shared.wake.notify_one();
        Ok(r)
    }

    /// A local edit: `op` applies to the current text (its base length is the
    /// text's length). Applied at once, published in the background.
    pub fn edit(&self, op: &Operation) -> Result<(), DocumentError> {
        self.with_editor(|e| e.edit(op))
    }

    /// Inserts `text` at code point `pos`.
    pub fn insert(&self, pos: usize, text: &str) -> Result<(), DocumentError> {
        self.with_editor(|e| e.insert(pos, text))
    }

    /// Deletes `len` code points at `pos`.
    pub fn delete(&self, pos: usize, len: usize) -> Result<(), DocumentError> {
        self.with_editor(|e| e.delete(pos, len))
    }

    /// Replaces `len` code points at `pos` with `text`.
    pub fn replace(&self, pos: usize, len: usize, text: &str) -> Result<(), DocumentError> {
        self.with_editor(|e| e.replace(pos, len, text))
    }

    /// An edit made from the text as it is at this moment (remote changes land in
    /// the background, so positions read earlier may be stale): `f` gets the text
    /// and returns the operation to apply to it, or `None` for no edit. Returns
    /// whether an edit was made.
    ///
    /// ```no_run
    /// # fn f(doc: &collab::Document) -> Result<(), collab::DocumentError> {
    /// use collab::ot::Operation;
    /// // Append a line, wherever the end is now.
    /// doc.edit_with(|text| {
    ///     let mut op = Operation::new();
    ///     op.retain(text.chars().count()).insert("\n-- signed");
    ///     Some(op)
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn edit_with(
        &self,
        f: impl FnOnce(&str) -> Option<Operation>,
    ) -> Result<bool, DocumentError> {
        self.with_editor(|e| match f(e.text()) {
            Some(op) => e.edit(&op).map(|()| true),
            None => Ok(false),
        })
    }

    /// Sets the local selection (published to the other editors).
    pub fn set_selection(&self, selection: Selection) -> Result<(), DocumentError> {
        self.with_editor(|e| {
            e.set_selection(selection);
            Ok(())
        })
    }

    /// Closes the document: unsubscribes from its channels and ends its event
    /// stream. Local edits not in the log yet are not sent any more.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.close.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The answers of the client's requests, back to the task.
enum Outcome {
    Snapshot {
        request: u64,
        snapshot: Option<Snapshot>,
    },
    Subscribed(Result<Subscription, ClientError>),
    Published {
        seq: u64,
        attempt: u32,
        outcome: PublishOutcome,
    },
    History {
        request: u64,
        result: Result<HistoryResult, ClientError>,
    },
    CursorSent,
    /// Worth telling the application.
    Error(ClientError),
}

/// Whether a refusal may succeed later as it is (after a delay).
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Server { .. } => matches!(
            e.code(),
            Some(ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal) | None
        ),
        ClientError::QueueFull { .. }
        | ClientError::Timeout(_)
        | ClientError::Disconnected
        | ClientError::Protocol(_) => true,
        _ => false,
    }
}

/// The client stopped: nothing more can be done with it.
fn stopped(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Closed
            | ClientError::Unauthorized(_)
            | ClientError::ServerClosed { .. }
            | ClientError::Handshake { .. }
    )
}

/// The delay before try `n` (0: the first) of something refused for now.
fn retry_delay(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1 << n.min(16))
        .min(Duration::from_secs(30))
}

/// The background task of one document.
struct Runner {
    shared: Arc<Shared>,
    client: Client,
    doc: String,
    snap: String,
    cursor: String,
    opts: Options,
    routed: Events,
    out: Out,
    results_tx: mpsc::UnboundedSender<Outcome>,
    results: mpsc::UnboundedReceiver<Outcome>,
    close: mpsc::Receiver<oneshot::Sender<()>>,
    /// `Document::open` waiting for the first `Loaded`.
    loaded: Option<oneshot::Sender<Result<(), DocumentError>>>,
    /// The next `Recovered` of the document channel answers the editor's own
    /// subscribe, whose result comes with the call.
    swallow_recovered: bool,
    /// The editor's subscribe was refused as `unavailable`: the client subscribes
    /// again by itself and reports it as `Subscribed`.
    awaiting_subscription: bool,
    last_cursor: Option<Instant>,
    /// A cursor publish is out.
    cursor_out: bool,
    /// Since when the editor has been behind the log.
    behind_since: Option<Instant>,
    /// Why the task stops (None: closed by the application).
    stop: Option<DocumentError>,
}

impl Runner {
    async fn run(mut self) {
        if self.opts.cursors {
            let (client, cursor, tx) = (
                self.client.clone(),
                self.cursor.clone(),
                self.results_tx.clone(),
            );
            tokio::spawn(async move {
                if let Err(e) = client.subscribe(cursor).await {
                    let _ = tx.send(Outcome::Error(e));
                }
            });
        }
        let mut close_ack = None;
        loop {
            self.flush();
            if self.stop.is_some() {
                break;
            }
            let cursor_at = self.cursor_due();
            let stall_at = self.stall_due();
            tokio::select! {
                ev = self.routed.next() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => {
                        let e = self.client.state();
                        tracing::debug!(doc = %self.doc, ?e, "client stopped");
                        self.stop = Some(DocumentError::Closed);
                    }
                },
                Some(outcome) = self.results.recv() => self.on_outcome(outcome),
                () = self.shared.wake.notified() => {}
                () = sleep_opt(cursor_at) => self.send_cursor(),
                () = sleep_opt(stall_at) => {
                    self.behind_since = Some(Instant::now());
                    lock(&self.shared.editor).poke();
                }
                ack = self.close.recv() => {
                    close_ack = ack;
                    break;
                }
            }
        }
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(e) = self.stop.take() {
            if let Some(l) = self.loaded.take() {
                let _ = l.send(Err(e.clone()));
            } else if e != DocumentError::Closed {
                self.out.send(DocumentEvent::Error(e));
            }
        }
        let Runner {
            client,
            doc,
            cursor,
            opts,
            routed,
            ..
        } = self;
        // The route goes first, so the client never waits on a stream nobody reads.
        drop(routed);
        let _ = client.unsubscribe(doc).await;
        if opts.cursors {
            let _ = client.unsubscribe(cursor).await;
        }
        if let Some(ack) = close_ack {
            let _ = ack.send(());
        }
    }

    /// Carries out the editor's actions and hands its events on.
    fn flush(&mut self) {
        let (actions, events) = {
            let mut ed = lock(&self.shared.editor);
            (ed.take_actions(), ed.take_events())
        };
        for e in events {
            if matches!(e, editor::Event::Loaded { .. })
                && let Some(l) = self.loaded.take()
            {
                let _ = l.send(Ok(()));
            }
            self.out.send(e.into());
        }
        for a in actions {
            self.execute(a);
        }
    }

    fn cursor_due(&self) -> Option<Instant> {
        if !self.opts.cursors
            || self.cursor_out
            || !self.shared.connected.load(Ordering::SeqCst)
            || !lock(&self.shared.editor).cursor_pending()
        {
            return None;
        }
        Some(
            self.last_cursor
                .map_or_else(Instant::now, |t| t + self.opts.cursor_interval),
        )
    }

    fn stall_due(&mut self) -> Option<Instant> {
        if lock(&self.shared.editor).is_behind() {
            let since = *self.behind_since.get_or_insert_with(Instant::now);
            Some(since + self.opts.stall_after)
        } else {
            self.behind_since = None;
            None
        }
    }

    fn send_cursor(&mut self) {
        let Some(payload) = lock(&self.shared.editor).take_cursor() else {
            return;
        };
        self.last_cursor = Some(Instant::now());
        self.cursor_out = true;
        let (client, channel, tx) = (
            self.client.clone(),
            self.cursor.clone(),
            self.results_tx.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = client.publish(channel, CURSOR_EVENT, &payload).await {
                tracing::debug!(error = %e, "cursor not published");
            }
            let _ = tx.send(Outcome::CursorSent);
        });
    }

    fn execute(&mut self, action: Action) {
        let (client, tx) = (self.client.clone(), self.results_tx.clone());
        let base = self.opts.retry_delay;
        match action {
            Action::LoadSnapshot { request, attempt } => {
                let snap = self.snap.clone();
                tokio::spawn(async move {
                    if attempt > 1 {
                        sleep(retry_delay(base, attempt - 2)).await;
                    }
                    let snapshot = load_snapshot(&client, &snap, base, &tx).await;
                    let _ = tx.send(Outcome::Snapshot { request, snapshot });
                });
            }
            Action::Subscribe { since } => {
                self.swallow_recovered = true;
                let doc = self.doc.clone();
                tokio::spawn(async move {
                    let r = client.subscribe_from(doc, since).await;
                    let _ = tx.send(Outcome::Subscribed(r));
                });
            }
            Action::Publish {
                seq,
                attempt,
                payload,
                expect,
            } => {
                let doc = self.doc.clone();
                tokio::spawn(async move {
                    let r = client.publish_if(doc, OP_EVENT, &payload, expect).await;
                    let outcome = match r {
                        Ok(Appended { offset, epoch, .. }) => {
                            PublishOutcome::Accepted { offset, epoch }
                        }
                        Err(ClientError::Conflict { offset, epoch }) => {
                            PublishOutcome::Conflict { offset, epoch }
                        }
                        Err(e) if stopped(&e) => return,
                        Err(e) if transient(&e) => {
                            if !matches!(e, ClientError::Disconnected | ClientError::Timeout(_)) {
                                sleep(base).await;
                            }
                            PublishOutcome::Failed
                        }
                        Err(e) => {
                            let _ = tx.send(Outcome::Error(e));
                            PublishOutcome::Refused
                        }
                    };
                    let _ = tx.send(Outcome::Published {
                        seq,
                        attempt,
                        outcome,
                    });
                });
            }
            Action::FetchHistory { request, since } => {
                let doc = self.doc.clone();
                tokio::spawn(async move {
                    let result = client
                        .history(doc, Some(MAX_HISTORY_PAGE), Some(since))
                        .await;
                    match &result {
                        Err(e) if stopped(e) => return,
                        Err(e) if transient(e) => sleep(base).await,
                        Err(e) => {
                            let _ = tx.send(Outcome::Error(e.clone()));
                            sleep(retry_delay(base, 4)).await;
                        }
                        Ok(_) => {}
                    }
                    let _ = tx.send(Outcome::History { request, result });
                });
            }
            Action::PublishSnapshot { payload } => {
                let snap = self.snap.clone();
                tokio::spawn(async move {
                    if let Err(e) = client.publish(snap, SNAPSHOT_EVENT, &payload).await
                        && !stopped(&e)
                    {
                        let _ = tx.send(Outcome::Error(e));
                    }
                });
            }
        }
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Snapshot { request, snapshot } => {
                lock(&self.shared.editor).on_snapshot(request, snapshot);
            }
            Outcome::Subscribed(Ok(sub)) => lock(&self.shared.editor).on_subscribed(&sub),
            Outcome::Subscribed(Err(e)) => {
                if e.code() == Some(ErrorCode::Unavailable) {
                    // The client keeps the channel and reports the success later.
                    self.awaiting_subscription = true;
                } else if transient(&e) {
                    // Dropped by the client (e.g. `rate_limited`): subscribe again.
                    let since = {
                        let ed = lock(&self.shared.editor);
                        client::Since {
                            offset: ed.revision(),
                            epoch: ed.epoch().to_owned(),
                        }
                    };
                    let (client, tx, doc) = (
                        self.client.clone(),
                        self.results_tx.clone(),
                        self.doc.clone(),
                    );
                    let delay = self.opts.retry_delay;
                    self.swallow_recovered = true;
                    tokio::spawn(async move {
                        sleep(delay).await;
                        let r = client.subscribe_from(doc, since).await;
                        let _ = tx.send(Outcome::Subscribed(r));
                    });
                } else {
                    self.stop = Some(e.into());
                }
            }
            Outcome::Published {
                seq,
                attempt,
                outcome,
            } => lock(&self.shared.editor).on_publish_result(seq, attempt, outcome),
            Outcome::History { request, result } => {
                let mut ed = lock(&self.shared.editor);
                match result {
                    Ok(page) => ed.on_history(request, &page),
                    Err(_) => ed.on_history_failed(request),
                }
            }
            Outcome::CursorSent => self.cursor_out = false,
            Outcome::Error(e) => {
                self.out.send(DocumentEvent::Error(e.into()));
            }
        }
    }

    fn on_event(&mut self, ev: ClientEvent) {
        match ev {
            ClientEvent::Message {
                channel,
                event,
                payload,
                offset,
                epoch,
                ..
            } => {
                let value: Value = payload.parse().unwrap_or(Value::Null);
                let mut ed = lock(&self.shared.editor);
                if channel == self.doc {
                    ed.on_message(offset, epoch.as_deref(), &event, &value);
                } else if channel == self.cursor && event == CURSOR_EVENT {
                    ed.on_cursor(&value);
                }
            }
            ClientEvent::Recovered { channel, recovered } if channel == self.doc => {
                if std::mem::take(&mut self.swallow_recovered) {
                    return;
                }
                lock(&self.shared.editor).on_resumed(recovered);
            }
            ClientEvent::Subscribed(sub)
                if sub.channel == self.doc && self.awaiting_subscription =>
            {
                self.awaiting_subscription = false;
                lock(&self.shared.editor).on_subscribed(&sub);
            }
            ClientEvent::PresenceDiff {
                channel, leaves, ..
            } if channel == self.doc => {
                let mut ed = lock(&self.shared.editor);
                for l in leaves {
                    ed.remove_cursors_of(&l.user);
                }
            }
            ClientEvent::Error(e @ ClientError::Subscription { .. }) => {
                let doc_lost =
                    matches!(&e, ClientError::Subscription { channel, .. } if *channel == self.doc);
                if doc_lost && e.code() != Some(ErrorCode::Unavailable) {
                    // The client dropped the document channel (e.g. the token no
                    // longer allows it): nothing more arrives.
                    self.stop = Some(e.into());
                } else {
                    self.out.send(DocumentEvent::Error(e.into()));
                }
            }
            ClientEvent::Connected { .. } => {
                self.shared.connected.store(true, Ordering::SeqCst);
                self.out.send(DocumentEvent::Connection { connected: true });
            }
            ClientEvent::Disconnected { .. } => {
                lock(&self.shared.editor).on_disconnected();
                self.shared.connected.store(false, Ordering::SeqCst);
                self.out
                    .send(DocumentEvent::Connection { connected: false });
            }
            ClientEvent::Error(e) => {
                self.out.send(DocumentEvent::Error(e.into()));
            }
            _ => {}
        }
    }
}

/// The snapshot to load from `snap:<doc>` (see [`Snapshot::pick`]). Refusals for now are tried again; a refusal for good (no right to the
/// channel, no history rule for it) means no snapshot, reported as an error.
async fn load_snapshot(
    client: &Client,
    snap: &str,
    base: Duration,
    tx: &mpsc::UnboundedSender<Outcome>,
) -> Option<Snapshot> {
    let mut tries = 0;
    loop {
        match client.history(snap, Some(SNAPSHOT_READ), None).await {
            Ok(h) => {
                return Snapshot::pick(
                    h.publications
                        .iter()
                        .filter(|p| p.event == SNAPSHOT_EVENT)
                        .map(|p| &p.payload),
                );
            }
            Err(e) if stopped(&e) => return None,
            Err(e) if transient(&e) => {
                if tx.is_closed() {
                    return None;
                }
                sleep(retry_delay(base, tries)).await;
                tries += 1;
            }
            Err(e) => {
                let _ = tx.send(Outcome::Error(e));
                return None;
            }
        }
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}
