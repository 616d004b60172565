// Collaborative editing (issue 20): `tidings-client/collab`. For now the operational
// transformation of plain text; the editing client built on it comes later.
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
