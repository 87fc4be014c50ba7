//! [`Arbitrary`] for the message types (the `arbitrary` feature): a fuzzer or a property test
//! asks for a HELLO, an EXEC or a PUT instead of bytes, and gets one that encodes.
//!
//! Every value is one the type can hold and its `emit` can write (a bounded credentials field,
//! an error text cut at
//! [`MAX_ERROR_TEXT_LEN`](super::message::MAX_ERROR_TEXT_LEN), at most [`MAX_ARGS`] arguments), built through
//! the type's own constructors, so it keeps the type's invariants: flags only from the bits
//! this version defines, numbers that name a known code as that code. What a *peer* may send
//! that no such value covers (unknown flag bits, a truncated field) is the decoder's fuzz
//! target, which starts from bytes.
//!
//! ```
//! use arbitrary::{Arbitrary, Unstructured};
//! use monoreactor::proto::exec::ExecRequest;
//!
//! let mut input = Unstructured::new(&[7; 64]);
//! let request = ExecRequest::arbitrary(&mut input).unwrap();
//! let mut payload = vec![0; request.payload_len()];
//! request.emit(&mut payload);
//! ```

use arbitrary::{Arbitrary, Result, Unstructured};

use super::exec::{
    EndReason, ExecFlags, ExecRequest, Exit, MAX_ARGS, MAX_CWD_LEN, PtyRequest, Signal,
    SignalRequest, Started, Termination, Window,
};
use super::files::{
    Digest, FileInfo, FileKind, GetRequest, HASH_LEN, PutFlags, PutReady, PutRequest,
};
use super::message::MAX_CREDENTIALS_LEN;
use super::{
    ErrorCode, ErrorMessage, Flags, Frame, FrameType, Header, Hello, HelloOk, SessionFlags,
};

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl<'a> Arbitrary<'a> for FrameType {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(FrameType::from_u8(u8::arbitrary(u)?))
    }
}

impl<'a> Arbitrary<'a> for Flags {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Flags::from_bits(u8::arbitrary(u)? & Flags::KNOWN.bits()).unwrap_or(Flags::NONE))
    }
}

impl<'a> Arbitrary<'a> for Header {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Header {
            frame_type: FrameType::arbitrary(u)?,
            flags: Flags::arbitrary(u)?,
            stream: u32::arbitrary(u)?,
            len: u32::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for Frame<'a> {
    /// A frame whose length field matches its payload.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let frame_type = FrameType::arbitrary(u)?;
        let flags = Flags::arbitrary(u)?;
        let stream = u32::arbitrary(u)?;
        Ok(Frame::new(
            frame_type,
            flags,
            stream,
            <&[u8]>::arbitrary(u)?,
        ))
    }
}

impl<'a> Arbitrary<'a> for Hello<'a> {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let min_version = u16::arbitrary(u)?;
        let max_version = u16::arbitrary(u)?;
        let credentials = <&[u8]>::arbitrary(u)?;
        Ok(Hello {
            min_version,
            max_version,
            credentials: &credentials[..credentials.len().min(MAX_CREDENTIALS_LEN)],
        })
    }
}

impl<'a> Arbitrary<'a> for SessionFlags {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(SessionFlags::from_bits(u16::arbitrary(u)?))
    }
}

impl<'a> Arbitrary<'a> for HelloOk {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(HelloOk {
            version: u16::arbitrary(u)?,
            max_payload_len: u32::arbitrary(u)?,
            flags: SessionFlags::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for ErrorCode {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(ErrorCode::from_u16(u16::arbitrary(u)?))
    }
}

impl<'a> Arbitrary<'a> for ErrorMessage<'a> {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let code = ErrorCode::arbitrary(u)?;
        Ok(ErrorMessage::new(code, <&str>::arbitrary(u)?))
    }
}

impl<'a> Arbitrary<'a> for ExecFlags {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(if bool::arbitrary(u)? {
            ExecFlags::STDIN
        } else {
            ExecFlags::NONE
        })
    }
}

impl<'a> Arbitrary<'a> for ExecRequest<'a> {
    /// Any argv of at most [`MAX_ARGS`] arguments (NUL bytes and an empty program included:
    /// the server must refuse those), a working directory of at most [`MAX_CWD_LEN`] bytes.
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let flags = ExecFlags::arbitrary(u)?;
        let timeout_ms = u32::arbitrary(u)?;
        let cwd = cut(<&str>::arbitrary(u)?, MAX_CWD_LEN);
        let argc = u.int_in_range(0..=MAX_ARGS.min(64))?;
        let mut argv = Vec::with_capacity(argc);
        for _ in 0..argc {
            argv.push(<&[u8]>::arbitrary(u)?);
        }
        let pty = if bool::arbitrary(u)? {
            Some(PtyRequest {
                rows: u16::arbitrary(u)?,
                cols: u16::arbitrary(u)?,
                term: cut(<&str>::arbitrary(u)?, u8::MAX.into()),
            })
        } else {
            None
        };
        Ok(ExecRequest {
            flags,
            timeout_ms,
            cwd,
            argv,
            pty,
        })
    }
}

impl<'a> Arbitrary<'a> for Started {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Started {
            pid: u32::arbitrary(u)?,
            stdin_window: u32::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for Window {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Window {
            increment: u32::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for Signal {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        u.choose(&[Signal::Hup, Signal::Int, Signal::Kill, Signal::Term])
            .copied()
    }
}

impl<'a> Arbitrary<'a> for SignalRequest {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(SignalRequest {
            signal: Signal::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for Termination {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(if bool::arbitrary(u)? {
            Termination::Exited(u8::arbitrary(u)?)
        } else {
            Termination::Signaled {
                signal: u8::arbitrary(u)?,
                core_dumped: bool::arbitrary(u)?,
            }
        })
    }
}

impl<'a> Arbitrary<'a> for EndReason {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(EndReason::from_u8(u8::arbitrary(u)?))
    }
}

impl<'a> Arbitrary<'a> for Exit {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Exit {
            termination: Termination::arbitrary(u)?,
            reason: EndReason::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for GetRequest<'a> {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(GetRequest {
            offset: u64::arbitrary(u)?,
            path: <&str>::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for PutFlags {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let bits = u8::arbitrary(u)?;
        let mut flags = PutFlags::NONE;
        if bits & PutFlags::HASH_DECLARED.bits() != 0 {
            flags = flags.with(PutFlags::HASH_DECLARED);
        }
        if bits & PutFlags::RESUME.bits() != 0 {
            flags = flags.with(PutFlags::RESUME);
        }
        Ok(flags)
    }
}

impl<'a> Arbitrary<'a> for PutRequest<'a> {
    /// `HASH_DECLARED` follows `hash`, as [`PutRequest::emit`] writes it; `RESUME` may come
    /// without a hash (the server must refuse that).
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let size = u64::arbitrary(u)?;
        let resume = bool::arbitrary(u)?;
        let hash = Option::<[u8; HASH_LEN]>::arbitrary(u)?;
        let mut flags = PutFlags::NONE;
        if hash.is_some() {
            flags = flags.with(PutFlags::HASH_DECLARED);
        }
        if resume {
            flags = flags.with(PutFlags::RESUME);
        }
        Ok(PutRequest {
            size,
            flags,
            hash,
            attrs: None,
            path: <&str>::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for FileKind {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(FileKind::from_u8(u8::arbitrary(u)?))
    }
}

impl<'a> Arbitrary<'a> for FileInfo {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(FileInfo {
            size: u64::arbitrary(u)?,
            mtime_ns: i64::arbitrary(u)?,
            kind: FileKind::arbitrary(u)?,
            hash: Option::<[u8; HASH_LEN]>::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for Digest {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Digest {
            hash: <[u8; HASH_LEN]>::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for PutReady {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(PutReady {
            upload_id: u64::arbitrary(u)?,
            held: u64::arbitrary(u)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the input, every value encodes, and a message that parses back is the same.
    #[test]
    fn arbitrary_messages_encode_and_parse_back() {
        let mut rng = crate::testkit::SplitMix64::new(13);
        for _ in 0..500 {
            let bytes: Vec<u8> = (0..256).map(|_| rng.next_u64() as u8).collect();
            let mut u = Unstructured::new(&bytes);
            let request = ExecRequest::arbitrary(&mut u).unwrap();
            let mut payload = vec![0; request.payload_len()];
            request.emit(&mut payload);
            if let Ok(parsed) = ExecRequest::parse(&payload) {
                assert_eq!(parsed, request);
            }
            let put = PutRequest::arbitrary(&mut u).unwrap();
            let mut payload = vec![0; put.payload_len()];
            put.emit(&mut payload);
            if let Ok(parsed) = PutRequest::parse(&payload) {
                assert_eq!(parsed, put);
            }
            let error = ErrorMessage::arbitrary(&mut u).unwrap();
            let mut payload = vec![0; error.payload_len()];
            error.emit(&mut payload);
            assert_eq!(ErrorMessage::parse(&payload).unwrap(), error);
            let frame = Frame::arbitrary(&mut u).unwrap();
            let wire = frame.to_vec();
            let decoded = crate::proto::Decoder::new(u32::MAX)
                .decode(&wire)
                .unwrap()
                .unwrap();
            assert_eq!(decoded, frame);
        }
    }
}
