// Operational transformation of plain text: the TypeScript twin of the Rust module
// `collab::ot` (collab/src/ot.rs). Both pass the shared vectors of
// collab/vectors/ot.json and the same property tests; docs/collaboration.md
// describes the model.

/**
 * The most components an operation read from the wire form may have (counted as
 * written, before normalization).
 */
export const MAX_COMPONENTS = 100_000;

/** The most code points the inserts of an operation read from the wire form may hold in total. */
export const MAX_INSERT_CHARS = 1_000_000;

/**
 * The largest length the wire form accepts, for one component and for an
 * operation's base and target lengths: 2^53 − 1, `Number.MAX_SAFE_INTEGER`.
 */
export const MAX_LEN = Number.MAX_SAFE_INTEGER;

/** The stable codes of {@link OtError}, the same as the Rust `OtError::code`. */
export type OtErrorCode =
  | 'base_length_mismatch'
  | 'compose_length_mismatch'
  | 'transform_length_mismatch'
  | 'malformed'
  | 'invalid_component'
  | 'too_many_components'
  | 'insert_too_long'
  | 'length_too_large';

/** What can go wrong with operations; `code` says what. */
export class OtError extends Error {
  override readonly name = 'OtError';
  constructor(
    readonly code: OtErrorCode,
    message: string,
    /** For `invalid_component`: the index of the element in the wire array. */
    readonly index?: number,
  ) {
    super(message);
  }
}

/**
 * One component in the JSON wire form (the one of ot.js): a positive integer `n`
 * retains `n` code points, a string is inserted, a negative integer `-n` deletes `n`
 * code points.
 */
export type WireComponent = number | string;

const isHigh = (c: number): boolean => c >= 0xd800 && c <= 0xdbff;
const isLow = (c: number): boolean => c >= 0xdc00 && c <= 0xdfff;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * The length of `s` in Unicode code points, the unit of every position and length
 * here: `Array.from(s).length` without the array. `codePointLength('😀') === 1`
 * although `'😀'.length === 2`. A lone surrogate counts as one, as in `Array.from`.
 */
export function codePointLength(s: string): number {
  let n = s.length;
  for (let i = 0; i < s.length - 1; i++) {
    if (isHigh(s.charCodeAt(i)) && isLow(s.charCodeAt(i + 1))) {
      n--;
      i++;
    }
  }
  return n;
}

/** The UTF-16 index `k` code points after `from` in `s`, or -1 if `s` is shorter. */
function advance(s: string, from: number, k: number): number {
  let i = from;
  // ASCII fast path is not worth it here: one comparison per code unit.
  for (; k > 0; k--) {
    if (i >= s.length) return -1;
    i += isHigh(s.charCodeAt(i)) && i + 1 < s.length && isLow(s.charCodeAt(i + 1)) ? 2 : 1;
  }
  return i;
}

/**
 * An edit of a whole document: a sequence of retains, inserts and deletes that walks
 * the document from its start. **Positions and lengths count Unicode code points**
 * (`Array.from(s)`), never UTF-16 code units, like the Rust implementation counts
 * `char`s.
 *
 * An operation spans the whole document, as in ot.js: its base length (retains +
 * deletes) must equal the length of the document it applies to, so a trailing retain
 * is kept; its target length (retains + inserts) is the length of the result. It is
 * always normalized: no empty components, adjacent components of one kind merged, an
 * insert next to a delete placed before it. Two operations with the same effect on
 * every document have the same components.
 *
 * ```ts
 * const op = new Operation().retain(2).delete(1).insert('😀').retain(1);
 * JSON.stringify(op); // '[2,"😀",-1,1]'
 * op.apply('ab-c'); // 'ab😀c'
 * ```
 *
 * The builder methods put no limit on sizes; {@link MAX_COMPONENTS},
 * {@link MAX_INSERT_CHARS} and {@link MAX_LEN} apply when reading the wire form.
 */
export class Operation {
  readonly #ops: WireComponent[] = [];
  #baseLen = 0;
  #targetLen = 0;

  /** Keeps the next `n` code points (nothing if `n` is 0). */
  retain(n: number): this {
    checkLength(n);
    if (n === 0) return this;
    this.#baseLen += n;
    this.#targetLen += n;
    const last = this.#ops.length - 1;
    const prev = this.#ops[last];
    if (typeof prev === 'number' && prev > 0) this.#ops[last] = prev + n;
    else this.#ops.push(n);
    return this;
  }

  /**
   * Inserts `text` at the current position (nothing if it is empty).
   *
   * @throws {OtError} `malformed` if `text` is not well-formed Unicode (holds a lone
   *   surrogate).
   */
  insert(text: string): this {
    if (typeof text !== 'string') {
      throw new OtError('invalid_component', 'an insert must be a string');
    }
    if (text === '') return this;
    if (LONE_SURROGATE.test(text)) {
      throw new OtError('malformed', 'an insert must be well-formed Unicode (no lone surrogate)');
    }
    this.insertCounted(text, codePointLength(text));
    return this;
  }

  /**
   * {@link Operation.insert} of a well-formed `text` of `n` code points, unchecked.
   * @internal
   */
  insertCounted(text: string, n: number): void {
    if (n === 0) return;
    this.#targetLen += n;
    const ops = this.#ops;
    const last = ops.length - 1;
    const prev = ops[last];
    if (typeof prev === 'string') {
      ops[last] = prev + text;
    } else if (typeof prev === 'number' && prev < 0) {
      // Normalized: an insert next to a delete goes before it.
      const before = ops[last - 1];
      if (typeof before === 'string') ops[last - 1] = before + text;
      else ops.splice(last, 0, text);
    } else {
      ops.push(text);
    }
  }

  /** Removes the next `n` code points (nothing if `n` is 0). */
  delete(n: number): this {
    checkLength(n);
    if (n === 0) return this;
    this.#baseLen += n;
    const last = this.#ops.length - 1;
    const prev = this.#ops[last];
    if (typeof prev === 'number' && prev < 0) this.#ops[last] = prev - n;
    else this.#ops.push(-n);
    return this;
  }

  /** The components in the wire form, normalized. Do not modify. */
  get components(): readonly WireComponent[] {
    return this.#ops;
  }

  /** The length, in code points, of the documents this operation applies to. */
  get baseLen(): number {
    return this.#baseLen;
  }

  /** The length, in code points, of the documents this operation produces. */
  get targetLen(): number {
    return this.#targetLen;
  }

  /** Whether the operation changes nothing (it only retains, or is empty). */
  isNoop(): boolean {
    return this.#ops.every((c) => typeof c === 'number' && c > 0);
  }

  /** Whether `other` has the same components. */
  equals(other: Operation): boolean {
    const a = this.#ops;
    const b = other.#ops;
    return a.length === b.length && a.every((c, i) => c === b[i]);
  }

  /**
   * Applies the operation to `doc`, in one pass over it.
   *
   * @throws {OtError} `base_length_mismatch` if `doc` is not {@link baseLen} code
   *   points long.
   */
  apply(doc: string): string {
    const mismatch = (): OtError =>
      new OtError(
        'base_length_mismatch',
        `the operation's base length is ${this.#baseLen} code points but the document has ${codePointLength(doc)}`,
      );
    let out = '';
    let at = 0;
    for (const c of this.#ops) {
      if (typeof c === 'string') {
        out += c;
        continue;
      }
      const end = advance(doc, at, Math.abs(c));
      if (end < 0) throw mismatch();
      if (c > 0) out += doc.slice(at, end);
      at = end;
    }
    if (at !== doc.length) throw mismatch();
    return out;
  }

  /** The wire form (a fresh array), so that `JSON.stringify(op)` writes it. */
  toJSON(): WireComponent[] {
    return this.#ops.slice();
  }

  /** The wire form as JSON text, e.g. `[3,"abc",-2,5]`; the same text as Rust's `to_json`. */
  toString(): string {
    return JSON.stringify(this.#ops);
  }

  /**
   * Reads the wire form from a parsed JSON value, normalizing it. Valid but not
   * normalized input (`[1, 1]`, `[-1, "a"]`) is accepted; a number with an integer
   * value is accepted however it was written (`1.0`, `1e0`).
   *
   * @throws {OtError} `malformed` if `value` is not an array or holds a string that
   *   is not well-formed Unicode or a number that JSON cannot hold (not finite);
   *   `invalid_component` for an element that is not a nonzero integer within
   *   ±{@link MAX_LEN} nor a non-empty string; `too_many_components`,
   *   `insert_too_long` or `length_too_large` beyond the limits. Elements are checked
   *   in order and the first problem is reported, as in Rust.
   */
  static fromJSON(value: unknown): Operation {
    if (!Array.isArray(value)) {
      throw new OtError('malformed', 'an operation must be a JSON array');
    }
    const items = value as unknown[];
    const op = new Operation();
    let inserted = 0;
    const tooLarge = (): OtError =>
      new OtError('length_too_large', `the operation's base or target length exceeds ${MAX_LEN}`);
    for (let index = 0; index < items.length; index++) {
      if (index >= MAX_COMPONENTS) {
        throw new OtError('too_many_components', `the operation has more than ${MAX_COMPONENTS} components`);
      }
      const invalid = (reason: string): OtError =>
        new OtError('invalid_component', `operation component ${index} is invalid: ${reason}`, index);
      const v = items[index];
      if (typeof v === 'string') {
        if (v === '') throw invalid('an insert must not be empty');
        if (LONE_SURROGATE.test(v)) {
          throw new OtError('malformed', `operation component ${index} is not well-formed Unicode`);
        }
        const n = codePointLength(v);
        inserted += n;
        if (inserted > MAX_INSERT_CHARS) {
          throw new OtError('insert_too_long', `the operation inserts more than ${MAX_INSERT_CHARS} code points`);
        }
        if (op.#targetLen + n > MAX_LEN) throw tooLarge();
        op.insertCounted(v, n);
      } else if (typeof v === 'number') {
        if (!Number.isFinite(v)) {
          throw new OtError('malformed', `operation component ${index} is not a JSON number`);
        }
        if (!Number.isInteger(v)) throw invalid('a length must be an integer');
        if (v === 0) throw invalid('a length must not be zero');
        const n = Math.abs(v);
        if (n > MAX_LEN) throw invalid('a length must be at most 2^53 - 1');
        // Exact: both terms are at most 2^53 - 1, so a sum beyond MAX_LEN stays so.
        if (op.#baseLen + n > MAX_LEN) throw tooLarge();
        if (v < 0) {
          op.delete(n);
        } else {
          if (op.#targetLen + n > MAX_LEN) throw tooLarge();
          op.retain(n);
        }
      } else {
        throw invalid('expected a nonzero integer or a non-empty string');
      }
    }
    return op;
  }

  /**
   * Reads the wire form from JSON text: {@link Operation.fromJSON} of `JSON.parse`.
   *
   * @throws {OtError} `malformed` if `json` is not JSON, else as {@link Operation.fromJSON}.
   */
  static parse(json: string): Operation {
    let value: unknown;
    try {
      value = JSON.parse(json);
    } catch (e) {
      throw new OtError('malformed', `malformed operation: ${(e as Error).message}`);
    }
    return Operation.fromJSON(value);
  }
}

function checkLength(n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new OtError('invalid_component', `a length must be a non-negative safe integer, not ${n}`);
  }
}

const NONE = 0;
const RETAIN = 1;
const INSERT = 2;
const DELETE = 3;
type Kind = typeof NONE | typeof RETAIN | typeof INSERT | typeof DELETE;

/** Walks an operation's components, consuming them piece by piece. */
class Cursor {
  #i = 0;
  kind: Kind = NONE;
  /** Length left of the current piece, in code points. */
  n = 0;
  /** For an insert: its text left. */
  text = '';

  constructor(private readonly ops: readonly WireComponent[]) {
    this.#next();
  }

  #next(): void {
    const c = this.ops[this.#i++];
    if (c === undefined) {
      this.kind = NONE;
      this.n = 0;
      this.text = '';
    } else if (typeof c === 'string') {
      this.kind = INSERT;
      this.text = c;
      this.n = codePointLength(c);
    } else {
      this.kind = c > 0 ? RETAIN : DELETE;
      this.n = Math.abs(c);
      this.text = '';
    }
  }

  /** Consumes `k` (at most {@link n}) units of the current piece; returns the text taken from an insert. */
  take(k: number): string {
    if (k >= this.n) {
      const text = this.text;
      this.#next();
      return text;
    }
    this.n -= k;
    if (this.kind !== INSERT) return '';
    const cut = advance(this.text, 0, k);
    const head = this.text.slice(0, cut);
    this.text = this.text.slice(cut);
    return head;
  }
}

/**
 * The operation that has the effect of `a` then `b`:
 * `compose(a, b).apply(d) === b.apply(a.apply(d))`. Linear in the sizes of both.
 *
 * @throws {OtError} `compose_length_mismatch` if `a.targetLen !== b.baseLen`.
 */
export function compose(a: Operation, b: Operation): Operation {
  const mismatch = (): OtError =>
    new OtError(
      'compose_length_mismatch',
      `cannot compose: the first operation's target length is ${a.targetLen} but the second's base length is ${b.baseLen}`,
    );
  if (a.targetLen !== b.baseLen) throw mismatch();
  const out = new Operation();
  const ca = new Cursor(a.components);
  const cb = new Cursor(b.components);
  for (;;) {
    if (ca.kind === NONE && cb.kind === NONE) break;
    if (ca.kind === DELETE) {
      // What a deletes, b never sees.
      const n = ca.n;
      ca.take(n);
      out.delete(n);
    } else if (cb.kind === INSERT) {
      // What b inserts, a never saw.
      const n = cb.n;
      out.insertCounted(cb.take(n), n);
    } else if (ca.kind === NONE || cb.kind === NONE) {
      throw mismatch(); // unreachable: the lengths match
    } else {
      const n = Math.min(ca.n, cb.n);
      const kindA = ca.kind;
      const kindB = cb.kind;
      const text = ca.take(n);
      cb.take(n);
      if (kindA === RETAIN && kindB === RETAIN) out.retain(n);
      else if (kindA === RETAIN && kindB === DELETE) out.delete(n);
      else if (kindA === INSERT && kindB === RETAIN) out.insertCounted(text, n);
      // Inserted by a, deleted by b: nothing.
    }
  }
  return out;
}

/**
 * Transforms concurrent operations `a` and `b` (both on the same document) into
 * `[a', b']` such that applying `a` then `b'` gives the same document as applying `b`
 * then `a'` (TP1). When `a` and `b` insert at the same position, `a`'s insert ends up
 * before `b`'s: **the first argument wins ties**. Text deleted by both is deleted
 * once. Linear in the sizes of both.
 *
 * @throws {OtError} `transform_length_mismatch` if their base lengths differ.
 */
export function transform(a: Operation, b: Operation): [Operation, Operation] {
  const mismatch = (): OtError =>
    new OtError(
      'transform_length_mismatch',
      `cannot transform: the concurrent operations' base lengths differ (${a.baseLen} and ${b.baseLen})`,
    );
  if (a.baseLen !== b.baseLen) throw mismatch();
  const a2 = new Operation();
  const b2 = new Operation();
  const ca = new Cursor(a.components);
  const cb = new Cursor(b.components);
  for (;;) {
    if (ca.kind === NONE && cb.kind === NONE) break;
    if (ca.kind === INSERT) {
      // a's insert first: the tie-break.
      const n = ca.n;
      a2.insertCounted(ca.take(n), n);
      b2.retain(n);
    } else if (cb.kind === INSERT) {
      const n = cb.n;
      a2.retain(n);
      b2.insertCounted(cb.take(n), n);
    } else if (ca.kind === NONE || cb.kind === NONE) {
      throw mismatch(); // unreachable: the base lengths match
    } else {
      const n = Math.min(ca.n, cb.n);
      const kindA = ca.kind;
      const kindB = cb.kind;
      ca.take(n);
      cb.take(n);
      if (kindA === RETAIN && kindB === RETAIN) {
        a2.retain(n);
        b2.retain(n);
      } else if (kindA === DELETE && kindB === RETAIN) {
        a2.delete(n);
      } else if (kindA === RETAIN && kindB === DELETE) {
        b2.delete(n);
      }
      // Deleted by both: already gone on either side.
    }
  }
  return [a2, b2];
}

/**
 * The operation that undoes `op`, given the document `doc` that `op` applies to:
 * `invert(op, d).apply(op.apply(d)) === d`.
 *
 * @throws {OtError} `base_length_mismatch` if `doc` is not `op.baseLen` code points long.
 */
export function invert(op: Operation, doc: string): Operation {
  const mismatch = (): OtError =>
    new OtError(
      'base_length_mismatch',
      `the operation's base length is ${op.baseLen} code points but the document has ${codePointLength(doc)}`,
    );
  const out = new Operation();
  let at = 0;
  for (const c of op.components) {
    if (typeof c === 'string') {
      out.delete(codePointLength(c));
      continue;
    }
    const n = Math.abs(c);
    const end = advance(doc, at, n);
    if (end < 0) throw mismatch();
    if (c > 0) out.retain(n);
    else out.insertCounted(doc.slice(at, end), n);
    at = end;
  }
  if (at !== doc.length) throw mismatch();
  return out;
}

/**
 * Where a caret at code point position `pos` (a gap between code points: 0 is before
 * the first) is after `op`.
 *
 * Text inserted before the caret moves it right, text deleted before it moves it
 * left, and a caret inside deleted text goes to where the deletion was. Text inserted
 * exactly at the caret leaves a remote user's caret before it (`isOwn === false`) and
 * moves the caret of the user who typed it after it (`isOwn === true`). A position
 * past the end of the document is taken as the end. Positions are code points, not
 * the UTF-16 offsets of DOM selections.
 */
export function transformPosition(pos: number, op: Operation, isOwn: boolean): number {
  const p = Math.max(0, Math.min(pos, op.baseLen));
  let old = 0;
  let moved = p;
  for (const c of op.components) {
    if (old > p) break;
    if (typeof c === 'string') {
      if (old < p || isOwn) moved += codePointLength(c);
    } else if (c > 0) {
      old += c;
    } else {
      moved -= Math.min(-c, p - old);
      old -= c;
    }
  }
  return moved;
}

/**
 * A selection in a document: `anchor` is where it started, `head` where the caret is
 * (it may be before `anchor`); equal for a plain caret. Both are code point positions,
 * as in {@link transformPosition}.
 */
export interface Selection {
  readonly anchor: number;
  readonly head: number;
}

/** The selection after `op`: both ends moved by {@link transformPosition}. */
export function transformSelection(sel: Selection, op: Operation, isOwn: boolean): Selection {
  return {
    anchor: transformPosition(sel.anchor, op, isOwn),
    head: transformPosition(sel.head, op, isOwn),
  };
}
