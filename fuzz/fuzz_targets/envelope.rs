#![no_main]
//! The Redis envelope: Publication::decode, its round trip, and the message frame in both encodings.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tidings_fuzz::checks::envelope(data));
