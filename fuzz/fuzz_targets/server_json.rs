#![no_main]
//! Server frames in JSON (what clients parse): decode_server, re-encode, decode again.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tidings_fuzz::checks::server_frame(protocol::Encoding::Json, data));
