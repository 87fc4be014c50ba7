//! Property tests of the sans-IO codec: random frames cut at random places decode to the same
//! frames; arbitrary bytes never panic and never yield a frame the limit forbids.

use monoreactor::proto::{DecodeError, Decoder, Flags, Frame, FrameType, HEADER_LEN, Header};
use proptest::collection::vec;
use proptest::prelude::*;

const MAX: u32 = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
struct OwnedFrame {
    frame_type: u8,
    end_stream: bool,
    stream: u32,
    payload: Vec<u8>,
}

impl OwnedFrame {
    fn encode_into(&self, out: &mut Vec<u8>) {
        let flags = if self.end_stream {
            Flags::END_STREAM
        } else {
            Flags::NONE
        };
        Frame::new(
            FrameType::from_u8(self.frame_type),
            flags,
            self.stream,
            &self.payload,
        )
        .encode_into(out);
    }

    fn from_frame(frame: Frame<'_>) -> OwnedFrame {
        OwnedFrame {
            frame_type: frame.header.frame_type.to_u8(),
            end_stream: frame.header.flags.contains(Flags::END_STREAM),
            stream: frame.header.stream,
            payload: frame.payload.to_vec(),
        }
    }
}

fn frames() -> impl Strategy<Value = Vec<OwnedFrame>> {
    let frame = (
        any::<u8>(),
        any::<bool>(),
        any::<u32>(),
        vec(any::<u8>(), 0..300),
    )
        .prop_map(|(frame_type, end_stream, stream, payload)| OwnedFrame {
            frame_type,
            end_stream,
            stream,
            payload,
        });
    vec(frame, 1..20)
}

/// Feeds `wire` in pieces ending at `cuts` (sorted, deduplicated, in range), the way a
/// connection does: append, take every complete frame, keep the rest.
fn decode_in_pieces(wire: &[u8], cuts: &[usize]) -> Result<(Vec<OwnedFrame>, usize), DecodeError> {
    let decoder = Decoder::new(MAX);
    let mut buffer = Vec::new();
    let mut decoded = Vec::new();
    let mut start = 0;
    for end in cuts.iter().copied().chain(std::iter::once(wire.len())) {
        buffer.extend_from_slice(&wire[start..end]);
        start = end;
        let mut frames = decoder.frames(&buffer);
        for frame in frames.by_ref() {
            decoded.push(OwnedFrame::from_frame(frame?));
        }
        let consumed = frames.consumed();
        buffer.drain(..consumed);
    }
    Ok((decoded, buffer.len()))
}

proptest! {
    #[test]
    fn random_frames_survive_random_splits(frames in frames(), raw_cuts in vec(any::<prop::sample::Index>(), 0..40)) {
        let mut wire = Vec::new();
        for frame in &frames {
            frame.encode_into(&mut wire);
        }
        let mut cuts: Vec<usize> = raw_cuts.iter().map(|index| index.index(wire.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        prop_assert_eq!(decode_in_pieces(&wire, &cuts), Ok((frames, 0)));
    }

    #[test]
    fn every_strict_prefix_of_a_frame_needs_more(frame in frames().prop_map(|mut f| f.swap_remove(0))) {
        let mut wire = Vec::new();
        frame.encode_into(&mut wire);
        let decoder = Decoder::new(MAX);
        for len in 0..wire.len() {
            prop_assert_eq!(decoder.decode(&wire[..len]), Ok(None));
        }
        prop_assert!(decoder.decode(&wire).unwrap().is_some());
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_exceed_the_limit(bytes in vec(any::<u8>(), 0..2000)) {
        let decoder = Decoder::new(MAX);
        let mut frames = decoder.frames(&bytes);
        for result in frames.by_ref() {
            match result {
                Ok(frame) => {
                    prop_assert!(frame.header.len <= MAX);
                    prop_assert_eq!(frame.payload.len(), frame.header.len as usize);
                }
                Err(DecodeError::TooLarge { len, max }) => prop_assert!(len > max),
                Err(DecodeError::UnknownFlags(bits)) => prop_assert_ne!(bits & !Flags::KNOWN.bits(), 0),
                Err(DecodeError::ReservedNonZero(value)) => prop_assert_ne!(value, 0),
            }
        }
        prop_assert!(frames.consumed() <= bytes.len());
    }

    #[test]
    fn header_emit_then_parse_round_trips(frame_type in any::<u8>(), end in any::<bool>(), stream in any::<u32>(), len in 0..=MAX) {
        let flags = if end { Flags::END_STREAM } else { Flags::NONE };
        let header = Header { frame_type: FrameType::from_u8(frame_type), flags, stream, len };
        let mut out = [0xa5; HEADER_LEN + 1];
        header.emit(&mut out);
        prop_assert_eq!(out[HEADER_LEN], 0xa5);
        prop_assert_eq!(Header::parse(&out, MAX), Ok(Some(header)));
    }

    #[test]
    fn oversize_lengths_are_refused_from_the_header_alone(len in (MAX + 1)..=u32::MAX) {
        let header = Header { frame_type: FrameType::EchoRequest, flags: Flags::NONE, stream: 1, len };
        let bytes = header.to_bytes();
        prop_assert_eq!(Decoder::new(MAX).decode(&bytes), Err(DecodeError::TooLarge { len, max: MAX }));
    }
}
