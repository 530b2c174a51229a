//! Unit and model-based tests of the log. Segment sizes are tiny so rotation,
//! truncation and multi-segment recovery happen constantly.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use proptest::prelude::*;

use crate::format::{self, FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use crate::segment;
use crate::*;

const KIND: RecordKind = RecordKind(1);

fn small_opts() -> WalOptions {
    WalOptions { segment_size_bytes: 4096, max_record_bytes: 2048, ..Default::default() }
}

fn payload(lsn_hint: u64, len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (lsn_hint as usize * 31 + i) as u8).collect::<Vec<u8>>())
}

fn append(wal: &Wal, p: Bytes) -> Lsn {
    wal.append_batch_blocking(vec![(KIND, p)]).unwrap().first
}

fn read_all(wal: &Wal, from: Lsn) -> Vec<(Lsn, Vec<u8>)> {
    wal.read_from(from).unwrap().map(|r| r.map(|r| (r.lsn, r.payload)).unwrap()).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).and_then(segment::parse_segment_file_name).is_some())
        .collect();
    v.sort();
    v
}

/// Frame start offsets of a segment file (valid frames only).
fn frame_offsets(path: &Path) -> Vec<u64> {
    let b = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut off = SEGMENT_HEADER_BYTES;
    while off + FRAME_HEADER_BYTES <= b.len() {
        let h = format::decode_frame_header(b[off..off + FRAME_HEADER_BYTES].try_into().unwrap());
        out.push(off as u64);
        off += format::frame_len(h.payload_len as usize);
    }
    out
}

/// Appended records read back in order with consecutive LSNs, before and
/// after reopening; the next LSN continues.
#[test]
fn append_read_reopen() {
    let d = tempfile::tempdir().unwrap();
    let (wal, report) = Wal::open(d.path(), small_opts()).unwrap();
    assert_eq!(report.next_lsn, Lsn::FIRST);
    let mut expected = Vec::new();
    for i in 0..200u64 {
        let p = payload(i, (i as usize * 7) % 300);
        let lsn = append(&wal, p.clone());
        assert_eq!(lsn, Lsn::new(i + 1));
        expected.push((lsn, p.to_vec()));
    }
    assert_eq!(read_all(&wal, Lsn::FIRST), expected);
    assert!(segment_files(d.path()).len() > 3, "small segments rotate");
    drop(wal);
    let (wal, report) = Wal::open(d.path(), small_opts()).unwrap();
    assert_eq!(report.records, 200);
    assert_eq!(report.torn_tail_bytes, 0);
    assert!(report.corrupt.is_empty());
    assert_eq!(read_all(&wal, Lsn::FIRST), expected);
    assert_eq!(append(&wal, payload(1, 3)), Lsn::new(201));
    assert_eq!(read_all(&wal, Lsn::new(150)).len(), 52);
}

/// A batch gets consecutive LSNs.
#[test]
fn batch_gets_consecutive_lsns() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    append(&wal, payload(0, 1));
    let r = wal.append_batch_blocking((0..5).map(|i| (KIND, payload(i, 10))).collect()).unwrap();
    assert_eq!((r.first, r.last), (Lsn::new(2), Lsn::new(6)));
    assert!(matches!(wal.append_batch_blocking(vec![]), Err(AppendError::Empty)));
}

/// Appends queued by one caller without waiting get increasing LSNs in the
/// order they were queued, and each resolves only once durable: after all
/// resolve, the log (also after reopening) holds exactly them, in that order,
/// across segment rotations. Queued appends from other threads interleave
/// but never reorder one caller's records.
#[test]
fn queued_appends_keep_their_callers_order() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    let wal = std::sync::Arc::new(wal);
    let callers: Vec<_> = (0..4u64)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let pending: Vec<_> = (0..300u64)
                    .map(|i| {
                        let p = payload(t * 1000 + i, 1 + (i as usize * 13) % 200);
                        (wal.enqueue(vec![(KIND, p.clone())]).unwrap(), p)
                    })
                    .collect();
                pending
                    .into_iter()
                    .map(|(pa, p)| (pa.durable_blocking().unwrap().first, p.to_vec()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in callers {
        let acked = c.join().unwrap();
        assert!(acked.windows(2).all(|w| w[0].0 < w[1].0), "one caller's LSNs follow its queue order");
        all.extend(acked);
    }
    all.sort();
    assert_eq!(all.len(), 1200);
    assert!(segment_files(d.path()).len() > 3, "queued appends cross segment rotations");
    assert_eq!(read_all(&wal, Lsn::FIRST), all);
    let wal = std::sync::Arc::into_inner(wal).unwrap();
    drop(wal);
    let (wal, report) = Wal::open(d.path(), small_opts()).unwrap();
    assert_eq!(report.records, 1200);
    assert_eq!(read_all(&wal, Lsn::FIRST), all);
}

/// Truncation removes whole segments below the LSN, frees their bytes, never
/// the active segment, and reading before the oldest retained LSN is an error.
#[test]
fn truncate_before_removes_whole_segments() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    for i in 0..100 {
        append(&wal, payload(i, 200));
    }
    let before = wal.uncompacted_bytes();
    let segs = segment_files(d.path()).len();
    let out = wal.truncate_before(Lsn::new(60)).unwrap();
    assert!(out.segments_removed > 0);
    assert_eq!(wal.uncompacted_bytes(), before - out.bytes_removed);
    assert_eq!(segment_files(d.path()).len(), segs - out.segments_removed);
    let rest = read_all(&wal, Lsn::new(60));
    assert_eq!(rest.first().unwrap().0, Lsn::new(60));
    assert_eq!(rest.len(), 41);
    assert!(matches!(wal.read_from(Lsn::FIRST), Err(ReadError::Truncated { .. })));
    // Truncating past everything keeps the active segment and the LSN sequence.
    wal.truncate_before(Lsn::new(1000)).unwrap();
    assert_eq!(segment_files(d.path()).len(), 1);
    drop(wal);
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    assert_eq!(append(&wal, payload(0, 1)), Lsn::new(101));
}

/// A record cut short by a crash is removed at open; acknowledged records
/// stay; appends continue after the LSNs the cut bytes could have used.
#[test]
fn torn_tail_is_cut() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    for i in 0..5 {
        append(&wal, payload(i, 100));
    }
    drop(wal);
    let last = segment_files(d.path()).pop().unwrap();
    // Half of a sixth frame, as a crash mid-write leaves it.
    let mut frame = Vec::new();
    format::encode_frame(&mut frame, Lsn::new(6), KIND, &[9u8; 100]);
    let mut f = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
    std::io::Write::write_all(&mut f, &frame[..70]).unwrap();
    drop(f);
    let (wal, report) = Wal::open(d.path(), small_opts()).unwrap();
    assert_eq!(report.torn_tail_bytes, 70);
    assert!(report.corrupt.is_empty());
    assert_eq!(read_all(&wal, Lsn::FIRST).len(), 5);
    // The 70 cut bytes could have held 2 records' headers: those LSNs are skipped.
    assert_eq!(report.next_lsn, Lsn::new(6 + 70 / FRAME_HEADER_BYTES as u64 + 1));
    assert_eq!(append(&wal, payload(6, 10)), report.next_lsn);
}

/// Zeroed space after the last record (preallocation, unwritten pages) is a
/// torn tail too, not corruption.
#[test]
fn zero_tail_is_torn_not_corrupt() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    append(&wal, payload(0, 10));
    drop(wal);
    let last = segment_files(d.path()).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(len + 500).unwrap();
    let (wal, report) = Wal::open(d.path(), small_opts()).unwrap();
    assert_eq!(report.torn_tail_bytes, 500);
    assert!(report.corrupt.is_empty());
    assert_eq!(read_all(&wal, Lsn::FIRST).len(), 1);
}

/// A flipped byte inside an older segment is corruption: reported with
/// segment, offset and first lost LSN; the original moved aside; the valid
/// prefix and all later segments kept; LSNs of the lost region not reused.
#[test]
fn corruption_is_reported_and_moved_aside() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    let mut all = Vec::new();
    for i in 0..60u64 {
        let p = payload(i, 150);
        all.push((append(&wal, p.clone()), p.to_vec()));
    }
    let max = wal.durable_lsn().unwrap();
    drop(wal);
    let files = segment_files(d.path());
    assert!(files.len() >= 3);
    let victim = &files[1];
    let first_of_victim = segment::parse_segment_file_name(victim.file_name().unwrap().to_str().unwrap()).unwrap();
    let offsets = frame_offsets(victim);
    let bad_frame = 2; // third record of the segment
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[offsets[bad_frame] as usize + FRAME_HEADER_BYTES + 5] ^= 0xff;
    std::fs::write(victim, &bytes).unwrap();

    let (wal, report) = Wal::open(d.path(), small_opts()).unwrap();
    assert_eq!(report.corrupt.len(), 1, "{report:?}");
    let c = &report.corrupt[0];
    assert_eq!(&c.path, victim);
    assert_eq!(c.offset, offsets[bad_frame]);
    assert_eq!(c.first_lost_lsn, Lsn::new(first_of_victim.get() + bad_frame as u64));
    assert!(c.moved_to.exists(), "original kept for inspection");
    assert_eq!(std::fs::read(&c.moved_to).unwrap(), bytes);
    let lost_until = Lsn::new(first_of_victim.get() + offsets.len() as u64);
    let expected: Vec<_> = all.iter().filter(|(l, _)| *l < c.first_lost_lsn || *l >= lost_until).cloned().collect();
    assert_eq!(read_all(&wal, Lsn::FIRST), expected);
    assert!(append(&wal, payload(0, 1)) > max);
}

/// A damaged segment header is corruption of the whole segment.
#[test]
fn damaged_header_loses_only_its_segment() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    for i in 0..60 {
        append(&wal, payload(i, 150));
    }
    drop(wal);
    let files = segment_files(d.path());
    let mut b = std::fs::read(&files[0]).unwrap();
    b[3] ^= 1;
    std::fs::write(&files[0], &b).unwrap();
    let (wal, report) = Wal::open(d.path(), small_opts()).unwrap();
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].first_lost_lsn, Lsn::FIRST);
    let second_first = segment::parse_segment_file_name(files[1].file_name().unwrap().to_str().unwrap()).unwrap();
    let got = wal.read_from(second_first).unwrap().count();
    assert_eq!(got as u64, 60 - second_first.get() + 1);
}

/// At the cap of un-truncated bytes, appends fail fast with a distinct error;
/// truncation makes room again.
#[test]
fn backpressure_at_uncompacted_cap() {
    let d = tempfile::tempdir().unwrap();
    let opts = WalOptions { max_uncompacted_bytes: 20_000, ..small_opts() };
    let (wal, _) = Wal::open(d.path(), opts).unwrap();
    let mut n = 0u64;
    let err = loop {
        match wal.append_batch_blocking(vec![(KIND, payload(n, 500))]) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 1000, "cap never reached");
    };
    assert!(err.is_backpressure(), "{err}");
    assert!(n >= 30, "cap reached too early: {n}");
    wal.truncate_before(Lsn::new(n)).unwrap();
    append(&wal, payload(0, 500));
}

#[test]
fn oversized_record_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    let err = wal.append_batch_blocking(vec![(KIND, Bytes::from(vec![0u8; 2049]))]).unwrap_err();
    assert!(matches!(err, AppendError::RecordTooLarge { bytes: 2049, .. }));
    assert_eq!(wal.durable_lsn(), None);
}

/// The caller's committed position bounds LSNs from below.
#[test]
fn min_next_lsn_is_respected() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    append(&wal, payload(0, 1));
    drop(wal);
    let (wal, report) = Wal::open(d.path(), WalOptions { min_next_lsn: 500, ..small_opts() }).unwrap();
    assert_eq!(report.next_lsn, Lsn::new(500));
    assert_eq!(append(&wal, payload(0, 1)), Lsn::new(500));
    assert_eq!(read_all(&wal, Lsn::FIRST).iter().map(|r| r.0.get()).collect::<Vec<_>>(), vec![1, 500]);
    drop(wal);
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    assert_eq!(append(&wal, payload(0, 1)), Lsn::new(501));
}

/// Many threads appending at once all get distinct, gap-free LSNs, and each
/// LSN holds exactly the payload its appender wrote.
#[test]
fn concurrent_appenders_get_distinct_lsns() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), WalOptions { segment_size_bytes: 64 * 1024, ..small_opts() }).unwrap();
    let wal = std::sync::Arc::new(wal);
    let handles: Vec<_> = (0..8u8)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                (0..200u32)
                    .map(|i| {
                        let p = Bytes::from(format!("t{t}-{i}"));
                        (append(&wal, p.clone()), p.to_vec())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    acked.sort();
    assert_eq!(acked.len(), 1600);
    assert!(acked.iter().enumerate().all(|(i, (l, _))| l.get() == i as u64 + 1));
    assert_eq!(read_all(&wal, Lsn::FIRST), acked);
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>),
    Reopen,
    Truncate(u8),
    TearTail(usize),
    CorruptByte { segment: u8, position: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(0usize..600, 1..6).prop_map(Op::Append),
        2 => Just(Op::Reopen),
        1 => any::<u8>().prop_map(Op::Truncate),
        1 => (1usize..60).prop_map(Op::TearTail),
        1 => (any::<u8>(), any::<u16>()).prop_map(|(segment, position)| Op::CorruptByte { segment, position }),
    ]
}

/// The model: every acknowledged record not truncated and not reported lost.
struct Model {
    records: Vec<(Lsn, Vec<u8>)>,
    low_water: Lsn,
    last_lsn: u64,
}

fn check(wal: &Wal, m: &Model) {
    let want: Vec<_> = m.records.iter().filter(|(l, _)| *l >= m.low_water).cloned().collect();
    let got = match wal.read_from(m.low_water) {
        Ok(r) => r.map(|r| r.map(|r| (r.lsn, r.payload)).unwrap()).collect::<Vec<_>>(),
        // Corruption took the oldest segments: nothing the model keeps may be below them.
        Err(ReadError::Truncated { oldest, .. }) => {
            assert!(want.iter().all(|(l, _)| *l >= oldest), "records below the oldest segment were not reported lost");
            read_all(wal, oldest)
        }
        Err(e) => panic!("{e}"),
    };
    let got: Vec<_> = got.into_iter().filter(|(l, _)| *l >= m.low_water).collect();
    assert_eq!(got, want);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random appends, reopens, truncations, torn tails and corruption:
    /// recovery always yields exactly the acknowledged records, minus those
    /// truncated and those in a corrupt segment after the damage (which the
    /// report names), and LSNs only grow.
    #[test]
    fn model_based(ops in prop::collection::vec(op(), 1..40)) {
        let d = tempfile::tempdir().unwrap();
        let opts = small_opts;
        let (mut wal, _) = Wal::open(d.path(), opts()).unwrap();
        let mut m = Model { records: Vec::new(), low_water: Lsn::FIRST, last_lsn: 0 };
        for op in ops {
            match op {
                Op::Append(lens) => {
                    let recs: Vec<_> = lens.iter().enumerate().map(|(i, l)| (KIND, payload(m.last_lsn + i as u64, *l))).collect();
                    let r = wal.append_batch_blocking(recs.clone()).unwrap();
                    prop_assert!(r.first.get() > m.last_lsn);
                    for (i, (_, p)) in recs.into_iter().enumerate() {
                        m.records.push((Lsn::new(r.first.get() + i as u64), p.to_vec()));
                    }
                    m.last_lsn = r.last.get();
                }
                Op::Reopen => {
                    drop(wal);
                    let (w, report) = Wal::open(d.path(), opts()).unwrap();
                    prop_assert!(report.corrupt.is_empty());
                    prop_assert!(report.next_lsn.get() > m.last_lsn);
                    wal = w;
                }
                Op::Truncate(f) => {
                    if let Some(last) = m.records.last().map(|r| r.0) {
                        let l = Lsn::new(1 + (last.get() * u64::from(f)) / 255);
                        if l > m.low_water {
                            wal.truncate_before(l).unwrap();
                            m.low_water = l;
                        }
                    }
                }
                Op::TearTail(n) => {
                    // An unacknowledged partial frame at the end of the active segment.
                    drop(wal);
                    let last = segment_files(d.path()).pop().unwrap();
                    let mut frame = Vec::new();
                    format::encode_frame(&mut frame, Lsn::new(m.last_lsn + 1), KIND, &[7u8; 64]);
                    let mut f = std::fs::OpenOptions::new().append(true).open(&last).unwrap();
                    std::io::Write::write_all(&mut f, &frame[..n.min(frame.len() - 1)]).unwrap();
                    drop(f);
                    let (w, report) = Wal::open(d.path(), opts()).unwrap();
                    prop_assert_eq!(report.torn_tail_bytes, n.min(frame.len() - 1) as u64);
                    wal = w;
                }
                Op::CorruptByte { segment, position } => {
                    drop(wal);
                    let files = segment_files(d.path());
                    let victim = files[segment as usize % files.len()].clone();
                    let bytes = std::fs::read(&victim).unwrap();
                    let first = segment::parse_segment_file_name(victim.file_name().unwrap().to_str().unwrap()).unwrap();
                    let offsets = frame_offsets(&victim);
                    if bytes.len() > SEGMENT_HEADER_BYTES || offsets.is_empty() {
                        let pos = position as usize % bytes.len();
                        let mut b = bytes.clone();
                        b[pos] ^= 0x5a;
                        std::fs::write(&victim, &b).unwrap();
                        // Records of this segment from the damaged frame on are lost.
                        let idx = if pos < SEGMENT_HEADER_BYTES { 0 } else { offsets.iter().rposition(|o| *o as usize <= pos).unwrap() };
                        let lost_from = first.get() + idx as u64;
                        let lost_to = first.get() + offsets.len() as u64;
                        m.records.retain(|(l, _)| l.get() < lost_from || l.get() >= lost_to);
                        let (w, report) = Wal::open(d.path(), opts()).unwrap();
                        let damaged = !report.corrupt.is_empty() || report.torn_tail_bytes > 0;
                        prop_assert!(damaged || lost_from == lost_to, "damage not detected: {report:?}");
                        prop_assert!(report.next_lsn.get() > m.last_lsn);
                        wal = w;
                    } else {
                        let (w, _) = Wal::open(d.path(), opts()).unwrap();
                        wal = w;
                    }
                }
            }
            check(&wal, &m);
        }
    }
}

/// Regression (found by `model_based`): a flipped length field in the middle
/// of the last segment looks like a torn write; the records it hides were
/// acknowledged, so their LSNs must not be handed out again.
#[test]
fn damaged_length_in_last_segment_does_not_reuse_lsns() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    for i in 0..9 {
        append(&wal, payload(i, 200));
    }
    drop(wal);
    let last = segment_files(d.path()).pop().unwrap();
    let offsets = frame_offsets(&last);
    let mut b = std::fs::read(&last).unwrap();
    // Byte 7 of the frame is the top byte of payload_len: now far past EOF.
    b[offsets[3] as usize + 7] ^= 0x40;
    std::fs::write(&last, &b).unwrap();
    let (wal, report) = Wal::open(d.path(), small_opts()).unwrap();
    assert!(report.torn_tail_bytes > 0);
    assert!(report.next_lsn > Lsn::new(9), "{report:?}");
    assert_eq!(read_all(&wal, Lsn::FIRST).len(), 3);
    assert!(append(&wal, payload(0, 1)) > Lsn::new(9));
}

/// Truncating past the whole active segment makes the writer start a new
/// segment on its next write, so the following truncation frees the bytes
/// (backpressure does not count compacted records for long).
#[test]
fn truncation_of_the_active_segment_frees_it_after_the_next_write() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), WalOptions { segment_size_bytes: 1 << 20, ..small_opts() }).unwrap();
    for i in 0..10 {
        append(&wal, payload(i, 1000));
    }
    let full = wal.uncompacted_bytes();
    assert_eq!(wal.truncate_before(Lsn::new(11)).unwrap().segments_removed, 0, "the active segment stays");
    assert_eq!(wal.uncompacted_bytes(), full);
    let lsn = append(&wal, payload(11, 10));
    assert_eq!(segment_files(d.path()).len(), 2, "the write started a new segment");
    assert_eq!(wal.truncate_before(Lsn::new(11)).unwrap().segments_removed, 1);
    assert!(wal.uncompacted_bytes() < 200, "{}", wal.uncompacted_bytes());
    assert_eq!(read_all(&wal, Lsn::new(11)), vec![(lsn, payload(11, 10).to_vec())]);
}

/// The limits are inclusive: a record of exactly `max_record_bytes`, and an
/// append that fills the uncompacted or in-flight cap exactly, are taken;
/// one byte more is refused (found by mutation testing: `>` and `>=` were
/// indistinguishable to the suite).
#[test]
fn limits_are_exact_at_their_boundaries() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    append(&wal, Bytes::from(vec![1u8; 2048]));
    let frame = format::frame_len(100) as u64;
    // Uncompacted cap: room for exactly three frames of 100 bytes past the
    // segment header already retained.
    let d = tempfile::tempdir().unwrap();
    let (probe, _) = Wal::open(d.path(), small_opts()).unwrap();
    let retained = probe.uncompacted_bytes();
    drop(probe);
    let opts = WalOptions { max_uncompacted_bytes: retained + 3 * frame, ..small_opts() };
    let (wal, _) = Wal::open(d.path(), opts).unwrap();
    for i in 0..3 {
        append(&wal, payload(i, 100));
    }
    let err = wal.append_batch_blocking(vec![(KIND, payload(3, 1))]).unwrap_err();
    assert!(err.is_backpressure() && !err.is_disk_full(), "{err}");
    // In-flight cap: a batch of exactly the cap is taken, one byte over is not.
    let d = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        max_inflight_bytes: 2 * frame,
        max_record_bytes: 200,
        max_uncompacted_bytes: 1 << 30,
        ..small_opts()
    };
    let (wal, _) = Wal::open(d.path(), opts).unwrap();
    wal.append_batch_blocking(vec![(KIND, payload(0, 100)), (KIND, payload(1, 100))]).unwrap();
    let err = wal.append_batch_blocking(vec![(KIND, payload(0, 100)), (KIND, payload(1, 101))]).unwrap_err();
    assert!(err.is_backpressure(), "{err}");
}

/// `append` (one record) answers its LSN, and the report of a reopen
/// counts the segments it found.
#[test]
fn single_appends_answer_their_lsn_and_reopen_counts_segments() {
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), small_opts()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for i in 1..=40u64 {
        assert_eq!(rt.block_on(wal.append(KIND, payload(i, 300))).unwrap(), Lsn::new(i));
    }
    drop(wal);
    let files = segment_files(d.path()).len();
    assert!(files >= 3);
    let (_, report) = Wal::open(d.path(), small_opts()).unwrap();
    assert_eq!((report.segments, report.records), (files, 40));
}

/// A corrupt record in the last segment: the LSNs the lost bytes could have
/// held are skipped exactly (one per frame header's worth of bytes), no
/// more, no less.
#[test]
fn lsns_lost_to_corruption_in_the_last_segment_are_skipped_exactly() {
    let d = tempfile::tempdir().unwrap();
    let opts = WalOptions { segment_size_bytes: 1 << 20, ..small_opts() };
    let (wal, _) = Wal::open(d.path(), opts.clone()).unwrap();
    for i in 0..10 {
        append(&wal, payload(i, 200));
    }
    drop(wal);
    let last = segment_files(d.path()).pop().unwrap();
    let offsets = frame_offsets(&last);
    let mut bytes = std::fs::read(&last).unwrap();
    bytes[offsets[4] as usize + FRAME_HEADER_BYTES + 3] ^= 0xff;
    std::fs::write(&last, &bytes).unwrap();
    let (_, report) = Wal::open(d.path(), opts).unwrap();
    let c = &report.corrupt[0];
    assert_eq!(c.first_lost_lsn, Lsn::new(5));
    assert_eq!(c.lost_bytes, bytes.len() as u64 - offsets[4]);
    assert_eq!(report.next_lsn, Lsn::new(5 + c.lost_bytes / FRAME_HEADER_BYTES as u64 + 1));
}

#[test]
fn error_predicates_say_what_they_name() {
    let bp = AppendError::Backpressure { uncompacted_bytes: 1, max_uncompacted_bytes: 1, inflight_bytes: 0 };
    assert!(bp.is_backpressure() && !bp.is_disk_full());
    assert!(!AppendError::Empty.is_backpressure() && !AppendError::Empty.is_disk_full());
    let full = AppendError::DiskFull { path: PathBuf::new() };
    assert!(full.is_disk_full() && !full.is_backpressure());
}
