#![no_main]
//! Client frames in JSON: decode_client, then re-encode in both encodings and decode again.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tidings_fuzz::checks::client_frame(protocol::Encoding::Json, data));
