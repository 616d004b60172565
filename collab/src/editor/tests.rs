//! Unit tests of the editor.
