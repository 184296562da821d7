#![no_main]
//! See `metasrv::inputs::catalog_records`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| metasrv::inputs::catalog_records(data));
