#![no_main]
//! Raw JWT strings, as clients send them.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tidings_fuzz::gateway_checks::token(data));
