//! `duckpond-wal-torture DIR THREADS`: appends records from THREADS threads
//! forever and prints one line per acknowledged append, `lsn thread seq len`,
//! after the ack. The crash test kills it with SIGKILL at random moments and
//! checks that every printed record reads back intact.

use std::io::Write;
use std::sync::{Arc, Mutex};

use duckpond_wal::testing::torture_payload as payload;
use duckpond_wal::{RecordKind, Wal, WalOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: duckpond-wal-torture DIR THREADS");
    let threads: u32 = args.next().and_then(|t| t.parse().ok()).unwrap_or(4);
    let opts = WalOptions { segment_size_bytes: 256 * 1024, ..Default::default() };
    let (wal, _) = Wal::open(std::path::Path::new(&dir), opts).expect("open");
    let wal = Arc::new(wal);
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let nonce: u32 = std::process::id();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (wal, out) = (wal.clone(), out.clone());
            std::thread::spawn(move || {
                let thread = nonce.wrapping_mul(1000) + t;
                for seq in 0u32.. {
                    let len = ((seq.wrapping_mul(2654435761) ^ thread) % 9000) as usize;
                    let r = wal
                        .append_batch_blocking(vec![(RecordKind(1), payload(thread, seq, len).into())])
                        .expect("append");
                    let mut o = out.lock().unwrap();
                    writeln!(o, "{} {thread} {seq} {len}", r.first).unwrap();
                    o.flush().unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
