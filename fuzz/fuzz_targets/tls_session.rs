//! A server TLS session on a fixed certificate, the input choosing the client's bytes (raw, or a
//! real client's handshake followed by garbage or mutated records) and every read split,
//! would-block, short write and the FIN: no panic, no endless loop, buffers bounded, plaintext
//! only after the handshake and never after an error.
//! The checks are stated in `monoreactor::fuzzing::tls_session` (lib/src/fuzzing/tls.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| monoreactor::fuzzing::tls_session(data));
