#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| emollama_fuzz::analyze_request(data));
