//! An authenticated connection running commands on scripted children (output, exits, refused
//! spawns, pipe errors chosen by the input): the connection checks, one EXIT per STARTED, no stdin
//! beyond the window, the Children rules.
//! The checks are stated in `monoreactor::fuzzing::exec_session` (lib/src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monoreactor::fuzzing::exec_session(data));
