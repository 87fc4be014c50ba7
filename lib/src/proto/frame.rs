//! Whole frames: the incremental [`Decoder`] and the encoder side of [`Frame`].

use super::header::{DecodeError, Flags, FrameType, HEADER_LEN, Header};

/// A frame borrowed from the buffer it was decoded from (or about to be encoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The parsed header; `header.len == payload.len()`.
    pub header: Header,
    /// The payload bytes.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// A frame around `payload`, with the length field filled in.
    ///
    /// # Panics
    /// If `payload` is longer than `u32::MAX` bytes, which no frame can carry.
    pub fn new(frame_type: FrameType, flags: Flags, stream: u32, payload: &'a [u8]) -> Frame<'a> {
        let len = u32::try_from(payload.len()).expect("a frame payload fits in u32");
        Frame {
            header: Header {
                frame_type,
                flags,
                stream,
                len,
            },
            payload,
        }
    }

    /// Header plus payload length: the bytes this frame occupies on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Appends the encoded frame (header, then payload) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(self.payload);
    }

    /// The encoded frame as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.wire_len());
        self.encode_into(&mut out);
        out
    }
}

/// Splits a byte stream into frames. Sans-IO: it never reads a socket or the clock, and it
/// keeps no state between calls, so the caller owns the buffer and decides when to call.
///
/// Call [`Decoder::decode`] on the unconsumed bytes after each read; on `Ok(Some(frame))`
/// consume `frame.wire_len()` bytes and call again; on `Ok(None)` read more bytes first. Any
/// split of a valid stream yields the same frames, and an oversize length is rejected from the
/// 12 header bytes alone, so a reader never grows a buffer for a frame it will refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoder {
    max_payload_len: u32,
}

impl Decoder {
    /// A decoder that rejects frames whose payload is longer than `max_payload_len` bytes.
    pub const fn new(max_payload_len: u32) -> Decoder {
        Decoder { max_payload_len }
    }

    /// The largest payload this decoder accepts.
    pub const fn max_payload_len(&self) -> u32 {
        self.max_payload_len
    }

    /// Decodes the frame at the start of `bytes`.
    ///
    /// - `Ok(Some(frame))`: a complete frame; it occupies `frame.wire_len()` bytes of `bytes`.
    /// - `Ok(None)`: `bytes` is a strict prefix of a frame (possibly empty): read more. Not an
    ///   error, whatever the split.
    /// - `Err(_)`: the header is invalid; the stream cannot be resynchronised.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<Option<Frame<'a>>, DecodeError> {
        let Some(header) = Header::parse(bytes, self.max_payload_len)? else {
            return Ok(None);
        };
        let Some(payload) = bytes.get(HEADER_LEN..header.wire_len()) else {
            return Ok(None);
        };
        Ok(Some(Frame { header, payload }))
    }

    /// An iterator over the complete frames at the start of `bytes`. After it returns `None`
    /// (or an error), [`Frames::consumed`] says how many bytes the frames used; the rest is an
    /// incomplete frame to keep for the next read.
    pub fn frames<'a>(&self, bytes: &'a [u8]) -> Frames<'a> {
        Frames {
            decoder: *self,
            bytes,
            consumed: 0,
            failed: false,
        }
    }
}

/// Iterator returned by [`Decoder::frames`].
#[derive(Debug)]
pub struct Frames<'a> {
    decoder: Decoder,
    bytes: &'a [u8],
    consumed: usize,
    failed: bool,
}

impl<'a> Frames<'a> {
    /// Bytes occupied by the frames returned so far.
    pub fn consumed(&self) -> usize {
        self.consumed
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.decoder.decode(&self.bytes[self.consumed..]) {
            Ok(Some(frame)) => {
                self.consumed += frame.wire_len();
                Some(Ok(frame))
            }
            Ok(None) => None,
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::header::field;

    const MAX: u32 = 1 << 20;
    const DECODER: Decoder = Decoder::new(MAX);

    fn echo(stream: u32, payload: &[u8]) -> Vec<u8> {
        Frame::new(FrameType::EchoRequest, Flags::END_STREAM, stream, payload).to_vec()
    }

    /// A decoded frame reduced to (stream id, payload).
    type Decoded = Vec<(u32, Vec<u8>)>;

    /// Three frames of different shapes, back to back: empty, short, and one whose payload
    /// bytes look like a header.
    fn sample_stream() -> (Vec<u8>, Decoded) {
        let frames: Decoded = vec![(1, vec![]), (2, b"hello".to_vec()), (3, echo(9, b"inner"))];
        let mut stream = Vec::new();
        for (id, payload) in &frames {
            stream.extend_from_slice(&echo(*id, payload));
        }
        (stream, frames)
    }

    /// Decodes `stream` delivered in the given pieces, the way a connection does: append each
    /// piece to a buffer, take every complete frame, keep the rest.
    fn decode_in_pieces<'p>(
        pieces: impl IntoIterator<Item = &'p [u8]>,
    ) -> Result<(Decoded, usize), DecodeError> {
        let mut buffer = Vec::new();
        let mut out = Vec::new();
        for piece in pieces {
            buffer.extend_from_slice(piece);
            let mut frames = DECODER.frames(&buffer);
            for frame in frames.by_ref() {
                let frame = frame?;
                out.push((frame.header.stream, frame.payload.to_vec()));
            }
            let consumed = frames.consumed();
            buffer.drain(..consumed);
        }
        Ok((out, buffer.len()))
    }

    // === Incomplete input ===

    #[test]
    fn decode_every_strict_prefix_needs_more() {
        let frame = echo(5, b"payload");
        for len in 0..frame.len() {
            assert_eq!(
                DECODER.decode(&frame[..len]),
                Ok(None),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn decode_empty_payload_is_complete_at_header_len() {
        let frame = echo(1, b"");
        assert_eq!(frame.len(), HEADER_LEN);
        let decoded = DECODER.decode(&frame).unwrap().unwrap();
        assert_eq!(decoded.payload, b"");
        assert_eq!(decoded.wire_len(), HEADER_LEN);
    }

    // === Splits ===

    #[test]
    fn decode_every_split_point_gives_same_frames() {
        let (stream, expected) = sample_stream();
        for split in 0..=stream.len() {
            let (first, second) = stream.split_at(split);
            assert_eq!(
                decode_in_pieces([first, second]),
                Ok((expected.clone(), 0)),
                "split {split}"
            );
        }
    }

    #[test]
    fn decode_every_pair_of_split_points_gives_same_frames() {
        let (stream, expected) = sample_stream();
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let pieces = [&stream[..a], &stream[a..b], &stream[b..]];
                assert_eq!(
                    decode_in_pieces(pieces),
                    Ok((expected.clone(), 0)),
                    "splits {a},{b}"
                );
            }
        }
    }

    #[test]
    fn decode_one_byte_at_a_time_gives_same_frames() {
        let (stream, expected) = sample_stream();
        assert_eq!(decode_in_pieces(stream.chunks(1)), Ok((expected, 0)));
    }

    #[test]
    fn decode_thousand_frames_in_one_buffer() {
        let mut stream = Vec::new();
        for id in 0..1000u32 {
            stream.extend_from_slice(&echo(id, &id.to_be_bytes()));
        }
        let mut frames = DECODER.frames(&stream);
        let ids: Vec<u32> = frames.by_ref().map(|f| f.unwrap().header.stream).collect();
        assert_eq!(ids, (0..1000).collect::<Vec<_>>());
        assert_eq!(frames.consumed(), stream.len());
    }

    #[test]
    fn frames_stop_before_a_trailing_partial_frame() {
        let mut stream = echo(1, b"a");
        let partial = echo(2, b"bcd");
        stream.extend_from_slice(&partial[..partial.len() - 1]);
        let mut frames = DECODER.frames(&stream);
        assert_eq!(frames.by_ref().count(), 1);
        assert_eq!(frames.consumed(), HEADER_LEN + 1);
    }

    // === Rejection ===

    #[test]
    fn decode_rejects_oversize_from_header_alone() {
        let mut header = echo(1, b"")[..HEADER_LEN].to_vec();
        header[field::LENGTH].copy_from_slice(&u32::MAX.to_be_bytes());
        // Only the header is present: the decision needs no body and reserves nothing.
        assert_eq!(
            DECODER.decode(&header),
            Err(DecodeError::TooLarge {
                len: u32::MAX,
                max: MAX
            })
        );
    }

    #[test]
    fn decode_rejects_garbage_with_typed_error() {
        let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            DECODER.decode(garbage),
            Err(DecodeError::UnknownFlags(b'E'))
        );
        let zeros_then_junk = [0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            DECODER.decode(&zeros_then_junk),
            Err(DecodeError::ReservedNonZero(0xffff))
        );
    }

    #[test]
    fn frames_stop_after_an_error() {
        let mut stream = echo(1, b"ok");
        stream.extend_from_slice(&[0x10, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        stream.extend_from_slice(&echo(2, b"never"));
        let results: Vec<_> = DECODER.frames(&stream).collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert_eq!(results[1], Err(DecodeError::UnknownFlags(0xff)));
    }

    // === Encoding ===

    #[test]
    fn encode_into_appends_after_existing_bytes() {
        let mut out = vec![0xa5; 3];
        Frame::new(FrameType::EchoReply, Flags::END_STREAM, 0x0102_0304, b"xy")
            .encode_into(&mut out);
        assert_eq!(
            out,
            [
                0xa5, 0xa5, 0xa5, 0x11, 0x01, 0, 0, 1, 2, 3, 4, 0, 0, 0, 2, b'x', b'y'
            ]
        );
    }
}
