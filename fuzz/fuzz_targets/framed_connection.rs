//! An echo-only framed connection driven the way the reactor drives it, the input choosing the
//! bytes, the read splits, would-blocks, short writes, readiness edges and time: no panic, the
//! output parses as frames, memory bounded.
//! The checks are stated in `monoreactor::fuzzing::framed_connection` (lib/src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monoreactor::fuzzing::framed_connection(data));
