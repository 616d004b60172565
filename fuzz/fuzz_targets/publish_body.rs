#![no_main]
//! The HTTP publish body (api::check_body), single and batch.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tidings_fuzz::gateway_checks::publish_body(data));
