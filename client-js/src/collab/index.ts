// Collaborative editing (issue 20): `tidings-client/collab`. The operational
// transformation of plain text (ot.ts), the editing protocol of docs/collaboration.md
// as a pure state machine (editor.ts), and CollabDocument, which runs it over a
// TidingsClient (document.ts).
export {
  MAX_COMPONENTS,
  MAX_INSERT_CHARS,
  MAX_LEN,
  Operation,
  OtError,
  codePointLength,
  compose,
  invert,
  transform,
  transformPosition,
  transformSelection,
  type OtErrorCode,
  type Selection,
  type WireComponent,
} from './ot.js';
export {
  Editor,
  randomClientId,
  splitOperation,
  type CursorPayload,
  type EditorEffect,
  type EditorOptions,
  type LogEntry,
  type OpPayload,
  type RemoteCursor,
  type SnapshotPayload,
} from './editor.js';
export {
  CollabDocument,
  codePointIndex,
  diffOperation,
  utf16Index,
  openDocument,
  pickSnapshot,
  type DocumentChange,
  type DocumentCursor,
  type DocumentEvents,
  type DocumentOptions,
  type DocumentStatus,
  type ReloadEvent,
  type ResyncReport,
} from './document.js';
