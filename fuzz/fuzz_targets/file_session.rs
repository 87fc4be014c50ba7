//! A connection serving files from a temporary root, disk jobs completed (or failed) when the
//! input says: the connection checks, and nothing visible under the root before a PUT's digest is
//! verified.
//! The checks are stated in `monoreactor::fuzzing::file_session` (lib/src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monoreactor::fuzzing::file_session(data));
