//! The PROXY protocol header's parser and the prelude that takes a header off a socket: no panic,
//! answers final, the prelude fed in pieces agreeing with the parser.
//! The checks are stated in `monoreactor::fuzzing::proxy_header` (lib/src/fuzzing/proxy.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monoreactor::fuzzing::proxy_header(data));
