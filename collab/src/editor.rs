//! The editing protocol of `docs/collaboration.md` ("The editing protocol") as a pure
//! state machine: no I/O, no timers, no randomness. The inputs are local edits, the
//! document channel's messages (live, replayed or read from history) with their
//! offset and epoch, the outcomes of its own publishes, the answers to loading (the
//! latest snapshot, the subscription) and the other editors' cursors. The outputs are
//! [`Action`]s for a driver to carry out (read the snapshot, subscribe, publish this
//! operation expecting that position, read history, write a snapshot) and
//! [`Event`]s for the application (the text changed, a remote cursor moved, the
//! document was reloaded). [`crate::Document`] drives it over a
//! [`client::Client`]; the tests drive it over a simulated log.
//!
//! The model, as in the TypeScript `client-js/src/collab/editor.ts`:
//!
//! - the **revision** is the offset of the last log entry applied, in the document
//!   channel's history epoch; the **server text** is the log applied in order up to
//!   it, the **text** is the server text plus the local edits not in the log yet;
//! - at most **one operation in flight** (published conditionally, expecting the
//!   revision it was made against) and a **buffer** of the local edits made
//!   meanwhile, composed into one operation;
//! - a remote operation is transformed against the one in flight and then the
//!   buffer (`transform(remote, inflight)`: the operation already in the log goes
//!   first at equal positions), and they become their transformed versions;
//! - the editor's own operation is recognized in the log by `client` and `seq`;
//! - a `conflict` makes the operation in flight wait until the revision reaches the
//!   conflict's offset, then it is sent again (rebased by then); an outcome that is
//!   not known (the connection dropped) sends it again expecting the revision of the
//!   moment, which is safe: if the first one went through it shows up in the log
//!   first, and two publishes expecting one position never both go through;
//! - a message that is not an operation applying to the server text is skipped, by
//!   every editor alike.
//!
//! Beyond the TypeScript editor, this one also runs the loading: the latest snapshot
//! ([`Action::LoadSnapshot`], [`Editor::on_snapshot`]), the subscription from its
//! revision ([`Action::Subscribe`], [`Editor::on_subscribed`]), catching up with
//! history reads when the replay was not complete or a gap shows
//! ([`Action::FetchHistory`], [`Editor::on_history`]), and reloading when the history
//! it stands on is gone (another epoch, or entries no longer retained).

use std::collections::{BTreeMap, HashMap, VecDeque};

use client::{HistoryResult, Since, Subscription};
use serde_json::{Value, json};

use crate::ot::{Component, Operation, OtError, Selection, compose, invert, transform};

/// The event of an operation on the document channel.
pub const OP_EVENT: &str = "op";
/// The event of a snapshot on `snap:<doc>`.
pub const SNAPSHOT_EVENT: &str = "snapshot";
/// The event of a selection on `cursor:<doc>`.
pub const CURSOR_EVENT: &str = "cursor";
/// A snapshot after each own operation whose revision is a multiple of this.
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 500;
/// The largest wire form of one published operation, in bytes (as the TypeScript
/// editor): a larger edit goes out as several operations.
pub const DEFAULT_MAX_OP_BYTES: usize = 32 * 1024;
/// How many recent log operations are kept to move late remote cursors.
pub const DEFAULT_CURSOR_WINDOW: usize = 1000;
/// Messages beyond a gap (or arriving while loading) held until they apply; more are
/// dropped and read from history later.
const MAX_HELD: usize = 10_000;

/// The snapshot channel of a document channel: `snap:<doc>`.
pub fn snapshot_channel(doc: &str) -> String {
    format!("snap:{doc}")
}

/// The cursor channel of a document channel: `cursor:<doc>`.
pub fn cursor_channel(doc: &str) -> String {
    format!("cursor:{doc}")
}

/// An editor's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The editor's id in its operations and cursors: random, one per open document.
    pub client: String,
    /// The user named in its cursors (may be empty).
    pub user: String,
    /// A snapshot after each own operation whose revision is a multiple of this (0:
    /// never).
    pub snapshot_interval: u64,
    /// The largest wire form of one published operation, in bytes (at least 16).
    pub max_op_bytes: usize,
    /// How many recent log operations are kept to move late remote cursors.
    pub cursor_window: usize,
}

impl Config {
    /// The defaults for an editor with this id.
    pub fn new(client: impl Into<String>) -> Self {
        Self {
            client: client.into(),
            user: String::new(),
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            max_op_bytes: DEFAULT_MAX_OP_BYTES,
            cursor_window: DEFAULT_CURSOR_WINDOW,
        }
    }
}

/// A document's text at revision `rev` of `epoch`: the payload of a `snapshot`
/// message (`{"rev", "epoch", "text"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub rev: u64,
    pub epoch: String,
    pub text: String,
}

impl Snapshot {
    /// Reads a snapshot payload; `None` when it is not one.
    pub fn from_payload(v: &Value) -> Option<Snapshot> {
        Some(Snapshot {
            rev: v.get("rev")?.as_u64()?,
            epoch: v.get("epoch")?.as_str()?.to_owned(),
            text: v.get("text")?.as_str()?.to_owned(),
        })
    }

    /// The payload of a `snapshot` message.
    pub fn to_payload(&self) -> Value {
        json!({"rev": self.rev, "epoch": self.epoch, "text": self.text})
    }

    /// The snapshot to load from the last entries of `snap:<doc>` (payloads, oldest
    /// first; [`SNAPSHOT_READ`] of them): the highest revision of the epoch of the
    /// newest one. A snapshot written late (an older revision published after a
    /// newer one) is so passed over.
    pub fn pick<'a>(payloads: impl IntoIterator<Item = &'a Value>) -> Option<Snapshot> {
        let all: Vec<Snapshot> = payloads
            .into_iter()
            .filter_map(Self::from_payload)
            .collect();
        let epoch = all.last()?.epoch.clone();
        all.into_iter()
            .filter(|s| s.epoch == epoch)
            .max_by_key(|s| s.rev)
    }
}

/// How many of the last snapshot entries [`Action::LoadSnapshot`] reads: as many
/// as the recommended rule keeps (`--history 'snap:* 10 30d'`).
pub const SNAPSHOT_READ: u32 = 10;

/// What the driver should do. Each one that asks for something is answered by the
/// method named, with the request's id or sequence number so that late answers are
/// told apart.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Read the latest snapshot (the last [`SNAPSHOT_READ`] entries of
    /// `snap:<doc>`'s history, chosen with [`Snapshot::pick`]) and answer with
    /// [`Editor::on_snapshot`]. `attempt` counts the loads in a row that
    /// did not get the editor up to date: wait longer before each one (0 and 1: at
    /// once).
    LoadSnapshot { request: u64, attempt: u32 },
    /// Subscribe to the document channel resuming from `since` and answer with
    /// [`Editor::on_subscribed`]; the replayed and live messages go to
    /// [`Editor::on_message`].
    Subscribe { since: Since },
    /// Publish `payload` (event [`OP_EVENT`]) on the document channel expecting
    /// `expect` and answer with [`Editor::on_publish_result`].
    Publish {
        seq: u64,
        attempt: u32,
        payload: Value,
        expect: Since,
    },
    /// Read the document channel's history after `since` (one page) and answer with
    /// [`Editor::on_history`] (or [`Editor::on_history_failed`]).
    FetchHistory { request: u64, since: Since },
    /// Publish this snapshot payload (event [`SNAPSHOT_EVENT`]) on `snap:<doc>`, a
    /// plain publish; its outcome does not matter to the editor.
    PublishSnapshot { payload: Value },
}

/// The outcome of an [`Action::Publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Appended at `offset` of `epoch`.
    Accepted { offset: u64, epoch: String },
    /// Refused: the channel is at `offset` of `epoch`.
    Conflict { offset: u64, epoch: String },
    /// Not known (the connection dropped, no reply in time) or worth another try:
    /// it is sent again.
    Failed,
    /// Refused for good (e.g. `forbidden`): the local edits not in the log are
    /// dropped ([`Event::Reloaded`] with `lost_local_edits`).
    Refused,
}

/// What happened to the document, for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The document is loaded and up to date: its text at `revision`. The first
    /// event; the changes that follow apply to this text.
    Loaded { text: String, revision: u64 },
    /// A remote operation changed the text: `op` is what was applied to the local
    /// text (transformed against the local edits not in the log yet).
    Changed { op: Operation, revision: u64 },
    /// The document was loaded again (its history was gone, or a publish was
    /// refused for good): the text is now `text`, and the changes that follow apply
    /// to it. `lost_local_edits`: local edits that were not in the log were dropped.
    Reloaded {
        text: String,
        revision: u64,
        lost_local_edits: bool,
    },
    /// Another editor's selection, in the coordinates of the text now.
    Cursor {
        client: String,
        user: String,
        selection: Selection,
    },
    /// Another editor's selection is gone (its user left).
    CursorRemoved { client: String },
    /// The log entry at `offset` is not an operation that applies: skipped, as by
    /// every editor.
    Skipped { offset: u64, reason: String },
}

/// Another editor's selection, in the coordinates of this editor's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCursor {
    pub client: String,
    pub user: String,
    pub selection: Selection,
}

/// Why a local edit was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EditError {
    /// The document is not loaded yet (or is being loaded again).
    #[error("the document is not loaded")]
    NotLoaded,
    /// A position or range beyond the end of the text.
    #[error("{end} is beyond the end of the text ({len} code points)")]
    OutOfRange { end: usize, len: usize },
    /// The operation does not apply to the text.
    #[error(transparent)]
    Ot(#[from] OtError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the snapshot; `reload`: the document channel is subscribed
    /// already.
    Load {
        reload: bool,
    },
    /// The snapshot is applied; waiting for the subscription's answer.
    Subscribe,
    Live,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
    /// To be sent once the editor may send.
    Unsent,
    /// A publish is out; its outcome is not known yet.
    Sent,
    /// Accepted: waiting for it in the log.
    Accepted,
}

#[derive(Debug, Clone)]
struct Inflight {
    op: Operation,
    seq: u64,
    /// Publishes of it so far; the outcome of an older one is stale.
    attempt: u32,
    state: SendState,
}

/// A message held until it applies.
#[derive(Debug, Clone)]
struct Held {
    epoch: Option<String>,
    event: String,
    payload: Value,
}

/// The state a reload started from: its local edits are kept if the document is
/// loaded again at exactly that state.
#[derive(Debug, Clone)]
struct Stash {
    rev: u64,
    epoch: String,
    server: String,
    inflight: Option<Inflight>,
    buffer: Option<Operation>,
}

/// Another editor's selection in the coordinates of the server text at `rev` (held
/// until this editor reaches `rev` when it is ahead).
#[derive(Debug, Clone)]
struct CursorState {
    user: String,
    rev: u64,
    selection: Selection,
    /// Reported as an [`Event::Cursor`] since it last changed.
    shown: bool,
}

/// One open document's editing state. See the [module docs](self).
#[derive(Debug)]
pub struct Editor {
    cfg: Config,
    phase: Phase,
    text: String,
    text_len: usize,
    /// The text at `rev`: the log applied in order (what a snapshot holds).
    server: String,
    server_len: usize,
    rev: u64,
    epoch: String,
    /// The highest offset known to exist in the epoch (from the subscription,
    /// history, conflicts, messages): nothing is sent before the revision gets there.
    known_head: u64,
    /// Whether the channel's head is known since the last (re)load or incomplete
    /// resume.
    head_known: bool,
    inflight: Option<Inflight>,
    buffer: Option<Operation>,
    next_seq: u64,
    held: BTreeMap<u64, Held>,
    /// The history read in progress.
    fetching: Option<u64>,
    /// The snapshot read in progress.
    loading: Option<u64>,
    next_request: u64,
    /// Loads in a row that did not get the editor up to date.
    load_attempt: u32,
    /// Loaded again from a snapshot, not yet compared with the document channel: if
    /// the channel is in another epoch, the snapshot becomes its revision 0.
    verifying: bool,
    /// The revision of the snapshot being verified.
    verify_rev: u64,
    /// Epochs the document's history left (their late messages are ignored).
    gone: VecDeque<String>,
    /// The state the reload in progress started from.
    stash: Option<Stash>,
    /// The snapshot read again by [`Editor::check_snapshot`].
    checking: Option<u64>,
    /// Its answer, for the history read that follows.
    checked: Option<Option<Snapshot>>,
    /// Connected, and the document channel resumed since: operations may go out.
    online: bool,
    /// A page of history is being applied.
    in_page: bool,
    /// The revision of the snapshot the document was first loaded from.
    loaded_from: u64,
    /// The first entry of the epoch did not apply and the snapshot was read again
    /// because of it (a second time it is skipped).
    base_rechecked: bool,
    /// Local edits were dropped by the reload in progress.
    lost: bool,
    loaded: bool,
    selection: Selection,
    cursor_dirty: bool,
    cursors: HashMap<String, CursorState>,
    /// The log operations at offsets `window_start + 1 ..= rev`, with their authors
    /// (`None`: skipped).
    window: VecDeque<Option<(Operation, Option<String>)>>,
    window_start: u64,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Editor {
    /// A new editor, loading: its first action is [`Action::LoadSnapshot`].
    pub fn new(mut cfg: Config) -> Self {
        cfg.max_op_bytes = cfg.max_op_bytes.max(16);
        let mut e = Editor {
            cfg,
            phase: Phase::Load { reload: false },
            text: String::new(),
            text_len: 0,
            server: String::new(),
            server_len: 0,
            rev: 0,
            epoch: String::new(),
            known_head: 0,
            head_known: false,
            inflight: None,
            buffer: None,
            next_seq: 1,
            held: BTreeMap::new(),
            fetching: None,
            loading: None,
            next_request: 0,
            load_attempt: 0,
            verifying: false,
            verify_rev: 0,
            gone: VecDeque::new(),
            stash: None,
            base_rechecked: false,
            online: true,
            in_page: false,
            loaded_from: 0,
            checking: None,
            checked: None,
            lost: false,
            loaded: false,
            selection: Selection::default(),
            cursor_dirty: false,
            cursors: HashMap::new(),
            window: VecDeque::new(),
            window_start: 0,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        };
        e.request_snapshot();
        e
    }

    // ---- state ------------------------------------------------------------------

    /// The editor's id.
    pub fn client(&self) -> &str {
        &self.cfg.client
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The local text: the log up to [`revision`](Self::revision) plus the local
    /// edits not in it yet.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The length of [`text`](Self::text) in code points.
    pub fn len(&self) -> usize {
        self.text_len
    }

    pub fn is_empty(&self) -> bool {
        self.text_len == 0
    }

    /// The text at [`revision`](Self::revision): the log applied in order.
    pub fn server_text(&self) -> &str {
        &self.server
    }

    /// The offset of the last log entry applied (0 before the first).
    pub fn revision(&self) -> u64 {
        self.rev
    }

    /// The history epoch the revision belongs to (`""` before the log has one).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Whether the document is loaded (it was up to date once, [`Event::Loaded`],
    /// and is not being loaded again): local edits are taken.
    pub fn is_loaded(&self) -> bool {
        self.loaded && !matches!(self.phase, Phase::Load { .. })
    }

    /// The revision of the snapshot the document was first loaded from (0: from the
    /// start of the log).
    pub fn loaded_from(&self) -> u64 {
        self.loaded_from
    }

    /// Whether there are local edits not in the log yet.
    pub fn has_pending(&self) -> bool {
        self.inflight.is_some() || self.buffer.is_some()
    }

    /// The sequence number of the operation in flight, if any.
    pub fn inflight_seq(&self) -> Option<u64> {
        self.inflight.as_ref().map(|f| f.seq)
    }

    /// Behind the document channel: entries are known to exist that are not applied
    /// yet, or its position is not known (a driver reads history when this lasts, see
    /// [`poke`](Self::poke)).
    pub fn is_behind(&self) -> bool {
        self.phase == Phase::Live
            && (!self.head_known || self.rev < self.known_head || !self.held.is_empty())
    }

    /// Up to date with everything known of the log and no local edits pending.
    pub fn is_synced(&self) -> bool {
        self.phase == Phase::Live && self.loaded && !self.is_behind() && !self.has_pending()
    }

    /// The local selection, in code points of [`text`](Self::text).
    pub fn selection(&self) -> Selection {
        self.selection
    }

    /// The actions to carry out, oldest first.
    pub fn take_actions(&mut self) -> Vec<Action> {
        self.actions.drain(..).collect()
    }

    /// The events for the application, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    // ---- local input -------------------------------------------------------------

    /// A local edit: `op` applies to the current [`text`](Self::text). Applied at
    /// once; published when nothing is in flight, else composed into the buffer.
    /// The selection moves with it (as the typist's own).
    pub fn edit(&mut self, op: &Operation) -> Result<(), EditError> {
        if !self.is_loaded() {
            return Err(EditError::NotLoaded);
        }
        let text = op.apply(&self.text)?;
        let buffer = match &self.buffer {
            _ if op.is_noop() => None,
            Some(b) => Some(compose(b, op)?),
            None => Some(op.clone()),
        };
        self.text = text;
        self.text_len = op.target_len();
        self.selection = self.selection.transform(op, true);
        if let Some(b) = buffer {
            self.buffer = Some(b);
            self.cursor_dirty = true;
            self.maybe_send();
        }
        Ok(())
    }

    /// Inserts `text` at code point `pos`.
    pub fn insert(&mut self, pos: usize, text: &str) -> Result<(), EditError> {
        self.replace(pos, 0, text)
    }

    /// Deletes `len` code points at `pos`.
    pub fn delete(&mut self, pos: usize, len: usize) -> Result<(), EditError> {
        self.replace(pos, len, "")
    }

    /// Replaces `len` code points at `pos` with `text`.
    pub fn replace(&mut self, pos: usize, len: usize, text: &str) -> Result<(), EditError> {
        let end = pos.saturating_add(len);
        if end > self.text_len {
            return Err(EditError::OutOfRange {
                end,
                len: self.text_len,
            });
        }
        let mut op = Operation::new();
        op.retain(pos)
            .delete(len)
            .insert(text)
            .retain(self.text_len - end);
        self.edit(&op)
    }

    /// Sets the local selection (code points of [`text`](Self::text), clamped to
    /// its length).
    pub fn set_selection(&mut self, selection: Selection) {
        let n = self.text_len;
        let sel = Selection {
            anchor: selection.anchor.min(n),
            head: selection.head.min(n),
        };
        if sel != self.selection {
            self.selection = sel;
            self.cursor_dirty = true;
        }
    }

    /// Whether [`take_cursor`](Self::take_cursor) has something to give.
    pub fn cursor_pending(&self) -> bool {
        self.cursor_dirty && self.phase == Phase::Live
    }

    /// This editor's selection as a `cursor` payload (`{"client", "user", "rev",
    /// "anchor", "head"}`, in the coordinates of the server text at the revision),
    /// when it changed since the last call (an edit, a selection change, an own
    /// operation reaching the log) and the editor is live.
    pub fn take_cursor(&mut self) -> Option<Value> {
        if !self.cursor_dirty || self.phase != Phase::Live {
            return None;
        }
        self.cursor_dirty = false;
        let mut sel = self.selection;
        if let Some(p) = self.pending_op()
            && let Ok(inv) = invert(&p, &self.server)
        {
            sel = sel.transform(&inv, false);
        }
        Some(json!({
            "client": self.cfg.client,
            "user": self.cfg.user,
            "rev": self.rev,
            "anchor": sel.anchor,
            "head": sel.head,
        }))
    }

    // ---- loading -------------------------------------------------------------------

    fn request_snapshot(&mut self) {
        self.next_request += 1;
        self.loading = Some(self.next_request);
        self.actions.push_back(Action::LoadSnapshot {
            request: self.next_request,
            attempt: self.load_attempt,
        });
    }

    /// Reads the snapshot again without loading it, then the channel's history: at
    /// revision 0 without an epoch, whether the document is new or lost its history
    /// since the snapshot was read (see [`on_history`](Self::on_history)).
    fn check_snapshot(&mut self) {
        self.next_request += 1;
        self.checking = Some(self.next_request);
        self.head_known = false;
        self.actions.push_back(Action::LoadSnapshot {
            request: self.next_request,
            attempt: 0,
        });
    }

    /// The answer to [`Action::LoadSnapshot`]: the latest snapshot's payload, or
    /// `None` when there is none (or it cannot be read, e.g. no right to).
    pub fn on_snapshot(&mut self, request: u64, snapshot: Option<Snapshot>) {
        if self.checking == Some(request) {
            self.checking = None;
            if self.phase == Phase::Live && self.fresh() {
                self.checked = Some(snapshot);
                self.fetch();
            }
            return;
        }
        if self.loading != Some(request) {
            return;
        }
        self.loading = None;
        let snap = snapshot.unwrap_or(Snapshot {
            rev: 0,
            epoch: String::new(),
            text: String::new(),
        });
        let Phase::Load { reload } = self.phase else {
            return;
        };
        let (rev, epoch) = (snap.rev, snap.epoch);
        self.text_len = snap.text.chars().count();
        self.server_len = self.text_len;
        self.server = snap.text.clone();
        self.text = snap.text;
        self.start_at(rev, epoch);
        if let Some(st) = self.stash.take() {
            self.restore(st);
        }
        self.selection = Selection {
            anchor: self.selection.anchor.min(self.text_len),
            head: self.selection.head.min(self.text_len),
        };
        if reload {
            // Compared with the channel by the history read that follows.
            let gone = &self.gone;
            self.held.retain(|_, h| {
                h.epoch
                    .as_deref()
                    .is_none_or(|e| !gone.iter().any(|g| g == e))
            });
            self.phase = Phase::Live;
            self.head_known = false;
            self.verifying = true;
            self.verify_rev = self.rev;
            if self.loaded {
                self.events.push_back(Event::Reloaded {
                    text: self.text.clone(),
                    revision: self.rev,
                    lost_local_edits: std::mem::take(&mut self.lost),
                });
            }
            self.fetch();
            self.settle();
        } else {
            self.loaded_from = self.rev;
            self.phase = Phase::Subscribe;
            self.actions.push_back(Action::Subscribe {
                since: self.since(),
            });
        }
    }

    /// Puts back the local edits of a reload that loaded the very state it started
    /// from (the same text at the same revision, or at revision 0 of a history that
    /// started since); otherwise they are lost.
    fn restore(&mut self, st: Stash) {
        let pending = st.inflight.is_some() || st.buffer.is_some();
        let same = st.rev == self.rev
            && st.server == self.server
            && (st.epoch == self.epoch || (st.rev == 0 && st.epoch.is_empty()));
        if !pending {
            return;
        }
        let mut text = self.server.clone();
        if same {
            for op in st
                .inflight
                .as_ref()
                .map(|f| &f.op)
                .into_iter()
                .chain(st.buffer.as_ref())
            {
                match op.apply(&text) {
                    Ok(t) => text = t,
                    Err(_) => {
                        self.lost = true;
                        return;
                    }
                }
            }
            self.text_len = text.chars().count();
            self.text = text;
            self.inflight = st.inflight;
            self.buffer = st.buffer;
        } else {
            self.lost = true;
        }
    }

    /// The answer to [`Action::Subscribe`] (the subscription's result: the
    /// channel's epoch and latest offset, and whether the replay from the snapshot's
    /// revision is complete).
    pub fn on_subscribed(&mut self, sub: &Subscription) {
        if self.phase != Phase::Subscribe {
            return;
        }
        self.phase = Phase::Live;
        self.online = true;
        if let Some(e) = &sub.epoch {
            self.supersede(e);
        }
        match (sub.epoch.as_deref(), sub.offset) {
            // The channel has no history while the editor starts from nothing: a
            // new document, or one whose history was lost since the snapshot was
            // read. Read the snapshot again, now, as every editor that sees the loss
            // does, so that all start the new history from the same text.
            (Some(""), Some(0)) if self.fresh() => self.check_snapshot(),
            (Some(e), Some(head)) if self.same_epoch(e) => {
                self.adopt(e);
                self.known_head = self.known_head.max(head);
                self.head_known = true;
                if sub.recovered != Some(true) {
                    // Partly replayed at best: the rest comes from history.
                    self.fetch();
                }
            }
            // The document's history is another epoch than the snapshot's (it was
            // lost since): read the newest snapshot again, now, and start from it
            // (docs/collaboration.md, "When history is gone").
            (Some(_), Some(_)) => self.reload(),
            // No position (already subscribed, history unreadable): ask history.
            _ => {
                self.head_known = false;
                self.fetch();
            }
        }
        self.settle();
    }

    /// The document channel was subscribed again after a reconnect, resuming from
    /// the client's position: `recovered` as the client reported it. When not
    /// everything could be replayed the editor reads history to catch up, and
    /// reloads if that history is gone.
    pub fn on_resumed(&mut self, recovered: bool) {
        self.online = true;
        self.checked = None;
        self.verifying = false;
        // At revision 0 without an epoch, also check: the document may have lived
        // and lost its history while this editor was away.
        if self.phase == Phase::Live && (!recovered || self.fresh()) {
            self.head_known = false;
            self.fetch();
        }
        self.settle();
    }

    /// The connection dropped: nothing is published until the document channel is
    /// resumed ([`on_resumed`](Self::on_resumed)), so that no operation waits in
    /// the client's queue to go out before the editor knows what it missed. Local
    /// edits go on into the buffer.
    pub fn on_disconnected(&mut self) {
        self.online = false;
        // What was read before may be stale by the time the editor is back.
        self.checked = None;
        self.verifying = false;
    }

    /// Asks history for what is missing, when the editor [is behind](Self::is_behind)
    /// and no read is in progress (a driver calls this when being behind lasts,
    /// e.g. when an accepted operation of its own does not show up).
    pub fn poke(&mut self) {
        if self.is_behind() {
            self.fetch();
        }
    }

    fn fetch(&mut self) {
        if self.fetching.is_some() || self.checking.is_some() || self.phase != Phase::Live {
            return;
        }
        self.next_request += 1;
        self.fetching = Some(self.next_request);
        self.actions.push_back(Action::FetchHistory {
            request: self.next_request,
            since: self.since(),
        });
    }

    /// The answer to [`Action::FetchHistory`]: one page of the document channel's
    /// history after the editor's revision.
    pub fn on_history(&mut self, request: u64, page: &HistoryResult) {
        if self.fetching != Some(request) {
            return;
        }
        self.fetching = None;
        if self.phase != Phase::Live {
            return;
        }
        let verifying = std::mem::take(&mut self.verifying);
        let unmoved = self.rev == self.verify_rev;
        self.supersede(&page.epoch);
        if !self.same_epoch(&page.epoch) {
            if !verifying || !unmoved {
                self.reload();
                return;
            }
            // The snapshot just loaded is of an older history than the channel's
            // (lost since): it becomes revision 0 of the channel's epoch
            // (docs/collaboration.md, "When history is gone").
            self.start_at(0, page.epoch.clone());
            self.known_head = page.offset;
            self.head_known = true;
            if page.offset > 0 {
                self.fetch();
            }
            self.drain_held();
            self.settle();
            return;
        }
        let checked = self.checked.take();
        if self.fresh() && page.epoch.is_empty() && page.offset == 0 {
            match checked {
                // Empty, as a new document, or one whose history was lost since
                // the snapshot was read: read it again (after seeing it empty)
                // before starting the history.
                None => return self.check_snapshot(),
                // The document lived and lost its history: the new one starts from
                // its newest snapshot, as every editor that sees the loss does.
                Some(Some(snap)) if snap.text != self.server => {
                    self.reload();
                    return;
                }
                _ => {}
            }
        }
        self.adopt(&page.epoch);
        // Held messages of another epoch than the channel's were late.
        let current = page.epoch.as_str();
        self.held
            .retain(|_, h| h.epoch.as_deref().is_none_or(|e| e == current));
        self.known_head = self.known_head.max(page.offset);
        self.head_known = true;
        let before = self.rev;
        let mut entries: Vec<_> = page.publications.iter().collect();
        entries.sort_by_key(|p| p.offset);
        self.in_page = true;
        for p in entries {
            self.receive(p.offset, Some(&page.epoch), &p.event, &p.payload);
            if self.phase != Phase::Live {
                break;
            }
        }
        self.in_page = false;
        if self.phase != Phase::Live {
            return;
        }
        self.drain_held();
        if self.phase != Phase::Live {
            return;
        }
        if self.rev == before && self.rev < page.offset {
            // History has entries after the revision but not the next one: no
            // longer retained. Start over from the newest snapshot.
            self.reload();
            return;
        }
        if self.is_behind() {
            self.fetch();
        }
        self.settle();
    }

    /// [`Action::FetchHistory`] failed: it is asked again (the driver waits first
    /// when the failure calls for it).
    pub fn on_history_failed(&mut self, request: u64) {
        if self.fetching == Some(request) {
            self.fetching = None;
            self.poke();
        }
    }

    /// Starts over from the newest snapshot: the history the editor stands on is
    /// gone (the callers that know it is another epoch mark it
    /// [superseded](Self::supersede) first).
    fn reload(&mut self) {
        if self.stash.is_none() {
            self.stash = Some(Stash {
                rev: self.rev,
                epoch: self.epoch.clone(),
                server: self.server.clone(),
                inflight: self.inflight.clone().map(|mut f| {
                    f.state = SendState::Unsent;
                    f
                }),
                buffer: self.buffer.clone(),
            });
        }
        self.inflight = None;
        self.buffer = None;
        self.phase = Phase::Load { reload: true };
        self.verifying = false;
        self.fetching = None;
        self.checking = None;
        self.checked = None;
        self.held.clear();
        self.cursors.clear();
        self.window.clear();
        self.load_attempt = self.load_attempt.saturating_add(1);
        self.request_snapshot();
    }

    /// The document channel is in epoch `current` (an answer of the gateway: a
    /// subscription, a history read, a publish's outcome; not a message, which may
    /// be late): the editor's own epoch, if another, is over, and its late messages
    /// are ignored from now on.
    fn supersede(&mut self, current: &str) {
        self.gone.retain(|g| g != current);
        if !self.epoch.is_empty() && self.epoch != current && !self.gone.contains(&self.epoch) {
            if self.gone.len() >= 8 {
                self.gone.pop_front();
            }
            self.gone.push_back(self.epoch.clone());
        }
    }

    /// The revision and epoch the editor starts from: no log operation before it is
    /// kept.
    fn start_at(&mut self, rev: u64, epoch: String) {
        self.rev = rev;
        self.epoch = epoch;
        self.known_head = rev;
        self.window.clear();
        self.window_start = rev;
        self.cursors.clear();
    }

    fn since(&self) -> Since {
        Since {
            offset: self.rev,
            epoch: self.epoch.clone(),
        }
    }

    /// At revision 0 without an epoch any epoch is the document's first.
    fn fresh(&self) -> bool {
        self.rev == 0 && self.epoch.is_empty()
    }

    fn same_epoch(&self, e: &str) -> bool {
        e == self.epoch || self.fresh()
    }

    fn adopt(&mut self, e: &str) {
        if self.fresh() && !e.is_empty() {
            self.epoch = e.to_owned();
        }
    }

    // ---- the log ---------------------------------------------------------------------

    /// A message of the document channel (live or replayed): its offset and epoch
    /// (absent on a channel without history: ignored), event and payload. Offsets
    /// at or below the revision are duplicates; one beyond the next offset is held
    /// while history fills the gap; a message of another epoch means the history the
    /// editor stands on is gone: it reloads.
    pub fn on_message(
        &mut self,
        offset: Option<u64>,
        epoch: Option<&str>,
        event: &str,
        payload: &Value,
    ) {
        let Some(offset) = offset else { return };
        self.receive(offset, epoch, event, payload);
        self.drain_held();
        self.settle();
    }

    fn hold(&mut self, offset: u64, epoch: Option<&str>, event: &str, payload: &Value) {
        if self.held.len() < MAX_HELD || self.held.contains_key(&offset) {
            self.held.insert(
                offset,
                Held {
                    epoch: epoch.map(str::to_owned),
                    event: event.to_owned(),
                    payload: payload.clone(),
                },
            );
        }
    }

    fn receive(&mut self, offset: u64, epoch: Option<&str>, event: &str, payload: &Value) {
        if epoch.is_some_and(|e| self.gone.iter().any(|g| g == e)) {
            return;
        }
        let other_epoch = epoch.is_some_and(|e| !self.same_epoch(e));
        match self.phase {
            Phase::Load { .. } => return self.hold(offset, epoch, event, payload),
            Phase::Subscribe if other_epoch => return self.hold(offset, epoch, event, payload),
            // The history read in progress decides.
            Phase::Live if other_epoch && self.verifying => {
                return self.hold(offset, epoch, event, payload);
            }
            // Late, or the history the editor stands on is gone: a history read
            // tells.
            Phase::Live if other_epoch => {
                self.hold(offset, epoch, event, payload);
                self.head_known = false;
                return self.fetch();
            }
            _ => {}
        }
        if let Some(e) = epoch {
            self.adopt(e);
        }
        self.known_head = self.known_head.max(offset);
        if offset <= self.rev {
            return;
        }
        if offset > self.rev + 1 {
            self.hold(offset, epoch, event, payload);
            // (A page of history with a gap is dealt with by its reader.)
            if !self.in_page {
                self.fetch();
            }
            return;
        }
        self.apply_log(event, payload);
    }

    /// Applies the held messages that are next.
    fn drain_held(&mut self) {
        while let Some((&offset, h)) = self.held.first_key_value() {
            if offset > self.rev + 1 || matches!(self.phase, Phase::Load { .. }) {
                return;
            }
            let other_epoch = h.epoch.as_deref().is_some_and(|e| !self.same_epoch(e));
            if other_epoch {
                // The subscription's answer (or a history read) decides.
                if self.phase == Phase::Live {
                    self.head_known = false;
                    self.fetch();
                }
                return;
            }
            let Some(h) = self.held.remove(&offset) else {
                return;
            };
            self.receive(offset, h.epoch.as_deref(), &h.event, &h.payload);
        }
    }

    /// The operation of a log entry with its author and sequence number, or why it
    /// does not apply.
    fn parse(&self, event: &str, payload: &Value) -> Result<(Operation, Option<u64>), String> {
        if event != OP_EVENT {
            return Err(format!("event {event}"));
        }
        let Some(op) = payload.get("op") else {
            return Err("no operation in the payload".into());
        };
        let op = Operation::from_value(op).map_err(|e| e.code().to_owned())?;
        if op.base_len() != self.server_len {
            return Err(format!(
                "base length {}, the document has {}",
                op.base_len(),
                self.server_len
            ));
        }
        let own = payload.get("client").and_then(Value::as_str) == Some(self.cfg.client.as_str());
        let seq = if own {
            payload.get("seq").and_then(Value::as_u64)
        } else {
            None
        };
        Ok((op, seq))
    }

    /// The next log entry (at revision + 1).
    fn apply_log(&mut self, event: &str, payload: &Value) {
        let author = payload
            .get("client")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let parsed = self.parse(event, payload).and_then(|(op, own_seq)| {
            let server = op.apply(&self.server).map_err(|e| e.to_string())?;
            Ok((op, own_seq, server))
        });
        let (op, own_seq, server) = match parsed {
            Ok(p) => p,
            Err(reason) if self.rev == 0 && !self.base_rechecked => {
                // The history's first entry does not apply to the text this editor
                // starts it from: the history may have started (after a loss) from a
                // snapshot this editor had not seen. Read the snapshot again once.
                tracing::debug!(%reason, "the first entry does not apply: loading again");
                self.base_rechecked = true;
                self.reload();
                return;
            }
            Err(reason) => {
                let shown = self.advance(None);
                self.events.push_back(Event::Skipped {
                    offset: self.rev,
                    reason,
                });
                self.show_cursors(shown);
                return;
            }
        };
        self.server = server;
        self.server_len = op.target_len();
        self.base_rechecked = false;
        let own = own_seq.is_some() && own_seq == self.inflight.as_ref().map(|f| f.seq);
        if own {
            self.inflight = None;
            let shown = self.advance(Some((op, author)));
            self.show_cursors(shown);
            self.cursor_dirty = true;
            if self.cfg.snapshot_interval > 0 && self.rev.is_multiple_of(self.cfg.snapshot_interval)
            {
                let snap = Snapshot {
                    rev: self.rev,
                    epoch: self.epoch.clone(),
                    text: self.server.clone(),
                };
                self.actions.push_back(Action::PublishSnapshot {
                    payload: snap.to_payload(),
                });
            }
            return;
        }
        match self.rebase_remote(&op) {
            Ok(local) => {
                let shown = self.advance(Some((op, author)));
                if self.loaded {
                    self.events.push_back(Event::Changed {
                        op: local,
                        revision: self.rev,
                    });
                }
                self.show_cursors(shown);
            }
            // Only if the editor's own state were inconsistent: start over.
            Err(_) => {
                self.rev += 1;
                self.reload();
            }
        }
    }

    /// Transforms a remote operation (on the server text before it) against the
    /// operation in flight and the buffer, applies it to the local text and returns
    /// what was applied.
    fn rebase_remote(&mut self, op: &Operation) -> Result<Operation, OtError> {
        let mut r = op.clone();
        let mut inflight = self.inflight.as_ref().map(|f| f.op.clone());
        if let Some(f) = &inflight {
            let (r2, f2) = transform(&r, f)?;
            r = r2;
            inflight = Some(f2);
        }
        let mut buffer = self.buffer.clone();
        if let Some(b) = &buffer {
            let (r3, b2) = transform(&r, b)?;
            r = r3;
            buffer = Some(b2);
        }
        let text = r.apply(&self.text)?;
        self.text = text;
        self.text_len = r.target_len();
        if let (Some(f), Some(op)) = (self.inflight.as_mut(), inflight) {
            f.op = op;
        }
        self.buffer = buffer;
        self.selection = self.selection.transform(&r, false);
        Ok(r)
    }

    /// The revision moves on by one; `op` (with its author; `None`: skipped) joins
    /// the cursor window, and the cursors at the previous revision move along.
    fn advance(
        &mut self,
        op: Option<(Operation, Option<String>)>,
    ) -> Vec<(String, String, Selection)> {
        self.rev += 1;
        let rev = self.rev;
        let mut shown = Vec::new();
        for (client, c) in &mut self.cursors {
            if c.rev + 1 == rev {
                if let Some((op, author)) = &op {
                    let own = author.as_deref() == Some(client.as_str());
                    c.selection = c.selection.transform(op, own);
                }
                c.rev = rev;
            } else if c.rev == rev && !c.shown {
                // A cursor that was ahead of this editor becomes visible.
                c.shown = true;
                c.selection = Selection {
                    anchor: c.selection.anchor.min(self.server_len),
                    head: c.selection.head.min(self.server_len),
                };
                shown.push((client.clone(), c.user.clone(), c.selection));
            }
        }
        self.window.push_back(op);
        while self.window.len() > self.cfg.cursor_window {
            self.window.pop_front();
            self.window_start += 1;
        }
        shown
    }

    /// Reports the cursors that became visible (after the change that made them so).
    fn show_cursors(&mut self, shown: Vec<(String, String, Selection)>) {
        if !self.loaded {
            return;
        }
        for (client, user, selection) in shown {
            let selection = self.to_local(selection);
            self.events.push_back(Event::Cursor {
                client,
                user,
                selection,
            });
        }
    }

    /// After any input: the editor is up to date for the first time (loaded), or the
    /// next operation can go out.
    fn settle(&mut self) {
        if self.phase == Phase::Live && !self.is_behind() {
            self.load_attempt = 0;
            if !self.loaded {
                self.loaded = true;
                self.lost = false;
                self.events.push_back(Event::Loaded {
                    text: self.text.clone(),
                    revision: self.rev,
                });
            }
        }
        self.maybe_send();
    }

    // ---- publishing ------------------------------------------------------------------

    fn maybe_send(&mut self) {
        if self.phase != Phase::Live || !self.online || self.is_behind() {
            return;
        }
        loop {
            match &self.inflight {
                // Made a no-op by remote operations (text deleted by both) while
                // nothing of it is out: nothing to send.
                Some(f) if f.state == SendState::Unsent && f.op.is_noop() => self.inflight = None,
                Some(_) => break,
                None => {
                    let Some(b) = self.buffer.take() else { return };
                    if b.is_noop() {
                        return;
                    }
                    let (head, tail) = split_operation(&b, self.cfg.max_op_bytes);
                    self.buffer = tail;
                    self.inflight = Some(Inflight {
                        op: head,
                        seq: self.next_seq,
                        attempt: 0,
                        state: SendState::Unsent,
                    });
                    self.next_seq += 1;
                }
            }
        }
        let expect = self.since();
        let client = self.cfg.client.clone();
        if let Some(f) = self.inflight.as_mut()
            && f.state == SendState::Unsent
        {
            f.attempt += 1;
            f.state = SendState::Sent;
            self.actions.push_back(Action::Publish {
                seq: f.seq,
                attempt: f.attempt,
                payload: json!({"op": f.op, "client": client, "seq": f.seq}),
                expect,
            });
        }
    }

    /// The outcome of [`Action::Publish`] `seq`/`attempt`.
    pub fn on_publish_result(&mut self, seq: u64, attempt: u32, outcome: PublishOutcome) {
        let current = self
            .inflight
            .as_ref()
            .is_some_and(|f| f.seq == seq && f.attempt == attempt && f.state == SendState::Sent);
        if !current {
            return;
        }
        let state = match outcome {
            PublishOutcome::Accepted { epoch, .. } | PublishOutcome::Conflict { epoch, .. }
                if !self.same_epoch(&epoch) =>
            {
                // The history the editor stands on is gone.
                self.supersede(&epoch);
                self.reload();
                return;
            }
            PublishOutcome::Accepted { offset, epoch } => {
                self.supersede(&epoch);
                // At revision 0 the channel's epoch is adopted at once: a later
                // answer of another epoch then tells that this one was lost.
                self.adopt(&epoch);
                self.known_head = self.known_head.max(offset);
                SendState::Accepted
            }
            PublishOutcome::Conflict { offset, epoch } => {
                self.supersede(&epoch);
                self.adopt(&epoch);
                self.known_head = self.known_head.max(offset);
                SendState::Unsent
            }
            PublishOutcome::Failed => SendState::Unsent,
            PublishOutcome::Refused => {
                self.discard_local();
                return;
            }
        };
        if let Some(f) = self.inflight.as_mut() {
            f.state = state;
        }
        self.settle();
    }

    /// Drops the local edits not in the log: the text goes back to the server text.
    fn discard_local(&mut self) {
        self.inflight = None;
        self.buffer = None;
        self.text = self.server.clone();
        self.text_len = self.server_len;
        self.selection = Selection {
            anchor: self.selection.anchor.min(self.text_len),
            head: self.selection.head.min(self.text_len),
        };
        self.events.push_back(Event::Reloaded {
            text: self.text.clone(),
            revision: self.rev,
            lost_local_edits: true,
        });
    }

    /// The local edits not in the log yet, as one operation on the server text.
    fn pending_op(&self) -> Option<Operation> {
        match (self.inflight.as_ref().map(|f| &f.op), &self.buffer) {
            (Some(f), Some(b)) => compose(f, b).ok(),
            (Some(f), None) => Some(f.clone()),
            (None, Some(b)) => Some(b.clone()),
            (None, None) => None,
        }
    }

    // ---- cursors ---------------------------------------------------------------------

    /// Another editor's `cursor` payload (`{"client", "user", "rev", "anchor",
    /// "head"}`; this editor's own and malformed ones are ignored): moved through the
    /// log operations between its revision and this editor's (older than the window:
    /// dropped), or held until this editor reaches its revision. Returns whether it
    /// was taken.
    pub fn on_cursor(&mut self, payload: &Value) -> bool {
        let get = |k: &str| payload.get(k).and_then(Value::as_u64);
        let (Some(client), Some(rev), Some(anchor), Some(head)) = (
            payload.get("client").and_then(Value::as_str),
            get("rev"),
            get("anchor"),
            get("head"),
        ) else {
            return false;
        };
        if client == self.cfg.client || self.phase != Phase::Live {
            return false;
        }
        let (Ok(anchor), Ok(head)) = (usize::try_from(anchor), usize::try_from(head)) else {
            return false;
        };
        let user = payload
            .get("user")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // Positions past the end are taken as the end (when they apply).
        let clamp = |n: usize| Selection {
            anchor: anchor.min(n),
            head: head.min(n),
        };
        let mut c = CursorState {
            user,
            rev,
            selection: clamp(if rev == self.rev {
                self.server_len
            } else {
                usize::MAX
            }),
            shown: false,
        };
        if rev < self.rev {
            if rev < self.window_start {
                return false;
            }
            let skip = usize::try_from(rev - self.window_start).unwrap_or(usize::MAX);
            for (op, author) in self.window.iter().skip(skip).flatten() {
                let own = author.as_deref() == Some(client);
                c.selection = c.selection.transform(op, own);
            }
            c.rev = self.rev;
        }
        if c.rev == self.rev && self.loaded {
            c.shown = true;
            self.events.push_back(Event::Cursor {
                client: client.to_owned(),
                user: c.user.clone(),
                selection: self.to_local(c.selection),
            });
        }
        self.cursors.insert(client.to_owned(), c);
        true
    }

    /// Forgets every cursor of `user` (e.g. who left the document's presence).
    pub fn remove_cursors_of(&mut self, user: &str) {
        let gone: Vec<String> = self
            .cursors
            .iter()
            .filter(|(_, c)| c.user == user)
            .map(|(k, _)| k.clone())
            .collect();
        for client in gone {
            self.cursors.remove(&client);
            self.events.push_back(Event::CursorRemoved { client });
        }
    }

    /// A selection in server coordinates at the revision, in local ones.
    fn to_local(&self, sel: Selection) -> Selection {
        match self.pending_op() {
            Some(p) => sel.transform(&p, false),
            None => sel,
        }
    }

    /// The other editors' selections in the coordinates of [`text`](Self::text)
    /// (those at a revision not reached yet are left out), by client id.
    pub fn remote_cursors(&self) -> Vec<RemoteCursor> {
        let p = self.pending_op();
        let mut out: Vec<RemoteCursor> = self
            .cursors
            .iter()
            .filter(|(_, c)| c.rev == self.rev)
            .map(|(client, c)| RemoteCursor {
                client: client.clone(),
                user: c.user.clone(),
                selection: match &p {
                    Some(p) => c.selection.transform(p, false),
                    None => c.selection,
                },
            })
            .collect();
        out.sort_by(|a, b| a.client.cmp(&b.client));
        out
    }
}

/// The size of a JSON string literal of one character, as the wire form writes it.
fn json_char_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if c < ' ' => 6,
        c => c.len_utf8(),
    }
}

fn digits(n: usize) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Splits `op` into `(head, tail)` with `compose(head, tail) == op` and the wire form
/// of `head` within `max_bytes` (beyond only when its first change, one component
/// or one code point of an insert, with the retains before it does not fit: `head`
/// always changes something); `tail` is `None` when `op` fits. The same cut as the
/// TypeScript `splitOperation`: an insert too long for `head` is cut so that `head`
/// inserts its **end** and `tail` the rest before it, so that another editor's text
/// inserted at the same place meanwhile lands before or after the whole insert (the
/// operation first in the log goes first at equal positions), never inside it.
pub fn split_operation(op: &Operation, max_bytes: usize) -> (Operation, Option<Operation>) {
    if op.to_json().len() <= max_bytes {
        return (op.clone(), None);
    }
    let comps = op.components();
    // Room for the brackets and the retain that ends head.
    let mut size = 2 + 1 + digits(op.base_len());
    let mut head = Operation::new();
    let (mut base, mut target) = (0usize, 0usize);
    let mut changed = false;
    // head = the components before k (and the end of the insert at k, from byte
    // `from`: `points` code points), then a retain of the rest.
    let finish = |head: &mut Operation,
                  base: usize,
                  target: usize,
                  k: usize,
                  cut: Option<(usize, usize)>| {
        head.retain(op.base_len() - base);
        let mut tail = Operation::new();
        tail.retain(target);
        for (j, c) in comps.iter().enumerate().skip(k) {
            match c {
                Component::Retain(n) => tail.retain(*n),
                Component::Delete(n) => tail.delete(*n),
                Component::Insert(s) => match cut {
                    Some((from, points)) if j == k => tail.insert(&s[..from]).retain(points),
                    _ => tail.insert(s),
                },
            };
        }
        tail
    };
    for (k, c) in comps.iter().enumerate() {
        let sep = usize::from(k > 0);
        match c {
            Component::Retain(n) | Component::Delete(n) => {
                let is_delete = matches!(c, Component::Delete(_));
                let b = digits(*n) + usize::from(is_delete) + sep;
                if size + b > max_bytes && changed {
                    let tail = finish(&mut head, base, target, k, None);
                    return (head, Some(tail));
                }
                size += b;
                base += n;
                if is_delete {
                    head.delete(*n);
                    changed = true;
                } else {
                    head.retain(*n);
                    target += n;
                }
            }
            Component::Insert(s) => {
                let bytes: usize = 2 + s.chars().map(json_char_len).sum::<usize>();
                if size + sep + bytes <= max_bytes {
                    size += sep + bytes;
                    head.insert(s);
                    target += s.chars().count();
                    changed = true;
                    continue;
                }
                // The longest end of the insert that fits.
                let budget = max_bytes.saturating_sub(size + sep + 2);
                let (mut from, mut points, mut used) = (s.len(), 0, 0);
                for (i, ch) in s.char_indices().rev() {
                    let w = json_char_len(ch);
                    if used + w > budget {
                        break;
                    }
                    used += w;
                    from = i;
                    points += 1;
                }
                if points == 0 {
                    if changed {
                        let tail = finish(&mut head, base, target, k, None);
                        return (head, Some(tail));
                    }
                    // At least one code point, so that head makes progress.
                    from = s.char_indices().next_back().map_or(0, |(i, _)| i);
                    points = 1;
                }
                head.insert(&s[from..]);
                let tail = finish(&mut head, base, target, k, Some((from, points)));
                return (head, Some(tail));
            }
        }
    }
    (op.clone(), None)
}

#[cfg(test)]
mod tests;
