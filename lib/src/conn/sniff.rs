//! A TLS client on the plaintext framed port, recognized from its first bytes before the frame
//! decoder makes a confusing error of them.
//!
//! A TLS connection opens with a handshake record, 0x16, then the record's version's major
//! byte, 0x03. As the first two bytes of a frame header they are nothing a client of this
//! protocol sends, so seeing them on a connection awaiting HELLO means a client speaking TLS
//! to a plaintext port. It gets a plaintext ERROR `BAD_HELLO`, which a TLS client cannot
//! parse as a ServerHello (the client maps that to "the server does not speak TLS on this
//! port"), and the connection closes. (The other mixup, a plaintext client on a TLS port, is
//! the TLS session's to see: `transport/tls.rs`.)

use std::cell::RefCell;

use log::warn;

use super::Connection;
use super::context::{Context, Fatal};
use crate::proto::ErrorCode;
use crate::throttle::LogThrottle;

/// The first two bytes of every TLS connection: a handshake record, version 3.x.
const TLS_RECORD_START: [u8; 2] = [0x16, 0x03];

/// The ERROR text a TLS client on the plaintext port gets.
pub(crate) const TLS_ON_PLAINTEXT_TEXT: &str =
    "this port speaks plaintext: a TLS client on a plaintext port (connect without --tls)";

thread_local! {
    /// One server is one thread, so this is the server's throttle for the line below.
    static LOG: RefCell<LogThrottle> = RefCell::new(LogThrottle::default());
}

impl Connection {
    /// Before HELLO: refuses a connection whose first bytes are a TLS ClientHello's.
    pub(super) fn refuse_tls_client(&self, input: &[u8], cx: &Context<'_>) -> Result<(), Fatal> {
        if !input.starts_with(&TLS_RECORD_START) {
            return Ok(());
        }
        LOG.with(|log| {
            if let Some(suppressed) = log.borrow_mut().allow(cx.now) {
                warn!(
                    "a TLS client on a plaintext port ({}): told BAD_HELLO and closed \
                     ({suppressed} more since last report)",
                    cx.peer.addr
                );
            }
        });
        Err(Fatal::new(ErrorCode::BadHello, TLS_ON_PLAINTEXT_TEXT))
    }
}
