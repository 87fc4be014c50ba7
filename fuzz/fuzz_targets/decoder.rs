//! The decoder and every payload parser: no panic, the same frames whatever the splits, frames and
//! messages encode back to the same bytes.
//! The checks are stated in `monoreactor::fuzzing::decoder` (lib/src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monoreactor::fuzzing::decoder(data));
