//! Operational transformation of plain text.
//!
//! # The model
//!
//! A document is a Unicode string. **Positions and lengths count Unicode code points**
//! (Rust `char`s), never bytes or UTF-16 code units: `"😀"` has length 1, here and in
//! the TypeScript implementation (`client-js/src/collab/ot.ts`), which counts the
//! same way (`Array.from(s)`, not `s.length`).
//!
//! An [`Operation`] is a sequence of [`Component`]s that walks the whole document from
//! its start: [`Retain(n)`](Component::Retain) keeps the next `n` code points,
//! [`Insert(s)`](Component::Insert) inserts `s` at the current position, and
//! [`Delete(n)`](Component::Delete) removes the next `n` code points. An operation
//! spans the whole document, as in ot.js: its [base length](Operation::base_len)
//! (retains + deletes) must equal the length of the document it is applied to, so a
//! trailing retain is kept. Its [target length](Operation::target_len) (retains +
//! inserts) is the length of the result.
//!
//! Operations are always kept in a normalized form: no empty components (retain 0,
//! delete 0, insert ""), adjacent components of the same kind merged, and an insert
//! next to a delete always placed before it. Two operations with the same effect on
//! every document therefore have the same components and compare equal.
//!
//! # Wire form
//!
//! The JSON form is the one of ot.js: an array where a positive integer `n` is
//! retain `n`, a string is an insert and a negative integer `-n` is delete `n`, e.g.
//! `[3, "abc", -2, 5]`. Reading it ([`Operation::from_json`] or serde) rejects zero,
//! numbers without an integer value, numbers beyond ±[`MAX_LEN`], empty strings and
//! any other JSON value, more than [`MAX_COMPONENTS`] components, inserts totalling
//! more than [`MAX_INSERT_CHARS`] code points, and base or target lengths beyond
//! [`MAX_LEN`]; components that are valid but not normalized (`[1, 1]`, `[-1, "a"]`)
//! are accepted and normalized. A number with an integer value is accepted however
//! it is written (`1.0`, `1e0`), because JavaScript's `JSON.parse` cannot tell them
//! from `1`.
//!
//! # Concurrency
//!
//! [`transform`] takes two concurrent operations `a` and `b` on the same document and
//! returns `(a', b')` such that `b'` applies after `a`, `a'` applies after `b`, and
//! both orders give the same document. When both insert at the same position, the
//! **first argument's** insert ends up first. [`transform_position`] and
//! [`Selection::transform`] move carets and selections through an operation.

use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The most components an operation read from the wire form may have (counted as
/// written, before normalization).
pub const MAX_COMPONENTS: usize = 100_000;

/// The most code points the inserts of an operation read from the wire form may hold
/// in total.
pub const MAX_INSERT_CHARS: usize = 1_000_000;

/// The largest length the wire form accepts, for one component and for an operation's
/// base and target lengths: 2^53 − 1, JavaScript's `Number.MAX_SAFE_INTEGER`, so that
/// the Rust and TypeScript implementations count exactly the same.
pub const MAX_LEN: u64 = (1 << 53) - 1;

/// What can go wrong with operations. [`OtError::code`] gives a stable short name,
/// the same as the TypeScript `OtError.code`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OtError {
    /// [`Operation::apply`] or [`invert`] on a document whose length is not the
    /// operation's base length.
    #[error("the operation's base length is {base_len} code points but the document has {doc_len}")]
    BaseLength { base_len: usize, doc_len: usize },
    /// [`compose`] of operations that do not follow each other.
    #[error(
        "cannot compose: the first operation's target length is {first_target_len} but the second's base length is {second_base_len}"
    )]
    ComposeLength {
        first_target_len: usize,
        second_base_len: usize,
    },
    /// [`transform`] of operations that are not on the same document.
    #[error(
        "cannot transform: the concurrent operations' base lengths differ ({a_base_len} and {b_base_len})"
    )]
    TransformLength {
        a_base_len: usize,
        b_base_len: usize,
    },
    /// The wire form is not JSON, not an array, or holds a string that is not
    /// well-formed Unicode (a lone surrogate escape). Input that is not JSON is
    /// reported as malformed even when an element before the syntax error breaks a
    /// rule.
    #[error("malformed operation: {0}")]
    Malformed(String),
    /// An element of the wire array is not a nonzero integer within ±[`MAX_LEN`] nor
    /// a non-empty string.
    #[error("operation component {index} is invalid: {reason}")]
    InvalidComponent { index: usize, reason: &'static str },
    /// More than [`MAX_COMPONENTS`] components in the wire form.
    #[error("the operation has more than {MAX_COMPONENTS} components")]
    TooManyComponents,
    /// More than [`MAX_INSERT_CHARS`] inserted code points in the wire form.
    #[error("the operation inserts more than {MAX_INSERT_CHARS} code points")]
    InsertTooLong,
    /// A base or target length beyond [`MAX_LEN`] in the wire form.
    #[error("the operation's base or target length exceeds {MAX_LEN}")]
    LengthTooLarge,
}

impl OtError {
    /// A stable short name for the error, shared with the TypeScript implementation
    /// and the shared vectors: `base_length_mismatch`, `compose_length_mismatch`,
    /// `transform_length_mismatch`, `malformed`, `invalid_component`,
    /// `too_many_components`, `insert_too_long` or `length_too_large`.
    pub fn code(&self) -> &'static str {
        match self {
            OtError::BaseLength { .. } => "base_length_mismatch",
            OtError::ComposeLength { .. } => "compose_length_mismatch",
            OtError::TransformLength { .. } => "transform_length_mismatch",
            OtError::Malformed(_) => "malformed",
            OtError::InvalidComponent { .. } => "invalid_component",
            OtError::TooManyComponents => "too_many_components",
            OtError::InsertTooLong => "insert_too_long",
            OtError::LengthTooLarge => "length_too_large",
        }
    }
}

/// One step of an [`Operation`]. Lengths count code points.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Component {
    /// Keep the next `n` code points.
    Retain(usize),
    /// Insert this text at the current position.
    Insert(String),
    /// Remove the next `n` code points.
    Delete(usize),
}

/// An edit of a whole document, in normalized form (see the [module docs](self)).
///
/// Build one with [`Operation::new`] and the [`retain`](Operation::retain),
/// [`insert`](Operation::insert) and [`delete`](Operation::delete) methods, which
/// normalize as they go:
///
/// ```
/// use collab::ot::Operation;
/// let mut op = Operation::new();
/// op.retain(2).delete(1).insert("😀").retain(1);
/// assert_eq!(op.to_json(), r#"[2,"😀",-1,1]"#);
/// assert_eq!(op.apply("ab-c").unwrap(), "ab😀c");
/// ```
///
/// The builder puts no limit on sizes; [`MAX_COMPONENTS`], [`MAX_INSERT_CHARS`] and
/// [`MAX_LEN`] apply when reading the wire form.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Operation {
    ops: Vec<Component>,
    base_len: usize,
    target_len: usize,
}

impl Operation {
    /// The empty operation: the no-op on the empty document.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_capacity(n: usize) -> Self {
        Self {
            ops: Vec::with_capacity(n),
            base_len: 0,
            target_len: 0,
        }
    }

    /// Keeps the next `n` code points (nothing if `n` is 0).
    pub fn retain(&mut self, n: usize) -> &mut Self {
        if n == 0 {
            return self;
        }
        self.base_len += n;
        self.target_len += n;
        match self.ops.last_mut() {
            Some(Component::Retain(last)) => *last += n,
            _ => self.ops.push(Component::Retain(n)),
        }
        self
    }

    /// Inserts `text` at the current position (nothing if it is empty).
    pub fn insert(&mut self, text: &str) -> &mut Self {
        if text.is_empty() {
            return self;
        }
        self.insert_counted(text, text.chars().count());
        self
    }

    /// [`Operation::insert`] of a non-empty `text` of `n` code points.
    fn insert_counted(&mut self, text: &str, n: usize) {
        if n == 0 {
            return;
        }
        self.target_len += n;
        let len = self.ops.len();
        match self.ops.as_mut_slice() {
            [.., Component::Insert(prev)] | [.., Component::Insert(prev), Component::Delete(_)] => {
                prev.push_str(text);
            }
            // Normalized: an insert next to a delete goes before it.
            [.., Component::Delete(_)] => {
                self.ops.insert(len - 1, Component::Insert(text.to_owned()));
            }
            _ => self.ops.push(Component::Insert(text.to_owned())),
        }
    }

    /// Removes the next `n` code points (nothing if `n` is 0).
    pub fn delete(&mut self, n: usize) -> &mut Self {
        if n == 0 {
            return self;
        }
        self.base_len += n;
        match self.ops.last_mut() {
            Some(Component::Delete(last)) => *last += n,
            _ => self.ops.push(Component::Delete(n)),
        }
        self
    }

    /// The components, normalized.
    pub fn components(&self) -> &[Component] {
        &self.ops
    }

    /// The length, in code points, of the documents this operation applies to.
    pub fn base_len(&self) -> usize {
        self.base_len
    }

    /// The length, in code points, of the documents this operation produces.
    pub fn target_len(&self) -> usize {
        self.target_len
    }

    /// Whether the operation changes nothing (it only retains, or is empty).
    pub fn is_noop(&self) -> bool {
        self.ops.iter().all(|c| matches!(c, Component::Retain(_)))
    }

    /// Applies the operation to `doc`, in one pass over it.
    ///
    /// # Errors
    ///
    /// [`OtError::BaseLength`] if `doc` is not [`base_len`](Self::base_len) code
    /// points long.
    pub fn apply(&self, doc: &str) -> Result<String, OtError> {
        let mismatch = || OtError::BaseLength {
            base_len: self.base_len,
            doc_len: doc.chars().count(),
        };
        let inserted: usize = self
            .ops
            .iter()
            .map(|c| match c {
                Component::Insert(s) => s.len(),
                _ => 0,
            })
            .sum();
        let mut out = String::with_capacity(doc.len().saturating_add(inserted));
        let mut rest = doc;
        for c in &self.ops {
            match c {
                Component::Retain(n) => {
                    let (kept, tail) = split_chars(rest, *n).ok_or_else(mismatch)?;
                    out.push_str(kept);
                    rest = tail;
                }
                Component::Insert(s) => out.push_str(s),
                Component::Delete(n) => rest = split_chars(rest, *n).ok_or_else(mismatch)?.1,
            }
        }
        if rest.is_empty() {
            Ok(out)
        } else {
            Err(mismatch())
        }
    }

    /// Reads the JSON wire form (see the [module docs](self)), normalizing it.
    ///
    /// # Errors
    ///
    /// [`OtError::Malformed`] if `json` is not one JSON array of strings and numbers,
    /// [`OtError::InvalidComponent`], [`OtError::TooManyComponents`],
    /// [`OtError::InsertTooLong`] or [`OtError::LengthTooLarge`] if it breaks the
    /// rules or limits of the wire form.
    pub fn from_json(json: &str) -> Result<Self, OtError> {
        let mut slot = None;
        let mut de = serde_json::Deserializer::from_str(json);
        let read = WireSeed { slot: &mut slot }.deserialize(&mut de);
        // Trailing text makes the input malformed, even after an invalid element.
        match (read, de.end()) {
            (Ok(op), Ok(())) => Ok(op),
            (_, Err(e)) => Err(OtError::Malformed(e.to_string())),
            (Err(e), Ok(())) => Err(slot.unwrap_or_else(|| OtError::Malformed(e.to_string()))),
        }
    }

    /// [`Operation::from_json`] of an already parsed JSON value.
    ///
    /// # Errors
    ///
    /// As [`Operation::from_json`].
    pub fn from_value(value: &Value) -> Result<Self, OtError> {
        let mut slot = None;
        let read = WireSeed { slot: &mut slot }.deserialize(value);
        read.map_err(|e| {
            slot.take()
                .unwrap_or_else(|| OtError::Malformed(e.to_string()))
        })
    }

    /// The JSON wire form, compact, e.g. `[3,"abc",-2,5]`. Strings are escaped as
    /// JavaScript's `JSON.stringify` does, so both implementations write the same
    /// text. The same as the [`Display`](fmt::Display) form and serde's.
    pub fn to_json(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Operation {
    /// The JSON wire form, as [`Operation::to_json`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('[')?;
        for (i, c) in self.ops.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            match c {
                Component::Retain(n) => write!(f, "{n}")?,
                Component::Delete(n) => write!(f, "-{n}")?,
                Component::Insert(s) => write_json_string(f, s)?,
            }
        }
        f.write_char(']')
    }
}

/// A JSON string literal, escaped as `JSON.stringify` does (and as serde_json does):
/// `"` and `\`, the short escapes `\b \f \n \r \t`, other control characters as
/// `\u00xx`; everything else as is.
fn write_json_string(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    f.write_char('"')?;
    let mut start = 0;
    for (i, ch) in s.char_indices() {
        let short = match ch {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\u{8}' => "\\b",
            '\u{c}' => "\\f",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if c < ' ' => "",
            _ => continue,
        };
        f.write_str(&s[start..i])?;
        if short.is_empty() {
            write!(f, "\\u{:04x}", u32::from(ch))?;
        } else {
            f.write_str(short)?;
        }
        start = i + ch.len_utf8();
    }
    f.write_str(&s[start..])?;
    f.write_char('"')
}

impl Serialize for Operation {
    /// The wire form: an array of positive integers (retain), strings (insert) and
    /// negative integers (delete).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.ops.len()))?;
        for c in &self.ops {
            match c {
                Component::Retain(n) => seq.serialize_element(&(*n as u64))?,
                Component::Insert(s) => seq.serialize_element(s)?,
                Component::Delete(n) => match i64::try_from(*n) {
                    Ok(n) => seq.serialize_element(&-n)?,
                    // Only reachable with a length no document has; written as is
                    // and refused when read back (beyond MAX_LEN).
                    Err(_) => seq.serialize_element(&-(*n as f64))?,
                },
            }
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Operation {
    /// The wire form, validated and normalized as [`Operation::from_json`] does; a
    /// rule or limit broken is a custom error with the [`OtError`]'s message.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        WireSeed { slot: &mut None }.deserialize(deserializer)
    }
}

/// Reads the wire array; a broken rule is kept in `slot` (so that
/// [`Operation::from_json`] can return the [`OtError`] itself) and returned as a
/// custom error.
struct WireSeed<'s> {
    slot: &'s mut Option<OtError>,
}

impl<'de> DeserializeSeed<'de> for WireSeed<'_> {
    type Value = Operation;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Operation, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for WireSeed<'_> {
    type Value = Operation;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an operation: an array of nonzero integers and non-empty strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Operation, A::Error> {
        let mut reader = WireReader::default();
        while let Some(value) = seq.next_element::<Value>()? {
            if let Err(e) = reader.push(value) {
                // Input that is not JSON at all is malformed, whatever its first
                // elements: read the rest (a syntax error there wins), as
                // JSON.parse does before the TypeScript implementation validates.
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                let message = e.to_string();
                *self.slot = Some(e);
                return Err(de::Error::custom(message));
            }
        }
        Ok(reader.op)
    }
}

/// Validates the wire form one element at a time, in the same order as the
/// TypeScript `Operation.fromJSON`, so both report the same error for the same input.
#[derive(Default)]
struct WireReader {
    op: Operation,
    count: usize,
    inserted: usize,
}

impl WireReader {
    fn push(&mut self, value: Value) -> Result<(), OtError> {
        let index = self.count;
        if index >= MAX_COMPONENTS {
            return Err(OtError::TooManyComponents);
        }
        self.count += 1;
        let invalid = |reason| OtError::InvalidComponent { index, reason };
        match value {
            Value::String(s) => {
                if s.is_empty() {
                    return Err(invalid("an insert must not be empty"));
                }
                let n = s.chars().count();
                self.inserted += n;
                if self.inserted > MAX_INSERT_CHARS {
                    return Err(OtError::InsertTooLong);
                }
                check_len(self.op.target_len, n)?;
                self.op.insert_counted(&s, n);
            }
            Value::Number(number) => {
                let (negative, magnitude) = if let Some(u) = number.as_u64() {
                    (false, u)
                } else if let Some(i) = number.as_i64() {
                    (i < 0, i.unsigned_abs())
                } else {
                    let f = number.as_f64().unwrap_or(f64::NAN);
                    if !f.is_finite() || f.fract() != 0.0 {
                        return Err(invalid("a length must be an integer"));
                    }
                    if f.abs() > MAX_LEN as f64 {
                        return Err(invalid("a length must be at most 2^53 - 1"));
                    }
                    // Exact: an integer of at most 2^53 - 1.
                    (f < 0.0, f.abs() as u64)
                };
                if magnitude == 0 {
                    return Err(invalid("a length must not be zero"));
                }
                if magnitude > MAX_LEN {
                    return Err(invalid("a length must be at most 2^53 - 1"));
                }
                let n = usize::try_from(magnitude).map_err(|_| OtError::LengthTooLarge)?;
                check_len(self.op.base_len, n)?;
                if negative {
                    self.op.delete(n);
                } else {
                    check_len(self.op.target_len, n)?;
                    self.op.retain(n);
                }
            }
            _ => return Err(invalid("expected a nonzero integer or a non-empty string")),
        }
        Ok(())
    }
}

/// Whether `len + n` stays within [`MAX_LEN`] (and `usize`).
fn check_len(len: usize, n: usize) -> Result<(), OtError> {
    match len.checked_add(n) {
        Some(total) if total as u64 <= MAX_LEN => Ok(()),
        _ => Err(OtError::LengthTooLarge),
    }
}

/// Splits `s` after its first `n` code points; `None` if it has fewer.
fn split_chars(s: &str, n: usize) -> Option<(&str, &str)> {
    // ASCII fast path: the first n bytes are the first n code points.
    if let Some(head) = s.as_bytes().get(..n)
        && head.is_ascii()
    {
        return Some(s.split_at(n));
    }
    let mut count = 0;
    for (i, _) in s.char_indices() {
        if count == n {
            return Some(s.split_at(i));
        }
        count += 1;
    }
    (count == n).then_some((s, ""))
}

/// A component, or what is left of it, borrowed from an operation; inserts carry
/// their length in code points.
#[derive(Clone, Copy)]
enum Piece<'a> {
    Retain(usize),
    Insert(&'a str, usize),
    Delete(usize),
}

impl Piece<'_> {
    fn len(self) -> usize {
        match self {
            Piece::Retain(n) | Piece::Insert(_, n) | Piece::Delete(n) => n,
        }
    }
}

/// Walks an operation's components, consuming them piece by piece.
struct Cursor<'a> {
    rest: std::slice::Iter<'a, Component>,
    current: Option<Piece<'a>>,
}

impl<'a> Cursor<'a> {
    fn new(op: &'a Operation) -> Self {
        let mut cursor = Self {
            rest: op.ops.iter(),
            current: None,
        };
        cursor.next();
        cursor
    }

    fn next(&mut self) {
        self.current = self.rest.next().map(|c| match c {
            Component::Retain(n) => Piece::Retain(*n),
            Component::Insert(s) => Piece::Insert(s, s.chars().count()),
            Component::Delete(n) => Piece::Delete(*n),
        });
    }

    fn peek(&self) -> Option<Piece<'a>> {
        self.current
    }

    /// Consumes the first `n` (at most the current piece's length) units of the
    /// current piece.
    fn take(&mut self, n: usize) -> Option<Piece<'a>> {
        let piece = self.current?;
        if n >= piece.len() {
            self.next();
            return Some(piece);
        }
        let (taken, left) = match piece {
            Piece::Retain(m) => (Piece::Retain(n), Piece::Retain(m - n)),
            Piece::Delete(m) => (Piece::Delete(n), Piece::Delete(m - n)),
            Piece::Insert(s, m) => {
                let (head, tail) = split_chars(s, n).unwrap_or((s, ""));
                (Piece::Insert(head, n), Piece::Insert(tail, m - n))
            }
        };
        self.current = Some(left);
        Some(taken)
    }
}

/// The operation that has the effect of `a` then `b`:
/// `compose(a, b)?.apply(d) == b.apply(&a.apply(d)?)`. Linear in the sizes of `a`
/// and `b`.
///
/// # Errors
///
/// [`OtError::ComposeLength`] if `a`'s target length is not `b`'s base length.
pub fn compose(a: &Operation, b: &Operation) -> Result<Operation, OtError> {
    let mismatch = || OtError::ComposeLength {
        first_target_len: a.target_len,
        second_base_len: b.base_len,
    };
    if a.target_len != b.base_len {
        return Err(mismatch());
    }
    let mut out = Operation::with_capacity(a.ops.len() + b.ops.len());
    let (mut ca, mut cb) = (Cursor::new(a), Cursor::new(b));
    loop {
        match (ca.peek(), cb.peek()) {
            (None, None) => break,
            // What a deletes, b never sees.
            (Some(Piece::Delete(n)), _) => {
                ca.take(n);
                out.delete(n);
            }
            // What b inserts, a never saw.
            (_, Some(Piece::Insert(s, n))) => {
                cb.take(n);
                out.insert_counted(s, n);
            }
            (Some(pa), Some(pb)) => {
                let n = pa.len().min(pb.len());
                let taken = ca.take(n);
                cb.take(n);
                match (taken, pb) {
                    (Some(Piece::Retain(_)), Piece::Retain(_)) => {
                        out.retain(n);
                    }
                    (Some(Piece::Retain(_)), Piece::Delete(_)) => {
                        out.delete(n);
                    }
                    (Some(Piece::Insert(s, _)), Piece::Retain(_)) => out.insert_counted(s, n),
                    // Inserted by a, deleted by b: nothing.
                    _ => {}
                }
            }
            // Unreachable: the lengths match.
            _ => return Err(mismatch()),
        }
    }
    Ok(out)
}

/// Transforms concurrent operations `a` and `b` (both on the same document) into
/// `(a', b')` such that applying `a` then `b'` gives the same document as applying
/// `b` then `a'` (TP1). When `a` and `b` insert at the same position, `a`'s insert
/// ends up before `b`'s: the first argument wins ties. Text deleted by both is
/// deleted once. Linear in the sizes of `a` and `b`.
///
/// # Errors
///
/// [`OtError::TransformLength`] if their base lengths differ.
pub fn transform(a: &Operation, b: &Operation) -> Result<(Operation, Operation), OtError> {
    let mismatch = || OtError::TransformLength {
        a_base_len: a.base_len,
        b_base_len: b.base_len,
    };
    if a.base_len != b.base_len {
        return Err(mismatch());
    }
    let capacity = a.ops.len() + b.ops.len();
    let (mut a2, mut b2) = (
        Operation::with_capacity(capacity),
        Operation::with_capacity(capacity),
    );
    let (mut ca, mut cb) = (Cursor::new(a), Cursor::new(b));
    loop {
        match (ca.peek(), cb.peek()) {
            (None, None) => break,
            // a's insert first: the tie-break.
            (Some(Piece::Insert(s, n)), _) => {
                ca.take(n);
                a2.insert_counted(s, n);
                b2.retain(n);
            }
            (_, Some(Piece::Insert(s, n))) => {
                cb.take(n);
                a2.retain(n);
                b2.insert_counted(s, n);
            }
            (Some(pa), Some(pb)) => {
                let n = pa.len().min(pb.len());
                ca.take(n);
                cb.take(n);
                match (pa, pb) {
                    (Piece::Retain(_), Piece::Retain(_)) => {
                        a2.retain(n);
                        b2.retain(n);
                    }
                    (Piece::Delete(_), Piece::Retain(_)) => {
                        a2.delete(n);
                    }
                    (Piece::Retain(_), Piece::Delete(_)) => {
                        b2.delete(n);
                    }
                    // Deleted by both: already gone on either side. (Inserts were
                    // handled above.)
                    _ => {}
                }
            }
            // Unreachable: the base lengths match.
            _ => return Err(mismatch()),
        }
    }
    Ok((a2, b2))
}

/// The operation that undoes `op`, given the document `doc` that `op` applies to:
/// `invert(op, d)?.apply(&op.apply(d)?) == d`.
///
/// # Errors
///
/// [`OtError::BaseLength`] if `doc` is not `op`'s base length long.
pub fn invert(op: &Operation, doc: &str) -> Result<Operation, OtError> {
    let mismatch = || OtError::BaseLength {
        base_len: op.base_len,
        doc_len: doc.chars().count(),
    };
    let mut out = Operation::with_capacity(op.ops.len());
    let mut rest = doc;
    for c in &op.ops {
        match c {
            Component::Retain(n) => {
                rest = split_chars(rest, *n).ok_or_else(mismatch)?.1;
                out.retain(*n);
            }
            Component::Insert(s) => {
                out.delete(s.chars().count());
            }
            Component::Delete(n) => {
                let (deleted, tail) = split_chars(rest, *n).ok_or_else(mismatch)?;
                out.insert_counted(deleted, *n);
                rest = tail;
            }
        }
    }
    if rest.is_empty() {
        Ok(out)
    } else {
        Err(mismatch())
    }
}

/// Where a caret at code point position `pos` (a gap between code points: 0 is before
/// the first) is after `op`.
///
/// Text inserted before the caret moves it right, text deleted before it moves it
/// left, and a caret inside deleted text goes to where the deletion was. Text
/// inserted exactly at the caret leaves a remote user's caret before it
/// (`is_own == false`) and moves the caret of the user who typed it after it
/// (`is_own == true`). A position past the end of the document is taken as the end.
pub fn transform_position(pos: usize, op: &Operation, is_own: bool) -> usize {
    let pos = pos.min(op.base_len);
    let mut old = 0; // position in the base document
    let mut new = pos;
    for c in &op.ops {
        if old > pos {
            break;
        }
        match c {
            Component::Retain(n) => old += n,
            Component::Insert(s) => {
                if old < pos || is_own {
                    new += s.chars().count();
                }
            }
            Component::Delete(n) => {
                new -= (*n).min(pos - old);
                old += n;
            }
        }
    }
    new
}

/// A selection in a document: `anchor` is where it started, `head` where the caret is
/// (it may be before `anchor`); equal for a plain caret. Both are code point
/// positions, as in [`transform_position`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Selection {
    pub anchor: usize,
    pub head: usize,
}

impl Selection {
    /// A collapsed selection: a caret at `pos`.
    pub fn caret(pos: usize) -> Self {
        Self {
            anchor: pos,
            head: pos,
        }
    }

    /// Whether the selection is a caret (empty).
    pub fn is_caret(&self) -> bool {
        self.anchor == self.head
    }

    /// The selection after `op`: both ends moved by [`transform_position`].
    pub fn transform(&self, op: &Operation, is_own: bool) -> Self {
        Self {
            anchor: transform_position(self.anchor, op, is_own),
            head: transform_position(self.head, op, is_own),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(json: &str) -> Operation {
        Operation::from_json(json).unwrap()
    }

    #[test]
    fn builder_normalizes() {
        let mut o = Operation::new();
        o.retain(0).insert("").delete(0);
        assert!(o.components().is_empty());
        assert!(o.is_noop());
        o.retain(1)
            .retain(2)
            .delete(1)
            .insert("a")
            .insert("b")
            .delete(2)
            .insert("c");
        assert_eq!(
            o.components(),
            &[
                Component::Retain(3),
                Component::Insert("abc".into()),
                Component::Delete(3)
            ]
        );
        assert_eq!((o.base_len(), o.target_len()), (6, 6));
        assert!(!o.is_noop());
        let mut p = Operation::new();
        p.retain(2).insert("😀é");
        assert_eq!((p.base_len(), p.target_len()), (2, 4));
    }

    #[test]
    fn apply_counts_code_points() {
        assert_eq!(op(r#"[1,"x",-1,1]"#).apply("😀é中").unwrap(), "😀x中");
        assert_eq!(
            op("[2]").apply("😀").unwrap_err(),
            OtError::BaseLength {
                base_len: 2,
                doc_len: 1
            }
        );
        assert_eq!(
            op("[1]").apply("ab").unwrap_err().code(),
            "base_length_mismatch"
        );
        assert_eq!(
            op("[-2]").apply("a").unwrap_err().code(),
            "base_length_mismatch"
        );
        assert_eq!(Operation::new().apply("").unwrap(), "");
        assert_eq!(op(r#"["abc"]"#).apply("").unwrap(), "abc");
    }

    #[test]
    fn split_chars_handles_every_case() {
        assert_eq!(split_chars("abc", 0), Some(("", "abc")));
        assert_eq!(split_chars("abc", 3), Some(("abc", "")));
        assert_eq!(split_chars("abc", 4), None);
        assert_eq!(split_chars("a😀b", 2), Some(("a😀", "b")));
        assert_eq!(split_chars("a😀b", 3), Some(("a😀b", "")));
        assert_eq!(split_chars("a😀b", 4), None);
        assert_eq!(split_chars("", 0), Some(("", "")));
    }

    #[test]
    fn length_errors() {
        assert_eq!(
            compose(&op("[1]"), &op("[2]")).unwrap_err().code(),
            "compose_length_mismatch"
        );
        assert_eq!(
            transform(&op("[1]"), &op("[2]")).unwrap_err().code(),
            "transform_length_mismatch"
        );
        assert_eq!(
            invert(&op("[1]"), "ab").unwrap_err().code(),
            "base_length_mismatch"
        );
    }

    #[test]
    fn invert_restores() {
        let o = op(r#"[1,"XY",-2,1]"#);
        let inv = invert(&o, "a😀éb").unwrap();
        assert_eq!(inv.to_json(), r#"[1,"😀é",-2,1]"#);
        assert_eq!(inv.apply(&o.apply("a😀éb").unwrap()).unwrap(), "a😀éb");
    }

    #[test]
    fn wire_form_round_trips_and_escapes_like_json_stringify() {
        let o = op(r#"[3,"a\"\\\n\t\u0001\u007f😀\u2028",-2,5]"#);
        let text = o.to_json();
        assert_eq!(text, "[3,\"a\\\"\\\\\\n\\t\\u0001\u{7f}😀\u{2028}\",-2,5]");
        assert_eq!(Operation::from_json(&text).unwrap(), o);
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            serde_json::to_string(&serde_json::from_str::<Value>(&text).unwrap()).unwrap()
        );
        let back: Operation = serde_json::from_str(&text).unwrap();
        assert_eq!(back, o);
        assert_eq!(
            Operation::from_value(&serde_json::json!([1, "a", -1])).unwrap(),
            op(r#"[1,"a",-1]"#)
        );
        assert_eq!(Operation::new().to_json(), "[]");
    }

    #[test]
    fn wire_form_normalizes() {
        assert_eq!(op("[1,1,-1,-1]").to_json(), "[2,-2]");
        assert_eq!(op(r#"[-1,"a",-1,"b"]"#).to_json(), r#"["ab",-2]"#);
        assert_eq!(op("[1.0,-2e0]").to_json(), "[1,-2]");
    }

    #[test]
    fn serde_errors_carry_the_reason() {
        let e = serde_json::from_str::<Operation>("[1,0]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("component 1 is invalid"), "{e}");
        let e = Operation::from_json("[1,0]").unwrap_err();
        assert_eq!(
            e,
            OtError::InvalidComponent {
                index: 1,
                reason: "a length must not be zero"
            }
        );
        assert_eq!(
            Operation::from_json("[1] x").unwrap_err().code(),
            "malformed"
        );
        assert_eq!(
            Operation::from_json(r#"["\ud800"]"#).unwrap_err().code(),
            "malformed"
        );
        assert_eq!(
            Operation::from_value(&serde_json::json!({"a": 1}))
                .unwrap_err()
                .code(),
            "malformed"
        );
    }

    #[test]
    fn limits() {
        let many = |n: usize| format!("[{}]", vec!["1"; n].join(","));
        assert_eq!(op(&many(MAX_COMPONENTS)).base_len(), MAX_COMPONENTS);
        assert_eq!(
            Operation::from_json(&many(MAX_COMPONENTS + 1)).unwrap_err(),
            OtError::TooManyComponents
        );
        // Code points, not bytes or UTF-16 units: a million emoji is within the limit.
        let emoji = format!(r#"["{}"]"#, "😀".repeat(MAX_INSERT_CHARS));
        assert_eq!(op(&emoji).target_len(), MAX_INSERT_CHARS);
        let split = format!(r#"["{}",1,"{}"]"#, "a".repeat(MAX_INSERT_CHARS - 1), "ab");
        assert_eq!(
            Operation::from_json(&split).unwrap_err(),
            OtError::InsertTooLong
        );
        assert_eq!(op(&format!("[{MAX_LEN}]")).base_len() as u64, MAX_LEN);
        assert_eq!(op(&format!("[-{MAX_LEN}]")).base_len() as u64, MAX_LEN);
        assert_eq!(
            Operation::from_json(&format!("[{MAX_LEN},1]")).unwrap_err(),
            OtError::LengthTooLarge
        );
        assert_eq!(
            Operation::from_json(&format!(r#"[{MAX_LEN},"a"]"#)).unwrap_err(),
            OtError::LengthTooLarge
        );
        assert_eq!(
            Operation::from_json(&format!("[{}]", MAX_LEN + 1))
                .unwrap_err()
                .code(),
            "invalid_component"
        );
        assert_eq!(
            Operation::from_json("[1e300]").unwrap_err().code(),
            "invalid_component"
        );
        assert_eq!(
            Operation::from_json("[-1.5]").unwrap_err().code(),
            "invalid_component"
        );
    }

    #[test]
    fn positions_and_selections() {
        let o = op(r#"[1,"ab",-2,1,"c"]"#); // "wxyz" -> "wabz" + "c"
        // 0 is before w; 1 between w and x (where "ab" goes).
        let moved: Vec<usize> = (0..=4).map(|p| transform_position(p, &o, false)).collect();
        assert_eq!(moved, [0, 1, 3, 3, 4]);
        let own: Vec<usize> = (0..=4).map(|p| transform_position(p, &o, true)).collect();
        assert_eq!(own, [0, 3, 3, 3, 5]);
        assert_eq!(transform_position(99, &o, false), 4);
        let s = Selection { anchor: 4, head: 1 };
        assert_eq!(s.transform(&o, false), Selection { anchor: 4, head: 1 });
        assert_eq!(s.transform(&o, true), Selection { anchor: 5, head: 3 });
        assert!(Selection::caret(2).is_caret());
        assert!(!s.is_caret());
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"anchor":4,"head":1}"#
        );
    }
}
