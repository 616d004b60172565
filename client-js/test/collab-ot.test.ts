// The plain-text OT library (src/collab/ot.ts): the shared vectors of
// collab/vectors/ot.json, which the Rust crate checks too (collab/tests/vectors.rs),
// and the properties of collab/tests/props.rs, here with fast-check.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import fc from 'fast-check';
import {
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
  type WireComponent,
} from '../src/collab/index.js';
import { ROOT } from './harness.js';

// --- The shared vectors ---------------------------------------------------------

interface Case {
  [field: string]: unknown;
  error?: string;
}
const vectors = JSON.parse(readFileSync(`${ROOT}/../collab/vectors/ot.json`, 'utf8')) as Record<string, Case[]>;

function cases(name: string): Case[] {
  const list = vectors[name];
  assert.ok(list && list.length > 0, `no ${name} cases`);
  return list;
}

/** An operation of the vectors, which must be written normalized. */
function op(c: Case, field: string): Operation {
  const o = Operation.fromJSON(c[field]);
  assert.deepEqual(o.toJSON(), c[field], `${field} is not normalized in ${JSON.stringify(c)}`);
  return o;
}

function expectCode(f: () => unknown, code: string, what: unknown): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof OtError, `not an OtError: ${String(e)}`);
    assert.equal(e.code, code, `${JSON.stringify(what)}: ${e.message}`);
    return true;
  });
}

test('vectors: apply', () => {
  for (const c of cases('apply')) {
    const o = op(c, 'op');
    const doc = c.doc as string;
    if (c.error) expectCode(() => o.apply(doc), c.error, c);
    else assert.equal(o.apply(doc), c.expected, JSON.stringify(c));
  }
});

test('vectors: compose', () => {
  for (const c of cases('compose')) {
    const [a, b] = [op(c, 'a'), op(c, 'b')];
    if (c.error) expectCode(() => compose(a, b), c.error, c);
    else assert.deepEqual(compose(a, b).toJSON(), c.expected, JSON.stringify(c));
  }
});

test('vectors: transform', () => {
  const list = cases('transform');
  assert.ok(list.length >= 15);
  for (const c of list) {
    const [a, b] = [op(c, 'a'), op(c, 'b')];
    if (c.error) {
      expectCode(() => transform(a, b), c.error, c);
      continue;
    }
    const [a2, b2] = transform(a, b);
    assert.deepEqual(a2.toJSON(), c.a_prime, `a' of ${JSON.stringify(c)}`);
    assert.deepEqual(b2.toJSON(), c.b_prime, `b' of ${JSON.stringify(c)}`);
    const doc = c.doc as string;
    assert.equal(b2.apply(a.apply(doc)), c.result, `a then b' of ${JSON.stringify(c)}`);
    assert.equal(a2.apply(b.apply(doc)), c.result, `b then a' of ${JSON.stringify(c)}`);
  }
});

test('vectors: transform_position', () => {
  for (const c of cases('transform_position')) {
    assert.equal(transformPosition(c.pos as number, op(c, 'op'), c.own as boolean), c.expected, JSON.stringify(c));
  }
});

test('vectors: invert', () => {
  for (const c of cases('invert')) {
    const o = op(c, 'op');
    const doc = c.doc as string;
    if (c.error) {
      expectCode(() => invert(o, doc), c.error, c);
      continue;
    }
    const inverse = invert(o, doc);
    assert.deepEqual(inverse.toJSON(), c.expected, JSON.stringify(c));
    assert.equal(inverse.apply(o.apply(doc)), doc);
  }
});

test('vectors: parse', () => {
  for (const c of cases('parse')) {
    const o = Operation.parse(c.json as string);
    assert.deepEqual(o.toJSON(), c.expected, JSON.stringify(c));
    assert.equal(o.baseLen, c.base_len);
    assert.equal(o.targetLen, c.target_len);
    // The compact text is the same as Rust's to_json.
    assert.equal(o.toString(), JSON.stringify(c.expected));
    assert.ok(Operation.parse(o.toString()).equals(o));
  }
});

test('vectors: invalid', () => {
  for (const c of cases('invalid')) {
    const json = c.json as string;
    assert.ok(c.error);
    expectCode(() => Operation.parse(json), c.error, c);
  }
});

// --- Unit tests -----------------------------------------------------------------

test('the builder normalizes and counts code points', () => {
  const o = new Operation().retain(0).insert('').delete(0);
  assert.deepEqual(o.toJSON(), []);
  assert.ok(o.isNoop());
  o.retain(1).retain(2).delete(1).insert('a').insert('b').delete(2).insert('c');
  assert.deepEqual(o.toJSON(), [3, 'abc', -3]);
  assert.deepEqual([o.baseLen, o.targetLen], [6, 6]);
  assert.ok(!o.isNoop());
  const p = new Operation().retain(2).insert('😀é');
  assert.deepEqual([p.baseLen, p.targetLen], [2, 4]);
  assert.equal(JSON.stringify({ op: p }), '{"op":[2,"😀é"]}');
  assert.equal(codePointLength('a😀\u{10FFFF}'), 3);
  assert.equal(codePointLength('\ud800'), 1, 'a lone surrogate counts as one, as in Array.from');
  assert.equal(codePointLength('\ud83d\ude00\ude00'), 2);
});

test('the builder refuses what has no meaning', () => {
  expectCode(() => new Operation().retain(-1), 'invalid_component', 'retain -1');
  expectCode(() => new Operation().delete(1.5), 'invalid_component', 'delete 1.5');
  expectCode(() => new Operation().retain(Number.NaN), 'invalid_component', 'retain NaN');
  expectCode(() => new Operation().insert('a\ud800'), 'malformed', 'lone surrogate');
  expectCode(() => new Operation().insert(1 as unknown as string), 'invalid_component', 'a number');
});

test('toString escapes like the Rust to_json', () => {
  const o = Operation.parse('[3,"a\\"\\\\\\n\\t\\u0001\\u007f😀\\u2028",-2,5]');
  assert.equal(o.toString(), '[3,"a\\"\\\\\\n\\t\\u0001\u007f😀\u2028",-2,5]');
  assert.ok(Operation.parse(o.toString()).equals(o));
});

test('the wire form limits, in code points', () => {
  const many = (n: number): string => `[${Array(n).fill('1').join(',')}]`;
  assert.equal(Operation.parse(many(MAX_COMPONENTS)).baseLen, MAX_COMPONENTS);
  expectCode(() => Operation.parse(many(MAX_COMPONENTS + 1)), 'too_many_components', 'many');
  // A million emoji are two million UTF-16 units but within the limit.
  assert.equal(Operation.fromJSON(['😀'.repeat(MAX_INSERT_CHARS)]).targetLen, MAX_INSERT_CHARS);
  expectCode(
    () => Operation.fromJSON(['a'.repeat(MAX_INSERT_CHARS - 1), 1, 'ab']),
    'insert_too_long',
    'long',
  );
  assert.equal(Operation.fromJSON([MAX_LEN]).baseLen, MAX_LEN);
  expectCode(() => Operation.fromJSON([MAX_LEN, 1]), 'length_too_large', 'MAX_LEN + 1');
  expectCode(() => Operation.fromJSON([Infinity]), 'malformed', 'Infinity');
  expectCode(() => Operation.fromJSON([1, 0]), 'invalid_component', '[1, 0]');
  try {
    Operation.fromJSON([1, 0]);
  } catch (e) {
    assert.equal((e as OtError).index, 1);
  }
});

test('positions and selections', () => {
  const o = Operation.parse('[1,"ab",-2,1,"c"]'); // "wxyz" -> "wabzc"
  assert.deepEqual([0, 1, 2, 3, 4].map((p) => transformPosition(p, o, false)), [0, 1, 3, 3, 4]);
  assert.deepEqual([0, 1, 2, 3, 4].map((p) => transformPosition(p, o, true)), [0, 3, 3, 3, 5]);
  assert.equal(transformPosition(99, o, false), 4);
  assert.equal(transformPosition(-1, o, true), 0);
  assert.deepEqual(transformSelection({ anchor: 4, head: 1 }, o, false), { anchor: 4, head: 1 });
  assert.deepEqual(transformSelection({ anchor: 4, head: 1 }, o, true), { anchor: 5, head: 3 });
});

test('long operations are linear', () => {
  const n = 100_000;
  const a = new Operation().insert('😀é'.repeat(n / 2));
  const b = new Operation();
  const c = new Operation();
  for (let i = 0; i < n / 2; i++) {
    b.retain(1).delete(1);
    c.retain(1).insert('x');
  }
  assert.equal(compose(a, b).apply(''), '😀'.repeat(n / 2));
  const [c2, d2] = transform(c, new Operation().delete(n / 2));
  assert.equal(c2.targetLen, n / 2);
  assert.equal(d2.baseLen, n);
  const doc = 'a'.repeat(n / 2);
  assert.equal(invert(c, doc).apply(c.apply(doc)), doc);
  assert.equal(transformPosition(n / 2, c, true), n);
});

// --- Properties -----------------------------------------------------------------

/** Characters of the random documents and inserts: ASCII, BMP and non-BMP. */
const ALPHABET = ['a', 'b', '😀', 'é', '\u{10FFFF}', '中'];
/** A character no random text has, to follow in the results. */
const MARK = '☃';
const RUNS = 1000;

const text = (minLength: number, maxLength: number): fc.Arbitrary<string> =>
  fc.array(fc.constantFrom(...ALPHABET), { minLength, maxLength }).map((cs) => cs.join(''));

type Step = { k: 'retain' | 'delete'; n: number } | { k: 'insert'; s: string };
const steps: fc.Arbitrary<Step[]> = fc.array(
  fc.oneof(
    fc.record({ k: fc.constant('retain' as const), n: fc.integer({ min: 1, max: 5 }) }),
    fc.record({ k: fc.constant('delete' as const), n: fc.integer({ min: 1, max: 5 }) }),
    fc.record({ k: fc.constant('insert' as const), s: text(1, 3) }),
  ),
  { maxLength: 7 },
);

/** A random operation on documents of `len` code points: the steps, clipped, then a retain of the rest. */
function build(len: number, ss: Step[]): Operation {
  const o = new Operation();
  let left = len;
  for (const s of ss) {
    if (s.k === 'insert') {
      o.insert(s.s);
    } else {
      const n = Math.min(s.n, left);
      if (s.k === 'retain') o.retain(n);
      else o.delete(n);
      left -= n;
    }
  }
  o.retain(left);
  assert.equal(o.baseLen, len);
  return o;
}

const len = codePointLength;

/** The invariants of the normalized form. */
function assertNormalized(o: Operation): void {
  let base = 0;
  let target = 0;
  const cs = o.components;
  cs.forEach((c, i) => {
    if (typeof c === 'string') {
      assert.ok(c !== '');
      target += len(c);
    } else {
      assert.ok(Number.isSafeInteger(c) && c !== 0);
      base += Math.abs(c);
      if (c > 0) target += c;
    }
    const next = cs[i + 1];
    if (next !== undefined) {
      const kind = (x: WireComponent): string => (typeof x === 'string' ? 'i' : x > 0 ? 'r' : 'd');
      assert.notEqual(kind(c), kind(next), `adjacent components of one kind in ${o}`);
      assert.ok(!(kind(c) === 'd' && kind(next) === 'i'), `a delete before an insert in ${o}`);
    }
  });
  assert.deepEqual([base, target], [o.baseLen, o.targetLen]);
  assert.ok(Operation.parse(o.toString()).equals(o));
}

const chars = (s: string): string[] => Array.from(s);
const indexOf = (s: string, c: string): number => chars(s).indexOf(c);

// Documents and inserts where every character is unique (the same ranges as the Rust
// tests): original text, a's inserts and b's inserts from disjoint ranges, each
// mixing BMP and non-BMP code points.
const original = (i: number): string => String.fromCodePoint((i % 2 === 0 ? 0x100 : 0x1f300) + i);
const uniqueDoc = (n: number): string => Array.from({ length: n }, (_, i) => original(i)).join('');

function uniquify(o: Operation, side: 0 | 1): Operation {
  const out = new Operation();
  let k = 0;
  for (const c of o.components) {
    if (typeof c === 'number') {
      if (c > 0) out.retain(c);
      else out.delete(-c);
      continue;
    }
    const fresh = chars(c)
      .map(() => {
        k++;
        const base = side === 0 ? (k % 2 === 0 ? 0xe000 : 0xf0000) : k % 2 === 0 ? 0xe800 : 0x100000;
        return String.fromCodePoint(base + k);
      })
      .join('');
    out.insert(fresh);
  }
  return out;
}

/** The base-document indices an operation deletes. */
function deleted(o: Operation): Set<number> {
  const out = new Set<number>();
  let old = 0;
  for (const c of o.components) {
    if (typeof c === 'string') continue;
    if (c < 0) for (let i = old; i < old - c; i++) out.add(i);
    old += Math.abs(c);
  }
  return out;
}

/** The inserts of an operation with the base-document position (gap) of each. */
function inserts(o: Operation): [number, string][] {
  const out: [number, string][] = [];
  let old = 0;
  for (const c of o.components) {
    if (typeof c === 'string') out.push([old, c]);
    else old += Math.abs(c);
  }
  return out;
}

const project = (s: string, keep: Set<string>): string => chars(s).filter((c) => keep.has(c)).join('');

test('property: transform converges (TP1)', () => {
  fc.assert(
    fc.property(text(0, 16), steps, steps, (doc, sa, sb) => {
      const a = build(len(doc), sa);
      const b = build(len(doc), sb);
      const [a2, b2] = transform(a, b);
      assertNormalized(a2);
      assertNormalized(b2);
      assert.equal(a2.baseLen, b.targetLen);
      assert.equal(b2.baseLen, a.targetLen);
      const viaA = b2.apply(a.apply(doc));
      const viaB = a2.apply(b.apply(doc));
      assert.equal(viaA, viaB);
      assert.equal(compose(a, b2).apply(doc), viaA);
      assert.equal(compose(b, a2).apply(doc), viaB);
    }),
    { numRuns: RUNS },
  );
});

test('property: transform preserves intentions', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 16 }), steps, steps, (n, sa, sb) => {
      const doc = uniqueDoc(n);
      const a = uniquify(build(n, sa), 0);
      const b = uniquify(build(n, sb), 1);
      const [a2, b2] = transform(a, b);
      const result = b2.apply(a.apply(doc));
      assert.equal(a2.apply(b.apply(doc)), result);

      const gone = new Set([...deleted(a), ...deleted(b)]);
      for (const i of gone) assert.ok(!result.includes(original(i)), `deleted ${i} in ${result}`);
      const kept = new Set<string>();
      for (let i = 0; i < n; i++) if (!gone.has(i)) kept.add(original(i));
      const [insA, insB] = [inserts(a), inserts(b)];
      const insChars = (ins: [number, string][]): Set<string> => new Set(ins.flatMap(([, s]) => chars(s)));
      const [charsA, charsB] = [insChars(insA), insChars(insB)];
      const expected = new Set([...kept, ...charsA, ...charsB]);
      const got = new Set(chars(result));
      assert.equal(len(result), got.size, `a character twice in ${result}`);
      assert.deepEqual(got, expected);

      for (const [o, own] of [
        [a, charsA],
        [b, charsB],
      ] as const) {
        const keep = new Set([...kept, ...own]);
        assert.equal(project(result, keep), project(o.apply(doc), keep));
      }
      for (const [, s] of [...insA, ...insB]) assert.ok(result.includes(s), `${s} split in ${result}`);
      for (const [gapA, sA] of insA) {
        for (const [gapB, sB] of insB) {
          if (gapA === gapB) assert.ok(result.indexOf(sA) < result.indexOf(sB), `tie-break in ${result}`);
        }
      }
    }),
    { numRuns: RUNS },
  );
});

test('property: compose matches apply', () => {
  fc.assert(
    fc.property(text(0, 16), steps, steps, steps, (doc, sa, sb, sc) => {
      const a = build(len(doc), sa);
      const afterA = a.apply(doc);
      const b = build(len(afterA), sb);
      const ab = compose(a, b);
      assertNormalized(ab);
      assert.deepEqual([ab.baseLen, ab.targetLen], [a.baseLen, b.targetLen]);
      const afterB = b.apply(afterA);
      assert.equal(ab.apply(doc), afterB);
      const c = build(len(afterB), sc);
      assert.equal(compose(ab, c).apply(doc), compose(a, compose(b, c)).apply(doc));
      assert.ok(compose(new Operation().retain(len(doc)), a).equals(a));
    }),
    { numRuns: RUNS },
  );
});

test('property: invert undoes', () => {
  fc.assert(
    fc.property(text(0, 16), steps, (doc, sa) => {
      const a = build(len(doc), sa);
      const inverse = invert(a, doc);
      assertNormalized(inverse);
      assert.equal(inverse.apply(a.apply(doc)), doc);
      assert.equal(compose(a, inverse).apply(doc), doc);
    }),
    { numRuns: RUNS },
  );
});

test('property: positions follow the text', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 16 }), steps, (n, sa) => {
      const doc = uniqueDoc(n);
      const a = uniquify(build(n, sa), 0);
      const result = a.apply(doc);
      const gone = deleted(a);
      for (let i = 0; i < n; i++) {
        if (gone.has(i)) continue;
        const before = indexOf(result, original(i));
        assert.equal(transformPosition(i, a, true), before);
        assert.equal(transformPosition(i + 1, a, false), before + 1);
      }
      assert.equal(transformPosition(0, a, false), 0);
      assert.equal(transformPosition(n, a, true), a.targetLen);
      let last = [0, 0];
      for (let p = 0; p <= n + 2; p++) {
        const now = [transformPosition(p, a, false), transformPosition(p, a, true)] as const;
        assert.ok(now[0] <= now[1] && now[1] <= a.targetLen);
        assert.ok(now[0] >= (last[0] ?? 0) && now[1] >= (last[1] ?? 0), 'not monotonic');
        last = [now[0], now[1]];
      }
    }),
    { numRuns: RUNS },
  );
});

test('property: positions agree with transform', () => {
  fc.assert(
    fc.property(text(0, 16), steps, fc.integer({ min: 0, max: 16 }), (doc, sa, p0) => {
      const n = len(doc);
      const p = Math.min(p0, n);
      const a = build(n, sa);
      const b = new Operation().retain(p).insert(MARK).retain(n - p);
      const [, b2] = transform(a, b);
      assert.equal(indexOf(b2.apply(a.apply(doc)), MARK), transformPosition(p, a, true));
      const [b3] = transform(b, a);
      assert.equal(indexOf(b3.apply(a.apply(doc)), MARK), transformPosition(p, a, false));
      assert.deepEqual(transformSelection({ anchor: p, head: n }, a, false), {
        anchor: transformPosition(p, a, false),
        head: transformPosition(n, a, false),
      });
    }),
    { numRuns: RUNS },
  );
});

/** The reference semantics of a wire array: apply the elements one by one. */
function naiveApply(doc: string, raw: WireComponent[]): string {
  const cs = chars(doc);
  let at = 0;
  let out = '';
  for (const r of raw) {
    if (typeof r === 'string') out += r;
    else if (r > 0) {
      out += cs.slice(at, at + r).join('');
      at += r;
    } else at -= r;
  }
  assert.equal(at, cs.length);
  return out;
}

test('property: the JSON wire form round-trips and normalizes without changing meaning', () => {
  const raw = fc.array(
    fc.oneof(fc.integer({ min: 1, max: 4 }), fc.integer({ min: -4, max: -1 }), text(1, 3)) as fc.Arbitrary<WireComponent>,
    { maxLength: 10 },
  );
  fc.assert(
    fc.property(raw, text(40, 40), (r, pool) => {
      const o = Operation.parse(JSON.stringify(r));
      assertNormalized(o);
      assert.ok(Operation.fromJSON(r).equals(o));
      assert.ok(Operation.parse(JSON.stringify(o)).equals(o));
      const doc = chars(pool).slice(0, o.baseLen).join('');
      assert.equal(o.apply(doc), naiveApply(doc, r));
    }),
    { numRuns: RUNS },
  );
});
