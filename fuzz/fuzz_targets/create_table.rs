#![no_main]
//! See `metasrv::inputs::create_table`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| metasrv::inputs::create_table(data));
