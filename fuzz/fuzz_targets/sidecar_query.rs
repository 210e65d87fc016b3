#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iogate_fuzz_harness::run("sidecar_query", data));
