//! The TLS 1.3 record layer after the handshake (RFC 8446 §5): one direction's key, IV and
//! sequence number, sealing a record into a caller's buffer and opening one in place, with
//! `ring::aead`. Nothing here allocates, which is why it exists: rustls' own record layer
//! returns every encrypted record in a fresh `Vec` (see the module docs of `tls.rs`).
//!
//! A record on the wire (§5.2):
//! ```text
//!  0      1      3        5                           5+len
//!  +------+------+--------+---------------------------+
//!  | 0x17 | 0303 | len:16 | AEAD(content ‖ type ‖ 0*) ‖ tag(16) |
//!  +------+------+--------+---------------------------+
//! ```
//! The header is the additional data; the nonce is the IV XOR the 64-bit sequence number
//! (§5.3), which starts where rustls left it and goes back to 0 at each key update.

use std::ops::Range;

use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce};
use ring::aead::{NONCE_LEN, UnboundKey};
use rustls::ConnectionTrafficSecrets;

/// Bytes of a record header: type, legacy version, length.
pub(crate) const HEADER_LEN: usize = 5;
/// The outer type of every protected record, and the inner type of application data.
pub(crate) const APPLICATION_DATA: u8 = 23;
/// Inner type of an alert (close_notify is one).
pub(crate) const ALERT: u8 = 21;
/// Inner type of a post-handshake message (KeyUpdate, here).
pub(crate) const HANDSHAKE: u8 = 22;
/// Most plaintext one record carries (2^14, §5.1).
pub(crate) const MAX_PLAINTEXT: usize = 1 << 14;
/// Most bytes after the header a protected record may have (2^14 + 256, §5.2): decided from the
/// header alone, before any of the body is waited for.
pub(crate) const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 256;
/// The AEAD tag every suite here appends.
const TAG_LEN: usize = 16;
/// What sealing adds to the plaintext: the header, the inner type byte, the tag.
pub(crate) const SEAL_OVERHEAD: usize = HEADER_LEN + 1 + TAG_LEN;

/// Why a record could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordError {
    /// The header's type is not application_data, or its version is not 0x0303.
    BadHeader,
    /// The header announces more than 2^14 + 256 bytes, or the decrypted inner plaintext is
    /// longer than 2^14 + 1 (§5.4): record_overflow.
    TooLong,
    /// The tag did not verify (wrong key, or the bytes were changed).
    Decrypt,
    /// The inner plaintext is all padding: no content type.
    NoContentType,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RecordError::BadHeader => "a TLS record with an unexpected type or version",
            RecordError::TooLong => "a TLS record over the length limit (record_overflow)",
            RecordError::Decrypt => "a TLS record that does not decrypt (bad_record_mac)",
            RecordError::NoContentType => "a TLS record with no content type",
        })
    }
}

impl RecordError {
    /// The alert description this side sends for it (RFC 8446 §5.2, §6.2).
    pub(crate) fn alert(self) -> u8 {
        match self {
            RecordError::BadHeader | RecordError::NoContentType => UNEXPECTED_MESSAGE,
            RecordError::TooLong => RECORD_OVERFLOW,
            RecordError::Decrypt => BAD_RECORD_MAC,
        }
    }
}

/// Alert descriptions (RFC 8446 §6) this side sends.
pub(crate) const UNEXPECTED_MESSAGE: u8 = 10;
pub(crate) const BAD_RECORD_MAC: u8 = 20;
pub(crate) const RECORD_OVERFLOW: u8 = 22;
pub(crate) const ILLEGAL_PARAMETER: u8 = 47;
pub(crate) const DECODE_ERROR: u8 = 50;
pub(crate) const INTERNAL_ERROR: u8 = 80;

/// The length of the record whose header starts `bytes`, header included, once the header is
/// there: `Ok(None)` means "need more", an error is fatal and decided from the header alone.
pub(crate) fn record_len(bytes: &[u8]) -> Result<Option<usize>, RecordError> {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if len > MAX_CIPHERTEXT {
        return Err(RecordError::TooLong);
    }
    Ok(Some(HEADER_LEN + len))
}

/// One direction's protection: the key, the IV, and the next sequence number.
pub(crate) struct Protection {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key material in logs.
        f.debug_struct("Protection")
            .field("algorithm", self.key.algorithm())
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Protection {
    /// The protection rustls extracted (or computed at a key update), from sequence `seq`.
    pub(crate) fn new(seq: u64, secrets: &ConnectionTrafficSecrets) -> Result<Protection, String> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err("the negotiated cipher suite has no record layer here".into()),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| "the traffic key has the wrong length".to_string())?;
        let iv: [u8; NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| "the traffic IV has the wrong length".to_string())?;
        Ok(Protection {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// Records protected so far under this key.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The per-record nonce (§5.3), and the sequence number moved on: a nonce is never used
    /// twice under one key.
    fn next_nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (byte, seq) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *byte ^= seq;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }

    /// Seals `content` of inner type `content_type` as one record at the start of `out`,
    /// which must hold `content.len() + SEAL_OVERHEAD` bytes; returns the record's length.
    /// `content` is at most [`MAX_PLAINTEXT`].
    pub(crate) fn seal(&mut self, content_type: u8, content: &[u8], out: &mut [u8]) -> usize {
        out[HEADER_LEN..HEADER_LEN + content.len()].copy_from_slice(content);
        self.seal_in_place(content_type, content.len(), out)
    }

    /// Seals the `content_len` bytes of content already at `out[HEADER_LEN..]` as one record
    /// of inner type `content_type`, in place: the header goes in front of them, the type byte
    /// and the tag behind. `out` must hold `content_len + SEAL_OVERHEAD` bytes; returns the
    /// record's length. `content_len` is at most [`MAX_PLAINTEXT`]. What a file's bytes are
    /// read straight into (`TlsSession::send_file`), so that nothing is copied.
    pub(crate) fn seal_in_place(
        &mut self,
        content_type: u8,
        content_len: usize,
        out: &mut [u8],
    ) -> usize {
        debug_assert!(content_len <= MAX_PLAINTEXT);
        let inner = content_len + 1;
        let body = inner + TAG_LEN;
        let total = HEADER_LEN + body;
        let [hi, lo] = (body as u16).to_be_bytes();
        let header = [APPLICATION_DATA, 0x03, 0x03, hi, lo];
        out[..HEADER_LEN].copy_from_slice(&header);
        out[HEADER_LEN + content_len] = content_type;
        let nonce = self.next_nonce();
        let (plain, tag) = out[HEADER_LEN..total].split_at_mut(inner);
        // Sealing fails only for a plaintext beyond the algorithm's limit (64 GiB for AES-GCM),
        // never for a record; the key is then unusable and so is the connection, so the tag
        // is left zeroed and the peer refuses the record.
        if let Ok(sealed) = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), plain)
        {
            tag.copy_from_slice(sealed.as_ref());
        }
        total
    }

    /// Opens the whole record `record` (header included) in place: returns its inner content
    /// type and where its content now lies in `record`, padding and type byte removed.
    pub(crate) fn open(&mut self, record: &mut [u8]) -> Result<(u8, Range<usize>), RecordError> {
        let (header, body) = record.split_at_mut(HEADER_LEN);
        if header[0] != APPLICATION_DATA || header[1..3] != [0x03, 0x03] {
            return Err(RecordError::BadHeader);
        }
        if body.len() > MAX_CIPHERTEXT {
            return Err(RecordError::TooLong);
        }
        let aad = [header[0], header[1], header[2], header[3], header[4]];
        let nonce = self.next_nonce();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), body)
            .map_err(|_| RecordError::Decrypt)?;
        // §5.4: a TLSInnerPlaintext over 2^14 + 1 bytes is record_overflow, although the
        // ciphertext limit (2^14 + 256, for the tag and any expansion) let it through.
        if plain.len() > MAX_PLAINTEXT + 1 {
            return Err(RecordError::TooLong);
        }
        // TLSInnerPlaintext: content ‖ type ‖ zero padding; the type is the last non-zero byte.
        let typed = plain
            .iter()
            .rposition(|&byte| byte != 0)
            .ok_or(RecordError::NoContentType)?;
        Ok((plain[typed], HEADER_LEN..HEADER_LEN + typed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    fn secrets(byte: u8) -> ConnectionTrafficSecrets {
        ConnectionTrafficSecrets::Aes256Gcm {
            key: AeadKey::from([byte; 32]),
            iv: Iv::from([byte; 12]),
        }
    }

    fn pair() -> (Protection, Protection) {
        (
            Protection::new(7, &secrets(1)).unwrap(),
            Protection::new(7, &secrets(1)).unwrap(),
        )
    }

    #[test]
    fn a_sealed_record_opens_to_its_content_and_type() {
        let (mut tx, mut rx) = pair();
        let mut out = [0xa5; 64];
        let len = tx.seal(APPLICATION_DATA, b"hello", &mut out);
        assert_eq!(len, 5 + SEAL_OVERHEAD);
        assert_eq!(out[..5], [23, 3, 3, 0, 22]);
        assert_eq!(record_len(&out[..len]), Ok(Some(len)));
        let (kind, content) = rx.open(&mut out[..len]).unwrap();
        assert_eq!((kind, &out[content]), (APPLICATION_DATA, &b"hello"[..]));
        assert_eq!((tx.seq(), rx.seq()), (8, 8));
    }

    #[test]
    fn open_rejects_a_changed_byte_a_replay_and_the_wrong_key() {
        let (mut tx, mut rx) = pair();
        let mut out = [0; 64];
        let len = tx.seal(APPLICATION_DATA, b"hello", &mut out);
        let mut changed = out;
        changed[7] ^= 1;
        assert_eq!(rx.open(&mut changed[..len]), Err(RecordError::Decrypt));
        // The failed open spent sequence 7: the genuine record no longer opens either, as a
        // connection that saw a bad record is closed anyway.
        let mut replay = out;
        assert_eq!(rx.open(&mut replay[..len]), Err(RecordError::Decrypt));
        let mut other = Protection::new(7, &secrets(2)).unwrap();
        assert_eq!(other.open(&mut out[..len]), Err(RecordError::Decrypt));
    }

    #[test]
    fn padding_is_stripped_and_all_padding_is_refused() {
        // A padded inner plaintext "hi" 0x17 00 00 00: sealed as the content "hi" 0x17 00 00
        // with a "type" of 0, which is then one more byte of padding.
        let mut tx = Protection::new(0, &secrets(3)).unwrap();
        let mut rx = Protection::new(0, &secrets(3)).unwrap();
        let mut out = [0; 64];
        let len = tx.seal(0, &[b'h', b'i', APPLICATION_DATA, 0, 0], &mut out);
        let (kind, content) = rx.open(&mut out[..len]).unwrap();
        assert_eq!((kind, &out[content]), (APPLICATION_DATA, &b"hi"[..]));
        let len = tx.seal(0, &[0, 0], &mut out);
        assert_eq!(rx.open(&mut out[..len]), Err(RecordError::NoContentType));
    }

    #[test]
    fn record_len_needs_a_header_and_refuses_oversize_from_it_alone() {
        assert_eq!(record_len(&[23, 3, 3, 0]), Ok(None));
        assert_eq!(record_len(&[23, 3, 3, 0x41, 0x00]), Ok(Some(5 + 0x4100)));
        assert_eq!(
            record_len(&[23, 3, 3, 0x41, 0x01]),
            Err(RecordError::TooLong)
        );
    }

    /// A record around the inner plaintext `inner` (content, type and padding as given), sealed
    /// with the key of `secrets(byte)` at sequence `seq` by ring directly: what a peer that
    /// ignores the limits could send.
    fn seal_raw(byte: u8, seq: u64, inner: &[u8]) -> Vec<u8> {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[byte; 32]).unwrap());
        let mut nonce = [byte; NONCE_LEN];
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        let body = inner.len() + TAG_LEN;
        let [hi, lo] = u16::try_from(body).unwrap().to_be_bytes();
        let header = [APPLICATION_DATA, 3, 3, hi, lo];
        let mut record = header.to_vec();
        let mut sealed = inner.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut sealed,
        )
        .unwrap();
        record.extend_from_slice(&sealed);
        record
    }

    #[test]
    fn the_nonce_is_the_iv_xor_the_sequence_and_the_header_is_the_additional_data() {
        // A record sealed independently at sequence 7 opens; one at sequence 8 does not.
        let mut rx = Protection::new(7, &secrets(1)).unwrap();
        let mut record = seal_raw(1, 7, b"seven\x17");
        let (kind, content) = rx.open(&mut record).unwrap();
        assert_eq!((kind, &record[content]), (APPLICATION_DATA, &b"seven"[..]));
        let mut rx = Protection::new(7, &secrets(1)).unwrap();
        assert_eq!(
            rx.open(&mut seal_raw(1, 8, b"eight\x17")),
            Err(RecordError::Decrypt)
        );
        // The length in the header is authenticated: a record re-headed with another legacy
        // version is refused before decryption, and so is one whose additional data differs.
        let mut rx = Protection::new(7, &secrets(1)).unwrap();
        let mut record = seal_raw(1, 7, b"seven\x17");
        record[2] = 1;
        assert_eq!(rx.open(&mut record), Err(RecordError::BadHeader));
    }

    #[test]
    fn an_inner_plaintext_over_two_to_the_fourteen_plus_one_is_record_overflow() {
        // 2^14 bytes of content and the type: the largest allowed.
        let mut inner = vec![b'a'; MAX_PLAINTEXT];
        inner.push(APPLICATION_DATA);
        let mut rx = Protection::new(0, &secrets(4)).unwrap();
        let mut record = seal_raw(4, 0, &inner);
        let (kind, content) = rx.open(&mut record).unwrap();
        assert_eq!((kind, content.len()), (APPLICATION_DATA, MAX_PLAINTEXT));
        // One byte of padding more: within the ciphertext limit, over the plaintext one.
        inner.push(0);
        let mut record = seal_raw(4, 1, &inner);
        assert!(record.len() - HEADER_LEN <= MAX_CIPHERTEXT);
        assert_eq!(rx.open(&mut record), Err(RecordError::TooLong));
        assert_eq!(RecordError::TooLong.alert(), RECORD_OVERFLOW);
        assert_eq!(RecordError::Decrypt.alert(), BAD_RECORD_MAC);
    }

    #[test]
    fn the_header_type_and_version_are_checked() {
        let (mut tx, mut rx) = pair();
        let mut out = [0; 64];
        let len = tx.seal(APPLICATION_DATA, b"x", &mut out);
        out[0] = 22;
        assert_eq!(rx.open(&mut out[..len]), Err(RecordError::BadHeader));
    }
}
