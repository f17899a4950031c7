#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| emollama_fuzz::multipart(data));
