#![no_main]
//! See `metasrv::inputs::heartbeat`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| metasrv::inputs::heartbeat(data));
