//! Collaborative editing for Tidings: plain-text documents that several clients edit
//! at once over ordered channels, without an editing server.
//!
//! - [`ot`] is pure, synchronous code with no I/O: operations on a Unicode string,
//!   their application, composition, transformation against concurrent operations,
//!   inversion, cursor and selection transformation, and the JSON wire form (the
//!   same as ot.js). The TypeScript client has the same library in
//!   `client-js/src/collab/ot.ts`; both pass the shared vectors of
//!   `vectors/ot.json`.
//! - [`editor`] is the editing protocol as a pure state machine: one operation in
//!   flight, a buffer, conditional publishes, conflicts and rebasing, loading from a
//!   snapshot, catching up from history, reloading, cursors.
//! - [`Document`] drives an [`editor::Editor`] over a [`client::Client`]: open a
//!   document channel, edit it, follow the other editors.
//!
//! The model and the protocol are described in `docs/collaboration.md`.

pub mod document;
pub mod editor;
pub mod ot;

pub use document::{Document, DocumentError, DocumentEvent, DocumentEvents, Options};
pub use editor::{EditError, RemoteCursor, Snapshot};
