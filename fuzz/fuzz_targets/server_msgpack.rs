#![no_main]
//! Server frames in MessagePack (what clients parse): decode_server, re-encode, decode again.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tidings_fuzz::checks::server_frame(protocol::Encoding::MsgPack, data));
