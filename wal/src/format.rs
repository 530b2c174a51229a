//! On-disk format: segment header and record frame, pure encode/decode so
//! framing is tested without a disk.
//!
//! Segment file `<first lsn, 20 digits>.wal`:
//!
//! ```text
//! header (32 bytes): magic "DPWAL001" | first_lsn u64 | reserved [0; 12] | crc32c u32 (of the 28 bytes before)
//! frame*:            crc32c u32 | payload_len u32 | lsn u64 | kind u16 | flags u16 | reserved u32 | payload
//! ```
//!
//! All integers are little-endian. A frame's CRC32C covers everything after
//! the CRC field (header rest and payload), so a flipped bit anywhere in the
//! frame, a torn payload, or a length pointing past the end is detected.

use crate::Lsn;

/// Identifies a DuckPond WAL segment, format version 1.
pub const MAGIC: [u8; 8] = *b"DPWAL001";
/// Size of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Size of a frame header (before the payload).
pub const FRAME_HEADER_BYTES: usize = 24;

/// What a record carries; the WAL does not interpret it (the `schema` crate does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKind(pub u16);

/// Encodes a segment header for a segment whose first record is `first_lsn`.
pub fn encode_segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[..8].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&first_lsn.get().to_le_bytes());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Fewer bytes than a header.
    Short,
    /// Not a DuckPond WAL segment, or another format version.
    BadMagic,
    /// The header's checksum does not match.
    BadChecksum,
}

/// Decodes a segment header, returning its first LSN.
pub fn decode_segment_header(b: &[u8]) -> Result<Lsn, HeaderProblem> {
    if b.len() < SEGMENT_HEADER_BYTES {
        return Err(HeaderProblem::Short);
    }
    if b[..8] != MAGIC {
        return Err(HeaderProblem::BadMagic);
    }
    let stored = u32::from_le_bytes(b[28..32].try_into().expect("4 bytes"));
    if crc32c::crc32c(&b[..28]) != stored {
        return Err(HeaderProblem::BadChecksum);
    }
    Ok(Lsn::new(u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"))))
}

/// Appends one frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, lsn: Lsn, kind: RecordKind, payload: &[u8]) {
    encode_frame_header(out, lsn, kind, payload);
    out.extend_from_slice(payload);
}

/// Appends only the 24-byte header of `payload`'s frame to `out` (its CRC
/// covers the payload), so the payload can be written from where it is.
pub fn encode_frame_header(out: &mut Vec<u8>, lsn: Lsn, kind: RecordKind, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload length checked against max_record_bytes");
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]); // crc, filled below
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&lsn.get().to_le_bytes());
    out.extend_from_slice(&kind.0.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start + 4..]), payload);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Encoded size of a frame with `payload_len` bytes of payload.
pub fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER_BYTES + payload_len
}

/// The fixed part of a frame, read before the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Stored checksum.
    pub crc: u32,
    /// Payload length.
    pub payload_len: u32,
    /// Record LSN.
    pub lsn: Lsn,
    /// Record kind.
    pub kind: RecordKind,
}

/// Parses a frame header (no checksum verification: that needs the payload).
pub fn decode_frame_header(b: &[u8; FRAME_HEADER_BYTES]) -> FrameHeader {
    FrameHeader {
        crc: u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
        payload_len: u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")),
        lsn: Lsn::new(u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"))),
        kind: RecordKind(u16::from_le_bytes(b[16..18].try_into().expect("2 bytes"))),
    }
}

/// Whether the header bytes and payload match the stored checksum.
pub fn frame_checksum_ok(header: &[u8; FRAME_HEADER_BYTES], payload: &[u8]) -> bool {
    let stored = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let mut crc = crc32c::crc32c(&header[4..]);
    crc = crc32c::crc32c_append(crc, payload);
    crc == stored
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = encode_segment_header(Lsn::new(42));
        assert_eq!(decode_segment_header(&h), Ok(Lsn::new(42)));
        let mut bad = h;
        bad[9] ^= 1;
        assert_eq!(decode_segment_header(&bad), Err(HeaderProblem::BadChecksum));
        bad = h;
        bad[0] = b'X';
        assert_eq!(decode_segment_header(&bad), Err(HeaderProblem::BadMagic));
        assert_eq!(decode_segment_header(&h[..10]), Err(HeaderProblem::Short));
    }

    #[test]
    fn frame_round_trips_and_every_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, Lsn::new(7), RecordKind(3), b"hello wal");
        assert_eq!(buf.len(), frame_len(9));
        let header: [u8; FRAME_HEADER_BYTES] = buf[..FRAME_HEADER_BYTES].try_into().unwrap();
        let h = decode_frame_header(&header);
        assert_eq!((h.lsn, h.kind, h.payload_len), (Lsn::new(7), RecordKind(3), 9));
        assert!(frame_checksum_ok(&header, &buf[FRAME_HEADER_BYTES..]));
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let header: [u8; FRAME_HEADER_BYTES] = b[..FRAME_HEADER_BYTES].try_into().unwrap();
            assert!(!frame_checksum_ok(&header, &b[FRAME_HEADER_BYTES..]), "bit {bit} undetected");
        }
    }
}
