//! Shared by the libFuzzer targets in `fuzz_targets/` and, included by path, by the
//! stable property tests `protocol/tests/fuzz_props.rs` and
//! `gateway/tests/fuzz_props.rs`: the properties ([`checks`], [`gateway_checks`]),
//! the seeds ([`seeds`], [`gateway_seeds`]) and the stable mutation loop
//! ([`mutate`]). See docs/fuzzing.md.

pub mod checks;
pub mod gateway_checks;
pub mod gateway_seeds;
pub mod mutate;
pub mod seeds;
