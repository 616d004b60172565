#![no_main]
//! JWT claims behind a valid HS256 signature: the input is the claims JSON.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tidings_fuzz::gateway_checks::token_claims(data));
