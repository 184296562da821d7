#![no_main]
//! See `metasrv::inputs::partition_rule`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| metasrv::inputs::partition_rule(data));
