//! Segment files: naming, scanning, and the recovery of one file at open.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::format::{self, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::Lsn;

/// Suffix of live segment files.
pub const SEGMENT_SUFFIX: &str = ".wal";
/// Marker inserted in the name of segments moved aside after corruption.
pub const CORRUPT_MARKER: &str = ".corrupt-";

/// The file name of the segment starting at `first_lsn`.
pub fn segment_file_name(first_lsn: Lsn) -> String {
    format!("{:020}{SEGMENT_SUFFIX}", first_lsn.get())
}

/// The first LSN encoded in a live segment's file name.
pub fn parse_segment_file_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Lsn::new)
}

/// How a scan ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The tail of the file is an incomplete or unsynced write (a crash during
    /// an append): everything before `offset` is intact, nothing after it was
    /// ever acknowledged.
    TornTail {
        /// Where the valid prefix ends.
        offset: u64,
    },
    /// A frame inside the file fails its checks with valid-looking data after
    /// it: real corruption.
    Corrupt {
        /// Offset of the damaged frame (or 0 for the header).
        offset: u64,
        /// Which check failed.
        reason: String,
    },
}

/// The result of scanning one segment file.
#[derive(Debug, Clone)]
pub struct Scan {
    /// First LSN from the header (or the file name if the header is damaged).
    pub first_lsn: Lsn,
    /// Whether the header is valid.
    pub header_ok: bool,
    /// Offset just after the last valid frame.
    pub valid_end: u64,
    /// Number of valid frames.
    pub records: u64,
    /// LSN of the last valid frame.
    pub last_lsn: Option<Lsn>,
    /// Length of the file.
    pub file_len: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub damage: Option<Damage>,
}

/// Scans `path`, validating every frame. `is_last` allows a torn tail.
pub fn scan(path: &Path, name_lsn: Lsn, is_last: bool, max_record_bytes: u64) -> std::io::Result<Scan> {
    let file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut scan = Scan {
        first_lsn: name_lsn,
        header_ok: false,
        valid_end: 0,
        records: 0,
        last_lsn: None,
        file_len,
        damage: None,
    };
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    let got = read_full(&mut r, &mut header)?;
    match format::decode_segment_header(&header[..got]) {
        Ok(lsn) if lsn == name_lsn => {
            scan.header_ok = true;
            scan.valid_end = SEGMENT_HEADER_BYTES as u64;
        }
        Ok(lsn) => {
            scan.damage = Some(Damage::Corrupt {
                offset: 0,
                reason: format!("header says first LSN {lsn}, file name says {name_lsn}"),
            });
            return Ok(scan);
        }
        Err(p) => {
            // A crash while creating the segment leaves a short or zero header.
            let torn = is_last && (got < SEGMENT_HEADER_BYTES || header.iter().all(|b| *b == 0));
            scan.damage = Some(if torn {
                Damage::TornTail { offset: 0 }
            } else {
                Damage::Corrupt { offset: 0, reason: format!("segment header: {p:?}") }
            });
            return Ok(scan);
        }
    }
    let mut expected = name_lsn;
    let mut payload = Vec::new();
    loop {
        let offset = scan.valid_end;
        if offset == file_len {
            return Ok(scan);
        }
        let mut fh = [0u8; FRAME_HEADER_BYTES];
        let got = read_full(&mut r, &mut fh)?;
        if got < FRAME_HEADER_BYTES {
            scan.damage = Some(classify(path, offset, is_last, true, "frame header cut short")?);
            return Ok(scan);
        }
        let h = format::decode_frame_header(&fh);
        let end = offset + format::frame_len(h.payload_len as usize) as u64;
        if u64::from(h.payload_len) > max_record_bytes {
            scan.damage = Some(classify(path, offset, is_last, end > file_len, "length over max_record_bytes")?);
            return Ok(scan);
        }
        if end > file_len {
            scan.damage = Some(classify(path, offset, is_last, true, "frame runs past end of file")?);
            return Ok(scan);
        }
        payload.resize(h.payload_len as usize, 0);
        r.read_exact(&mut payload)?;
        if !format::frame_checksum_ok(&fh, &payload) {
            scan.damage = Some(classify(path, offset, is_last, end == file_len, "checksum mismatch")?);
            return Ok(scan);
        }
        if h.lsn != expected {
            let reason = format!("LSN {} where {} was expected", h.lsn, expected);
            scan.damage = Some(classify(path, offset, is_last, false, &reason)?);
            return Ok(scan);
        }
        scan.records += 1;
        scan.last_lsn = Some(h.lsn);
        scan.valid_end = end;
        expected = expected.next();
    }
}

/// Decides whether damage at `offset` is a torn tail or corruption. In the
/// last segment, a bad frame that ends the file, or is followed only by zero
/// bytes, is what an interrupted write leaves; anything else is corruption.
fn classify(path: &Path, offset: u64, is_last: bool, at_end: bool, reason: &str) -> std::io::Result<Damage> {
    if is_last && (at_end || rest_is_zero(path, offset)?) {
        return Ok(Damage::TornTail { offset });
    }
    Ok(Damage::Corrupt { offset, reason: reason.to_string() })
}

fn rest_is_zero(path: &Path, offset: u64) -> std::io::Result<bool> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut r = BufReader::with_capacity(1 << 16, f);
    let mut buf = [0u8; 8192];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
pub(crate) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// fsyncs a directory so that creations, renames and removals in it are durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents; with `sync`, each new directory's
/// entry is made durable (its parent fsynced), so the log's directory does
/// not vanish in a power loss after its first acknowledged append (found by
/// the power-loss test: the segments were synced, the directory holding
/// them was not).
pub fn create_dir_durably(dir: &Path, sync: bool) -> std::io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    std::fs::create_dir_all(dir)?;
    if sync {
        for d in missing.iter().rev() {
            if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
    }
    Ok(())
}

/// Creates a new segment holding only its header, durably.
pub fn create_segment(dir: &Path, first_lsn: Lsn, sync: bool) -> std::io::Result<(File, PathBuf)> {
    use std::os::unix::fs::FileExt;
    let path = dir.join(segment_file_name(first_lsn));
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    let res = (|| {
        file.write_all_at(&format::encode_segment_header(first_lsn), 0)?;
        if sync {
            file.sync_all()?;
            sync_dir(dir)?;
        }
        Ok(())
    })();
    match res {
        Ok(()) => Ok((file, path)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let name = segment_file_name(Lsn::new(123));
        assert_eq!(name, "00000000000000000123.wal");
        assert_eq!(parse_segment_file_name(&name), Some(Lsn::new(123)));
        assert_eq!(parse_segment_file_name("00000000000000000123.wal.corrupt-5"), None);
        assert_eq!(parse_segment_file_name("123.wal"), None);
    }
}
