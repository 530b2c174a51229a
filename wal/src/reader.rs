//! Reading records back, from any LSN up to what was durable when the reader
//! was made.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;

use crate::format::{self, RecordKind, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::segment::read_full;
use crate::{Lsn, ReadError};

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its LSN.
    pub lsn: Lsn,
    /// Its kind.
    pub kind: RecordKind,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// A segment as a reader sees it: its durable length when the reader was made.
#[derive(Debug, Clone)]
pub(crate) struct SegmentView {
    pub path: PathBuf,
    pub durable_len: u64,
}

/// Iterator over records with LSN >= the start, in LSN order.
pub struct Reader {
    segments: std::vec::IntoIter<SegmentView>,
    current: Option<(BufReader<File>, PathBuf, u64, u64)>, // reader, path, offset, end
    from: Lsn,
    upto: Lsn,
    max_record_bytes: u64,
    failed: bool,
}

impl Reader {
    pub(crate) fn new(segments: Vec<SegmentView>, from: Lsn, upto: Lsn, max_record_bytes: u64) -> Self {
        Self { segments: segments.into_iter(), current: None, from, upto, max_record_bytes, failed: false }
    }

    fn next_record(&mut self) -> Result<Option<Record>, ReadError> {
        loop {
            if self.current.is_none() {
                let Some(seg) = self.segments.next() else { return Ok(None) };
                let io = |op| {
                    let path = seg.path.clone();
                    move |source| ReadError::Io { op, path, source }
                };
                let mut f = File::open(&seg.path).map_err(io("opening"))?;
                f.seek(SeekFrom::Start(SEGMENT_HEADER_BYTES as u64)).map_err(io("seeking"))?;
                let r = BufReader::with_capacity(1 << 20, f);
                self.current = Some((r, seg.path.clone(), SEGMENT_HEADER_BYTES as u64, seg.durable_len));
            }
            let (r, path, offset, end) = self.current.as_mut().expect("set above");
            if *offset + FRAME_HEADER_BYTES as u64 > *end {
                self.current = None;
                continue;
            }
            let corrupt =
                |reason: &str| ReadError::Corrupt { path: path.clone(), offset: *offset, reason: reason.into() };
            let mut fh = [0u8; FRAME_HEADER_BYTES];
            let got =
                read_full(r, &mut fh).map_err(|source| ReadError::Io { op: "reading", path: path.clone(), source })?;
            if got < FRAME_HEADER_BYTES {
                return Err(corrupt("frame header cut short"));
            }
            let h = format::decode_frame_header(&fh);
            if u64::from(h.payload_len) > self.max_record_bytes {
                return Err(corrupt("length over max_record_bytes"));
            }
            let frame_end = *offset + format::frame_len(h.payload_len as usize) as u64;
            if frame_end > *end {
                return Err(corrupt("frame runs past the durable end"));
            }
            if h.lsn >= self.upto {
                return Ok(None);
            }
            if h.lsn < self.from {
                // Skip without reading the payload into memory.
                r.seek_relative(i64::from(h.payload_len)).map_err(|source| ReadError::Io {
                    op: "seeking",
                    path: path.clone(),
                    source,
                })?;
                *offset = frame_end;
                continue;
            }
            let mut payload = vec![0u8; h.payload_len as usize];
            r.read_exact(&mut payload).map_err(|source| ReadError::Io { op: "reading", path: path.clone(), source })?;
            if !format::frame_checksum_ok(&fh, &payload) {
                return Err(corrupt("checksum mismatch"));
            }
            *offset = frame_end;
            return Ok(Some(Record { lsn: h.lsn, kind: h.kind, payload }));
        }
    }
}

impl Iterator for Reader {
    type Item = Result<Record, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}
