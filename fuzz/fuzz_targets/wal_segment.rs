//! A write-ahead log segment, opened as the daemon opens its log after a
//! crash: recovery must classify the damage (torn tail, corruption) and
//! never panic, and every record it then returns must be one that was
//! written, whole.
//!
//! Input: a mode byte. Odd: the rest is the segment file as it is. Even: a
//! description the target turns into a valid segment (the frames carry
//! correct checksums, so the fuzzer reaches recovery's logic instead of
//! stopping at the first CRC) and then damages: a frame count, per frame a
//! kind (u16) and a payload (length byte + bytes), then a truncation point
//! and a bit to flip (u16 each, 0 = none).
#![no_main]
use duckpond_wal::format::{encode_frame, encode_segment_header};
use duckpond_wal::{Lsn, RecordKind, Wal, WalOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut written: Vec<Vec<u8>> = Vec::new();
    let file = if mode % 2 == 1 {
        rest.to_vec()
    } else {
        let mut it = rest.iter().copied();
        let n = it.next().unwrap_or(0) % 16;
        let mut seg = encode_segment_header(Lsn::new(1)).to_vec();
        for i in 0..n {
            let kind = u16::from_le_bytes([it.next().unwrap_or(1), it.next().unwrap_or(0)]);
            let len = it.next().unwrap_or(0) as usize;
            let payload: Vec<u8> = (0..len).map(|_| it.next().unwrap_or(0)).collect();
            encode_frame(&mut seg, Lsn::new(1 + u64::from(i)), RecordKind(kind), &payload);
            written.push(payload);
        }
        let cut = u16::from_le_bytes([it.next().unwrap_or(0), it.next().unwrap_or(0)]) as usize;
        let flip = u16::from_le_bytes([it.next().unwrap_or(0), it.next().unwrap_or(0)]) as usize;
        if cut > 0 && cut < seg.len() {
            seg.truncate(cut);
        }
        if flip > 0 && flip / 8 < seg.len() {
            seg[flip / 8] ^= 1 << (flip % 8);
        }
        seg
    };
    let dir = tempfile::tempdir_in(shm()).expect("a temporary directory");
    std::fs::write(dir.path().join("00000000000000000001.wal"), &file).expect("write the segment");
    let opts = WalOptions { max_record_bytes: 1 << 20, ..WalOptions::default() };
    let Ok((wal, _report)) = Wal::open(dir.path(), opts) else { return };
    let Ok(records) = wal.read_from(Lsn::new(1)) else { return };
    for r in records {
        let Ok(r) = r else { break };
        assert!(r.payload.len() <= 1 << 20);
        if mode % 2 == 0 {
            // Recovery keeps whole records only, each as written.
            let i = (r.lsn.get() - 1) as usize;
            assert!(i < written.len(), "a record that was never written: {}", r.lsn);
            assert_eq!(r.payload, written[i], "record {} changed", r.lsn);
        }
    }
});

/// Memory-backed when the machine has it: the target writes a file per run.
fn shm() -> std::path::PathBuf {
    let p = std::path::PathBuf::from("/dev/shm");
    if p.is_dir() {
        p
    } else {
        std::env::temp_dir()
    }
}
