#![no_main]
//! See `metasrv::inputs::kv_values`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| metasrv::inputs::kv_values(data));
