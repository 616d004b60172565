//! Collaborative editing for Tidings: the operational transformation (OT) of plain
//! text that lets several clients edit one document concurrently and converge.
//!
//! [`ot`] is pure, synchronous code with no I/O: operations on a Unicode string,
//! their application, composition, transformation against concurrent operations,
//! inversion, cursor and selection transformation, and the JSON wire form (the same
//! as ot.js). The TypeScript client has the same library in
//! `client-js/src/collab/ot.ts`; both pass the shared vectors of `vectors/ot.json`.
//! The editing client that sends and receives operations over a Tidings connection
//! is to be built on it in this crate. The model is described in
//! `docs/collaboration.md`.

pub mod ot;
